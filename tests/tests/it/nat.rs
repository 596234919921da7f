//! The NAT lab (issue 7): devices in network namespaces behind home routers,
//! a hub on the "internet" segment. Each case asserts the path type that
//! `meshctl devices --json` shows and message delivery in both directions.
//! Under CI=true a lab that cannot be built fails these tests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshd_tests::nats::NatsServer;
use meshd_tests::netlab::{Host, Nat, TwoHomes, lab_or_skip};
use meshd_tests::{MeshOptions, Node, NodeOptions, wait_until};

/// The hub's signaling port inside its namespace.
const HUB_PORT: u16 = 8080;

/// The mesh port of every device inside its namespace.
const MESH_PORT: u16 = 8082;

/// The relay rate case (b) sets on its hub, bytes per second per device.
const RELAY_RATE: u32 = 32 * 1024;

fn hub_url(hub: &Host) -> String {
    format!("http://{}:{HUB_PORT}", hub.ip)
}

/// A signaling-only node in `host`'s namespace.
fn start_hub(hub: &Host) -> Node {
    start_hub_with(hub, "")
}

/// A signaling-only node with extra `[signaling]` settings.
fn start_hub_with(hub: &Host, signaling: &str) -> Node {
    Node::start(NodeOptions {
        id: "hub".to_owned(),
        signaling_listen: format!("{}:{HUB_PORT}", hub.ip),
        signaling: signaling.to_owned(),
        netns: Some(hub.netns.clone()),
        ..NodeOptions::default()
    })
}

/// A mesh device in `host`'s namespace, listening on every interface there.
fn start_device(id: &str, host: &Host, hub: &Host) -> Node {
    start_device_with(id, host, &[hub])
}

/// A mesh device registering with several hubs.
fn start_device_with(id: &str, host: &Host, hubs: &[&Host]) -> Node {
    let urls: Vec<String> = hubs.iter().map(|hub| hub_url(hub)).collect();
    let mut mesh = MeshOptions::with_hubs(&urls);
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

    let logged_before = public.log().len();
    hub.stop();
    hub.restart();
    // The direct link never depended on the hub: same endpoints, never
    // down. (A relayed link standing by beside it, from the first moments
    // of the pair, ends with the hub; that is no loss.)
    std::thread::sleep(Duration::from_secs(2));
    let after = wait_link(
        (&public, "public"),
        (&natted, "natted"),
        "direct",
        Duration::from_secs(5),
    );
    assert_eq!(before, after, "the same link throughout");
    let log = public.log();
    let since = log.get(logged_before..).unwrap_or_default();
    assert!(
        !since
            .lines()
            .any(|line| line.contains("link down") && line.contains("path=Direct")),
        "{since}"
    );
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
    let TwoHomes {
        hub: hub_host,
        a: a_host,
        b: b_host,
        ..
    } = lab.two_homes(Nat::PortPreserving).unwrap();
    let _hub = start_hub(&hub_host);
    let a = start_device("a", &a_host, &hub_host);
    let b = start_device("b", &b_host, &hub_host);
    // Neither router lets an unsolicited SYN in. b learns of a from its
    // first list, a of b from the hub channel's push, at once; each dials
    // the other's public endpoint from its mesh port (and asks the other,
    // through the hub, to dial back now), and the two dials meet in the
    // NATs as one TCP connection.
    let (a_end, b_end) = wait_link((&a, "a"), (&b, "b"), "direct", Duration::from_secs(10));
    assert_eq!(a_end, format!("203.0.113.30:{MESH_PORT}"));
    assert_eq!(b_end, format!("203.0.113.20:{MESH_PORT}"));
    exchange((&a, "a"), (&b, "b"));
    assert_punch_counted(&a, &b);
}

