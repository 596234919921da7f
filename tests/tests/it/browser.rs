//! The live page in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver) with fantoccini. The page must show the devices
//! and their direct link, show a device that starts and one that dies
//! without being reloaded, and let a user log in with the token. The test
//! also writes the screenshot docs/web.md shows (docs/web-console.png).
//!
//! chromium and chromium-driver come from Debian (`.ci/run` installs them);
//! a machine without them fails under CI and says so elsewhere.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use meshd_tests::{Node, NodeOptions};
use serde_json::{Value, json};

use crate::mesh::{device, hub_device, wait_full_mesh};

/// How long the page may take to show a change: it polls every 2 s,
/// devices report links every 2 s, and the issue allows 5 s; the rest is
/// the links' own time to come up on a loaded machine.
const SHOWS_WITHIN: Duration = Duration::from_secs(20);

/// chromedriver on a free loopback port, stopped on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    /// Starts chromedriver, or `None` outside CI when it is not installed.
    fn start() -> Option<Driver> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        let spawned = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!(
                    "NOT RUN: chromedriver is missing ({error}); apt-get install chromium chromium-driver"
                );
                return None;
            }
            Err(error) => {
                panic!("chromedriver is needed under CI (apt-get install chromium-driver): {error}")
            }
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Driver { child, addr })
    }

    /// A headless chromium session with its own empty profile.
    async fn session(&self, profile: &std::path::Path) -> Client {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut capabilities = serde_json::Map::new();
        // As root in a container: no sandbox; on a closed network: none of
        // chromium's own background traffic.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://{}", self.addr))
            .await
            .expect("a chromium session from chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the page may take to show what its hub already serves: one
/// poll interval (2 s) and the drawing, with room to spare (docs/web.md).
const PAGE_FOLLOWS_WITHIN: Duration = Duration::from_secs(5);

/// Waits until the hub's `/api/v1/mesh` at `web` says `device` is
/// `online`, then until the page shows it, which must take at most
/// [`PAGE_FOLLOWS_WITHIN`] more: the page's own part of "within 5 s".
async fn follows(browser: &Client, web: SocketAddr, device: &str, online: bool) {
    let served = tokio::task::block_in_place(|| {
        meshd_tests::wait_until(
            &format!("{device} online={online} served"),
            SHOWS_WITHIN,
            || {
                let view = meshd_tests::http::get(web, "/api/v1/mesh").json();
                view["devices"]
                    .as_array()?
                    .iter()
                    .any(|entry| entry["id"] == device && entry["online"] == online)
                    .then(Instant::now)
            },
        )
    });
    let css = format!(r#"tr[data-device="{device}"][data-online="{online}"]"#);
    shows_within(
        browser,
        &css,
        &format!("{device} online={online}"),
        PAGE_FOLLOWS_WITHIN,
    )
    .await;
    let took = served.elapsed();
    assert!(
        took <= PAGE_FOLLOWS_WITHIN,
        "the page showed {device} online={online} {took:?} after its hub served it"
    );
}

/// Waits until `css` matches an element of the page.
async fn shows(browser: &Client, css: &str, what: &str) {
    shows_within(browser, css, what, SHOWS_WITHIN).await;
}

/// Waits up to `within` until `css` matches an element of the page.
async fn shows_within(browser: &Client, css: &str, what: &str, within: Duration) {
    let found = browser
        .wait()
        .at_most(within)
        .every(Duration::from_millis(100))
        .for_element(Locator::Css(css))
        .await;
    if let Err(error) = found {
        let body = browser
            .execute("return document.body.innerText", Vec::new())
            .await
            .unwrap_or(Value::Null);
        panic!("the page did not show {what} ({css}) within {within:?}: {error}\n{body}");
    }
}

/// The marker set in the page's window: gone if the page was reloaded.
async fn marker(browser: &Client) -> Value {
    browser
        .execute("return window.meshdTestMarker || null", Vec::new())
        .await
        .expect("running a script in the page")
}

#[test]
fn the_live_page_follows_the_mesh_without_a_reload() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let hub = hub_device("hub", "");
    let url = hub.hub_url();
    let a = device("a", std::slice::from_ref(&url));
    wait_full_mesh(&[&hub, &a], Duration::from_secs(20));
    let web = hub.web_addr();
    let page = format!("http://{web}/");
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let browser = driver.session(profile.path()).await;
        browser.goto(&page).await.unwrap();
        shows(
            &browser,
            r#"tr[data-device="hub"][data-online="true"]"#,
            "the hub's own device",
        )
        .await;
        shows(
            &browser,
            r#"tr[data-device="a"][data-online="true"]"#,
            "device a",
        )
        .await;
        shows(
            &browser,
            r#"tr[data-link="a|hub"][data-path="direct"]"#,
            "a's direct link",
        )
        .await;
        browser
            .execute("window.meshdTestMarker = 'same page'", Vec::new())
            .await
            .unwrap();

        // A third device appears, and its links, without a reload.
        let mut b = tokio::task::block_in_place(|| device("b", std::slice::from_ref(&url)));
        follows(&browser, web, "b", true).await;
        shows(
            &browser,
            r#"tr[data-link="a|b"][data-path="direct"]"#,
            "the a-b link",
        )
        .await;
        shows(
            &browser,
            r#"tr[data-link="b|hub"][data-path="direct"]"#,
            "the b-hub link",
        )
        .await;
        assert_eq!(marker(&browser).await, "same page");
        assert_eq!(
            browser
                .execute("return document.body.dataset.state", Vec::new())
                .await
                .unwrap(),
            "live"
        );

        // Killed: offline, its links down, still without a reload.
        tokio::task::block_in_place(|| b.kill9());
        follows(&browser, web, "b", false).await;
        shows(
            &browser,
            r#"tr[data-link="a|b"][data-path="down"]"#,
            "the a-b link down",
        )
        .await;
        // The hub's own side is live, not its last report to itself.
        shows(
            &browser,
            r#"tr[data-link="b|hub"][data-path="down"]"#,
            "the b-hub link down",
        )
        .await;
        assert_eq!(marker(&browser).await, "same page");

        // What docs/web.md shows users.
        let png = browser.screenshot().await.unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{} bytes",
            png.len()
        );
        let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/web-console.png");
        std::fs::write(shot, &png).unwrap();
        browser.close().await.unwrap();
    });
}

