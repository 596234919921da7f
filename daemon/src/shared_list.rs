//! What the hub and the cluster say to each other about the device list
//! (docs/cluster.md, "The shared list"), so that neither names the other:
//! the hub implements [`SharedList`], and the cluster uses it.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::device_id::DeviceId;
use crate::hub_wire::ListedDevice;

/// The hub's device list as the cluster shares it.
pub trait SharedList: Send + Sync {
    /// Woken when this hub's own devices change.
    fn local_changes(&self) -> Arc<Notify>;
    /// The ids of this hub's own devices that changed since the last call.
    fn take_local_changes(&self) -> Vec<DeviceId>;
    /// One of this hub's own devices as it lists it now, if it does.
    fn local_listing(&self, id: &DeviceId) -> Option<ListedDevice>;
    /// Every device this hub itself lists.
    fn local_devices(&self) -> Vec<ListedDevice>;
    /// Hub `hub` lists `device`.
    fn remote_upsert(&self, hub: &str, id: DeviceId, device: ListedDevice);
    /// Hub `hub` no longer lists `id`.
    fn remote_remove(&self, hub: &str, id: &DeviceId);
    /// Hub `hub` left the cluster, with every device it listed.
    fn remote_drop_hub(&self, hub: &str);
    /// After a fresh look at the whole shared list: keeps only these
    /// (hub, device) entries of other hubs.
    fn remote_retain(&self, keep: &HashSet<(String, DeviceId)>);
    /// Every id this hub binds, with its key (base64).
    fn local_bindings(&self) -> Vec<(DeviceId, String)>;
    /// An operator released `id` at some hub of the cluster: this hub
    /// forgets its binding too, and closes the id's channel.
    fn binding_released(&self, id: &DeviceId);
}

/// Why the cluster did not bind an id to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindRefusal {
    /// The cluster binds the id to another key (base64).
    Conflict(String),
    /// The cluster cannot be asked now.
    Unavailable(String),
}

/// A future the cluster answers, boxed so the trait stays object-safe.
pub type Answer<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The cluster's key bindings (docs/cluster.md, "Key bindings"), as the hub
/// asks for them: one id, one key, across every hub.
pub trait ClusterBindings: Send + Sync {
    /// Binds `id` to `key` (base64) unless the cluster binds it to another
    /// key; the same key again is fine.
    fn bind<'a>(&'a self, id: &'a DeviceId, key: &'a str) -> Answer<'a, Result<(), BindRefusal>>;
    /// An operator released `id` on this hub: the cluster forgets its
    /// binding too (in the background).
    fn release(&self, id: &DeviceId);
}
