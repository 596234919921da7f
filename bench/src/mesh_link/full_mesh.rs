//! Real meshd processes on loopback: the time until every one of them has a
//! direct link to every other, and the round-trip time meshd measures.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshd_ipc::{LinkState, PROTOCOL_VERSION, Reply, ReplyFrame, Request, RequestFrame, Response};

use crate::median;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Longest wait for a mesh to form before the run counts as failed.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `repeat` times and prints the Markdown table.
pub fn run(meshd: &Path, devices: usize, repeat: usize) -> Result<(), Error> {
    let mut formed = Vec::new();
    let mut rtts = Vec::new();
    for round in 0..repeat {
        let (time, rtt) = once(meshd, devices, round)?;
        eprintln!(
            "==> run {}: full mesh of {devices} in {:.0} ms",
            round + 1,
            time * 1e3
        );
        formed.push(time);
        rtts.push(rtt);
    }
    let samples: Vec<String> = formed.iter().map(|t| format!("{:.0}", t * 1e3)).collect();
    println!("| measure | median | runs |");
    println!("| --- | --- | --- |");
    println!(
        "| full mesh of {devices} devices after the last start | {:.0} ms | {} ms |",
        median(&mut formed) * 1e3,
        samples.join(", ")
    );
    println!(
        "| meshd-to-meshd ping as `meshctl ping` reports it | {:.3} ms | {} runs of 20 |",
        median(&mut rtts),
        repeat
    );
    Ok(())
}

/// Kills the processes it holds when dropped, however the run ends.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn once(meshd: &Path, devices: usize, round: usize) -> Result<(f64, f64), Error> {
    let dir = tempfile::Builder::new().prefix("mesh-link-").tempdir()?;
    let hub_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let hub_url = format!("http://127.0.0.1:{hub_port}");
    let ids: Vec<String> = (0..devices).map(|i| format!("d{round}-{i:02}")).collect();
    let sockets: Vec<PathBuf> = ids
        .iter()
        .map(|id| dir.path().join(format!("{id}.sock")))
        .collect();
    let mut nodes = Nodes(Vec::new());
    let start = |index: usize, nodes: &mut Nodes| -> Result<(), Error> {
        let id = &ids[index];
        let signaling = if index == 0 {
            format!("enabled = true\nlisten = \"127.0.0.1:{hub_port}\"")
        } else {
            "enabled = false".to_owned()
        };
        let config = format!(
            "[node]\nid = \"{id}\"\nstate_dir = \"{state}\"\nlog_level = \"warn\"\n\
             [control]\nsocket = \"{socket}\"\ngroup = \"\"\n\
             [signaling]\n{signaling}\n[chat]\nenabled = false\n\
             [mesh]\nlisten = \"127.0.0.1:0\"\nsignaling = [\"{hub_url}\"]\n",
            state = dir.path().join(id).display(),
            socket = sockets[index].display(),
        );
        let path = dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, config)?;
        let child = Command::new(meshd)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        nodes.0.push(child);
        Ok(())
    };
    // The hub first, so that no device's first registration meets a closed
    // port and waits out a backoff; then every device at once.
    start(0, &mut nodes)?;
    wait_for(
        || call(&sockets[0], Request::Status).ok(),
        Duration::from_secs(10),
    )?;
    for index in 1..devices {
        start(index, &mut nodes)?;
    }
    let last_start = Instant::now();
    wait_for(
        || {
            sockets
                .iter()
                .all(|socket| {
                    call_devices(socket).is_ok_and(|links| {
                        links.len() == devices
                            && links
                                .iter()
                                .all(|link| matches!(link, LinkState::Direct | LinkState::Local))
                    })
                })
                .then_some(())
        },
        FORM_TIMEOUT,
    )?;
    let formed = last_start.elapsed().as_secs_f64();
    let mut rtts = Vec::new();
    for _ in 0..20 {
        match call(
            &sockets[1],
            Request::Ping {
                device: ids[2].clone(),
            },
        )? {
            Response::Pong(pong) => rtts.push(pong.rtt_ms),
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
    }
    Ok((formed, median(&mut rtts)))
}

fn wait_for<T>(mut check: impl FnMut() -> Option<T>, timeout: Duration) -> Result<T, Error> {
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

fn call_devices(socket: &Path) -> Result<Vec<LinkState>, Error> {
    match call(socket, Request::Devices)? {
        Response::Devices(devices) => Ok(devices.iter().filter_map(|device| device.link).collect()),
        other => Err(format!("unexpected answer {other:?}").into()),
    }
}

/// One request over the control socket; single-frame answers only.
fn call(socket: &Path, request: Request) -> Result<Response, Error> {
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
