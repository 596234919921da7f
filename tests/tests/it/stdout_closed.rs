//! meshctl whose stdout reader has gone away (`meshctl devices | head -1`):
//! it ends at once and quietly, as cat or grep do, instead of panicking on
//! `EPIPE`; a failure it already knew of still gives status 1.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use meshd_tests::{Node, meshctl_bin};

use crate::mesh::{device, hub_device, wait_full_mesh};

/// Starts meshctl against `node` with its stdout a pipe whose read end is
/// already closed, so that its first write fails with `EPIPE`.
fn spawn_into_closed_pipe(node: &Node, args: &[&str]) -> Child {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Command::new(meshctl_bin())
        .arg("--socket")
        .arg(node.socket())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("running meshctl")
}

/// Waits up to 10 s for `child` to exit; its status and stderr.
fn finish(mut child: Child, args: &[&str]) -> (ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling meshctl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshctl {args:?} did not end within 10s of its stdout closing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .expect("reading meshctl's stderr");
    (status, stderr)
}

#[test]
fn a_closed_stdout_ends_meshctl_quietly_with_the_commands_status() {
    let hub = hub_device("hub", "");
    let commands: [&[&str]; 6] = [
        &["--json", "status"],
        &["status"],
        &["--json", "devices"],
        &["devices"],
        &["--json", "messages"],
        &["messages"],
    ];
    for _ in 0..3 {
        for args in commands {
            let (status, stderr) = finish(spawn_into_closed_pipe(&hub, args), args);
            assert!(
                !stderr.contains("panicked"),
                "meshctl {args:?} panicked: {stderr}"
            );
            assert!(
                status.success(),
                "meshctl {args:?} into a closed pipe: {status}, stderr: {stderr}"
            );
            assert_eq!(stderr, "", "meshctl {args:?} ends quietly");
        }
    }

    // `send --all` with no other device has failed before it prints its
    // (empty) JSON array: a closed stdout keeps that failure, status 1 and
    // its line, as with stdout open.
    let args = ["--json", "send", "--all", "hello"];
    let open = hub.ctl(&args);
    assert_eq!(open.status.code(), Some(1), "{open:?}");
    let expected = String::from_utf8(open.stderr).unwrap();
    assert!(expected.contains("nothing delivered"), "{expected}");
    for _ in 0..3 {
        let (status, stderr) = finish(spawn_into_closed_pipe(&hub, &args), &args);
        assert_eq!(status.code(), Some(1), "{status}, stderr: {stderr}");
        assert_eq!(stderr, expected);
    }
}

#[test]
fn messages_follow_stops_quietly_when_its_stdout_closes() {
    let hub = hub_device("hub", "");
    let a = device("a", &[hub.hub_url()]);
    wait_full_mesh(&[&hub, &a], Duration::from_secs(10));
    // A follower starts with the inbox, so it has a line to print at once.
    hub.ctl_ok(&["send", "a", "hello"]);
    for args in [
        ["--json", "messages", "--follow"].as_slice(),
        &["messages", "--follow"],
        &["--json", "messages", "--follow"],
    ] {
        let (status, stderr) = finish(spawn_into_closed_pipe(&a, args), args);
        assert!(
            !stderr.contains("panicked"),
            "meshctl {args:?} panicked: {stderr}"
        );
        assert!(status.success(), "{status}, stderr: {stderr}");
        assert_eq!(stderr, "", "meshctl {args:?} ends quietly");
    }
}
