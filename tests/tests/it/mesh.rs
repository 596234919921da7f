//! The mesh role: identity, registration with several hubs, encrypted links
//! between real meshd processes on loopback, messages, pings, failures and
//! impostors.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use meshd_tests::http;
use meshd_tests::tap::Tap;
use meshd_tests::{MeshOptions, Node, NodeOptions, meshctl_bin, wait_until};
use nix::sys::signal::Signal;
use serde_json::json;

/// A port that was free a moment ago, for a hub that must know its own URL
/// before it starts.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A node that is both a hub and a device registered with itself.
pub(crate) fn hub_device(id: &str, extra_signaling: &str) -> Node {
    let port = free_port();
    Node::start(NodeOptions {
        id: id.to_owned(),
        signaling_listen: format!("127.0.0.1:{port}"),
        signaling: extra_signaling.to_owned(),
        mesh: Some(MeshOptions::with_hubs(&[format!(
            "http://127.0.0.1:{port}"
        )])),
        ..NodeOptions::default()
    })
}

pub(crate) fn device_options(id: &str, hubs: &[String]) -> NodeOptions {
    NodeOptions {
        id: id.to_owned(),
        signaling_enabled: false,
        mesh: Some(MeshOptions::with_hubs(hubs)),
        ..NodeOptions::default()
    }
}

pub(crate) fn device(id: &str, hubs: &[String]) -> Node {
    Node::start(device_options(id, hubs))
}

