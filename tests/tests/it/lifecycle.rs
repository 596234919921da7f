//! Start, reload and stop as systemd sees them: sd_notify messages, SIGHUP
//! and `meshctl reload`, the watchdog, and SIGTERM.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use meshd_tests::http;
use meshd_tests::{Node, NodeOptions, wait_until};
use nix::sys::signal::Signal;
use serde_json::json;

const NOTIFY_WAIT: Duration = Duration::from_secs(10);

#[test]
fn ready_comes_only_once_every_listener_is_bound() {
    let node = Node::start_default();
    let assignments = node.notify().assignments();
    let ready = assignments.iter().position(|a| a == "READY=1").unwrap();
    assert!(
        assignments
            .iter()
            .any(|a| a.starts_with("STATUS=signaling on 127.0.0.1:")),
        "{assignments:?}"
    );
    assert!(ready < assignments.len());
    // At READY=1 both the HTTP listener and the control socket accept.
    TcpStream::connect(node.signaling_addr()).expect("signaling accepts");
    UnixStream::connect(node.socket()).expect("control socket accepts");
}

#[test]
fn a_port_in_use_fails_the_start_with_exit_1_and_no_ready() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut node = Node::prepare(NodeOptions::default());
    node.write_config(&node.config_text().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    ));
    node.launch();
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = node.log();
    assert!(
        log.contains(&format!("binding signaling listener on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(log.contains("another process holds that port"), "{log}");
    assert_eq!(node.notify().count("READY=1"), 0);
    assert!(!node.socket().exists());
}

#[test]
fn reload_and_stop_are_notified_in_order() {
    let mut node = Node::start_default();
    node.notify().wait_for("READY=1", 1, NOTIFY_WAIT);

    // meshctl reload answers once the reload is done.
    let reply = node.ctl_json(&["reload"]);
    assert_eq!(reply["applied"], json!([]));
    node.notify().wait_for("RELOADING=1", 1, NOTIFY_WAIT);
    node.notify().wait_for("READY=1", 2, NOTIFY_WAIT);

    // SIGHUP does the same.
    node.signal(Signal::SIGHUP);
    node.notify().wait_for("RELOADING=1", 2, NOTIFY_WAIT);
    node.notify().wait_for("READY=1", 3, NOTIFY_WAIT);

    let took = node.stop();
    assert!(took < Duration::from_secs(5));
    let assignments = node.notify().assignments();
    let order: Vec<&str> = assignments
        .iter()
        .map(String::as_str)
        .filter(|a| matches!(*a, "READY=1" | "RELOADING=1" | "STOPPING=1"))
        .collect();
    assert_eq!(
        order,
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ]
    );
}

#[test]
fn reload_applies_live_keys_and_reports_restart_keys() {
    let node = Node::start_default();
    let addr = node.signaling_addr();
    assert_eq!(
        http::post_json(
            addr,
            "/register",
            &json!({"id": "d", "addr": "192.0.2.1:1"})
        )
        .status,
        200
    );
    let config = node
        .config_text()
        .replace(
            "[signaling]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
            "[signaling]\nenabled = true\nlisten = \"127.0.0.1:0\"\ndevice_ttl = \"1s\"\n",
        )
        .replace("log_level = \"debug\"", "log_level = \"info\"")
        .replace(
            "[chat]\nenabled = false",
            "[chat]\nenabled = false\nmax_clients = 7",
        );
    node.write_config(&config);
    let reply = node.ctl_json(&["reload"]);
    assert_eq!(
        reply["applied"],
        json!(["node.log_level", "signaling.device_ttl"]),
        "{reply}"
    );
    assert_eq!(
        reply["restart_required"],
        json!(["chat.max_clients"]),
        "{reply}"
    );
    // The new TTL is in force: the device expires within about a second.
    wait_until(
        "the device to expire under the reloaded ttl",
        Duration::from_secs(5),
        || {
            http::get(addr, "/devices")
                .json()
                .as_array()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    );
}

#[test]
fn a_broken_config_on_reload_keeps_meshd_serving_the_old_one() {
    let mut node = Node::start_default();
    let good = node.config_text();
    node.write_config(&format!("{good}\n[signaling]\nlisten = \"nowhere\"\n"));

    // Via meshctl: exit 1 with the problem, file and line.
    let output = node.ctl(&["reload"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&node.config_path().display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("keeps running on its previous configuration"),
        "{stderr}"
    );

    // Via SIGHUP: logged, and READY=1 follows.
    node.write_config(&format!("{good}\n[node]\nbogus = true\n"));
    node.signal(Signal::SIGHUP);
    node.notify().wait_for("READY=1", 3, NOTIFY_WAIT);
    wait_until("the reload error in the log", NOTIFY_WAIT, || {
        node.log()
            .contains("reload failed; keeping the running configuration")
            .then_some(())
    });

    // Still serving, on the old config.
    let addr = node.signaling_addr();
    assert_eq!(http::get(addr, "/healthz").status, 200);
    assert_eq!(node.ctl_json(&["status"])["node_id"], "hub");
    node.write_config(&good);
    node.ctl_ok(&["reload"]);
    node.stop();
}

#[test]
fn the_watchdog_is_pinged_at_half_its_interval() {
    let node = Node::start(NodeOptions {
        env: vec![("WATCHDOG_USEC".into(), "200000".into())],
        ..NodeOptions::default()
    });
    // 200 ms interval, pinged every 100 ms: at least 5 pings within ~1 s.
    node.notify()
        .wait_for("WATCHDOG=1", 5, Duration::from_secs(3));
    assert!(node.log().contains("watchdog enabled"));
}

#[test]
fn no_watchdog_pings_unless_asked() {
    let node = Node::start_default();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.notify().count("WATCHDOG=1"), 0);
}

#[test]
fn sigterm_exits_0_within_5s_with_connections_open() {
    let mut node = Node::start_default();
    let addr = node.signaling_addr();
    // A kept-alive HTTP connection, a half-sent HTTP request and a half-sent
    // control request are all open when SIGTERM arrives.
    let mut keep_alive = TcpStream::connect(addr).unwrap();
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut half_http = TcpStream::connect(addr).unwrap();
    half_http.write_all(b"POST /register HTTP/1.1\r\n").unwrap();
    let mut half_control = UnixStream::connect(node.socket()).unwrap();
    half_control.write_all(b"{\"v\":1,").unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let took = node.stop();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    node.notify().wait_for("STOPPING=1", 1, NOTIFY_WAIT);
    assert!(!node.socket().exists());
}

#[test]
fn sigint_stops_gracefully_too() {
    let mut node = Node::start_default();
    node.signal(Signal::SIGINT);
    let status = node.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}");
    assert!(node.log().contains("signal=\"SIGINT\""), "{}", node.log());
}

#[test]
fn logs_on_stderr_carry_structured_fields() {
    let node = Node::start_default();
    let addr = node.signaling_addr();
    http::post_json(
        addr,
        "/register",
        &json!({"id": "fielded", "addr": "192.0.2.1:1"}),
    );
    wait_until("the registration log line", NOTIFY_WAIT, || {
        let log = node.log();
        (log.contains("device registered")
            && log.contains("device_id=fielded")
            && log.contains("peer_addr=127.0.0.1:"))
        .then_some(())
    });
}

/// The journald socket path tracing-journald writes to.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A stand-in for journald on a machine where none runs (CI): a datagram
/// socket at journald's path, removed again on drop.
struct FakeJournal {
    socket: std::os::unix::net::UnixDatagram,
    created_dir: bool,
}

impl FakeJournal {
    fn bind() -> FakeJournal {
        let dir = std::path::Path::new(JOURNAL_SOCKET).parent().unwrap();
        let created_dir = !dir.exists();
        std::fs::create_dir_all(dir).unwrap();
        let socket = std::os::unix::net::UnixDatagram::bind(JOURNAL_SOCKET)
            .expect("binding a stand-in journald socket (needs root)");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FakeJournal {
            socket,
            created_dir,
        }
    }

    /// Every entry received so far, as field maps.
    fn entries(&self) -> Vec<HashMap<String, String>> {
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(len) = self.socket.recv(&mut buf) {
            entries.push(parse_journal_entry(&buf[..len]));
        }
        entries
    }
}

/// Decodes journald's native protocol: `KEY=value\n`, or for values that may
/// hold newlines `KEY\n`, a little-endian u64 length, the value and `\n`.
fn parse_journal_entry(mut bytes: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
        let line = &bytes[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            bytes = &bytes[end + 1..];
        } else {
            let rest = &bytes[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
            );
            bytes = &rest[8 + len + 1..];
        }
    }
    fields
}

