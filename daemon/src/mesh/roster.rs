//! The devices the signaling servers list, merged.
//!
//! Each hub's last answer is kept on its own, so that losing one hub loses
//! nothing the others still list: Nebula's lighthouses work the same way. A
//! hub that stops answering does not take its devices away either: its last
//! answer stays in force, as Tailscale keeps its last network map while the
//! control server is away, so a hub outage never touches links that work.
//! A device leaves the roster only when a hub that answers stops listing it
//! (after one more TTL of grace, for a hub that restarted and lists nobody
//! yet).
//!
//! Hubs that answer (fresh) decide for every device they list; the last
//! answers of silent (stale) hubs count for the devices no fresh hub lists,
//! unless a fresh hub dropped the device after the stale hub last spoke. A
//! device's key must be the same on every hub that decides for it; hubs that
//! disagree leave the device without a trusted key, and no link is made.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::device_id::DeviceId;
use crate::public_key::PublicKey;

use crate::hub_wire::{ListedDevice, MAX_DEVICES_PER_LIST, MAX_ENDPOINTS};

/// How long a hub's departures are remembered.
const DEPARTED_KEPT: Duration = Duration::from_secs(86_400);

/// A device as a hub lists it, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// Registered address.
    pub addr: SocketAddr,
    /// Where the hub saw it register from.
    pub observed: String,
    /// Its key, if it registered one.
    pub pubkey: Option<PublicKey>,
    /// RFC 3339 of its last registration.
    pub last_seen: String,
    /// Further endpoints it advertised.
    pub endpoints: Vec<SocketAddr>,
}

impl Listing {
    /// Validates a hub's entry; `None` for entries no device could have
    /// registered (the hub checks the same rules).
    pub fn from_listed(device: &ListedDevice) -> Option<(DeviceId, Listing)> {
        let id = DeviceId::parse(&device.id).ok()?;
        let addr = device.addr.parse().ok()?;
        let pubkey = match &device.pubkey {
            Some(key) => Some(PublicKey::from_base64(key).ok()?),
            None => None,
        };
        let endpoints = device
            .endpoints
            .iter()
            .filter_map(|endpoint| endpoint.parse().ok())
            .take(MAX_ENDPOINTS)
            .collect();
        Some((
            id,
            Listing {
                addr,
                observed: device.observed.clone(),
                pubkey,
                last_seen: device.last_seen.clone(),
                endpoints,
            },
        ))
    }

    /// The address the hub observed, if it is one: the device's public
    /// endpoint.
    pub fn public_endpoint(&self) -> Option<SocketAddr> {
        self.observed.parse().ok()
    }

    /// The device advertises `endpoint` itself: a hub that observes it
    /// there sees it without a NAT in between.
    pub fn advertises(&self, endpoint: SocketAddr) -> bool {
        self.addr == endpoint || self.endpoints.contains(&endpoint)
    }

    /// The public endpoint to reach through a NAT by hole punching: the
    /// address the hub observed, unless the device advertises it itself
    /// (then it is reachable as it is, and is dialled like any endpoint).
    pub fn punch_endpoint(&self) -> Option<SocketAddr> {
        self.public_endpoint()
            .filter(|public| !self.advertises(*public))
    }

    /// Where to dial, best first, without repeats: the advertised endpoints
    /// (local and LAN addresses), the registered address, then the address
    /// the hub observed (the public endpoint: the NAT mapping of the
    /// device's mesh port).
    pub fn dial_candidates(&self) -> Vec<SocketAddr> {
        let observed = self.public_endpoint();
        let mut candidates: Vec<SocketAddr> = Vec::with_capacity(self.endpoints.len() + 2);
        for endpoint in self
            .endpoints
            .iter()
            .chain([&self.addr])
            .chain(observed.as_ref())
        {
            if !candidates.contains(endpoint) && !endpoint.ip().is_unspecified() {
                candidates.push(*endpoint);
            }
        }
        candidates
    }
}

/// What the hubs say about a device's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Every hub that lists the device agrees on this key.
    Trusted(PublicKey),
    /// The device registered no key: it cannot have links.
    Missing,
    /// Hubs list different keys for the id: trust neither.
    Conflict,
}