fn ids(nodes: &[&Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|node| {
            node.ctl_json(&["status"])["node_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Waits until every node shows every other one as `direct`.
pub(crate) fn wait_full_mesh(nodes: &[&Node], timeout: Duration) -> Duration {
    let started = Instant::now();
    let names = ids(nodes);
    wait_until("a full mesh", timeout, || {
        let complete = nodes.iter().zip(&names).all(|(node, me)| {
            let links = node.links();
            names.iter().filter(|id| *id != me).all(|other| {
                links
                    .iter()
                    .any(|(id, link)| id == other && link == "direct")
            })
        });
        complete.then(|| started.elapsed())
    })
}

pub(crate) fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The inbox of `node` as (from, text) pairs.
pub(crate) fn inbox(node: &Node) -> Vec<(String, String)> {
    node.ctl_json(&["messages"])
        .as_array()
        .unwrap()
        .iter()
        .map(|message| {
            (
                message["from"].as_str().unwrap().to_owned(),
                message["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Established TCP connections of a process, as (local, remote) ports, from
/// /proc: the sockets it holds, matched against /proc/net/tcp.
fn established_ports(node: &Node) -> Vec<(u16, u16)> {
    let pid = node.pid();
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
            (fields.get(3) == Some(&"01") && fields.get(9).is_some_and(|i| inodes.contains(*i)))
                .then(|| Some((port(fields[1])?, port(fields[2])?)))
                .flatten()
        })
        .collect()
}

/// Mesh connections between two nodes: each must be one the other holds
/// reversed, with one end on a mesh listener.
fn links_between(a: &Node, b: &Node) -> usize {
    let (a_port, b_port) = (a.mesh_addr().port(), b.mesh_addr().port());
    // A hub's signaling port carries the other's hub channel, which leaves
    // from its mesh port too: that connection is not a link.
    let signaling_port = |node: &Node| {
        node.ctl_json(&["status"])["roles"]["signaling"]["listen"]
            .as_str()
            .and_then(|listen| listen.parse::<SocketAddr>().ok())
            .map(|listen| listen.port())
    };
    let hub_ports: Vec<u16> = [signaling_port(a), signaling_port(b)]
        .into_iter()
        .flatten()
        .collect();
    let b_conns: HashSet<(u16, u16)> = established_ports(b).into_iter().collect();
    established_ports(a)
        .into_iter()
        .filter(|(local, remote)| b_conns.contains(&(*remote, *local)))
        .filter(|(local, remote)| !hub_ports.contains(local) && !hub_ports.contains(remote))
        .filter(|(local, remote)| *local == a_port || *remote == b_port)
        .count()
}

#[test]
fn four_devices_form_a_full_mesh_and_talk_in_every_direction() {
    let hub = hub_device("d0", "");
    let hubs = [hub.hub_url()];
    let mut others: Vec<Node> = ["d1", "d2", "d3"]
        .iter()
        .map(|id| Node::spawn(device_options(id, &hubs)))
        .collect();
    let last_start = Instant::now();
    for node in &mut others {
        node.wait_ready();
    }
    let mut nodes: Vec<&Node> = vec![&hub];
    nodes.extend(others.iter());
    wait_full_mesh(&nodes, Duration::from_secs(10));
    let formed = last_start.elapsed();
    assert!(
        formed <= Duration::from_secs(3),
        "full mesh took {formed:?} after the last start"
    );

    // Simultaneous dials at start-up settle on one connection per pair.
    std::thread::sleep(Duration::from_millis(500));
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            assert_eq!(links_between(a, b), 1, "exactly one link per pair");
        }
    }

    // Every device shows its identity and every other device's link.
    let names = ids(&nodes);
    for (node, me) in nodes.iter().zip(&names) {
        let status = node.mesh_status();
        assert_eq!(
            STANDARD
                .decode(status["pubkey"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert!(
            status["observed"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{status}"
        );
        assert_eq!(status["links"], 3);
        let devices = node.ctl_json(&["devices"]);
        for device in devices.as_array().unwrap() {
            for field in [
                "id",
                "addr",
                "observed",
                "last_seen",
                "pubkey",
                "link",
                "endpoint",
                "rtt_ms",
            ] {
                assert!(device.get(field).is_some(), "{field} missing in {device}");
            }
            if device["id"] == me.as_str() {
                assert_eq!(device["link"], "self");
            } else {
                assert!(
                    device["endpoint"]
                        .as_str()
                        .unwrap()
                        .starts_with("127.0.0.1:")
                );
            }
        }
    }

    // Messages and pings in every direction.
    for (from, from_id) in nodes.iter().zip(&names) {
        for to_id in names.iter().filter(|id| *id != from_id) {
            let text = format!("hello {to_id} from {from_id}");
            let out = from.ctl_ok(&["send", to_id, "hello", to_id, "from", from_id]);
            assert!(out.starts_with(&format!("delivered to {to_id}")), "{out}");
            let pong = from.ctl_json(&["ping", to_id]);
            assert_eq!(pong[0]["device"], to_id.as_str());
            assert_eq!(pong[0]["path"], "direct");
            assert!(pong[0]["rtt_ms"].as_f64().unwrap() > 0.0);
            let _ = text;
        }
    }
    for (node, me) in nodes.iter().zip(&names) {
        let received = inbox(node);
        for from in names.iter().filter(|id| *id != me) {
            let text = format!("hello {me} from {from}");
            assert!(
                received.contains(&(from.clone(), text.clone())),
                "{me} lacks {text:?}: {received:?}"
            );
        }
        assert_eq!(received.len(), 3, "each message stored once");
    }

    // The receiver logs what arrives.
    assert!(
        others[0].log().contains("message received"),
        "{}",
        others[0].log()
    );
    // ping -c N: one line per reply, then a summary.
    let pings = hub.ctl_ok(&["ping", "d1", "-c", "2"]);
    assert_eq!(
        pings.matches("reply from d1 via direct").count(),
        2,
        "{pings}"
    );
    assert!(pings.contains("2 sent, 2 answered, 0 lost"), "{pings}");

    // send --all: one result per peer, all delivered.
    let results = hub.ctl_json(&["send", "--all", "to", "everyone"]);
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results.iter().all(|r| r["delivered"] == true),
        "{results:?}"
    );
    for node in &others {
        assert!(inbox(node).contains(&("d0".to_owned(), "to everyone".to_owned())));
    }

    // An unknown device: exit 1 with the reason.
    let output = hub.ctl(&["send", "nobody", "hi"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("unknown device nobody"),
        "{}",
        stderr(&output)
    );
    let output = hub.ctl(&["ping", "nobody"]);
    assert_eq!(output.status.code(), Some(1));
    // Usage errors are 2.
    assert_eq!(hub.ctl(&["send"]).status.code(), Some(2));
    assert_eq!(hub.ctl(&["send", "d1"]).status.code(), Some(2));
}

#[test]
fn a_killed_device_goes_down_and_relinks_with_the_same_identity() {
    let hub = hub_device("hub", "");
    let hubs = [hub.hub_url()];
    let a = device("a", &hubs);
    let mut b = device("b", &hubs);
    wait_full_mesh(&[&hub, &a, &b], Duration::from_secs(10));
    let key = b.pubkey();
    let key_file = b.dir().join("state/device-key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the device key is private");

    b.kill9();
    let killed = Instant::now();
    for node in [&hub, &a] {
        wait_until("b shown down", Duration::from_secs(35), || {
            node.link_to("b")
                .is_some_and(|link| link != "direct")
                .then_some(())
        });
    }
    assert!(killed.elapsed() < Duration::from_secs(35));
    let output = a.ctl(&["send", "b", "are you there"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no link to b"),
        "{}",
        stderr(&output)
    );

    b.restart();
    let restarted = Instant::now();
    wait_full_mesh(&[&hub, &a, &b], Duration::from_secs(15));
    assert!(restarted.elapsed() < Duration::from_secs(15));
    assert_eq!(
        b.pubkey(),
        key,
        "the same state dir keeps the same identity"
    );
    a.ctl_ok(&["send", "b", "welcome back"]);
    assert!(inbox(&b).contains(&("a".to_owned(), "welcome back".to_owned())));
}

#[test]
fn a_frozen_device_is_declared_dead_after_6s_of_silence() {
    let hub = hub_device("hub", "");
    let hubs = [hub.hub_url()];
    let a = device("a", &hubs);
    let mut frozen = device("frozen", &hubs);
    wait_full_mesh(&[&hub, &a, &frozen], Duration::from_secs(10));
    // Its sockets stay open but nothing answers: only keepalives can tell.
    frozen.freeze();
    let stopped = Instant::now();
    // Meanwhile the link still looks up, so a send waits and gives up with
    // the reason: no acknowledgement, or (if the silence was found first and
    // the relay could not take over either) no link.
    let output = a.ctl(&["send", "frozen", "hello?"]);
    assert_eq!(output.status.code(), Some(1));
    let error = stderr(&output);
    assert!(
        error.contains("frozen did not acknowledge within 5s")
            || error.contains("no link to frozen"),
        "{error}"
    );
    wait_until("frozen shown down", Duration::from_secs(20), || {
        a.link_to("frozen")
            .is_some_and(|link| link != "direct")
            .then_some(())
    });
    let took = stopped.elapsed();
    frozen.signal(Signal::SIGCONT);
    // Six seconds after the last keepalive answer, which came at most one
    // keepalive (2 s) before the stop.
    assert!(
        took <= Duration::from_secs(10),
        "declared dead after {took:?}"
    );
    assert!(
        took >= Duration::from_secs(3),
        "declared dead too early: {took:?}"
    );
    assert!(a.log().contains("silent for 6s"), "{}", a.log());
    frozen.kill9();
}

#[test]
fn an_impostor_gets_409_and_no_link_while_the_real_device_keeps_its_messages() {
    let hub = hub_device("hub", "");
    let hubs = [hub.hub_url()];
    let a = device("a", &hubs);
    let b = device("b", &hubs);
    wait_full_mesh(&[&hub, &a, &b], Duration::from_secs(10));
    let real_key = b.pubkey();

    // Same id, new state dir, so a new key.
    let impostor = device("b", &hubs);
    let refused = wait_until(
        "the impostor's registration refused",
        Duration::from_secs(10),
        || {
            let status = impostor.mesh_status();
            let error = status["signaling"][0]["error"]
                .as_str()
                .map(ToOwned::to_owned);
            error.filter(|error| error.contains("409"))
        },
    );
    assert_eq!(
        refused.matches("meshctl devices remove b").count(),
        1,
        "the hint once: {refused}"
    );
    let log = impostor.log();
    assert!(
        log.contains("signaling server refused the registration")
            && !log.contains("signaling server unreachable"),
        "a 409 is a refusal, not an outage:\n{log}"
    );
    assert_ne!(impostor.pubkey(), real_key);

    // A refused device gets no list: it knows of nobody to dial, and
    // nobody links to it.
    assert!(
        impostor.links().iter().all(|(id, _)| id == "b"),
        "{:?}",
        impostor.links()
    );
    let output = impostor.ctl(&["send", "a", "let me in"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(inbox(&a).is_empty(), "nothing from the impostor reached a");

    // The real b keeps its key binding, its link and its messages.
    let devices = a.ctl_json(&["devices"]);
    let listed = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|device| device["id"] == "b")
        .unwrap()
        .clone();
    assert_eq!(listed["pubkey"], real_key.as_str());
    assert_eq!(listed["link"], "direct");
    a.ctl_ok(&["send", "b", "for the real b"]);
    assert!(inbox(&b).contains(&("a".to_owned(), "for the real b".to_owned())));
    assert!(inbox(&impostor).is_empty());

    // Raw registration with the id and another key: 409 as well.
    let reply = http::post_json(
        hub.signaling_addr(),
        "/register",
        &json!({"id": "b", "addr": "127.0.0.1:9", "pubkey": STANDARD.encode([9u8; 32])}),
    );
    assert_eq!(reply.status, 409, "{reply:?}");
}

#[test]
fn losing_one_of_two_signaling_servers_loses_nothing() {
    // A fixed port, so that hub1 comes back where the devices look for it.
    let mut hub1 = Node::start(NodeOptions {
        id: "hub1".to_owned(),
        signaling_listen: format!("127.0.0.1:{}", free_port()),
        ..NodeOptions::default()
    });
    let hub2 = Node::start(NodeOptions {
        id: "hub2".to_owned(),
        ..NodeOptions::default()
    });
    let hubs = [hub1.hub_url(), hub2.hub_url()];
    let a = device("a", &hubs);
    let b = device("b", &hubs);
    wait_full_mesh(&[&a, &b], Duration::from_secs(10));
    // Both hubs list both devices.
    for hub in [&hub1, &hub2] {
        let listed = http::get(hub.signaling_addr(), "/devices").json();
        assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    }

    hub1.stop();
    wait_until("a notices hub1 is gone", Duration::from_secs(40), || {
        let status = a.mesh_status();
        (status["signaling"][0]["reachable"] == false
            && status["signaling"][1]["reachable"] == true)
            .then_some(())
    });
    // A device that joins now is known only to hub2: still found.
    let c = device("c", &[hubs[1].clone()]);
    wait_full_mesh(&[&a, &b, &c], Duration::from_secs(10));
    a.ctl_ok(&["send", "b", "still here"]);
    a.ctl_ok(&["send", "c", "hello newcomer"]);
    assert!(inbox(&c).contains(&("a".to_owned(), "hello newcomer".to_owned())));
    // One log line for the outage, not one per retry.
    let outages = a.log().matches("signaling server unreachable").count();
    assert_eq!(outages, 1, "{}", a.log());

    // hub1 comes back: the next retry (backoff at most 30 s, jittered)
    // registers again, and that is logged once.
    hub1.restart();
    wait_until(
        "a registered with hub1 again",
        Duration::from_secs(50),
        || (a.mesh_status()["signaling"][0]["reachable"] == true).then_some(()),
    );
    assert_eq!(
        a.log().matches("signaling server reachable again").count(),
        1
    );
    assert_eq!(a.log().matches("signaling server unreachable").count(), 1);
}

#[test]
fn the_bytes_of_a_link_hold_no_plaintext() {
    let hub = hub_device("hub", "");
    let hubs = [hub.hub_url()];
    // Each device is reached only through its own tap (it advertises the
    // tap), so the link between them crosses a tap whichever side dials.
    let tapped = |id: &str| {
        let port = free_port();
        let tap = Tap::start(SocketAddr::from(([127, 0, 0, 1], port)));
        let mut options = device_options(id, &hubs);
        if let Some(mesh) = options.mesh.as_mut() {
            mesh.listen = format!("127.0.0.1:{port}");
            mesh.extra = format!("advertise = [\"{}\"]", tap.addr());
        }
        (Node::start(options), tap)
    };
    let (b, b_tap) = tapped("b");
    let (a, a_tap) = tapped("a");
    wait_until(
        "a and b link through a tap",
        Duration::from_secs(10),
        || {
            let devices = a.ctl_json(&["devices"]);
            let direct = devices
                .as_array()
                .unwrap()
                .iter()
                .any(|device| device["id"] == "b" && device["link"] == "direct");
            // a dialled b's tap, or b dialled a's tap: either way one tap
            // carries the handshake.
            let through_tap = a_tap.captured().len() + b_tap.captured().len() > 0;
            (direct && through_tap).then_some(())
        },
    );
    let secret = "attack at dawn, the password is swordfish";
    a.ctl_ok(&["send", "b", secret]);
    b.ctl_ok(&["send", "a", secret]);
    assert!(inbox(&b).contains(&("a".to_owned(), secret.to_owned())));
    let mut captured = a_tap.captured();
    captured.extend(b_tap.captured());
    assert!(
        captured.len() > 2 * secret.len(),
        "the tap saw the link ({} bytes)",
        captured.len()
    );
    for needle in [secret.as_bytes(), b"swordfish", b"attack", b"\"a\"", b"hub"] {
        assert!(
            !captured
                .windows(needle.len())
                .any(|window| window == needle),
            "plaintext {:?} on the wire",
            String::from_utf8_lossy(needle)
        );
    }
}

#[test]
fn a_device_that_leaves_every_registry_loses_its_link() {
    let hub = hub_device("hub", "device_ttl = \"3s\"");
    let hubs = [hub.hub_url()];
    let a = device("a", &hubs);
    let mut gone = device("gone", &hubs);
    wait_full_mesh(&[&hub, &a, &gone], Duration::from_secs(10));
    // Frozen, it stops heartbeating and expires from the hub; whatever its
    // link does meanwhile, a must then drop it from its list.
    gone.freeze();
    let stopped = Instant::now();
    wait_until(
        "gone dropped from a's devices",
        Duration::from_secs(15),
        || a.link_to("gone").is_none().then_some(()),
    );
    assert!(stopped.elapsed() < Duration::from_secs(15));
    assert!(
        a.log()
            .contains("no signaling server that answers lists it any more"),
        "{}",
        a.log()
    );
    // Heartbeats every ttl/3 kept the others listed all along.
    let listed = http::get(hub.signaling_addr(), "/devices").json();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|device| device["id"].as_str())
        .collect();
    assert_eq!(listed, ["a", "hub"]);
    gone.signal(Signal::SIGCONT);
    gone.kill9();
}

#[test]
fn a_wildcard_listener_registers_its_route_address_and_join_tokens_apply() {
    let hub = hub_device("hub", "join_token = \"s3cret\"");
    // The hub's own device has no token yet: it is refused with a hint.
    let status = wait_until("the hub's device refused", Duration::from_secs(10), || {
        let status = hub.mesh_status();
        status["signaling"][0]["error"]
            .as_str()
            .map(ToOwned::to_owned)
    });
    assert!(
        status.contains("401") && status.contains("join_token"),
        "{status}"
    );
    assert!(
        hub.log()
            .contains("signaling server refused the registration"),
        "{}",
        hub.log()
    );

    let hubs = [hub.hub_url()];
    let mut options = device_options("wild", &hubs);
    if let Some(mesh) = options.mesh.as_mut() {
        mesh.listen = "0.0.0.0:0".to_owned();
        mesh.extra = "join_token = \"s3cret\"".to_owned();
    }
    let wild = Node::start(options);
    let port = wild.mesh_addr().port();
    let listed = wait_until("wild registered", Duration::from_secs(10), || {
        let devices = http::request(
            hub.signaling_addr(),
            "GET",
            "/devices",
            &[("Authorization", "Bearer s3cret")],
            b"",
        )
        .json();
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|device| device["id"] == "wild")
            .cloned()
    });
    assert_eq!(listed["addr"], format!("127.0.0.1:{port}"), "{listed}");
    assert_eq!(listed["endpoints"], json!([format!("127.0.0.1:{port}")]));
    assert_eq!(listed["pubkey"], wild.pubkey().as_str());
}

#[test]
fn messages_follow_streams_each_message_as_it_arrives() {
    let hub = hub_device("hub", "");
    let a = device("a", &[hub.hub_url()]);
    wait_full_mesh(&[&hub, &a], Duration::from_secs(10));
    hub.ctl_ok(&["send", "a", "before following"]);
    let mut follower = Command::new(meshctl_bin())
        .arg("--socket")
        .arg(a.socket())
        .args(["--json", "messages", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(3)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(300));
    hub.ctl_ok(&["send", "a", "first"]);
    hub.ctl_ok(&["send", "a", "second"]);
    wait_until("three lines followed", Duration::from_secs(10), || {
        reader.is_finished().then_some(())
    });
    let lines = reader.join().unwrap();
    let texts: Vec<String> = lines
        .iter()
        .map(|line| {
            let message: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(message["from"], "hub");
            assert!(message["received_at"].as_str().unwrap().ends_with('Z'));
            message["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(texts, ["before following", "first", "second"]);
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn a_malformed_frame_closes_only_that_link_and_a_stolen_id_is_refused() {
    use meshd_link::{Frame, Hello, StaticKey};
    use tokio::io::AsyncWriteExt;

    let hub = hub_device("hub", "");
    let a = device("a", &[hub.hub_url()]);
    wait_full_mesh(&[&hub, &a], Duration::from_secs(10));
    let a_key: [u8; 32] = STANDARD.decode(a.pubkey()).unwrap().try_into().unwrap();
    let a_addr = a.mesh_addr();

    // mallory: a third-party client of the link protocol, registered with
    // its own key like any device.
    let mallory = StaticKey::generate().unwrap();
    let reply = http::post_json(
        hub.signaling_addr(),
        "/register",
        &json!({"id": "mallory", "addr": "127.0.0.1:9", "pubkey": STANDARD.encode(mallory.public())}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let hello = |from: &str| Hello {
        from: from.to_owned(),
        to: "a".to_owned(),
        instance: 1,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A proper link: the message is stored and acknowledged.
        let stream = tokio::net::TcpStream::connect(a_addr).await.unwrap();
        let (link, answer) = meshd_link::connect(stream, &mallory, &a_key, &hello("mallory"))
            .await
            .unwrap();
        assert_eq!(answer.from, "a");
        let (mut reader, mut writer) = link.split();
        let text = bytes::Bytes::from_static(b"from a third-party client");
        writer.send(&Frame::Message { id: 1, text }).await.unwrap();
        loop {
            match reader.next().await.unwrap() {
                Frame::Ack { id: 1 } => break,
                _other => continue,
            }
        }
        // A well-sealed but malformed frame (text that is not UTF-8) ends
        // this link.
        let bad = bytes::Bytes::from_static(&[0xff, 0xfe]);
        writer
            .send(&Frame::Message { id: 2, text: bad })
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if reader.next().await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "a kept the link after a malformed frame");

        // Claiming hub's id with mallory's key: no answer at all.
        let stream = tokio::net::TcpStream::connect(a_addr).await.unwrap();
        let stolen = meshd_link::connect(stream, &mallory, &a_key, &hello("hub")).await;
        assert!(stolen.is_err(), "a answered a dialler with a stolen id");

        // An id with a newline and escape codes cannot forge a log line.
        let stream = tokio::net::TcpStream::connect(a_addr).await.unwrap();
        let forged = meshd_link::connect(
            stream,
            &mallory,
            &a_key,
            &hello("evil\nFORGED meshd ready\x1b[2J"),
        )
        .await;
        assert!(forged.is_err(), "a answered a dialler with a forged id");

        // Not the link protocol at all.
        let mut garbage = tokio::net::TcpStream::connect(a_addr).await.unwrap();
        garbage
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 1, 2, 3])
            .await
            .unwrap();
    });
    assert!(inbox(&a).contains(&("mallory".to_owned(), "from a third-party client".to_owned())));
    assert!(a.log().contains("malformed frame"), "{}", a.log());
    assert!(a.log().contains("link refused"), "{}", a.log());
    wait_until("the forged id logged", Duration::from_secs(5), || {
        a.log()
            .contains(r"evil\nFORGED meshd ready\u{1b}[2J")
            .then_some(())
    });
    assert!(
        !a.log().lines().any(|line| line.starts_with("FORGED")) && !a.log().contains('\x1b'),
        "a peer forged a log line:\n{}",
        a.log()
    );
    // Only mallory's links ended: hub and a still talk.
    assert_eq!(a.link_to("hub").as_deref(), Some("direct"));
    hub.ctl_ok(&["send", "a", "still fine"]);
    a.ctl_ok(&["ping", "hub"]);
}

#[test]
fn a_hub_device_lists_what_its_own_hub_registers_at_once() {
    let hub = hub_device("hub", "");
    wait_until("the hub device registered", Duration::from_secs(10), || {
        hub.link_to("hub").filter(|link| link == "self")
    });
    // Without a key: listed at once, and down, since it can have no link.
    let reply = http::post_json(
        hub.signaling_addr(),
        "/register",
        &json!({"id": "laptop", "addr": "203.0.113.7:8082"}),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(hub.link_to("laptop").as_deref(), Some("down"));
    // A real device is linked without waiting for the hub device's next
    // round (20 s away): its registration here refreshes the roster.
    let a = device("a", &[hub.hub_url()]);
    let linked = Instant::now();
    wait_full_mesh(&[&hub, &a], Duration::from_secs(5));
    assert!(linked.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_mesh_port_in_use_stops_the_start_despite_port_sharing() {
    let port = free_port();
    let mut first = device_options("first", &["http://127.0.0.1:9".to_owned()]);
    if let Some(mesh) = first.mesh.as_mut() {
        mesh.listen = format!("127.0.0.1:{port}");
    }
    let mut second = first.clone();
    second.id = "second".to_owned();
    let _first = Node::start(first);
    let mut second = Node::spawn(second);
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = second.log();
    assert!(
        log.contains(&format!("binding mesh listener on 127.0.0.1:{port}"))
            && log.contains("another process holds that port"),
        "{log}"
    );
}

#[test]
fn a_device_pointed_at_a_chat_port_is_told_it_is_not_a_hub() {
    let chat = Node::start(NodeOptions {
        id: "chat".to_owned(),
        signaling_enabled: false,
        chat_enabled: true,
        ..NodeOptions::default()
    });
    let url = format!("http://{}", chat.chat_addr());
    let lost = device("lost", &[url]);
    let error = wait_until("the registration fails", Duration::from_secs(10), || {
        lost.mesh_status()["signaling"][0]["error"]
            .as_str()
            .map(ToOwned::to_owned)
    });
    assert!(
        error.contains("not its chat or mesh port") && error.contains("[signaling] listen"),
        "{error}"
    );
    assert!(
        lost.log()
            .contains("signaling server answered, but not as a meshd hub"),
        "{}",
        lost.log()
    );
}

#[test]
fn a_peer_task_that_dies_is_noticed_logged_once_and_replaced() {
    let hub = hub_device("hub", "");
    let hubs = [hub.hub_url()];
    let mut options = device_options("a", &hubs);
    // Debug builds only: a's task for b panics on its first send.
    options.env = vec![("MESHD_FAULTS".to_owned(), "peer-task-panic:b".to_owned())];
    let a = Node::start(options);
    let b = device("b", &hubs);
    wait_full_mesh(&[&hub, &a, &b], Duration::from_secs(10));
    let first = a.ctl(&["send", "b", "lost with the task"]);
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    // A new task for b takes over: sends work again, without a restart of
    // meshd and without any other device noticing.
    let started = Instant::now();
    wait_until("sends to b work again", Duration::from_secs(10), || {
        a.ctl(&["send", "b", "after the restart"])
            .status
            .success()
            .then_some(())
    });
    eprintln!("replaced within {:?}", started.elapsed());
    assert!(inbox(&b).contains(&("a".to_owned(), "after the restart".to_owned())));
    assert_eq!(a.link_to("hub").as_deref(), Some("direct"));
    assert_eq!(
        a.log().matches("link task panicked").count(),
        1,
        "{}",
        a.log()
    );
}

#[test]
fn every_hub_down_leaves_working_links_alone() {
    // A 2 s device TTL: without the last roster kept, the devices would drop
    // each other within a few seconds of the hub stopping.
    let mut hub = Node::start(NodeOptions {
        id: "hub".to_owned(),
        signaling_listen: format!("127.0.0.1:{}", free_port()),
        signaling: "device_ttl = \"2s\"\n".to_owned(),
        ..NodeOptions::default()
    });
    let hubs = [hub.hub_url()];
    let a = device("a", &hubs);
    let b = device("b", &hubs);
    wait_full_mesh(&[&a, &b], Duration::from_secs(10));
    hub.stop();
    wait_until("a notices the hub is gone", Duration::from_secs(20), || {
        (a.mesh_status()["signaling"][0]["reachable"] == false).then_some(())
    });
    // Five TTLs with no hub: the link stays direct and messages flow.
    let outage = Instant::now();
    let mut sent = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            a.link_to("b").as_deref(),
            Some("direct"),
            "after {:?}",
            outage.elapsed()
        );
        a.ctl_ok(&["send", "b", &format!("during the outage {sent}")]);
        sent += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(a.ctl_ok(&["devices"]).contains('b'), "b is still listed");
    for node in [&a, &b] {
        assert!(
            !node.log().contains("closing the link to a device"),
            "{}",
            node.log()
        );
    }
    // The hub comes back and lists both again; nothing was torn down.
    hub.restart();
    wait_until("both registered again", Duration::from_secs(40), || {
        (http::get(hub.signaling_addr(), "/devices")
            .json()
            .as_array()
            .is_some_and(|listed| listed.len() == 2))
        .then_some(())
    });
    // With a 2 s TTL, a may have heard the hub's first list, without b,
    // for longer than b's grace while b's reconnect waited out its backoff
    // (up to 8 s after 10 s of outage), and have relinked since.
    wait_until("a links to b", Duration::from_secs(20), || {
        (a.link_to("b").as_deref() == Some("direct")).then_some(())
    });
    a.ctl_ok(&["send", "b", "after the outage"]);
    assert!(inbox(&b).contains(&("a".to_owned(), "after the outage".to_owned())));
}

#[test]
fn an_inbox_of_large_messages_is_listed_in_pages() {
    let hub = hub_device("hub", "");
    let hubs = [hub.hub_url()];
    let a = device("a", &hubs);
    let b = device("b", &hubs);
    wait_full_mesh(&[&hub, &a, &b], Duration::from_secs(10));
    // 20 texts at the limit: about 1.3 MiB, more than one control frame.
    for i in 0..20 {
        let text = format!("{i:02}{}", "m".repeat(64 * 1024 - 2));
        a.ctl_ok(&["send", "b", &text]);
    }
    let listed = b.ctl_json(&["messages"]);
    let texts: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 20);
    for (i, text) in texts.iter().enumerate() {
        assert!(text.starts_with(&format!("{i:02}")) && text.len() == 64 * 1024);
    }
    // One byte over the limit is refused before it leaves.
    let over = "x".repeat(64 * 1024 + 1);
    let output = a.ctl(&["send", "b", &over]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_crowd_of_fake_devices_costs_a_few_log_lines_not_thousands() {
    let hub = Node::start(NodeOptions {
        id: "hub".to_owned(),
        signaling: "registrations_per_sec = 0\n".to_owned(),
        ..NodeOptions::default()
    });
    // More keyed devices than a node keeps links to (4096), registered
    // before the watcher starts, at an address that refuses at once.
    let addr = hub.signaling_addr();
    let threads: Vec<_> = (0..4)
        .map(|part| {
            std::thread::spawn(move || {
                for i in (part..4200).step_by(4) {
                    let mut key = [0u8; 32];
                    key[..4].copy_from_slice(&(i as u32).to_be_bytes());
                    key[31] = 1;
                    let reply = http::post_json(
                        addr,
                        "/register",
                        &json!({"id": format!("fake{i}"), "addr": "127.0.0.1:9", "pubkey": STANDARD.encode(key)}),
                    );
                    assert_eq!(reply.status, 200, "{reply:?}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let watcher = device("watcher", &[hub.hub_url()]);
    wait_until("the cap is reached", Duration::from_secs(30), || {
        watcher
            .log()
            .contains("too many devices; no link made")
            .then_some(())
    });
    // Every reconcile (5 s) and every list push meets the cap again; the
    // log says so once per 10 s, with a count.
    std::thread::sleep(Duration::from_secs(12));
    let lines = watcher
        .log()
        .matches("too many devices; no link made")
        .count();
    assert!(lines <= 3, "{lines} lines:\n{}", watcher.log());
    assert!(watcher.log().contains("devices=104"), "{}", watcher.log());
}

#[test]
fn a_device_stopped_cleanly_leaves_its_peers_at_once() {
    let hub = hub_device("hub", "");
    let hubs = [hub.hub_url()];
    let a = device("a", &hubs);
    let mut b = device("b", &hubs);
    wait_full_mesh(&[&hub, &a, &b], Duration::from_secs(10));
    assert!(a.ctl_ok(&["devices"]).contains("\nb "), "the table lists b");
    b.stop();
    // Well inside the 60 s TTL: b is gone from a's list and the hub's.
    let stopped = Instant::now();
    wait_until("a drops b", Duration::from_secs(5), || {
        (!a.ctl_ok(&["devices"]).contains("\nb ")).then_some(())
    });
    eprintln!("a dropped b {:?} after it stopped", stopped.elapsed());
    let listed = http::get(hub.signaling_addr(), "/devices").json();
    assert!(
        listed.as_array().unwrap().iter().all(|d| d["id"] != "b"),
        "{listed}"
    );
    assert!(hub.log().contains("device left"), "{}", hub.log());
    // Its key binding stays: it comes back with the same key.
    b.restart();
    wait_full_mesh(&[&hub, &a, &b], Duration::from_secs(15));
    a.ctl_ok(&["send", "b", "welcome back"]);
}
