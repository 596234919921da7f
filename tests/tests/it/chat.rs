//! The chat role (docs/chat-protocol.md) with real TCP clients: the protocol,
//! every error code, ordering, the slow-consumer policy, logins under load,
//! users on disk, and meshctl's chat commands.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshd_tests::{ChatClient, Node, meshctl_bin, wait_until};

#[test]
fn the_whole_protocol() {
    let (node, addr) = Node::start_chat("");
    node.add_user("alice", "alice pw");
    node.add_user("bob", "bob-pw");

    let mut alice = ChatClient::connect(addr);
    // Commands and messages before AUTH are protocol errors.
    alice.send("/who");
    assert!(alice.line().starts_with("ERR proto "));
    alice.send("hello?");
    assert!(alice.line().starts_with("ERR proto "));
    // The password is the rest of the line, spaces included; CRLF is fine.
    alice.send_raw(b"AUTH alice alice pw\r\n");
    assert_eq!(alice.line(), "OK alice");

    let mut bob = ChatClient::login(addr, "bob", "bob-pw");
    assert_eq!(alice.line(), "JOIN bob");

    bob.send("hi alice");
    assert_eq!(alice.line(), "MSG bob hi alice");
    alice.send("hi bob, with  two spaces");
    assert_eq!(bob.line(), "MSG alice hi bob, with  two spaces");
    // No echo: bob's next line is the answer to his own /who.
    bob.send("/who");
    assert_eq!(bob.line(), "WHO alice bob");

    bob.send("/launch");
    assert!(bob.line().starts_with("ERR proto unknown command /launch"));
    bob.send_raw(&[0xff, 0xfe, b'\n']);
    assert!(bob.line().starts_with("ERR proto "));
    // After OK, a line that looks like AUTH is just a message.
    bob.send("AUTH bob bob-pw");
    assert_eq!(alice.line(), "MSG bob AUTH bob bob-pw");
    bob.send(&"x".repeat(4097));
    assert!(bob.line().starts_with("ERR toolong "));
    // A line of exactly max_line_bytes passes.
    let exact = "y".repeat(4096);
    bob.send(&exact);
    assert_eq!(alice.line(), format!("MSG bob {exact}"));

    node.ctl_ok(&["broadcast", "maintenance", "at", "noon"]);
    assert_eq!(alice.line(), "SYS maintenance at noon");
    assert_eq!(bob.line(), "SYS maintenance at noon");

    bob.send("/quit");
    assert_eq!(bob.line(), "BYE");
    bob.expect_closed();
    assert_eq!(alice.line(), "LEAVE bob");

    let status = node.ctl_json(&["status"]);
    assert_eq!(status["roles"]["chat"]["clients"], 1);
    assert_eq!(status["roles"]["chat"]["messages_relayed"], 4);
    let text = node.ctl_ok(&["status"]);
    assert!(
        text.contains("1 client logged in, 4 messages relayed"),
        "{text}"
    );
}

#[test]
fn failed_logins_look_alike_and_three_close_the_connection() {
    let (node, addr) = Node::start_chat("");
    node.add_user("carol", "right");
    let mut client = ChatClient::connect(addr);
    let mut timings = Vec::new();
    for attempt in [
        "AUTH carol wrong",
        "AUTH nobody right",
        "AUTH carol also-wrong",
    ] {
        let started = Instant::now();
        client.send(attempt);
        assert_eq!(client.line(), "ERR auth invalid credentials");
        timings.push(started.elapsed());
    }
    client.expect_closed();
    // Unknown user and wrong password take comparable time (both run
    // argon2): neither is an order of magnitude faster.
    let (known, unknown) = (timings[0], timings[1]);
    assert!(
        unknown * 4 > known && known * 4 > unknown,
        "wrong password took {known:?}, unknown user {unknown:?}"
    );
    assert!(node.log().contains("chat login failed"));
}