#[test]
fn the_page_asks_for_the_token_and_a_login_shows_the_mesh() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let node = Node::start(NodeOptions {
        id: "hub".into(),
        web: "token = \"tok-browser-1\"\n".into(),
        ..NodeOptions::default()
    });
    let page = format!("http://{}/", node.web_addr());
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let browser = driver.session(profile.path()).await;
        browser.goto(&page).await.unwrap();
        let form = browser.form(Locator::Css("form")).await.unwrap();
        form.set_by_name("token", "wrong").await.unwrap();
        form.submit().await.unwrap();
        shows(&browser, r#"input[name="token"]"#, "the login again").await;
        let said = browser
            .execute("return document.body.innerText", Vec::new())
            .await
            .unwrap();
        assert!(
            said.as_str().unwrap_or("").contains("Wrong token"),
            "{said}"
        );
        let form = browser.form(Locator::Css("form")).await.unwrap();
        form.set_by_name("token", "tok-browser-1").await.unwrap();
        form.submit().await.unwrap();
        // The page itself, live: its polls carry the session cookie.
        shows(&browser, r#"body[data-state="live"]"#, "the live page").await;
        assert_eq!(browser.current_url().await.unwrap().as_str(), page);
        browser.close().await.unwrap();
    });
}

/// The 200 devices of the busy mesh: a fleet as an operator might name it.
fn fleet() -> Vec<String> {
    let groups = [
        ("laptop", 40),
        ("web", 30),
        ("db", 12),
        ("cache", 10),
        ("build", 16),
        ("edge", 24),
        ("k8s-node", 48),
        ("nas", 4),
        ("phone", 16),
    ];
    groups
        .iter()
        .flat_map(|&(group, count)| (1..=count).map(move |n| format!("{group}-{n:02}")))
        .collect()
}

/// The path between two devices of the fleet, the same whichever end
/// reports it: phones behind carrier NATs are relayed to edge boxes, and a
/// hash of the pair makes a few more pairs relayed or down.
fn path_of(a: &str, b: &str) -> (&'static str, u64) {
    let (x, y) = if a < b { (a, b) } else { (b, a) };
    let hash = format!("{x}|{y}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, byte| {
            (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
        });
    let roll = hash % 100;
    let phone_to_edge = x.starts_with("edge") && y.starts_with("phone");
    if phone_to_edge || roll < 6 {
        ("relayed", 18_000 + roll * 400)
    } else if roll < 9 {
        ("down", 0)
    } else {
        ("direct", 300 + roll * 45)
    }
}

