//! One meshd process under test, with its own temporary directory.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::binaries::{meshctl_bin, meshd_bin};
use crate::notify::NotifySocket;
use crate::wait::wait_until;

/// How a node is configured and started.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `[node] id`.
    pub id: String,
    /// Extra TOML appended inside `[signaling]`.
    pub signaling: String,
    /// `[signaling] listen`.
    pub signaling_listen: String,
    /// Run the signaling role.
    pub signaling_enabled: bool,
    /// Run the chat role.
    pub chat_enabled: bool,
    /// Extra TOML appended inside `[chat]`.
    pub chat: String,
    /// Run the web console (on a free loopback port unless `web` says
    /// otherwise).
    pub web_enabled: bool,
    /// Extra TOML appended inside `[web]`.
    pub web: String,
    /// Extra TOML appended at the end of the file (own sections).
    pub extra: String,
    /// Extra environment for meshd.
    pub env: Vec<(String, String)>,
    /// `[control] group`; empty keeps the daemon's group.
    pub group: String,
    /// `[control] socket`; defaults to `meshd.sock` in the node's directory.
    pub socket: Option<PathBuf>,
    /// Run meshd as this `user:group` (through setpriv) instead of as the
    /// test's own user; the node's directory is given to that user.
    pub run_as: Option<(String, String)>,
    /// Run the mesh role, registering with these signaling URLs.
    pub mesh: Option<MeshOptions>,
    /// Run meshd inside this network namespace (`ip netns exec`); its
    /// control socket and files stay on the shared file system.
    pub netns: Option<String>,
}

/// The `[mesh]` section of a test node.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// `[mesh] signaling`.
    pub hubs: Vec<String>,
    /// `[mesh] listen`.
    pub listen: String,
    /// Extra TOML inside `[mesh]`.
    pub extra: String,
}

impl MeshOptions {
    /// Registers with `hubs` and listens on a free loopback port.
    pub fn with_hubs(hubs: &[String]) -> Self {
        MeshOptions {
            hubs: hubs.to_vec(),
            listen: "127.0.0.1:0".to_owned(),
            extra: String::new(),
        }
    }
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            id: "hub".to_owned(),
            signaling: String::new(),
            signaling_listen: "127.0.0.1:0".to_owned(),
            signaling_enabled: true,
            chat_enabled: false,
            chat: String::new(),
            web_enabled: true,
            web: String::new(),
            extra: String::new(),
            env: Vec::new(),
            group: String::new(),
            socket: None,
            run_as: None,
            mesh: None,
            netns: None,
        }
    }
}

/// A running meshd.
pub struct Node {
    dir: TempDir,
    child: Option<Child>,
    notify: NotifySocket,
    options: NodeOptions,
}

impl Node {
    /// Starts a node with default options and waits for READY=1.
    pub fn start_default() -> Node {
        Node::start(NodeOptions::default())
    }

    /// Writes the config, starts meshd and waits for READY=1.
    pub fn start(options: NodeOptions) -> Node {
        let mut node = Node::spawn(options);
        node.wait_ready();
        node
    }

    /// A node with the chat role only (extra `[chat]` TOML in `chat`), and
    /// its chat address.
    pub fn start_chat(chat: &str) -> (Node, SocketAddr) {
        let node = Node::start(NodeOptions {
            chat_enabled: true,
            chat: chat.to_owned(),
            signaling_enabled: false,
            ..NodeOptions::default()
        });
        let addr = node.chat_addr();
        (node, addr)
    }

    /// A node with the signaling role only (extra `[signaling]` TOML in
    /// `signaling`), and its signaling address.
    pub fn start_hub(signaling: &str) -> (Node, SocketAddr) {
        let node = Node::start(NodeOptions {
            signaling: signaling.to_owned(),
            ..NodeOptions::default()
        });
        let addr = node.signaling_addr();
        (node, addr)
    }

    /// Writes the config and starts meshd without waiting for anything.
    pub fn spawn(options: NodeOptions) -> Node {
        let mut node = Node::prepare(options);
        node.launch();
        node
    }

