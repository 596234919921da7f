//! `meshctl ping DEVICE [-c N]`

use std::time::Duration;

use meshd_ipc::{LinkState, PingReply, Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;
use crate::stdout::{self, out, outln};

/// Time between pings, as ping(8).
const INTERVAL: Duration = Duration::from_secs(1);

/// Pings `count` times; exit 1 if no ping was answered.
pub fn run(client: &mut Client, device: String, count: u32, json: bool) -> Result<(), CtlError> {
    let mut replies: Vec<PingReply> = Vec::new();
    let mut last_error = None;
    for sequence in 0..count {
        if sequence > 0 {
            std::thread::sleep(INTERVAL);
        }
        match client.call(Request::Ping {
            device: device.clone(),
        }) {
            Ok(Response::Pong(pong)) => {
                if !json {
                    outln!(
                        "reply from {} via {} {}: time={:.3}ms",
                        pong.device,
                        path_name(pong.path),
                        pong.endpoint.as_deref().unwrap_or("-"),
                        pong.rtt_ms
                    );
                }
                replies.push(pong);
            }
            Ok(other) => return Err(client.unexpected(&other)),
            Err(CtlError::Daemon(error)) if count > 1 => {
                if !json {
                    outln!("no reply: {}", error.message);
                }
                last_error = Some(CtlError::Daemon(error));
            }
            Err(error) => return Err(error),
        }
    }
    // From here the outcome is known; a reader that stops early must not
    // turn a failure into status 0.
    let outcome = match (replies.is_empty(), last_error) {
        (true, Some(error)) => Err(error),
        (true, None) => Err(CtlError::Failed(format!("no reply from {device}"))),
        _ => Ok(()),
    };
    if let Err(error) = &outcome {
        stdout::fail_if_closed(error);
    }
    if json {
        print_json(&replies);
    } else if count > 1 {
        let rtts: Vec<f64> = replies.iter().map(|pong| pong.rtt_ms).collect();
        let lost = count as usize - rtts.len();
        out!("{count} sent, {} answered, {lost} lost", rtts.len());
        if !rtts.is_empty() {
            let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
            let max = rtts.iter().copied().fold(0.0, f64::max);
            let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
            out!("; rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms");
        }
        outln!();
    }
    outcome
}

fn path_name(path: LinkState) -> &'static str {
    match path {
        LinkState::Relayed => "relay",
        _ => "direct",
    }
}
