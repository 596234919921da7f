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

/// Waits until `css` matches an element of the page.
async fn shows(browser: &Client, css: &str, what: &str) {
    let found = browser
        .wait()
        .at_most(SHOWS_WITHIN)
        .every(Duration::from_millis(100))
        .for_element(Locator::Css(css))
        .await;
    if let Err(error) = found {
        let body = browser
            .execute("return document.body.innerText", Vec::new())
            .await
            .unwrap_or(Value::Null);
        panic!("the page did not show {what} ({css}) within {SHOWS_WITHIN:?}: {error}\n{body}");
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
    let page = format!("http://{}/", hub.web_addr());
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
        shows(
            &browser,
            r#"tr[data-device="b"][data-online="true"]"#,
            "device b",
        )
        .await;
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
        shows(
            &browser,
            r#"tr[data-device="b"][data-online="false"]"#,
            "device b offline",
        )
        .await;
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
