//! The injected faults: a schedule drawn from the seed before the run
//! (so `--seed` replays the same kinds, targets and times), and the thread
//! that carries it out, one fault at a time, logging each with a timestamp.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshd_ipc::{LinkState, Request};

use crate::chat::{Chat, warm_up};
use crate::cluster::{Bins, Node, State, control_one, link_state};
use crate::fill;
use crate::inbox::Receipts;
use crate::traffic::Ledger;
use crate::util::{Clock, Rng, lock, run, sleep_for, sleep_until};

/// How long a path cut lasts.
const CUT_FOR: f64 = 15.0;
/// How long a device stays frozen.
const FREEZE_FOR: f64 = 10.0;
/// How long after a cut ends the driver waits for the direct link to return.
const RECOVER_WITHIN: f64 = 30.0;
/// No fault starts so late that it would not be over this long before the
/// end, so the mesh settles before the final checks.
pub const SETTLE: f64 = 20.0;
/// The iptables chain the cuts go into (hooked into OUTPUT of the soak's
/// namespace).
pub const CHAIN: &str = "MESHD-SOAK";

/// One kind of fault, with its target.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// SIGKILL a device, wait `down_for` seconds, start it again.
    Kill {
        /// Index among the devices.
        device: usize,
        /// Seconds between the kill and the start.
        down_for: f64,
    },
    /// SIGTERM the hub, then start it again.
    RestartHub,
    /// Drop every TCP packet between two devices for [`CUT_FOR`] seconds.
    Cut {
        /// One device.
        a: usize,
        /// The other.
        b: usize,
    },
    /// SIGSTOP a device for [`FREEZE_FOR`] seconds, then SIGCONT.
    Freeze {
        /// Index among the devices.
        device: usize,
    },
}

impl Kind {
    /// The kind's name in the report.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Kill { .. } => "kill -9 and restart of a device",
            Kind::RestartHub => "restart of the hub (SIGTERM, then start)",
            Kind::Cut { .. } => "path cut between two devices (iptables DROP, 15 s)",
            Kind::Freeze { .. } => "SIGSTOP of a device for 10 s, then SIGCONT",
        }
    }

    /// Every kind's label, in report order.
    pub fn labels() -> [&'static str; 4] {
        [
            Kind::Kill {
                device: 0,
                down_for: 0.0,
            }
            .label(),
            Kind::RestartHub.label(),
            Kind::Cut { a: 0, b: 1 }.label(),
            Kind::Freeze { device: 0 }.label(),
        ]
    }

    /// How long the fault takes, about.
    fn nominal(&self) -> f64 {
        match self {
            Kind::Kill { down_for, .. } => down_for + 2.0,
            Kind::RestartHub => 5.0,
            Kind::Cut { .. } => CUT_FOR + 10.0,
            Kind::Freeze { .. } => FREEZE_FOR + 2.0,
        }
    }
}

/// A fault and when it is due, in seconds after the traffic started.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Seconds after the traffic started.
    pub at: f64,
    /// What.
    pub kind: Kind,
}

impl Planned {
    /// `+31s cut d6 <-> d8`, for the plan printed at the start.
    pub fn describe(&self, devices: &[&Node]) -> String {
        let what = match &self.kind {
            Kind::Kill { device, down_for } => {
                format!("kill -9 {} ({down_for:.1} s)", devices[*device].name)
            }
            Kind::RestartHub => "restart the hub".to_owned(),
            Kind::Cut { a, b } => format!("cut {} <-> {}", devices[*a].name, devices[*b].name),
            Kind::Freeze { device } => format!("SIGSTOP {}", devices[*device].name),
        };
        format!("+{:.0}s {what}", self.at)
    }
}

