//! This device's channel to one hub: an HTTP upgrade on the hub's port,
//! then `Noise_XN` with the device key (`meshd_link::channel`), kept open
//! for as long as meshd runs.
//!
//! Over it the hub pushes the device list whenever it changes, so arrivals
//! and departures are known at once, and passes hole-punching signals and
//! relay offers, which go to the peer task they concern. The device pings
//! every [`PING_INTERVAL`]; the round-trip time is shown by `meshctl
//! status` (hole punching times its own Connect and ConnectReply).
//! A list without this device means the hub lost it (it restarted): the
//! registrar is woken to register again at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Mesh;
use super::backoff::Backoff;
use super::hub_client::{HubConnection, HubError};
use super::hubs::HubId;
use super::peer::Command;
use crate::device_id::DeviceId;
use crate::hub_wire::{
    CHANNEL_PATH, CHANNEL_UPGRADE, FromHub, ListedDevice, MAX_FROM_HUB_BYTES, ToHub,
};

/// Pings go out this often.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// A channel silent for this long (three pings unanswered) is reopened.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// A write to the hub that makes no progress for this long ends the channel.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages queued for the hub; beyond it, signals are dropped (their
/// senders retry).
const OUTGOING_QUEUE: usize = 256;

/// Keeps hub `id`'s channel open until cancelled: opens it once the device
/// is registered there (the hub checks the key binding), reopens it with
/// backoff when it fails.
pub async fn run(mesh: Arc<Mesh>, id: HubId, cancel: CancellationToken) {
    let hub = mesh.local.hubs.get(id);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = hub.wait_registered() => {}
        }
        let outcome = session(&mesh, id, &mut backoff, &cancel).await;
        hub.set_channel(None);
        if cancel.is_cancelled() {
            return;
        }
        if let Err(error) = outcome {
            tracing::debug!(hub = %hub.url(), %error, "hub channel closed; reopening");
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
    id: HubId,
    backoff: &mut Backoff,
    cancel: &CancellationToken,
) -> Result<(), ChannelError> {
    let local = &mesh.local;
    let hub = local.hubs.get(id);
    let open = async {
        let stream = HubConnection::open(hub.url(), None)
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
    hub.set_channel(Some(outgoing));
    tracing::debug!(hub = %hub.url(), "hub channel open");
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
                            hub.set_rtt(sent.elapsed());
                        }
                    }
                    FromHub::Devices { devices, .. } => on_devices(mesh, id, &devices),
                    FromHub::Signal { from, signal } => {
                        tell(mesh, &from, Command::Signal { hub: id, signal });
                    }
                    FromHub::Relay { peer, token, dial } => {
                        tell(mesh, &peer, Command::RelayOffer { hub: id, token, dial });
                    }
                    FromHub::Refused { to, request, reason } => {
                        tell(mesh, &to, Command::Refused { hub: id, request, reason });
                    }
                    FromHub::Left { id } => {
                        if let Ok(id) = DeviceId::parse(&id) {
                            mesh.forget(hub.id(), &id);
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

fn on_devices(mesh: &Mesh, hub: HubId, devices: &[ListedDevice]) {
    let own = mesh.local.id.to_string();
    if !devices.iter().any(|device| device.id == own) {
        mesh.local.hubs.get(hub).register_now();
    }
    mesh.update_roster(hub, devices);
}

/// Passes a hub message to the peer task of `device`, if there is one.
fn tell(mesh: &Mesh, device: &str, command: Command) {
    if let Ok(device) = DeviceId::parse(device) {
        mesh.tell_peer(&device, command);
    }
}