/// The punch between `a` and `b` is counted where it happened: on the side
/// whose dial came through the public endpoint (either, or both, may be
/// it), never more successes than attempts; a's link counts as direct.
fn assert_punch_counted(a: &Node, b: &Node) {
    let punched: Vec<(f64, f64)> = [a, b]
        .iter()
        .map(|node| {
            let attempts = node.metric("meshd_holepunch_attempts_total").unwrap();
            let successes = node.metric("meshd_holepunch_successes_total").unwrap();
            assert!(successes <= attempts, "{successes} of {attempts}");
            (attempts, successes)
        })
        .collect();
    assert!(
        punched.iter().any(|(_, successes)| *successes >= 1.0),
        "no hole punch counted: {punched:?}"
    );
    assert_eq!(a.metric("meshd_links{path=\"direct\"}"), Some(1.0));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn b_a_random_port_nat_is_relayed_and_the_hub_sees_no_plaintext() {
    let Some(mut lab) = lab_or_skip() else { return };
    let TwoHomes {
        hub: hub_host,
        a: a_host,
        b: b_host,
        ..
    } = lab.two_homes(Nat::RandomPort).unwrap();
    let pcap = std::env::temp_dir().join(format!("{}-hub.pcap", lab.name()));
    let capture = lab.capture(&hub_host.netns, &pcap).unwrap();
    // Each device may send 32 KiB/s through the relay.
    let hub = start_hub_with(&hub_host, &format!("relay_bytes_per_sec = {RELAY_RATE}"));
    let a = start_device("a", &a_host, &hub_host);
    let b = start_device("b", &b_host, &hub_host);
    // a's NAT gives each destination its own public port, so neither the
    // port the hub observed nor a simultaneous open can reach it: the hub
    // relays, and both show the hub as the endpoint.
    let hub_endpoint = format!("{}:{HUB_PORT}", hub_host.ip);
    let (a_end, b_end) = wait_link((&a, "a"), (&b, "b"), "relayed", Duration::from_secs(10));
    assert_eq!(
        (a_end.as_str(), b_end.as_str()),
        (hub_endpoint.as_str(), hub_endpoint.as_str())
    );
    exchange((&a, "a"), (&b, "b"));
    let pong = a.ctl_json(&["ping", "b"]);
    assert_eq!(pong[0]["path"], "relayed", "{pong}");
    let status = hub.ctl_json(&["status"]);
    assert_eq!(status["roles"]["signaling"]["relays"], 1, "{status}");
    assert_eq!(status["roles"]["signaling"]["channels"], 2, "{status}");
    // The hub holds a to its relay rate: after the one-second burst, four
    // 48 KiB messages need about 4.5 s more.
    let started = Instant::now();
    let text = "r".repeat(48 * 1024);
    for _ in 0..4 {
        a.ctl_ok(&["send", "b", &text]);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "192 KiB through a {RELAY_RATE} B/s relay in {took:?}"
    );
    // Direct attempts went on in the background and kept failing.
    assert_eq!(link(&a, "b").unwrap().0, "relayed");
    // Counted where it happens: the hub carries one relay and every byte
    // of those messages; a's punches through its random-port NAT all
    // failed, and its link is relayed.
    assert_eq!(hub.metric("meshd_hub_relays"), Some(1.0));
    let carried = hub.metric("meshd_hub_relay_bytes_total").unwrap();
    assert!(carried > 4.0 * 48.0 * 1024.0, "{carried} bytes relayed");
    assert!(a.metric("meshd_holepunch_attempts_total").unwrap() >= 1.0);
    assert_eq!(a.metric("meshd_holepunch_successes_total"), Some(0.0));
    assert_eq!(a.metric("meshd_links{path=\"relayed\"}"), Some(1.0));
    let relayed_out = a
        .metric("meshd_link_bytes_total{path=\"relayed\",direction=\"out\"}")
        .unwrap();
    assert!(relayed_out > 4.0 * 48.0 * 1024.0, "{relayed_out} bytes out");

    let captured = capture.finish();
    let _ = std::fs::remove_file(&pcap);
    // The capture works: it holds the channels' HTTP upgrades (the one
    // plain part), and the relayed messages' bytes.
    assert!(
        contains(&captured, b"meshd-channel/5") && captured.len() > 4 * 48 * 1024,
        "the capture lacks the hub's traffic ({} bytes)",
        captured.len()
    );
    // Registrations travel inside the channels: no id, no endpoint.
    for needle in [&br#""id":"a""#[..], br#""addr""#, br#""endpoints""#] {
        assert!(
            !contains(&captured, needle),
            "the hub's traffic shows {:?} in the clear",
            String::from_utf8_lossy(needle)
        );
    }
    for text in ["across the lab from a to b", "across the lab from b to a"] {
        assert!(
            !contains(&captured, text.as_bytes()),
            "the hub saw {text:?} in the clear"
        );
    }
}

#[test]
fn e_a_cut_direct_path_falls_back_to_the_relay_and_comes_back() {
    let Some(mut lab) = lab_or_skip() else { return };
    let TwoHomes {
        hub: hub_host,
        a: a_host,
        b: b_host,
        router_a: home_a,
        ..
    } = lab.two_homes(Nat::PortPreserving).unwrap();
    let _hub = start_hub(&hub_host);
    let a = start_device("a", &a_host, &hub_host);
    let b = start_device("b", &b_host, &hub_host);
    wait_link((&a, "a"), (&b, "b"), "direct", Duration::from_secs(10));

    // Cut every packet between the two homes at a's router; the hub stays
    // reachable for both.
    let rules = [["-s", "203.0.113.30"], ["-d", "203.0.113.30"]];
    for rule in &rules {
        let mut args = vec!["iptables", "-I", "FORWARD"];
        args.extend_from_slice(rule);
        args.extend_from_slice(&["-j", "DROP"]);
        lab.exec(&home_a.netns, &args).unwrap();
    }
    let cut = Instant::now();
    // a keeps sending through the cut; every message acknowledged must
    // arrive, once.
    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut sequence = 0;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let text = format!("through the cut {sequence}");
                if a.ctl(&["send", "b", &text]).status.success() {
                    acknowledged.lock().unwrap().push(text);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let (a_end, _) = wait_link((&a, "a"), (&b, "b"), "relayed", Duration::from_secs(12));
        let took = cut.elapsed();
        assert!(
            took <= Duration::from_secs(10),
            "relayed {took:?} after the cut"
        );
        eprintln!("relayed {took:?} after the cut");
        assert_eq!(a_end, format!("{}:{HUB_PORT}", hub_host.ip));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(!acknowledged.is_empty(), "nothing got through the relay");
    let inbox = b.ctl_json(&["messages"]);
    for text in &acknowledged {
        let copies = inbox
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["from"] == "a" && m["text"] == text.as_str())
            .count();
        assert_eq!(
            copies, 1,
            "{text:?} acknowledged but {copies} copies arrived"
        );
    }

    for rule in &rules {
        let mut args = vec!["iptables", "-D", "FORWARD"];
        args.extend_from_slice(rule);
        args.extend_from_slice(&["-j", "DROP"]);
        lab.exec(&home_a.netns, &args).unwrap();
    }
    // The background dials get through again (a waiting dial's next SYN
    // retransmission meets the other's), and the relay is closed.
    let restored = Instant::now();
    let (a_end, b_end) = wait_link((&a, "a"), (&b, "b"), "direct", Duration::from_secs(60));
    eprintln!("direct again {:?} after the cut ended", restored.elapsed());
    assert_eq!(a_end, format!("203.0.113.30:{MESH_PORT}"));
    assert_eq!(b_end, format!("203.0.113.20:{MESH_PORT}"));
    exchange((&a, "a"), (&b, "b"));
    assert_punch_counted(&a, &b);
}

#[test]
fn netcheck_tells_a_port_preserving_nat_from_a_random_one() {
    let Some(mut lab) = lab_or_skip() else { return };
    let hub1 = lab.public_host("hub1", 1).unwrap();
    let hub2 = lab.public_host("hub2", 2).unwrap();
    let mut home = lab.router("home", 20, 1, Nat::PortPreserving).unwrap();
    let mut carrier = lab.router("cgnat", 40, 4, Nat::RandomPort).unwrap();
    let kept_host = lab.lan_host(&mut home, "kept").unwrap();
    let random_host = lab.lan_host(&mut carrier, "random").unwrap();
    let _hubs = [start_hub(&hub1), start_hub(&hub2)];
    let kept = start_device_with("kept", &kept_host, &[&hub1, &hub2]);
    let random = start_device_with("random", &random_host, &[&hub1, &hub2]);
    // A probe collides with a registration from the mesh port now and
    // then; it is then not counted, and netcheck says so. Asked before
    // the channels are open, netcheck fails saying so: asked again.
    let netcheck = |node: &Node| {
        wait_until(
            "a netcheck from the mesh port",
            Duration::from_secs(20),
            || {
                let output = node.ctl(&["--json", "netcheck"]);
                let reply: serde_json::Value = match output.status.success() {
                    true => serde_json::from_slice(&output.stdout).ok()?,
                    false => return None,
                };
                let probes = reply["probes"].as_array()?;
                let all_from_mesh_port = probes.len() == 2
                    && probes.iter().all(|probe| {
                        probe["local"]
                            .as_str()
                            .is_some_and(|local| local.ends_with(&format!(":{MESH_PORT}")))
                    });
                all_from_mesh_port.then_some(reply)
            },
        )
    };
    let reply = netcheck(&kept);
    assert_eq!(
        reply["observed"],
        format!("203.0.113.20:{MESH_PORT}"),
        "{reply}"
    );
    assert_eq!(reply["port_preserved"], true, "{reply}");
    assert_eq!(reply["same_port_for_all_destinations"], true, "{reply}");
    let reply = netcheck(&random);
    assert_eq!(reply["port_preserved"], false, "{reply}");
    assert_eq!(reply["same_port_for_all_destinations"], false, "{reply}");
    assert!(
        reply["verdict"].as_str().unwrap().contains("relay"),
        "{reply}"
    );
    let text = kept.ctl_ok(&["netcheck"]);
    assert!(
        text.contains("same public port for every destination: yes"),
        "{text}"
    );
}

#[test]
fn a_hub_on_every_interface_registers_its_own_device_where_others_reach_it() {
    let Some(mut lab) = lab_or_skip() else { return };
    let hub_host = lab.public_host("hub", 1).unwrap();
    // Behind a random-port NAT nobody can dial in: only a dial out to the
    // hub's device's real address makes the link direct.
    let mut carrier = lab.router("cgnat", 40, 4, Nat::RandomPort).unwrap();
    let host = lab.lan_host(&mut carrier, "dev").unwrap();
    // The defaults of a hub that serves other machines: signaling and mesh
    // on every interface, and its own device registering over loopback.
    let mut mesh = MeshOptions::with_hubs(&[format!("http://127.0.0.1:{HUB_PORT}")]);
    mesh.listen = format!("0.0.0.0:{MESH_PORT}");
    let hub = Node::start(NodeOptions {
        id: "hub".to_owned(),
        signaling_listen: format!("0.0.0.0:{HUB_PORT}"),
        mesh: Some(mesh),
        netns: Some(hub_host.netns.clone()),
        ..NodeOptions::default()
    });
    let dev = start_device("dev", &host, &hub_host);
    let (hub_end, dev_end) = wait_link(
        (&hub, "hub"),
        (&dev, "dev"),
        "direct",
        Duration::from_secs(10),
    );
    assert_eq!(
        dev_end,
        format!("203.0.113.1:{MESH_PORT}"),
        "dev dialled the hub's real address"
    );
    assert!(hub_end.starts_with("203.0.113.40:"), "{hub_end}");
    let listed = dev.ctl_json(&["devices"]);
    let own = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "hub")
        .cloned()
        .unwrap();
    assert_eq!(
        own["addr"],
        format!("203.0.113.1:{MESH_PORT}").as_str(),
        "{own}"
    );
    exchange((&hub, "hub"), (&dev, "dev"));
}

