//! The meshd processes of a soak: one hub and N devices, each with its own
//! directory, config, state directory, control socket and log files, on
//! fixed loopback addresses so that a restarted process comes back where it
//! was. Every start is a new *generation* with its own log file, so that
//! what a process logged and received is known per process.

use std::fs;
use std::io::{BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use meshd_ipc::{
    DeviceEntry, LinkState, PROTOCOL_VERSION, Reply, ReplyFrame, Request, RequestFrame, Response,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::{Clock, lock};

/// The hub's signaling port on 127.0.0.1.
pub const HUB_PORT: u16 = 7100;
/// The hub's chat port on 127.0.0.1.
pub const CHAT_PORT: u16 = 7101;
/// Device `i` (from 1) listens on 127.0.1.`i`, port `DEVICE_PORT_BASE + i`.
const DEVICE_PORT_BASE: u16 = 7110;
/// Device `i` runs as uid and gid `DEVICE_UID_BASE + i`, so that a path cut
/// can match its packets by owner, whatever port they leave from.
const DEVICE_UID_BASE: u32 = 61_000;
/// How long a start may take until the control socket answers.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long meshd may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The release binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// meshd.
    pub meshd: PathBuf,
    /// meshctl.
    pub meshctl: PathBuf,
}

impl Bins {
    /// `meshctl --socket SOCKET` ready for more arguments, in a process
    /// group of its own (a Ctrl-C at the terminal is the driver's to handle).
    pub fn meshctl(&self, socket: &Path) -> Command {
        let mut command = Command::new(&self.meshctl);
        command.arg("--socket").arg(socket).process_group(0);
        command
    }
}

/// What a process is doing, as the driver made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not running: killed, stopped, or not started yet.
    Down,
    /// Started; its control socket has not answered yet.
    Starting,
    /// Running and answering.
    Running,
    /// Frozen with SIGSTOP.
    Stopped,
    /// SIGTERM sent; not exited yet.
    Stopping,
}

/// How a generation ended.
#[derive(Debug, Clone)]
pub enum End {
    /// SIGKILL by a fault.
    Killed,
    /// Exited after SIGTERM, with this status.
    Terminated(ExitStatus),
    /// Did not exit within [`STOP_TIMEOUT`] of SIGTERM; killed.
    TermTimeout,
    /// Exited on its own while it should have been running.
    Crashed(ExitStatus),
    /// Never became ready.
    FailedStart(String),
}

impl End {
    /// How it ended, in a few words.
    pub fn describe(&self) -> String {
        match self {
            End::Killed => "killed".to_owned(),
            End::Terminated(status) => format!("SIGTERM, {status}"),
            End::TermTimeout => "no exit after SIGTERM".to_owned(),
            End::Crashed(status) => format!("crashed, {status}"),
            End::FailedStart(why) => format!("failed to start: {why}"),
        }
    }
}

/// One start of a process.
#[derive(Debug, Clone)]
pub struct Generation {
    /// 1 for the first start.
    pub number: u32,
    /// When it was started (run seconds).
    pub started: f64,
    /// When its control socket first answered.
    pub ready: Option<f64>,
    /// When and how it ended.
    pub ended: Option<(f64, End)>,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

/// A consistent view of a node at one moment.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Its state.
    pub state: State,
    /// Changes with every state change: a probe that saw two different
    /// epochs straddled one.
    pub epoch: u64,
    /// The current (or last) generation's number; 0 before the first start.
    pub generation: u32,
    /// The current generation's pid while it has one.
    pub pid: Option<u32>,
}

struct Proc {
    child: Option<Child>,
    state: State,
    epoch: u64,
    generations: Vec<Generation>,
}

/// One meshd of the soak.
pub struct Node {
    /// `hub`, `d1`, `d2`, ...
    pub name: String,
    /// Its directory (config, state, socket).
    pub dir: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Where its log files go (one per generation).
    pub log_dir: PathBuf,
    /// Its mesh address (devices only).
    pub ip: Ipv4Addr,
    /// The uid and gid it runs as (devices only; the hub runs as root).
    pub uid: Option<u32>,
    /// Set while its caches are being filled (see `fill.rs`): no traffic is
    /// sent to it meanwhile.
    pub filling: AtomicBool,
    proc_: Mutex<Proc>,
}

