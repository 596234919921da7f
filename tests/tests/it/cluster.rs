//! The cluster (docs/cluster.md) against a real nats-server with JetStream:
//! hubs that name the same NATS know each other, a hub that stops or dies
//! leaves the others' view, and a hub whose NATS goes away keeps serving
//! its own devices, says so once, and joins again when NATS is back.

use std::time::Duration;

use meshd_tests::http;
use meshd_tests::nats::NatsServer;
use meshd_tests::{Node, NodeOptions, wait_until};
use serde_json::{Value, json};

use crate::mesh::{device, free_port, wait_full_mesh};

/// A hub of the cluster on `nats`, on a fixed loopback port (its
/// advertised URL is its listen address).
fn cluster_hub(id: &str, nats: &NatsServer) -> Node {
    Node::start(NodeOptions {
        id: id.to_owned(),
        signaling_listen: format!("127.0.0.1:{}", free_port()),
        extra: format!("[cluster]\nnats = [\"{}\"]\n", nats.url()),
        ..NodeOptions::default()
    })
}

fn cluster_status(node: &Node) -> Value {
    node.ctl_json(&["status"])["roles"]["cluster"].clone()
}

/// The ids of the hubs `node` knows, once it is connected.
fn hub_ids(node: &Node) -> Option<Vec<String>> {
    let status = cluster_status(node);
    (status["connected"] == true).then(|| {
        status["hubs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hub| hub["id"].as_str().unwrap().to_owned())
            .collect()
    })
}

#[test]
fn hubs_on_one_nats_know_each_other_and_one_that_leaves_or_dies_goes() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let a = cluster_hub("hub-a", &nats);
    let mut b = cluster_hub("hub-b", &nats);
    let mut c = cluster_hub("hub.c", &nats);
    for node in [&a, &b, &c] {
        wait_until("three hubs known", Duration::from_secs(10), || {
            (hub_ids(node)? == ["hub-a", "hub-b", "hub.c"]).then_some(())
        });
    }
    // What a hub announces is what its own status says of it.
    let status = cluster_status(&a);
    let b_entry = status["hubs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|hub| hub["id"] == "hub-b")
        .unwrap()
        .clone();
    assert_eq!(b_entry["url"], b.hub_url().as_str(), "{status}");
    let b_key = b.ctl_json(&["status"])["roles"]["signaling"]["hub_key"].clone();
    assert_eq!(b_entry["hub_key"], b_key, "{status}");
    assert_eq!(status["advertise"], a.hub_url().as_str());
    assert_eq!(status["nats"], json!([nats.url()]));
    let text = a.ctl_ok(&["status"]);
    assert!(
        text.contains(&format!(
            "cluster:   3 hubs through NATS {}, connected",
            nats.url()
        )),
        "{text}"
    );

    // A hub that stops takes its announcement back: gone at once.
    b.stop();
    wait_until(
        "b gone after its clean stop",
        Duration::from_secs(3),
        || (hub_ids(&a)? == ["hub-a", "hub.c"]).then_some(()),
    );
    // One that dies is gone when its announcements stop (8 s).
    c.kill9();
    wait_until("c gone after kill -9", Duration::from_secs(15), || {
        (hub_ids(&a)? == ["hub-a"]).then_some(())
    });
}

#[test]
fn without_nats_a_hub_keeps_serving_says_so_once_and_joins_again() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let hub = cluster_hub("hub-a", &nats);
    wait_until("connected", Duration::from_secs(10), || {
        (hub_ids(&hub)? == ["hub-a"]).then_some(())
    });
    nats.stop();
    let status = wait_until("degraded", Duration::from_secs(10), || {
        let status = cluster_status(&hub);
        (status["connected"] == false).then_some(status)
    });
    assert!(
        status["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    let text = hub.ctl_ok(&["status"]);
    assert!(text.contains("degraded: "), "{text}");
    // The hub's own work goes on: registrations and lists.
    let registered = http::post_json(
        hub.signaling_addr(),
        "/register",
        &json!({"id": "laptop", "addr": "192.0.2.7:8082"}),
    );
    assert_eq!(registered.status, 200, "{registered:?}");
    let listed = http::get(hub.signaling_addr(), "/devices").json();
    assert_eq!(listed[0]["id"], "laptop", "{listed}");
    // Several seconds of outage, one warning.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        hub.log().matches("cluster unreachable").count(),
        1,
        "{}",
        hub.log()
    );

    nats.launch();
    wait_until("connected again", Duration::from_secs(20), || {
        (hub_ids(&hub)? == ["hub-a"]).then_some(())
    });
    assert_eq!(hub.log().matches("cluster reachable again").count(), 1);
}

#[test]
fn a_cluster_without_a_hub_or_a_dialable_url_is_refused() {
    // Checked at load, before anything starts; the config tests cover the
    // messages, this the exit status of a real start.
    let mut node = Node::prepare(NodeOptions {
        signaling_listen: "0.0.0.0:0".into(),
        extra: "[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\n".into(),
        ..NodeOptions::default()
    });
    node.launch();
    assert_eq!(node.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let log = node.log();
    assert!(
        log.contains("cluster.advertise: signaling.listen 0.0.0.0:0 is a wildcard address"),
        "{log}"
    );
}

fn listed_ids(hub: &Node) -> Vec<String> {
    http::get(hub.signaling_addr(), "/devices")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|device| device["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_hub_lists_every_device_and_devices_on_two_hubs_link() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let a = cluster_hub("hub-a", &nats);
    let mut b = cluster_hub("hub-b", &nats);
    for hub in [&a, &b] {
        wait_until("both hubs joined", Duration::from_secs(10), || {
            (hub_ids(hub)?.len() == 2).then_some(())
        });
    }
    // A registration at one hub is listed at the other, and its removal.
    let registered = http::post_json(
        a.signaling_addr(),
        "/register",
        &json!({"id": "laptop.1", "addr": "192.0.2.7:8082"}),
    );
    assert_eq!(registered.status, 200);
    wait_until("laptop.1 listed at hub-b", Duration::from_secs(5), || {
        (listed_ids(&b) == ["laptop.1"]).then_some(())
    });
    a.ctl_ok(&["devices", "remove", "laptop.1"]);
    wait_until("laptop.1 gone from hub-b", Duration::from_secs(5), || {
        listed_ids(&b).is_empty().then_some(())
    });

    // Devices that each know one hub find each other through the cluster,
    // link, and talk.
    let one = device("one", &[a.hub_url()]);
    let two = device("two", &[b.hub_url()]);
    wait_full_mesh(&[&one, &two], Duration::from_secs(20));
    one.ctl_ok(&["send", "two", "across the cluster"]);
    let inbox = crate::mesh::inbox(&two);
    assert_eq!(inbox, [("one".to_owned(), "across the cluster".to_owned())]);
    assert_eq!(b.ctl_json(&["status"])["roles"]["signaling"]["devices"], 2);
    // Each hub's console names the hub that lists each device.
    wait_until(
        "each device's hub on hub-a's console",
        Duration::from_secs(5),
        || {
            let view = http::get(a.web_addr(), "/api/v1/mesh").json();
            let hubs_of = |id: &str| {
                view["devices"]
                    .as_array()?
                    .iter()
                    .find(|device| device["id"] == id)
                    .map(|device| device["hubs"].clone())
            };
            (hubs_of("one")? == json!([a.hub_url()]) && hubs_of("two")? == json!([b.hub_url()]))
                .then_some(())
        },
    );

    // A hub that dies takes its devices out of the others' lists: one
    // registered over HTTP is gone for good, a device with a channel
    // moves to the other hub and is listed there as its own.
    let registered = http::post_json(
        b.signaling_addr(),
        "/register",
        &json!({"id": "laptop.2", "addr": "192.0.2.8:8082"}),
    );
    assert_eq!(registered.status, 200);
    wait_until("laptop.2 listed at hub-a", Duration::from_secs(5), || {
        listed_ids(&a)
            .contains(&"laptop.2".to_owned())
            .then_some(())
    });
    b.kill9();
    wait_until("laptop.2 gone from hub-a", Duration::from_secs(20), || {
        (listed_ids(&a) == ["one", "two"]).then_some(())
    });
    wait_until("two moved to hub-a", Duration::from_secs(10), || {
        (a.ctl_json(&["status"])["roles"]["signaling"]["channels"] == 2).then_some(())
    });
}

#[test]
fn an_id_bound_at_one_hub_is_refused_with_another_key_at_another_until_released() {
    use crate::hub_client::{HubChannel, runtime};
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let a = cluster_hub("hub-a", &nats);
    let b = cluster_hub("hub-b", &nats);
    for hub in [&a, &b] {
        wait_until("both hubs joined", Duration::from_secs(10), || {
            (hub_ids(hub)?.len() == 2).then_some(())
        });
    }
    let (hub_a, hub_b) = (a.signaling_addr(), b.signaling_addr());
    let first = meshd_link::StaticKey::generate().unwrap();
    let second = meshd_link::StaticKey::generate().unwrap();
    let register = |addr, key: &meshd_link::StaticKey| {
        runtime().block_on(async {
            let mut channel = HubChannel::open(addr, "dup", key, None).await.unwrap();
            channel.register("192.0.2.9:1", "").await
        })
    };
    assert_eq!(register(hub_a, &first)["type"], "registered");
    // The other hub knows the id's key at once: another key is refused,
    // the same key is welcome.
    let refused = register(hub_b, &second);
    assert_eq!(refused["type"], "register_refused", "{refused}");
    assert_eq!(refused["status"], 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("bound to another public key"),
        "{refused}"
    );
    assert_eq!(register(hub_b, &first)["type"], "registered");
    // Released at one hub: released at every hub.
    a.ctl_ok(&["devices", "remove", "dup"]);
    wait_until(
        "dup released across the cluster",
        Duration::from_secs(10),
        || (register(hub_b, &second)["type"] == "registered").then_some(()),
    );
    let refused = register(hub_a, &first);
    assert_eq!(
        refused["status"], 409,
        "now bound to the second key: {refused}"
    );
}

/// `node`'s status of its hub `url`.
fn hub_status(node: &Node, url: &str) -> Value {
    let status = node.ctl_json(&["status"]);
    status["roles"]["mesh"]["signaling"]
        .as_array()
        .unwrap()
        .iter()
        .find(|hub| hub["url"] == url)
        .unwrap_or_else(|| panic!("no hub {url} in {status}"))
        .clone()
}

#[test]
fn a_device_whose_hub_dies_moves_to_another_hub_of_the_cluster_within_10s() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let mut first = cluster_hub("hub-1", &nats);
    let second = cluster_hub("hub-2", &nats);
    let (first_url, second_url) = (first.hub_url(), second.hub_url());
    let one = device("one", std::slice::from_ref(&first_url));
    let two = device("two", std::slice::from_ref(&second_url));
    wait_full_mesh(&[&one, &two], Duration::from_secs(20));
    // Each hub names the other to its devices, with the key the cluster
    // announces for it.
    wait_until("hub-1 names hub-2 to one", Duration::from_secs(10), || {
        (hub_status(&one, &first_url)["cluster_hubs"] == json!([second_url])).then_some(())
    });
    let text = one.ctl_ok(&["status"]);
    assert!(
        text.contains(&format!("; 1 other hub of its cluster: {second_url}")),
        "{text}"
    );

    first.kill9();
    let killed = std::time::Instant::now();
    let moved = wait_until("one moved to hub-2", Duration::from_secs(15), || {
        let hub = hub_status(&one, &first_url);
        (hub["via"] == second_url.as_str() && hub["channel"] == true).then_some(hub)
    });
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "moved after {:?}",
        killed.elapsed()
    );
    // The key is the one hub-2 proves, carried over from hub-1.
    let second_key = second.ctl_json(&["status"])["roles"]["signaling"]["hub_key"].clone();
    assert_eq!(moved["hub_key"], second_key, "{moved}");
    assert!(moved["reachable"] == true, "{moved}");
    let text = one.ctl_ok(&["status"]);
    assert!(
        text.contains(&format!(
            "signaling {first_url} (down; moved to {second_url}, a hub of its cluster): registered"
        )),
        "{text}"
    );
    assert!(
        one.log()
            .contains("moved to another hub of the cluster while this one is down")
    );
    // hub-2 serves it as its own device now: it lists it, and a device
    // that joins later links with it and talks.
    wait_until("hub-2 lists one", Duration::from_secs(5), || {
        listed_ids(&second)
            .contains(&"one".to_owned())
            .then_some(())
    });
    assert_eq!(
        second.ctl_json(&["status"])["roles"]["signaling"]["channels"],
        2
    );
    let three = device("three", std::slice::from_ref(&second_url));
    wait_full_mesh(&[&one, &two, &three], Duration::from_secs(15));
    three.ctl_ok(&["send", "one", "after the move"]);
    one.ctl_ok(&["send", "two", "still here"]);
    assert!(crate::mesh::inbox(&one).contains(&("three".to_owned(), "after the move".to_owned())));
    assert!(crate::mesh::inbox(&two).contains(&("one".to_owned(), "still here".to_owned())));

    // Its own hub back, the device goes back to it.
    first.restart();
    let restarted = std::time::Instant::now();
    wait_until("one back at hub-1", Duration::from_secs(30), || {
        let hub = hub_status(&one, &first_url);
        (hub["via"].is_null() && hub["channel"] == true).then_some(())
    });
    assert!(restarted.elapsed() < Duration::from_secs(25));
    assert!(
        one.log()
            .contains("the hub answers again: moving back to it")
    );
    wait_until("hub-1 serves one again", Duration::from_secs(10), || {
        (first.ctl_json(&["status"])["roles"]["signaling"]["channels"] == 1).then_some(())
    });
    one.ctl_ok(&["send", "two", "from home"]);
}

/// A hub of the cluster on `nats` that also runs chat.
fn chat_hub(id: &str, nats: &NatsServer) -> Node {
    Node::start(NodeOptions {
        id: id.to_owned(),
        signaling_listen: format!("127.0.0.1:{}", free_port()),
        chat_enabled: true,
        extra: format!("[cluster]\nnats = [\"{}\"]\n", nats.url()),
        ..NodeOptions::default()
    })
}

/// Waits until `hub` lists chat user `name` (or no longer does).
fn wait_user(hub: &Node, name: &str, listed: bool) {
    wait_until(
        &format!("user {name} listed: {listed}"),
        Duration::from_secs(10),
        || {
            let users = hub.ctl_json(&["users", "list"]);
            let has = users.as_array().is_some_and(|users| {
                users
                    .iter()
                    .any(|user| user == name || user["name"] == name)
            });
            (has == listed).then_some(())
        },
    );
}

/// Two chat hubs of one cluster, both joined.
fn two_chat_hubs(nats: &NatsServer) -> (Node, Node) {
    let one = chat_hub("chat-1", nats);
    let two = chat_hub("chat-2", nats);
    for hub in [&one, &two] {
        wait_until("both hubs joined", Duration::from_secs(10), || {
            (hub_ids(hub)?.len() == 2).then_some(())
        });
    }
    (one, two)
}

#[test]
fn chat_users_lines_and_presence_cross_hubs_in_order() {
    use meshd_tests::ChatClient;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (one, mut two) = two_chat_hubs(&nats);
    // A user added at one hub logs in at the other.
    one.add_user("alice", "alice pw");
    two.add_user("bob", "bob pw");
    wait_user(&two, "alice", true);
    wait_user(&one, "bob", true);
    // One name, one user, across the cluster.
    let twice = two.ctl_with_input(&["users", "add", "alice", "--password-stdin"], "other\n");
    assert_eq!(twice.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("exists already"));

    let mut alice = ChatClient::login(one.chat_addr(), "alice", "alice pw");
    let mut bob = ChatClient::login(two.chat_addr(), "bob", "bob pw");
    alice.expect("JOIN bob");
    // /who covers every hub once its presence is in.
    wait_until("WHO across hubs", Duration::from_secs(5), || {
        alice.send("/who");
        (alice.line_skipping_presence() == "WHO alice bob").then_some(())
    });
    bob.send("/who");
    assert_eq!(bob.line_skipping_presence(), "WHO alice bob");

    // One sender's lines arrive in order, each once, at the other hub.
    for n in 0..300 {
        bob.send(&format!("line {n}"));
    }
    for n in 0..300 {
        assert_eq!(alice.line_skipping_presence(), format!("MSG bob line {n}"));
    }
    alice.send("hello from hub one");
    assert_eq!(bob.line_skipping_presence(), "MSG alice hello from hub one");
    // An operator's broadcast reaches every hub's clients.
    one.ctl_ok(&["broadcast", "maintenance", "at", "noon"]);
    assert_eq!(alice.line_skipping_presence(), "SYS maintenance at noon");
    assert_eq!(bob.line_skipping_presence(), "SYS maintenance at noon");

    // A new password set at one hub ends the user's sessions at every hub.
    let changed = two.ctl_with_input(
        &["users", "passwd", "alice", "--password-stdin"],
        "new pw\n",
    );
    assert!(changed.status.success(), "{changed:?}");
    assert!(alice.line_skipping_presence().starts_with("ERR auth"));
    alice.expect_closed();
    bob.expect("LEAVE alice");
    wait_until(
        "the new password works at hub one",
        Duration::from_secs(10),
        || {
            let mut client = ChatClient::connect(one.chat_addr());
            client.send("AUTH alice new pw");
            (client.line() == "OK alice").then_some(())
        },
    );
    bob.expect("JOIN alice");

    // A user removed at one hub is gone at every hub.
    one.ctl_ok(&["users", "remove", "bob"]);
    assert!(bob.line_skipping_presence().starts_with("ERR auth"));
    wait_user(&two, "bob", false);

    // A hub that dies takes its users' presence with it.
    two.add_user("carol", "carol pw");
    wait_user(&one, "carol", true);
    let mut watcher = ChatClient::login(one.chat_addr(), "alice", "new pw");
    let _carol = ChatClient::login(two.chat_addr(), "carol", "carol pw");
    watcher.expect("JOIN carol");
    two.kill9();
    watcher.set_timeout(Duration::from_secs(15));
    watcher.expect("LEAVE carol");
    watcher.send("/who");
    assert_eq!(watcher.line_skipping_presence(), "WHO alice");
}

#[test]
fn chat_lines_said_while_nats_was_away_arrive_once_when_it_is_back() {
    use meshd_tests::ChatClient;
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (one, two) = two_chat_hubs(&nats);
    one.add_user("alice", "alice pw");
    wait_user(&two, "alice", true);
    two.add_user("bob", "bob pw");
    wait_user(&one, "bob", true);
    let mut alice = ChatClient::login(one.chat_addr(), "alice", "alice pw");
    let mut bob = ChatClient::login(two.chat_addr(), "bob", "bob pw");
    alice.expect("JOIN bob");
    bob.send("before");
    alice.expect("MSG bob before");

    nats.stop();
    wait_until("hub two degraded", Duration::from_secs(10), || {
        (cluster_status(&two)["connected"] == false).then_some(())
    });
    // Users cannot change while the change cannot reach every hub.
    let refused = two.ctl_with_input(&["users", "add", "erin", "--password-stdin"], "pw\n");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("cluster that shares chat users cannot be asked now"),
        "{stderr}"
    );
    // Each hub's own clients still talk; bob's lines wait in his hub's
    // outbox.
    let mut bob2 = ChatClient::login(two.chat_addr(), "alice", "alice pw");
    for n in 0..20 {
        bob.send(&format!("during {n}"));
    }
    for n in 0..20 {
        assert_eq!(bob2.line_skipping_presence(), format!("MSG bob during {n}"));
    }

    nats.launch();
    bob.send("after");
    let mut seen = Vec::new();
    alice.set_timeout(Duration::from_secs(20));
    loop {
        let line = alice.line_skipping_presence();
        if line == "MSG bob after" {
            break;
        }
        seen.push(line);
    }
    let expected: Vec<String> = (0..20).map(|n| format!("MSG bob during {n}")).collect();
    assert_eq!(seen, expected, "each line of the outage once, in order");
}
