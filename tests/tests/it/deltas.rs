//! Deltas on the hub channel (docs/mesh.md, "The hub channel"): one whole
//! list when a channel registers, then only what changed, versioned, merged
//! for a device that reads slowly, nothing for a heartbeat that changes
//! nothing; whole lists again on request and for `meshd-channel/2`
//! devices. And a device that meets a delta it cannot apply asks for the
//! whole list instead of building a wrong roster. (A device that reads
//! slowly getting one merged delta is a unit test of the hub's channel
//! writer, where the stall is certain: `signaling::channels`.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meshd_link::StaticKey;
use meshd_tests::{Node, wait_until};
use serde_json::{Value, json};

use crate::hub_client::{self, HubChannel};
use crate::mesh::device;

/// A hub that takes any number of new ids from 127.0.0.1 at once.
fn hub() -> (Node, SocketAddr) {
    Node::start_hub("registrations_per_sec = 0\n")
}

/// A device's copy of one hub's list, built from what its channel says.
#[derive(Default)]
struct HeldList {
    version: Option<u64>,
    /// id -> the entry as listed.
    devices: BTreeMap<String, Value>,
}

impl HeldList {
    /// Applies a `devices` or `delta` message; panics on anything else or
    /// on a delta that does not start at the version held.
    fn apply(&mut self, message: &Value) {
        match message["type"].as_str() {
            Some("devices") => {
                self.devices = entries(&message["devices"]);
            }
            Some("delta") => {
                assert_eq!(
                    message["from"].as_u64(),
                    self.version,
                    "a delta that does not follow from the list held: {message}"
                );
                self.devices.extend(entries(&message["devices"]));
                for id in message["removed"].as_array().expect("removed ids") {
                    self.devices.remove(id.as_str().expect("an id"));
                }
            }
            _ => panic!("expected a list message, got {message}"),
        }
        self.version = message["version"].as_u64();
        assert!(self.version.is_some(), "{message}");
    }

    fn ids(&self) -> Vec<&str> {
        self.devices.keys().map(String::as_str).collect()
    }
}

fn entries(devices: &Value) -> BTreeMap<String, Value> {
    devices
        .as_array()
        .expect("a device array")
        .iter()
        .map(|device| {
            (
                device["id"].as_str().expect("an id").to_owned(),
                device.clone(),
            )
        })
        .collect()
}

/// A registered channel and the list it holds.
struct Device {
    id: String,
    channel: HubChannel,
    list: HeldList,
}

impl Device {
    /// Opens, registers at `192.0.2.1:PORT` (PORT from `n`) and reads the
    /// answer and the whole list that follows it.
    async fn join(hub: SocketAddr, id: &str, n: u16) -> Device {
        let key = StaticKey::generate().unwrap();
        let mut channel = HubChannel::open(hub, id, &key, None).await.unwrap();
        let answer = channel.register(&format!("192.0.2.1:{n}"), "").await;
        assert_eq!(answer["type"], "registered", "{answer}");
        let mut list = HeldList::default();
        let whole = channel.next().await.unwrap();
        assert_eq!(whole["type"], "devices", "the whole list first: {whole}");
        list.apply(&whole);
        Device {
            id: id.to_owned(),
            channel,
            list,
        }
    }

    /// Reads list messages until the list holds exactly `ids`; the raw
    /// size of each message read.
    async fn read_until(&mut self, ids: &[&str]) -> Vec<usize> {
        let mut sizes = Vec::new();
        while self.list.ids() != ids {
            let bytes = self.channel.next_bytes().await.unwrap_or_else(|error| {
                panic!(
                    "{} holds {:?}, waiting for {ids:?}: {error}",
                    self.id,
                    self.list.ids()
                )
            });
            sizes.push(bytes.len());
            self.list.apply(&serde_json::from_slice(&bytes).unwrap());
        }
        sizes
    }

    /// Sends a ping; every message before its pong.
    async fn until_pong(&mut self, nonce: u64) -> Vec<Value> {
        self.channel
            .send(&json!({"type": "ping", "nonce": nonce}))
            .await;
        let mut before = Vec::new();
        loop {
            let message = self.channel.next().await.unwrap();
            if message["type"] == "pong" && message["nonce"] == nonce {
                return before;
            }
            before.push(message);
        }
    }
}

fn sorted(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut ids: Vec<String> = ids.into_iter().collect();
    ids.sort();
    ids
}

#[test]
fn each_join_reaches_every_channel_as_a_delta_of_that_device_alone() {
    let (_hub, addr) = hub();
    hub_client::runtime().block_on(async {
        let mut devices = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for n in 0..20u16 {
            let id = format!("d{n:02}");
            devices.push(Device::join(addr, &id, n).await);
            names.push(id);
        }
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        for device in &mut devices {
            device.read_until(&all).await;
        }
        for round in 0..5u16 {
            let id = format!("late{round}");
            let mut late = Device::join(addr, &id, 100 + round).await;
            names.push(id.clone());
            let sorted_names = sorted(names.clone());
            let all: Vec<&str> = sorted_names.iter().map(String::as_str).collect();
            late.read_until(&all).await;
            for device in &mut devices {
                let before = device.list.version;
                let sizes = device.read_until(&all).await;
                assert_eq!(sizes.len(), 1, "one message for one join");
                assert!(sizes[0] <= 1024, "{} bytes for one join", sizes[0]);
                assert_eq!(device.list.version, before.map(|v| v + 1));
                assert_eq!(
                    device.list.devices[&id]["addr"],
                    format!("192.0.2.1:{}", 100 + round)
                );
            }
            devices.push(late);
        }
    });
}

