//! The web console: `/metrics` counting real events and passing promtool,
//! `/api/v1/mesh` with every device and every pair from the devices' link
//! reports, the token and the page's login, and requests a browser or an
//! attacker might send.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshd_tests::chat::ChatClient;
use meshd_tests::http::{self, HttpResponse};
use meshd_tests::node::metric_in;
use meshd_tests::{Node, NodeOptions, wait_until};
use serde_json::Value;

use crate::mesh::{device, hub_device, wait_full_mesh};

fn scrape(node: &Node) -> String {
    let answer = http::get(node.web_addr(), "/metrics");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    answer.body
}

/// `promtool check metrics` on `text`: the format and the naming rules.
/// promtool comes with Debian's `prometheus`, which `.ci/run` installs; a
/// machine without it fails under CI and says so elsewhere.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("NOT CHECKED: promtool is missing ({error}); apt-get install prometheus");
            return;
        }
        Err(error) => panic!("promtool is needed under CI (apt-get install prometheus): {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the metrics:\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn mesh_json(addr: SocketAddr) -> Value {
    let answer = http::get(addr, "/api/v1/mesh");
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()
}

/// The pairs of `/api/v1/mesh` as (a, b, path).
fn pairs(view: &Value) -> Vec<(String, String, String)> {
    view["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|link| {
            (
                link["a"].as_str().unwrap().to_owned(),
                link["b"].as_str().unwrap().to_owned(),
                link["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn online(view: &Value, id: &str) -> Option<bool> {
    view["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|device| device["id"] == id)
        .map(|device| device["online"].as_bool().unwrap())
}

#[test]
fn metrics_count_what_happened_and_pass_promtool() {
    let hub = Node::start(NodeOptions {
        id: "hub".into(),
        chat_enabled: true,
        ..NodeOptions::default()
    });
    let url = hub.hub_url();
    let a = device("a", std::slice::from_ref(&url));
    let b = device("b", std::slice::from_ref(&url));
    wait_full_mesh(&[&a, &b], Duration::from_secs(20));
    for n in 0..3 {
        a.ctl_ok(&["send", "b", &format!("hello {n}")]);
    }
    hub.add_user("alice", "s3cret-pw");
    let chat = hub.chat_addr();
    let mut alice = ChatClient::login(chat, "alice", "s3cret-pw");
    let mut guess = ChatClient::connect(chat);
    guess.send("AUTH alice wrong");
    assert!(guess.line().starts_with("ERR auth"));
    alice.send("hi room");
    let mut bob = ChatClient::login(chat, "alice", "s3cret-pw");
    alice.send("second");
    bob.expect("MSG alice second");

    let sent = scrape(&a);
    promtool_check(&sent);
    assert_eq!(
        metric_in(&sent, "meshd_messages_sent_total"),
        Some(3.0),
        "{sent}"
    );
    assert_eq!(
        metric_in(&sent, "meshd_links{path=\"direct\"}"),
        Some(1.0),
        "{sent}"
    );
    assert_eq!(
        metric_in(&sent, "meshd_links{path=\"relayed\"}"),
        Some(0.0),
        "{sent}"
    );
    let out = metric_in(
        &sent,
        "meshd_link_bytes_total{path=\"direct\",direction=\"out\"}",
    );
    assert!(out.is_some_and(|bytes| bytes > 30.0), "{sent}");
    assert!(metric_in(&sent, "meshd_handshake_duration_seconds_count").is_some());
    assert!(
        metric_in(&sent, "process_resident_memory_bytes").is_some_and(|rss| rss > 1e6),
        "{sent}"
    );
    assert!(
        metric_in(&sent, "process_open_fds").is_some_and(|fds| fds >= 5.0),
        "{sent}"
    );
    assert!(sent.contains("meshd_build_info{version=\""), "{sent}");
    // A direct link has been made, so its time was measured (again if a
    // simultaneous dial's tie-break closed the first one).
    assert!(
        metric_in(&sent, "meshd_time_to_direct_seconds_count").is_some_and(|n| n >= 1.0),
        "{sent}"
    );

    // Handshakes that fail are counted by why: a connection closed before
    // a word (a dial race's loser, a port scan) apart from garbage.
    let mesh_port: SocketAddr = b.mesh_status()["listen"].as_str().unwrap().parse().unwrap();
    let failures = |reason: &str| {
        b.metric(&format!(
            "meshd_handshake_failures_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or_else(|| panic!("no {reason} series"))
    };
    let (protocol, abandoned) = (failures("protocol"), failures("abandoned"));
    drop(std::net::TcpStream::connect(mesh_port).unwrap());
    // At least: a late dial of the mesh itself may add one of its own.
    wait_until(
        "an abandoned handshake counted",
        Duration::from_secs(10),
        || (failures("abandoned") >= abandoned + 1.0).then_some(()),
    );
    let mut garbage = std::net::TcpStream::connect(mesh_port).unwrap();
    garbage.write_all(&[0x5a; 300]).unwrap();
    let _ = std::io::Read::read_to_end(&mut garbage, &mut Vec::new());
    wait_until(
        "a garbage handshake counted",
        Duration::from_secs(10),
        || (failures("protocol") == protocol + 1.0).then_some(()),
    );

    let received = scrape(&b);
    assert_eq!(
        metric_in(&received, "meshd_messages_received_total"),
        Some(3.0),
        "{received}"
    );
    // a's link shows in b's bytes in.
    let bytes_in = metric_in(
        &received,
        "meshd_link_bytes_total{path=\"direct\",direction=\"in\"}",
    );
    assert!(bytes_in.is_some_and(|bytes| bytes > 30.0), "{received}");

    let on_hub = scrape(&hub);
    promtool_check(&on_hub);
    assert_eq!(
        metric_in(&on_hub, "meshd_hub_devices"),
        Some(2.0),
        "{on_hub}"
    );
    assert_eq!(
        metric_in(&on_hub, "meshd_hub_channels"),
        Some(2.0),
        "{on_hub}"
    );
    assert_eq!(
        metric_in(&on_hub, "meshd_hub_relays"),
        Some(0.0),
        "{on_hub}"
    );
    assert!(metric_in(&on_hub, "meshd_hub_registrations_total").is_some_and(|n| n >= 2.0));
    assert_eq!(
        metric_in(&on_hub, "meshd_chat_clients"),
        Some(2.0),
        "{on_hub}"
    );
    assert_eq!(
        metric_in(&on_hub, "meshd_chat_messages_total"),
        Some(2.0),
        "{on_hub}"
    );
    assert_eq!(
        metric_in(&on_hub, "meshd_chat_logins_total{result=\"ok\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric_in(&on_hub, "meshd_chat_logins_total{result=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_in(&on_hub, "meshd_chat_slow_consumers_total"),
        Some(0.0)
    );
    // bob read alice's second line: one fan-out delay measured at least.
    assert!(
        metric_in(&on_hub, "meshd_chat_fanout_delay_seconds_count").is_some_and(|n| n >= 1.0),
        "{on_hub}"
    );

    // Prometheus asks for OpenMetrics, and gets it.
    let open = http::request(
        hub.web_addr(),
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
        b"",
    );
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    assert!(open.body.contains("# TYPE meshd_chat_messages counter"));
}

#[test]
fn the_hub_shows_every_pair_from_the_devices_reports_and_a_killed_device_goes_offline() {
    let hub = hub_device("hub", "");
    let url = hub.hub_url();
    let a = device("a", std::slice::from_ref(&url));
    let mut b = device("b", std::slice::from_ref(&url));
    wait_full_mesh(&[&hub, &a, &b], Duration::from_secs(20));
    let web = hub.web_addr();
    let expected = [("a", "b"), ("a", "hub"), ("b", "hub")];
    let view = wait_until(
        "every pair reported direct",
        Duration::from_secs(10),
        || {
            let view = mesh_json(web);
            let pairs = pairs(&view);
            expected
                .iter()
                .all(|(x, y)| {
                    pairs
                        .iter()
                        .any(|p| p.0 == *x && p.1 == *y && p.2 == "direct")
                })
                .then_some(view)
        },
    );
    assert_eq!(view["view"], "hub");
    assert_eq!(view["node"], "hub");
    assert_eq!(pairs(&view).len(), 3, "each pair once: {view}");
    let a_entry = view["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|device| device["id"] == "a")
        .unwrap()
        .clone();
    assert_eq!(a_entry["online"], true);
    assert_eq!(a_entry["is_self"], false);
    assert_eq!(a_entry["direct"], 2, "a's own count: {a_entry}");
    assert_eq!(a_entry["hubs"][0], url.as_str());
    assert!(!a_entry["last_seen"].as_str().unwrap().is_empty());
    assert!(
        a_entry["endpoints"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    let rtt = view["links"][0]["rtt_ms"].as_f64();
    assert!(rtt.is_some_and(|rtt| rtt > 0.0 && rtt < 1000.0), "{view}");
    assert!(view["links"][0]["since"].as_str().is_some(), "{view}");

    // kill -9: its channel closes at once, so the hub shows it offline at
    // once; its peers report the pairs down within a report or two.
    b.kill9();
    let view = wait_until("b offline", Duration::from_secs(5), || {
        let view = mesh_json(web);
        (online(&view, "b") == Some(false)).then_some(view)
    });
    assert_eq!(online(&view, "a"), Some(true));
    wait_until("a-b reported down", Duration::from_secs(10), || {
        let pairs = pairs(&mesh_json(web));
        pairs
            .iter()
            .any(|p| p.0 == "a" && p.1 == "b" && p.2 == "down")
            .then_some(())
    });
}

#[test]
fn a_device_that_is_not_a_hub_shows_its_own_view() {
    let hub = hub_device("hub", "");
    let a = device("a", &[hub.hub_url()]);
    wait_full_mesh(&[&hub, &a], Duration::from_secs(20));
    let view = wait_until("a's link in its view", Duration::from_secs(10), || {
        let view = mesh_json(a.web_addr());
        (pairs(&view) == [("a".into(), "hub".into(), "direct".into())]).then_some(view)
    });
    assert_eq!(view["view"], "device");
    let me = view["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|device| device["id"] == "a")
        .unwrap();
    assert_eq!(me["is_self"], true);
    assert_eq!(me["direct"], 1);
    assert_eq!(me["hubs"][0], hub.hub_url().as_str());
    // The page itself is served, whole and self-contained.
    let page = http::get(a.web_addr(), "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("api/v1/mesh"), "the page polls the API");
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
}

fn tokened(token: &str) -> Node {
    Node::start(NodeOptions {
        id: "hub".into(),
        web: format!("token = \"{token}\"\n"),
        ..NodeOptions::default()
    })
}

fn cookie_of(answer: &HttpResponse) -> String {
    let set = answer
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {answer:?}"));
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    set.split(';').next().unwrap().to_owned()
}

#[test]
fn with_a_token_every_request_needs_it_or_the_pages_login() {
    let mut node = tokened("tok-7a1b9c");
    let web = node.web_addr();
    let status = node.ctl_json(&["status"]);
    assert_eq!(status["roles"]["web"]["token_required"], true, "{status}");
    assert!(node.ctl_ok(&["status"]).contains(&format!(
        "web:       console on http://{web}/ (token required)"
    )));

    for path in ["/api/v1/mesh", "/metrics"] {
        let refused = http::get(web, path);
        assert_eq!(refused.status, 401, "{path}: {refused:?}");
        assert_eq!(
            refused.header("www-authenticate"),
            Some("Bearer realm=\"meshd\"")
        );
        assert!(
            refused.body.contains("Authorization: Bearer"),
            "{refused:?}"
        );
        let wrong = http::request(
            web,
            "GET",
            path,
            &[("Authorization", "Bearer tok-7a1b9")],
            b"",
        );
        assert_eq!(wrong.status, 401, "{path}");
        let right = http::request(
            web,
            "GET",
            path,
            &[("Authorization", "Bearer tok-7a1b9c")],
            b"",
        );
        assert_eq!(right.status, 200, "{path}: {right:?}");
    }
    // The page asks for the token; a wrong one is said so, a right one
    // gives a session.
    let page = http::get(web, "/");
    assert_eq!(page.status, 401);
    assert!(page.body.contains("name=\"token\""), "{}", page.body);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let wrong = http::request(web, "POST", "/login", &form, b"token=nope");
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong token."), "{}", wrong.body);
    assert!(wrong.header("set-cookie").is_none());
    let right = http::request(web, "POST", "/login", &form, b"token=tok-7a1b9c");
    assert_eq!(right.status, 303, "{right:?}");
    assert_eq!(right.header("location"), Some("./"));
    let cookie = cookie_of(&right);
    for path in ["/", "/api/v1/mesh", "/metrics"] {
        let with = http::request(web, "GET", path, &[("Cookie", &cookie)], b"");
        assert_eq!(with.status, 200, "{path} with the session: {with:?}");
    }
    // A percent-encoded token is decoded like a browser sends it.
    let encoded = http::request(web, "POST", "/login", &form, b"token=tok%2D7a1b9c");
    assert_eq!(encoded.status, 303);

    // A new token on reload ends the old sessions and the old token.
    let config = node.config_text().replace("tok-7a1b9c", "tok-new-2");
    node.write_config(&config);
    let reload = node.ctl_json(&["reload"]);
    assert!(
        reload["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|key| key == "web.token"),
        "{reload}"
    );
    let stale = http::request(web, "GET", "/api/v1/mesh", &[("Cookie", &cookie)], b"");
    assert_eq!(stale.status, 401, "the old session ended");
    let old = http::request(
        web,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer tok-7a1b9c")],
        b"",
    );
    assert_eq!(old.status, 401);
    let new = http::request(
        web,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer tok-new-2")],
        b"",
    );
    assert_eq!(new.status, 200);
    node.stop();
}

#[test]
fn guessing_the_token_through_the_login_is_slowed() {
    let node = tokened("tok-guess-me");
    let web = node.web_addr();
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let statuses: Vec<u16> = (0..30)
        .map(|n| {
            http::request(
                web,
                "POST",
                "/login",
                &form,
                format!("token=g{n}").as_bytes(),
            )
            .status
        })
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 10,
        "{statuses:?}"
    );
    // Another client address is not held off by this one's guessing: the
    // right token from 127.0.0.2 logs in at once.
    let elsewhere = crate::hub_client::runtime()
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind("127.0.0.2:0".parse().unwrap())?;
            socket.connect(web).await?.into_std()
        })
        .unwrap();
    elsewhere.set_nonblocking(false).unwrap();
    let login = http::request_bytes(web, "POST", "/login", &form, b"token=tok-guess-me");
    let from_elsewhere = http::over(elsewhere, &login);
    assert_eq!(from_elsewhere.status, 303, "{from_elsewhere:?}");
    // The bearer header is not slowed by the login's guesses.
    let bearer = http::request(
        web,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer tok-guess-me")],
        b"",
    );
    assert_eq!(bearer.status, 200);
}

#[test]
fn a_console_beyond_loopback_without_a_token_is_refused_naming_web_token() {
    let mut node = Node::prepare(NodeOptions {
        web: "listen = \"0.0.0.0:0\"\n".into(),
        ..NodeOptions::default()
    });
    node.launch();
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", node.log());
    let log = node.log();
    assert!(
        log.contains("web.token: web.listen 0.0.0.0:0 is not a loopback address"),
        "{log}"
    );
    assert!(log.contains("set token ="), "{log}");
    assert_eq!(node.notify().count("READY=1"), 0);
    // With a token it starts, and says so.
    let node = Node::start(NodeOptions {
        web: "listen = \"0.0.0.0:0\"\ntoken = \"t0k\"\n".into(),
        ..NodeOptions::default()
    });
    let web = node.web_addr();
    let local: SocketAddr = format!("127.0.0.1:{}", web.port()).parse().unwrap();
    assert_eq!(http::get(local, "/metrics").status, 401);
}

#[test]
fn without_a_token_a_foreign_host_name_is_refused() {
    let node = Node::start_default();
    let web = node.web_addr();
    // A page on evil.example whose name now resolves to 127.0.0.1 (DNS
    // rebinding) sends its own name.
    let raw = |host: &str| {
        http::raw(
            web,
            format!("GET /api/v1/mesh HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    let foreign = raw("evil.example:8083");
    assert_eq!(foreign.status, 403, "{foreign:?}");
    assert!(foreign.body.contains("Host header"), "{foreign:?}");
    assert_eq!(raw(&format!("localhost:{}", web.port())).status, 200);
    assert_eq!(raw(&web.to_string()).status, 200);
}

#[test]
fn malformed_and_oversized_requests_get_clear_answers() {
    let node = tokened("tok-h");
    let web = node.web_addr();
    let auth = [("Authorization", "Bearer tok-h")];
    assert_eq!(http::request(web, "GET", "/nope", &auth, b"").status, 404);
    let post = http::request(web, "POST", "/metrics", &auth, b"x");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = http::request(web, "HEAD", "/api/v1/mesh", &auth, b"");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let big = "a".repeat(20 * 1024);
    let huge = http::request(web, "GET", "/metrics", &[("X-Filler", &big)], b"");
    assert!(matches!(huge.status, 431 | 400), "{huge:?}");
    let body = format!("token={}", "b".repeat(8 * 1024));
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let long = http::request(web, "POST", "/login", &form, body.as_bytes());
    assert_eq!(long.status, 413, "{long:?}");
    // A JSON body, a form without the field, a token in the query string:
    // wrong token, nothing more.
    for (headers, body) in [
        (
            &[("Content-Type", "application/json")][..],
            &br#"{"token":"tok-h"}"#[..],
        ),
        (&form[..], b"password=tok-h"),
        (&form[..], b"\xff\xfe=\xff"),
    ] {
        let answer = http::request(web, "POST", "/login", headers, body);
        assert_eq!(answer.status, 401, "{answer:?}");
    }
    // Still serving.
    assert_eq!(
        http::request(web, "GET", "/metrics", &auth, b"").status,
        200
    );
}

#[test]
fn the_web_console_can_be_switched_off() {
    let node = Node::start(NodeOptions {
        web_enabled: false,
        ..NodeOptions::default()
    });
    let status = node.ctl_json(&["status"]);
    assert!(status["roles"].get("web").is_none(), "{status}");
    assert!(!node.ctl_ok(&["status"]).contains("web:"));
}

#[test]
fn a_port_in_use_stops_the_start_naming_the_web_role() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut node = Node::prepare(NodeOptions {
        web: format!("listen = \"127.0.0.1:{port}\"\n"),
        ..NodeOptions::default()
    });
    node.launch();
    assert_eq!(node.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let log = node.log();
    assert!(
        log.contains(&format!("binding web listener on 127.0.0.1:{port}"))
            && log.contains("another process holds that port"),
        "{log}"
    );
}

/// The first fenced block of `lang` after `heading` in a doc.
fn doc_block(doc: &str, heading: &str, lang: &str) -> String {
    let path = format!("{}/../docs/{doc}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let after = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("{heading} not in {path}"))
        .1;
    let block = after
        .split_once(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no {lang} block after {heading} in {path}"))
        .1;
    block.split_once("```").unwrap().0.to_owned()
}

#[test]
fn the_documented_alerts_and_scrape_config_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    for (doc, heading, check) in [
        ("metrics.md", "## Example alerts", "rules"),
        ("web.md", "Prometheus with a token:", "config"),
    ] {
        let file = dir.path().join(format!("{check}.yml"));
        std::fs::write(&file, doc_block(doc, heading, "yaml")).unwrap();
        let output = match Command::new("promtool")
            .arg("check")
            .arg(check)
            .arg(&file)
            .output()
        {
            Ok(output) => output,
            Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("NOT CHECKED: promtool is missing ({error})");
                return;
            }
            Err(error) => panic!("promtool is needed under CI: {error}"),
        };
        assert!(
            output.status.success(),
            "promtool check {check} on the block in docs/{doc}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn link_reports_too_early_or_of_the_wrong_shape_are_not_taken() {
    use crate::hub_client::{HubChannel, runtime};
    use serde_json::json;
    let (hub, addr) = Node::start_hub("");
    let web = hub.web_addr();
    let pairs_now = || pairs(&mesh_json(web));
    let report = |links: Value| json!({"type": "links", "direct": 1, "relayed": 0, "down": 0, "links": links});
    runtime().block_on(async {
        let key = meshd_link::StaticKey::generate().unwrap();
        let mut x = HubChannel::open(addr, "x", &key, None).await.unwrap();
        // Before the channel registered: nothing to show it beside.
        x.send(&report(json!([{"peer": "y", "path": "direct", "rtt_us": 1, "up_secs": 1}])))
            .await;
        let registered = x.register("192.0.2.9:1", "").await;
        assert_eq!(registered["type"], "registered", "{registered}");
        assert!(pairs_now().is_empty(), "an early report was taken");

        // Itself, an invalid id and a repeated peer are dropped; the rest is
        // taken, in order with the ping after it.
        x.send(&report(json!([
            {"peer": "y", "path": "direct", "rtt_us": 1500, "up_secs": 7},
            {"peer": "x", "path": "direct", "rtt_us": 1, "up_secs": 1},
            {"peer": "not an id!", "path": "direct", "rtt_us": 1, "up_secs": 1},
            {"peer": "y", "path": "relayed", "rtt_us": 9, "up_secs": 1},
        ])))
        .await;
        x.send(&json!({"type": "ping", "nonce": 7})).await;
        loop {
            let message = x.next().await.unwrap();
            if message["type"] == "pong" {
                break;
            }
        }
        let view = mesh_json(web);
        assert_eq!(pairs(&view), [("x".into(), "y".into(), "direct".into())], "{view}");
        assert_eq!(view["links"][0]["rtt_ms"], 1.5, "{view}");
        let device_x = &view["devices"].as_array().unwrap()[0];
        assert_eq!((device_x["id"].as_str(), device_x["direct"].as_u64()), (Some("x"), Some(1)));

        // A report of another shape closes that channel, and only that one.
        let other = meshd_link::StaticKey::generate().unwrap();
        let mut z = HubChannel::open(addr, "z", &other, None).await.unwrap();
        z.register("192.0.2.9:2", "").await;
        for wrong in [
            json!({"type": "links", "direct": "1", "relayed": 0, "down": 0, "links": []}),
            json!({"type": "links", "direct": 1, "relayed": 0, "down": 0, "links": {"y": "direct"}}),
            json!({"type": "links", "direct": 1, "relayed": 0, "down": 0, "links": [{"peer": "y", "path": "sideways", "rtt_us": null, "up_secs": null}]}),
        ] {
            let mut z2 = HubChannel::open(addr, "z", &other, None).await.unwrap();
            z2.register("192.0.2.9:2", "").await;
            z2.send(&wrong).await;
            let closed = loop {
                match z2.next().await {
                    Ok(_) => continue,
                    Err(error) => break error,
                }
            };
            assert!(
                !matches!(closed, meshd_link::LinkError::Timeout),
                "{wrong}: the hub did not close the channel"
            );
        }
        drop(z);
        x.send(&json!({"type": "ping", "nonce": 8})).await;
        loop {
            if x.next().await.unwrap()["type"] == "pong" {
                break;
            }
        }
        assert_eq!(pairs_now().len(), 1, "x's report stands");

        // Its channel gone, the report goes with it.
        drop(x);
    });
    wait_until("x's report forgotten", Duration::from_secs(10), || {
        pairs_now().is_empty().then_some(())
    });
    let view = mesh_json(web);
    assert_eq!(online(&view, "x"), Some(false), "{view}");
}

#[test]
fn a_hubs_own_links_are_shown_live_not_as_a_peer_reports_them() {
    use crate::hub_client::{HubChannel, runtime};
    use serde_json::json;
    // A hub that is also a device, and a device spoken by hand whose
    // listed address refuses connections: the hub's own link to it is down
    // whatever the device claims.
    let hub = hub_device("hub", "");
    let addr = hub.signaling_addr();
    let web = hub.web_addr();
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_at = refusing.local_addr().unwrap().to_string();
    drop(refusing);
    let path_of_x = |view: &Value| {
        pairs(view)
            .into_iter()
            .find(|(a, b, _)| (a.as_str(), b.as_str()) == ("hub", "x"))
            .map(|(_, _, path)| path)
    };
    runtime().block_on(async {
        let key = meshd_link::StaticKey::generate().unwrap();
        let mut x = HubChannel::open(addr, "x", &key, None).await.unwrap();
        let registered = x.register(&refused_at, "").await;
        assert_eq!(registered["type"], "registered", "{registered}");
        // x's claim, each time just before the view is read, so it is the
        // freshest report of the pair: the hub's own side must still win.
        let mut claim = async |nonce: u64| {
            x.send(
                &json!({"type": "links", "direct": 1, "relayed": 0, "down": 0,
                "links": [{"peer": "hub", "path": "direct", "rtt_us": 900, "up_secs": 3}]}),
            )
            .await;
            x.send(&json!({"type": "ping", "nonce": nonce})).await;
            while x.next().await.unwrap()["type"] != "pong" {}
            mesh_json(web)
        };
        let mut nonce = 0;
        let started = std::time::Instant::now();
        loop {
            nonce += 1;
            let view = claim(nonce).await;
            if path_of_x(&view).as_deref() == Some("down") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the hub never showed its own link to x as down: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for _ in 0..10 {
            nonce += 1;
            let view = claim(nonce).await;
            assert_eq!(path_of_x(&view).as_deref(), Some("down"), "{view}");
            let me = view["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|device| device["id"] == "hub")
                .unwrap();
            assert_eq!(me["direct"], 0, "the hub's own counts: {view}");
        }
    });
}

#[test]
fn a_reload_cannot_open_a_console_beyond_loopback_by_dropping_its_token() {
    let port = crate::mesh::free_port();
    let mut node = Node::start(NodeOptions {
        id: "hub".into(),
        web: format!("listen = \"0.0.0.0:{port}\"\ntoken = \"tok-wide-1\"\n"),
        ..NodeOptions::default()
    });
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(http::get(web, "/metrics").status, 401);
    // Valid on its own (a loopback console needs no token), but the
    // listener stays on 0.0.0.0 until a restart: the reload is refused.
    let config = node
        .config_text()
        .replace(&format!("0.0.0.0:{port}"), "127.0.0.1:0")
        .replace("token = \"tok-wide-1\"", "");
    node.write_config(&config);
    let refused = node.ctl(&["reload"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("web.token") && said.contains(&format!("0.0.0.0:{port}")),
        "{said}"
    );
    assert_eq!(
        http::get(web, "/metrics").status,
        401,
        "the token still holds"
    );
    let with = http::request(
        web,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer tok-wide-1")],
        b"",
    );
    assert_eq!(with.status, 200);
    // A restart applies the new listen address, and with it no token.
    node.stop();
    node.restart();
    let local = node.web_addr();
    assert!(local.ip().is_loopback(), "{local}");
    assert_eq!(http::get(local, "/metrics").status, 200);
    node.stop();
}