/// A device in the merged view.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The freshest listing across hubs.
    pub listing: Listing,
    /// The key verdict.
    pub key: KeyStatus,
}

struct HubView {
    /// What the hub lists, as this device last heard it: its last whole
    /// list with every delta since applied.
    listed: HashMap<DeviceId, Listing>,
    /// Devices a whole list left out, with when the hub last listed them:
    /// kept for one TTL from then (a hub that restarted lists nobody yet).
    held: HashMap<DeviceId, (Listing, Instant)>,
    /// Devices this hub listed and then stopped listing, with when it
    /// dropped them: they overrule a silent hub's older answer.
    departed: HashMap<DeviceId, Instant>,
    fetched: Instant,
    ttl: Duration,
}

impl HubView {
    fn new(ttl: Duration, now: Instant) -> Self {
        HubView {
            listed: HashMap::new(),
            held: HashMap::new(),
            departed: HashMap::new(),
            fetched: now,
            ttl,
        }
    }

    /// The hub answered within its TTL.
    fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.fetched) <= self.ttl
    }

    /// Every device the view holds, listed or held.
    fn devices(&self) -> impl Iterator<Item = (&DeviceId, &Listing)> {
        self.listed
            .iter()
            .chain(self.held.iter().map(|(id, (listing, _))| (id, listing)))
    }

    /// The hub answers at `now`, and its list stands. A hub that was
    /// silent never said it stopped listing anyone: what it held gets its
    /// grace from now, not from before the outage.
    fn confirm(&mut self, ttl: Duration, now: Instant) {
        if !self.is_fresh(now) {
            for (_, since) in self.held.values_mut() {
                *since = now;
            }
        }
        self.fetched = now;
        self.ttl = ttl;
        self.let_go(now);
    }

    /// The hub no longer lists `id`.
    fn depart(&mut self, id: &DeviceId, now: Instant) {
        let listed = self.listed.remove(id).is_some();
        if listed || self.held.remove(id).is_some() {
            self.departed.insert(id.clone(), now);
        }
    }

    /// Lets held devices go once their TTL of grace ran out, and gives
    /// back the memory of a crowd that left.
    fn let_go(&mut self, now: Instant) {
        let ttl = self.ttl;
        let departed = &mut self.departed;
        self.held.retain(|id, (_, since)| {
            let keep = now.saturating_duration_since(*since) < ttl;
            if !keep {
                departed.insert(id.clone(), now);
            }
            keep
        });
        // Departures matter only against a silent hub's older list; a day
        // covers any outage worth keeping a list through.
        departed.retain(|_, at| now.saturating_duration_since(*at) < DEPARTED_KEPT);
        // Bounded like the view; the oldest departures matter least.
        while departed.len() > MAX_DEVICES_PER_LIST {
            let Some(oldest) = departed
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            departed.remove(&oldest);
        }
        shrink(&mut self.listed);
        shrink(&mut self.held);
        shrink(&mut self.departed);
    }
}

