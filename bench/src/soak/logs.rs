//! Reading what every meshd process wrote on stderr (one file per
//! generation): error-level lines, panics, anything that is not a log line,
//! warnings by message, and the `message received` events, which say what
//! each process stored in its inbox.

use std::collections::{BTreeMap, HashMap};
use std::fs;

use crate::cluster::Node;
use crate::inbox::Counts;

/// A line of a meshd log, and where it is from.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// `hub`, `d3`, ...
    pub node: String,
    /// The process's generation.
    pub generation: u32,
    /// The line.
    pub line: String,
}

/// What the logs hold.
#[derive(Debug, Default)]
pub struct Scan {
    /// Lines at level ERROR. No injected fault explains one (see
    /// docs/testing.md): they are all reported.
    pub errors: Vec<LogLine>,
    /// Lines that mention a panic.
    pub panics: Vec<LogLine>,
    /// Lines that are not log events (`meshd: ...` on a failed start, the
    /// rest of a panic message, ...).
    pub other: Vec<LogLine>,
    /// WARN lines counted by message.
    pub warnings: BTreeMap<String, usize>,
    /// `message received` events per (device, generation): what that
    /// process stored, each stored message logged once.
    pub stored: HashMap<(String, u32), Counts>,
    /// Log lines read.
    pub lines: u64,
    /// Files that could not be read.
    pub unreadable: Vec<String>,
}

/// Reads the log of every generation of every node.
pub fn scan(nodes: &[&Node]) -> Scan {
    let mut scan = Scan::default();
    for node in nodes {
        for generation in node.generations() {
            let text = match fs::read(&generation.log) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(error) => {
                    scan.unreadable
                        .push(format!("{}: {error}", generation.log.display()));
                    continue;
                }
            };
            for line in text.lines() {
                scan.line(&node.name, generation.number, line);
            }
        }
    }
    scan
}

impl Scan {
    fn line(&mut self, node: &str, generation: u32, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        self.lines += 1;
        let at = || LogLine {
            node: node.to_owned(),
            generation,
            line: line.to_owned(),
        };
        if line.contains("panicked") {
            self.panics.push(at());
        }
        let Some((level, rest)) = event(line) else {
            self.other.push(at());
            return;
        };
        match level {
            "ERROR" => self.errors.push(at()),
            "WARN" => *self.warnings.entry(message(rest)).or_insert(0) += 1,
            _ => {}
        }
        if let Some(text) = rest
            .strip_prefix("message received ")
            .and_then(|fields| fields.split_once("text="))
            .map(|(_, text)| text)
        {
            *self
                .stored
                .entry((node.to_owned(), generation))
                .or_default()
                .entry(text.to_owned())
                .or_insert(0) += 1;
        }
    }
}

/// The level and the rest of a log event line
/// (`2026-12-02T16:42:15.658449Z ERROR rest`), or `None` for any other line.
fn event(line: &str) -> Option<(&str, &str)> {
    let (stamp, after) = line.split_once(' ')?;
    if !(stamp.ends_with('Z')
        && stamp.contains('T')
        && stamp.starts_with(|c: char| c.is_ascii_digit()))
    {
        return None;
    }
    let after = after.trim_start();
    let (level, rest) = after.split_once(' ')?;
    matches!(level, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE")
        .then_some((level, rest.trim_start()))
}

/// The message of an event: the words before its first `key=value` field.
fn message(rest: &str) -> String {
    rest.split(' ')
        .take_while(|word| !word.contains('='))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events() {
        let mut scan = Scan::default();
        scan.line(
            "d1",
            1,
            "2026-12-02T16:52:06.711719Z  INFO message received from=d2 bytes=13 text=soak s=d2 n=1",
        );
        scan.line(
            "d1",
            1,
            "2026-12-02T16:52:06.711719Z  WARN signaling server unreachable; retrying with backoff hub=http://127.0.0.1:7100 error=x",
        );
        scan.line(
            "d1",
            1,
            "2026-12-02T16:42:15.658449Z ERROR link task panicked; it will be restarted peer=d2",
        );
        scan.line(
            "d1",
            1,
            "meshd: binding mesh listener: Address already in use",
        );
        assert_eq!(
            scan.stored[&("d1".to_owned(), 1)].get("soak s=d2 n=1"),
            Some(&1)
        );
        assert_eq!(
            scan.warnings
                .get("signaling server unreachable; retrying with backoff"),
            Some(&1)
        );
        assert_eq!(scan.errors.len(), 1);
        assert_eq!(scan.panics.len(), 1);
        assert_eq!(scan.other.len(), 1);
    }
}
