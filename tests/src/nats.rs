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

/// One nats-server.
pub struct NatsServer {
    dir: TempDir,
    addr: SocketAddr,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one; `None` outside CI when nats-server is not installed.
    pub fn start() -> Option<NatsServer> {
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
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        let mut server = NatsServer {
            dir: tempfile::Builder::new()
                .prefix("meshd-nats-")
                .tempdir()
                .expect("a directory for nats-server"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
        };
        server.launch();
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
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
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
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
        while TcpStream::connect(self.addr).is_err() {
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
