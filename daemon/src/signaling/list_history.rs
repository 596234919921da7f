//! The device list's recent history, from which a hub channel gets deltas
//! instead of the whole list (docs/mesh.md, "The hub channel").
//!
//! Every change to the list (a device registered or moved, left, expired,
//! was removed) bumps the version and records the device as it is then, or
//! its removal, serialized once. A channel whose device holds version `v`
//! gets every change after `v` merged into one delta, each device once and
//! as it is now: a device that is slow to read gets one delta when it
//! catches up, not a queue of them. One that fell behind the changes kept
//! gets the whole list, as does a channel that has just registered.
//!
//! The whole list is serialized once and shared by every channel; a new
//! channel may get a slightly old one, and the delta after it at once,
//! so that a storm of registrations does not serialize the list once per
//! registration. The last delta is shared the same way: after a change,
//! every channel that was up to date needs the same bytes.
//!
//! Pure: the registry lookups are the caller's (`SignalingState::changed`).

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

use crate::device_id::DeviceId;
use crate::hub_wire::{FromHub, ListedDevice};

/// Changes kept for deltas: a device further behind gets the whole list.
pub const CHANGES_KEPT: usize = 8192;

/// A cached whole list is handed to a new channel (with the delta after
/// it) while at most this many changes, or an eighth of the list, came
/// after it; beyond that it is rebuilt.
const WHOLE_LIST_REUSE: usize = 64;

/// One change: the device as it is after it, or `None` when it left.
struct Change {
    version: u64,
    id: DeviceId,
    /// `ListedDevice` as JSON.
    entry: Option<Bytes>,
}

/// What a channel sends to bring its device up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Nothing changed since the device's version.
    Current,
    /// A [`FromHub::Delta`] to `version`.
    Delta { version: u64, message: Bytes },
    /// The whole list is needed: [`ListHistory::whole`].
    Whole,
}

/// The list's version and its recent changes.
#[derive(Default)]
pub struct ListHistory {
    version: u64,
    changes: VecDeque<Change>,
    /// The last whole list built: version, message, devices in it.
    whole: Option<(u64, Bytes, usize)>,
    /// The last delta built: from, to, message.
    last_delta: Option<(u64, u64, Bytes)>,
}

impl ListHistory {
    /// The current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Records one change of the list that touched `devices` (each as it
    /// is now, `None` if no longer listed); the new version.
    pub fn record(&mut self, devices: Vec<(DeviceId, Option<ListedDevice>)>) -> u64 {
        if devices.is_empty() {
            return self.version;
        }
        self.version += 1;
        for (id, device) in devices {
            let entry = device
                .and_then(|device| serde_json::to_vec(&device).ok())
                .map(Bytes::from);
            self.changes.push_back(Change {
                version: self.version,
                id,
                entry,
            });
        }
        while self.changes.len() > CHANGES_KEPT {
            self.changes.pop_front();
        }
        self.version
    }

    /// What a device holding version `held` (`None`: no list yet) needs.
    pub fn update(&mut self, held: Option<u64>) -> Update {
        let Some(from) = held else {
            return Update::Whole;
        };
        if from == self.version {
            return Update::Current;
        }
        let Some(start) = self.first_after(from) else {
            return Update::Whole;
        };
        if let Some((cached_from, version, message)) = &self.last_delta
            && *cached_from == from
            && *version == self.version
        {
            return Update::Delta {
                version: *version,
                message: message.clone(),
            };
        }
        let message = self.delta_message(from, start);
        self.last_delta = Some((from, self.version, message.clone()));
        Update::Delta {
            version: self.version,
            message,
        }
    }

    /// The whole list for a device that holds none: the cached one if few
    /// changes came after it (the device gets them as a delta next), else
    /// `build()`'s, cached. The version it is at, and the message.
    pub fn whole(&mut self, build: impl FnOnce() -> Vec<ListedDevice>) -> (u64, Bytes) {
        if let Some((version, message, listed)) = &self.whole {
            let reusable = (*listed / 8).max(WHOLE_LIST_REUSE);
            let newer = self
                .first_after(*version)
                .map(|start| self.changes.len() - start);
            if newer.is_some_and(|newer| newer <= reusable) {
                return (*version, message.clone());
            }
        }
        self.current_whole(build)
    }