#[test]
fn heartbeats_that_change_nothing_send_nothing_and_changes_send_one_delta() {
    let (_hub, addr) = hub();
    hub_client::runtime().block_on(async {
        let mut a = Device::join(addr, "a", 1).await;
        let mut b = Device::join(addr, "b", 2).await;
        a.read_until(&["a", "b"]).await;
        b.read_until(&["a", "b"]).await;
        for nonce in 0..20 {
            // b's heartbeat: the same registration again.
            let answer = b.channel.register("192.0.2.1:2", "").await;
            assert_eq!(answer["type"], "registered", "{answer}");
            assert_eq!(
                b.until_pong(nonce).await,
                Vec::<Value>::new(),
                "b got nothing more"
            );
            assert_eq!(
                a.until_pong(nonce).await,
                Vec::<Value>::new(),
                "a got nothing"
            );
        }
        // A heartbeat with a new endpoint is news: one delta with b alone.
        b.channel
            .send(&json!({
                "type": "register",
                "addr": "192.0.2.1:2",
                "endpoints": ["10.0.0.2:2"],
                "join_token": "",
            }))
            .await;
        let delta = a.channel.next().await.unwrap();
        assert_eq!(delta["type"], "delta", "{delta}");
        assert_eq!(delta["devices"].as_array().unwrap().len(), 1, "{delta}");
        assert_eq!(delta["devices"][0]["endpoints"], json!(["10.0.0.2:2"]));
        a.list.apply(&delta);
        assert_eq!(
            a.until_pong(99).await,
            Vec::<Value>::new(),
            "one delta, then nothing"
        );
    });
}

#[test]
fn leaving_and_removal_are_removals_in_a_delta() {
    let (hub, addr) = hub();
    hub_client::runtime().block_on(async {
        let mut a = Device::join(addr, "a", 1).await;
        let mut b = Device::join(addr, "b", 2).await;
        let mut c = Device::join(addr, "c", 3).await;
        a.read_until(&["a", "b", "c"]).await;
        b.read_until(&["a", "b", "c"]).await;
        c.channel.send(&json!({"type": "leave"})).await;
        // One delta, with c's removal alone, and no separate `left`.
        let delta = a.channel.next().await.unwrap();
        assert_eq!(delta["type"], "delta", "{delta}");
        assert_eq!(delta["removed"], json!(["c"]), "{delta}");
        assert_eq!(delta["devices"], json!([]), "{delta}");
        a.list.apply(&delta);
        // The hub closes c's channel once it took c off the list; nothing
        // more is owed to a.
        while c.channel.next().await.is_ok() {}
        assert_eq!(a.until_pong(1).await, Vec::<Value>::new());
        // An operator removes b: a hears it at once; b's channel ends.
        hub.ctl_ok(&["devices", "remove", "b"]);
        a.read_until(&["a"]).await;
        // b's channel spoke for the id just released: closed, after what
        // was already on its way.
        let mut unread = 0;
        while b.channel.next().await.is_ok() {
            unread += 1;
            assert!(unread < 5, "b's channel stays open");
        }
    });
}

#[test]
fn a_device_that_asks_gets_the_whole_list_again() {
    let (_hub, addr) = hub();
    hub_client::runtime().block_on(async {
        let mut a = Device::join(addr, "a", 1).await;
        let _b = Device::join(addr, "b", 2).await;
        a.read_until(&["a", "b"]).await;
        for _ in 0..3 {
            a.channel.send(&json!({"type": "resync"})).await;
            // The whole list (maybe a recent one, the rest as a delta).
            let whole = a.channel.next().await.unwrap();
            assert_eq!(whole["type"], "devices", "{whole}");
            a.list = HeldList::default();
            a.list.apply(&whole);
            a.read_until(&["a", "b"]).await;
        }
    });
}