/// One device of the fleet over its own hub channel: registers, reports
/// every link, then keeps the channel alive until the task is aborted. At
/// most `joining` handshakes run at once: a hub answers 503 beyond 64.
async fn fleet_device(
    hub: SocketAddr,
    id: String,
    index: usize,
    fleet: Vec<String>,
    joining: std::sync::Arc<tokio::sync::Semaphore>,
) {
    let key = meshd_link::StaticKey::generate().expect("a key");
    let addr = format!(
        "10.{}.{}.{}:8082",
        20 + index / 250,
        index % 250,
        10 + index % 7
    );
    let permit = joining.acquire().await.expect("never closed");
    let mut channel = crate::hub_client::HubChannel::open(hub, &id, &key, None)
        .await
        .expect("a channel to the hub");
    let registered = channel.register(&addr, "").await;
    drop(permit);
    assert_eq!(registered["type"], "registered", "{id}: {registered}");
    let mut counts = [0u32; 3];
    let links: Vec<Value> = fleet
        .iter()
        .filter(|peer| **peer != id)
        .map(|peer| {
            let (path, rtt_us) = path_of(&id, peer);
            counts[["direct", "relayed", "down"]
                .iter()
                .position(|p| *p == path)
                .unwrap_or(2)] += 1;
            let up = path != "down";
            json!({"peer": peer, "path": path,
                   "rtt_us": up.then_some(rtt_us), "up_secs": up.then_some(rtt_us / 7)})
        })
        .collect();
    channel
        .send(
            &json!({"type": "links", "direct": counts[0], "relayed": counts[1],
                      "down": counts[2], "links": links}),
        )
        .await;
    // Lists and deltas are read and dropped; a quiet channel pings, as a
    // device does, so the hub never finds it silent.
    let mut nonce = 0;
    loop {
        match channel.next().await {
            Ok(_) => {}
            Err(meshd_link::LinkError::Timeout) => {
                nonce += 1;
                if channel
                    .try_send(&json!({"type": "ping", "nonce": nonce}))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

async fn run_js(browser: &Client, script: &str) -> Value {
    browser
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|error| panic!("running {script}: {error}"))
}

/// Waits until `script` returns `expected`.
async fn until_js(browser: &Client, script: &str, expected: Value, what: &str) {
    let started = Instant::now();
    loop {
        let got = run_js(browser, script).await;
        if got == expected {
            return;
        }
        assert!(
            started.elapsed() < SHOWS_WITHIN,
            "the page did not show {what} within {SHOWS_WITHIN:?}: {script} gave {got}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_page_stays_readable_with_200_devices() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let (_hub, hub_addr) = Node::start_hub("registrations_per_sec = 0\n");
    let web = _hub.web_addr();
    let fleet = fleet();
    assert_eq!(fleet.len(), 200);
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let joining = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        let devices: Vec<(String, tokio::task::JoinHandle<()>)> = fleet
            .iter()
            .enumerate()
            .map(|(index, id)| {
                let task =
                    fleet_device(hub_addr, id.clone(), index, fleet.clone(), joining.clone());
                (id.clone(), tokio::spawn(task))
            })
            .collect();
        let browser = driver.session(profile.path()).await;
        browser.goto(&format!("http://{web}/")).await.unwrap();

        // Every device, and every pair both ends reported.
        let rows = "return document.querySelectorAll('#devices tbody tr[data-device][data-online=\"true\"]').length";
        until_js(&browser, rows, json!(200), "200 devices online").await;
        until_js(
            &browser,
            "return document.getElementById('links-cnt').textContent",
            json!("19,900 reported"),
            "every pair",
        )
        .await;
        // The links table stays a table: its first 2,000 rows, the rest
        // named and left to the filter.
        let link_rows = run_js(&browser, "return document.querySelectorAll('#links tbody tr').length").await;
        assert_eq!(link_rows, json!(2000));
        let note = run_js(&browser, "return document.getElementById('links-note').textContent").await;
        assert_eq!(note, json!("17,900 more not shown (use the filter)"));

        // Nothing spills sideways: the page fits the window, and the whole
        // matrix fits its card with cells of at least 3 px.
        let fits = run_js(
            &browser,
            "const card = document.getElementById('c-matrix').getBoundingClientRect();
             const mx = document.getElementById('mx').getBoundingClientRect();
             return [document.documentElement.scrollWidth <= window.innerWidth,
                     mx.left >= card.left && mx.right <= card.right,
                     Math.floor(mx.width / 200)]",
        )
        .await;
        assert_eq!(fits[0], json!(true), "the page scrolls sideways: {fits}");
        assert_eq!(fits[1], json!(true), "the matrix spills out of its card: {fits}");
        assert!(fits[2].as_u64().unwrap_or(0) >= 3, "matrix cells under 3 px: {fits}");

        // Too many ids for the axes: a cell names its pair when hovered.
        let (a, b) = ("edge-03", "phone-11");
        let (expected_path, _) = path_of(a, b);
        assert_eq!(expected_path, "relayed");
        let hover = format!(
            "const mx = document.getElementById('mx'); const r = mx.getBoundingClientRect();
             const cell = r.width / 200;
             mx.dispatchEvent(new MouseEvent('mousemove', {{bubbles: true,
               clientX: r.left + ({col} + 0.5) * cell, clientY: r.top + ({row} + 0.5) * cell}}));",
            row = sorted_index(&fleet, a),
            col = sorted_index(&fleet, b),
        );
        run_js(&browser, &hover).await;
        until_js(
            &browser,
            "const tip = document.getElementById('tip');
             return tip.style.display === 'block' ? tip.textContent.split(',')[0] : ''",
            json!(format!("{a} ↔ {b}: relayed")),
            "the hovered pair",
        )
        .await;
        run_js(&browser, "document.getElementById('mx').dispatchEvent(new MouseEvent('mouseleave'))").await;

        // Two devices go; the rest stay, all on the same page.
        browser.execute("window.meshdTestMarker = 'same page'", Vec::new()).await.unwrap();
        for (id, task) in &devices {
            if id == "laptop-07" || id == "build-03" {
                task.abort();
            }
        }
        for gone in ["laptop-07", "build-03"] {
            shows(
                &browser,
                &format!(r#"tr[data-device="{gone}"][data-online="false"]"#),
                &format!("{gone} offline"),
            )
            .await;
        }
        until_js(&browser, rows, json!(198), "198 devices online").await;
        assert_eq!(marker(&browser).await, "same page");

        // What docs/web.md shows of a busy mesh.
        // A window tall enough for the devices, the matrix and the links.
        browser.set_window_size(1400, 1820).await.unwrap();
        run_js(&browser, "window.scrollTo(0, 0)").await;
        until_js(
            &browser,
            "return document.getElementById('split').getBoundingClientRect().bottom <= window.innerHeight",
            json!(true),
            "the matrix in the window",
        )
        .await;
        let png = browser.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
        let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/web-console-200.png");
        std::fs::write(shot, &png).unwrap();

        // The filter narrows devices, matrix and links to a group, and the
        // matrix names its axes again.
        let filter = browser.find(Locator::Id("filter")).await.unwrap();
        filter.send_keys("db-").await.unwrap();
        until_js(
            &browser,
            "return Array.from(document.querySelectorAll('#devices tbody tr[data-device]'))
                 .filter((tr) => tr.offsetParent !== null).map((tr) => tr.dataset.device).join(' ')",
            json!((1..=12).map(|n| format!("db-{n:02}")).collect::<Vec<_>>().join(" ")),
            "only the db devices",
        )
        .await;
        until_js(
            &browser,
            "return document.getElementById('mx-cnt').textContent",
            json!("12 × 12"),
            "a 12 by 12 matrix",
        )
        .await;
        assert_eq!(
            run_js(&browser, "return document.getElementById('mx-note').textContent").await,
            json!("")
        );
        browser.close().await.unwrap();
        for (_, task) in devices {
            task.abort();
        }
    });
}

/// Where `id` sits in the matrix, whose axes are sorted by id.
fn sorted_index(fleet: &[String], id: &str) -> usize {
    let mut sorted: Vec<&String> = fleet.iter().collect();
    sorted.sort();
    sorted
        .iter()
        .position(|x| *x == id)
        .expect("an id of the fleet")
}
