//! The devices other hubs of the cluster list (docs/cluster.md, "The shared
//! list"), as this hub heard of them through NATS; pure.
//!
//! A device may be listed by several hubs at once (a device names several
//! hubs, or moved from one to another): each hub's entry is kept, and the
//! device is shown as the freshest says it. A hub that leaves the cluster
//! takes its entries with it. Bounded: beyond [`MAX_ENTRIES`] new entries
//! are refused, so a flood on the bus cannot grow a hub's memory without
//! end.

use std::collections::HashMap;

use crate::device_id::DeviceId;
use crate::hub_wire::ListedDevice;

/// Entries held at most, over all hubs.
pub const MAX_ENTRIES: usize = 200_000;

/// Devices listed by other hubs, per hub.
#[derive(Debug, Default)]
pub struct RemoteDevices {
    by_device: HashMap<DeviceId, HashMap<String, ListedDevice>>,
    entries: usize,
}

impl RemoteDevices {
    /// Hub `hub` lists `device` as it is now; whether the device's merged
    /// listing changed.
    pub fn upsert(&mut self, hub: &str, id: DeviceId, device: ListedDevice) -> bool {
        let before = self.listed(&id).cloned();
        let hubs = self.by_device.entry(id.clone()).or_default();
        if !hubs.contains_key(hub) {
            if self.entries >= MAX_ENTRIES {
                if hubs.is_empty() {
                    self.by_device.remove(&id);
                }
                return false;
            }
            self.entries += 1;
        }
        hubs.insert(hub.to_owned(), device);
        self.listed(&id) != before.as_ref()
    }

    /// Hub `hub` no longer lists `id`; whether the merged listing changed.
    pub fn remove(&mut self, hub: &str, id: &DeviceId) -> bool {
        let before = self.listed(id).cloned();
        if let Some(hubs) = self.by_device.get_mut(id) {
            if hubs.remove(hub).is_some() {
                self.entries -= 1;
            }
            if hubs.is_empty() {
                self.by_device.remove(id);
            }
        }
        self.listed(id) != before.as_ref()
    }

    /// Hub `hub` left the cluster: every device it listed, whose merged
    /// listing changed.
    pub fn drop_hub(&mut self, hub: &str) -> Vec<DeviceId> {
        let ids: Vec<DeviceId> = self
            .by_device
            .iter()
            .filter(|(_, hubs)| hubs.contains_key(hub))
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter().filter(|id| self.remove(hub, id)).collect()
    }

    /// The device as the freshest hub lists it.
    pub fn listed(&self, id: &DeviceId) -> Option<&ListedDevice> {
        self.freshest(id).map(|(_, device)| device)
    }

    /// The hub whose listing of `id` is freshest: where its channel most
    /// likely is.
    pub fn hub_of(&self, id: &DeviceId) -> Option<&str> {
        self.freshest(id).map(|(hub, _)| hub.as_str())
    }

    /// The freshest listing of `id`, with its hub (RFC 3339 times in UTC
    /// compare as text).
    fn freshest(&self, id: &DeviceId) -> Option<(&String, &ListedDevice)> {
        self.by_device.get(id)?.iter().max_by(|(_, a), (_, b)| {
            a.last_seen
                .cmp(&b.last_seen)
                .then_with(|| a.addr.cmp(&b.addr))
        })
    }

    /// Keeps only the (hub, device) entries in `keep`; the ids whose merged
    /// listing changed.
    pub fn retain(
        &mut self,
        keep: &std::collections::HashSet<(String, DeviceId)>,
    ) -> Vec<DeviceId> {
        let gone: Vec<(String, DeviceId)> = self
            .by_device
            .iter()
            .flat_map(|(id, hubs)| hubs.keys().map(move |hub| (hub.clone(), id.clone())))
            .filter(|entry| !keep.contains(entry))
            .collect();
        let mut changed: Vec<DeviceId> = gone
            .into_iter()
            .filter_map(|(hub, id)| self.remove(&hub, &id).then_some(id))
            .collect();
        changed.dedup();
        changed
    }

    /// The ids listed, unordered, without copying the listings.
    pub fn ids(&self) -> impl Iterator<Item = &DeviceId> {
        self.by_device.keys()
    }

