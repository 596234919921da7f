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

use serde::{Deserialize, Serialize};

/// How often a hub announces itself.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// A hub not heard of for this long has left the cluster: three missed
/// announcements and a margin.
pub const HUB_TTL: Duration = Duration::from_secs(8);

/// What a hub announces: enough for a device to move to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubAnnouncement {
    /// The hub's node id.
    pub id: String,
    /// Its URL, as devices dial it (`[cluster] advertise`).
    pub url: String,
    /// Its hub key, base64: a device that trusts one hub of the cluster
    /// learns the others' keys from it.
    pub hub_key: String,
}

/// The hubs heard of lately.
#[derive(Debug, Default)]
pub struct HubMirror {
    hubs: HashMap<String, (HubAnnouncement, Instant)>,
}

impl HubMirror {
    /// Takes an announcement heard at `now`.
    pub fn heard(&mut self, announcement: HubAnnouncement, now: Instant) {
        self.hubs
            .insert(announcement.id.clone(), (announcement, now));
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
    pub fn live(&self, now: Instant) -> Vec<HubAnnouncement> {
        let mut live: Vec<HubAnnouncement> = self
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

    fn hub(id: &str) -> HubAnnouncement {
        HubAnnouncement {
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