#[test]
fn failed_logins_from_one_address_are_throttled() {
    let (node, addr) = Node::start_chat("");
    node.add_user("dave", "pw");
    // Ten failures (three connections' worth and a bit) are allowed...
    let mut failures = 0;
    while failures < 10 {
        let mut client = ChatClient::connect(addr);
        for _ in 0..3.min(10 - failures) {
            client.send("AUTH dave nope");
            assert_eq!(client.line(), "ERR auth invalid credentials");
            failures += 1;
        }
    }
    // ...then even the right password is turned away for a while.
    let mut client = ChatClient::connect(addr);
    client.send("AUTH dave pw");
    let line = client.line();
    assert!(
        line.starts_with("ERR auth too many failed logins from 127.0.0.1"),
        "{line}"
    );
    client.expect_closed();
}

#[test]
fn a_client_that_does_not_log_in_within_10s_is_closed() {
    let (_node, addr) = Node::start_chat("");
    let mut client = ChatClient::connect(addr);
    client.set_timeout(Duration::from_secs(20));
    let started = Instant::now();
    assert_eq!(client.line(), "ERR timeout no login within 10s; closing");
    client.expect_closed();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
}

#[test]
fn clients_over_max_clients_are_turned_away() {
    let (node, addr) = Node::start_chat("max_clients = 2\n");
    node.add_user("u", "pw");
    let _first = ChatClient::login(addr, "u", "pw");
    let _second = ChatClient::connect(addr);
    let mut third = ChatClient::connect(addr);
    assert_eq!(third.line(), "ERR full too many clients; try again later");
    third.expect_closed();
}

#[test]
fn on_sigterm_clients_get_shutdown_and_bye() {
    let (mut node, addr) = Node::start_chat("");
    node.add_user("erin", "pw");
    let mut logged_in = ChatClient::login(addr, "erin", "pw");
    let mut pending = ChatClient::connect(addr);
    node.stop();
    for client in [&mut logged_in, &mut pending] {
        assert_eq!(client.line(), "ERR shutdown meshd is stopping");
        assert_eq!(client.line(), "BYE");
        client.expect_closed();
    }
}

#[test]
fn a_thousand_messages_arrive_in_order() {
    let (node, addr) = Node::start_chat("rate_per_user = 0\n");
    node.add_user("s", "pw");
    node.add_user("r", "pw");
    let mut receiver = ChatClient::login(addr, "r", "pw");
    let mut sender = ChatClient::login(addr, "s", "pw");
    receiver.expect("JOIN s");
    let mut burst = String::new();
    for i in 0..1000 {
        burst.push_str(&format!("message {i}\n"));
    }
    sender.send_raw(burst.as_bytes());
    for i in 0..1000 {
        assert_eq!(receiver.line(), format!("MSG s message {i}"));
    }
}

