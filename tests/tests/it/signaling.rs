//! The signaling HTTP API (docs/signaling-api.md): registration, listing,
//! refresh, expiry, the join token, every row of the error table, and
//! protection against slow clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use meshd_tests::http::{self, HttpResponse};
use meshd_tests::{Node, NodeOptions, wait_until};
use serde_json::json;

use crate::hub_client::{self, HubChannel, register_proven};

const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const KEY_B: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn register(addr: SocketAddr, body: serde_json::Value) -> HttpResponse {
    http::post_json(addr, "/register", &body)
}

#[test]
fn devices_register_list_and_refresh() {
    let (node, addr) = Node::start_hub("");
    let reply = register(addr, json!({"id": "devB", "addr": "192.0.2.8:8082"}));
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["id"], "devB");
    assert_eq!(body["addr"], "192.0.2.8:8082");
    assert_eq!(body["ttl_secs"], 60);
    let observed: SocketAddr = body["observed"].as_str().unwrap().parse().unwrap();
    assert_eq!(observed.ip().to_string(), "127.0.0.1");
    assert_eq!(reply.header("content-type"), Some("application/json"));

    let reply = register(
        addr,
        json!({"id": "devA", "addr": "192.0.2.7:8082", "pubkey": KEY_A, "endpoints": ["10.0.0.7:8082"]}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");

    let list = http::get(addr, "/devices");
    assert_eq!(list.status, 200);
    let devices = list.json();
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0]["id"], "devA", "sorted by id");
    assert_eq!(devices[0]["pubkey"], KEY_A);
    assert_eq!(devices[1]["id"], "devB");
    assert_eq!(devices[1]["pubkey"], serde_json::Value::Null);
    let last_seen = devices[0]["last_seen"].as_str().unwrap();
    assert!(
        last_seen.len() == 20 && last_seen.ends_with('Z') && last_seen.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {last_seen}"
    );
    assert!(
        devices[0]["observed"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // A heartbeat may change the address.
    let reply = register(addr, json!({"id": "devB", "addr": "192.0.2.9:9000"}));
    assert_eq!(reply.status, 200);
    let devices = http::get(addr, "/devices").json();
    assert_eq!(devices[1]["addr"], "192.0.2.9:9000");

    // meshctl shows the hub's registry, the one source of truth.
    let listed = node.ctl_json(&["devices"]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["devA", "devB"]);
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
        assert!(
            listed[0].get(field).is_some(),
            "meshctl devices --json has {field}"
        );
    }
    assert_eq!(listed[0]["endpoints"], json!(["10.0.0.7:8082"]));
    let text = node.ctl_ok(&["devices"]);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains("devA") && text.contains("192.0.2.9:9000"),
        "{text}"
    );
    assert_eq!(
        node.ctl_json(&["status"])["roles"]["signaling"]["devices"],
        2
    );

    assert_eq!(http::get(addr, "/healthz").status, 200);
}

