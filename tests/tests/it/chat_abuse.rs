//! The chat role under use and attack (issue 12): membership at `OK`,
//! revocation, guesses sent all at once, one flooding sender, and hostile
//! text in meshctl chat.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use meshd_tests::{ChatClient, Node, raise_open_files, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

#[test]
fn a_client_that_read_ok_is_in_the_room_at_once() {
    let (node, addr) = Node::start_chat("");
    node.add_user("alice", "pw");
    node.add_user("bob", "pw");
    let mut bob = ChatClient::login(addr, "bob", "pw");
    for round in 0..20 {
        // The instant alice has read OK, bob speaks and alice asks who is
        // here: she must get bob's line, and be listed.
        let mut alice = ChatClient::login(addr, "alice", "pw");
        bob.send(&format!("round {round}"));
        alice.send("/who");
        let mut got_message = false;
        let mut who = None;
        while !(got_message && who.is_some()) {
            let line = alice.line();
            if line == format!("MSG bob round {round}") {
                got_message = true;
            } else if line.starts_with("WHO ") {
                who = Some(line);
            } else {
                panic!("round {round}: unexpected line {line:?}");
            }
        }
        assert_eq!(who.as_deref(), Some("WHO alice bob"), "round {round}");
        bob.expect("JOIN alice");
        alice.send("/quit");
        assert_eq!(alice.line(), "BYE");
        bob.expect("LEAVE alice");
    }
}

#[test]
fn removing_a_user_or_changing_its_password_ends_its_sessions_at_once() {
    let (node, addr) = Node::start_chat("");
    node.add_user("mallory", "old");
    node.add_user("carol", "pw");
    let mut carol = ChatClient::login(addr, "carol", "pw");

    let mut first = ChatClient::login(addr, "mallory", "old");
    let mut second = ChatClient::login(addr, "mallory", "old");
    carol.expect("JOIN mallory");
    carol.expect("JOIN mallory");
    let output = node.ctl_with_input(&["users", "passwd", "mallory", "--password-stdin"], "new\n");
    assert!(output.status.success(), "{output:?}");
    for session in [&mut first, &mut second] {
        let line = session.line_skipping_presence();
        assert!(line.starts_with("ERR auth password changed"), "{line}");
        session.expect_closed();
    }
    carol.expect("LEAVE mallory");
    carol.expect("LEAVE mallory");
    carol.send("/who");
    assert_eq!(carol.line(), "WHO carol");
    // The new password works; the old one does not.
    let mut again = ChatClient::connect(addr);
    again.send("AUTH mallory old");
    assert_eq!(again.line(), "ERR auth invalid credentials");
    let mut third = ChatClient::login(addr, "mallory", "new");
    carol.expect("JOIN mallory");

    node.ctl_ok(&["users", "remove", "mallory"]);
    assert_eq!(third.line_skipping_presence(), "ERR auth user removed");
    third.expect_closed();
    carol.expect("LEAVE mallory");
    // Carol was never touched, and still talks.
    let mut dave = {
        node.add_user("dave", "pw");
        ChatClient::login(addr, "dave", "pw")
    };
    carol.expect("JOIN dave");
    carol.send("still here");
    assert_eq!(dave.line(), "MSG carol still here");
    assert_eq!(node.ctl_json(&["status"])["roles"]["chat"]["clients"], 2);
}

/// Connects from `source` (any address of 127.0.0.0/8) to `server`.
async fn connect_from(source: IpAddr, server: SocketAddr) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("binding a loopback source address");
    socket.connect(server).await.expect("connecting to chat")
}

/// Logs in from `source`; returns how long from AUTH to OK.
async fn timed_login(source: IpAddr, server: SocketAddr, user: &str) -> Duration {
    let stream = connect_from(source, server).await;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("HELLO meshd-chat 1")
    );
    let started = Instant::now();
    write
        .write_all(format!("AUTH {user} pw\n").as_bytes())
        .await
        .unwrap();
    let answer = lines.next_line().await.unwrap();
    assert_eq!(answer, Some(format!("OK {user}")));
    started.elapsed()
}

