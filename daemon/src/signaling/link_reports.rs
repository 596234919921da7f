//! The links the hub's devices report (docs/web.md, "Link reports"): the
//! latest report per device, for the web console's view of every pair.
//!
//! Pure and bounded: each report lists at most
//! [`crate::hub_wire::MAX_REPORTED_LINKS`] links, and the hub holds at most
//! [`MAX_LINKS_HELD`] in all, so a hub of 10,000 devices in a full mesh
//! keeps the counts of every device and the links of the first few hundred
//! to report. A report lives as long as the channel that brought it.
//!
//! The table is held behind an `Arc` (copied on write only while a page
//! holds a snapshot), so the console takes a [`Snapshot`] under the lock at
//! the cost of one reference count and builds its view of every pair after
//! releasing it: devices' reports never wait on a page being served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::device_id::DeviceId;
use crate::hub_wire::{MAX_REPORTED_LINKS, ReportedLink, ReportedPath};

/// Links held at most over all reports: every pair of a full mesh of about
/// 450 devices, some 20 MB at most.
pub const MAX_LINKS_HELD: usize = 200_000;

/// One device's latest report.
#[derive(Debug, Clone)]
struct Report {
    /// The channel that brought it: a report is forgotten with its channel,
    /// not with a newer channel's.
    serial: u64,
    received: SystemTime,
    counts: LinkCounts,
    links: Vec<HeldLink>,
}

/// A device's links by path, as it counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Peers with a direct link.
    pub direct: u32,
    /// Peers with only a relayed link.
    pub relayed: u32,
    /// Peers with no link.
    pub down: u32,
}

#[derive(Debug, Clone)]
struct HeldLink {
    peer: DeviceId,
    path: ReportedPath,
    rtt: Option<Duration>,
    since: Option<SystemTime>,
}

/// One pair of devices and the link between them, as the fresher of the
/// two ends reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The lower id.
    pub a: DeviceId,
    /// The higher id.
    pub b: DeviceId,
    /// The path.
    pub path: ReportedPath,
    /// Round-trip time, when measured.
    pub rtt: Option<Duration>,
    /// When the link came up on this path.
    pub since: Option<SystemTime>,
}

/// The latest report of every device with an open channel.
#[derive(Debug, Default)]
pub struct LinkReports {
    reports: Arc<HashMap<DeviceId, Arc<Report>>>,
    held: usize,
}

/// The reports at one moment, to read without holding the hub's lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    reports: Arc<HashMap<DeviceId, Arc<Report>>>,
}

impl LinkReports {
    /// Takes `device`'s report, received over channel `serial` at `now`,
    /// replacing its last; false (and nothing changes) when a newer channel
    /// of the device already reported, so the last words of a replaced
    /// channel cannot overwrite it. Entries naming an invalid id, the
    /// device itself or a peer already named are dropped; links beyond the
    /// bounds are not kept (the counts are).
    pub fn put(
        &mut self,
        device: &DeviceId,
        serial: u64,
        counts: LinkCounts,
        links: Vec<ReportedLink>,
        now: SystemTime,
    ) -> bool {
        // Channel serials only grow (channels.rs).
        if self
            .reports
            .get(device)
            .is_some_and(|held| held.serial > serial)
        {
            return false;
        }
        let reports = Arc::make_mut(&mut self.reports);
        if let Some(old) = reports.remove(device) {
            self.held -= old.links.len();
        }
        let room = MAX_LINKS_HELD
            .saturating_sub(self.held)
            .min(MAX_REPORTED_LINKS);
        let mut named = std::collections::HashSet::new();
        let held: Vec<HeldLink> = links
            .into_iter()
            .filter_map(|link| {
                let peer = DeviceId::parse(&link.peer).ok()?;
                (peer != *device && named.insert(peer.clone())).then(|| HeldLink {
                    peer,
                    path: link.path,
                    rtt: link.rtt_us.map(Duration::from_micros),
                    since: match link.path {
                        ReportedPath::Down => None,
                        _ => link
                            .up_secs
                            .and_then(|up| now.checked_sub(Duration::from_secs(up))),
                    },
                })
            })
            .take(room)
            .collect();
        self.held += held.len();
        reports.insert(
            device.clone(),
            Arc::new(Report {
                serial,
                received: now,
                counts,
                links: held,
            }),
        );
        true
    }

    /// Forgets `device`'s report if channel `serial` brought it.
    pub fn forget(&mut self, device: &DeviceId, serial: u64) {
        if self
            .reports
            .get(device)
            .is_some_and(|report| report.serial == serial)
            && let Some(report) = Arc::make_mut(&mut self.reports).remove(device)
        {
            self.held -= report.links.len();
        }
    }

    /// Links held over all reports.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }

    /// The reports as they are now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            reports: self.reports.clone(),
        }
    }
}

impl Snapshot {
    /// `device`'s counts, if it reported.
    pub fn counts(&self, device: &DeviceId) -> Option<LinkCounts> {
        self.reports.get(device).map(|report| report.counts)
    }

