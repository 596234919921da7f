//! Hub channels: each device keeps one open (an HTTP upgrade on the
//! signaling port, then the hub handshake, `Noise_XX`, in which the hub
//! proves its key and the device its own). Over it the device registers and
//! heartbeats; the hub sends the device list once, then its changes as
//! deltas (list_history.rs), forwards hole-punching signals between
//! devices, and hands out relay tokens.
//!
//! With a cluster (docs/cluster.md, "Signals and relays"), a signal or a
//! relay request for a device whose channel is on another hub goes there
//! through the cluster, in the background, and its answer comes back on
//! this channel; the hub also names the cluster's other hubs to its
//! devices, so they can move when it dies.
//!
//! A channel counts for an id only once it registered: the key its
//! handshake proved must be the key the id is bound to, or binds it
//! (admission.rs). So a signal's `from` and a relay's ends are the devices
//! they claim to be. One channel per id: a newer registered one replaces the
//! older. A channel that does not register within [`REGISTER_DEADLINE`]
//! (one that only asked for its observed address, say) is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use meshd_link::channel::{ChannelReader, ChannelWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SignalingState;
use super::admission::token_matches;
use super::api;
use super::error::SignalingError;
use super::link_reports::LinkCounts;
use super::registry::Proof;
use super::relay::Asker;
use crate::device_id::DeviceId;
use crate::hub_wire::{FromHub, MAX_TO_HUB_BYTES, PeerHub, Refusable, RegisterRequest, ToHub};
use crate::metrics::metrics;
use crate::public_key::PublicKey;
use crate::shared_list::{BindRefusal, Cluster, RelayHalf, RemoteAsker};
use crate::sync::lock;

/// Hub handshakes (channels and relay joins) in progress at once.
/// Registered channels need no cap of their own: each needs a key binding,
/// and there is one per id; unregistered ones end at [`REGISTER_DEADLINE`].
pub const MAX_HANDSHAKES: usize = 64;

/// Time a channel has to register after its handshake.
const REGISTER_DEADLINE: Duration = Duration::from_secs(10);

/// Messages queued for one device; beyond it signals to that device are
/// dropped (they are retried) rather than buffered without bound.
const OUTGOING_QUEUE: usize = 64;

/// Devices ping every 10 s; a channel silent for this long is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

/// A write to a device that makes no progress for this long ends its
/// channel.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Signals and relay requests on their way to other hubs at once, over all
/// channels; beyond it they are refused (devices retry).
pub const MAX_FORWARDS: usize = 256;

/// What a channel's device understands, by the upgrade it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChannelVersion {
    /// `meshd-channel/2`: the whole list on every change.
    WholeLists,
    /// `meshd-channel/3`: deltas.
    Deltas,
    /// `meshd-channel/4`: deltas and link reports.
    Reports,
    /// `meshd-channel/5`: the cluster's hubs, and relays on them.
    Cluster,
}

impl ChannelVersion {
    fn deltas(self) -> bool {
        self >= ChannelVersion::Deltas
    }

    fn cluster(self) -> bool {
        self >= ChannelVersion::Cluster
    }
}

/// What a channel's reader and the other channels queue for its writer.
enum Outgoing {
    /// A message to send as it is.
    Message(FromHub),
    /// The device asked for the whole list ([`ToHub::Resync`]).
    WholeList,
}

struct Session {
    serial: u64,
    outgoing: mpsc::Sender<Outgoing>,
    /// The device takes deltas (`meshd-channel/3`).
    deltas: bool,
    /// The device joins relays on other hubs (`meshd-channel/5`).
    cluster: bool,
    /// Ends the session: when a newer channel of the same id replaces it,
    /// or an operator removes the id.
    stop: CancellationToken,
}

/// The open channels, by device.
#[derive(Default)]
pub struct Channels {
    sessions: Mutex<HashMap<DeviceId, Session>>,
    next_serial: AtomicU64,
}

impl Channels {
    /// Channels open now.
    pub fn count(&self) -> usize {
        lock(&self.sessions).len()
    }