impl Drop for FakeJournal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(JOURNAL_SOCKET);
        if self.created_dir {
            let _ = std::fs::remove_dir(std::path::Path::new(JOURNAL_SOCKET).parent().unwrap());
        }
    }
}

#[test]
fn under_systemd_logs_go_to_journald_with_structured_fields() {
    use std::os::unix::fs::MetadataExt;
    assert!(
        !std::path::Path::new(JOURNAL_SOCKET).exists(),
        "a journald already runs here; this test needs a machine without one (CI has none)"
    );
    let journal = FakeJournal::bind();
    let mut node = Node::prepare(NodeOptions::default());
    // systemd sets JOURNAL_STREAM to the device and inode of the stream it
    // connected to stderr; here stderr is the node's log file.
    std::fs::write(node.log_path(), "").unwrap();
    let meta = std::fs::metadata(node.log_path()).unwrap();
    node.set_env("JOURNAL_STREAM", &format!("{}:{}", meta.dev(), meta.ino()));
    node.restart();
    let addr = node.signaling_addr();
    http::post_json(
        addr,
        "/register",
        &json!({"id": "journaled", "addr": "192.0.2.1:1"}),
    );

    let mut seen = Vec::new();
    let entry = wait_until("a journald entry for the registration", NOTIFY_WAIT, || {
        seen.extend(journal.entries());
        seen.iter()
            .find(|entry| {
                entry
                    .get("MESSAGE")
                    .is_some_and(|m| m == "device registered")
            })
            .cloned()
    });
    assert_eq!(entry["DEVICE_ID"], "journaled", "{entry:?}");
    assert!(entry["PEER_ADDR"].starts_with("127.0.0.1:"), "{entry:?}");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "meshd", "{entry:?}");
    assert_eq!(entry["PRIORITY"], "6", "info is priority 6: {entry:?}");
    assert!(
        !node.log().contains("device registered"),
        "with the journal on stderr, nothing is printed there: {}",
        node.log()
    );
    node.stop();
}
