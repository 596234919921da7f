//! What each device received, as meshctl shows it: one
//! `meshctl --json messages --follow` stream per device process, kept open
//! for the process's whole life and started again for each new generation,
//! and periodic `meshctl --json messages` snapshots. Every observation is
//! tied to the generation (process) it came from, because a new process
//! starts with an empty inbox.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::{Bins, Node, State};
use crate::traffic::{is_traffic, sender_of};
use crate::util::{Clock, lock, run, sleep_for};

/// Counts of each text.
pub type Counts = HashMap<String, u32>;

/// One follow stream: what it printed, for one generation.
#[derive(Debug, Default, Clone)]
pub struct Session {
    /// The generation it followed.
    pub generation: u32,
    /// How often each traffic text (`soak s=...`) appeared; the texts
    /// that fill inboxes are not counted.
    pub counts: Counts,
    /// Whether it ended before its generation did.
    pub ended_early: bool,
    /// The markers (`fill.rs`) it showed.
    pub markers: HashSet<String>,
}

/// Everything observed of one device.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Its follow streams, in order.
    pub sessions: Vec<Session>,
    /// Per generation, the highest count of each text in any snapshot.
    pub snapshots: HashMap<u32, Counts>,
    /// Messages whose `from` is not the sender their text names.
    pub wrong_sender: Vec<String>,
    /// Lines the follow stream printed that were not a message.
    pub garbage: Vec<String>,
}

impl Observed {
    /// How often `text` was shown for `generation`: the most any one
    /// follow stream or snapshot of it showed (a second stream of the same
    /// process starts with the inbox again, so streams are not added up).
    pub fn shown(&self, generation: u32, text: &str) -> u32 {
        let streams = self
            .sessions
            .iter()
            .filter(|session| session.generation == generation)
            .filter_map(|session| session.counts.get(text).copied())
            .max()
            .unwrap_or(0);
        let snapshots = self
            .snapshots
            .get(&generation)
            .and_then(|counts| counts.get(text).copied())
            .unwrap_or(0);
        streams.max(snapshots)
    }

    /// Every text shown for any generation.
    pub fn texts(&self) -> impl Iterator<Item = (u32, &String)> {
        self.sessions
            .iter()
            .flat_map(|session| {
                session
                    .counts
                    .keys()
                    .map(move |text| (session.generation, text))
            })
            .chain(self.snapshots.iter().flat_map(|(generation, counts)| {
                counts.keys().map(move |text| (*generation, text))
            }))
    }
}

/// The observations of every device.
pub struct Receipts {
    devices: Vec<Mutex<Observed>>,
    followers: Vec<Mutex<Option<u32>>>,
}