#[test]
fn two_thousand_guesses_at_once_are_capped_and_others_still_log_in_at_once() {
    raise_open_files(8192);
    let (node, addr) = Node::start_chat("");
    node.add_user("victim", "pw");
    node.add_user("bystander", "pw");
    let attacker: IpAddr = "127.0.0.7".parse().unwrap();
    let elsewhere: IpAddr = "127.0.0.8".parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let unloaded = timed_login(elsewhere, addr, "bystander").await;
        // 2,000 connections, each past HELLO, then every one sends a wrong
        // AUTH in the same instant.
        let mut storm = Vec::new();
        for _ in 0..2000 {
            let stream = connect_from(attacker, addr).await;
            let (read, write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            assert_eq!(
                lines.next_line().await.unwrap().as_deref(),
                Some("HELLO meshd-chat 1")
            );
            storm.push((lines, write));
        }
        for (_, write) in &mut storm {
            write.write_all(b"AUTH victim guess\n").await.unwrap();
        }
        let during = timed_login(elsewhere, addr, "bystander").await;
        let mut checked = 0;
        let mut refused = 0;
        for (mut lines, _) in storm {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("every guess is answered")
                .unwrap()
                .unwrap_or_default();
            if line == "ERR auth invalid credentials" {
                checked += 1;
            } else {
                assert!(
                    line.starts_with("ERR auth too many failed logins from 127.0.0.7"),
                    "{line}"
                );
                refused += 1;
            }
        }
        assert_eq!(
            (checked, refused),
            (10, 1990),
            "only the window's ten guesses reach argon2"
        );
        assert!(
            during < unloaded + Duration::from_millis(600),
            "a login from another address took {during:?} during the storm ({unloaded:?} without)"
        );
    });
    // Each login counted once, by what became of it.
    for (result, count) in [("ok", 2.0), ("failed", 10.0), ("throttled", 1990.0)] {
        assert_eq!(
            node.metric(&format!("meshd_chat_logins_total{{result=\"{result}\"}}")),
            Some(count),
            "{result}"
        );
    }
}

#[test]
fn many_users_behind_one_address_all_log_in_at_once() {
    raise_open_files(8192);
    let (node, addr) = Node::start_chat("");
    node.add_user("office", "pw");
    let nat: IpAddr = "127.0.0.9".parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let logins: Vec<_> = (0..60)
            .map(|_| tokio::spawn(timed_login(nat, addr, "office")))
            .collect();
        for login in logins {
            login.await.expect("every login succeeds");
        }
    });
    // Each client has gone; the server notices each close a moment later.
    wait_until("every session ended", Duration::from_secs(5), || {
        (node.ctl_json(&["status"])["roles"]["chat"]["clients"] == 0).then_some(())
    });
}

#[test]
fn a_flooding_sender_is_slowed_and_no_reader_is_cut_off() {
    // 500 lines a second after a burst of 100: 1,600 lines take at least
    // three seconds to get through, however fast they are sent.
    let (node, addr) = Node::start_chat("rate_per_user = 500\nburst_per_user = 100\n");
    node.add_user("flooder", "pw");
    node.add_user("reader", "pw");
    let readers: Vec<ChatClient> = (0..20)
        .map(|_| ChatClient::login(addr, "reader", "pw"))
        .collect();
    let mut flooder = ChatClient::login(addr, "flooder", "pw");
    let lines = 1600;
    let started = Instant::now();
    let threads: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            std::thread::spawn(move || {
                for i in 0..lines {
                    reader.expect(&format!("MSG flooder {i}"));
                }
                reader
            })
        })
        .collect();
    let burst: String = (0..lines).map(|i| format!("{i}\n")).collect();
    flooder.send_raw(burst.as_bytes());
    let readers: Vec<ChatClient> = threads
        .into_iter()
        .map(|thread| {
            thread
                .join()
                .expect("a reader missed a line or was cut off")
        })
        .collect();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "not slowed: {took:?}");
    // The flooder is still logged in, slowed rather than cut off.
    flooder.send("/who");
    assert_eq!(flooder.line_skipping_presence(), "WHO flooder reader");
    drop(readers);
    assert!(!node.log().contains("slow chat client disconnected"));
    // The limit is live on reload.
    let config = node
        .config_text()
        .replace("rate_per_user = 500", "rate_per_user = 0");
    node.write_config(&config);
    let reload = node.ctl_json(&["reload"]);
    assert!(
        reload["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|key| key == "chat.rate_per_user"),
        "{reload}"
    );
}

#[test]
fn a_login_storm_leaves_memory_bounded() {
    raise_open_files(8192);
    let (node, addr) = Node::start_chat("");
    node.add_user("crowd", "pw");
    let before = node.rss_bytes();
    let source: IpAddr = "127.0.0.10".parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut took = runtime.block_on(async {
        let logins: Vec<_> = (0..200)
            .map(|_| tokio::spawn(timed_login(source, addr, "crowd")))
            .collect();
        let mut took = Vec::new();
        for login in logins {
            took.push(login.await.expect("every login succeeds"));
        }
        took
    });
    took.sort();
    let after = node.rss_bytes();
    eprintln!(
        "RSS {} MiB before, {} MiB after 200 parallel logins; median login {:?}, slowest {:?}",
        before >> 20,
        after >> 20,
        took[took.len() / 2],
        took[took.len() - 1]
    );
    // argon2 memory is one 19 MiB buffer per core, reused: 200 logins on
    // the blocking pool's threads must not keep a buffer per thread.
    let cores = std::thread::available_parallelism().map_or(2, usize::from) as u64;
    let limit = before + cores * 20 * 1024 * 1024 + 8 * 1024 * 1024;
    assert!(
        after <= limit.max(64 * 1024 * 1024),
        "RSS {} MiB after 200 parallel logins ({} MiB before; slowest login {:?})",
        after >> 20,
        before >> 20,
        took.last()
    );
}
