//! The control socket: file mode and group, stale and live sockets, framing
//! limits, authorization by peer credentials, and meshctl's exit codes.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshd_tests::{Node, NodeOptions, copy_executable, meshctl_bin};

fn connect(node: &Node) -> (BufReader<UnixStream>, UnixStream) {
    let stream = UnixStream::connect(node.socket()).expect("connecting to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

fn reply(reader: &mut BufReader<UnixStream>) -> serde_json::Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reading a reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
}

#[test]
fn socket_is_mode_0660_and_removed_on_exit() {
    let mut node = Node::start_default();
    let meta = fs::metadata(node.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    node.stop();
    assert!(!node.socket().exists(), "socket removed on exit");
}

#[test]
fn socket_gets_the_configured_group() {
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("group nogroup exists");
    let node = Node::start(NodeOptions {
        group: "nogroup".into(),
        ..NodeOptions::default()
    });
    assert_eq!(
        fs::metadata(node.socket()).unwrap().gid(),
        nogroup.gid.as_raw()
    );
}

#[test]
fn a_missing_group_keeps_the_daemons_group() {
    let node = Node::start(NodeOptions {
        group: "no-such-group-here".into(),
        ..NodeOptions::default()
    });
    assert_eq!(
        fs::metadata(node.socket()).unwrap().gid(),
        nix::unistd::getegid().as_raw()
    );
    assert!(node.log().contains("control group does not exist"));
}

#[test]
fn a_stale_socket_is_replaced() {
    let mut node = Node::prepare(NodeOptions::default());
    // A socket file nobody listens on, as a crash leaves behind.
    drop(UnixListener::bind(node.socket()).unwrap());
    assert!(node.socket().exists());
    node.restart();
    node.ctl_ok(&["status"]);
    assert!(
        node.log().contains("removing stale control socket"),
        "{}",
        node.log()
    );
}

#[test]
fn a_live_socket_is_not_taken_over() {
    let first = Node::start_default();
    let mut second = Node::spawn(NodeOptions {
        id: "second".into(),
        socket: Some(first.socket()),
        ..NodeOptions::default()
    });
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(
        second.log().contains("is in use by a running meshd"),
        "{}",
        second.log()
    );
    assert_eq!(first.ctl_json(&["status"])["node_id"], "hub");
}

#[test]
fn something_else_at_the_socket_path_is_not_removed() {
    let mut node = Node::prepare(NodeOptions::default());
    fs::write(node.socket(), "precious").unwrap();
    node.launch();
    assert_eq!(node.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(
        node.log().contains("exists and is not a socket"),
        "{}",
        node.log()
    );
    assert_eq!(fs::read_to_string(node.socket()).unwrap(), "precious");
}

#[test]
fn meshctl_reports_an_unreachable_daemon_in_one_line() {
    let output = Command::new(meshctl_bin())
        .args(["--socket", "/nonexistent/meshd.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/meshd.sock"), "{stderr}");
    assert!(stderr.contains("systemctl status meshd"), "{stderr}");

    // MESHD_SOCKET works like --socket.
    let output = Command::new(meshctl_bin())
        .arg("status")
        .env("MESHD_SOCKET", "/nonexistent/env.sock")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/env.sock"));
}

#[test]
fn meshctl_usage_errors_exit_2() {
    for args in [
        &["bogus"][..],
        &["devices", "remove"][..],
        &["--no-such-flag", "status"][..],
    ] {
        let output = Command::new(meshctl_bin()).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "meshctl {args:?}");
    }
}

#[test]
fn malformed_and_unknown_requests_get_errors_and_the_connection_survives() {
    let node = Node::start_default();
    let (mut reader, mut writer) = connect(&node);

    writer.write_all(b"this is not json\n").unwrap();
    let error = reply(&mut reader);
    assert_eq!(error["error"]["code"], "bad_request", "{error}");
    assert_eq!(error["id"], 0);

    writer
        .write_all(b"{\"v\":1,\"id\":5,\"cmd\":\"launch_rockets\"}\n")
        .unwrap();
    let error = reply(&mut reader);
    assert_eq!(error["id"], 5);
    assert_eq!(error["error"]["code"], "bad_request");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown command")
    );

    writer.write_all(&[0xff, 0xfe, b'\n']).unwrap();
    assert_eq!(reply(&mut reader)["error"]["code"], "bad_request");

    // Same connection, a good request: answered under its own id.
    writer
        .write_all(b"{\"v\":1,\"id\":6,\"cmd\":\"status\"}\n")
        .unwrap();
    let status = reply(&mut reader);
    assert_eq!(status["id"], 6);
    assert_eq!(status["v"], 1);
    assert_eq!(status["ok"]["status"]["node_id"], "hub");
}

#[test]
fn an_oversized_request_is_refused_and_its_connection_closed() {
    let node = Node::start_default();
    let (mut reader, mut writer) = connect(&node);
    let big = vec![b'x'; (1 << 20) + 1024];
    // The daemon may close before everything is written.
    let _ = writer.write_all(&big);
    let error = reply(&mut reader);
    assert_eq!(error["error"]["code"], "too_large", "{error}");
    let mut rest = Vec::new();
    let closed = reader
        .read_to_end(&mut rest)
        .map(|n| n == 0)
        .unwrap_or(true);
    assert!(closed, "connection closed after too_large");
    // The daemon is unharmed.
    node.ctl_ok(&["status"]);
}

#[test]
fn a_half_sent_request_is_cut_off_without_blocking_others() {
    let node = Node::start_default();
    let (mut reader, mut writer) = connect(&node);
    writer.write_all(b"{\"v\":1,\"id\":1,").unwrap();
    let started = Instant::now();
    // Others are served meanwhile.
    for _ in 0..5 {
        node.ctl_ok(&["status"]);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The half request is cut off after the request timeout (10 s).
    let mut rest = Vec::new();
    let read = reader.read_to_end(&mut rest);
    assert!(matches!(read, Ok(0)), "connection closed: {read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "cut off after {waited:?}"
    );
}

/// Copies meshctl where user nobody can run it, whatever the checkout's
/// permissions are.
fn meshctl_for_nobody(dir: &Path) -> std::path::PathBuf {
    copy_executable(&meshctl_bin(), dir)
}

/// `meshctl --socket SOCKET ARGS` as `user` in `group` only, through setpriv.
fn meshctl_as(meshctl: &Path, socket: &Path, user: &str, group: &str, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={group}"))
        .args(["--clear-groups", "--"])
        .arg(meshctl)
        .arg("--socket")
        .arg(socket)
        .args(args);
    command
}

fn as_user(meshctl: &Path, socket: &Path, group: &str, args: &[&str]) -> std::process::Output {
    meshctl_as(meshctl, socket, "nobody", group, args)
        .output()
        .expect("running setpriv (util-linux)")
}

#[test]
fn group_members_may_read_but_only_root_and_the_daemon_user_may_write() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs meshctl as other users and needs root"
    );
    let node = Node::start(NodeOptions {
        group: "nogroup".into(),
        chat_enabled: true,
        ..NodeOptions::default()
    });
    let meshctl = meshctl_for_nobody(node.dir());

    // nobody in group nogroup: read-only commands work...
    let status = as_user(&meshctl, &node.socket(), "nogroup", &["status"]);
    assert!(status.status.success(), "{status:?}");
    let devices = as_user(&meshctl, &node.socket(), "nogroup", &["devices"]);
    assert!(devices.status.success(), "{devices:?}");
    let users = as_user(&meshctl, &node.socket(), "nogroup", &["users", "list"]);
    assert!(users.status.success(), "{users:?}");

    // ...mutating ones are refused with a clear message and exit 1.
    for args in [
        &["reload"][..],
        &["devices", "remove", "x"][..],
        &["users", "remove", "x"][..],
        &["broadcast", "hi"][..],
        &["hubs", "forget", "http://127.0.0.1:8080"][..],
    ] {
        let output = as_user(&meshctl, &node.socket(), "nogroup", args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains("permission denied"), "{stderr}");
        assert!(stderr.contains("needs root"), "{stderr}");
    }
    assert!(node.log().contains("control request refused"));

    // Not in the group: the socket's mode keeps them out entirely.
    let output = as_user(&meshctl, &node.socket(), "daemon", &["status"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("permission denied opening"), "{stderr}");
    assert!(stderr.contains("group"), "{stderr}");

    // Root may do everything.
    node.ctl_ok(&["reload"]);
}

#[test]
fn the_daemons_own_user_may_write_and_keeps_its_group_outside_the_control_group() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches users and needs root"
    );
    // meshd runs as nobody:nogroup and is told to use group "daemon", which
    // nobody is not a member of.
    let node = Node::start(NodeOptions {
        group: "daemon".into(),
        run_as: Some(("nobody".into(), "nogroup".into())),
        ..NodeOptions::default()
    });
    let meta = fs::metadata(node.socket()).unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    assert_eq!(
        meta.gid(),
        nogroup.gid.as_raw(),
        "the socket keeps the daemon's group"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert!(
        node.log().contains("not a member of the control group"),
        "{}",
        node.log()
    );

    // nobody is the daemon's own user, so it may reload.
    let meshctl = meshctl_for_nobody(node.dir());
    let output = as_user(&meshctl, &node.socket(), "nogroup", &["reload"]);
    assert!(output.status.success(), "{output:?}");
    // Root may as well.
    node.ctl_ok(&["reload"]);
}