    fn open(&self, id: &DeviceId, channel: &DeviceChannel) -> u64 {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            serial,
            outgoing: channel.outgoing.clone(),
            deltas: channel.deltas,
            cluster: channel.version.cluster(),
            stop: channel.stop.clone(),
        };
        if let Some(replaced) = lock(&self.sessions).insert(id.clone(), session) {
            replaced.stop.cancel();
        }
        serial
    }

    /// Ends the channel of `id`, if one is open (the id was released).
    pub fn close_device(&self, id: &DeviceId) {
        if let Some(session) = lock(&self.sessions).remove(id) {
            session.stop.cancel();
        }
    }

    /// `id` has a channel open.
    pub fn is_open(&self, id: &DeviceId) -> bool {
        lock(&self.sessions).contains_key(id)
    }

    fn close(&self, id: &DeviceId, serial: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(id)
            .is_some_and(|session| session.serial == serial)
        {
            sessions.remove(id);
        }
    }

    /// Queues `message` for every open `meshd-channel/2` channel but
    /// `except`'s (channels with deltas learn the same from the next
    /// delta); a channel whose queue is full misses it (its next list
    /// push corrects it).
    fn broadcast_to_whole_list_channels(&self, except: &DeviceId, message: impl Fn() -> FromHub) {
        for (id, session) in lock(&self.sessions).iter() {
            if id != except && !session.deltas {
                let _ = session.outgoing.try_send(Outgoing::Message(message()));
            }
        }
    }

    /// Queues a message that only `meshd-channel/5` devices understand for
    /// `to`; why not, if it cannot be.
    fn send_to_cluster_device(&self, to: &DeviceId, message: FromHub) -> Result<(), String> {
        let sessions = lock(&self.sessions);
        let Some(session) = sessions.get(to) else {
            return Err(format!("{to} has no channel open to its hub"));
        };
        if !session.cluster {
            return Err(format!(
                "{to}'s meshd is too old to join a relay on another hub of the cluster: upgrade it"
            ));
        }
        session
            .outgoing
            .try_send(Outgoing::Message(message))
            .map_err(|_| format!("{to} is not reading its channel"))
    }

    /// Queues a message for `to`; false if it has no channel or its queue
    /// is full.
    pub(super) fn send(&self, to: &DeviceId, message: FromHub) -> bool {
        lock(&self.sessions).get(to).is_some_and(|session| {
            session
                .outgoing
                .try_send(Outgoing::Message(message))
                .is_ok()
        })
    }
}

/// Runs one channel from its upgraded stream until it closes; `deltas`
/// when the device asked for `meshd-channel/3`.
pub async fn serve<S>(
    state: Arc<SignalingState>,
    stream: S,
    remote: SocketAddr,
    handshake_slot: tokio::sync::OwnedSemaphorePermit,
    version: ChannelVersion,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = meshd_link::channel::serve(stream, &state.hub_key).await;
    drop(handshake_slot);
    let (channel, peer) = match handshake {
        Ok(opened) => opened,
        Err(error) => {
            tracing::debug!(peer_addr = %remote, %error, "hub channel handshake failed");
            return;
        }
    };
    let key = PublicKey::from(peer.key);
    let Ok(id) = DeviceId::parse(&peer.id) else {
        tracing::debug!(peer_addr = %remote, claimed = %peer.id.escape_debug(), "hub channel refused: not a device id");
        return;
    };
    let (reader, writer) = channel.split(MAX_TO_HUB_BYTES);
    let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
    let stop = state.stopping.child_token();
    let deltas = version.deltas();
    let writing = state.tracker.spawn(write_channel(
        state.clone(),
        writer,
        queue,
        stop.clone(),
        deltas,
    ));
    let mut channel = DeviceChannel {
        device: Asker {
            device: id,
            key,
            source: remote.ip(),
        },
        remote,
        outgoing,
        stop: stop.clone(),
        serial: None,
        deltas,
        version,
        peer_hubs: state.peer_hubs.subscribe(),
    };
    let reason = tokio::select! {
        () = stop.cancelled() => "replaced by a newer channel, the id was removed, or meshd is stopping".to_owned(),
        reason = read_channel(&state, &mut channel, reader) => reason,
    };
    let DeviceChannel {
        device,
        serial,
        outgoing,
        ..
    } = channel;
    if let Some(serial) = serial {
        state.channels.close(&device.device, serial);
        lock(&state.link_reports).forget(&device.device, serial);
    }
    // What is queued (a refusal, say) still goes out, then the writer ends
    // (or is stopped, if the device does not read it).
    drop(outgoing);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writing).await;
    stop.cancel();
    tracing::debug!(device_id = %device.device, peer_addr = %remote, %reason, "hub channel closed");
}

