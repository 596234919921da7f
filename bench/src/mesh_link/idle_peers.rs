//! What an idle meshd device with many peers costs (issue 15): one real
//! meshd device, one meshd hub, and N simulated peers registered with the
//! hub that accept the device's links (real Noise_IK handshakes from
//! `meshd-link`, one key shared by all of them) and answer its pings.
//!
//! Once the device shows every peer `direct`, nothing is sent for
//! `seconds`; measured over that time: the device's CPU (percent of one
//! core), its RSS, and the link traffic both ways (bytes and frames a
//! second, all keepalives). The simulated peers send no pings of their own,
//! so the figures are the device's own keepalives and their answers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshd_ipc::{Request, Response};
use meshd_link::{Frame, Hello, StaticKey};
use serde_json::json;

use crate::control::{Error, Nodes, call, start_hub, wait_for, web_off};
use crate::process::{cpu_seconds, rss};

/// Longest wait for every link to come up.
const LINKS_TIMEOUT: Duration = Duration::from_secs(120);

/// Link traffic, counted by the simulated peers.
#[derive(Default)]
struct Traffic {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// Runs once and prints the Markdown table.
pub fn run(meshd: &Path, peers: usize, seconds: u64) -> Result<(), Error> {
    let dir = tempfile::Builder::new().prefix("idle-peers-").tempdir()?;
    let device_socket = dir.path().join("device.sock");
    let mut nodes = Nodes(Vec::new());
    // Simulated peers register once over HTTP: a TTL longer than the run.
    let hub = start_hub(
        &mut nodes,
        meshd,
        dir.path(),
        "registrations_per_sec = 0\ndevice_ttl = \"1h\"",
        None,
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let key = Arc::new(StaticKey::generate()?);
    let pubkey = base64_key(key.public());
    let traffic = Arc::new(Traffic::default());
    // A port each: the device dials every peer from its one mesh port, and
    // two connections cannot share both ends.
    for index in 0..peers {
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let link_addr = listener.local_addr()?;
        let body =
            json!({"id": format!("p{index}"), "addr": link_addr.to_string(), "pubkey": pubkey});
        register(hub, &body)?;
        runtime.spawn(accept_links(listener, key.clone(), traffic.clone()));
    }

    let device_config = format!(
        "[node]\nid = \"device\"\nstate_dir = \"{state}\"\nlog_level = \"warn\"\n\
         [control]\nsocket = \"{socket}\"\ngroup = \"\"\n\
         [signaling]\nenabled = false\n[chat]\nenabled = false\n{web}\
         [mesh]\nlisten = \"127.0.0.1:0\"\nsignaling = [\"http://{hub}\"]\n",
        state = dir.path().join("device-state").display(),
        socket = device_socket.display(),
        web = web_off(meshd),
    );
    nodes.start(Command::new(meshd), dir.path(), "device", &device_config)?;
    let device_pid = nodes.0[1].id();
    let started = Instant::now();
    // Status counts the links; the device list of 500 takes more than one
    // reply frame.
    wait_for(
        || match call(&device_socket, Request::Status) {
            Ok(Response::Status(status)) => status
                .roles
                .mesh
                .filter(|mesh| mesh.links >= peers)
                .map(|_| ()),
            _ => None,
        },
        LINKS_TIMEOUT,
    )?;
    let linked = started.elapsed();
    eprintln!(
        "==> {peers} links direct in {:.1} s; idle for {seconds} s",
        linked.as_secs_f64()
    );
    // Settle the start-up work (handshakes, first pings) before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let snapshot = |traffic: &Traffic| {
        [
            traffic.frames_in.load(Ordering::Relaxed),
            traffic.frames_out.load(Ordering::Relaxed),
            traffic.bytes_in.load(Ordering::Relaxed),
            traffic.bytes_out.load(Ordering::Relaxed),
        ]
    };
    let cpu_before = cpu_seconds(device_pid)?;
    let before = snapshot(&traffic);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = window.elapsed().as_secs_f64();
    let cpu = cpu_seconds(device_pid)? - cpu_before;
    let after = snapshot(&traffic);
    let rss = rss(device_pid)?;
    let rate = |index: usize| (after[index] - before[index]) as f64 / elapsed;
    println!(
        "| peers | device CPU (% of one core) | device RSS | frames/s device to peers | frames/s peers to device | link bytes/s both ways |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {peers} | {:.2} % | {} MiB | {:.0} | {:.0} | {:.0} |",
        cpu / elapsed * 100.0,
        rss >> 20,
        rate(0),
        rate(1),
        rate(2) + rate(3),
    );
    drop(nodes);
    runtime.shutdown_background();
    Ok(())
}

fn base64_key(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// `POST /register` of one simulated peer.
fn register(hub: SocketAddr, body: &serde_json::Value) -> Result<(), Error> {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(hub)?;
    write!(
        stream,
        "POST /register HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("registering a simulated peer: {answer}").into());
    }
    Ok(())
}

/// Accepts the device's links for one simulated peer (one key for all).
async fn accept_links(
    listener: tokio::net::TcpListener,
    key: Arc<StaticKey>,
    traffic: Arc<Traffic>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let key = key.clone();
        let traffic = traffic.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(inbound) = meshd_link::accept(stream, &key).await else {
                return;
            };
            let theirs = inbound.hello().clone();
            let ours = Hello {
                from: theirs.to.clone(),
                to: theirs.from.clone(),
                instance: 1,
            };
            let Ok(link) = inbound.complete(&ours).await else {
                return;
            };
            answer_pings(link, traffic).await;
        });
    }
}

/// Answers pings and acknowledges messages until the link ends.
async fn answer_pings(link: meshd_link::Link<tokio::net::TcpStream>, traffic: Arc<Traffic>) {
    let (mut reader, mut writer) = link.split();
    while let Ok(frame) = reader.next().await {
        traffic.frames_in.fetch_add(1, Ordering::Relaxed);
        traffic
            .bytes_in
            .fetch_add(wire_bytes(&frame), Ordering::Relaxed);
        let reply = match frame {
            Frame::Ping { nonce } => Frame::Pong { nonce },
            Frame::Message { id, .. } => Frame::Ack { id },
            Frame::Close { .. } => return,
            Frame::Ack { .. } | Frame::Pong { .. } => continue,
        };
        traffic.frames_out.fetch_add(1, Ordering::Relaxed);
        traffic
            .bytes_out
            .fetch_add(wire_bytes(&reply), Ordering::Relaxed);
        if writer.send(&reply).await.is_err() {
            return;
        }
    }
}

/// A frame's bytes on the wire: encoded, in one record (length and tag).
fn wire_bytes(frame: &Frame) -> u64 {
    (frame.encoded_len() + 2 + 16) as u64
}
