//! Mesh traffic: every device sends to the others with acknowledgement,
//! `meshctl --socket S send DEVICE TEXT`, each text unique
//! (`soak s=<sender> n=<seq>`). The ledger keeps every attempt and how it
//! ended; exit 0 means the receiver acknowledged the message.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cluster::{Bins, Node, State};
use crate::util::{Clock, Rng, lock, run, sleep_for};

/// How long one `meshctl send` may take before it is killed: meshd answers
/// within 15 s at the latest, plus a 10 s freeze of the sender.
const SEND_DEADLINE: Duration = Duration::from_secs(40);

/// How a send ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Still waiting.
    Pending,
    /// meshctl exited 0: the receiver acknowledged.
    Acked {
        /// When meshctl returned (run seconds).
        at: f64,
    },
    /// meshctl failed, or was killed at the deadline.
    Failed {
        /// Its message, or what happened.
        reason: String,
    },
}

/// One message sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Index of the sending device (0-based among the devices).
    pub sender: usize,
    /// Index of the receiving device.
    pub receiver: usize,
    /// The unique text.
    pub text: String,
    /// When meshctl was started (run seconds).
    pub at: f64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Every message sent.
#[derive(Default)]
pub struct Ledger {
    sent: Mutex<Vec<Sent>>,
}

impl Ledger {
    /// Everything so far.
    pub fn all(&self) -> Vec<Sent> {
        lock(&self.sent).clone()
    }

    /// Acknowledged messages so far.
    pub fn acked(&self) -> usize {
        lock(&self.sent)
            .iter()
            .filter(|sent| matches!(sent.outcome, Outcome::Acked { .. }))
            .count()
    }

    /// Checked messages to device `receiver` still awaiting their answer.
    pub fn pending_to(&self, receiver: usize) -> usize {
        lock(&self.sent)
            .iter()
            .rev()
            .take(4096)
            .filter(|sent| sent.receiver == receiver && matches!(sent.outcome, Outcome::Pending))
            .count()
    }

    fn push(&self, sent: Sent) -> usize {
        let mut all = lock(&self.sent);
        all.push(sent);
        all.len() - 1
    }

    fn set(&self, index: usize, outcome: Outcome) {
        if let Some(sent) = lock(&self.sent).get_mut(index) {
            sent.outcome = outcome;
        }
    }
}

/// The text of message `seq` from `sender`.
pub fn text(sender: &str, seq: u64) -> String {
    format!("soak s={sender} n={seq}")
}

/// Whether `text` is one of the checked messages (not an inbox filler).
pub fn is_traffic(text: &str) -> bool {
    text.starts_with("soak s=")
}

/// The sender named in a soak text, a filler or a marker (`fill.rs`), if
/// it is one.
pub fn sender_of(text: &str) -> Option<&str> {
    text.strip_prefix("soak s=")
        .or_else(|| text.strip_prefix("fill s="))
        .or_else(|| text.strip_prefix("mark s="))?
        .split(' ')
        .next()
}

/// One device's sending loop, until `stop`: a random other device, a new
/// text, wait for meshctl, then a pause of 300-700 ms.
pub fn sender(
    index: usize,
    devices: &[&Node],
    bins: &Bins,
    clock: &Clock,
    ledger: &Ledger,
    seed: u64,
    stop: &AtomicBool,
) {
    let me = devices[index];
    let mut rng = Rng::new(seed, 100 + index as u64);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if me.view().state != State::Running {
            sleep_for(stop, Duration::from_millis(100));
            continue;
        }
        let mut receiver = rng.below(devices.len() - 1);
        if receiver >= index {
            receiver += 1;
        }
        // A device whose caches are being filled gets no traffic (fill.rs).
        if devices[receiver].filling.load(Ordering::SeqCst) {
            sleep_for(stop, Duration::from_millis(50));
            continue;
        }
        seq += 1;
        let text = text(&me.name, seq);
        let slot = ledger.push(Sent {
            sender: index,
            receiver,
            text: text.clone(),
            at: clock.now(),
            outcome: Outcome::Pending,
        });
        // The fill may have begun between the check and the record: it waits
        // for recorded messages, so look again after recording.
        if devices[receiver].filling.load(Ordering::SeqCst) {
            ledger.set(
                slot,
                Outcome::Failed {
                    reason: "not sent: the receiver's caches were being filled".to_owned(),
                },
            );
            continue;
        }
        let mut command = bins.meshctl(&me.socket);
        command.args(["send", &devices[receiver].name, &text]);
        let outcome = match run(&mut command, None, SEND_DEADLINE) {
            Ok(output) if output.success() => Outcome::Acked { at: clock.now() },
            Ok(output) => Outcome::Failed {
                reason: output.reason(),
            },
            Err(error) => Outcome::Failed { reason: error },
        };
        ledger.set(slot, outcome);
        let pause = rng.range(0.3, 0.7);
        sleep_for(stop, Duration::from_secs_f64(pause));
    }
}

/// Failed sends grouped by reason, device names and numbers masked:
/// `no link to D: ...` rather than one line per device.
pub fn failure_reasons(sent: &[Sent]) -> BTreeMap<String, usize> {
    let mut reasons = BTreeMap::new();
    for record in sent {
        if let Outcome::Failed { reason } = &record.outcome {
            *reasons.entry(mask(reason)).or_insert(0) += 1;
        }
    }
    reasons
}

/// `reason` with device ids, addresses and numbers replaced, cut to 100
/// characters, so that alike failures count together.
fn mask(reason: &str) -> String {
    let reason = reason.strip_prefix("meshctl: ").unwrap_or(reason);
    let mut out = String::new();
    let mut chars = reason.chars().peekable();
    let mut previous: Option<char> = None;
    while let Some(c) = chars.next() {
        let starts_word = previous.is_none_or(|p| !p.is_alphanumeric());
        if c == 'd' && starts_word && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('D');
            previous = Some('D');
            continue;
        }
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|n| n.is_ascii_digit() || *n == '.' || *n == ':')
            {
                chars.next();
            }
            out.push('N');
            previous = Some('N');
            continue;
        }
        out.push(c);
        previous = Some(c);
    }
    out.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_devices_and_numbers() {
        assert_eq!(
            mask("meshctl: no link to d3: 127.0.1.3:7113: Connection refused (os error 111)"),
            "no link to D: N Connection refused (os error N)"
        );
        assert_eq!(
            mask("d12 did not acknowledge within 5s"),
            "D did not acknowledge within Ns"
        );
    }

    #[test]
    fn texts_name_their_sender() {
        assert_eq!(sender_of(&text("d4", 17)), Some("d4"));
        assert_eq!(sender_of("fill s=d2 n=5"), Some("d2"));
        assert_eq!(sender_of("mark s=d2 g=1 t=3"), Some("d2"));
        assert!(!is_traffic("fill s=d2 n=5"));
        assert_eq!(sender_of("hello"), None);
    }
}