    /// Every device, sorted by id, with the ids of the hubs that list it
    /// (sorted): for the web console, copied out so the lock is not held
    /// while the page is built.
    pub fn all_with_hubs(&self) -> Vec<(DeviceId, ListedDevice, Vec<String>)> {
        let mut all: Vec<(DeviceId, ListedDevice, Vec<String>)> = self
            .by_device
            .iter()
            .filter_map(|(id, hubs)| {
                let listed = self.listed(id)?.clone();
                let mut hub_ids: Vec<String> = hubs.keys().cloned().collect();
                hub_ids.sort_unstable();
                Some((id.clone(), listed, hub_ids))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every device, sorted by id.
    pub fn all(&self) -> Vec<(DeviceId, ListedDevice)> {
        let mut all: Vec<(DeviceId, ListedDevice)> = self
            .by_device
            .keys()
            .filter_map(|id| Some((id.clone(), self.listed(id)?.clone())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> DeviceId {
        DeviceId::parse(text).unwrap()
    }

    fn device(name: &str, addr: &str, seen: &str) -> ListedDevice {
        ListedDevice {
            id: name.to_owned(),
            addr: addr.to_owned(),
            observed: addr.to_owned(),
            pubkey: None,
            last_seen: seen.to_owned(),
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn a_device_listed_by_two_hubs_shows_as_the_freshest_says() {
        let mut remote = RemoteDevices::default();
        assert!(remote.upsert(
            "h1",
            id("d"),
            device("d", "192.0.2.1:1", "2026-12-03T10:00:00Z")
        ));
        assert!(remote.upsert(
            "h2",
            id("d"),
            device("d", "192.0.2.2:2", "2026-12-03T10:00:05Z")
        ));
        assert_eq!(remote.listed(&id("d")).unwrap().addr, "192.0.2.2:2");
        // Signals for it go to the hub whose listing is freshest.
        assert_eq!(remote.hub_of(&id("d")), Some("h2"));
        assert_eq!(remote.hub_of(&id("other")), None);
        // The same again changes nothing.
        assert!(!remote.upsert(
            "h2",
            id("d"),
            device("d", "192.0.2.2:2", "2026-12-03T10:00:05Z")
        ));
        // The fresher hub drops it: the other's listing stands.
        assert!(remote.remove("h2", &id("d")));
        assert_eq!(remote.listed(&id("d")).unwrap().addr, "192.0.2.1:1");
        assert_eq!(remote.hub_of(&id("d")), Some("h1"));
        assert!(remote.remove("h1", &id("d")));
        assert!(remote.listed(&id("d")).is_none());
        assert!(!remote.remove("h1", &id("d")), "nothing left to remove");
    }

    #[test]
    fn a_hub_that_leaves_takes_its_devices() {
        let mut remote = RemoteDevices::default();
        remote.upsert(
            "h1",
            id("a"),
            device("a", "192.0.2.1:1", "2026-12-03T10:00:00Z"),
        );
        remote.upsert(
            "h1",
            id("b"),
            device("b", "192.0.2.1:2", "2026-12-03T10:00:00Z"),
        );
        remote.upsert(
            "h2",
            id("b"),
            device("b", "192.0.2.2:2", "2026-12-03T09:00:00Z"),
        );
        let mut gone = remote.drop_hub("h1");
        gone.sort();
        assert_eq!(
            gone,
            [id("a"), id("b")],
            "b changed (h2's older listing now)"
        );
        let all: Vec<String> = remote
            .all()
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect();
        assert_eq!(all, ["b"]);
        assert_eq!(remote.entries, 1);
    }

    #[test]
    fn entries_are_bounded() {
        let mut remote = RemoteDevices::default();
        for n in 0..MAX_ENTRIES {
            remote.upsert("h", id(&format!("d{n}")), device("x", "192.0.2.1:1", "t"));
        }
        assert!(!remote.upsert("h", id("one-more"), device("x", "192.0.2.1:1", "t")));
        assert!(remote.listed(&id("one-more")).is_none());
        // An update of a held entry still goes in.
        assert!(remote.upsert("h", id("d0"), device("x", "192.0.2.9:9", "u")));
    }
}