impl Receipts {
    /// Empty, for `devices` devices.
    pub fn new(devices: usize) -> Receipts {
        Receipts {
            devices: (0..devices)
                .map(|_| Mutex::new(Observed::default()))
                .collect(),
            followers: (0..devices).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// What was observed of device `index`.
    pub fn observed(&self, index: usize) -> Observed {
        lock(&self.devices[index]).clone()
    }

    /// Ends every follow stream (SIGTERM to its meshctl).
    pub fn stop_followers(&self) {
        for follower in &self.followers {
            if let Some(pid) = *lock(follower)
                && let Ok(pid) = i32::try_from(pid)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }

    /// Whether a follow stream of device `index`'s `generation` showed
    /// `marker`.
    pub fn saw_marker(&self, index: usize, generation: u32, marker: &str) -> bool {
        lock(&self.devices[index])
            .sessions
            .iter()
            .any(|session| session.generation == generation && session.markers.contains(marker))
    }

    /// Whether the follow streams of the current generations have shown
    /// everything the last snapshots showed.
    pub fn caught_up(&self, devices: &[&Node]) -> bool {
        devices.iter().enumerate().all(|(index, node)| {
            let generation = node.view().generation;
            let observed = lock(&self.devices[index]);
            let Some(snapshot) = observed.snapshots.get(&generation) else {
                return true;
            };
            snapshot.iter().all(|(text, count)| {
                observed
                    .sessions
                    .iter()
                    .filter(|session| session.generation == generation)
                    .any(|session| session.counts.get(text).copied().unwrap_or(0) >= *count)
            })
        })
    }
}

/// One device's follow loop, until `stop`: whenever the device runs and no
/// stream has followed its current generation yet, start `meshctl --json
/// messages --follow` and count what it prints until it ends. A stream that
/// ends while its process still runs is marked and started again.
pub fn follow(
    index: usize,
    node: &Node,
    bins: &Bins,
    clock: &Clock,
    receipts: &Receipts,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let view = node.view();
        if view.state != State::Running {
            sleep_for(stop, Duration::from_millis(50));
            continue;
        }
        let again = {
            let mut observed = lock(&receipts.devices[index]);
            match observed.sessions.last_mut() {
                Some(session) if session.generation == view.generation => {
                    session.ended_early = true;
                    true
                }
                _ => false,
            }
        };
        if again {
            clock.say(&format!(
                "{}: its messages --follow stream ended while meshd ran; starting another",
                node.name
            ));
            if !sleep_for(stop, Duration::from_millis(500)) {
                break;
            }
        }
        lock(&receipts.devices[index]).sessions.push(Session {
            generation: view.generation,
            ..Session::default()
        });
        let mut command = bins.meshctl(&node.socket);
        command
            .args(["--json", "messages", "--follow"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                clock.say(&format!(
                    "{}: cannot start meshctl messages --follow: {error}",
                    node.name
                ));
                sleep_for(stop, Duration::from_secs(1));
                continue;
            }
        };
        *lock(&receipts.followers[index]) = Some(child.id());
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                record(&receipts.devices[index], &line);
            }
        }
        let _ = child.wait();
        *lock(&receipts.followers[index]) = None;
    }
}

/// Counts one line of a follow stream into the latest session.
fn record(observed: &Mutex<Observed>, line: &str) {
    let mut observed = lock(observed);
    let message: Result<serde_json::Value, _> = serde_json::from_str(line);
    let (Some(from), Some(text)) = (
        message.as_ref().ok().and_then(|m| m["from"].as_str()),
        message.as_ref().ok().and_then(|m| m["text"].as_str()),
    ) else {
        observed.garbage.push(line.chars().take(200).collect());
        return;
    };
    if sender_of(text).is_some_and(|sender| sender != from) {
        observed.wrong_sender.push(format!("{text:?} from {from}"));
    }
    if text.starts_with("mark ") {
        if let Some(session) = observed.sessions.last_mut() {
            session.markers.insert(text.to_owned());
        }
        return;
    }
    if !is_traffic(text) {
        return;
    }
    if let Some(session) = observed.sessions.last_mut() {
        *session.counts.entry(text.to_owned()).or_insert(0) += 1;
    }
}

/// Takes a `meshctl --json messages` snapshot of device `index` and keeps
/// it if the same process answered from start to end.
pub fn snapshot(index: usize, node: &Node, bins: &Bins, receipts: &Receipts) {
    let before = node.view();
    if before.state != State::Running {
        return;
    }
    let mut command = bins.meshctl(&node.socket);
    command.args(["--json", "messages"]);
    let Ok(output) = run(&mut command, None, Duration::from_secs(10)) else {
        return;
    };
    let after = node.view();
    if !output.success() || after.epoch != before.epoch {
        return;
    }
    let Ok(serde_json::Value::Array(messages)) =
        serde_json::from_str::<serde_json::Value>(&output.stdout)
    else {
        return;
    };
    let mut counts = Counts::new();
    let mut observed = lock(&receipts.devices[index]);
    for message in &messages {
        let (Some(from), Some(text)) = (message["from"].as_str(), message["text"].as_str()) else {
            observed
                .garbage
                .push(message.to_string().chars().take(200).collect());
            continue;
        };
        if sender_of(text).is_some_and(|sender| sender != from) {
            observed.wrong_sender.push(format!("{text:?} from {from}"));
        }
        if is_traffic(text) {
            *counts.entry(text.to_owned()).or_insert(0) += 1;
        }
    }
    let kept = observed.snapshots.entry(before.generation).or_default();
    for (text, count) in counts {
        let entry = kept.entry(text).or_insert(0);
        *entry = (*entry).max(count);
    }
}