/// The schedule for `seconds` of traffic among `devices` devices: a fault
/// every 10-30 s (start to start, never overlapping), none after the
/// settling time before the end.
pub fn plan(seed: u64, devices: usize, seconds: f64) -> Vec<Planned> {
    let mut rng = Rng::new(seed, 1);
    let mut plan = Vec::new();
    let mut at = rng.range(10.0, 30.0);
    loop {
        let kind = match rng.below(4) {
            0 => Kind::Kill {
                device: rng.below(devices),
                down_for: rng.range(0.5, 3.0),
            },
            1 => Kind::RestartHub,
            2 => {
                let a = rng.below(devices);
                let mut b = rng.below(devices - 1);
                if b >= a {
                    b += 1;
                }
                Kind::Cut { a, b }
            }
            _ => Kind::Freeze {
                device: rng.below(devices),
            },
        };
        if at + kind.nominal() + SETTLE > seconds {
            return plan;
        }
        let next = at + rng.range(10.0, 30.0).max(kind.nominal() + 1.0);
        plan.push(Planned { at, kind });
        at = next;
    }
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct Injected {
    /// Run seconds.
    pub at: f64,
    /// Wall clock.
    pub wall: String,
    /// The kind's label.
    pub label: &'static str,
    /// The fault, named: `kill -9 d3, down 1.2 s`.
    pub what: String,
    /// What followed: `started again as generation 2, answering after 26 ms`.
    pub outcome: String,
    /// Something that went wrong with it (a process that did not stop
    /// cleanly or did not come back); `None` when all went as expected.
    pub problem: Option<String>,
}

/// Everything the fault thread needs.
pub struct Faults<'a> {
    /// The hub.
    pub hub: &'a Node,
    /// The devices.
    pub devices: &'a [&'a Node],
    /// The binaries.
    pub bins: &'a Bins,
    /// The clock.
    pub clock: &'a Clock,
    /// The chat record (the hub's warm-up after a restart counts there).
    pub chat: &'a Chat,
    /// The run's seed.
    pub seed: u64,
    /// The traffic's ledger (a fill waits for messages on their way).
    pub ledger: &'a Ledger,
    /// The follow streams (a fill waits for its marker there).
    pub receipts: &'a Receipts,
    /// What happened.
    pub log: Mutex<Vec<Injected>>,
}