#[test]
fn a_client_that_stops_reading_replies_is_cut_off() {
    let node = Node::start(NodeOptions {
        signaling: "registrations_per_sec = 0\n".to_owned(),
        ..NodeOptions::default()
    });
    let addr = node.signaling_addr();
    // A device list of a few MiB, far more than a Unix socket buffers.
    for i in 0..3000 {
        let body = serde_json::json!({"id": format!("d{i}"), "addr": "192.0.2.1:1"});
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let body = body.to_string();
        stream
            .write_all(
                format!(
                    "POST /register HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).unwrap();
    }
    let (mut reader, mut writer) = connect(&node);
    for id in 1..=10 {
        writer
            .write_all(format!("{{\"v\":1,\"id\":{id},\"cmd\":\"devices\"}}\n").as_bytes())
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    node.ctl_ok(&["status"]);
    // Reading only after the daemon's 10 s write timeout: it has given up on
    // this connection, so the stream ends long before 10 full lists.
    std::thread::sleep(Duration::from_secs(11));
    let started = Instant::now();
    let mut received = Vec::new();
    let outcome = reader.read_to_end(&mut received);
    assert!(
        outcome.is_ok()
            || outcome
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{outcome:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "already closed, read took {waited:?}"
    );
    let finished_replies = received
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"{") && !line.windows(11).any(|w| w == b"\"more\":true"))
        .count();
    assert!(finished_replies < 10, "{finished_replies} complete replies");
}

/// Starts `meshctl ARGS` as `uid` in group nogroup, without waiting.
fn spawn_as_uid(meshctl: &Path, socket: &Path, uid: u32, args: &[&str]) -> std::process::Child {
    meshctl_as(meshctl, socket, &uid.to_string(), "nogroup", args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running setpriv (util-linux)")
}

fn status_as_uid(meshctl: &Path, socket: &Path, uid: u32) -> std::process::Output {
    meshctl_as(meshctl, socket, &uid.to_string(), "nogroup", &["status"])
        .output()
        .expect("running setpriv (util-linux)")
}

#[test]
fn read_only_users_can_never_lock_root_out_of_the_control_socket() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs meshctl as other users and needs root"
    );
    // A mesh node, so that `messages --follow` streams stay open.
    let node = Node::start(NodeOptions {
        group: "nogroup".into(),
        signaling_enabled: false,
        mesh: Some(meshd_tests::MeshOptions::with_hubs(&[
            "http://127.0.0.1:9".to_owned()
        ])),
        ..NodeOptions::default()
    });
    let meshctl = meshctl_for_nobody(node.dir());
    let socket = node.socket();
    // One read-only uid: eight follow streams, then it is refused. A probe
    // holds a slot for a moment, so a stream that started beside one may
    // have been refused: such streams are started again until all hold.
    let follow = |uid: u32| spawn_as_uid(&meshctl, &socket, uid, &["messages", "--follow"]);
    let keep_alive = |held: &mut Vec<(u32, std::process::Child)>| {
        for (uid, child) in held.iter_mut() {
            if child.try_wait().expect("polling meshctl").is_some() {
                *child = follow(*uid);
            }
        }
    };
    let mut held: Vec<(u32, std::process::Child)> =
        (0..8).map(|_| (61000, follow(61000))).collect();
    let refused = meshctl_tests_wait("uid 61000 refused its ninth connection", || {
        keep_alive(&mut held);
        let output = status_as_uid(&meshctl, &socket, 61000);
        (!output.status.success()).then_some(output)
    });
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("uid 61000 holds 8 control connections"),
        "{stderr}"
    );
    // Five more uids fill what read-only callers may hold (48 in all)...
    for uid in 61001..61006 {
        held.extend((0..8).map(|_| (uid, follow(uid))));
    }
    let full = meshctl_tests_wait("read-only slots full", || {
        keep_alive(&mut held);
        let output = status_as_uid(&meshctl, &socket, 61099);
        (!output.status.success()).then_some(output)
    });
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(
        stderr.contains("to callers without write access"),
        "{stderr}"
    );
    // ...and root still gets an answer at once.
    let started = Instant::now();
    node.ctl_ok(&["status"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The slots come back when the streams end.
    for (_, mut child) in held {
        let _ = child.kill();
        let _ = child.wait();
    }
    meshctl_tests_wait("a read-only caller is served again", || {
        status_as_uid(&meshctl, &socket, 61099)
            .status
            .success()
            .then_some(())
    });
}

/// Polls `check` every 50 ms for up to 20 s.
fn meshctl_tests_wait<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    meshd_tests::wait_until(what, Duration::from_secs(20), check)
}