    /// The whole list at the current version (for `meshd-channel/2`
    /// channels, which get no deltas after it).
    pub fn current_whole(&mut self, build: impl FnOnce() -> Vec<ListedDevice>) -> (u64, Bytes) {
        if let Some((version, message, _)) = &self.whole
            && *version == self.version
        {
            return (*version, message.clone());
        }
        let devices = build();
        let listed = devices.len();
        let message = FromHub::Devices {
            version: self.version,
            devices,
        };
        let message = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
        self.whole = Some((self.version, message.clone(), listed));
        (self.version, message)
    }

    /// The index of the first change after version `from`, if every change
    /// after it is still kept (`Some(len)` when none came after it).
    fn first_after(&self, from: u64) -> Option<usize> {
        if from > self.version {
            return None;
        }
        let start = self
            .changes
            .partition_point(|change| change.version <= from);
        // Versions are consecutive, so the change right after `from` must
        // still be here (or `from` is the version of the oldest kept).
        let complete = match self.changes.get(start) {
            Some(change) => change.version == from + 1,
            None => from == self.version,
        };
        complete.then_some(start)
    }

    /// The merged changes from `start` on as a [`FromHub::Delta`]: each
    /// device once, as its latest change left it. Built from the entries
    /// serialized when they were recorded.
    fn delta_message(&self, from: u64, start: usize) -> Bytes {
        let mut seen: HashSet<&DeviceId> = HashSet::new();
        let mut devices: Vec<&Bytes> = Vec::new();
        let mut removed: Vec<&DeviceId> = Vec::new();
        for change in self.changes.range(start..).rev() {
            if !seen.insert(&change.id) {
                continue;
            }
            match &change.entry {
                Some(entry) => devices.push(entry),
                None => removed.push(&change.id),
            }
        }
        let size: usize = devices.iter().map(|entry| entry.len() + 1).sum::<usize>()
            + removed
                .iter()
                .map(|id| id.as_str().len() + 3)
                .sum::<usize>();
        let mut out = Vec::with_capacity(96 + size);
        out.extend_from_slice(
            format!(
                r#"{{"type":"delta","from":{from},"version":{},"devices":["#,
                self.version
            )
            .as_bytes(),
        );
        for (index, entry) in devices.iter().rev().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(entry);
        }
        out.extend_from_slice(br#"],"removed":["#);
        for (index, id) in removed.iter().rev().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            // Ids are JSON-safe by construction; serde_json quotes them
            // all the same.
            if serde_json::to_writer(&mut out, id.as_str()).is_err() {
                out.extend_from_slice(b"\"\"");
            }
        }
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, port: u16) -> ListedDevice {
        ListedDevice {
            id: id.into(),
            addr: format!("192.0.2.7:{port}"),
            observed: format!("198.51.100.1:{port}"),
            pubkey: None,
            last_seen: "2026-12-03T12:00:00Z".into(),
            endpoints: vec![],
        }
    }

    fn id(name: &str) -> DeviceId {
        DeviceId::parse(name).unwrap()
    }

    fn joined(history: &mut ListHistory, name: &str, port: u16) -> u64 {
        history.record(vec![(id(name), Some(device(name, port)))])
    }

    fn decode(message: &Bytes) -> FromHub {
        meshd_ipc::strict::from_slice(message).expect("a well-formed hub message")
    }

    fn delta(history: &mut ListHistory, from: u64) -> (u64, Vec<ListedDevice>, Vec<String>) {
        match history.update(Some(from)) {
            Update::Delta { version, message } => match decode(&message) {
                FromHub::Delta {
                    from: said_from,
                    version: said,
                    devices,
                    removed,
                } => {
                    assert_eq!((said_from, said), (from, version));
                    (version, devices, removed)
                }
                other => panic!("{other:?}"),
            },
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[test]
    fn a_join_is_a_delta_of_that_device_alone() {
        let mut history = ListHistory::default();
        for n in 0..100 {
            joined(&mut history, &format!("d{n}"), 1000 + n);
        }
        let before = history.version();
        joined(&mut history, "late", 9);
        let (version, devices, removed) = delta(&mut history, before);
        assert_eq!(version, history.version());
        assert_eq!(devices, vec![device("late", 9)]);
        assert!(removed.is_empty());
        let Update::Delta { message, .. } = history.update(Some(before)) else {
            panic!("a delta");
        };
        assert!(message.len() < 1024, "{} bytes", message.len());
        assert_eq!(history.update(Some(version)), Update::Current);
    }

    #[test]
    fn changes_merge_into_the_latest_state_of_each_device() {
        let mut history = ListHistory::default();
        let start = joined(&mut history, "a", 1);
        joined(&mut history, "b", 2);
        joined(&mut history, "a", 3); // moved
        history.record(vec![(id("b"), None)]); // left
        joined(&mut history, "c", 4);
        history.record(vec![(id("c"), None), (id("d"), None)]); // expired together
        joined(&mut history, "c", 5); // back
        let (_, devices, mut removed) = delta(&mut history, start);
        let mut devices: Vec<(String, String)> = devices
            .into_iter()
            .map(|device| (device.id, device.addr))
            .collect();
        devices.sort();
        removed.sort();
        assert_eq!(
            devices,
            vec![
                ("a".into(), "192.0.2.7:3".into()),
                ("c".into(), "192.0.2.7:5".into())
            ]
        );
        assert_eq!(removed, vec!["b".to_owned(), "d".to_owned()]);
    }

    #[test]
    fn a_device_behind_the_kept_changes_or_ahead_of_the_hub_gets_the_whole_list() {
        let mut history = ListHistory::default();
        let first = joined(&mut history, "a", 1);
        for n in 0..CHANGES_KEPT {
            joined(&mut history, "b", u16::try_from(n % 60_000).unwrap());
        }
        // The change to `first` is gone; those after it are all kept.
        assert_eq!(history.update(Some(first - 1)), Update::Whole);
        assert!(matches!(history.update(Some(first)), Update::Delta { .. }));
        // A version this hub never had (it restarted, say).
        assert_eq!(history.update(Some(history.version() + 5)), Update::Whole);
        assert_eq!(history.update(None), Update::Whole);
    }

    #[test]
    fn a_new_channel_may_get_a_recent_whole_list_then_the_rest_as_a_delta() {
        let mut history = ListHistory::default();
        for n in 0..10 {
            joined(&mut history, &format!("d{n}"), n);
        }
        let list = |names: &[&str]| -> Vec<ListedDevice> {
            names.iter().map(|name| device(name, 0)).collect()
        };
        let (version, message) = history.whole(|| list(&["d0"]));
        assert_eq!(version, history.version());
        assert!(matches!(decode(&message), FromHub::Devices { version: v, .. } if v == version));
        joined(&mut history, "late", 7);
        // Reused without building: one change came after it.
        let (again, reused) = history.whole(|| panic!("not rebuilt"));
        assert_eq!((again, &reused), (version, &message));
        let (_, devices, _) = delta(&mut history, again);
        assert_eq!(devices, vec![device("late", 7)]);
        // A channel that gets no deltas is given the current version.
        let (current, _) = history.current_whole(|| list(&["d0", "late"]));
        assert_eq!(current, history.version());
        // Too many changes after the cached list: rebuilt.
        for n in 0..=WHOLE_LIST_REUSE {
            joined(&mut history, "moving", u16::try_from(n).unwrap());
        }
        let mut built = false;
        let (rebuilt, _) = history.whole(|| {
            built = true;
            list(&["d0"])
        });
        assert!(built);
        assert_eq!(rebuilt, history.version());
    }

    #[test]
    fn the_delta_is_shared_by_channels_at_the_same_version() {
        let mut history = ListHistory::default();
        let from = joined(&mut history, "a", 1);
        joined(&mut history, "b", 2);
        let Update::Delta { message: one, .. } = history.update(Some(from)) else {
            panic!("a delta");
        };
        let Update::Delta { message: two, .. } = history.update(Some(from)) else {
            panic!("a delta");
        };
        assert_eq!(one.as_ptr(), two.as_ptr(), "the same bytes, built once");
    }
}