impl Faults<'_> {
    /// Carries out `plan` (times after `start`, in run seconds), restarting
    /// any process that went down on its own in between, until the plan is
    /// done or `stop` is set.
    pub fn run(&self, plan: &[Planned], start: f64, stop: &AtomicBool) {
        for planned in plan {
            let due = self.clock.instant(start + planned.at);
            while Instant::now() < due {
                self.repair(stop);
                if !sleep_until(stop, due.min(Instant::now() + Duration::from_millis(500))) {
                    return;
                }
            }
            self.inject(&planned.kind, stop);
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        while !stop.load(Ordering::Relaxed) {
            self.repair(stop);
            sleep_for(stop, Duration::from_millis(500));
        }
    }

    fn inject(&self, kind: &Kind, stop: &AtomicBool) {
        let at = self.clock.now();
        let what = match kind {
            Kind::Kill { device, down_for } => {
                format!(
                    "kill -9 {}, down {down_for:.1} s",
                    self.devices[*device].name
                )
            }
            Kind::RestartHub => "SIGTERM to the hub, then start it".to_owned(),
            Kind::Cut { a, b } => format!(
                "cut {} <-> {} for {CUT_FOR:.0} s",
                self.devices[*a].name, self.devices[*b].name
            ),
            Kind::Freeze { device } => format!(
                "SIGSTOP {} for {FREEZE_FOR:.0} s",
                self.devices[*device].name
            ),
        };
        self.clock
            .say(&format!("fault at {}: {what}", self.clock.wall(at)));
        let (outcome, problem) = match kind {
            Kind::Kill { device, down_for } => self.kill(self.devices[*device], *down_for, stop),
            Kind::RestartHub => self.restart_hub(),
            Kind::Cut { a, b } => self.cut(self.devices[*a], self.devices[*b], stop),
            Kind::Freeze { device } => self.freeze(self.devices[*device], stop),
        };
        self.clock.say(&format!(
            "  {outcome}{}",
            problem
                .as_ref()
                .map(|p| format!("; PROBLEM: {p}"))
                .unwrap_or_default()
        ));
        lock(&self.log).push(Injected {
            at,
            wall: self.clock.wall(at),
            label: kind.label(),
            what,
            outcome,
            problem,
        });
    }

    fn kill(&self, node: &Node, down_for: f64, stop: &AtomicBool) -> (String, Option<String>) {
        if let Err(error) = node.kill9(self.clock) {
            return (format!("not killed: {error}"), Some(error));
        }
        sleep_for(stop, Duration::from_secs_f64(down_for));
        match node.start(self.bins, self.clock) {
            Ok(took) => (
                format!(
                    "started again as generation {}, answering after {} ms{}",
                    node.view().generation,
                    took.as_millis(),
                    self.fill(node, stop)
                ),
                None,
            ),
            Err(error) => (format!("did not start again: {error}"), Some(error)),
        }
    }

    fn restart_hub(&self) -> (String, Option<String>) {
        let mut problem = None;
        let stopped = match self.hub.terminate(self.clock) {
            Ok((status, took)) if status.success() => {
                format!("exited 0 after {} ms", took.as_millis())
            }
            Ok((status, took)) => {
                let text = format!(
                    "exited with {status} after {} ms of SIGTERM",
                    took.as_millis()
                );
                problem = Some(text.clone());
                text
            }
            Err(error) => {
                problem = Some(error.clone());
                error
            }
        };
        let started = match self.hub.start(self.bins, self.clock) {
            Ok(took) => {
                warm_up(self.chat, self.seed);
                format!("started again, answering after {} ms", took.as_millis())
            }
            Err(error) => {
                problem.get_or_insert(error.clone());
                format!("did not start again: {error}")
            }
        };
        (format!("{stopped}; {started}"), problem)
    }

    fn cut(&self, a: &Node, b: &Node, stop: &AtomicBool) -> (String, Option<String>) {
        let (Some(uid_a), Some(uid_b)) = (a.uid, b.uid) else {
            return (
                "not a pair of devices".to_owned(),
                Some("bad cut".to_owned()),
            );
        };
        let rules = [(uid_a, b.ip), (uid_b, a.ip)];
        for (uid, ip) in rules {
            let uid = uid.to_string();
            let ip = ip.to_string();
            let rule = [
                "-A",
                CHAIN,
                "-p",
                "tcp",
                "-m",
                "owner",
                "--uid-owner",
                &uid,
                "-d",
                &ip,
                "-j",
                "DROP",
            ];
            if let Err(error) = iptables(&rule) {
                let _ = iptables(&["-F", CHAIN]);
                return (format!("no cut: {error}"), Some(error));
            }
        }
        let cut_at = Instant::now();
        let mut relayed_after = None;
        let mut last = None;
        while cut_at.elapsed().as_secs_f64() < CUT_FOR && !stop.load(Ordering::Relaxed) {
            let state = link_state(a, &b.name);
            if state == Some(LinkState::Relayed) && relayed_after.is_none() {
                relayed_after = Some(cut_at.elapsed().as_secs_f64());
            }
            last = state;
            std::thread::sleep(Duration::from_millis(250));
        }
        let lifted = iptables(&["-F", CHAIN]);
        let mut outcome = match relayed_after {
            Some(secs) => format!("{} showed {} relayed after {secs:.1} s", a.name, b.name),
            None => format!(
                "{} did not show {} relayed within {CUT_FOR:.0} s (last: {})",
                a.name,
                b.name,
                state_name(last)
            ),
        };
        if let Err(error) = lifted {
            return (
                outcome,
                Some(format!("the cut could not be lifted: {error}")),
            );
        }
        let lifted_at = Instant::now();
        let mut direct_after = None;
        while lifted_at.elapsed().as_secs_f64() < RECOVER_WITHIN && !stop.load(Ordering::Relaxed) {
            last = link_state(a, &b.name);
            if last == Some(LinkState::Direct) {
                direct_after = Some(lifted_at.elapsed().as_secs_f64());
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        outcome.push_str(&match direct_after {
            Some(secs) => format!("; direct again {secs:.1} s after the cut ended"),
            None => format!(
                "; not direct within {RECOVER_WITHIN:.0} s of the cut's end (last: {})",
                state_name(last)
            ),
        });
        (outcome, None)
    }

    fn freeze(&self, node: &Node, stop: &AtomicBool) -> (String, Option<String>) {
        if let Err(error) = node.freeze() {
            return (format!("not stopped: {error}"), Some(error));
        }
        sleep_for(stop, Duration::from_secs_f64(FREEZE_FOR));
        if let Err(error) = node.thaw() {
            return (format!("not continued: {error}"), Some(error));
        }
        let continued = Instant::now();
        match control_one(&node.socket, Request::Status, Duration::from_secs(5)) {
            Ok(_) => (
                format!(
                    "SIGCONT; its control socket answered {} ms later",
                    continued.elapsed().as_millis()
                ),
                None,
            ),
            Err(error) => (
                format!("SIGCONT; its control socket did not answer: {error}"),
                Some(error),
            ),
        }
    }

    /// Starts every process that went down on its own (a crash, a failed
    /// start); the crash itself is reported by the monitor.
    fn repair(&self, stop: &AtomicBool) {
        for node in std::iter::once(&self.hub).chain(self.devices.iter()) {
            if node.view().state != State::Down {
                continue;
            }
            let at = self.clock.now();
            let outcome = node.start(self.bins, self.clock);
            if outcome.is_ok() && node.name == self.hub.name {
                warm_up(self.chat, self.seed);
            }
            let (outcome, problem) = match outcome {
                Ok(took) => (
                    format!(
                        "started again after {} ms{}",
                        took.as_millis(),
                        self.fill(node, stop)
                    ),
                    None,
                ),
                Err(error) => (format!("did not start: {error}"), Some(error)),
            };
            self.clock
                .say(&format!("{} was down on its own; {outcome}", node.name));
            lock(&self.log).push(Injected {
                at,
                wall: self.clock.wall(at),
                label: "repair (not a fault)",
                what: format!("start {} again after an exit nobody asked for", node.name),
                outcome,
                // The exit itself is the monitor's to report.
                problem,
            });
        }
    }
}

impl Faults<'_> {
    /// Fills a restarted device's caches (see `fill.rs`); says so.
    fn fill(&self, node: &Node, stop: &AtomicBool) -> String {
        let Some(index) = self.devices.iter().position(|d| d.name == node.name) else {
            return String::new();
        };
        let filled = fill::fill(
            index,
            self.devices,
            Some((self.ledger, self.receipts)),
            stop,
        );
        format!("; caches filled: {}", filled.describe())
    }
}

fn state_name(state: Option<LinkState>) -> &'static str {
    match state {
        None => "not listed",
        Some(LinkState::Local) => "self",
        Some(LinkState::Connecting) => "connecting",
        Some(LinkState::Direct) => "direct",
        Some(LinkState::Relayed) => "relayed",
        Some(LinkState::Down) => "down",
    }
}

