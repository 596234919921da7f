//! Trust between devices and hubs (docs/security.md): hub keys pinned in
//! the config or on first contact, an impostor hub at the same address that
//! gets nothing, `meshctl hubs forget`, and what crosses the wire between a
//! device and its hub.

use std::time::Duration;

use meshd_tests::tap::Tap;
use meshd_tests::{MeshOptions, Node, NodeOptions, wait_until};

use crate::mesh::{device, device_options, free_port, inbox, stderr, wait_full_mesh};

/// A hub alone (no device of its own) on a fixed port, so another process
/// can take its address later.
fn hub_at(id: &str, port: u16, extra: &str) -> Node {
    Node::start(NodeOptions {
        id: id.to_owned(),
        signaling_listen: format!("127.0.0.1:{port}"),
        signaling: extra.to_owned(),
        ..NodeOptions::default()
    })
}

fn hub_key(hub: &Node) -> String {
    hub.ctl_json(&["status"])["roles"]["signaling"]["hub_key"]
        .as_str()
        .expect("roles.signaling.hub_key")
        .to_owned()
}

/// The first hub entry of a device's status.
fn first_hub(node: &Node) -> serde_json::Value {
    node.mesh_status()["signaling"][0].clone()
}

#[test]
fn a_rogue_hub_at_the_same_address_gets_nothing() {
    // The attack of issue 14: stop the hub, answer at its address with
    // another key, register an impostor under a real device's id, kill
    // the real device. The other devices must not link to the impostor.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut hub = hub_at("hub", port, "");
    let real_key = hub_key(&hub);
    let a = device("a", std::slice::from_ref(&url));
    let mut b = device("b", std::slice::from_ref(&url));
    wait_full_mesh(&[&a, &b], Duration::from_secs(10));
    // a met the hub once: its key is pinned.
    assert_eq!(first_hub(&a)["hub_key"], real_key.as_str());
    // Written off the registration's path, a moment later.
    wait_until("a's known-hubs written", Duration::from_secs(5), || {
        let known = std::fs::read_to_string(a.dir().join("state/known-hubs")).ok()?;
        known.contains(&format!("{url} {real_key}")).then_some(())
    });
    assert!(a.log().contains("pinned the hub's key on first contact"));

    hub.stop();
    let rogue = hub_at("rogue", port, "");
    let rogue_key = hub_key(&rogue);
    assert_ne!(rogue_key, real_key);
    let impostor = device("b", std::slice::from_ref(&url));
    wait_until(
        "the impostor registered at the rogue hub",
        Duration::from_secs(10),
        || (first_hub(&impostor)["channel"] == true).then_some(()),
    );
    b.kill9();

    // a refuses the rogue hub, says why with both keys, and the way out.
    let refused = wait_until("a refuses the rogue hub", Duration::from_secs(40), || {
        let hub = first_hub(&a);
        let error = hub["error"].as_str()?.to_owned();
        (hub["channel"] == false && error.contains(&rogue_key)).then_some(error)
    });
    assert!(refused.contains(&real_key), "{refused}");
    assert!(
        refused.contains(&format!("meshctl hubs forget {url}")),
        "{refused}"
    );
    assert_eq!(first_hub(&a)["hub_key"], real_key.as_str(), "the pin holds");
    // Retried with backoff, warned once.
    wait_until("a retried three times", Duration::from_secs(40), || {
        (rogue.log().matches("hub channel handshake failed").count() >= 3).then_some(())
    });
    let warnings = a.log().matches("it proved another key").count();
    assert_eq!(warnings, 1, "{}", a.log());
    // The rogue hub never learnt a's id, and a took nothing from it: no
    // link to the impostor, no message for it.
    assert!(!rogue.log().contains("device_id=a "), "{}", rogue.log());
    assert_ne!(a.link_to("b").as_deref(), Some("direct"));
    let sent = a.ctl(&["send", "b", "for the real b only"]);
    assert_eq!(sent.status.code(), Some(1), "{}", stderr(&sent));
    assert!(
        inbox(&impostor).is_empty(),
        "the impostor received {:?}",
        inbox(&impostor)
    );
    let impostor_key = impostor.pubkey();
    let devices = a.ctl_json(&["devices"]);
    assert!(
        !devices.to_string().contains(&impostor_key),
        "a took the impostor's key from the rogue hub: {devices}"
    );
}

#[test]
fn a_wrong_pin_never_registers_and_takes_no_list() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let hub = hub_at("hub", port, "");
    let other = device("other", std::slice::from_ref(&url));
    wait_until("other registered", Duration::from_secs(10), || {
        (first_hub(&other)["channel"] == true).then_some(())
    });
    let wrong = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let pinned = device("pinned", &[format!("{url}#{wrong}")]);
    let error = wait_until("the wrong key refused", Duration::from_secs(10), || {
        let hub = first_hub(&pinned);
        (hub["channel"] == false).then(|| hub["error"].as_str().map(ToOwned::to_owned))?
    });
    assert!(
        error.contains(&hub_key(&hub)) && error.contains(wrong),
        "{error}"
    );
    assert!(error.contains("[mesh] signaling pins"), "{error}");
    assert_eq!(first_hub(&pinned)["hub_key"], wrong);
    // Never registered there, and no list taken.
    let listed = meshd_tests::http::get(hub.signaling_addr(), "/devices").json();
    assert!(!listed.to_string().contains("pinned"), "{listed}");
    let devices = pinned.ctl_json(&["devices"]);
    assert!(!devices.to_string().contains("other"), "{devices}");
    // A config pin is not forgotten by meshctl.
    let forget = pinned.ctl(&["hubs", "forget", &url]);
    assert_eq!(forget.status.code(), Some(1));
    assert!(
        stderr(&forget).contains("pinned in the config"),
        "{}",
        stderr(&forget)
    );
}