/// NATS for a cluster of the lab's hubs, on the internet segment.
const NATS_PORT: u16 = 4222;

/// A hub of a cluster on `nats` (advertising its listen address).
fn start_cluster_hub(id: &str, hub: &Host, nats: &NatsServer, signaling: &str) -> Node {
    Node::start(NodeOptions {
        id: id.to_owned(),
        signaling_listen: format!("{}:{HUB_PORT}", hub.ip),
        signaling: signaling.to_owned(),
        extra: format!("[cluster]\nnats = [\"{}\"]\n", nats.url()),
        netns: Some(hub.netns.clone()),
        ..NodeOptions::default()
    })
}

/// Two hubs of one cluster on the internet segment (NATS beside the
/// first), a behind `nat_a` knowing only the first and b behind a
/// port-preserving NAT knowing only the second.
struct ClusterLab {
    _nats: NatsServer,
    hub1: Node,
    hub2: Node,
    hub1_host: Host,
    a: Node,
    b: Node,
}

fn cluster_lab(
    lab: &mut meshd_tests::netlab::Lab,
    nat_a: Nat,
    signaling: &str,
) -> Option<ClusterLab> {
    let TwoHomes {
        hub: hub1_host,
        a: a_host,
        b: b_host,
        ..
    } = lab.two_homes(nat_a).unwrap();
    let hub2_host = lab.public_host("hub2", 2).unwrap();
    let nats = NatsServer::start_in(
        &hub1_host.netns,
        std::net::SocketAddr::from((hub1_host.ip, NATS_PORT)),
    )?;
    let hub1 = start_cluster_hub("hub1", &hub1_host, &nats, signaling);
    let hub2 = start_cluster_hub("hub2", &hub2_host, &nats, signaling);
    for hub in [&hub1, &hub2] {
        wait_until("both hubs in the cluster", Duration::from_secs(10), || {
            let status = hub.ctl_json(&["status"]);
            (status["roles"]["cluster"]["hubs"].as_array()?.len() == 2).then_some(())
        });
    }
    let a = start_device("a", &a_host, &hub1_host);
    let b = start_device("b", &b_host, &hub2_host);
    Some(ClusterLab {
        _nats: nats,
        hub1,
        hub2,
        hub1_host,
        a,
        b,
    })
}

