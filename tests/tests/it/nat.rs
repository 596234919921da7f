//! The NAT lab (issue 7): devices in network namespaces behind home routers,
//! a hub on the "internet" segment. Each case asserts the path type that
//! `meshctl devices --json` shows and message delivery in both directions.
//! Under CI=true a lab that cannot be built fails these tests.

use std::time::Duration;

use meshd_tests::netlab::{Host, Nat, lab_or_skip};
use meshd_tests::{MeshOptions, Node, NodeOptions, wait_until};

/// The hub's signaling port inside its namespace.
const HUB_PORT: u16 = 8080;

/// The mesh port of every device inside its namespace.
const MESH_PORT: u16 = 8082;

fn hub_url(hub: &Host) -> String {
    format!("http://{}:{HUB_PORT}", hub.ip)
}

/// A signaling-only node in `host`'s namespace.
fn start_hub(hub: &Host) -> Node {
    Node::start(NodeOptions {
        id: "hub".to_owned(),
        signaling_listen: format!("{}:{HUB_PORT}", hub.ip),
        netns: Some(hub.netns.clone()),
        ..NodeOptions::default()
    })
}

/// A mesh device in `host`'s namespace, listening on every interface there.
fn start_device(id: &str, host: &Host, hub: &Host) -> Node {
    let mut mesh = MeshOptions::with_hubs(&[hub_url(hub)]);
    mesh.listen = format!("0.0.0.0:{MESH_PORT}");
    Node::start(NodeOptions {
        id: id.to_owned(),
        signaling_enabled: false,
        mesh: Some(mesh),
        netns: Some(host.netns.clone()),
        ..NodeOptions::default()
    })
}

/// `node`'s view of `peer`: (link, endpoint).
fn link(node: &Node, peer: &str) -> Option<(String, String)> {
    let devices = node.ctl_json(&["devices"]);
    devices
        .as_array()?
        .iter()
        .find(|d| d["id"] == peer)
        .map(|d| {
            (
                d["link"].as_str().unwrap_or("null").to_owned(),
                d["endpoint"].as_str().unwrap_or("").to_owned(),
            )
        })
}

/// Waits until `a` and `b` show each other as `path`; returns the endpoint
/// each uses.
fn wait_link(
    a: (&Node, &str),
    b: (&Node, &str),
    path: &str,
    timeout: Duration,
) -> (String, String) {
    wait_until(&format!("{} and {} {path}", a.1, b.1), timeout, || {
        let (a_link, a_end) = link(a.0, b.1)?;
        let (b_link, b_end) = link(b.0, a.1)?;
        (a_link == path && b_link == path).then_some((a_end, b_end))
    })
}

/// Messages both ways, each acknowledged and in the receiver's inbox.
fn exchange(a: (&Node, &str), b: (&Node, &str)) {
    for (from, to) in [(a, b), (b, a)] {
        let text = format!("across the lab from {} to {}", from.1, to.1);
        from.0.ctl_ok(&["send", to.1, &text]);
        let inbox = to.0.ctl_json(&["messages"]);
        assert!(
            inbox
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["from"] == from.1 && m["text"] == text.as_str()),
            "{} lacks {text:?}: {inbox}",
            to.1
        );
    }
}

#[test]
fn c_two_devices_on_one_lan_link_directly_over_the_lan() {
    let Some(mut lab) = lab_or_skip() else { return };
    let hub_host = lab.public_host("hub", 1).unwrap();
    let mut home = lab.router("home", 20, 1, Nat::PortPreserving).unwrap();
    let a_host = lab.lan_host(&mut home, "a").unwrap();
    let b_host = lab.lan_host(&mut home, "b").unwrap();
    let _hub = start_hub(&hub_host);
    let a = start_device("a", &a_host, &hub_host);
    let b = start_device("b", &b_host, &hub_host);
    let (a_end, b_end) = wait_link((&a, "a"), (&b, "b"), "direct", Duration::from_secs(10));
    // The LAN addresses, not the router's public one.
    for endpoint in [&a_end, &b_end] {
        assert!(endpoint.starts_with("10.0.1."), "{endpoint}");
    }
    exchange((&a, "a"), (&b, "b"));
}

#[test]
fn d_a_public_device_and_one_behind_nat_link_directly() {
    let Some(mut lab) = lab_or_skip() else { return };
    let hub_host = lab.public_host("hub", 1).unwrap();
    let public_host = lab.public_host("pub", 10).unwrap();
    let mut home = lab.router("home", 20, 1, Nat::PortPreserving).unwrap();
    let natted_host = lab.lan_host(&mut home, "nat").unwrap();
    let _hub = start_hub(&hub_host);
    let public = start_device("public", &public_host, &hub_host);
    let natted = start_device("natted", &natted_host, &hub_host);
    let (public_end, natted_end) = wait_link(
        (&public, "public"),
        (&natted, "natted"),
        "direct",
        Duration::from_secs(10),
    );
    // The hub saw the natted device's registration come from its mesh port
    // through the port-preserving NAT: the public endpoint peers must reach.
    let observed = natted.mesh_status()["observed"].clone();
    assert_eq!(observed, format!("203.0.113.20:{MESH_PORT}").as_str());
    assert_eq!(
        public.mesh_status()["observed"],
        format!("203.0.113.10:{MESH_PORT}").as_str()
    );
    // The public device sees the link come from the router's address.
    assert!(public_end.starts_with("203.0.113.20:"), "{public_end}");
    assert_eq!(natted_end, format!("203.0.113.10:{MESH_PORT}"));
    exchange((&public, "public"), (&natted, "natted"));
}

