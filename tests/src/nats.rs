//! A real nats-server with JetStream for the cluster tests, on a free
//! loopback port, with its storage in a temporary directory. It can be
//! stopped and started again on the same port and storage (NATS going away
//! and coming back), and is killed when its handle drops.
//!
//! Debian's `nats-server` package provides the binary (`.ci/run` installs
//! it). Without it a test is not run, and says so, except under CI, where it
//! fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// What nats-server logs once it accepts clients.
const READY: &str = "Server is ready";

/// One nats-server.
pub struct NatsServer {
    dir: TempDir,
    addr: SocketAddr,
    /// The network namespace it runs in (the NAT lab), if not this one.
    netns: Option<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one; `None` outside CI when nats-server is not installed.
    pub fn start() -> Option<NatsServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        NatsServer::start_at(SocketAddr::from(([127, 0, 0, 1], port)), None)
    }

    /// Starts one on `addr` in network namespace `netns` (a host of the
    /// NAT lab); `None` outside CI when nats-server is not installed.
    pub fn start_in(netns: &str, addr: SocketAddr) -> Option<NatsServer> {
        NatsServer::start_at(addr, Some(netns.to_owned()))
    }

    fn start_at(addr: SocketAddr, netns: Option<String>) -> Option<NatsServer> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("nats-server is needed under CI: apt-get install nats-server");
            }
            eprintln!("NOT RUN: nats-server is missing; apt-get install nats-server");
            return None;
        }
        let mut server = NatsServer {
            dir: tempfile::Builder::new()
                .prefix("meshd-nats-")
                .tempdir()
                .expect("a directory for nats-server"),
            addr,
            netns,
            child: None,
        };
        server.launch();
        Some(server)
    }

    /// `nats://IP:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// Starts the server (again) on its port and storage, and waits until
    /// it accepts connections.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("the nats-server log");
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "nats-server"]);
                command
            }
            None => Command::new("nats-server"),
        };
        // Ready is logged once per start; a relaunch appends to the log.
        let ready_before = self.log().matches(READY).count();
        let child = command
            .args(["-js", "-a"])
            .arg(self.addr.ip().to_string())
            .arg("-p")
            .arg(self.addr.port().to_string())
            .arg("-sd")
            .arg(self.store())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let started = Instant::now();
        let ready = |server: &NatsServer| match server.netns {
            // Its address is not reachable from here.
            Some(_) => server.log().matches(READY).count() > ready_before,
            None => TcpStream::connect(server.addr).is_ok(),
        };
        while !ready(self) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not listen on {} within 10 s:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
            let _ = kill(pid, Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