#[test]
fn an_older_device_is_sent_whole_lists_and_left_messages() {
    let (_hub, addr) = hub();
    hub_client::runtime().block_on(async {
        let key = StaticKey::generate().unwrap();
        let mut old = HubChannel::open_as(addr, "old", &key, None, "meshd-channel/2")
            .await
            .unwrap();
        assert_eq!(old.register("192.0.2.1:1", "").await["type"], "registered");
        assert_eq!(old.next().await.unwrap()["type"], "devices");
        let mut new = Device::join(addr, "new", 2).await;
        let whole = old.next().await.unwrap();
        assert_eq!(whole["type"], "devices", "{whole}");
        assert_eq!(whole["devices"].as_array().unwrap().len(), 2, "{whole}");
        new.channel.send(&json!({"type": "leave"})).await;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.push(
                old.next().await.unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        seen.sort();
        assert_eq!(seen, ["devices", "left"]);
    });
}

/// A hub played by the test: serves the upgrade and the hub handshake with
/// its own key, then says what the test wants.
mod fake_hub {
    use std::net::SocketAddr;

    use meshd_link::StaticKey;
    use meshd_link::channel::{ChannelReader, ChannelWriter};
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
    use tokio::net::{TcpListener, TcpStream};

    pub struct Session {
        pub reader: ChannelReader<ReadHalf<TcpStream>>,
        pub writer: ChannelWriter<WriteHalf<TcpStream>>,
    }

    impl Session {
        pub async fn send(&mut self, message: Value) {
            self.writer
                .send(message.to_string().as_bytes())
                .await
                .expect("sending to the device");
        }

        /// The device's next message of `kind`, skipping pings (answered)
        /// and heartbeats.
        pub async fn next_of(&mut self, kind: &str) -> Value {
            loop {
                let bytes = self.reader.next().await.expect("the device's message");
                let message: Value = serde_json::from_slice(&bytes).unwrap();
                if message["type"] == kind {
                    return message;
                }
                if message["type"] == "ping" {
                    self.send(serde_json::json!({"type": "pong", "nonce": message["nonce"]}))
                        .await;
                }
            }
        }
    }

    /// Accepts one device's channel.
    pub async fn accept(listener: &TcpListener, key: &StaticKey) -> Session {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.contains("upgrade: meshd-channel/5"), "{head}");
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: meshd-channel/5\r\n\r\n",
            )
            .await
            .unwrap();
        let (channel, _device) = meshd_link::channel::serve(stream, key).await.unwrap();
        let (reader, writer) = channel.split(1 << 20);
        Session { reader, writer }
    }

    pub fn listed(id: &str, addr: SocketAddr) -> Value {
        serde_json::json!({
            "id": id,
            "addr": addr.to_string(),
            "observed": addr.to_string(),
            "pubkey": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
            "last_seen": "2026-12-03T12:00:00Z",
            "endpoints": [],
        })
    }
}

#[test]
fn a_device_never_applies_a_delta_that_does_not_follow_and_asks_for_the_whole_list() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let hub_addr = listener.local_addr().unwrap();
    let node = device("me", &[format!("http://{hub_addr}")]);
    let devices = |node: &Node| -> Vec<String> {
        let listed = node.ctl_json(&["devices"]);
        sorted(
            listed
                .as_array()
                .unwrap()
                .iter()
                .map(|device| device["id"].as_str().unwrap().to_owned()),
        )
    };
    let nowhere: SocketAddr = "192.0.2.50:1".parse().unwrap();
    runtime.block_on(async {
        let key = StaticKey::generate().unwrap();
        let mut session = fake_hub::accept(&listener, &key).await;
        let register = session.next_of("register").await;
        session
            .send(json!({"type": "registered", "observed": "127.0.0.1:1", "ttl_secs": 60}))
            .await;
        let me = fake_hub::listed("me", register["addr"].as_str().unwrap().parse().unwrap());
        session
            .send(json!({"type": "devices", "version": 5, "devices": [me, fake_hub::listed("x", nowhere)]}))
            .await;
        // Applies at 5: y arrives.
        session
            .send(json!({"type": "delta", "from": 5, "version": 6, "devices": [fake_hub::listed("y", nowhere)], "removed": []}))
            .await;
        // From 7, while the device holds 6: not applied, whole list asked.
        session
            .send(json!({"type": "delta", "from": 7, "version": 8, "devices": [fake_hub::listed("wrong", nowhere)], "removed": ["x"]}))
            .await;
        let resync = session.next_of("resync").await;
        assert_eq!(resync, json!({"type": "resync"}));
        // Deltas after the gap do not apply either, until the whole list.
        session
            .send(json!({"type": "delta", "from": 8, "version": 9, "devices": [fake_hub::listed("wrong2", nowhere)], "removed": []}))
            .await;
        let listed = tokio::task::block_in_place(|| devices(&node));
        assert_eq!(listed, ["me", "x", "y"], "the list before the gap, nothing from after it");
        session
            .send(json!({"type": "devices", "version": 9, "devices": [me, fake_hub::listed("z", nowhere)]}))
            .await;
        tokio::task::block_in_place(|| {
            wait_until("the whole list applied", Duration::from_secs(5), || {
                // x and y, dropped from a whole list, are held for a TTL.
                let listed = devices(&node);
                listed.contains(&"z".to_owned()).then_some(())
            });
            let listed = devices(&node);
            assert!(!listed.iter().any(|id| id.starts_with("wrong")), "{listed:?}");
        });
        // Deltas from 9 apply again.
        session
            .send(json!({"type": "delta", "from": 9, "version": 10, "devices": [], "removed": ["z"]}))
            .await;
        tokio::task::block_in_place(|| {
            wait_until("z removed", Duration::from_secs(5), || {
                (!devices(&node).contains(&"z".to_owned())).then_some(())
            });
        });
    });
}