/// One device's channel, as its reading side knows it.
struct DeviceChannel {
    /// The device, with the key its handshake proved.
    device: Asker,
    remote: SocketAddr,
    outgoing: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
    /// Set once registered: the channel's place in [`Channels`].
    serial: Option<u64>,
    /// The device takes deltas (`meshd-channel/3`).
    deltas: bool,
    /// What the device understands.
    version: ChannelVersion,
    /// The cluster's other hubs, sent to a registered `meshd-channel/5`
    /// device whenever they change.
    peer_hubs: tokio::sync::watch::Receiver<Vec<PeerHub>>,
}

impl DeviceChannel {
    /// Queues a reply; a device that does not read its channel loses
    /// replies, not the hub's memory.
    fn reply(&self, message: FromHub) {
        let _ = self.outgoing.try_send(Outgoing::Message(message));
    }
}

/// Handles the device's messages; the reason the channel ended.
async fn read_channel<R: AsyncRead + Unpin>(
    state: &Arc<SignalingState>,
    channel: &mut DeviceChannel,
    mut reader: ChannelReader<R>,
) -> String {
    // Counted from the handshake, not per message: pings and observes do
    // not keep an unregistered channel open.
    let register_by = tokio::time::Instant::now() + REGISTER_DEADLINE;
    loop {
        let limit = match channel.serial {
            Some(_) => SILENCE_LIMIT,
            None => register_by.saturating_duration_since(tokio::time::Instant::now()),
        };
        let tells_hubs = channel.serial.is_some() && channel.version.cluster();
        let bytes = tokio::select! {
            () = state.stopping.cancelled() => return "meshd is stopping".to_owned(),
            changed = channel.peer_hubs.changed(), if tells_hubs => {
                if changed.is_ok() {
                    let hubs = channel.peer_hubs.borrow_and_update().clone();
                    channel.reply(FromHub::Hubs { hubs });
                }
                continue;
            }
            read = tokio::time::timeout(limit, reader.next()) => match read {
                Err(_elapsed) if channel.serial.is_none() => {
                    return format!("not registered within {}s", REGISTER_DEADLINE.as_secs());
                }
                Err(_elapsed) => return format!("silent for {}s", SILENCE_LIMIT.as_secs()),
                Ok(Err(error)) => return error.to_string(),
                Ok(Ok(bytes)) => bytes,
            },
        };
        let message: ToHub = match meshd_ipc::strict::from_slice(&bytes) {
            Ok(message) => message,
            Err(error) => return format!("malformed message: {error}"),
        };
        let id = &channel.device.device;
        let registered = channel.serial.is_some();
        let reply = match message {
            ToHub::Register {
                addr,
                endpoints,
                join_token,
            } => match bound_in_cluster(state, &channel.device)
                .await
                .and_then(|()| register(state, channel, addr, endpoints, &join_token))
            {
                Ok(reply) => Some(reply),
                Err(error) => {
                    let device = &channel.device;
                    if matches!(error, SignalingError::KeyConflict(_)) {
                        tracing::warn!(device_id = %device.device, peer_addr = %channel.remote, key = %device.key, "hub channel refused: that id is bound to another key");
                    } else {
                        tracing::info!(device_id = %device.device, peer_addr = %channel.remote, %error, "hub channel registration refused");
                    }
                    channel.reply(FromHub::RegisterRefused {
                        status: error.status().as_u16(),
                        error: error.to_string(),
                    });
                    return format!("registration refused: {error}");
                }
            },
            ToHub::Observe => Some(FromHub::Observed {
                observed: channel.remote.to_string(),
            }),
            ToHub::Ping { nonce } => Some(FromHub::Pong { nonce }),
            ToHub::Signal { to, .. } if !registered => Some(not_registered(to, Refusable::Signal)),
            ToHub::Relay { to } if !registered => Some(not_registered(to, Refusable::Relay)),
            ToHub::Signal { to, signal } => signal_to(state, channel, to, signal),
            ToHub::Relay { to } => relay(state, channel, to),
            // Reports describe a registered device; before that there is
            // nothing to show them beside.
            ToHub::Links { .. } if !registered => None,
            ToHub::Links {
                direct,
                relayed,
                down,
                links,
            } => {
                if let Some(serial) = channel.serial {
                    let counts = LinkCounts {
                        direct,
                        relayed,
                        down,
                    };
                    let taken =
                        lock(&state.link_reports).put(id, serial, counts, links, SystemTime::now());
                    if taken {
                        metrics().hub_link_reports.inc();
                    }
                }
                None
            }
            ToHub::Leave if !registered => return "the device left".to_owned(),
            // Asked again at the device's next mismatch if the queue is
            // full now.
            ToHub::Resync => {
                let _ = channel.outgoing.try_send(Outgoing::WholeList);
                None
            }
            ToHub::Leave => {
                let listed = state.change_registry(|registry| registry.deregister(id));
                if listed {
                    state.changed([id.clone()]);
                }
                state
                    .channels
                    .broadcast_to_whole_list_channels(id, || FromHub::Left { id: id.to_string() });
                tracing::info!(device_id = %id, "device left");
                return "the device left".to_owned();
            }
        };
        if let Some(reply) = reply {
            channel.reply(reply);
        }
    }
}

