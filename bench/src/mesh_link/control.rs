//! Talking to real meshd processes: their control sockets, and stopping
//! them however a run ends.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshd_ipc::{LinkState, PROTOCOL_VERSION, Reply, ReplyFrame, Request, RequestFrame, Response};

/// Any failure of a benchmark run.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Kills the processes it holds when dropped, however the run ends.
pub struct Nodes(pub Vec<Child>);

impl Nodes {
    /// Writes `config` to `dir/ID.toml` and starts `command --config` with
    /// it, its output discarded and its log on this process's stderr.
    pub fn start(
        &mut self,
        mut command: Command,
        dir: &Path,
        id: &str,
        config: &str,
    ) -> Result<(), Error> {
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(&path, config)?;
        let child = command
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        self.0.push(child);
        Ok(())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `[web] enabled = false` for a meshd that has the web console, and nothing
/// for an older one (a baseline), which would refuse the section. Asked of
/// the binary once per path: `--check-config` on a file with the section.
pub fn web_off(meshd: &Path) -> String {
    static KNOWN: std::sync::Mutex<Vec<(std::path::PathBuf, bool)>> =
        std::sync::Mutex::new(Vec::new());
    let mut known = KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let has_web = match known.iter().find(|(path, _)| path == meshd) {
        Some((_, has_web)) => *has_web,
        None => {
            let has_web = tempfile::NamedTempFile::new()
                .and_then(|file| {
                    std::fs::write(file.path(), "[web]\nenabled = false\n")?;
                    Command::new(meshd)
                        .arg("--check-config")
                        .arg("--config")
                        .arg(file.path())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                })
                .is_ok_and(|status| status.success());
            known.push((meshd.to_path_buf(), has_web));
            has_web
        }
    };
    match has_web {
        true => "[web]\nenabled = false\n".to_owned(),
        false => String::new(),
    }
}

/// Starts a meshd that is a hub only (no mesh, no chat) on a free loopback
/// port, with `signaling` added to its `[signaling]` table and its web
/// console on `web` (off without), and waits until it accepts connections;
/// its address.
pub fn start_hub(
    nodes: &mut Nodes,
    meshd: &Path,
    dir: &Path,
    signaling: &str,
    web: Option<std::net::SocketAddr>,
) -> Result<std::net::SocketAddr, Error> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let hub = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let config = format!(
        "[node]\nid = \"hub\"\nstate_dir = \"{state}\"\nlog_level = \"warn\"\n\
         [control]\nsocket = \"{socket}\"\ngroup = \"\"\n\
         [signaling]\nenabled = true\nlisten = \"{hub}\"\n{signaling}\n\
         [chat]\nenabled = false\n[mesh]\nenabled = false\n{web}",
        state = dir.join("hub-state").display(),
        socket = dir.join("hub.sock").display(),
        web = match web {
            Some(addr) => format!("[web]\nenabled = true\nlisten = \"{addr}\"\n"),
            None => web_off(meshd),
        },
    );
    nodes.start(Command::new(meshd), dir, "hub", &config)?;
    wait_for(
        || std::net::TcpStream::connect(hub).ok(),
        Duration::from_secs(10),
    )?;
    Ok(hub)
}

/// Polls `check` every 5 ms until it gives a value or `timeout` passes.
pub fn wait_for<T>(mut check: impl FnMut() -> Option<T>, timeout: Duration) -> Result<T, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("nothing after {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn call_devices(socket: &Path) -> Result<Vec<LinkState>, Error> {
    match call(socket, Request::Devices)? {
        Response::Devices(devices) => Ok(devices.iter().filter_map(|device| device.link).collect()),
        other => Err(format!("unexpected answer {other:?}").into()),
    }
}

/// One request over the control socket; single-frame answers only.
pub fn call(socket: &Path, request: Request) -> Result<Response, Error> {
    let mut stream = UnixStream::connect(socket)?;
    let frame = RequestFrame {
        v: PROTOCOL_VERSION,
        id: 1,
        request,
    };
    stream.write_all(&meshd_ipc::encode(&frame)?)?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    if !meshd_ipc::read_frame(&mut reader, &mut line)? {
        return Err("meshd closed the connection".into());
    }
    let reply: ReplyFrame = meshd_ipc::decode(&line)?;
    match reply.reply {
        Reply::Ok(response) => Ok(response),
        Reply::Error(error) => Err(error.message.into()),
    }
}
