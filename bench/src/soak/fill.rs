//! Filling a device's bounded caches before its memory is measured.
//!
//! meshd keeps the last 1000 messages in its inbox and, for duplicate
//! detection, the last 1024 message keys of each sender (docs/mesh.md,
//! "Limits"). At the soak's rate the traffic alone would take about 9
//! minutes to fill an inbox and over an hour to fill the key memory, and
//! both take memory as they fill: growth that the memory check would count,
//! although it is bounded by design. So every device's caches are filled
//! before the traffic starts, and again after every restart: 1024 messages
//! from each other device (`fill s=<sender> n=<k>`, over the control socket
//! as `meshctl send` sends them), then one `messages` answer. Fillers are
//! not checked.
//!
//! During the traffic a fill must not hide a checked message: 7168 fillers
//! push everything before them out of the inbox. So the device is taken out
//! of the traffic first (senders skip a device whose `filling` flag is
//! set), the messages already on their way to it are awaited, and a marker
//! message must come out of the device's follow stream, which is then past
//! everything stored before the fill.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshd_ipc::{Request, Response};

use crate::cluster::{Control, Node, State, control};
use crate::inbox::Receipts;
use crate::traffic::Ledger;
use crate::util::sleep_for;

/// Message keys meshd remembers per sender.
pub const PER_SENDER: usize = 1024;

/// The longest wait for the messages on their way and for the marker.
const QUIET_WITHIN: Duration = Duration::from_secs(45);

/// What a fill did.
#[derive(Debug, Default)]
pub struct Filled {
    /// Fillers sent and acknowledged.
    pub acked: usize,
    /// Fillers sent.
    pub sent: usize,
    /// How long the device was out of the traffic before the fill began.
    pub waited: Duration,
    /// How long the fill took.
    pub took: Duration,
    /// What went wrong waiting, if anything (the fill went ahead).
    pub problem: Option<String>,
}

impl Filled {
    /// `7168 of 7168 fillers acknowledged in 950 ms (after 1.2 s out of the
    /// traffic)`.
    pub fn describe(&self) -> String {
        format!(
            "{} of {} fillers acknowledged in {} ms (after {:.1} s out of the traffic){}",
            self.acked,
            self.sent,
            self.took.as_millis(),
            self.waited.as_secs_f64(),
            self.problem
                .as_ref()
                .map(|p| format!("; {p}"))
                .unwrap_or_default()
        )
    }
}

/// Fills device `target`'s caches. `live` is the traffic's ledger and the
/// follow streams when traffic runs (before it starts there is nothing to
/// wait for).
pub fn fill(
    target: usize,
    devices: &[&Node],
    live: Option<(&Ledger, &Receipts)>,
    stop: &AtomicBool,
) -> Filled {
    let node = devices[target];
    node.filling.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let mut filled = Filled::default();
    if let Some((ledger, receipts)) = live {
        filled.problem = quiet(target, devices, ledger, receipts, stop).err();
    }
    filled.waited = started.elapsed();
    let begun = Instant::now();
    let others: Vec<&Node> = devices
        .iter()
        .enumerate()
        .filter(|(index, other)| *index != target && other.view().state == State::Running)
        .map(|(_, other)| *other)
        .collect();
    let mut connections: Vec<Option<Control>> = others
        .iter()
        .map(|other| Control::open(&other.socket, Duration::from_secs(20)).ok())
        .collect();
    for k in 0..PER_SENDER {
        for (from, connection) in others.iter().zip(connections.iter_mut()) {
            let Some(open) = connection.as_mut() else {
                continue;
            };
            filled.sent += 1;
            let request = Request::Send {
                device: node.name.clone(),
                text: format!("fill s={} n={k}", from.name),
            };
            match open.call(request) {
                Ok(responses) if matches!(responses.first(), Some(Response::Sent(_))) => {
                    filled.acked += 1;
                }
                Ok(_) => {}
                // A connection that failed (its meshd went) is not used again.
                Err(_) => *connection = None,
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    let _ = control(
        &node.socket,
        Request::Messages { follow: false },
        Duration::from_secs(10),
    );
    filled.took = begun.elapsed();
    node.filling.store(false, Ordering::SeqCst);
    filled
}

/// Waits until no checked message to `target` awaits its answer, then
/// until a marker sent to it comes out of its follow stream.
fn quiet(
    target: usize,
    devices: &[&Node],
    ledger: &Ledger,
    receipts: &Receipts,
    stop: &AtomicBool,
) -> Result<(), String> {
    let deadline = Instant::now() + QUIET_WITHIN;
    while ledger.pending_to(target) > 0 {
        if Instant::now() > deadline || !sleep_for(stop, Duration::from_millis(20)) {
            return Err("messages to it were still on their way".to_owned());
        }
    }
    let node = devices[target];
    let generation = node.view().generation;
    let Some(from) = devices
        .iter()
        .enumerate()
        .find(|(index, other)| *index != target && other.view().state == State::Running)
        .map(|(_, other)| *other)
    else {
        return Err("no other device runs".to_owned());
    };
    let marker = format!("mark s={} g={generation} t={}", from.name, target);
    let sent = control(
        &from.socket,
        Request::Send {
            device: node.name.clone(),
            text: marker.clone(),
        },
        Duration::from_secs(20),
    );
    if let Err(error) = sent {
        return Err(format!("the marker was not delivered: {error}"));
    }
    while !receipts.saw_marker(target, generation, &marker) {
        if Instant::now() > deadline || !sleep_for(stop, Duration::from_millis(20)) {
            return Err("its follow stream did not show the marker".to_owned());
        }
    }
    Ok(())
}
