//! Start, reload and stop as systemd sees them: sd_notify messages, SIGHUP
//! and `meshctl reload`, the watchdog, and SIGTERM.

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
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\ndevice_ttl = \"1s\"\n",
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
    assert_eq!(reply["restart_required"], json!(["chat"]), "{reply}");
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