/// The refusal of a request sent before the device registered.
fn not_registered(to: String, request: Refusable) -> FromHub {
    refusal(
        request,
        to,
        "this device has not registered on this channel yet".to_owned(),
    )
}

/// The refusal of a `request` for device `to`, and why.
fn refusal(request: Refusable, to: String, reason: String) -> FromHub {
    FromHub::Refused {
        to,
        request,
        reason,
    }
}

/// With a cluster, an id this hub has not bound yet is bound through it
/// first (docs/cluster.md, "Key bindings"): the same id with another key at
/// any hub of the cluster is a conflict, as it is at one hub.
async fn bound_in_cluster(state: &SignalingState, device: &Asker) -> Result<(), SignalingError> {
    let Some(cluster) = state.cluster.get() else {
        return Ok(());
    };
    if state.registry().binding(&device.device).is_some() {
        // Bound here, so bound in the cluster (or the registry refuses).
        return Ok(());
    }
    let key = device.key.to_base64();
    match cluster.bind(&device.device, &key).await {
        Ok(()) => Ok(()),
        Err(BindRefusal::Conflict(_)) => {
            Err(SignalingError::KeyConflict(device.device.to_string()))
        }
        Err(BindRefusal::Unavailable(reason)) => Err(SignalingError::ClusterUnavailable {
            id: device.device.to_string(),
            reason,
        }),
    }
}

/// Registers (or refreshes) the channel's device with the key it proved;
/// the first success makes the channel the id's channel.
fn register(
    state: &SignalingState,
    channel: &mut DeviceChannel,
    addr: String,
    endpoints: Vec<String>,
    join_token: &str,
) -> Result<FromHub, SignalingError> {
    let expected = state.settings().join_token;
    if !expected.is_empty() && !token_matches(join_token, &expected) {
        return Err(SignalingError::Unauthorized);
    }
    let device = &channel.device;
    let registration = api::validate(RegisterRequest {
        id: device.device.to_string(),
        addr,
        pubkey: Some(device.key.to_base64()),
        endpoints: Some(endpoints),
    })?;
    let reply = state.admit(registration, Proof::Proven, channel.remote)?;
    if channel.serial.is_none() {
        let serial = state.channels.open(&device.device, channel);
        channel.serial = Some(serial);
        if state.cluster.get().is_some() {
            // The cluster's hubs follow the registration's answer.
            channel.peer_hubs.mark_changed();
        }
        tracing::debug!(device_id = %device.device, peer_addr = %channel.remote, "hub channel registered");
    }
    Ok(FromHub::Registered {
        observed: reply.observed,
        ttl_secs: reply.ttl_secs,
    })
}