#[test]
fn g_devices_on_two_hubs_of_a_cluster_punch_through_their_nats_with_signals_across_hubs() {
    let Some(mut lab) = lab_or_skip() else { return };
    let Some(cluster) = cluster_lab(&mut lab, Nat::PortPreserving, "") else {
        return;
    };
    let ClusterLab {
        hub1, hub2, a, b, ..
    } = &cluster;
    // As with one hub (case a), but each device's signals to the other go
    // through its own hub, the cluster, and the other's hub.
    let (a_end, b_end) = wait_link((a, "a"), (b, "b"), "direct", Duration::from_secs(15));
    assert_eq!(a_end, format!("203.0.113.30:{MESH_PORT}"));
    assert_eq!(b_end, format!("203.0.113.20:{MESH_PORT}"));
    exchange((a, "a"), (b, "b"));
    for hub in [hub1, hub2] {
        let log = hub.log();
        assert!(
            log.contains("request from another hub carried out")
                && log.contains("request=\"signal\""),
            "no signal crossed the cluster:\n{log}"
        );
    }
}

#[test]
fn h_a_relay_between_devices_on_two_hubs_runs_on_one_of_them() {
    let Some(mut lab) = lab_or_skip() else { return };
    let rate = format!("relay_bytes_per_sec = {}", 1024 * 1024);
    let Some(cluster) = cluster_lab(&mut lab, Nat::RandomPort, &rate) else {
        return;
    };
    let ClusterLab {
        hub1,
        hub2,
        hub1_host,
        a,
        b,
        ..
    } = &cluster;
    // a's NAT defeats hole punching, so the pair is relayed; the relay
    // runs on the hub of the lesser id, a's hub1, and b joins it there
    // with the key hub2 vouched for.
    let hub1_endpoint = format!("{}:{HUB_PORT}", hub1_host.ip);
    let (a_end, b_end) = wait_link((a, "a"), (b, "b"), "relayed", Duration::from_secs(20));
    assert_eq!(
        (a_end.as_str(), b_end.as_str()),
        (hub1_endpoint.as_str(), hub1_endpoint.as_str())
    );
    exchange((a, "a"), (b, "b"));
    let relays = |hub: &Node| hub.ctl_json(&["status"])["roles"]["signaling"]["relays"].clone();
    assert_eq!(relays(hub1), 1);
    assert_eq!(relays(hub2), 0);
    // b has no channel to hub1: only the relay.
    assert_eq!(
        hub1.ctl_json(&["status"])["roles"]["signaling"]["channels"],
        1
    );
}