impl Node {
    /// Creates the hub's directory and config under `work`.
    pub fn hub(work: &Path) -> Result<Node, String> {
        let dir = work.join("hub");
        let node = Node::new("hub", dir, work, Ipv4Addr::LOCALHOST, None)?;
        let config = format!(
            "# the soak's hub: signaling and chat, no mesh\n\
             [node]\nid = \"hub\"\nstate_dir = \"{state}\"\nlog_level = \"info\"\n\n\
             [control]\nsocket = \"{socket}\"\ngroup = \"\"\n\n\
             [signaling]\nenabled = true\nlisten = \"127.0.0.1:{HUB_PORT}\"\ndevice_ttl = \"10s\"\n\n\
             [chat]\nenabled = true\nlisten = \"127.0.0.1:{CHAT_PORT}\"\n\n[web]\nenabled = false\n\n\
             [mesh]\nenabled = false\n",
            state = node.dir.join("state").display(),
            socket = node.socket.display(),
        );
        fs::write(&node.config, config)
            .map_err(|e| format!("writing {}: {e}", node.config.display()))?;
        Ok(node)
    }

    /// Creates device `index`'s (from 1) directory and config under `work`.
    pub fn device(work: &Path, index: u8) -> Result<Node, String> {
        let name = format!("d{index}");
        let dir = work.join(&name);
        let ip = Ipv4Addr::new(127, 0, 1, index);
        let port = DEVICE_PORT_BASE + u16::from(index);
        let uid = DEVICE_UID_BASE + u32::from(index);
        let node = Node::new(&name, dir, work, ip, Some(uid))?;
        let config = format!(
            "# a soak device: mesh only, registered with the soak's hub\n\
             [node]\nid = \"{name}\"\nstate_dir = \"{state}\"\nlog_level = \"info\"\n\n\
             [control]\nsocket = \"{socket}\"\ngroup = \"\"\n\n\
             [signaling]\nenabled = false\n\n[chat]\nenabled = false\n\n[web]\nenabled = false\n\n\
             [mesh]\nenabled = true\nlisten = \"{ip}:{port}\"\nsignaling = [\"http://127.0.0.1:{HUB_PORT}\"]\n",
            state = node.dir.join("state").display(),
            socket = node.socket.display(),
        );
        fs::write(&node.config, config)
            .map_err(|e| format!("writing {}: {e}", node.config.display()))?;
        nix::unistd::chown(
            &node.dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(uid)),
        )
        .map_err(|e| format!("chown {}: {e}", node.dir.display()))?;
        Ok(node)
    }

    fn new(
        name: &str,
        dir: PathBuf,
        work: &Path,
        ip: Ipv4Addr,
        uid: Option<u32>,
    ) -> Result<Node, String> {
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        Ok(Node {
            name: name.to_owned(),
            socket: dir.join("meshd.sock"),
            config: dir.join("meshd.toml"),
            log_dir: work.join("logs"),
            dir,
            ip,
            uid,
            filling: AtomicBool::new(false),
            proc_: Mutex::new(Proc {
                child: None,
                state: State::Down,
                epoch: 0,
                generations: Vec::new(),
            }),
        })
    }

    /// The node's state now.
    pub fn view(&self) -> View {
        let proc_ = lock(&self.proc_);
        View {
            state: proc_.state,
            epoch: proc_.epoch,
            generation: proc_.generations.last().map_or(0, |g| g.number),
            pid: proc_.child.as_ref().map(Child::id),
        }
    }

    /// Every generation so far.
    pub fn generations(&self) -> Vec<Generation> {
        lock(&self.proc_).generations.clone()
    }

    /// Starts a new generation and waits until its control socket answers
    /// `status` with its pid; returns how long that took.
    pub fn start(&self, bins: &Bins, clock: &Clock) -> Result<Duration, String> {
        let started = Instant::now();
        let pid = {
            let mut proc_ = lock(&self.proc_);
            if proc_.state != State::Down {
                return Err(format!("{} is not down ({:?})", self.name, proc_.state));
            }
            let number = proc_.generations.len() as u32 + 1;
            let log = self.log_dir.join(format!("{}.{number}.log", self.name));
            let file =
                fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
            let file_err = file
                .try_clone()
                .map_err(|e| format!("cloning {}: {e}", log.display()))?;
            let mut command = Command::new(&bins.meshd);
            command
                .arg("--config")
                .arg(&self.config)
                .current_dir(&self.dir)
                .env_remove("RUST_LOG")
                .env_remove("JOURNAL_STREAM")
                .env_remove("NOTIFY_SOCKET")
                .env_remove("WATCHDOG_USEC")
                .env_remove("WATCHDOG_PID")
                .env_remove("LISTEN_FDS")
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(file_err)
                // Its own process group: a Ctrl-C at the terminal reaches the
                // driver, which stops everything in order.
                .process_group(0);
            if let Some(uid) = self.uid {
                command.uid(uid).gid(uid);
            }
            let child = command
                .spawn()
                .map_err(|e| format!("starting meshd for {}: {e}", self.name))?;
            let pid = child.id();
            proc_.generations.push(Generation {
                number,
                started: clock.now(),
                ready: None,
                ended: None,
                log,
            });
            proc_.child = Some(child);
            proc_.state = State::Starting;
            proc_.epoch += 1;
            pid
        };
        let deadline = started + READY_TIMEOUT;
        loop {
            {
                let mut proc_ = lock(&self.proc_);
                let exited = proc_
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                if let Some(status) = exited {
                    let why =
                        format!("meshd exited with {status} before its control socket answered");
                    end(&mut proc_, clock, End::FailedStart(why.clone()));
                    return Err(format!("{}: {why}", self.name));
                }
            }
            if let Ok(Response::Status(status)) =
                control_one(&self.socket, Request::Status, Duration::from_secs(1))
                && status.pid == pid
            {
                let mut proc_ = lock(&self.proc_);
                proc_.state = State::Running;
                proc_.epoch += 1;
                let now = clock.now();
                if let Some(generation) = proc_.generations.last_mut() {
                    generation.ready = Some(now);
                }
                return Ok(started.elapsed());
            }
            if Instant::now() > deadline {
                let mut proc_ = lock(&self.proc_);
                if let Some(child) = proc_.child.as_mut() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let why = format!(
                    "no answer on its control socket within {}s",
                    READY_TIMEOUT.as_secs()
                );
                end(&mut proc_, clock, End::FailedStart(why.clone()));
                return Err(format!("{}: {why}", self.name));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL, as a crash would; reaps the process.
    pub fn kill9(&self, clock: &Clock) -> Result<(), String> {
        let mut proc_ = lock(&self.proc_);
        let Some(child) = proc_.child.as_mut() else {
            return Err(format!("{} is not running", self.name));
        };
        let _ = child.kill();
        let _ = child.wait();
        end(&mut proc_, clock, End::Killed);
        Ok(())
    }

    /// SIGSTOP: the process freezes.
    pub fn freeze(&self) -> Result<(), String> {
        let mut proc_ = lock(&self.proc_);
        if proc_.state != State::Running {
            return Err(format!("{} is not running", self.name));
        }
        let pid = proc_.child.as_ref().map(Child::id).ok_or("no process")?;
        // The state first, so that no probe counts the frozen process.
        proc_.state = State::Stopped;
        proc_.epoch += 1;
        signal(pid, Signal::SIGSTOP)
    }

    /// SIGCONT after [`Node::freeze`].
    pub fn thaw(&self) -> Result<(), String> {
        let mut proc_ = lock(&self.proc_);
        if proc_.state != State::Stopped {
            return Err(format!("{} is not stopped", self.name));
        }
        let pid = proc_.child.as_ref().map(Child::id).ok_or("no process")?;
        signal(pid, Signal::SIGCONT)?;
        proc_.state = State::Running;
        proc_.epoch += 1;
        Ok(())
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`] for the exit (then
    /// SIGKILL). Returns the exit status and the time it took, or why not.
    pub fn terminate(&self, clock: &Clock) -> Result<(ExitStatus, Duration), String> {
        let started = Instant::now();
        {
            let mut proc_ = lock(&self.proc_);
            let Some(pid) = proc_.child.as_ref().map(Child::id) else {
                return Err(format!("{} is not running", self.name));
            };
            if proc_.state == State::Stopped {
                signal(pid, Signal::SIGCONT)?;
            }
            proc_.state = State::Stopping;
            proc_.epoch += 1;
            signal(pid, Signal::SIGTERM)?;
        }
        loop {
            {
                let mut proc_ = lock(&self.proc_);
                let exited = proc_
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                if let Some(status) = exited {
                    end(&mut proc_, clock, End::Terminated(status));
                    return Ok((status, started.elapsed()));
                }
                if started.elapsed() > STOP_TIMEOUT {
                    if let Some(child) = proc_.child.as_mut() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    end(&mut proc_, clock, End::TermTimeout);
                    return Err(format!(
                        "{} did not exit within {}s of SIGTERM; killed",
                        self.name,
                        STOP_TIMEOUT.as_secs()
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// If the process exited although it should be running (or frozen),
    /// records a crash and returns its status.
    pub fn reap_crash(&self, clock: &Clock) -> Option<ExitStatus> {
        let mut proc_ = lock(&self.proc_);
        if !matches!(proc_.state, State::Running | State::Stopped) {
            return None;
        }
        let status = proc_.child.as_mut()?.try_wait().ok().flatten()?;
        end(&mut proc_, clock, End::Crashed(status));
        Some(status)
    }
}

impl Drop for Node {
    /// However the driver ends, no meshd it started outlives it.
    fn drop(&mut self) {
        let proc_ = self.proc_.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = proc_.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Records the end of the current generation.
fn end(proc_: &mut Proc, clock: &Clock, how: End) {
    proc_.child = None;
    proc_.state = State::Down;
    proc_.epoch += 1;
    if let Some(generation) = proc_.generations.last_mut() {
        generation.ended = Some((clock.now(), how));
    }
}

fn signal(pid: u32, signal: Signal) -> Result<(), String> {
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    kill(Pid::from_raw(raw), signal).map_err(|e| format!("{signal} to {pid}: {e}"))
}

/// A connection to a control socket that carries one request after
/// another, each answered before the next.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Control {
    /// Connects; every read and write of the connection has `timeout`.
    pub fn open(socket: &Path, timeout: Duration) -> Result<Control, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        Ok(Control {
            reader: BufReader::new(stream.try_clone().map_err(|e| e.to_string())?),
            writer: stream,
            next_id: 1,
        })
    }

    /// One request; the responses of every frame of its answer, in order.
    pub fn call(&mut self, request: Request) -> Result<Vec<Response>, String> {
        let frame = RequestFrame {
            v: PROTOCOL_VERSION,
            id: self.next_id,
            request,
        };
        self.next_id += 1;
        let line = meshd_ipc::encode(&frame).map_err(|e| e.to_string())?;
        self.writer
            .write_all(&line)
            .map_err(|e| format!("writing the request: {e}"))?;
        let mut buf = Vec::new();
        let mut responses = Vec::new();
        loop {
            match meshd_ipc::read_frame(&mut self.reader, &mut buf) {
                Ok(true) => {}
                Ok(false) => return Err("meshd closed the connection without answering".to_owned()),
                Err(error) => return Err(format!("reading the answer: {error}")),
            }
            let reply: ReplyFrame = meshd_ipc::decode(&buf).map_err(|e| e.to_string())?;
            match reply.reply {
                Reply::Ok(response) => responses.push(response),
                Reply::Error(error) => return Err(error.message),
            }
            if !reply.more {
                return Ok(responses);
            }
        }
    }
}

/// One request over a new connection to a control socket, every frame of
/// the answer read within `timeout`: the responses of a paged answer, in
/// order.
pub fn control(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Vec<Response>, String> {
    Control::open(socket, timeout)?.call(request)
}

/// [`control`] for single-frame answers.
pub fn control_one(socket: &Path, request: Request, timeout: Duration) -> Result<Response, String> {
    control(socket, request, timeout)?
        .into_iter()
        .next()
        .ok_or_else(|| "an empty answer".to_owned())
}

/// `devices` on a mesh node: every listed device, pages joined.
pub fn devices(socket: &Path, timeout: Duration) -> Result<Vec<DeviceEntry>, String> {
    let mut all = Vec::new();
    for response in control(socket, Request::Devices, timeout)? {
        match response {
            Response::Devices(page) => all.extend(page),
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
    Ok(all)
}

/// The link `from` shows to device `to`, if it lists it.
pub fn link_state(from: &Node, to: &str) -> Option<LinkState> {
    devices(&from.socket, Duration::from_secs(2))
        .ok()?
        .into_iter()
        .find(|entry| entry.id == to)
        .and_then(|entry| entry.link)
}

/// Whether every running device shows every other device as `direct`.
pub fn full_mesh(devices_: &[&Node]) -> bool {
    let names: Vec<&str> = devices_.iter().map(|node| node.name.as_str()).collect();
    devices_.iter().all(|node| {
        node.view().state == State::Running
            && devices(&node.socket, Duration::from_secs(2)).is_ok_and(|list| {
                names.iter().filter(|name| **name != node.name).all(|name| {
                    list.iter()
                        .any(|entry| entry.id == *name && entry.link == Some(LinkState::Direct))
                })
            })
    })
}
