//! The shared list (docs/cluster.md, "The shared list"): each hub keeps its
//! own devices in the `meshd_devices` bucket, one entry per device under
//! `<hub>.<device>`, written when the device joins, moves or goes (never on
//! a heartbeat), and mirrors the other hubs' entries into its list, which
//! its devices then get as deltas like any change.
//!
//! A device on another hub stays listed while that hub is in the cluster
//! and lists it; a hub that leaves or dies takes its devices with it (the
//! membership, `hubs.rs`). Each session starts from scratch: this hub's
//! entries are written again (and stale ones deleted), and the others' are
//! read again from the bucket, so nothing missed during an outage lingers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{Entry, Operation, Store, Watch};
use futures_util::StreamExt;

use super::ClusterError;
use super::buckets::{self, DEVICES};
use crate::device_id::DeviceId;
use crate::hub_wire::ListedDevice;
use crate::shared_list::SharedList;

/// One session's sync of the shared list.
pub struct DeviceSync {
    store: Store,
    watch: Watch,
    shared: Arc<dyn SharedList>,
    me: String,
    /// While the first look at the bucket runs: the other hubs' entries
    /// seen so far; then `None`.
    snapshot: Option<HashSet<(String, DeviceId)>>,
}

/// What woke the sync.
pub enum SyncEvent {
    /// An entry of the bucket, or the watch's end.
    Entry(Option<Result<Entry, String>>),
    /// This hub's own devices changed.
    LocalChanged,
}

impl DeviceSync {
    /// Makes the bucket, writes this hub's devices (and deletes its stale
    /// entries), and starts watching.
    pub async fn start(
        js: &Context,
        shared: Arc<dyn SharedList>,
        me: &str,
    ) -> Result<DeviceSync, ClusterError> {
        let store = buckets::ensure(js, DEVICES, 1, Duration::ZERO).await?;
        // Whatever changed before now is in the full write below.
        shared.take_local_changes();
        let local = shared.local_devices();
        let mine: HashSet<String> = local
            .iter()
            .map(|device| buckets::device_key(me, &device.id))
            .collect();
        for device in &local {
            put(&store, me, device).await?;
        }
        let mut keys = store
            .keys()
            .await
            .map_err(|error| ClusterError::JetStream(format!("listing devices: {error}")))?;
        let prefix = format!("{}.", buckets::key_of(me));
        let mut stale = Vec::new();
        while let Some(key) = keys.next().await {
            let key =
                key.map_err(|error| ClusterError::JetStream(format!("listing devices: {error}")))?;
            if key.starts_with(&prefix) && !mine.contains(&key) {
                stale.push(key);
            }
        }
        for key in stale {
            store
                .delete(&key)
                .await
                .map_err(|error| ClusterError::JetStream(format!("deleting {key}: {error}")))?;
        }
        let values = store
            .status()
            .await
            .map_err(|error| ClusterError::JetStream(format!("the devices bucket: {error}")))?
            .values();
        let watch = store
            .watch_with_history(">")
            .await
            .map_err(|error| ClusterError::JetStream(format!("watching devices: {error}")))?;
        let mut sync = DeviceSync {
            store,
            watch,
            shared,
            me: me.to_owned(),
            snapshot: Some(HashSet::new()),
        };
        // An empty bucket sends nothing to say the look is complete.
        if values == 0 {
            sync.snapshot_done();
        }
        Ok(sync)
    }

    /// The next thing to do.
    pub async fn next(&mut self) -> SyncEvent {
        let changes = self.shared.local_changes();
        tokio::select! {
            entry = self.watch.next() => {
                SyncEvent::Entry(entry.map(|entry| entry.map_err(|error| error.to_string())))
            }
            () = changes.notified() => SyncEvent::LocalChanged,
        }
    }

    /// Writes this hub's changed devices.
    pub async fn publish_local_changes(&mut self) -> Result<(), ClusterError> {
        for id in self.shared.take_local_changes() {
            match self.shared.local_listing(&id) {
                Some(device) => put(&self.store, &self.me, &device).await?,
                None => {
                    let key = buckets::device_key(&self.me, id.as_str());
                    self.store.delete(&key).await.map_err(|error| {
                        ClusterError::JetStream(format!("deleting {key}: {error}"))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Takes an entry of the bucket into the list.
    pub fn apply(&mut self, entry: Entry) {
        let Some((hub, device)) = buckets::parse_device_key(&entry.key) else {
            tracing::debug!(key = %entry.key, "cluster: a device entry with another key layout; ignored");
            return;
        };
        let Ok(id) = DeviceId::parse(&device) else {
            tracing::debug!(key = %entry.key, "cluster: a device entry for an invalid id; ignored");
            return;
        };
        if hub != self.me {
            match entry.operation {
                Operation::Put => match serde_json::from_slice::<ListedDevice>(&entry.value) {
                    Ok(listed) if listed.id == device => {
                        if let Some(snapshot) = &mut self.snapshot {
                            snapshot.insert((hub.clone(), id.clone()));
                        }
                        self.shared.remote_upsert(&hub, id, listed);
                    }
                    _ => {
                        tracing::debug!(key = %entry.key, "cluster: a device entry that does not parse; ignored")
                    }
                },
                Operation::Delete | Operation::Purge => self.shared.remote_remove(&hub, &id),
            }
        }
        if entry.delta == 0 {
            self.snapshot_done();
        }
    }

    /// The first look at the bucket is complete: entries of other hubs not
    /// seen in it are gone.
    fn snapshot_done(&mut self) {
        if let Some(keep) = self.snapshot.take() {
            self.shared.remote_retain(&keep);
        }
    }
}

async fn put(store: &Store, me: &str, device: &ListedDevice) -> Result<(), ClusterError> {
    let value =
        serde_json::to_vec(device).map_err(|error| ClusterError::JetStream(error.to_string()))?;
    store
        .put(buckets::device_key(me, &device.id), value.into())
        .await
        .map(|_revision| ())
        .map_err(|error| ClusterError::JetStream(format!("writing device {}: {error}", device.id)))
}
