//! Chat over TLS (docs/chat-protocol.md#tls): TLS clients pinned to the
//! fingerprint `meshctl status` shows, `meshctl chat --tls`, plain-text
//! clients on a TLS port, the self-signed certificate across restarts, the
//! operator's own certificate, and the config's refusals.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshd_tests::tls::{der_of_pem, fingerprint};
use meshd_tests::{Node, NodeOptions, TlsChatClient, meshctl_bin, meshd_bin, wait_until};

use crate::chat::TerminalChat;

/// `roles.chat.tls_fingerprint` from `meshctl status --json`.
fn tls_fingerprint(node: &Node) -> String {
    let status = node.ctl_json(&["status"]);
    status["roles"]["chat"]["tls_fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("no roles.chat.tls_fingerprint in {status}"))
        .to_owned()
}

/// The same fingerprint with its last digit changed.
fn wrong(fingerprint: &str) -> String {
    let mut text = fingerprint.to_owned();
    let last = text.pop().unwrap();
    text.push(if last == '0' { '1' } else { '0' });
    text
}

fn open_fds(node: &Node) -> usize {
    fs::read_dir(format!("/proc/{}/fd", node.pid()))
        .expect("reading meshd's fds")
        .count()
}

fn meshctl_chat(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(meshctl_bin())
        .arg("chat")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running meshctl chat")
}

fn check_config(text: &str) -> (Output, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshd.toml");
    fs::write(&path, text).unwrap();
    let output = Command::new(meshd_bin())
        .arg("--check-config")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("running meshd --check-config");
    (output, path, dir)
}

/// A chat-only node whose config replaces its `[chat]` listen line and adds
/// `chat`; started, and expected to refuse to start: returns its log.
fn refused_start(listen: &str, chat: &str, before: impl FnOnce(&Node)) -> String {
    let mut node = Node::prepare(NodeOptions {
        chat_enabled: true,
        signaling_enabled: false,
        ..NodeOptions::default()
    });
    let section = "[chat]\nenabled = true\nlisten = \"127.0.0.1:0\"\n";
    let text = node.config_text();
    assert!(text.contains(section), "{text}");
    let text = text.replace(
        section,
        &format!("[chat]\nenabled = true\nlisten = \"{listen}\"\n{chat}"),
    );
    node.write_config(&text);
    before(&node);
    node.launch();
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "meshd must refuse:\n{}", node.log());
    assert_eq!(node.notify().count("READY=1"), 0);
    node.log()
}

#[test]
fn two_tls_clients_chat_both_ways_and_a_wrong_fingerprint_is_refused() {
    let (node, addr) = Node::start_chat("tls = true\n");
    node.add_user("alice", "alice pw");
    node.add_user("bob", "bob-pw");
    let pinned = tls_fingerprint(&node);
    assert!(
        pinned.starts_with("sha256:")
            && pinned.len() == 7 + 64
            && pinned[7..]
                .chars()
                .all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{pinned}"
    );
    let cert = fs::read_to_string(node.dir().join("state/chat-cert.pem")).unwrap();
    assert_eq!(pinned, fingerprint(&der_of_pem(&cert)), "the DER's SHA-256");

    let mut alice = TlsChatClient::login(addr, &pinned, "alice", "alice pw");
    let mut bob = TlsChatClient::login(addr, &pinned, "bob", "bob-pw");
    alice.expect("JOIN bob");
    alice.send("hello bob, over tls");
    assert_eq!(bob.line(), "MSG alice hello bob, over tls");
    bob.send("hi alice");
    assert_eq!(alice.line(), "MSG bob hi alice");
    bob.send("/who");
    assert_eq!(bob.line(), "WHO alice bob");

    let refused = TlsChatClient::try_connect_raw(addr, &wrong(&pinned));
    let error = refused.err().expect("a wrong fingerprint is refused");
    assert!(error.contains("fingerprint mismatch"), "{error}");
    // The refused client cost the room nothing.
    alice.send("still here");
    assert_eq!(bob.line(), "MSG alice still here");
}