#[test]
fn a_slow_consumer_is_cut_off_while_others_get_everything() {
    let (node, addr) = Node::start_chat("rate_per_user = 0\n");
    node.add_user("fast", "pw");
    node.add_user("stuck", "pw");
    node.add_user("talker", "pw");
    let stuck = ChatClient::login(addr, "stuck", "pw");
    let mut fast = ChatClient::login(addr, "fast", "pw");
    let talker = ChatClient::login(addr, "talker", "pw");
    fast.expect("JOIN talker");
    let rss_before = node.rss_bytes();

    // `stuck` never reads again. `talker` sends 100,000 lines of 200 bytes
    // (20 MB) while `fast` reads everything.
    const COUNT: usize = 100_000;
    let sender = std::thread::spawn(move || {
        let mut talker = talker;
        let filler = "z".repeat(190);
        let mut chunk = String::new();
        for i in 0..COUNT {
            chunk.push_str(&format!("{i:08} {filler}\n"));
            if chunk.len() > 64 * 1024 {
                talker.send_raw(chunk.as_bytes());
                chunk.clear();
            }
        }
        talker.send_raw(chunk.as_bytes());
        talker
    });
    let mut max_rss = rss_before;
    let mut left = false;
    for i in 0..COUNT {
        let mut line = fast.line();
        if line == "LEAVE stuck" {
            left = true;
            line = fast.line();
        }
        assert!(
            line.starts_with(&format!("MSG talker {i:08} ")),
            "line {i}: {line:.40}"
        );
        if i % 10_000 == 0 {
            max_rss = max_rss.max(node.rss_bytes());
        }
    }
    let _talker = sender.join().unwrap();
    if !left {
        fast.expect("LEAVE stuck");
    }
    wait_until(
        "the slow consumer to be cut off",
        Duration::from_secs(10),
        || {
            node.log()
                .contains("slow chat client disconnected")
                .then_some(())
        },
    );
    assert!(node.log().contains("user=\"stuck\""), "{}", node.log());
    // Counted where they happen: one client cut off, every line said once
    // (not once per reader).
    assert_eq!(node.metric("meshd_chat_slow_consumers_total"), Some(1.0));
    assert_eq!(node.metric("meshd_chat_messages_total"), Some(COUNT as f64));
    assert_eq!(
        node.metric("meshd_chat_logins_total{result=\"ok\"}"),
        Some(3.0)
    );
    // Its connection is closed: reading what is buffered ends in EOF.
    let mut rest = Vec::new();
    stuck
        .stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let drained = (&mut stuck.stream()).read_to_end(&mut rest);
    assert!(
        drained.is_ok()
            || drained
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{drained:?}"
    );
    // Memory stayed bounded: 20 MB went through, far less stayed.
    let growth = max_rss.saturating_sub(rss_before);
    assert!(growth < 16 << 20, "meshd grew by {} KiB", growth >> 10);
    let status = node.ctl_json(&["status"]);
    assert_eq!(
        status["roles"]["chat"]["clients"], 2,
        "stuck is gone: {status}"
    );
}

#[test]
fn a_login_storm_does_not_delay_logged_in_clients() {
    let (node, addr) = Node::start_chat("");
    node.add_user("ping", "pw");
    node.add_user("pong", "pw");
    let mut ping = ChatClient::login(addr, "ping", "pw");
    let mut pong = ChatClient::login(addr, "pong", "pw");
    ping.expect("JOIN pong");

    // 50 connections each fail a login at the same moment (argon2 runs for
    // each of them).
    let storm: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = ChatClient::connect(addr);
                client.send(&format!("AUTH intruder{i} guess"));
                let line = client.line();
                assert!(line.starts_with("ERR auth "), "{line}");
            })
        })
        .collect();
    let mut round_trips = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while storm.iter().any(|t| !t.is_finished()) || round_trips.len() < 20 {
        assert!(Instant::now() < deadline, "storm did not end");
        let started = Instant::now();
        ping.send("ping");
        pong.expect("MSG ping ping");
        pong.send("pong");
        ping.expect("MSG pong pong");
        round_trips.push(started.elapsed());
    }
    for thread in storm {
        thread.join().unwrap();
    }
    round_trips.sort();
    let worst = *round_trips.last().unwrap();
    let median = round_trips[round_trips.len() / 2];
    assert!(
        worst < Duration::from_millis(250),
        "{} round trips during the storm: median {median:?}, worst {worst:?}",
        round_trips.len()
    );
}

