//! Link reports (docs/web.md, "Link reports"): this device tells each of
//! its hubs, over the channel, how its links go, so the hub's web console
//! can show every pair.
//!
//! One task for all hubs. It looks at the peers once a second and sends a
//! hub a report when the hub has none from this channel yet, or when the
//! links changed materially (a path, the set of peers, an RTT off by a
//! quarter) and the last report is old enough: 2 s, and longer in a large
//! mesh ([`min_gap`]), so that a storm of joins in a mesh of thousands
//! costs each hub a report per device every few tens of seconds, not a
//! report per change.

use std::sync::Arc;
use std::time::Duration;

use meshd_ipc::LinkState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Mesh;
use crate::hub_wire::{MAX_REPORTED_LINKS, MAX_TO_HUB_BYTES, ReportedLink, ReportedPath, ToHub};
use crate::sync::lock;

/// How often the peers are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Reports to one hub are at least this far apart.
const MIN_GAP: Duration = Duration::from_secs(2);

/// Beyond this many peers the gap grows with the mesh (one more second per
/// this many peers), so a hub's report load stays flat as the mesh grows.
const PEERS_PER_SECOND_OF_GAP: usize = 100;

/// The longest gap between reports of changed links.
const MAX_GAP: Duration = Duration::from_secs(60);

/// An RTT that moved by more than this share of the last reported one is a
/// change worth a report.
const RTT_CHANGE: f64 = 0.25;

/// The gap between two reports to one hub, for a mesh of `peers`.
fn min_gap(peers: usize) -> Duration {
    let scaled = Duration::from_secs((peers / PEERS_PER_SECOND_OF_GAP) as u64);
    scaled.clamp(MIN_GAP, MAX_GAP)
}

/// This device's links as one report says them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    direct: u32,
    relayed: u32,
    down: u32,
    /// Sorted by peer; all of them, however many (the message carries the
    /// first [`MAX_REPORTED_LINKS`]).
    links: Vec<(String, ReportedPath, Option<Duration>, Option<Duration>)>,
}

impl Report {
    /// Builds a report from each peer's id, state, RTT and time on its path.
    pub fn from_peers(
        peers: impl IntoIterator<Item = (String, LinkState, Option<Duration>, Option<Duration>)>,
    ) -> Report {
        let mut report = Report::default();
        for (peer, state, rtt, up) in peers {
            let path = match state {
                LinkState::Direct => {
                    report.direct += 1;
                    ReportedPath::Direct
                }
                LinkState::Relayed => {
                    report.relayed += 1;
                    ReportedPath::Relayed
                }
                LinkState::Connecting | LinkState::Down => {
                    report.down += 1;
                    ReportedPath::Down
                }
                LinkState::Local => continue,
            };
            let (rtt, up) = match path {
                ReportedPath::Down => (None, None),
                _ => (rtt, up),
            };
            report.links.push((peer, path, rtt, up));
        }
        report.links.sort_by(|a, b| a.0.cmp(&b.0));
        report
    }

    /// Peers in the report.
    pub fn peers(&self) -> usize {
        self.links.len()
    }

    /// Differs from `sent` enough to be worth a report: another peer or
    /// path, or an RTT that moved by more than [`RTT_CHANGE`].
    pub fn differs_from(&self, sent: &Report) -> bool {
        if self.links.len() != sent.links.len() {
            return true;
        }
        self.links
            .iter()
            .zip(&sent.links)
            .any(|(now, then)| now.0 != then.0 || now.1 != then.1 || rtt_moved(now.2, then.2))
    }

    /// The channel message: counts, and as many links as fit in
    /// [`MAX_REPORTED_LINKS`] and [`MAX_TO_HUB_BYTES`].
    pub fn message(&self) -> ToHub {
        let entries = |count: usize| {
            self.links
                .iter()
                .take(count)
                .map(|(peer, path, rtt, up)| ReportedLink {
                    peer: peer.clone(),
                    path: *path,
                    rtt_us: rtt.map(|rtt| u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
                    up_secs: up.map(|up| up.as_secs()),
                })
                .collect::<Vec<_>>()
        };
        let message = |count: usize| ToHub::Links {
            direct: self.direct,
            relayed: self.relayed,
            down: self.down,
            links: entries(count),
        };
        let fits = |count: usize| {
            serde_json::to_vec(&message(count)).is_ok_and(|bytes| bytes.len() <= MAX_TO_HUB_BYTES)
        };
        let most = self.links.len().min(MAX_REPORTED_LINKS);
        if fits(most) {
            return message(most);
        }
        // Only a mesh of long ids gets here: the most links that fit, by
        // bisection (fits(low) holds, fits(high) does not).
        let (mut low, mut high) = (0, most);
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if fits(middle) {
                low = middle;
            } else {
                high = middle;
            }
        }
        message(low)
    }
}

fn rtt_moved(now: Option<Duration>, then: Option<Duration>) -> bool {
    match (now, then) {
        (Some(now), Some(then)) => {
            let (now, then) = (now.as_secs_f64(), then.as_secs_f64());
            (now - then).abs() > then * RTT_CHANGE && (now - then).abs() > 0.000_5
        }
        (None, None) => false,
        _ => true,
    }
}

/// What was last sent to one hub.
struct Sent {
    channel: u64,
    at: Instant,
    report: Report,
}

