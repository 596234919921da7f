//! Real meshd processes on loopback: the time until every one of them has a
//! direct link to every other, and the round-trip time meshd measures.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meshd_ipc::{LinkState, Request, Response};

use crate::control::{Error, Nodes, call, call_devices, wait_for, web_off};
use crate::median;

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
             [signaling]\n{signaling}\n[chat]\nenabled = false\n{web}\
             [mesh]\nlisten = \"127.0.0.1:0\"\nsignaling = [\"{hub_url}\"]\n",
            state = dir.path().join(id).display(),
            socket = sockets[index].display(),
            web = web_off(meshd),
        );
        nodes.start(Command::new(meshd), dir.path(), id, &config)
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
