//! Well-formed input of the wrong shape, oversized heads and hung-up
//! clients, against the signaling API and the control socket (issue 12).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use meshd_tests::http::{self, HttpResponse};
use meshd_tests::{Node, NodeOptions};
use serde_json::json;

fn post_register(addr: SocketAddr, body: &[u8]) -> HttpResponse {
    http::request(
        addr,
        "POST",
        "/register",
        &[("Content-Type", "application/json")],
        body,
    )
}

#[test]
fn a_register_body_must_be_one_object_of_the_documented_shape() {
    let (node, addr) = Node::start_hub("");
    for body in [
        &br#"["devA","192.0.2.7:1"]"#[..],
        br#"["devA","192.0.2.7:1",null,null]"#,
        b"\"devA\"",
        b"7",
        b"null",
        br#"{"id":["devA"],"addr":"192.0.2.7:1"}"#,
        br#"{"id":"devA","addr":"192.0.2.7:1","endpoints":"192.0.2.7:2"}"#,
    ] {
        let answer = post_register(addr, body);
        assert_eq!(
            answer.status,
            400,
            "{} was accepted",
            String::from_utf8_lossy(body)
        );
        assert!(
            answer.error().starts_with("malformed JSON"),
            "{}",
            answer.error()
        );
    }
    let answer = post_register(addr, br#"["devA","192.0.2.7:1"]"#);
    assert!(
        answer
            .error()
            .contains("expected an object, found an array"),
        "{}",
        answer.error()
    );
    // Nothing was registered; the object form still works.
    assert_eq!(http::get(addr, "/devices").json(), json!([]));
    let ok = post_register(addr, br#"{"id":"devA","addr":"192.0.2.7:1"}"#);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        node.ctl_ok(&["devices"]).contains("devA"),
        "the object form registers"
    );
}

#[test]
fn request_heads_over_64_kib_are_refused_with_431() {
    let (_node, addr) = Node::start_hub("");
    let filler = |bytes: usize| "x".repeat(bytes);
    let small = filler(60 * 1024);
    let answer = http::request(addr, "GET", "/devices", &[("X-Filler", &small)], b"");
    assert_eq!(answer.status, 200);
    for size in [65 * 1024, 112 * 1024] {
        let big = filler(size);
        let answer = http::request(addr, "GET", "/devices", &[("X-Filler", &big)], b"");
        assert_eq!(answer.status, 431, "a {size}-byte header was accepted");
    }
    // Many headers adding up over the limit too.
    let part = filler(8 * 1024);
    let many: Vec<(String, &str)> = (0..9)
        .map(|i| (format!("X-Part-{i}"), part.as_str()))
        .collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let answer = http::request(addr, "GET", "/devices", &headers, b"");
    assert!(matches!(answer.status, 431), "{}", answer.status);
}

/// Starts `GET /devices?wait=VERSION` at the current version and returns the
/// open connection without reading the answer.
fn start_long_poll(addr: SocketAddr) -> TcpStream {
    let version = http::get(addr, "/devices")
        .header("meshd-registry-version")
        .expect("a version header")
        .to_owned();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /devices?wait={version} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream
}

/// Whether a fresh long-poll is held (no answer within `hold`).
fn a_long_poll_waits(addr: SocketAddr, hold: Duration) -> bool {
    let mut stream = start_long_poll(addr);
    stream.set_read_timeout(Some(hold)).unwrap();
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn long_polls_whose_clients_hang_up_give_their_slot_back() {
    // max_connections 8: at most 4 long-polls wait at once; more are
    // answered at once.
    let (_node, addr) = Node::start_hub("max_connections = 8\n");
    assert!(a_long_poll_waits(addr, Duration::from_millis(300)));
    for round in 0..5 {
        let abandoned: Vec<TcpStream> = (0..4).map(|_| start_long_poll(addr)).collect();
        drop(abandoned);
        // Once the hub has seen the hang-ups, a new long-poll waits again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !a_long_poll_waits(addr, Duration::from_millis(300)) {
            assert!(
                Instant::now() < deadline,
                "round {round}: abandoned long-polls kept their slots"
            );
        }
    }
}

fn control_line(node: &Node, line: &str) -> serde_json::Value {
    let stream = UnixStream::connect(node.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("not JSON ({e}): {reply:?}"))
}

#[test]
fn control_requests_must_name_their_command() {
    let node = Node::start_default();
    for line in [
        "{\"v\":1,\"id\":7,\"cmd\":3}\n",
        "{\"v\":1,\"id\":7,\"cmd\":0}\n",
        "{\"v\":1,\"id\":7,\"cmd\":\"send\",\"device\":[\"x\"],\"text\":\"t\"}\n",
        "{\"v\":1,\"id\":7,\"cmd\":\"messages\",\"follow\":1}\n",
    ] {
        let reply = control_line(&node, line);
        assert_eq!(reply["id"], 7, "{reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{line} ran: {reply}");
    }
    assert!(
        !node.log().contains("configuration reloaded"),
        "an enum index ran reload"
    );
    // The named form still works.
    let reply = control_line(&node, "{\"v\":1,\"id\":8,\"cmd\":\"status\"}\n");
    assert!(reply.get("ok").is_some(), "{reply}");
}

#[test]
fn a_dangling_device_key_link_stops_the_start_and_is_left_alone() {
    let mut node = Node::prepare(NodeOptions {
        mesh: Some(meshd_tests::MeshOptions::with_hubs(&[
            "http://127.0.0.1:9".to_owned()
        ])),
        signaling_enabled: false,
        ..NodeOptions::default()
    });
    let state = node.dir().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let key = state.join("device-key");
    let target = node.dir().join("vault/device-key");
    std::os::unix::fs::symlink(&target, &key).unwrap();
    node.launch();
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = node.log();
    assert!(
        log.contains("device-key is a symbolic link to") && log.contains("which does not exist"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_link(&key).unwrap(),
        target,
        "the link is kept"
    );
    assert!(!target.exists(), "no new identity was written through it");
}