#[test]
fn meshctl_chat_tls_with_the_fingerprint_logs_in_and_a_wrong_one_exits_1() {
    let (node, addr) = Node::start_chat("tls = true\n");
    node.add_user("henry", "s3cret pass");
    node.add_user("iris", "pw");
    let pinned = tls_fingerprint(&node);
    let server = addr.to_string();
    let mut iris = TlsChatClient::login(addr, &pinned, "iris", "pw");

    let mut terminal = TerminalChat::start_with(&["--tls", "--fingerprint", &pinned, &server], &[]);
    terminal.log_in("henry", "s3cret pass");
    iris.expect("JOIN henry");
    iris.send("hello from a TLS client");
    terminal.wait_for("iris: hello from a TLS client");
    terminal.type_line("hi iris");
    assert_eq!(iris.line(), "MSG henry hi iris");
    terminal.type_line("exit");
    iris.expect("LEAVE henry");
    let status = terminal.child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", terminal.screen());
    assert!(
        !terminal.screen().contains("s3cret"),
        "{}",
        terminal.screen()
    );

    // A wrong fingerprint: exit 1 before any prompt, one line naming both.
    let bad = wrong(&pinned);
    let output = meshctl_chat(&["--tls", "--fingerprint", &bad, &server], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&pinned) && stderr.contains(&bad) && stderr.contains("--fingerprint"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("Username"));

    // Without --fingerprint the certificate must chain to a trusted root;
    // the self-signed one does not (the trusted roots: an unrelated CA).
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    let (other_ca, _) = certificate_authority();
    fs::write(&roots, other_ca.pem()).unwrap();
    let roots = roots.display().to_string();
    let output = meshctl_chat(&["--tls", &server], &[("SSL_CERT_FILE", &roots)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not signed by a trusted root")
            && stderr.contains("pass --fingerprint sha256:"),
        "{stderr}"
    );

    // --fingerprint without --tls, or a malformed one, is a usage error.
    let output = meshctl_chat(&["--fingerprint", &pinned, &server], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = meshctl_chat(&["--tls", "--fingerprint", "sha256:12", &server], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("64 hex digits"));
}

#[test]
fn a_plaintext_client_on_a_tls_port_gets_no_hello_and_costs_nothing_lasting() {
    let (node, addr) = Node::start_chat("tls = true\n");
    node.add_user("alice", "pw");
    node.add_user("bob", "pw");
    let pinned = tls_fingerprint(&node);
    // A client that connects and says nothing: closed at the handshake
    // deadline, checked last.
    let mut silent = TcpStream::connect(addr).unwrap();
    let silent_since = Instant::now();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut alice = TlsChatClient::login(addr, &pinned, "alice", "pw");
    let baseline = open_fds(&node);

    for round in 0..25 {
        let mut plain = TcpStream::connect(addr).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        plain.write_all(b"AUTH alice pw\n").unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match plain.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("round {round}: meshd did not close the connection: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&received);
        assert!(
            !received.starts_with(b"HELLO") && !text.contains("meshd-chat") && !text.contains("OK"),
            "round {round}: a plain-text client got {text:?}"
        );
    }

    // meshd goes on serving TLS clients.
    let mut bob = TlsChatClient::login(addr, &pinned, "bob", "pw");
    alice.expect("JOIN bob");
    bob.send("after the plain-text clients");
    assert_eq!(alice.line(), "MSG bob after the plain-text clients");
    // Their sockets are gone: at most bob's is new.
    wait_until(
        "meshd's open fds back to where they were, plus bob",
        Duration::from_secs(10),
        || (open_fds(&node) <= baseline + 1).then_some(()),
    );
    assert!(
        node.log().contains("chat tls handshake failed"),
        "logged at debug:\n{}",
        node.log()
    );

    let mut buf = [0u8; 64];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("meshd sent {n} bytes to a client that never spoke TLS"),
        Err(e) => panic!("the silent client was not closed: {e}"),
    }
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed at the 10 s handshake deadline, not after {waited:?}"
    );
}

#[test]
fn a_handshake_in_progress_counts_against_max_clients_and_full_is_said_in_tls() {
    let (node, addr) = Node::start_chat("tls = true\nmax_clients = 1\n");
    let pinned = tls_fingerprint(&node);
    let _silent = TcpStream::connect(addr).unwrap();
    let mut turned_away = TlsChatClient::connect(addr, &pinned);
    assert_eq!(
        turned_away.line(),
        "ERR full too many clients; try again later"
    );
    // A plain-text client over the cap gets nothing in clear either.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut received = Vec::new();
    let _ = plain.read_to_end(&mut received);
    assert!(
        !String::from_utf8_lossy(&received).contains("HELLO"),
        "{received:?}"
    );
}

#[test]
fn the_self_signed_certificate_survives_a_restart_and_its_key_is_private() {
    let (mut node, addr) = Node::start_chat("tls = true\n");
    node.add_user("kate", "pw");
    let first = tls_fingerprint(&node);
    let state = node.dir().join("state");
    let mode = |name: &str| fs::metadata(state.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("chat-key.pem"), 0o600);
    assert_eq!(mode("chat-cert.pem"), 0o644);
    TlsChatClient::login(addr, &first, "kate", "pw");

    node.stop();
    node.restart();
    assert_eq!(tls_fingerprint(&node), first, "the same certificate");
    assert_eq!(mode("chat-key.pem"), 0o600);
    let addr = node.chat_addr();
    TlsChatClient::login(addr, &first, "kate", "pw");
    let text = node.ctl_ok(&["status"]);
    assert!(
        text.contains(&format!("meshctl chat --tls --fingerprint {first}")),
        "{text}"
    );
}

#[test]
fn a_plain_text_chat_port_has_no_fingerprint() {
    let (node, _addr) = Node::start_chat("");
    let status = node.ctl_json(&["status"]);
    assert!(
        status["roles"]["chat"].get("tls_fingerprint").is_none(),
        "absent, as roles.signaling.hub_key is when there is none: {status}"
    );
}

#[test]
fn the_config_refuses_plain_text_off_loopback_and_half_a_certificate() {
    let (output, path, _dir) = check_config("[chat]\nlisten = \"0.0.0.0:0\"\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2: chat.tls: chat.listen 0.0.0.0:0 is not a loopback address",
            path.display()
        )),
        "{stderr}"
    );
    let (output, _path, _dir) =
        check_config("[chat]\nlisten = \"0.0.0.0:0\"\nallow_plaintext = true\n");
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("allow_plaintext = true"));
    let (output, _path, _dir) = check_config("[chat]\nlisten = \"0.0.0.0:0\"\ntls = true\n");
    assert!(output.status.success(), "{output:?}");
    let (output, path, _dir) =
        check_config("[chat]\ntls = true\ntls_cert = \"/etc/meshd/chat.pem\"\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3: chat.tls_cert: is set without chat.tls_key",
            path.display()
        )),
        "{stderr}"
    );

    // meshd itself refuses the same, naming chat.tls, and binds nothing.
    let log = refused_start("0.0.0.0:0", "", |_| {});
    assert!(log.contains("chat.tls: chat.listen 0.0.0.0:0"), "{log}");
}