/// Runs `iptables -w 5 ARGS` (in the soak's namespace, where the driver
/// runs).
pub fn iptables(args: &[&str]) -> Result<(), String> {
    let mut command = std::process::Command::new("iptables");
    command.args(["-w", "5"]).args(args);
    let output = run(&mut command, None, Duration::from_secs(15))?;
    if output.success() {
        Ok(())
    } else {
        Err(format!("iptables {}: {}", args.join(" "), output.reason()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_the_seeds() {
        let one = plan(42, 8, 600.0);
        let again = plan(42, 8, 600.0);
        assert_eq!(
            one.iter()
                .map(|p| (p.at, p.kind.clone()))
                .collect::<Vec<_>>(),
            again
                .iter()
                .map(|p| (p.at, p.kind.clone()))
                .collect::<Vec<_>>()
        );
        assert!(one.len() >= 15, "{} faults in 10 minutes", one.len());
        for pair in one.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(gap >= 10.0 && gap >= pair[0].kind.nominal(), "gap {gap}");
        }
        let last = one.last().map_or(0.0, |p| p.at + p.kind.nominal());
        assert!(last + SETTLE <= 600.0);
    }

    #[test]
    fn a_cut_is_between_two_devices() {
        for seed in 0..200 {
            for planned in plan(seed, 2, 300.0) {
                if let Kind::Cut { a, b } = planned.kind {
                    assert_ne!(a, b);
                    assert!(a < 2 && b < 2);
                }
            }
        }
    }
}
