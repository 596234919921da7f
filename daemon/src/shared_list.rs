//! What the hub and the cluster ask of each other (docs/cluster.md), so
//! that neither names the other: the hub implements [`SharedList`] (its
//! device list, its bindings, and what it does for other hubs' devices),
//! and the cluster implements [`Cluster`] (bindings, and signals and relays
//! carried to other hubs).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::device_id::DeviceId;
use crate::hub_wire::{ListedDevice, PeerHub, Signal};
use crate::public_key::PublicKey;

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
    /// Another hub passes on `signal` from its device `from` to `to`,
    /// whose channel should be open here; why not, if it could not be
    /// queued.
    fn deliver_signal(&self, from: &DeviceId, to: &DeviceId, signal: Signal) -> Result<(), String>;
    /// Another hub's device asks for a relay to `to`, whose channel should
    /// be open here: the relay runs on this hub, and the asker gets its
    /// half back through the cluster.
    fn offer_relay(&self, asker: &RemoteAsker, to: &DeviceId) -> Result<RelayHalf, String>;
    /// Another hub, `at`, runs a relay between its device `peer` and `to`,
    /// whose channel should be open here: `to` gets its half.
    fn deliver_relay_half(
        &self,
        to: &DeviceId,
        peer: &DeviceId,
        half: RelayHalf,
        at: PeerHub,
    ) -> Result<(), String>;
    /// The other hubs of the cluster, whole, whenever they change: handed
    /// to this hub's devices so they can move when it dies.
    fn other_hubs(&self, hubs: Vec<PeerHub>);
}

/// A device of another hub that asks this hub for a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAsker {
    /// The device.
    pub device: DeviceId,
    /// The key its channel proved to its own hub.
    pub key: PublicKey,
    /// Where its channel connects from, for the relay's fair shares.
    pub source: IpAddr,
}

/// One end's half of a relay: its token, and whether it dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHalf {
    /// One-time token for `GET /relay`.
    pub token: String,
    /// This end opens the link through the relay.
    pub dial: bool,
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

/// The cluster as the hub asks things of it: key bindings (docs/cluster.md,
/// "Key bindings": one id, one key, across every hub), and signals and
/// relays for devices whose channels are on other hubs ("Signals and
/// relays").
pub trait Cluster: Send + Sync {
    /// Binds `id` to `key` (base64) unless the cluster binds it to another
    /// key; the same key again is fine.
    fn bind<'a>(&'a self, id: &'a DeviceId, key: &'a str) -> Answer<'a, Result<(), BindRefusal>>;
    /// An operator released `id` on this hub: the cluster forgets its
    /// binding too (in the background).
    fn release(&self, id: &DeviceId);
    /// Passes `signal` from this hub's device `from` to `to`, whose channel
    /// is on hub `hub`; why not, if that hub did not take it.
    fn signal<'a>(
        &'a self,
        hub: &'a str,
        from: &'a DeviceId,
        to: &'a DeviceId,
        signal: Signal,
    ) -> Answer<'a, Result<(), String>>;
    /// Asks hub `hub`, which holds `to`'s channel, for a relay between
    /// `asker` and `to`: the asker's half, and the hub to join it at.
    fn relay<'a>(
        &'a self,
        hub: &'a str,
        asker: &'a RemoteAsker,
        to: &'a DeviceId,
    ) -> Answer<'a, Result<(RelayHalf, PeerHub), String>>;
    /// This hub runs a relay between its device `peer` and `to`, whose
    /// channel is on hub `hub`: hands `to` its half there.
    fn relay_half<'a>(
        &'a self,
        hub: &'a str,
        to: &'a DeviceId,
        peer: &'a DeviceId,
        half: RelayHalf,
    ) -> Answer<'a, Result<(), String>>;
}