fn shrink<V>(map: &mut HashMap<DeviceId, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

/// Every hub's last answer, by the hub's place in `[mesh] signaling`
/// (`HubId::index`).
pub struct Roster {
    hubs: Vec<Option<HubView>>,
}

impl Roster {
    /// An empty roster for `hubs` signaling servers.
    pub fn new(hubs: usize) -> Self {
        Roster {
            hubs: (0..hubs).map(|_| None).collect(),
        }
    }

    /// Replaces hub `index`'s view with its whole list.
    ///
    /// A device the hub stops listing stays in its view for one more TTL:
    /// a hub that restarted lists nobody until the devices register again,
    /// a second later, and its empty list must not close working links. A
    /// device that really left is gone after that TTL.
    pub fn update(&mut self, index: usize, devices: &[ListedDevice], ttl: Duration, now: Instant) {
        let Some(slot) = self.hubs.get_mut(index) else {
            return;
        };
        let view = slot.get_or_insert_with(|| HubView::new(ttl, now));
        // When the hub last said its list stood (from now, if it was
        // silent since).
        let last_confirmed = if view.is_fresh(now) {
            view.fetched
        } else {
            now
        };
        view.confirm(ttl, now);
        let mut listed: HashMap<DeviceId, Listing> = devices
            .iter()
            .take(MAX_DEVICES_PER_LIST)
            .filter_map(Listing::from_listed)
            .collect();
        for id in listed.keys() {
            view.held.remove(id);
            view.departed.remove(id);
        }
        // What the last list had and this one lacks was last listed when
        // the hub last confirmed its list.
        std::mem::swap(&mut view.listed, &mut listed);
        for (id, listing) in listed {
            if !view.listed.contains_key(&id) {
                view.held.insert(id, (listing, last_confirmed));
            }
        }
        view.let_go(now);
    }

    /// Applies a delta from hub `index` to its view: the devices added or
    /// changed, and those it no longer lists (gone at once: the hub said
    /// so, not a list that may be a restarted hub's). Ignored before the
    /// hub's first whole list.
    pub fn apply_delta(
        &mut self,
        index: usize,
        devices: &[ListedDevice],
        removed: &[String],
        ttl: Duration,
        now: Instant,
    ) {
        let Some(Some(view)) = self.hubs.get_mut(index) else {
            return;
        };
        view.confirm(ttl, now);
        for (id, listing) in devices.iter().filter_map(Listing::from_listed) {
            if view.listed.len() >= MAX_DEVICES_PER_LIST && !view.listed.contains_key(&id) {
                continue;
            }
            view.held.remove(&id);
            view.departed.remove(&id);
            view.listed.insert(id, listing);
        }
        for id in removed.iter().filter_map(|id| DeviceId::parse(id).ok()) {
            view.depart(&id, now);
        }
        view.let_go(now);
    }

    /// Hub `index` answered (a heartbeat): its list stands as this device
    /// holds it.
    pub fn confirm(&mut self, index: usize, ttl: Duration, now: Instant) {
        if let Some(Some(view)) = self.hubs.get_mut(index) {
            view.confirm(ttl, now);
        }
    }

    /// Drops `id` from hub `index`'s view at once: the device left cleanly
    /// (told its hub so over its own channel), so no grace is owed.
    pub fn forget(&mut self, index: usize, id: &DeviceId, now: Instant) {
        if let Some(Some(view)) = self.hubs.get_mut(index) {
            view.depart(id, now);
        }
    }

    /// The merged view at `now`, sorted by id: what the hubs that answer
    /// list, and what silent hubs last listed that no answering hub has
    /// dropped since (see the module docs).
    pub fn merged(&self, now: Instant) -> BTreeMap<DeviceId, Merged> {
        let (fresh, stale): (Vec<&HubView>, Vec<&HubView>) = self
            .hubs
            .iter()
            .flatten()
            .partition(|hub| hub.is_fresh(now));
        let mut merged = merge(fresh.iter().copied(), |_, _| true);
        let decided: Vec<DeviceId> = merged.keys().cloned().collect();
        let from_stale = merge(stale.iter().copied(), |id, stale_hub| {
            decided.binary_search(id).is_err()
                && !fresh.iter().any(|hub| {
                    hub.departed
                        .get(id)
                        .is_some_and(|dropped| *dropped > stale_hub.fetched)
                })
        });
        merged.extend(from_stale);
        merged
    }

    /// The hubs (by index) whose list holds `id` now, held ones included.
    pub fn listed_by(&self, id: &DeviceId) -> Vec<usize> {
        self.hubs
            .iter()
            .enumerate()
            .filter(|(_, hub)| {
                hub.as_ref()
                    .is_some_and(|hub| hub.listed.contains_key(id) || hub.held.contains_key(id))
            })
            .map(|(index, _)| index)
            .collect()
    }

    /// The key verdict for one device, or `None` when no hub lists it.
    pub fn key_of(&self, id: &DeviceId, now: Instant) -> Option<KeyStatus> {
        self.merged(now).get(id).map(|merged| merged.key)
    }
}

/// Merges the devices of `hubs` that `counts` lets through.
fn merge<'a>(
    hubs: impl Iterator<Item = &'a HubView>,
    counts: impl Fn(&DeviceId, &HubView) -> bool,
) -> BTreeMap<DeviceId, Merged> {
    let mut merged: BTreeMap<DeviceId, Merged> = BTreeMap::new();
    for hub in hubs {
        for (id, listing) in hub.devices() {
            if !counts(id, hub) {
                continue;
            }
            let key = match listing.pubkey {
                Some(key) => KeyStatus::Trusted(key),
                None => KeyStatus::Missing,
            };
            match merged.get_mut(id) {
                None => {
                    merged.insert(
                        id.clone(),
                        Merged {
                            listing: listing.clone(),
                            key,
                        },
                    );
                }
                Some(existing) => {
                    existing.key = match (existing.key, key) {
                        (KeyStatus::Trusted(a), KeyStatus::Trusted(b)) if a != b => {
                            KeyStatus::Conflict
                        }
                        (KeyStatus::Missing, other) => other,
                        (current, _) => current,
                    };
                    // RFC 3339 in UTC sorts as text.
                    if listing.last_seen > existing.listing.last_seen {
                        existing.listing = listing.clone();
                    }
                }
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, key: Option<u8>, last_seen: &str) -> ListedDevice {
        use base64::Engine;
        ListedDevice {
            id: id.into(),
            addr: "127.0.0.1:9".into(),
            observed: "127.0.0.1:5".into(),
            pubkey: key.map(|b| base64::engine::general_purpose::STANDARD.encode([b; 32])),
            last_seen: last_seen.into(),
            endpoints: vec!["10.0.0.1:9".into(), "bogus".into()],
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn merges_hubs_and_survives_losing_one() {
        let now = Instant::now();
        let mut roster = Roster::new(2);
        roster.update(0, &[listed("a", Some(1), "2026-01-01T00:00:00Z")], TTL, now);
        roster.update(1, &[listed("b", Some(2), "2026-01-01T00:00:00Z")], TTL, now);
        let merged = roster.merged(now);
        assert_eq!(merged.len(), 2);
        // Hub 0 stops answering: its view ages out, hub 1's stays.
        let later = now + Duration::from_secs(50);
        roster.update(
            1,
            &[
                listed("a", Some(1), "2026-01-01T00:00:50Z"),
                listed("b", Some(2), "2026-01-01T00:00:50Z"),
            ],
            TTL,
            later,
        );
        let merged = roster.merged(now + Duration::from_secs(90));
        assert_eq!(merged.len(), 2);
        assert_eq!(
            merged[&DeviceId::parse("a").unwrap()].listing.last_seen,
            "2026-01-01T00:00:50Z"
        );
        // Then hub 1 goes silent too: the last roster stays in force.
        assert_eq!(roster.merged(now + Duration::from_secs(3600)).len(), 2);
    }

    #[test]
    fn every_hub_silent_keeps_the_last_roster_for_good() {
        let now = Instant::now();
        let mut roster = Roster::new(2);
        let both = [listed("a", Some(1), "t"), listed("b", Some(2), "t")];
        roster.update(0, &both, TTL, now);
        roster.update(1, &both, TTL, now);
        let much_later = now + Duration::from_secs(86_400);
        let merged = roster.merged(much_later);
        assert_eq!(merged.len(), 2);
        assert!(
            merged
                .values()
                .all(|d| matches!(d.key, KeyStatus::Trusted(_)))
        );
    }

    #[test]
    fn an_answering_hub_that_drops_a_device_overrules_a_silent_one() {
        let now = Instant::now();
        let mut roster = Roster::new(2);
        let both = [listed("a", Some(1), "t"), listed("b", Some(2), "t")];
        roster.update(0, &both, TTL, now);
        roster.update(1, &both, TTL, now);
        // Hub 0 goes silent; hub 1 keeps answering, and b leaves it.
        let mut t = now;
        for _ in 0..5 {
            t += Duration::from_secs(30);
            roster.update(1, &[listed("a", Some(1), "t")], TTL, t);
        }
        let b = DeviceId::parse("b").unwrap();
        assert!(
            !roster.merged(t).contains_key(&b),
            "b was dropped by a hub that answers"
        );
        // A device only the silent hub ever listed stays.
        let mut roster = Roster::new(2);
        roster.update(0, &[listed("only-on-0", Some(3), "t")], TTL, now);
        roster.update(1, &[listed("a", Some(1), "t")], TTL, now);
        let later = now + Duration::from_secs(600);
        roster.update(1, &[listed("a", Some(1), "t")], TTL, later);
        assert!(
            roster
                .merged(later)
                .contains_key(&DeviceId::parse("only-on-0").unwrap())
        );
    }

    #[test]
    fn an_answering_hub_decides_the_key_over_a_silent_one() {
        let now = Instant::now();
        let mut roster = Roster::new(2);
        roster.update(0, &[listed("a", Some(1), "t")], TTL, now);
        roster.update(1, &[listed("a", Some(1), "t")], TTL, now);
        // a's binding was released and it came back with key 2; hub 0 is
        // silent with the old key.
        let later = now + Duration::from_secs(120);
        roster.update(1, &[listed("a", Some(2), "t")], TTL, later);
        let a = DeviceId::parse("a").unwrap();
        assert_eq!(
            roster.key_of(&a, later),
            Some(KeyStatus::Trusted(PublicKey::from([2; 32])))
        );
    }

    #[test]
    fn a_device_a_hub_stops_listing_stays_for_one_ttl() {
        let now = Instant::now();
        let mut roster = Roster::new(1);
        roster.update(
            0,
            &[listed("a", Some(1), "t"), listed("b", Some(2), "t")],
            TTL,
            now,
        );
        // The hub restarted: only a registered again so far.
        let soon = now + Duration::from_secs(1);
        roster.update(0, &[listed("a", Some(1), "t")], TTL, soon);
        assert_eq!(roster.merged(soon).len(), 2, "b is kept for now");
        let later = now + TTL + Duration::from_secs(1);
        roster.update(0, &[listed("a", Some(1), "t")], TTL, later);
        assert_eq!(roster.merged(later).len(), 1, "b is gone after a TTL");
    }

    #[test]
    fn a_hub_back_from_an_outage_gives_its_old_devices_a_ttl_of_grace() {
        let now = Instant::now();
        let mut roster = Roster::new(1);
        roster.update(
            0,
            &[listed("a", Some(1), "t"), listed("b", Some(2), "t")],
            TTL,
            now,
        );
        // Silent for ten minutes, then it answers with only a so far.
        let back = now + Duration::from_secs(600);
        roster.update(0, &[listed("a", Some(1), "t")], TTL, back);
        assert_eq!(
            roster.merged(back).len(),
            2,
            "b gets a TTL to register again"
        );
        // Answering every half TTL from then on, without b: b goes after
        // one TTL.
        let half = back + TTL / 2;
        roster.update(0, &[listed("a", Some(1), "t")], TTL, half);
        assert_eq!(roster.merged(half).len(), 2);
        let after = back + TTL + Duration::from_secs(1);
        roster.update(0, &[listed("a", Some(1), "t")], TTL, after);
        assert_eq!(roster.merged(after).len(), 1);
    }

    #[test]
    fn deltas_add_change_and_remove_devices_with_no_grace_for_a_removal() {
        let now = Instant::now();
        let mut roster = Roster::new(1);
        roster.update(0, &[listed("a", Some(1), "t")], TTL, now);
        let mut moved = listed("a", Some(1), "t2");
        moved.addr = "127.0.0.1:10".into();
        roster.apply_delta(0, &[listed("b", Some(2), "t"), moved], &[], TTL, now);
        let merged = roster.merged(now);
        let a = DeviceId::parse("a").unwrap();
        let b = DeviceId::parse("b").unwrap();
        assert_eq!(merged[&a].listing.addr, "127.0.0.1:10".parse().unwrap());
        assert_eq!(merged[&b].key, KeyStatus::Trusted(PublicKey::from([2; 32])));
        roster.apply_delta(0, &[], &["a".into(), "not an id!".into()], TTL, now);
        assert!(!roster.merged(now).contains_key(&a), "gone at once");
        assert!(roster.merged(now).contains_key(&b));
        // A removed device does not come back from a silent hub either.
        assert!(!roster.merged(now + TTL * 10).contains_key(&a));
    }

    #[test]
    fn a_delta_before_the_first_whole_list_is_ignored() {
        let now = Instant::now();
        let mut roster = Roster::new(1);
        roster.apply_delta(0, &[listed("a", Some(1), "t")], &[], TTL, now);
        assert!(roster.merged(now).is_empty());
    }

    #[test]
    fn heartbeats_keep_a_hubs_list_fresh_and_let_dropped_devices_go_after_a_ttl() {
        let t0 = Instant::now();
        let mut roster = Roster::new(2);
        let both = [listed("a", Some(1), "t"), listed("b", Some(2), "t")];
        roster.update(0, &both, TTL, t0);
        // Hub 1 decides against hub 0's older answer only while fresh.
        roster.update(1, &[listed("a", Some(1), "t")], TTL, t0);
        let b = DeviceId::parse("b").unwrap();
        let mut now = t0;
        for _ in 0..6 {
            now += TTL / 3;
            roster.confirm(1, TTL, now);
        }
        // Two TTLs on, hub 1 (confirmed) still decides; hub 0 is silent.
        assert!(
            roster
                .merged(now)
                .contains_key(&DeviceId::parse("a").unwrap())
        );
        // Hub 1 never listed b, so silent hub 0's last answer counts for it.
        assert!(roster.merged(now).contains_key(&b));
        // Hub 0 comes back without b: held for one TTL, then let go by a
        // heartbeat.
        roster.update(0, &[listed("a", Some(1), "t")], TTL, now);
        assert!(roster.merged(now).contains_key(&b), "a TTL of grace");
        roster.confirm(0, TTL, now + TTL / 2);
        assert!(roster.merged(now + TTL / 2).contains_key(&b));
        roster.confirm(0, TTL, now + TTL);
        assert!(!roster.merged(now + TTL).contains_key(&b));
    }

    #[test]
    fn a_device_that_left_is_gone_at_once() {
        let now = Instant::now();
        let mut roster = Roster::new(2);
        let both = [listed("a", Some(1), "t"), listed("b", Some(2), "t")];
        roster.update(0, &both, TTL, now);
        roster.update(1, &both, TTL, now);
        let b = DeviceId::parse("b").unwrap();
        roster.forget(0, &b, now);
        assert!(roster.merged(now).contains_key(&b), "hub 1 still lists it");
        roster.forget(1, &b, now);
        assert!(!roster.merged(now).contains_key(&b));
        // Even once both hubs fall silent, b does not come back.
        assert!(!roster.merged(now + TTL * 10).contains_key(&b));
    }

    #[test]
    fn disagreeing_hubs_leave_no_trusted_key() {
        let now = Instant::now();
        let mut roster = Roster::new(2);
        roster.update(0, &[listed("a", Some(1), "t")], TTL, now);
        roster.update(1, &[listed("a", Some(2), "t")], TTL, now);
        let a = DeviceId::parse("a").unwrap();
        assert_eq!(roster.key_of(&a, now), Some(KeyStatus::Conflict));
        roster.update(1, &[listed("a", None, "t")], TTL, now);
        assert!(matches!(
            roster.key_of(&a, now),
            Some(KeyStatus::Trusted(_))
        ));
    }

    #[test]
    fn invalid_entries_are_dropped_and_candidates_deduplicated() {
        let now = Instant::now();
        let mut roster = Roster::new(1);
        let mut bad = listed("no spaces allowed", Some(1), "t");
        bad.addr = "x".into();
        roster.update(0, &[bad, listed("ok", Some(1), "t")], TTL, now);
        let merged = roster.merged(now);
        assert_eq!(merged.len(), 1);
        let listing = &merged[&DeviceId::parse("ok").unwrap()].listing;
        let candidates: Vec<String> = listing
            .dial_candidates()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(candidates, ["10.0.0.1:9", "127.0.0.1:9", "127.0.0.1:5"]);
    }
}