/// Passes a signal on to `to`: over its channel here, or through the
/// cluster to the hub that lists it; the refusal to the sender if neither
/// can be done now.
fn signal_to(
    state: &Arc<SignalingState>,
    channel: &DeviceChannel,
    to: String,
    signal: crate::hub_wire::Signal,
) -> Option<FromHub> {
    let id = &channel.device.device;
    let refused = |reason, to| Some(refusal(Refusable::Signal, to, reason));
    let Ok(target) = DeviceId::parse(&to) else {
        return refused(format!("{to:?} is not a device id"), to);
    };
    let message = FromHub::Signal {
        from: id.to_string(),
        signal,
    };
    if state.channels.send(&target, message) {
        return None;
    }
    let ClusterRoute {
        cluster,
        hub,
        permit,
    } = match through_cluster(state, &target) {
        Ok(Some(route)) => route,
        Ok(None) => {
            return refused(
                format!("{to} has no channel open to this hub, or is not reading it"),
                to,
            );
        }
        Err(reason) => return refused(reason, to),
    };
    let (from, outgoing) = (id.clone(), channel.outgoing.clone());
    state.tracker.spawn(async move {
        if let Err(reason) = cluster.signal(&hub, &from, &target, signal).await {
            let refused = refusal(Refusable::Signal, to, reason);
            let _ = outgoing.try_send(Outgoing::Message(refused));
        }
        drop(permit);
    });
    None
}