#[test]
fn users_are_managed_with_meshctl_and_survive_a_restart() {
    let (mut node, addr) = Node::start_chat("");
    // Ten concurrent `users add`: none is lost.
    let adds: Vec<_> = (0..10)
        .map(|i| {
            let socket = node.socket();
            std::thread::spawn(move || {
                let mut child = Command::new(meshctl_bin())
                    .arg("--socket")
                    .arg(socket)
                    .args(["users", "add", &format!("user{i}"), "--password-stdin"])
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(b"pw\n").unwrap();
                let output = child.wait_with_output().unwrap();
                assert!(output.status.success(), "{output:?}");
            })
        })
        .collect();
    for add in adds {
        add.join().unwrap();
    }
    let listed = node.ctl_json(&["users", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 10, "{listed}");
    assert_eq!(listed[0]["name"], "user0");

    // The file: mode 0600, argon2id PHC strings at OWASP cost.
    let file = node.dir().join("state/chat-users");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("user3:$argon2id$v=19$m=19456,t=2,p=1$"),
        "{text}"
    );
    assert!(!text.contains(":pw"), "no clear passwords");

    // Errors: duplicate, bad name, unknown user, empty password.
    let duplicate = node.ctl_with_input(&["users", "add", "user1", "--password-stdin"], "x\n");
    assert_eq!(duplicate.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("exists already"));
    let bad = node.ctl_with_input(&["users", "add", "bad name", "--password-stdin"], "x\n");
    assert_eq!(bad.status.code(), Some(1));
    let missing = node.ctl(&["users", "remove", "ghost"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no chat user"));
    let empty = node.ctl_with_input(&["users", "add", "quiet", "--password-stdin"], "\n");
    assert_eq!(empty.status.code(), Some(1));

    // passwd takes effect at once for new logins; remove too.
    let changed = node.ctl_with_input(
        &["users", "passwd", "user2", "--password-stdin"],
        "new pw\n",
    );
    assert!(changed.status.success(), "{changed:?}");
    let mut old = ChatClient::connect(addr);
    old.send("AUTH user2 pw");
    assert_eq!(old.line(), "ERR auth invalid credentials");
    ChatClient::login(addr, "user2", "new pw");
    node.ctl_ok(&["users", "remove", "user9"]);
    let mut removed = ChatClient::connect(addr);
    removed.send("AUTH user9 pw");
    assert_eq!(removed.line(), "ERR auth invalid credentials");

    // After a restart the users are still there.
    node.stop();
    node.restart();
    let addr = node.chat_addr();
    ChatClient::login(addr, "user0", "pw");
    ChatClient::login(addr, "user2", "new pw");
    assert_eq!(
        node.ctl_json(&["users", "list"]).as_array().unwrap().len(),
        9
    );
}

#[test]
fn a_corrupt_users_file_names_its_line_and_the_last_good_set_stays() {
    let (node, addr) = Node::start_chat("");
    node.add_user("frank", "pw");
    let file = node.dir().join("state/chat-users");
    let good = std::fs::read_to_string(&file).unwrap();
    let corrupt = format!("{good}this line is wrong\n");
    std::fs::write(&file, &corrupt).unwrap();
    let line_no = corrupt.lines().count();

    // Reload: the config is fine, the users file is reported with its line.
    let output = node.ctl(&["reload"]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("chat-users:{line_no}: expected NAME:HASH")),
        "{stderr}"
    );
    assert!(
        node.log()
            .contains("chat users file invalid; keeping the last good set")
    );

    // Logins use the last good set; changes are refused; the file is kept.
    ChatClient::login(addr, "frank", "pw");
    let refused = node.ctl_with_input(&["users", "add", "gina", "--password-stdin"], "pw\n");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&format!(":{line_no}:")));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), corrupt);
}

