//! Real meshd processes in the NAT lab of the integration tests (network
//! namespaces: a hub on a public segment, devices behind home routers):
//!
//! - the time from the second device's start until both show a `direct`
//!   link, across two port-preserving NATs (hole punching);
//! - the time from the second device's start until both show a `relayed`
//!   link, when one NAT picks a random port per destination;
//! - message throughput over each of those two links, driven through the
//!   control socket the same way, so their ratio is the relay's cost.
//!
//! Needs root (namespaces, iptables).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshd_ipc::{LinkState, Request, Response};
use meshd_tests::netlab::{Host, Lab, Nat, TwoHomes};

use crate::control::{Error, Nodes, call, wait_for, web_off};
use crate::median;

/// Longest wait for a link before the run counts as failed.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);

/// Message size for the throughput runs.
const MESSAGE_BYTES: usize = 64 * 1024;

/// Concurrent senders in the throughput runs: enough to keep the link busy
/// while each waits for its acknowledgement.
const SENDERS: usize = 16;

/// Runs `repeat` times and prints the Markdown table.
pub fn run(meshd: &Path, repeat: usize, seconds: u64) -> Result<(), Error> {
    let mut direct = Vec::new();
    let mut relayed = Vec::new();
    let mut direct_rate = Vec::new();
    let mut relayed_rate = Vec::new();
    for round in 0..repeat {
        let measure = round == 0;
        let (time, rate) = once(
            meshd,
            Nat::PortPreserving,
            LinkState::Direct,
            measure,
            seconds,
        )?;
        eprintln!("==> run {}: direct in {:.0} ms", round + 1, time * 1e3);
        direct.push(time);
        direct_rate.extend(rate);
        let (time, rate) = once(meshd, Nat::RandomPort, LinkState::Relayed, measure, seconds)?;
        eprintln!("==> run {}: relayed in {:.0} ms", round + 1, time * 1e3);
        relayed.push(time);
        relayed_rate.extend(rate);
    }
    let runs = |times: &[f64]| {
        times
            .iter()
            .map(|t| format!("{:.0}", t * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("| measure | median | runs | target |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| second device's start to a direct link across two NATs | {:.0} ms | {} ms | < 1 s |",
        median(&mut direct.clone()) * 1e3,
        runs(&direct)
    );
    println!(
        "| second device's start to a relayed link (random-port NAT) | {:.0} ms | {} ms | < 2 s |",
        median(&mut relayed.clone()) * 1e3,
        runs(&relayed)
    );
    if let (Some(direct), Some(relayed)) = (direct_rate.first(), relayed_rate.first()) {
        println!();
        println!(
            "| 64 KiB messages, {SENDERS} senders, {seconds} s | direct | relayed | relayed / direct |"
        );
        println!("| --- | --- | --- | --- |");
        println!(
            "| acknowledged throughput | {:.1} MB/s | {:.1} MB/s | {:.2} |",
            direct / 1e6,
            relayed / 1e6,
            relayed / direct
        );
    }
    Ok(())
}

/// One lab: a hub, device `a` behind a router doing `nat`, device `b`
/// behind a port-preserving one. Returns the seconds from b's start to
/// both showing `path`, and with `measure` the throughput a to b.
fn once(
    meshd: &Path,
    nat: Nat,
    path: LinkState,
    measure: bool,
    seconds: u64,
) -> Result<(f64, Option<f64>), Error> {
    let mut lab = Lab::new()?;
    let TwoHomes {
        hub,
        a: a_host,
        b: b_host,
        ..
    } = lab.two_homes(nat)?;
    let dir = tempfile::Builder::new().prefix("mesh-nat-").tempdir()?;
    let hub_url = format!("http://{}:8080", hub.ip);
    let mut nodes = Nodes(Vec::new());
    let hub_socket = start(meshd, dir.path(), "hub", &hub, &hub_url, &mut nodes)?;
    wait_for(|| call(&hub_socket, Request::Status).ok(), LINK_TIMEOUT)?;
    let a = start(meshd, dir.path(), "a", &a_host, &hub_url, &mut nodes)?;
    // a is registered and its hub channel is open before b starts.
    wait_for(
        || match call(&a, Request::Status).ok()? {
            Response::Status(status) => status
                .roles
                .mesh?
                .signaling
                .first()
                .is_some_and(|hub| hub.channel)
                .then_some(()),
            _ => None,
        },
        LINK_TIMEOUT,
    )?;
    let started = Instant::now();
    let b = start(meshd, dir.path(), "b", &b_host, &hub_url, &mut nodes)?;
    wait_for(
        || (link(&a, "b") == Some(path) && link(&b, "a") == Some(path)).then_some(()),
        LINK_TIMEOUT,
    )?;
    let took = started.elapsed().as_secs_f64();
    let rate = if measure {
        Some(throughput(&a, "b", seconds)?)
    } else {
        None
    };
    drop(nodes);
    drop(lab);
    Ok((took, rate))
}

/// Starts meshd as `id` in `host`'s namespace; its control socket.
fn start(
    meshd: &Path,
    dir: &Path,
    id: &str,
    host: &Host,
    hub_url: &str,
    nodes: &mut Nodes,
) -> Result<PathBuf, Error> {
    let socket = dir.join(format!("{id}.sock"));
    let roles = if id == "hub" {
        // Unlimited relaying, so the throughput is the relay's own.
        format!(
            "[signaling]\nlisten = \"{}:8080\"\nrelay_bytes_per_sec = {}\n[mesh]\nenabled = false\n",
            host.ip,
            1u64 << 40
        )
    } else {
        format!(
            "[signaling]\nenabled = false\n[mesh]\nlisten = \"0.0.0.0:8082\"\nsignaling = [\"{hub_url}\"]\n"
        )
    };
    let config = format!(
        "[node]\nid = \"{id}\"\nstate_dir = \"{state}\"\nlog_level = \"warn\"\n\
         [control]\nsocket = \"{socket}\"\ngroup = \"\"\n[chat]\nenabled = false\n{web}{roles}",
        state = dir.join(id).display(),
        socket = socket.display(),
        web = web_off(meshd),
    );
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &host.netns]).arg(meshd);
    nodes.start(command, dir, id, &config)?;
    Ok(socket)
}

fn link(socket: &Path, peer: &str) -> Option<LinkState> {
    match call(socket, Request::Devices).ok()? {
        Response::Devices(devices) => devices
            .into_iter()
            .find(|device| device.id == peer)
            .and_then(|device| device.link),
        _ => None,
    }
}

/// Bytes per second of 64 KiB messages acknowledged end to end, sent by
/// [`SENDERS`] concurrent control connections for `seconds`.
fn throughput(socket: &Path, peer: &str, seconds: u64) -> Result<f64, Error> {
    let text = "x".repeat(MESSAGE_BYTES);
    let delivered = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..SENDERS {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let request = Request::Send {
                        device: peer.to_owned(),
                        text: text.clone(),
                    };
                    if let Ok(Response::Sent(_)) = call(socket, request) {
                        delivered.fetch_add(MESSAGE_BYTES as u64, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    Ok(delivered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
