//! This device's channel to one hub: an HTTP upgrade on the hub's port,
//! then `Noise_XN` with the device key (`meshd_link::channel`), kept open
//! for as long as meshd runs.
//!
//! Over it the hub pushes the device list whenever it changes, so arrivals
//! and departures are known at once, and passes hole-punching signals and
//! relay offers, which go to the peer task they concern. The device pings
//! every [`PING_INTERVAL`]; the round-trip time is what hole punching uses.
//! A list without this device means the hub lost it (it restarted): the
//! registrar is woken to register again at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Mesh;
use super::backoff::Backoff;
use super::hub_client::{HubConnection, HubError};
use super::peer::Command;
use crate::device_id::DeviceId;
use crate::hub_wire::{
    CHANNEL_PATH, CHANNEL_UPGRADE, FromHub, HubUrl, ListedDevice, MAX_FROM_HUB_BYTES, ToHub,
};
use crate::sync::lock;

/// Pings go out this often.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// A channel silent for this long (three pings unanswered) is reopened.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// A write to the hub that makes no progress for this long ends the channel.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages queued for the hub; beyond it, signals are dropped (their
/// senders retry).
const OUTGOING_QUEUE: usize = 256;

/// The rest of meshd's hold on one hub's channel.
pub struct HubChannel {
    /// The hub.
    pub url: HubUrl,
    outgoing: Mutex<Option<mpsc::Sender<ToHub>>>,
    rtt: Mutex<Option<Duration>>,
}

impl HubChannel {
    /// A closed channel to `url`.
    pub fn new(url: HubUrl) -> Self {
        HubChannel {
            url,
            outgoing: Mutex::new(None),
            rtt: Mutex::new(None),
        }
    }

    /// Queues a message; false when the channel is down or full.
    pub fn send(&self, message: ToHub) -> bool {
        lock(&self.outgoing)
            .as_ref()
            .is_some_and(|outgoing| outgoing.try_send(message).is_ok())
    }

    /// The channel is open.
    pub fn is_open(&self) -> bool {
        lock(&self.outgoing)
            .as_ref()
            .is_some_and(|outgoing| !outgoing.is_closed())
    }

    /// The last round-trip time measured to the hub.
    pub fn rtt(&self) -> Option<Duration> {
        *lock(&self.rtt)
    }

    fn set(&self, outgoing: Option<mpsc::Sender<ToHub>>) {
        *lock(&self.outgoing) = outgoing;
    }
}