#[test]
fn f_links_survive_a_hub_restart_and_new_devices_still_join() {
    let Some(mut lab) = lab_or_skip() else { return };
    let hub_host = lab.public_host("hub", 1).unwrap();
    let public_host = lab.public_host("pub", 10).unwrap();
    let mut home = lab.router("home", 20, 1, Nat::PortPreserving).unwrap();
    let natted_host = lab.lan_host(&mut home, "nat").unwrap();
    let late_host = lab.lan_host(&mut home, "late").unwrap();
    let mut hub = start_hub(&hub_host);
    let public = start_device("public", &public_host, &hub_host);
    let natted = start_device("natted", &natted_host, &hub_host);
    let before = wait_link(
        (&public, "public"),
        (&natted, "natted"),
        "direct",
        Duration::from_secs(10),
    );

    hub.stop();
    hub.restart();
    // The link never depended on the hub: same endpoints, never down.
    std::thread::sleep(Duration::from_secs(2));
    let after = wait_link(
        (&public, "public"),
        (&natted, "natted"),
        "direct",
        Duration::from_secs(5),
    );
    assert_eq!(before, after, "the same link throughout");
    assert!(!public.log().contains("link down"), "{}", public.log());
    exchange((&public, "public"), (&natted, "natted"));

    // The devices' long-polls see the restarted hub list nobody and
    // register again at once, so a newcomer finds them.
    let late = start_device("late", &late_host, &hub_host);
    wait_link(
        (&late, "late"),
        (&public, "public"),
        "direct",
        Duration::from_secs(10),
    );
    wait_link(
        (&late, "late"),
        (&natted, "natted"),
        "direct",
        Duration::from_secs(10),
    );
    exchange((&late, "late"), (&public, "public"));
}

#[test]
fn the_lab_uses_only_its_own_addresses_and_cleans_up() {
    let Some(mut lab) = lab_or_skip() else { return };
    let hub = lab.public_host("hub", 1).unwrap();
    let mut home = lab.router("home", 20, 1, Nat::RandomPort).unwrap();
    let host = lab.lan_host(&mut home, "h").unwrap();
    // Nothing outside 203.0.113.0/24 and 10.0.0.0/8 has a route: not from
    // the internet segment, not from the router. A LAN host's default route
    // leads only to its router.
    for netns in [&hub.netns, &home.netns] {
        let route = lab.exec(netns, &["ip", "route", "get", "192.0.2.1"]);
        assert!(
            route.is_err(),
            "a route out of the lab in {netns}: {route:?}"
        );
    }
    let route = lab
        .exec(&host.netns, &["ip", "route", "get", "192.0.2.1"])
        .unwrap();
    assert!(route.contains("via 10.0.1.1"), "{route}");

    let prefix = lab.name().to_owned();
    let ours = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    };
    assert_eq!(
        ours(list_namespaces()).len(),
        4,
        "internet, hub, router, host"
    );
    drop(lab);
    assert!(ours(list_namespaces()).is_empty(), "namespaces left behind");
}

fn list_namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(ToOwned::to_owned))
        .collect()
}

#[test]
fn a_random_port_nat_shows_another_public_port() {
    let Some(mut lab) = lab_or_skip() else { return };
    let hub_host = lab.public_host("hub", 1).unwrap();
    let mut carrier = lab.router("cgnat", 40, 4, Nat::RandomPort).unwrap();
    let host = lab.lan_host(&mut carrier, "dev").unwrap();
    let _hub = start_hub(&hub_host);
    let device = start_device("dev", &host, &hub_host);
    let observed = wait_until("dev registered", Duration::from_secs(10), || {
        device.mesh_status()["observed"]
            .as_str()
            .map(ToOwned::to_owned)
    });
    let (ip, port) = observed.rsplit_once(':').unwrap();
    assert_eq!(ip, "203.0.113.40");
    // --random-fully picks a random port; the mesh port survives only by a
    // 1-in-64k chance.
    assert_ne!(port, MESH_PORT.to_string(), "{observed}");
}
#[test]
fn a_two_devices_behind_two_port_preserving_nats_link_directly() {
    let Some(mut lab) = lab_or_skip() else { return };
    let hub_host = lab.public_host("hub", 1).unwrap();
    let mut home_a = lab.router("homea", 20, 1, Nat::PortPreserving).unwrap();
    let mut home_b = lab.router("homeb", 30, 2, Nat::PortPreserving).unwrap();
    let a_host = lab.lan_host(&mut home_a, "a").unwrap();
    let b_host = lab.lan_host(&mut home_b, "b").unwrap();
    let _hub = start_hub(&hub_host);
    let a = start_device("a", &a_host, &hub_host);
    let b = start_device("b", &b_host, &hub_host);
    // Neither router lets an unsolicited SYN in. b learns of a from its
    // first list, a of b from its long-poll on the hub, at once; each dials
    // the other's public endpoint from its mesh port and keeps the dial
    // open, and the two meet in the NATs as one TCP connection.
    let (a_end, b_end) = wait_link((&a, "a"), (&b, "b"), "direct", Duration::from_secs(10));
    assert_eq!(a_end, format!("203.0.113.30:{MESH_PORT}"));
    assert_eq!(b_end, format!("203.0.113.20:{MESH_PORT}"));
    exchange((&a, "a"), (&b, "b"));
}