/// Sends link reports to every hub until `cancel` fires.
pub async fn report_links(mesh: Arc<Mesh>, cancel: CancellationToken) {
    let mut sent: Vec<Option<Sent>> = mesh.local.hubs.iter().map(|_| None).collect();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = current(&mesh);
        let now = Instant::now();
        let gap = min_gap(report.peers());
        for (hub, last) in mesh.local.hubs.iter().zip(sent.iter_mut()) {
            let Some(channel) = hub.open_channel() else {
                continue;
            };
            let due = match last {
                None => true,
                Some(last) if last.channel != channel => true,
                Some(last) => {
                    now.duration_since(last.at) >= gap && report.differs_from(&last.report)
                }
            };
            // A full queue is tried again at the next look.
            if due && hub.send(report.message()) {
                *last = Some(Sent {
                    channel,
                    at: now,
                    report: report.clone(),
                });
            }
        }
    }
}

/// The report of this device's links now.
fn current(mesh: &Mesh) -> Report {
    let now = Instant::now();
    let peers = lock(&mesh.peers);
    Report::from_peers(peers.iter().map(|(id, handle)| {
        let view = handle.view();
        (
            id.to_string(),
            view.state,
            view.rtt,
            view.since.map(|since| now.saturating_duration_since(since)),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn a_report_counts_every_peer_and_lists_them_sorted() {
        let report = Report::from_peers([
            ("c".to_owned(), LinkState::Relayed, ms(40), ms(5_000)),
            ("a".to_owned(), LinkState::Direct, ms(2), ms(9_000)),
            ("b".to_owned(), LinkState::Connecting, ms(3), ms(1)),
            ("d".to_owned(), LinkState::Down, None, None),
        ]);
        let ToHub::Links {
            direct,
            relayed,
            down,
            links,
        } = report.message()
        else {
            panic!("not a links message");
        };
        assert_eq!((direct, relayed, down), (1, 1, 2));
        let peers: Vec<&str> = links.iter().map(|link| link.peer.as_str()).collect();
        assert_eq!(peers, ["a", "b", "c", "d"]);
        assert_eq!(links[0].rtt_us, Some(2_000));
        assert_eq!(links[0].up_secs, Some(9));
        assert_eq!(
            (links[1].path, links[1].rtt_us, links[1].up_secs),
            (ReportedPath::Down, None, None),
            "a link that is not up has no RTT or age"
        );
    }

    #[test]
    fn only_material_changes_make_a_new_report() {
        let base = Report::from_peers([
            ("a".to_owned(), LinkState::Direct, ms(10), ms(1_000)),
            ("b".to_owned(), LinkState::Relayed, ms(50), ms(1_000)),
        ]);
        let older = Report::from_peers([
            ("a".to_owned(), LinkState::Direct, ms(11), ms(61_000)),
            ("b".to_owned(), LinkState::Relayed, ms(55), ms(61_000)),
        ]);
        assert!(
            !older.differs_from(&base),
            "age and RTT jitter are not news"
        );
        let moved = Report::from_peers([
            ("a".to_owned(), LinkState::Direct, ms(10), ms(1_000)),
            ("b".to_owned(), LinkState::Direct, ms(5), ms(1)),
        ]);
        assert!(moved.differs_from(&base));
        let slower = Report::from_peers([
            ("a".to_owned(), LinkState::Direct, ms(20), ms(1_000)),
            ("b".to_owned(), LinkState::Relayed, ms(50), ms(1_000)),
        ]);
        assert!(slower.differs_from(&base));
        let joined = Report::from_peers([
            ("a".to_owned(), LinkState::Direct, ms(10), ms(1_000)),
            ("b".to_owned(), LinkState::Relayed, ms(50), ms(1_000)),
            ("c".to_owned(), LinkState::Connecting, None, None),
        ]);
        assert!(joined.differs_from(&base));
    }

    #[test]
    fn a_large_mesh_reports_counts_and_the_links_that_fit() {
        let long = "x".repeat(60);
        let report = Report::from_peers(
            (0..1_000).map(|n| (format!("{long}{n:03}"), LinkState::Direct, ms(1), ms(1))),
        );
        let message = report.message();
        let bytes = serde_json::to_vec(&message).unwrap();
        assert!(bytes.len() <= MAX_TO_HUB_BYTES, "{}", bytes.len());
        let ToHub::Links { direct, links, .. } = message else {
            panic!("not a links message");
        };
        assert_eq!(direct, 1_000);
        assert!(!links.is_empty() && links.len() <= MAX_REPORTED_LINKS);
        // As many as fit: one more would pass the limit.
        let one_more = ToHub::Links {
            direct: 1_000,
            relayed: 0,
            down: 0,
            links: {
                let mut more = links.clone();
                more.push(more[0].clone());
                more
            },
        };
        assert!(serde_json::to_vec(&one_more).unwrap().len() > MAX_TO_HUB_BYTES);
        let short = Report::from_peers(
            (0..1_000).map(|n| (format!("d{n:04}"), LinkState::Direct, ms(1), ms(1))),
        );
        let ToHub::Links { links, .. } = short.message() else {
            panic!("not a links message");
        };
        assert_eq!(links.len(), MAX_REPORTED_LINKS);
    }

    #[test]
    fn the_gap_grows_with_the_mesh() {
        assert_eq!(min_gap(10), MIN_GAP);
        assert_eq!(min_gap(200), MIN_GAP);
        assert_eq!(min_gap(1_000), Duration::from_secs(10));
        assert_eq!(min_gap(100_000), MAX_GAP);
    }
}