/// `meshctl chat` on a real terminal (`script` gives it one, so the password
/// prompt really turns echo off), with what it prints collected.
pub(crate) struct TerminalChat {
    pub(crate) child: std::process::Child,
    stdin: std::process::ChildStdin,
    screen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl TerminalChat {
    fn start(addr: SocketAddr) -> TerminalChat {
        TerminalChat::start_with(&[&addr.to_string()], &[])
    }

    /// `meshctl chat ARGS...` with extra environment.
    pub(crate) fn start_with(args: &[&str], env: &[(&str, &str)]) -> TerminalChat {
        let command = format!("{} chat {}", meshctl_bin().display(), args.join(" "));
        let mut child = Command::new("script")
            .args(["-q", "-f", "-e", "-c", &command, "/dev/null"])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running script (util-linux)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let collected = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        TerminalChat {
            child,
            stdin,
            screen,
        }
    }

    pub(crate) fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    pub(crate) fn wait_for(&self, text: &str) {
        wait_until(
            &format!("{text:?} on the terminal"),
            Duration::from_secs(10),
            || self.screen.lock().unwrap().contains(text).then_some(()),
        );
    }

    pub(crate) fn log_in(&mut self, user: &str, password: &str) {
        self.wait_for("Username:");
        self.type_line(user);
        self.wait_for("Password:");
        self.type_line(password);
        self.wait_for(&format!("logged in as {user}"));
    }

    pub(crate) fn screen(&self) -> String {
        self.screen.lock().unwrap().clone()
    }
}

#[test]
fn meshctl_chat_is_an_interactive_client() {
    let (node, addr) = Node::start_chat("");
    node.add_user("henry", "s3cret pass");
    node.add_user("iris", "pw");
    let mut iris = ChatClient::login(addr, "iris", "pw");

    let mut terminal = TerminalChat::start(addr);
    terminal.log_in("henry", "s3cret pass");
    iris.expect("JOIN henry");

    terminal.type_line("hello from the terminal");
    assert_eq!(iris.line(), "MSG henry hello from the terminal");
    iris.send("hi henry");
    terminal.wait_for("iris: hi henry");
    node.ctl_ok(&["broadcast", "tea", "time"]);
    terminal.wait_for("[system] tea time");
    assert_eq!(iris.line(), "SYS tea time");
    terminal.type_line("exit");
    assert_eq!(iris.line(), "LEAVE henry");
    let status = terminal.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let screen = terminal.screen();
    assert!(
        !screen.contains("s3cret"),
        "the password was echoed:\n{screen}"
    );
}

#[test]
fn meshctl_chat_shows_control_characters_escaped_and_quit_exits_0() {
    let (node, addr) = Node::start_chat("");
    node.add_user("liam", "pw");
    node.add_user("mallory", "pw");
    let mut mallory = ChatClient::login(addr, "mallory", "pw");
    let mut terminal = TerminalChat::start(addr);
    terminal.log_in("liam", "pw");
    mallory.expect("JOIN liam");
    // Clear the screen, home the cursor, and fake a line from root.
    mallory.send_raw(b"\x1b[2J\x1b[H\rroot: please paste your password\x07\n");
    terminal.wait_for(r"mallory: \u{1b}[2J\u{1b}[H\rroot: please paste your password\u{7}");
    let screen = terminal.screen();
    assert!(!screen.contains("\x1b[2J"), "{screen:?}");
    assert!(!screen.contains('\x07'), "{screen:?}");
    terminal.type_line("/quit");
    assert_eq!(mallory.line(), "LEAVE liam");
    let status = terminal.child.wait().unwrap();
    assert!(
        status.success(),
        "/quit exits 0: {status}\n{}",
        terminal.screen()
    );
}

#[test]
fn meshctl_chat_ends_with_status_1_when_the_server_goes_away() {
    let (mut node, addr) = Node::start_chat("");
    node.add_user("jack", "pw");
    let mut terminal = TerminalChat::start(addr);
    terminal.log_in("jack", "pw");
    node.stop();
    terminal.wait_for("! meshd is stopping (shutdown)");
    let status = terminal.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", terminal.screen());
    assert!(
        terminal.screen().contains("chat ended"),
        "{}",
        terminal.screen()
    );
}

#[test]
fn meshctl_chat_reports_a_failed_login() {
    let (node, addr) = Node::start_chat("");
    node.add_user("kate", "pw");
    let mut terminal = TerminalChat::start(addr);
    terminal.wait_for("Username:");
    terminal.type_line("kate");
    terminal.wait_for("Password:");
    terminal.type_line("wrong");
    let status = terminal.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        terminal
            .screen()
            .contains("login failed: ! invalid credentials (auth)"),
        "{}",
        terminal.screen()
    );
}

#[test]
fn chat_is_optional_and_meshctl_says_so() {
    let node = Node::start_default();
    let output = node.ctl(&["broadcast", "anyone?"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no chat role"));
    assert!(node.ctl_json(&["status"])["roles"].get("chat").is_none());
}