/// Keeps hub `index`'s channel open until cancelled: opens it once the
/// device is registered there (the hub checks the key binding), reopens it
/// with backoff when it fails.
pub async fn run(mesh: Arc<Mesh>, index: usize, cancel: CancellationToken) {
    let Some(hub) = mesh.hubs.get(index).cloned() else {
        return;
    };
    let mut registered = mesh.registered[index].subscribe();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = registered.wait_for(|registered| *registered) => {}
        }
        let outcome = session(&mesh, index, &mut backoff, &cancel).await;
        mesh.local.hubs[index].set(None);
        if cancel.is_cancelled() {
            return;
        }
        if let Err(error) = outcome {
            tracing::debug!(%hub, %error, "hub channel closed; reopening");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

/// Why a channel ended.
#[derive(Debug, thiserror::Error)]
enum ChannelError {
    #[error("{0}")]
    Hub(#[from] HubError),
    #[error("channel: {0}")]
    Link(#[from] meshd_link::LinkError),
    #[error("silent for {}s", SILENCE_LIMIT.as_secs())]
    Silent,
    #[error("no write progress for {}s", WRITE_TIMEOUT.as_secs())]
    Stalled,
    #[error("malformed message from the hub: {0}")]
    Malformed(String),
}

/// How long a stopping device tries to tell a hub it is leaving.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);

/// One channel, from opening it to its end. When meshd stops, the device
/// says [`ToHub::Leave`] first, so its peers drop it at once instead of
/// showing it `connecting` until its registration expires.
async fn session(
    mesh: &Arc<Mesh>,
    index: usize,
    backoff: &mut Backoff,
    cancel: &CancellationToken,
) -> Result<(), ChannelError> {
    let local = &mesh.local;
    let hub = &mesh.hubs[index];
    let open = async {
        let stream = HubConnection::open(hub, None)
            .await?
            .upgrade(CHANNEL_PATH, CHANNEL_UPGRADE, None)
            .await?;
        Ok::<_, ChannelError>(
            meshd_link::channel::open(stream, &local.key, &local.id.to_string()).await?,
        )
    };
    let channel = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        channel = open => channel?,
    };
    let (mut reader, mut writer) = channel.split(MAX_FROM_HUB_BYTES);
    let (outgoing, mut queue) = mpsc::channel(OUTGOING_QUEUE);
    local.hubs[index].set(Some(outgoing));
    tracing::debug!(%hub, "hub channel open");
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut nonce = 0u64;
    let mut heard = Instant::now();
    loop {
        let outgoing = tokio::select! {
            () = cancel.cancelled() => {
                if let Ok(bytes) = serde_json::to_vec(&ToHub::Leave) {
                    let _ = tokio::time::timeout(LEAVE_TIMEOUT, writer.send(&bytes)).await;
                }
                return Ok(());
            }
            message = queue.recv() => match message {
                Some(message) => message,
                None => return Ok(()),
            },
            _ = ping.tick() => {
                if heard.elapsed() >= SILENCE_LIMIT {
                    return Err(ChannelError::Silent);
                }
                nonce += 1;
                ping_sent = Some((nonce, Instant::now()));
                ToHub::Ping { nonce }
            }
            read = reader.next() => {
                let bytes = read?;
                heard = Instant::now();
                let message: FromHub = meshd_ipc::strict::from_slice(&bytes)
                    .map_err(|error| ChannelError::Malformed(error.to_string()))?;
                backoff.reset();
                match message {
                    FromHub::Pong { nonce } => {
                        if let Some((sent_nonce, sent)) = ping_sent
                            && sent_nonce == nonce
                        {
                            *lock(&local.hubs[index].rtt) =
                                Some(sent.elapsed());
                        }
                    }
                    FromHub::Devices { devices, .. } => on_devices(mesh, index, &devices),
                    FromHub::Signal { from, signal } => {
                        tell(mesh, &from, Command::Signal { hub: index, signal });
                    }
                    FromHub::Relay { peer, token, dial } => {
                        tell(mesh, &peer, Command::RelayOffer { hub: index, token, dial });
                    }
                    FromHub::Refused { to, request, reason } => {
                        tell(mesh, &to, Command::Refused { hub: index, request, reason });
                    }
                    FromHub::Left { id } => {
                        if let Ok(id) = DeviceId::parse(&id) {
                            mesh.forget(index, &id);
                        }
                    }
                }
                continue;
            }
        };
        let bytes = serde_json::to_vec(&outgoing)
            .map_err(|error| ChannelError::Malformed(error.to_string()))?;
        // A hub that stops reading must not stall this loop (and with it
        // the silence check) for ever.
        tokio::time::timeout(WRITE_TIMEOUT, writer.send(&bytes))
            .await
            .map_err(|_| ChannelError::Stalled)??;
    }
}

fn on_devices(mesh: &Mesh, index: usize, devices: &[ListedDevice]) {
    let own = mesh.local.id.to_string();
    if !devices.iter().any(|device| device.id == own) {
        mesh.register_now[index].notify_one();
    }
    mesh.update_roster(index, devices);
}

/// Passes a hub message to the peer task of `device`, if there is one.
fn tell(mesh: &Mesh, device: &str, command: Command) {
    if let Ok(device) = DeviceId::parse(device) {
        mesh.tell_peer(&device, command);
    }
}
