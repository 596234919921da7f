//! mesh-link: meshd's peer links measured against plain TCP in the same run
//! (issue 6, item 6).
//!
//! - `stream` (`stream.rs`): one-way throughput of 1 KiB and 64 KiB messages
//!   over a loopback TCP connection, once as length-prefixed frames on plain
//!   TCP and once through a meshd link (Noise_IK handshake, AES-256-GCM
//!   records, the same frames), both batched the same way.
//! - `rtt` (`stream.rs`): round trips of a small ping and its answer, plain
//!   TCP against a link.
//! - `mesh` (`full_mesh.rs`): real meshd processes (one hub that is also a
//!   device, and N-1 devices) started at once on loopback; the time from the
//!   last start until every device shows every other as `direct`, and the
//!   round-trip time meshd itself measures between two of them.
//! - `hub` (`hub_scale.rs`): one meshd hub and thousands of simulated
//!   devices (real hub channels, real keys): time until every device holds
//!   the whole list, the hub's CPU, memory and bytes sent per join, and
//!   the same under churn; with `--scrape-secs`, what the hub's web console
//!   costs it (`scrape.rs`): /metrics scraped every second against the hub
//!   left alone, and the CPU of one /metrics and one /api/v1/mesh.
//! - `idle` (`idle_peers.rs`): one meshd device linked to hundreds of
//!   simulated peers, idle: its CPU, memory and keepalive traffic.
//! - `nat` (`nat.rs`): meshd in the NAT lab of network namespaces: time to
//!   a direct link across two NATs, time to a relayed link through a
//!   random-port NAT, and relayed throughput beside direct.
//!
//! `bench/mesh-link.sh` builds everything in release and runs the first
//! three; `bench/nat-lab.sh` runs `nat` (as root); see docs/benchmarks.md.
//! Nothing here is a test: no figure is asserted.

// A benchmark fails by saying what broke; these are its setup steps.
#![allow(clippy::expect_used)]

mod control;
mod full_mesh;
mod hub_scale;
mod idle_peers;
mod nat;
mod process;
mod scrape;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Measures meshd's links against plain TCP.
#[derive(Debug, Parser)]
#[command(name = "mesh-link", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Throughput and round-trip time: link against plain TCP.
    Link {
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Round trips per RTT measurement.
        #[arg(long, default_value_t = 20_000)]
        round_trips: u32,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Time to a full mesh of real meshd processes.
    Mesh {
        /// The meshd binary.
        #[arg(long)]
        meshd: PathBuf,
        /// Devices, the hub included.
        #[arg(long, default_value_t = 10)]
        devices: usize,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// One hub and thousands of simulated devices: lists, deltas, limits.
    Hub {
        /// The meshd binary.
        #[arg(long)]
        meshd: PathBuf,
        /// Device counts, one run each.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000, 10_000])]
        devices: Vec<usize>,
        /// Percent of devices that leave and join again after the join.
        #[arg(long, default_value_t = 10)]
        churn_percent: usize,
        /// Longest wait for each phase, in seconds.
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
        /// With the hub's web console on: after the join, seconds of the
        /// hub left alone and as many scraped every second, then bursts of
        /// /metrics and /api/v1/mesh (0: the console is off, not measured).
        #[arg(long, default_value_t = 0)]
        scrape_secs: u64,
    },
    /// What an idle device with many links costs: CPU, RSS, keepalives.
    Idle {
        /// The meshd binary.
        #[arg(long)]
        meshd: PathBuf,
        /// Simulated peers, each linked to the device.
        #[arg(long, default_value_t = 500)]
        peers: usize,
        /// Seconds of idleness measured.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Direct and relayed links across NATs in network namespaces (root).
    Nat {
        /// The meshd binary.
        #[arg(long)]
        meshd: PathBuf,
        /// Repetitions of the link-time measurements; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Link {
            seconds,
            round_trips,
            repeat,
        } => stream::run(seconds, round_trips, repeat.max(1)),
        Command::Mesh {
            meshd,
            devices,
            repeat,
        } => full_mesh::run(&meshd, devices.max(2), repeat.max(1)),
        Command::Hub {
            meshd,
            devices,
            churn_percent,
            timeout_secs,
            scrape_secs,
        } => hub_scale::run(
            &meshd,
            &devices,
            churn_percent.min(100),
            std::time::Duration::from_secs(timeout_secs),
            scrape_secs,
        ),
        Command::Idle {
            meshd,
            peers,
            seconds,
        } => idle_peers::run(&meshd, peers.max(1), seconds.max(1)),
        Command::Nat {
            meshd,
            repeat,
            seconds,
        } => nat::run(&meshd, repeat.max(1), seconds.max(1)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mesh-link: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The median of some samples.
fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}