#[test]
fn every_error_of_the_table_has_its_status_and_a_json_body() {
    let (_node, addr) = Node::start_hub("");
    let cases: Vec<(&str, HttpResponse, u16)> = vec![
        (
            "malformed JSON",
            http::request(addr, "POST", "/register", &[], b"{not json"),
            400,
        ),
        ("missing field", register(addr, json!({"id": "a"})), 400),
        (
            "wrong type",
            register(addr, json!({"id": 5, "addr": "192.0.2.1:1"})),
            400,
        ),
        (
            "invalid id",
            register(addr, json!({"id": "a b", "addr": "192.0.2.1:1"})),
            400,
        ),
        (
            "long id",
            register(addr, json!({"id": "x".repeat(65), "addr": "192.0.2.1:1"})),
            400,
        ),
        (
            "addr not ip:port",
            register(addr, json!({"id": "a", "addr": "hub.example:80"})),
            400,
        ),
        (
            "bad pubkey",
            register(
                addr,
                json!({"id": "a", "addr": "192.0.2.1:1", "pubkey": "AAAA"}),
            ),
            400,
        ),
        (
            "bad endpoint",
            register(
                addr,
                json!({"id": "a", "addr": "192.0.2.1:1", "endpoints": ["x"]}),
            ),
            400,
        ),
        ("GET /register", http::get(addr, "/register"), 405),
        (
            "POST /devices",
            http::request(addr, "POST", "/devices", &[], b"{}"),
            405,
        ),
        (
            "DELETE /healthz",
            http::request(addr, "DELETE", "/healthz", &[], b""),
            405,
        ),
        ("unknown path", http::get(addr, "/nope"), 404),
        (
            "body over 64 KiB",
            http::request(addr, "POST", "/register", &[], &vec![b' '; 64 * 1024 + 1]),
            413,
        ),
    ];
    for (what, response, status) in cases {
        assert_eq!(response.status, status, "{what}: {response:?}");
        assert!(!response.error().is_empty(), "{what}: error text");
    }
    let wrong_method = http::get(addr, "/register");
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    let invalid = register(addr, json!({"id": "a b", "addr": "192.0.2.1:1"}));
    assert!(invalid.error().starts_with("id:"), "{}", invalid.error());

    // A chunked body over the limit (no Content-Length to check up front).
    let mut chunked =
        b"POST /register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..70 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(http::raw(addr, &chunked).status, 413);

    // 409: the id is held by the live claim of the first key it registered
    // with.
    assert_eq!(
        register(
            addr,
            json!({"id": "k", "addr": "192.0.2.1:1", "pubkey": KEY_A})
        )
        .status,
        200
    );
    let conflict = register(
        addr,
        json!({"id": "k", "addr": "192.0.2.1:1", "pubkey": KEY_B}),
    );
    assert_eq!(conflict.status, 409);
    assert!(
        conflict
            .error()
            .contains("registered with another public key"),
        "{}",
        conflict.error()
    );
    let keyless = register(addr, json!({"id": "k", "addr": "192.0.2.1:1"}));
    assert_eq!(
        keyless.status, 409,
        "a bound id cannot be refreshed without its key"
    );
}