#[test]
fn the_right_pin_from_meshctl_status_registers() {
    let port = free_port();
    let hub = hub_at("hub", port, "");
    let text = hub.ctl_ok(&["status"]);
    let line = text
        .lines()
        .find_map(|line| line.split_once("devices pin it with: signaling = [\""))
        .map(|(_, rest)| rest.trim_end_matches("\"]").to_owned())
        .unwrap_or_else(|| panic!("no pin line in:\n{text}"));
    assert_eq!(line, format!("http://127.0.0.1:{port}#{}", hub_key(&hub)));
    let pinned = device("pinned", &[line]);
    wait_until(
        "registered with the pinned hub",
        Duration::from_secs(10),
        || (first_hub(&pinned)["channel"] == true).then_some(()),
    );
    assert_eq!(first_hub(&pinned)["hub_key"], hub_key(&hub).as_str());
    // A pin in the config is not copied to known-hubs.
    assert!(!pinned.dir().join("state/known-hubs").exists());
}

#[test]
fn forgetting_a_first_use_pin_lets_a_replaced_hub_in() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut hub = hub_at("hub", port, "");
    let old_key = hub_key(&hub);
    let a = device("a", std::slice::from_ref(&url));
    wait_until("a registered", Duration::from_secs(10), || {
        (first_hub(&a)["channel"] == true).then_some(())
    });
    // The hub is rebuilt: same address, new key.
    hub.stop();
    let new_hub = hub_at("hub", port, "");
    let new_key = hub_key(&new_hub);
    wait_until("a refuses the new key", Duration::from_secs(40), || {
        let error = first_hub(&a)["error"].as_str()?.to_owned();
        error.contains(&new_key).then_some(())
    });
    // Not for a reader of the socket, and not for a hub that is not there.
    let unknown = a.ctl(&["hubs", "forget", "http://127.0.0.1:1"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("not in [mesh] signaling"),
        "{}",
        stderr(&unknown)
    );
    // The operator checked the new key: forget the old one.
    let forgot = a.ctl_ok(&["hubs", "forget", &url]);
    assert!(forgot.contains(&old_key), "{forgot}");
    // The channel reopens at once, not after the backoff.
    let reopened = std::time::Instant::now();
    wait_until(
        "a registered with the new hub",
        Duration::from_secs(5),
        || (first_hub(&a)["channel"] == true).then_some(()),
    );
    eprintln!("reopened {:?} after forget", reopened.elapsed());
    assert_eq!(first_hub(&a)["hub_key"], new_key.as_str());
    wait_until("the new key written", Duration::from_secs(5), || {
        let known = std::fs::read_to_string(a.dir().join("state/known-hubs")).ok()?;
        (known.contains(&new_key) && !known.contains(&old_key)).then_some(())
    });
    // The pin outlives a restart of the device.
    let mut a = a;
    a.stop();
    a.restart();
    wait_until(
        "a registered after its restart",
        Duration::from_secs(10),
        || (first_hub(&a)["channel"] == true).then_some(()),
    );
    assert!(!a.log().contains("pinned the hub's key on first contact"));
}

#[test]
fn the_wire_between_device_and_hub_holds_no_id_endpoint_or_token() {
    let port = free_port();
    let hub = hub_at("hub", port, "join_token = \"tok-xyzzy-42\"\n");
    let tap = Tap::start(hub.signaling_addr());
    let mut options = device_options("secret-device-7", &[format!("http://{}", tap.addr())]);
    options.mesh = Some(MeshOptions {
        extra: "advertise = [\"10.77.88.99:4321\"]\njoin_token = \"tok-xyzzy-42\"".to_owned(),
        ..MeshOptions::with_hubs(&[format!("http://{}", tap.addr())])
    });
    let device = Node::start(options);
    wait_until(
        "registered through the tap",
        Duration::from_secs(10),
        || (first_hub(&device)["channel"] == true).then_some(()),
    );
    // The hub did get all of it...
    let listed = meshd_tests::http::request(
        hub.signaling_addr(),
        "GET",
        "/devices",
        &[("Authorization", "Bearer tok-xyzzy-42")],
        b"",
    )
    .json();
    assert_eq!(listed[0]["id"], "secret-device-7", "{listed}");
    assert_eq!(listed[0]["endpoints"][0], "10.77.88.99:4321", "{listed}");
    // ...and the wire showed none of it.
    let captured = tap.captured();
    let contains = |needle: &[u8]| {
        captured
            .windows(needle.len())
            .any(|window| window == needle)
    };
    assert!(
        contains(b"meshd-channel/5"),
        "the tap saw the channel's upgrade"
    );
    for needle in ["secret-device-7", "10.77.88.99", "tok-xyzzy-42", "register"] {
        assert!(
            !contains(needle.as_bytes()),
            "{needle:?} crossed the wire in the clear"
        );
    }
}

#[test]
fn a_damaged_known_hubs_file_stops_the_start_with_its_line() {
    let mut node = Node::prepare(device_options("a", &["http://127.0.0.1:9".to_owned()]));
    std::fs::create_dir_all(node.dir().join("state")).unwrap();
    std::fs::write(
        node.dir().join("state/known-hubs"),
        "# ok\nhttp://127.0.0.1:9 not-a-key\n",
    )
    .unwrap();
    node.launch();
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = node.log();
    assert!(log.contains("known-hubs:2: key:"), "{log}");
    assert!(log.contains("remove it to forget that hub's key"), "{log}");
}
