//! Check 1 of the soak: every message sent accounted for, from what
//! meshctl showed of each device and what each meshd logged as stored
//! (docs/testing.md, "Accounting for messages").

use std::collections::HashMap;

use crate::cluster::{End, Generation};
use crate::inbox::{Counts, Observed};
use crate::traffic::{Outcome, Sent};

/// Per message: how it was accounted for.
#[derive(Debug, Default)]
pub struct Accounting {
    pub acked: usize,
    pub received: usize,
    pub missing: Vec<String>,
    pub duplicated: Vec<String>,
    pub from_killed_log: usize,
    pub again_after_restart: usize,
    pub unacked_received: usize,
    pub unacked: usize,
    pub wrong_device: Vec<String>,
    pub unknown: Vec<String>,
    pub wrong_sender: Vec<String>,
    pub garbage: Vec<String>,
}

/// Accounts for every message sent to the devices `names`, given what
/// meshctl showed of each device (`observed`) and what each process logged
/// as stored (`stored`, by name and generation).
pub fn account(
    names: &[&str],
    generations: &[Vec<Generation>],
    sent: &[Sent],
    observed: &[Observed],
    stored: &HashMap<(String, u32), Counts>,
) -> Accounting {
    let mut out = Accounting::default();
    let by_text: HashMap<&str, &Sent> =
        sent.iter().map(|sent| (sent.text.as_str(), sent)).collect();
    for sent in sent {
        let seen = &observed[sent.receiver];
        let name = names[sent.receiver];
        // Per generation of the receiver: shown by meshctl, and stored
        // (logged) by meshd.
        let copies: Vec<(&Generation, u32, u32)> = generations[sent.receiver]
            .iter()
            .map(|generation| {
                let shown = seen.shown(generation.number, &sent.text);
                let logged = stored
                    .get(&(name.to_owned(), generation.number))
                    .and_then(|counts| counts.get(&sent.text).copied())
                    .unwrap_or(0);
                (generation, shown, logged)
            })
            .filter(|(_, shown, logged)| *shown > 0 || *logged > 0)
            .collect();
        let Outcome::Acked { at } = sent.outcome else {
            out.unacked += 1;
            out.unacked_received += usize::from(!copies.is_empty());
            continue;
        };
        out.acked += 1;
        let shown = copies.iter().any(|(_, shown, _)| *shown > 0);
        // The inbox dies with its process: a message a killed process
        // stored (its log line is written before the Ack) counts even if
        // no stream showed it before the kill.
        let from_log = !shown
            && copies
                .iter()
                .any(|(generation, _, logged)| *logged > 0 && killed(generation));
        let what = format!(
            "`{}` from {} to {name}, acknowledged at +{at:.1}s (sent at +{:.1}s)",
            sent.text, names[sent.sender], sent.at
        );
        if !shown && !from_log {
            let logged: Vec<String> = copies
                .iter()
                .map(|(generation, _, logged)| {
                    format!("logged {logged}x by generation {}", generation.number)
                })
                .collect();
            out.missing.push(if logged.is_empty() {
                format!("{what}: in no log and shown by no meshctl")
            } else {
                format!("{what}: {} but shown by no meshctl", logged.join(", "))
            });
            continue;
        }
        out.received += 1;
        out.from_killed_log += usize::from(from_log);
        let twice = copies
            .iter()
            .find(|(_, shown, logged)| *shown > 1 || *logged > 1);
        if let Some((generation, shown, logged)) = twice {
            out.duplicated.push(format!(
                "{what}: generation {} shows it {shown}x, logged it {logged}x",
                generation.number
            ));
        } else if copies.len() > 1 {
            // Stored by two processes of the receiver: allowed only when
            // the earlier one was killed (its Ack may have died with it,
            // and so did its memory of the message).
            if copies[..copies.len() - 1]
                .iter()
                .all(|(generation, _, _)| killed(generation))
            {
                out.again_after_restart += 1;
            } else {
                let numbers: Vec<String> = copies
                    .iter()
                    .map(|(g, _, _)| g.number.to_string())
                    .collect();
                out.duplicated.push(format!(
                    "{what}: stored by generations {} of {name}, the earlier not killed",
                    numbers.join(", ")
                ));
            }
        }
    }
    for (index, observed) in observed.iter().enumerate() {
        let name = names[index];
        let mut seen: Vec<(u32, &String)> = observed.texts().collect();
        seen.sort();
        seen.dedup();
        for (generation, text) in seen {
            match by_text.get(text.as_str()) {
                None => out
                    .unknown
                    .push(format!("{name} (generation {generation}) shows `{text}`")),
                Some(sent) if sent.receiver != index => out.wrong_device.push(format!(
                    "{name} shows `{text}`, which was sent to {}",
                    names[sent.receiver]
                )),
                Some(_) => {}
            }
        }
        out.wrong_sender
            .extend(observed.wrong_sender.iter().map(|w| format!("{name}: {w}")));
        out.garbage
            .extend(observed.garbage.iter().map(|g| format!("{name}: {g}")));
    }
    out
}

/// Whether a generation ended by SIGKILL (a fault) or on its own.
fn killed(generation: &Generation) -> bool {
    matches!(generation.ended, Some((_, End::Killed | End::Crashed(_))))
}