#[test]
fn removing_a_device_on_the_hub_releases_its_key() {
    let (node, addr) = Node::start_hub("");
    let first = meshd_link::StaticKey::generate().unwrap();
    let second = meshd_link::StaticKey::generate().unwrap();
    let registered = register_proven(addr, "k", &first, "192.0.2.1:1");
    assert_eq!(registered["type"], "registered", "{registered}");
    let refused = register_proven(addr, "k", &second, "192.0.2.1:1");
    assert_eq!(refused["type"], "register_refused", "{refused}");
    assert_eq!(refused["status"], 409, "{refused}");

    let removed = node.ctl_json(&["devices", "remove", "k"]);
    assert_eq!(removed["device"], "k");
    assert_eq!(removed["had_binding"], true);
    assert_eq!(http::get(addr, "/devices").json(), json!([]));

    let rebound = register_proven(addr, "k", &second, "192.0.2.1:1");
    assert_eq!(rebound["type"], "registered", "{rebound}");
    let unknown = node.ctl(&["devices", "remove", "never-seen"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no device or key binding"));
}

#[test]
fn a_plain_registration_binds_nothing_and_its_claim_expires() {
    // The attack of issue 14: many ids with made-up keys, bound for ever,
    // fill the hub. Plain registrations only claim their keys now.
    let (mut node, addr) = Node::start_hub("device_ttl = \"2s\"\nmax_devices = 4\n");
    for i in 0..4 {
        let reply = register(
            addr,
            json!({"id": format!("fake{i}"), "addr": "192.0.2.1:1", "pubkey": KEY_A}),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // While live, a claim holds its id against another key...
    let other = register(
        addr,
        json!({"id": "fake0", "addr": "192.0.2.1:1", "pubkey": KEY_B}),
    );
    assert_eq!(other.status, 409, "{other:?}");
    // ...and a proof beats it.
    let real = meshd_link::StaticKey::generate().unwrap();
    let proven = register_proven(addr, "fake1", &real, "192.0.2.2:1");
    assert_eq!(proven["type"], "registered", "{proven}");
    // Once the claims expired, new devices get in, with any key.
    wait_until("the claims expire", Duration::from_secs(10), || {
        let reply = register(
            addr,
            json!({"id": "fake0", "addr": "192.0.2.1:1", "pubkey": KEY_B}),
        );
        (reply.status == 200).then_some(())
    });
    for i in 0..2 {
        let device = meshd_link::StaticKey::generate().unwrap();
        let reply = register_proven(addr, &format!("new{i}"), &device, "192.0.2.3:1");
        assert_eq!(reply["type"], "registered", "{reply}");
    }
    // Only the proven key was saved; a restart forgets every claim.
    node.stop();
    let saved = std::fs::read_to_string(node.dir().join("state/signaling-keys")).unwrap();
    assert!(
        saved.contains("fake1 ") && !saved.contains("fake0 "),
        "{saved}"
    );
    assert!(!saved.contains(KEY_A) && !saved.contains(KEY_B), "{saved}");
    node.restart();
    let addr = node.signaling_addr();
    let reply = register(
        addr,
        json!({"id": "fake2", "addr": "192.0.2.1:1", "pubkey": KEY_B}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    // No plain registration touches an id whose key was proven.
    let taken = register(
        addr,
        json!({"id": "fake1", "addr": "192.0.2.1:1", "pubkey": KEY_B}),
    );
    assert_eq!(taken.status, 409, "{taken:?}");
    assert!(taken.error().contains("proved"), "{taken:?}");
}

#[test]
fn new_ids_from_one_address_are_rate_limited() {
    let (_node, addr) = Node::start_hub("registrations_per_sec = 2\n");
    // Five seconds' worth at once, then no more from this address.
    for i in 0..10 {
        let reply = register(addr, json!({"id": format!("d{i}"), "addr": "192.0.2.1:1"}));
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let over = register(addr, json!({"id": "d10", "addr": "192.0.2.1:1"}));
    assert_eq!(over.status, 429, "{over:?}");
    assert!(
        over.error().contains("signaling.registrations_per_sec"),
        "{over:?}"
    );
    // Heartbeats of registered devices are never limited.
    for _ in 0..20 {
        let reply = register(addr, json!({"id": "d3", "addr": "192.0.2.1:1"}));
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // A channel registration is the same new id, and refused the same way.
    let device = meshd_link::StaticKey::generate().unwrap();
    let refused = register_proven(addr, "d11", &device, "192.0.2.1:1");
    assert_eq!(refused["type"], "register_refused", "{refused}");
    assert_eq!(refused["status"], 429, "{refused}");
    // Half a second later, one more fits.
    wait_until("a token refills", Duration::from_secs(5), || {
        let reply = register(addr, json!({"id": "d12", "addr": "192.0.2.1:1"}));
        (reply.status == 200).then_some(())
    });
}

#[test]
fn a_join_token_guards_registration() {
    let (_node, addr) = Node::start_hub("join_token = \"s3cret\"\n");
    let body = serde_json::to_vec(&json!({"id": "a", "addr": "192.0.2.1:1"})).unwrap();
    let missing = http::request(addr, "POST", "/register", &[], &body);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert!(missing.error().contains("Authorization: Bearer"));
    let wrong = http::request(
        addr,
        "POST",
        "/register",
        &[("Authorization", "Bearer guess")],
        &body,
    );
    assert_eq!(wrong.status, 401);
    let right = http::request(
        addr,
        "POST",
        "/register",
        &[("Authorization", "Bearer s3cret")],
        &body,
    );
    assert_eq!(right.status, 200, "{right:?}");

    // The list of ids, addresses and keys is the token holders' too.
    let anyone = http::get(addr, "/devices");
    assert_eq!(anyone.status, 401, "{anyone:?}");
    assert_eq!(anyone.header("www-authenticate"), Some("Bearer"));
    assert!(!anyone.body.contains("192.0.2.1"), "no address leaks");
    let guess = http::request(
        addr,
        "GET",
        "/devices",
        &[("Authorization", "Bearer guess")],
        b"",
    );
    assert_eq!(guess.status, 401);
    let holder = http::request(
        addr,
        "GET",
        "/devices",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(holder.status, 200);
    assert_eq!(holder.json()[0]["id"], "a");
    // What needs no secret stays open.
    assert_eq!(http::get(addr, "/healthz").status, 200);

    // Over a channel: the token is part of the registration; without it,
    // 401 and no list.
    let device = meshd_link::StaticKey::generate().unwrap();
    hub_client::runtime().block_on(async {
        let mut channel = HubChannel::open(addr, "b", &device, None).await.unwrap();
        let refused = channel.register("192.0.2.2:1", "guess").await;
        assert_eq!(refused["type"], "register_refused", "{refused}");
        assert_eq!(refused["status"], 401, "{refused}");
        assert!(
            channel.next().await.is_err(),
            "the channel is closed, with no list"
        );
        let mut channel = HubChannel::open(addr, "b", &device, None).await.unwrap();
        let registered = channel.register("192.0.2.2:1", "s3cret").await;
        assert_eq!(registered["type"], "registered", "{registered}");
        let list = channel.next().await.unwrap();
        assert_eq!(list["type"], "devices", "{list}");
        assert_eq!(list["devices"].as_array().unwrap().len(), 2, "{list}");
    });
}

#[test]
fn devices_expire_after_device_ttl() {
    let (node, addr) = Node::start_hub("device_ttl = \"1s\"\n");
    let reply = register(addr, json!({"id": "brief", "addr": "192.0.2.1:1"}));
    assert_eq!(reply.json()["ttl_secs"], 1);
    assert_eq!(
        http::get(addr, "/devices").json().as_array().unwrap().len(),
        1
    );
    let started = Instant::now();
    wait_until("the device to expire", Duration::from_secs(5), || {
        http::get(addr, "/devices")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    assert!(started.elapsed() < Duration::from_millis(1500));
    wait_until(
        "the sweeper to log the expiry",
        Duration::from_secs(5),
        || node.log().contains("device expired").then_some(()),
    );
}

/// Reads until the server closes the connection; returns how long it took.
fn time_until_closed(mut stream: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut sink = Vec::new();
    let result = stream.read_to_end(&mut sink);
    assert!(
        result.is_ok(),
        "server did not close a stalled connection within {limit:?}: {result:?}"
    );
    started.elapsed()
}

#[test]
fn stalled_clients_are_cut_off_and_do_not_block_others() {
    let (_node, addr) = Node::start_hub("request_timeout = \"1s\"\n");
    let silent = TcpStream::connect(addr).unwrap();
    let mut half_headers = TcpStream::connect(addr).unwrap();
    half_headers
        .write_all(b"POST /register HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut half_body = TcpStream::connect(addr).unwrap();
    half_body
        .write_all(b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\":")
        .unwrap();

    // Others are served at once meanwhile.
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(http::get(addr, "/healthz").status, 200);
    }
    assert!(started.elapsed() < Duration::from_millis(900));

    for (what, stream) in [("silent", silent), ("half headers", half_headers)] {
        let waited = time_until_closed(stream, Duration::from_secs(10));
        assert!(
            waited < Duration::from_secs(5),
            "{what} cut off after {waited:?}"
        );
    }
    // The stalled body gets a 408 before the close.
    half_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = half_body.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_too() {
    let (_node, addr) = Node::start_hub("request_timeout = \"1s\"\n");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let waited = time_until_closed(stream, Duration::from_secs(10));
    assert!(
        waited < Duration::from_secs(5),
        "idle connection closed after {waited:?}"
    );
}

#[test]
fn concurrent_connections_are_bounded() {
    let (_node, addr) = Node::start_hub("request_timeout = \"2s\"\nmax_connections = 3\n");
    let _held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // The fourth waits in the backlog until a slot frees (the held ones are
    // cut off after the request timeout), then is served.
    let started = Instant::now();
    let response = http::get(addr, "/healthz");
    assert_eq!(response.status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "the fourth connection was served after {waited:?}, before a slot was free"
    );
}

#[test]
fn devices_on_a_node_without_signaling_or_mesh_is_a_clear_error() {
    let node = Node::start(NodeOptions {
        signaling_enabled: false,
        ..NodeOptions::default()
    });
    let output = node.ctl(&["devices"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("neither the signaling nor the mesh role"),
        "{stderr}"
    );
    assert!(
        node.ctl_json(&["status"])["roles"]
            .get("signaling")
            .is_none()
    );
}

/// Registers `count` devices over one kept-alive connection.
fn register_many(addr: SocketAddr, count: usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    for i in 0..count {
        let body = format!(
            "{{\"id\":\"device-{i:05}\",\"addr\":\"192.0.2.1:{}\",\"endpoints\":[\"10.0.0.1:8082\",\"10.0.0.2:8082\"]}}",
            1000 + i % 60000
        );
        // One write per request: several small writes would meet Nagle's
        // algorithm and delayed ACKs at 40 ms a request.
        let request = format!(
            "POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            if line.starts_with("HTTP/1.1 ") {
                assert!(line.starts_with("HTTP/1.1 200"), "{line}");
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
    }
}

#[test]
fn meshctl_lists_a_hub_larger_than_one_control_frame() {
    // About 300 bytes of JSON per device: 6,000 devices are well over the
    // 1 MiB frame limit, so the list must arrive in several frames.
    let (node, addr) = Node::start_hub("registrations_per_sec = 0\n");
    register_many(addr, 6000);
    let listed = node.ctl_json(&["devices"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 6000);
    assert_eq!(listed[0]["id"], "device-00000");
    assert_eq!(listed[5999]["id"], "device-05999");
    let text = node.ctl_ok(&["devices"]);
    assert_eq!(
        text.lines().count(),
        6001,
        "a header and one line per device"
    );
}

#[test]
fn a_client_that_never_reads_its_responses_is_cut_off() {
    let (_node, addr) = Node::start_hub("request_timeout = \"1s\"\nregistrations_per_sec = 0\n");
    register_many(addr, 2000);
    // Pipeline many large responses and read none of them: the server's
    // writes block once the socket buffers are full.
    let mut stream = TcpStream::connect(addr).unwrap();
    let requests = "GET /devices HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
    stream.write_all(requests.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Others are served meanwhile.
    assert_eq!(http::get(addr, "/healthz").status, 200);

    // The connection ends after its maximum age (6 request timeouts) and the
    // drain time (2 s), well before all 100 responses went out. Read only
    // after that: reading earlier would let the server go on writing.
    std::thread::sleep(Duration::from_secs(8));
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let outcome = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(error) => break Err(error),
        }
    };
    let waited = started.elapsed();
    match outcome {
        Ok(()) => {}
        Err(error) => assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset,
            "the server closed the connection, not a timeout: {error}"
        ),
    }
    let responses = received
        .windows(12)
        .filter(|w| w == b"HTTP/1.1 200")
        .count();
    assert!(
        responses < 100,
        "cut off before answering everything ({responses} sent)"
    );
    assert!(
        waited < Duration::from_secs(2),
        "already closed, read took {waited:?}"
    );
}

#[test]
fn key_bindings_survive_a_hub_restart_until_removed() {
    use std::os::unix::fs::PermissionsExt;

    let (mut node, addr) = Node::start_hub("");
    let (first, second) = (
        meshd_link::StaticKey::generate().unwrap(),
        meshd_link::StaticKey::generate().unwrap(),
    );
    let registered = register_proven(addr, "owned", &first, "192.0.2.7:1");
    assert_eq!(registered["type"], "registered", "{registered}");
    node.stop();
    node.restart();
    let addr = node.signaling_addr();
    // The device is gone from the list after the restart, its binding is not.
    let taken = register_proven(addr, "owned", &second, "192.0.2.8:1");
    assert_eq!(taken["status"], 409, "{taken}");
    let file = node.dir().join("state/signaling-keys");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    node.ctl_ok(&["devices", "remove", "owned"]);
    let rebound = register_proven(addr, "owned", &second, "192.0.2.8:1");
    assert_eq!(rebound["type"], "registered", "{rebound}");
    node.stop();
    node.restart();
    let addr = node.signaling_addr();
    let old_key = register_proven(addr, "owned", &first, "192.0.2.7:1");
    assert_eq!(
        old_key["status"], 409,
        "the new binding was saved: {old_key}"
    );
}

#[test]
fn a_damaged_bindings_file_stops_the_start_with_its_line() {
    let mut node = Node::prepare(NodeOptions::default());
    std::fs::create_dir_all(node.dir().join("state")).unwrap();
    std::fs::write(
        node.dir().join("state/signaling-keys"),
        "# ok\nlaptop not-a-key\n",
    )
    .unwrap();
    node.launch();
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = node.log();
    assert!(log.contains("signaling-keys:2: key:"), "{log}");
}

#[test]
fn a_long_poll_on_devices_answers_when_the_list_changes() {
    let (_node, addr) = Node::start_hub("");
    let first = http::get(addr, "/devices");
    let version: u64 = first
        .header("meshd-registry-version")
        .expect("a version header")
        .parse()
        .unwrap();
    // Waits while nothing changes...
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let answer = http::get(addr, &format!("/devices?wait={version}"));
        (started.elapsed(), answer)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !poll.is_finished(),
        "the long-poll answered without a change"
    );
    // ...and answers as soon as a device registers.
    let reply = register(addr, json!({"id": "newcomer", "addr": "192.0.2.9:8082"}));
    assert_eq!(reply.status, 200);
    let (took, answer) = poll.join().unwrap();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()[0]["id"], "newcomer");
    let newer: u64 = answer
        .header("meshd-registry-version")
        .unwrap()
        .parse()
        .unwrap();
    assert!(newer > version);
    // A heartbeat is not a change: a poll at the new version waits again.
    let again = std::thread::spawn(move || http::get(addr, &format!("/devices?wait={newer}")));
    register(addr, json!({"id": "newcomer", "addr": "192.0.2.9:8082"}));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!again.is_finished(), "a heartbeat woke the long-poll");
}

#[test]
fn a_hub_channel_registers_with_its_proven_key_and_ends_when_the_id_is_removed() {
    let (node, addr) = Node::start_hub("");
    let hub_key = node.ctl_json(&["status"])["roles"]["signaling"]["hub_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let device = meshd_link::StaticKey::generate().unwrap();
    // Without the upgrade headers: 426 with what to send.
    let plain = http::get(addr, "/channel");
    assert_eq!(plain.status, 426, "{plain:?}");
    assert!(plain.error().contains("meshd-channel/5"), "{plain:?}");
    let runtime = hub_client::runtime();
    runtime.block_on(async {
        // The hub proves the key `meshctl status` shows.
        let mut channel = HubChannel::open(addr, "devC", &device, None).await.unwrap();
        {
            use base64::Engine as _;
            let proved = base64::engine::general_purpose::STANDARD.encode(channel.hub_key);
            assert_eq!(proved, hub_key);
        }
        // Its observed address, before and without registering.
        channel.send(&json!({"type": "observe"})).await;
        let observed = channel.next().await.unwrap();
        assert_eq!(observed["type"], "observed", "{observed}");
        assert!(
            observed["observed"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
        // No signal or relay before registering, and no list.
        channel.send(&json!({"type": "relay", "to": "x"})).await;
        let refused = channel.next().await.unwrap();
        assert_eq!(refused["type"], "refused", "{refused}");
        // Registered: the answer, then the list at once.
        let registered = channel.register("192.0.2.9:8082", "").await;
        assert_eq!(registered["type"], "registered", "{registered}");
        assert_eq!(registered["ttl_secs"], 60, "{registered}");
        let list = channel.next().await.unwrap();
        assert_eq!(list["type"], "devices", "{list}");
        assert_eq!(list["devices"][0]["id"], "devC", "{list}");
        {
            use base64::Engine as _;
            let key = base64::engine::general_purpose::STANDARD.encode(device.public());
            assert_eq!(list["devices"][0]["pubkey"], key.as_str(), "{list}");
        }

        // Another key claiming devC: refused with 409, then closed.
        let impostor = meshd_link::StaticKey::generate().unwrap();
        let mut refused = HubChannel::open(addr, "devC", &impostor, None)
            .await
            .unwrap();
        let answer = refused.register("192.0.2.66:1", "").await;
        assert_eq!(answer["status"], 409, "{answer}");
        assert!(refused.next().await.is_err(), "closed after the refusal");
        // And over plain HTTP, not even with devC's own (public) key.
        let claim = {
            use base64::Engine as _;
            let key = base64::engine::general_purpose::STANDARD.encode(device.public());
            register(
                addr,
                json!({"id": "devC", "addr": "192.0.2.66:1", "pubkey": key}),
            )
        };
        assert_eq!(claim.status, 409, "{claim:?}");

        // A malformed registration: 400, and closed.
        let other_device = meshd_link::StaticKey::generate().unwrap();
        let mut malformed = HubChannel::open(addr, "devD", &other_device, None)
            .await
            .unwrap();
        let answer = malformed.register("not-an-address", "").await;
        assert_eq!(answer["status"], 400, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("addr"),
            "{answer}"
        );
        assert!(malformed.next().await.is_err(), "closed after the refusal");

        // A channel that never registers is closed 10 s after its
        // handshake, however busy it keeps: pings do not extend it.
        let idle_device = meshd_link::StaticKey::generate().unwrap();
        let mut idle = HubChannel::open(addr, "idle", &idle_device, None)
            .await
            .unwrap();
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            let mut nonce = 0u64;
            loop {
                nonce += 1;
                let ping = json!({"type": "ping", "nonce": nonce});
                if idle.try_send(&ping).await.is_err() || idle.next().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
        .await;
        assert!(ended.is_ok(), "an unregistered channel stayed open");
        let lasted = started.elapsed();
        assert!(
            lasted >= Duration::from_secs(9) && lasted < Duration::from_secs(12),
            "{lasted:?}"
        );

        // The operator releases devC: its open channel ends too.
        node.ctl_ok(&["devices", "remove", "devC"]);
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if channel.next().await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "devC's channel outlived its removal");
    });
}

#[test]
fn a_relay_token_is_worthless_to_anyone_but_its_device() {
    let (_node, addr) = Node::start_hub("");
    let (a, b) = (
        meshd_link::StaticKey::generate().unwrap(),
        meshd_link::StaticKey::generate().unwrap(),
    );
    let thief = meshd_link::StaticKey::generate().unwrap();
    hub_client::runtime().block_on(async {
        let mut channel_a = HubChannel::open(addr, "a", &a, None).await.unwrap();
        assert_eq!(channel_a.register("192.0.2.1:1", "").await["type"], "registered");
        let mut channel_b = HubChannel::open(addr, "b", &b, None).await.unwrap();
        assert_eq!(channel_b.register("192.0.2.2:1", "").await["type"], "registered");
        channel_a.send(&json!({"type": "relay", "to": "b"})).await;
        let offer = loop {
            let message = channel_a.next().await.unwrap();
            if message["type"] == "relay" {
                break message;
            }
        };
        let token = offer["token"].as_str().unwrap().to_owned();
        // Someone who saw a's token, with a key of its own: refused, told
        // why, and the token is not used up.
        let stream = hub_client::upgrade(addr, "/relay", "meshd-relay/2").await.unwrap();
        let stolen = meshd_link::relay_join::join(stream, &thief, &token, None).await;
        match stolen {
            Err(meshd_link::LinkError::Refused(reason)) => {
                assert!(reason.contains("issued to another device"), "{reason}");
            }
            other => panic!("a thief joined: {:?}", other.map(|_| ())),
        }
        // b cannot use a's token either.
        let stream = hub_client::upgrade(addr, "/relay", "meshd-relay/2").await.unwrap();
        assert!(meshd_link::relay_join::join(stream, &b, &token, None).await.is_err());
        // A made-up token: refused.
        let stream = hub_client::upgrade(addr, "/relay", "meshd-relay/2").await.unwrap();
        let made_up = meshd_link::relay_join::join(stream, &a, "0123", None).await;
        assert!(
            matches!(&made_up, Err(meshd_link::LinkError::Refused(reason)) if reason.contains("relay token")),
            "{:?}",
            made_up.map(|_| ())
        );
        // a itself gets in.
        let stream = hub_client::upgrade(addr, "/relay", "meshd-relay/2").await.unwrap();
        let joined = meshd_link::relay_join::join(stream, &a, &token, Some(&channel_a.hub_key)).await;
        assert!(joined.is_ok(), "{:?}", joined.map(|_| ()));
    });
}

#[test]
fn stalled_channel_handshakes_are_capped_and_answered_503() {
    let (_node, addr) = Node::start_hub("");
    let upgrade =
        b"GET /channel HTTP/1.1\r\nHost: hub\r\nConnection: upgrade\r\nUpgrade: meshd-channel/2\r\n\r\n";
    // 64 clients upgrade and then say nothing: each holds a handshake slot
    // for up to 5 s.
    let mut stalled = Vec::new();
    for _ in 0..64 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(upgrade).unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 101");
        stalled.push(stream);
    }
    let refused = http::raw(addr, upgrade);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.error().contains("handshakes are in progress"),
        "{refused:?}"
    );
    // The slots come back once the stalled handshakes time out.
    drop(stalled);
    wait_until("a channel slot frees", Duration::from_secs(10), || {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.write_all(upgrade).ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        (&head == b"HTTP/1.1 101").then_some(())
    });
}

#[test]
fn the_hub_has_a_private_key_of_its_own_that_survives_a_restart() {
    let (mut node, _addr) = Node::start_hub("");
    let status = node.ctl_json(&["status"]);
    let key = status["roles"]["signaling"]["hub_key"]
        .as_str()
        .expect("roles.signaling.hub_key")
        .to_owned();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .expect("base64");
    assert_eq!(raw.len(), 32, "an X25519 public key");
    let file = node.dir().join("state/hub-key");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the hub key is private");
    let device_key = node.ctl_json(&["status"])["roles"]["mesh"]["pubkey"].clone();
    assert_ne!(
        device_key.as_str(),
        Some(key.as_str()),
        "hub and device keys differ"
    );
    assert!(
        node.ctl_ok(&["status"]).contains(&format!("hub key {key}")),
        "meshctl status shows it"
    );

    node.stop();
    node.restart();
    let again = node.ctl_json(&["status"])["roles"]["signaling"]["hub_key"].clone();
    assert_eq!(
        again.as_str(),
        Some(key.as_str()),
        "the same key after a restart"
    );
}

#[test]
fn a_hub_key_others_can_read_stops_the_start_and_names_the_fix() {
    let (mut node, _addr) = Node::start_hub("");
    node.stop();
    let file = node.dir().join("state/hub-key");
    let before = std::fs::read(&file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    node.launch();
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = node.log();
    assert!(
        log.contains("hub key can be read by others (mode 0644)")
            && log.contains(&format!("chmod 600 {}", file.display())),
        "{log}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the key is left as it was"
    );
}