#[test]
fn damaged_or_exposed_certificate_files_stop_the_start_naming_them() {
    // meshd's own certificate, damaged.
    let log = refused_start("127.0.0.1:0", "tls = true\n", |node| {
        let state = node.dir().join("state");
        fs::create_dir_all(&state).unwrap();
        fs::write(state.join("chat-cert.pem"), "garbage\n").unwrap();
        fs::write(state.join("chat-key.pem"), "garbage\n").unwrap();
        fs::set_permissions(
            state.join("chat-key.pem"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    });
    assert!(
        log.contains("/state/chat-cert.pem: no PEM CERTIFICATE block")
            && log.contains("delete chat-cert.pem and chat-key.pem"),
        "{log}"
    );

    // The operator's files: a damaged certificate, then a loose key.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &leaf_for_localhost().0);
    fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let files = format!(
        "tls = true\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let log = refused_start("127.0.0.1:0", &files, |_| {});
    assert!(
        log.contains(&format!("{}: not a PEM certificate", cert.display())),
        "{log}"
    );
    let (cert, key) = write_pair(dir.path(), &leaf_for_localhost().0);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let log = refused_start("127.0.0.1:0", &files, |_| {});
    assert!(
        log.contains(&format!("chmod 600 {}", key.display())),
        "{log}"
    );
    let _ = cert;
}

/// A CA certificate and its key.
fn certificate_authority() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshd tests CA");
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// A server certificate for the name localhost, signed by a new CA;
/// (certificate and key, CA certificate).
fn leaf_for_localhost() -> ((rcgen::Certificate, rcgen::KeyPair), rcgen::Certificate) {
    let (ca, issuer) = certificate_authority();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    ((cert, key), ca)
}

/// Writes `chat.pem` and `chat.key` (0600) into `dir`.
fn write_pair(
    dir: &Path,
    (cert, key): &(rcgen::Certificate, rcgen::KeyPair),
) -> (PathBuf, PathBuf) {
    let cert_path = dir.join("chat.pem");
    let key_path = dir.join("chat.key");
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    (cert_path, key_path)
}

#[test]
fn the_operators_own_certificate_is_served_and_meshctl_trusts_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, ca) = leaf_for_localhost();
    let (cert, key) = write_pair(dir.path(), &leaf);
    let (node, addr) = Node::start_chat(&format!(
        "tls = true\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    node.add_user("liam", "pw");
    node.add_user("mia", "pw");
    let expected = fingerprint(leaf.0.der());
    assert_eq!(tls_fingerprint(&node), expected);
    assert!(
        !node.dir().join("state/chat-cert.pem").exists(),
        "no self-signed certificate is made"
    );
    let mut mia = TlsChatClient::login(addr, &expected, "mia", "pw");

    // Without --fingerprint, meshctl checks the chain against the system's
    // roots (here only the test's CA) and the name dialled.
    let roots = dir.path().join("ca.pem");
    fs::write(&roots, ca.pem()).unwrap();
    let roots = roots.display().to_string();
    let by_name = format!("localhost:{}", addr.port());
    let mut terminal = TerminalChat::start_with(&["--tls", &by_name], &[("SSL_CERT_FILE", &roots)]);
    terminal.log_in("liam", "pw");
    mia.expect("JOIN liam");
    terminal.type_line("signed by a CA");
    assert_eq!(mia.line(), "MSG liam signed by a CA");
    terminal.type_line("exit");
    let status = terminal.child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", terminal.screen());

    // The certificate names localhost, not 127.0.0.1.
    let output = meshctl_chat(&["--tls", &addr.to_string()], &[("SSL_CERT_FILE", &roots)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not valid for 127.0.0.1"), "{stderr}");
}