    /// Every reported pair, sorted, each once: when both ends reported it,
    /// as the fresher report says. At most `limit`; whether some were left
    /// out.
    pub fn pairs(&self, limit: usize) -> (Vec<Pair>, bool) {
        let mut pairs: BTreeMap<(&DeviceId, &DeviceId), (SystemTime, &HeldLink)> = BTreeMap::new();
        for (device, report) in self.reports.iter() {
            for link in &report.links {
                let key = if *device < link.peer {
                    (device, &link.peer)
                } else {
                    (&link.peer, device)
                };
                let fresher = pairs
                    .get(&key)
                    .is_none_or(|(received, _)| report.received > *received);
                if fresher {
                    pairs.insert(key, (report.received, link));
                }
            }
        }
        let truncated = pairs.len() > limit;
        let pairs = pairs
            .into_iter()
            .take(limit)
            .map(|((a, b), (_, link))| Pair {
                a: a.clone(),
                b: b.clone(),
                path: link.path,
                rtt: link.rtt,
                since: link.since,
            })
            .collect();
        (pairs, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> DeviceId {
        DeviceId::parse(text).unwrap()
    }

    fn link(peer: &str, path: ReportedPath, rtt_us: u64) -> ReportedLink {
        ReportedLink {
            peer: peer.to_owned(),
            path,
            rtt_us: Some(rtt_us),
            up_secs: Some(10),
        }
    }

    #[test]
    fn a_pair_is_served_once_as_its_fresher_end_saw_it() {
        let mut reports = LinkReports::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let counts = LinkCounts {
            direct: 1,
            ..LinkCounts::default()
        };
        reports.put(
            &id("b"),
            1,
            counts,
            vec![link("a", ReportedPath::Relayed, 900)],
            t0,
        );
        reports.put(
            &id("a"),
            2,
            counts,
            vec![
                link("b", ReportedPath::Direct, 500),
                link("c", ReportedPath::Down, 0),
            ],
            t0 + Duration::from_secs(1),
        );
        let (pairs, truncated) = reports.snapshot().pairs(10);
        assert!(!truncated);
        assert_eq!(pairs.len(), 2);
        assert_eq!((pairs[0].a.as_str(), pairs[0].b.as_str()), ("a", "b"));
        assert_eq!(pairs[0].path, ReportedPath::Direct);
        assert_eq!(pairs[0].rtt, Some(Duration::from_micros(500)));
        assert_eq!(pairs[0].since, Some(t0 - Duration::from_secs(9)));
        assert_eq!(pairs[1].path, ReportedPath::Down);
        assert_eq!(pairs[1].since, None, "a link that is down has no since");
        let (first, truncated) = reports.snapshot().pairs(1);
        assert!(truncated && first.len() == 1);
    }

    #[test]
    fn reports_go_with_their_channel_and_stay_bounded() {
        let mut reports = LinkReports::default();
        let now = SystemTime::now();
        let many: Vec<ReportedLink> = (0..MAX_REPORTED_LINKS + 50)
            .map(|n| link(&format!("p{n}"), ReportedPath::Direct, 1))
            .chain([
                link("x", ReportedPath::Direct, 1),
                link("x", ReportedPath::Down, 1),
                link("not an id!", ReportedPath::Direct, 1),
            ])
            .collect();
        reports.put(&id("x"), 1, LinkCounts::default(), many, now);
        assert_eq!(reports.held(), MAX_REPORTED_LINKS);
        // A newer channel's report replaces it; the old channel's close
        // does not take the new report with it.
        reports.put(
            &id("x"),
            2,
            LinkCounts::default(),
            vec![link("y", ReportedPath::Direct, 1)],
            now,
        );
        assert_eq!(reports.held(), 1);
        // The replaced channel's last report changes nothing.
        assert!(!reports.put(
            &id("x"),
            1,
            LinkCounts::default(),
            vec![link("w", ReportedPath::Down, 1)],
            now,
        ));
        let (pairs, _) = reports.snapshot().pairs(10);
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].b.as_str(), "y");
        reports.forget(&id("x"), 1);
        assert!(reports.snapshot().counts(&id("x")).is_some());
        reports.forget(&id("x"), 2);
        assert_eq!(
            (reports.snapshot().counts(&id("x")), reports.held()),
            (None, 0)
        );
        // Self-links and invalid ids are dropped.
        reports.put(
            &id("z"),
            3,
            LinkCounts::default(),
            vec![
                link("z", ReportedPath::Direct, 1),
                link("", ReportedPath::Direct, 1),
            ],
            now,
        );
        assert_eq!(reports.held(), 0);
    }

    #[test]
    fn the_total_held_is_bounded() {
        let mut reports = LinkReports::default();
        let now = SystemTime::now();
        let devices = MAX_LINKS_HELD / MAX_REPORTED_LINKS + 3;
        for n in 0..devices {
            let links = (0..MAX_REPORTED_LINKS)
                .map(|p| link(&format!("q{p}"), ReportedPath::Direct, 1))
                .collect();
            let counts = LinkCounts {
                direct: 5_000,
                ..LinkCounts::default()
            };
            reports.put(&id(&format!("d{n}")), n as u64, counts, links, now);
        }
        assert_eq!(reports.held(), MAX_LINKS_HELD);
        // Every device's counts are kept even when its links are not.
        let last = id(&format!("d{}", devices - 1));
        assert_eq!(
            reports.snapshot().counts(&last).map(|c| c.direct),
            Some(5_000)
        );
    }
}
