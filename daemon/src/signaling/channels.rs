//! Hub channels: each device keeps one open (an HTTP upgrade on the
//! signaling port, then `Noise_XN` with its device key). Over it the hub
//! pushes the device list whenever it changes, forwards hole-punching
//! signals between devices, and hands out relay tokens.
//!
//! A channel is accepted only if the key the device proves is the key its
//! id is bound to, so a signal's `from` and a relay's ends are the devices
//! they claim to be. One channel per id: a newer one replaces the older.

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
use super::api;
use super::relay::Asker;
use crate::device_id::DeviceId;
use crate::hub_wire::{FromHub, MAX_TO_HUB_BYTES, Refusable, ToHub};
use crate::public_key::PublicKey;
use crate::sync::lock;

/// Channel handshakes in progress at once. Open channels need no cap of
/// their own: each needs a key binding, and there is one per id.
pub const MAX_HANDSHAKES: usize = 64;

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
    let handshake = meshd_link::channel::serve(stream).await;
    drop(handshake_slot);
    let (channel, peer) = match handshake {
        Ok(opened) => opened,
        Err(error) => {
            tracing::debug!(peer_addr = %remote, %error, "hub channel handshake failed");
            return;
        }
    };
    let key = PublicKey::from(peer.key);
    let id = match DeviceId::parse(&peer.id) {
        Ok(id) if state.registry().binding(&id) == Some(key) => id,
        _ => {
            tracing::warn!(peer_addr = %remote, claimed = %peer.id, %key, "hub channel refused: that id is not registered with that key");
            return;
        }
    };
    let (reader, writer) = channel.split(MAX_TO_HUB_BYTES);
    let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
    let stop = state.stopping.child_token();
    let serial = state.channels.open(&id, outgoing.clone(), stop.clone());
    // An operator may have released the id between the check and now.
    if state.registry().binding(&id) != Some(key) {
        state.channels.close(&id, serial);
        return;
    }
    tracing::debug!(device_id = %id, peer_addr = %remote, "hub channel open");
    let writing = state
        .tracker
        .spawn(write_channel(state.clone(), writer, queue, stop.clone()));
    let asker = Asker {
        device: id.clone(),
        source: remote.ip(),
    };
    let reason = tokio::select! {
        () = stop.cancelled() => "replaced by a newer channel, the id was removed, or meshd is stopping".to_owned(),
        reason = read_channel(&state, &asker, reader, &outgoing) => reason,
    };
    state.channels.close(&id, serial);
    stop.cancel();
    let _ = writing.await;
    tracing::debug!(device_id = %id, peer_addr = %remote, %reason, "hub channel closed");
}

/// Handles the device's messages; the reason the channel ended.
async fn read_channel<R: AsyncRead + Unpin>(
    state: &SignalingState,
    device: &Asker,
    mut reader: ChannelReader<R>,
    outgoing: &mpsc::Sender<Outgoing>,
) -> String {
    let id = &device.device;
    loop {
        let bytes = tokio::select! {
            () = state.stopping.cancelled() => return "meshd is stopping".to_owned(),
            read = tokio::time::timeout(SILENCE_LIMIT, reader.next()) => match read {
                Err(_elapsed) => return format!("silent for {}s", SILENCE_LIMIT.as_secs()),
                Ok(Err(error)) => return error.to_string(),
                Ok(Ok(bytes)) => bytes,
            },
        };
        let message: ToHub = match meshd_ipc::strict::from_slice(&bytes) {
            Ok(message) => message,
            Err(error) => return format!("malformed message: {error}"),
        };
        let reply = match message {
            ToHub::Ping { nonce } => Some(FromHub::Pong { nonce }),
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
            ToHub::Relay { to } => relay(state, device, to),
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
            // A device that does not read its channel loses replies, not
            // the hub's memory.
            let _ = outgoing.try_send(reply);
        }
    }
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
    if !state.channels.is_open(&target) {
        return refused(format!("{to} has no channel open to this hub"), to);
    }
    let rate = state.settings().relay_bytes_per_sec;
    let offer = match state.relays.offer(asker, &target, rate) {
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

/// Sends the device list on open and on every change, and queued messages,
/// until the queue closes (the session was replaced or ended).
async fn write_channel<W: AsyncWrite + Unpin>(
    state: Arc<SignalingState>,
    mut writer: ChannelWriter<W>,
    mut queue: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut changes = state.changes.subscribe();
    let mut push = true;
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
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    push = true;
                    continue;
                }
                message = queue.recv() => match message {
                    Some(message) => match serde_json::to_vec(&message) {
                        Ok(bytes) => Bytes::from(bytes),
                        Err(_) => continue,
                    },
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