    /// Creates the node's directory and config without starting meshd.
    pub fn prepare(options: NodeOptions) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("meshd-test-")
            .tempdir()
            .expect("creating a temp dir");
        // Other users (the authorization tests run meshctl as nobody) must be
        // able to reach the socket inside.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        let notify = NotifySocket::bind(&dir.path().join("notify.sock"));
        if let Some((user, group)) = &options.run_as {
            let uid = nix::unistd::User::from_name(user)
                .expect("user lookup")
                .expect("the run_as user exists")
                .uid;
            let gid = nix::unistd::Group::from_name(group)
                .expect("group lookup")
                .expect("the run_as group exists")
                .gid;
            nix::unistd::chown(dir.path(), Some(uid), Some(gid)).expect("chown the node dir");
        }
        let node = Node {
            dir,
            child: None,
            notify,
            options,
        };
        node.write_config(&node.config_text());
        node
    }

    /// Sets an environment variable for the next launch.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.options.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts (or starts again) the meshd process, without waiting.
    pub fn launch(&mut self) {
        assert!(
            self.child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some()),
            "meshd is already running"
        );
        self.notify.clear();
        // Truncate rather than replace, so the file keeps its inode (tests
        // pass it to meshd as JOURNAL_STREAM).
        let log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.log_path())
            .expect("creating the log file");
        let log_err = log.try_clone().expect("cloning the log file");
        let mut command = match (&self.options.run_as, &self.options.netns) {
            (None, Some(netns)) => {
                // `ip netns exec` execs meshd in place: the pid stays meshd's.
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", netns]).arg(meshd_bin());
                ip
            }
            (None, None) => Command::new(meshd_bin()),
            (Some(_), Some(_)) => panic!("run_as and netns cannot be combined"),
            (Some((user, group)), None) => {
                let meshd = copy_executable(&meshd_bin(), self.dir.path());
                let mut setpriv = Command::new("setpriv");
                setpriv
                    .arg(format!("--reuid={user}"))
                    .arg(format!("--regid={group}"))
                    .args(["--clear-groups", "--"])
                    .arg(meshd);
                setpriv
            }
        };
        command
            .arg("--config")
            .arg(self.config_path())
            .env("NOTIFY_SOCKET", self.notify.path())
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (key, value) in &self.options.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("spawning meshd"));
    }

    /// Starts meshd again after [`Node::stop`] and waits for READY=1.
    pub fn restart(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// The config this node was started with.
    pub fn config_text(&self) -> String {
        let dir = self.dir.path().display();
        let mesh = match &self.options.mesh {
            None => "[mesh]\nenabled = false\n".to_owned(),
            Some(mesh) => {
                let hubs: Vec<String> = mesh.hubs.iter().map(|url| format!("\"{url}\"")).collect();
                format!(
                    "[mesh]\nenabled = true\nlisten = \"{}\"\nsignaling = [{}]\n{}\n",
                    mesh.listen,
                    hubs.join(", "),
                    mesh.extra
                )
            }
        };
        format!(
            "[node]\nid = \"{id}\"\nstate_dir = \"{dir}/state\"\nlog_level = \"debug\"\n\n\
             [control]\nsocket = \"{socket}\"\ngroup = \"{group}\"\n\n\
             [signaling]\nenabled = {sig}\nlisten = \"{signaling_listen}\"\n{signaling}\n\n\
             [chat]\nenabled = {chat_enabled}\nlisten = \"127.0.0.1:0\"\n{chat}\n\n\
             [web]\nenabled = {web_enabled}\n{web_listen}{web}\n\n\
             {mesh}\n{extra}\n",
            id = self.options.id,
            socket = self.socket().display(),
            group = self.options.group,
            sig = self.options.signaling_enabled,
            chat_enabled = self.options.chat_enabled,
            chat = self.options.chat,
            signaling = self.options.signaling,
            signaling_listen = self.options.signaling_listen,
            web_enabled = self.options.web_enabled,
            // A listen line of the test's own replaces the free port.
            web_listen = if self.options.web.contains("listen") {
                ""
            } else {
                "listen = \"127.0.0.1:0\"\n"
            },
            web = self.options.web,
            extra = self.options.extra,
        )
    }

    /// Replaces the config file (for reload tests).
    pub fn write_config(&self, text: &str) {
        fs::write(self.config_path(), text).expect("writing the config");
    }

    /// Waits for READY=1, failing early if meshd exits.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.notify.count("READY=1") == 0 {
            if let Some(status) = self.try_wait() {
                panic!(
                    "meshd exited with {status} before READY=1; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "meshd sent no READY=1 within 15s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The node's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("meshd.toml")
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.options
            .socket
            .clone()
            .unwrap_or_else(|| self.dir.path().join("meshd.sock"))
    }

    /// The file meshd's stdout and stderr go to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("meshd.log")
    }

    /// Everything meshd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// What meshd told the harness's NOTIFY_SOCKET.
    pub fn notify(&self) -> &NotifySocket {
        &self.notify
    }

    /// meshd's pid.
    pub fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("meshd was started");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
    }

    /// Sends a signal to meshd.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signalling meshd");
    }

    /// Stops meshd (SIGSTOP) and returns once every one of its threads is
    /// stopped. `kill` only queues the signal: a thread already running on
    /// another core can still answer a frame or two, which a test about
    /// silence must not see.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        wait_until("every meshd thread stopped", Duration::from_secs(5), || {
            let entries = fs::read_dir(&tasks).ok()?;
            entries
                .flatten()
                .all(|task| thread_is_stopped(&task.path().join("stat")))
                .then_some(())
        });
    }

    /// Exit status, if meshd has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().expect("polling meshd"))
    }

    /// Runs meshctl against this node.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(meshctl_bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running meshctl")
    }

    /// Runs meshctl with `input` on its standard input.
    pub fn ctl_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(meshctl_bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running meshctl");
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, input.as_bytes())
                .expect("writing meshctl's stdin");
        }
        child.wait_with_output().expect("waiting for meshctl")
    }

    /// Adds a chat user with `meshctl users add NAME --password-stdin`.
    pub fn add_user(&self, name: &str, password: &str) {
        let output = self.ctl_with_input(
            &["users", "add", name, "--password-stdin"],
            &format!("{password}\n"),
        );
        assert!(
            output.status.success(),
            "meshctl users add {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The chat server's bound address, from `meshctl status --json`.
    pub fn chat_addr(&self) -> SocketAddr {
        let status = self.ctl_json(&["status"]);
        status["roles"]["chat"]["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("no chat listen address in {status}"))
            .parse()
            .expect("listen address parses")
    }

    /// meshd's resident memory in bytes, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("reading /proc");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .expect("VmRSS in /proc/PID/status")
    }

    /// Runs meshctl and returns its stdout, asserting exit 0.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "meshctl {args:?} failed with {}: {}\nmeshd log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8(output.stdout).expect("meshctl prints UTF-8")
    }

    /// `meshctl --json ARGS` parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ctl_ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("meshctl printed no JSON ({e}): {text}"))
    }

    /// The signaling server's bound address, from `meshctl status --json`.
    pub fn signaling_addr(&self) -> SocketAddr {
        let status = self.ctl_json(&["status"]);
        status["roles"]["signaling"]["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("no signaling listen address in {status}"))
            .parse()
            .expect("listen address parses")
    }

    /// The web console's bound address, from `meshctl status --json`.
    pub fn web_addr(&self) -> SocketAddr {
        let status = self.ctl_json(&["status"]);
        status["roles"]["web"]["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("no web listen address in {status}"))
            .parse()
            .expect("listen address parses")
    }

    /// One series of the web console's `/metrics`, written as in the text
    /// (`meshd_chat_logins_total{result="ok"}`); `None` when absent.
    /// A node in a network namespace is asked from inside it, with bash's
    /// `/dev/tcp` (its loopback is its own).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let web = self.web_addr();
        let Some(netns) = &self.options.netns else {
            let answer = crate::http::get(web, "/metrics");
            assert_eq!(answer.status, 200, "/metrics: {answer:?}");
            return metric_in(&answer.body, series);
        };
        let script = format!(
            "exec 3<>/dev/tcp/{}/{} && printf 'GET /metrics HTTP/1.0\\r\\nHost: {web}\\r\\n\\r\\n' >&3 && cat <&3",
            web.ip(),
            web.port()
        );
        let output = Command::new("ip")
            .args(["netns", "exec", netns, "bash", "-c", &script])
            .output()
            .expect("running ip netns exec");
        let answer = String::from_utf8_lossy(&output.stdout);
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "/metrics in {netns}: {answer:.200} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        metric_in(&answer, series)
    }

    /// The signaling server's URL, for other nodes' `[mesh] signaling`.
    pub fn hub_url(&self) -> String {
        format!("http://{}", self.signaling_addr())
    }

    /// The mesh role's status object from `meshctl status --json`.
    pub fn mesh_status(&self) -> serde_json::Value {
        let status = self.ctl_json(&["status"]);
        let mesh = status["roles"]["mesh"].clone();
        assert!(mesh.is_object(), "no mesh role in {status}");
        mesh
    }

    /// This device's base64 public key.
    pub fn pubkey(&self) -> String {
        self.mesh_status()["pubkey"]
            .as_str()
            .expect("pubkey is a string")
            .to_owned()
    }

    /// The mesh listener's bound address.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.mesh_status()["listen"]
            .as_str()
            .expect("listen is a string")
            .parse()
            .expect("listen address parses")
    }

    /// `meshctl devices --json` as (id, link) pairs, plus the whole list.
    pub fn links(&self) -> Vec<(String, String)> {
        let devices = self.ctl_json(&["devices"]);
        devices
            .as_array()
            .expect("devices is an array")
            .iter()
            .map(|device| {
                (
                    device["id"].as_str().unwrap_or_default().to_owned(),
                    device["link"].as_str().unwrap_or("null").to_owned(),
                )
            })
            .collect()
    }

    /// The link state this node shows for `device`, if it lists it.
    pub fn link_to(&self, device: &str) -> Option<String> {
        self.links()
            .into_iter()
            .find(|(id, _)| id == device)
            .map(|(_, link)| link)
    }

    /// Kills meshd with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        wait_until("meshd to die", Duration::from_secs(5), || self.try_wait());
    }

    /// Sends SIGTERM and requires a clean exit 0 within 5 s; returns how long
    /// it took.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.signal(Signal::SIGTERM);
        let status = wait_until(
            "meshd to exit after SIGTERM",
            Duration::from_secs(5),
            || self.try_wait(),
        );
        assert!(
            status.success(),
            "meshd exited with {status} after SIGTERM; log:\n{}",
            self.log()
        );
        started.elapsed()
    }

    /// Waits for meshd to exit on its own and returns the status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_until("meshd to exit", timeout, || self.try_wait())
    }
}

/// Copies an executable into `dir` with mode 0755, so that another user can
/// run it whatever the permissions of the checkout are.
pub fn copy_executable(source: &Path, dir: &Path) -> PathBuf {
    let name = source.file_name().expect("an executable has a file name");
    let copy = dir.join(name);
    if !copy.exists() {
        fs::copy(source, &copy).expect("copying the executable");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    }
    copy
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            // MESHD_TEST_LOG_TAIL=N shows more when chasing a failure.
            let lines = std::env::var("MESHD_TEST_LOG_TAIL")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(40);
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            eprintln!("---- meshd log tail ({}) ----", self.options.id);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Whether `/proc/PID/task/TID/stat` says the thread is stopped (`T`), or
/// it has gone (nothing left to run).
fn thread_is_stopped(stat: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(stat) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain them.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}

/// The value of `series` in a Prometheus text exposition.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