/// The way to a device of another hub.
struct ClusterRoute {
    cluster: Arc<dyn Cluster>,
    /// The hub whose listing of the device is freshest.
    hub: String,
    /// One of the hub's [`MAX_FORWARDS`] slots, held until the answer.
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// The way to `to` when it is another hub's device; `None` when no hub of
/// the cluster lists it.
fn through_cluster(state: &SignalingState, to: &DeviceId) -> Result<Option<ClusterRoute>, String> {
    let Some(cluster) = state.cluster.get() else {
        return Ok(None);
    };
    let Some(hub) = lock(&state.remote).hub_of(to).map(str::to_owned) else {
        return Ok(None);
    };
    let permit = state.forwards.clone().try_acquire_owned().map_err(|_| {
        format!("{MAX_FORWARDS} requests are on their way to other hubs already; try again")
    })?;
    Ok(Some(ClusterRoute {
        cluster: cluster.clone(),
        hub,
        permit,
    }))
}

/// Offers a relay between the channel's device and `to`: tokens to both;
/// the refusal to the asker if that cannot be done. With `to` on another
/// hub of the cluster the relay runs on the hub of the pair's lesser id
/// (so two devices that ask for each other at once get one relay), and
/// the answer comes back on this channel when that hub has made it.
fn relay(state: &Arc<SignalingState>, channel: &DeviceChannel, to: String) -> Option<FromHub> {
    let asker = &channel.device;
    let id = &asker.device;
    let refused = |reason, to| Some(refusal(Refusable::Relay, to, reason));
    let target = match DeviceId::parse(&to) {
        Ok(target) if target != *id => target,
        Ok(_) => return refused("a device cannot relay to itself".to_owned(), to),
        Err(_) => return refused(format!("{to:?} is not a device id"), to),
    };
    let target_key = state.registry().binding(&target);
    if let Some(target_key) = target_key.filter(|_| state.channels.is_open(&target)) {
        let offered = offer_here(state, asker, &target, target_key);
        return Some(relay_answer(to, offered.map(|half| (half, None))));
    }
    let ClusterRoute {
        cluster,
        hub,
        permit,
    } = match through_cluster(state, &target) {
        Ok(Some(route)) => route,
        Ok(None) => return refused(format!("{to} has no channel open to this hub"), to),
        Err(reason) => return refused(reason, to),
    };
    if !channel.version.cluster() {
        return refused(
            format!(
                "{to} is on another hub of the cluster, and this device's meshd is too old to join a relay there: upgrade it"
            ),
            to,
        );
    }
    let outgoing = channel.outgoing.clone();
    if *id < target {
        // The relay runs here; the other end's half goes to its hub.
        let Some(target_key) = listed_key(state, &target) else {
            return refused(format!("{to} is listed without a key"), to);
        };
        let offer = match state
            .relays
            .offer(asker, &target, target_key, relay_rate(state))
        {
            Ok(offer) => offer,
            Err(error) => return refused(error.to_string(), to),
        };
        let theirs = RelayHalf {
            token: offer.theirs.clone(),
            dial: !offer.own_dials,
        };
        let own = RelayHalf {
            token: offer.own.clone(),
            dial: offer.own_dials,
        };
        let from = id.clone();
        let state = state.clone();
        state.tracker.clone().spawn(async move {
            let handed = cluster.relay_half(&hub, &target, &from, theirs).await;
            if handed.is_err() {
                state.relays.withdraw(&offer);
            }
            let answer = relay_answer(to, handed.map(|()| (own, None)));
            let _ = outgoing.try_send(Outgoing::Message(answer));
            drop(permit);
        });
    } else {
        // The relay runs at the other end's hub; this end gets its half.
        let remote = RemoteAsker {
            device: id.clone(),
            key: asker.key,
            source: asker.source,
        };
        state.tracker.spawn(async move {
            let made = cluster.relay(&hub, &remote, &target).await;
            let answer = relay_answer(to, made.map(|(half, at)| (half, Some(at))));
            let _ = outgoing.try_send(Outgoing::Message(answer));
            drop(permit);
        });
    }
    None
}

/// The asker's offer of a relay to `to` (on the hub `at`, if another), or
/// its refusal.
fn relay_answer(to: String, outcome: Result<(RelayHalf, Option<PeerHub>), String>) -> FromHub {
    match outcome {
        Ok((half, at)) => FromHub::Relay {
            peer: to,
            token: half.token,
            dial: half.dial,
            at,
        },
        Err(reason) => refusal(Refusable::Relay, to, reason),
    }
}

/// The key another hub lists `id` with.
fn listed_key(state: &SignalingState, id: &DeviceId) -> Option<PublicKey> {
    let remote = lock(&state.remote);
    let listed = remote.listed(id)?;
    PublicKey::from_base64(listed.pubkey.as_deref()?).ok()
}

fn relay_rate(state: &SignalingState) -> u64 {
    state.settings().relay_bytes_per_sec
}

/// Makes a relay here between `asker` and `target` (bound to
/// `target_key`, its channel open here): `target`'s half goes over its
/// channel, the asker's is returned.
pub(super) fn offer_here(
    state: &SignalingState,
    asker: &Asker,
    target: &DeviceId,
    target_key: PublicKey,
) -> Result<RelayHalf, String> {
    let offer = state
        .relays
        .offer(asker, target, target_key, relay_rate(state))
        .map_err(|error| error.to_string())?;
    let offered = state.channels.send(
        target,
        FromHub::Relay {
            peer: asker.device.to_string(),
            token: offer.theirs,
            dial: !offer.own_dials,
            at: None,
        },
    );
    if !offered {
        return Err(format!("{target} is not reading its channel"));
    }
    Ok(RelayHalf {
        token: offer.own,
        dial: offer.own_dials,
    })
}

/// Hands `to` (its channel open here) its half of a relay that another
/// hub of the cluster, `at`, runs with `peer`.
pub(super) fn deliver_half(
    state: &SignalingState,
    to: &DeviceId,
    peer: &DeviceId,
    half: RelayHalf,
    at: PeerHub,
) -> Result<(), String> {
    state.channels.send_to_cluster_device(
        to,
        FromHub::Relay {
            peer: peer.to_string(),
            token: half.token,
            dial: half.dial,
            at: Some(at),
        },
    )
}

/// Sends queued messages, and once the device is registered (after its
/// [`FromHub::Registered`]) the device list and then its changes, until the
/// queue closes (the session ended) or the channel is stopped.
///
/// List updates and queued messages take turns, so neither a flood of
/// signals nor a stream of changes holds the other back. Changes coalesce:
/// a writer that was busy sends everything that changed meanwhile as one
/// delta (`SignalingState::list_update`).
async fn write_channel<W: AsyncWrite + Unpin>(
    state: Arc<SignalingState>,
    mut writer: ChannelWriter<W>,
    mut queue: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
    deltas: bool,
) {
    let mut changes = state.changes.subscribe();
    let mut list = ListFollower::default();
    // No list update before this: the hub's budget of updates, shared out.
    let mut next_update = tokio::time::Instant::now();
    loop {
        // A change made before a message was queued goes out before it,
        // unless paced (docs/mesh.md, "The list").
        let now = tokio::time::Instant::now();
        let update = if list.following && list.behind && now >= next_update {
            changes.borrow_and_update();
            let update = state.list_update(list.held, deltas);
            match &update {
                Some((version, _)) => {
                    list.held = Some(*version);
                    next_update = now + list_update_interval(state.channels.count());
                }
                None => list.behind = false,
            }
            update.map(|(_, message)| message)
        } else {
            None
        };
        let queued = match queue.try_recv() {
            Ok(outgoing) => list.prepare(outgoing),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        if update.is_none() && queued.is_none() {
            // A request for the whole list was just taken.
            if list.following && list.behind && tokio::time::Instant::now() >= next_update {
                continue;
            }
            let bytes = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                changed = changes.changed(), if list.following && !list.behind => {
                    if changed.is_err() {
                        break;
                    }
                    list.behind = true;
                    continue;
                }
                // Behind, but the last update was too recent: everything
                // that changes until then goes out as one delta.
                () = tokio::time::sleep_until(next_update), if list.following && list.behind => continue,
                outgoing = queue.recv() => match outgoing {
                    Some(outgoing) => list.prepare(outgoing),
                    None => break,
                },
            };
            if let Some(bytes) = bytes
                && !send(&mut writer, &bytes, &stop).await
            {
                break;
            }
            continue;
        }
        for bytes in [update, queued].into_iter().flatten() {
            if !send(&mut writer, &bytes, &stop).await {
                writer.close().await;
                return;
            }
        }
    }
    writer.close().await;
}

/// List updates the hub sends a second at most, over all its channels.
const LIST_UPDATES_PER_SEC: u64 = 20_000;

/// The longest wait between two list updates on one channel.
const MAX_LIST_UPDATE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a channel waits after a list update before the next, with
/// `channels` open: the hub's budget of updates a second shared out, so
/// that a storm of joins costs each channel a few merged deltas a second,
/// not one delta per join (50 µs with 1 channel, 500 ms with 10,000). The
/// first change after a quiet spell goes out at once.
fn list_update_interval(channels: usize) -> Duration {
    let nanos = 1_000_000_000 / LIST_UPDATES_PER_SEC;
    Duration::from_nanos(nanos.saturating_mul(channels as u64)).min(MAX_LIST_UPDATE_INTERVAL)
}

/// Where a channel's device stands with the device list.
#[derive(Default)]
struct ListFollower {
    /// Registered: the list and its changes are sent.
    following: bool,
    /// The list may have changed since the last update sent.
    behind: bool,
    /// The version the device holds, once sent one.
    held: Option<u64>,
}

impl ListFollower {
    /// The bytes of a queued message, noting what it means for the list.
    fn prepare(&mut self, outgoing: Outgoing) -> Option<Bytes> {
        match outgoing {
            Outgoing::WholeList => {
                self.held = None;
                self.behind = true;
                None
            }
            Outgoing::Message(message) => {
                if matches!(message, FromHub::Registered { .. }) && !self.following {
                    self.following = true;
                    self.behind = true;
                }
                serde_json::to_vec(&message).ok().map(Bytes::from)
            }
        }
    }
}

/// Sends one message; false when the channel is stopped or broken, or the
/// device does not read for [`WRITE_TIMEOUT`].
async fn send<W: AsyncWrite + Unpin>(
    writer: &mut ChannelWriter<W>,
    bytes: &[u8],
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        sent = tokio::time::timeout(WRITE_TIMEOUT, writer.send(bytes)) => matches!(sent, Ok(Ok(()))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use meshd_link::StaticKey;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::config::SignalingConfig;
    use crate::signaling::registry::{Registration, Registry};

    fn config() -> SignalingConfig {
        SignalingConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
            device_ttl: Duration::from_secs(60),
            join_token: String::new(),
            request_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_devices: 10_000,
            relay_bytes_per_sec: 0,
            registrations_per_sec: 0,
        }
    }

    fn join(state: &SignalingState, n: u16) {
        let registration = Registration {
            id: DeviceId::parse(&format!("d{n:04}")).unwrap(),
            addr: SocketAddr::from(([192, 0, 2, 1], n)),
            pubkey: None,
            endpoints: (0..16)
                .map(|e| SocketAddr::from(([10, 0, e, 1], n)))
                .collect(),
        };
        let peer = SocketAddr::from(([127, 0, 0, 1], n));
        state.admit(registration, Proof::Claimed, peer).unwrap();
    }

    #[tokio::test]
    async fn a_device_that_reads_slowly_gets_what_changed_meanwhile_as_one_delta() {
        let tracker = TaskTracker::new();
        let state = Arc::new(SignalingState::new(
            &config(),
            Registry::new(10_000),
            StaticKey::generate().unwrap(),
            CancellationToken::new(),
            &tracker,
        ));
        // 4 KiB between the hub and a device that does not read: the
        // hub's writes stall after a few deltas.
        let (device_end, hub_end) = tokio::io::duplex(4096);
        let device_key = StaticKey::generate().unwrap();
        let (opened, served) = tokio::join!(
            meshd_link::channel::open(device_end, &device_key, "slow", None),
            meshd_link::channel::serve(hub_end, &state.hub_key),
        );
        let (device, _) = opened.unwrap();
        let (hub, _) = served.unwrap();
        let (mut reader, _device_writer) = device.split(crate::hub_wire::MAX_FROM_HUB_BYTES);
        let (_hub_reader, writer) = hub.split(MAX_TO_HUB_BYTES);
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let stop = CancellationToken::new();
        tracker.spawn(write_channel(
            state.clone(),
            writer,
            queue,
            stop.clone(),
            true,
        ));
        outgoing
            .send(Outgoing::Message(FromHub::Registered {
                observed: "127.0.0.1:1".into(),
                ttl_secs: 60,
            }))
            .await
            .unwrap();
        // 1,000 joins, the writer running between each.
        for n in 1..=1000 {
            join(&state, n);
            tokio::task::yield_now().await;
        }
        let mut held: Option<u64> = None;
        let mut ids = BTreeSet::new();
        let mut lists = 0;
        while ids.len() < 1000 {
            let bytes = reader.next().await.unwrap();
            match meshd_ipc::strict::from_slice::<FromHub>(&bytes).unwrap() {
                FromHub::Registered { .. } => continue,
                FromHub::Devices { version, devices } => {
                    ids = devices.into_iter().map(|device| device.id).collect();
                    held = Some(version);
                }
                FromHub::Delta {
                    from,
                    version,
                    devices,
                    removed,
                } => {
                    assert_eq!(Some(from), held, "deltas follow each other");
                    ids.extend(devices.into_iter().map(|device| device.id));
                    for id in removed {
                        ids.remove(&id);
                    }
                    held = Some(version);
                }
                other => panic!("{other:?}"),
            }
            lists += 1;
        }
        assert!(
            lists < 50,
            "{lists} list messages for 1,000 joins to a device that did not read"
        );
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
