//! Watching the processes: crashes (an exit nobody asked for), RSS and open
//! file descriptors every 10 s, and the control socket's answer time to
//! `status` every 2 s.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshd_ipc::Request;

use crate::cluster::{Node, State, control_one};
use crate::util::{Clock, lock, sleep_for, sleep_until};

/// How often RSS and fds are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How often every control socket is asked for `status`.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// The answer time check 4 allows.
pub const PROBE_LIMIT: Duration = Duration::from_secs(1);
/// How long a probe waits before it counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One RSS and fd reading of one process.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Run seconds.
    pub at: f64,
    /// Index into the node list (0 is the hub).
    pub node: usize,
    /// The process's generation.
    pub generation: u32,
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// RssAnon in KiB: the part of VmRSS that is not file-backed (heap,
    /// stacks), so not the binary's own code paged in as paths run.
    pub anon_kib: u64,
    /// Entries of /proc/PID/fd.
    pub fds: u64,
}

/// The control-socket probes of one node.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// Probes that counted (the process ran throughout).
    pub count: u64,
    /// The slowest answer, milliseconds.
    pub worst_ms: f64,
    /// Probes slower than [`PROBE_LIMIT`] or unanswered: when, and what.
    pub late: Vec<String>,
}

/// What the monitor threads saw.
pub struct Monitor {
    samples: Mutex<Vec<Sample>>,
    probes: Mutex<Vec<Probes>>,
    crashes: Mutex<Vec<String>>,
}

impl Monitor {
    /// Empty, for `nodes` nodes.
    pub fn new(nodes: usize) -> Monitor {
        Monitor {
            samples: Mutex::new(Vec::new()),
            probes: Mutex::new(vec![Probes::default(); nodes]),
            crashes: Mutex::new(Vec::new()),
        }
    }

    /// Every sample.
    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }

    /// Every node's probes.
    pub fn probes(&self) -> Vec<Probes> {
        lock(&self.probes).clone()
    }

    /// Every crash seen.
    pub fn crashes(&self) -> Vec<String> {
        lock(&self.crashes).clone()
    }

    /// Samples every process that has a pid now.
    pub fn sample(&self, nodes: &[&Node], clock: &Clock) {
        for (index, node) in nodes.iter().enumerate() {
            let view = node.view();
            let (Some(pid), State::Running | State::Stopped) = (view.pid, view.state) else {
                continue;
            };
            let (Some(rss_kib), Some(anon_kib), Some(fds)) = (
                status_kib(pid, "VmRSS:"),
                status_kib(pid, "RssAnon:"),
                fd_count(pid),
            ) else {
                continue;
            };
            // The same process throughout, or the reading is not its.
            if node.view().epoch != view.epoch {
                continue;
            }
            lock(&self.samples).push(Sample {
                at: clock.now(),
                node: index,
                generation: view.generation,
                rss_kib,
                anon_kib,
                fds,
            });
        }
    }
}

/// Crashes every 250 ms and samples every [`SAMPLE_EVERY`], until `stop`.
pub fn watch(nodes: &[&Node], clock: &Clock, monitor: &Monitor, stop: &AtomicBool) {
    let mut next_sample = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for node in nodes {
            if let Some(status) = node.reap_crash(clock) {
                let at = clock.now();
                let line = format!("{} exited on its own with {status} at +{at:.1}s", node.name);
                clock.say(&line);
                lock(&monitor.crashes).push(line);
            }
        }
        if Instant::now() >= next_sample {
            monitor.sample(nodes, clock);
            next_sample += SAMPLE_EVERY;
        }
        sleep_for(stop, Duration::from_millis(250));
    }
}

/// Asks every running control socket for `status` every [`PROBE_EVERY`],
/// until `stop`. A probe counts only if the process ran (not frozen, not
/// starting or stopping) from its start to its end.
pub fn probe(nodes: &[&Node], clock: &Clock, monitor: &Monitor, stop: &AtomicBool) {
    let mut next = Instant::now();
    while sleep_until(stop, next) {
        next += PROBE_EVERY;
        for (index, node) in nodes.iter().enumerate() {
            let before = node.view();
            if before.state != State::Running {
                continue;
            }
            let started = Instant::now();
            let answer = control_one(&node.socket, Request::Status, PROBE_TIMEOUT);
            let elapsed = started.elapsed();
            let after = node.view();
            if after.epoch != before.epoch {
                continue;
            }
            let ms = elapsed.as_secs_f64() * 1e3;
            let mut probes = lock(&monitor.probes);
            let Some(probes) = probes.get_mut(index) else {
                continue;
            };
            probes.count += 1;
            probes.worst_ms = probes.worst_ms.max(ms);
            let at = clock.now();
            match answer {
                Ok(_) if elapsed <= PROBE_LIMIT => {}
                Ok(_) => probes
                    .late
                    .push(format!("+{at:.1}s: answered after {ms:.0} ms")),
                Err(error) => probes
                    .late
                    .push(format!("+{at:.1}s: no answer after {ms:.0} ms: {error}")),
            }
        }
    }
}

/// A `KEY: N kB` line of /proc/`pid`/status, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
}

/// Open file descriptors of `pid`.
fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}
