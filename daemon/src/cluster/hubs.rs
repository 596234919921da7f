//! The cluster's hubs (docs/cluster.md, "Membership"): each hub announces
//! itself in the `meshd_hubs` bucket every [`ANNOUNCE_EVERY`], and every
//! hub mirrors the bucket.
//!
//! NATS 2.9 expires a bucket's entries silently (no watch event), so the
//! mirror expires them itself, by its own clock, [`HUB_TTL`] after it last
//! heard of them: a hub that dies leaves every mirror within that time,
//! whatever the hubs' clocks say. Pure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a hub announces is what its devices are handed: its id, the URL
/// devices dial it at (`[cluster] advertise`) and its hub key, so a device
/// that trusts one hub of the cluster learns the others' keys from it.
pub use crate::hub_wire::PeerHub;

/// Hubs a hub hands its devices at most (beyond it, the first by id).
pub const MAX_HANDED_OUT: usize = 32;

/// How often a hub announces itself.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// A hub not heard of for this long has left the cluster: three missed
/// announcements and a margin.
pub const HUB_TTL: Duration = Duration::from_secs(8);

/// Hubs mirrored at most: announcements beyond it are ignored, so a flood
/// on the bus cannot grow a hub's memory without end.
pub const MAX_HUBS: usize = 256;

/// The hubs heard of lately.
#[derive(Debug, Default)]
pub struct HubMirror {
    hubs: HashMap<String, (PeerHub, Instant)>,
}

impl HubMirror {
    /// Takes an announcement heard at `now`.
    pub fn heard(&mut self, announcement: PeerHub, now: Instant) {
        if self.hubs.len() >= MAX_HUBS && !self.hubs.contains_key(&announcement.id) {
            return;
        }
        self.hubs
            .insert(announcement.id.clone(), (announcement, now));
    }

    /// Whether `hub` is mirrored, exactly as it announces itself now.
    pub fn knows(&self, hub: &PeerHub) -> bool {
        self.hubs
            .get(&hub.id)
            .is_some_and(|(known, _)| known == hub)
    }

    /// A hub said it left (its entry was deleted); whether it was here.
    pub fn left(&mut self, id: &str) -> bool {
        self.hubs.remove(id).is_some()
    }

    /// Forgets the hubs not heard of within [`HUB_TTL`] of `now`; their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .hubs
            .iter()
            .filter(|(_, (_, heard))| now.saturating_duration_since(*heard) >= HUB_TTL)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.hubs.remove(id);
        }
        gone
    }

    /// Every hub heard of within [`HUB_TTL`] of `now`, sorted by id.
    pub fn live(&self, now: Instant) -> Vec<PeerHub> {
        let mut live: Vec<PeerHub> = self
            .hubs
            .values()
            .filter(|(_, heard)| now.saturating_duration_since(*heard) < HUB_TTL)
            .map(|(announcement, _)| announcement.clone())
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        live
    }

    /// Forgets everything (a new snapshot follows).
    pub fn clear(&mut self) {
        self.hubs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(id: &str) -> PeerHub {
        PeerHub {
            id: id.to_owned(),
            url: format!("http://{id}.example:8080"),
            hub_key: "AAAA".to_owned(),
        }
    }

    #[test]
    fn a_hub_not_heard_of_within_the_ttl_is_gone_by_the_local_clock() {
        let mut mirror = HubMirror::default();
        let t0 = Instant::now();
        mirror.heard(hub("b"), t0);
        mirror.heard(hub("a"), t0 + Duration::from_secs(5));
        let ids = |mirror: &HubMirror, at| -> Vec<String> {
            mirror.live(at).into_iter().map(|hub| hub.id).collect()
        };
        assert_eq!(ids(&mirror, t0 + Duration::from_secs(6)), ["a", "b"]);
        assert_eq!(ids(&mirror, t0 + HUB_TTL), ["a"], "b expired");
        // Heard again: back, and its new URL wins.
        let mut moved = hub("b");
        moved.url = "http://b2.example:8080".into();
        mirror.heard(moved, t0 + HUB_TTL);
        assert_eq!(mirror.live(t0 + HUB_TTL)[1].url, "http://b2.example:8080");
        assert!(mirror.left("a"));
        assert!(!mirror.left("a"));
        assert_eq!(ids(&mirror, t0 + HUB_TTL), ["b"]);
        assert_eq!(mirror.expire(t0 + HUB_TTL * 3), ["b"]);
        assert!(mirror.hubs.is_empty());
    }
}
