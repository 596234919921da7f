//! Hub channels: each device keeps one open (an HTTP upgrade on the
//! signaling port, then the hub handshake, `Noise_XX`, in which the hub
//! proves its key and the device its own). Over it the device registers and
//! heartbeats; the hub pushes the device list whenever it changes, forwards
//! hole-punching signals between devices, and hands out relay tokens.
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
use std::time::Duration;

use bytes::Bytes;
use meshd_link::channel::{ChannelReader, ChannelWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SignalingState;
use super::admission::token_matches;
use super::api;
use super::error::SignalingError;
use super::registry::Proof;
use super::relay::Asker;
use crate::device_id::DeviceId;
use crate::hub_wire::{FromHub, MAX_TO_HUB_BYTES, Refusable, RegisterRequest, ToHub};
use crate::public_key::PublicKey;
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

/// A message queued for a device's channel.
type Outgoing = FromHub;

struct Session {
    serial: u64,
    outgoing: mpsc::Sender<Outgoing>,
    /// Ends the session: when a newer channel of the same id replaces it,
    /// or an operator removes the id.
    stop: CancellationToken,
}

/// The open channels, by device.
#[derive(Default)]
pub struct Channels {
    sessions: Mutex<HashMap<DeviceId, Session>>,
    next_serial: AtomicU64,
    /// The device list message, serialized once per registry version.
    devices_message: Mutex<Option<(u64, Bytes)>>,
}

impl Channels {
    /// Channels open now.
    pub fn count(&self) -> usize {
        lock(&self.sessions).len()
    }

    fn open(
        &self,
        id: &DeviceId,
        outgoing: mpsc::Sender<Outgoing>,
        stop: CancellationToken,
    ) -> u64 {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            serial,
            outgoing,
            stop,
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
    fn is_open(&self, id: &DeviceId) -> bool {
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

    /// Queues `message` for every open channel but `except`'s; a channel
    /// whose queue is full misses it (its next list push corrects it).
    fn broadcast(&self, except: &DeviceId, message: impl Fn() -> FromHub) {
        for (id, session) in lock(&self.sessions).iter() {
            if id != except {
                let _ = session.outgoing.try_send(message());
            }
        }
    }

    /// Queues a message for `to`; false if it has no channel or its queue
    /// is full.
    fn send(&self, to: &DeviceId, message: FromHub) -> bool {
        lock(&self.sessions)
            .get(to)
            .is_some_and(|session| session.outgoing.try_send(message).is_ok())
    }
}

/// Runs one channel from its upgraded stream until it closes.
pub async fn serve<S>(
    state: Arc<SignalingState>,
    stream: S,
    remote: SocketAddr,
    handshake_slot: tokio::sync::OwnedSemaphorePermit,
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
    let writing = state
        .tracker
        .spawn(write_channel(state.clone(), writer, queue, stop.clone()));
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
    }
    // What is queued (a refusal, say) still goes out, then the writer ends.
    drop(outgoing);
    if tokio::time::timeout(WRITE_TIMEOUT, writing).await.is_err() {
        stop.cancel();
    }
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
}

impl DeviceChannel {
    /// Queues a reply; a device that does not read its channel loses
    /// replies, not the hub's memory.
    fn reply(&self, message: FromHub) {
        let _ = self.outgoing.try_send(message);
    }
}

/// Handles the device's messages; the reason the channel ended.
async fn read_channel<R: AsyncRead + Unpin>(
    state: &SignalingState,
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
        let bytes = tokio::select! {
            () = state.stopping.cancelled() => return "meshd is stopping".to_owned(),
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
            } => match register(state, channel, addr, endpoints, &join_token) {
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
            ToHub::Signal { to, signal } => {
                let delivered = DeviceId::parse(&to).is_ok_and(|target| {
                    state.channels.send(
                        &target,
                        FromHub::Signal {
                            from: id.to_string(),
                            signal,
                        },
                    )
                });
                (!delivered).then(|| FromHub::Refused {
                    reason: format!("{to} has no channel open to this hub, or is not reading it"),
                    request: Refusable::Signal,
                    to,
                })
            }
            ToHub::Relay { to } => relay(state, &channel.device, to),
            ToHub::Leave if !registered => return "the device left".to_owned(),
            ToHub::Leave => {
                let listed = state.change_registry(|registry| registry.deregister(id));
                if listed {
                    state.changed();
                }
                state
                    .channels
                    .broadcast(id, || FromHub::Left { id: id.to_string() });
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
    FromHub::Refused {
        reason: "this device has not registered on this channel yet".to_owned(),
        request,
        to,
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
        let serial = state.channels.open(
            &device.device,
            channel.outgoing.clone(),
            channel.stop.clone(),
        );
        channel.serial = Some(serial);
        tracing::debug!(device_id = %device.device, peer_addr = %channel.remote, "hub channel registered");
    }
    Ok(FromHub::Registered {
        observed: reply.observed,
        ttl_secs: reply.ttl_secs,
    })
}

/// Offers a relay between `id` and `to`: tokens to both; the refusal to
/// `id` if that cannot be done.
fn relay(state: &SignalingState, asker: &Asker, to: String) -> Option<FromHub> {
    let id = &asker.device;
    let refused = |reason: String, to: String| {
        Some(FromHub::Refused {
            to,
            request: Refusable::Relay,
            reason,
        })
    };
    let target = match DeviceId::parse(&to) {
        Ok(target) if target != *id => target,
        Ok(_) => return refused("a device cannot relay to itself".to_owned(), to),
        Err(_) => return refused(format!("{to:?} is not a device id"), to),
    };
    let target_key = state.registry().binding(&target);
    let Some(target_key) = target_key.filter(|_| state.channels.is_open(&target)) else {
        return refused(format!("{to} has no channel open to this hub"), to);
    };
    let rate = state.settings().relay_bytes_per_sec;
    let offer = match state.relays.offer(asker, &target, target_key, rate) {
        Ok(offer) => offer,
        Err(error) => return refused(error.to_string(), to),
    };
    let offered = state.channels.send(
        &target,
        FromHub::Relay {
            peer: id.to_string(),
            token: offer.theirs,
            dial: !offer.own_dials,
        },
    );
    if !offered {
        return refused(format!("{to} is not reading its channel"), to);
    }
    Some(FromHub::Relay {
        peer: to,
        token: offer.own,
        dial: offer.own_dials,
    })
}

/// Sends queued messages, and once the device is registered (after its
/// [`FromHub::Registered`]) the device list and every change of it, until
/// the queue closes (the session ended) or the channel is stopped.
async fn write_channel<W: AsyncWrite + Unpin>(
    state: Arc<SignalingState>,
    mut writer: ChannelWriter<W>,
    mut queue: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut changes = state.changes.subscribe();
    let mut following = false;
    let mut push = false;
    loop {
        let bytes = if push {
            push = false;
            changes.borrow_and_update();
            devices_message(&state)
        } else {
            // List changes first: a flood of signals must not hold them back
            // (they are coalesced, so this cannot starve the queue).
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                changed = changes.changed(), if following => {
                    if changed.is_err() {
                        break;
                    }
                    push = true;
                    continue;
                }
                message = queue.recv() => match message {
                    Some(message) => {
                        if !following && matches!(message, FromHub::Registered { .. }) {
                            following = true;
                            push = true;
                        }
                        match serde_json::to_vec(&message) {
                            Ok(bytes) => Bytes::from(bytes),
                            Err(_) => continue,
                        }
                    }
                    None => break,
                },
            }
        };
        let sent = tokio::select! {
            () = stop.cancelled() => break,
            sent = tokio::time::timeout(WRITE_TIMEOUT, writer.send(&bytes)) => sent,
        };
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
    }
    writer.close().await;
}

/// The current device list as a channel message, serialized once per
/// registry version whatever the number of channels.
fn devices_message(state: &SignalingState) -> Bytes {
    let version = *state.changes.borrow();
    let mut cached = lock(&state.channels.devices_message);
    if let Some((cached_version, bytes)) = &*cached
        && *cached_version == version
    {
        return bytes.clone();
    }
    let devices: Vec<_> = state.live_devices().iter().map(api::listed).collect();
    let message = FromHub::Devices { version, devices };
    let bytes = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
    *cached = Some((version, bytes.clone()));
    bytes
}
