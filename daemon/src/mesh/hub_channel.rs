//! This device's channel to one hub, and everything it says to that hub: an
//! HTTP upgrade on the hub's port from the mesh port, then the hub
//! handshake (`meshd_link::channel`), kept open for as long as meshd runs
//! (docs/mesh.md, "The hub channel"; docs/security.md).
//!
//! The hub proves its key first. It must be the key the config pins
//! (`http://HOST:PORT#KEY`) or the one `state_dir/known-hubs` holds; a hub
//! never met before has the key it proves pinned there (trust on first
//! use). A hub that proves another key is refused before this device names
//! itself, and nothing it says is used.
//!
//! Over the channel the device registers (its endpoints and the join
//! token) and heartbeats every third of the TTL; the hub answers with the
//! address it sees the channel come from, sends the device list once and
//! then what changes in it (deltas, each saying which version it applies
//! to: one that does not follow from the list held is answered by asking
//! for the whole list again), and passes hole-punching signals and relay
//! offers, which go to the peer task they concern. The device pings every
//! [`PING_INTERVAL`]; the round-trip time is shown by `meshctl status`.
//! Because the channel leaves from the mesh port, the address the hub
//! observes is the NAT mapping that peers dial.
//!
//! The log says when a hub goes down and when it comes back, once per
//! outage and again only if the reason changes, not on every retry.

use std::sync::Arc;
use std::time::Duration;

use meshd_link::LinkError;
use meshd_link::channel::ChannelWriter;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Mesh;
use super::backoff::Backoff;
use super::hub_client::{HubConnection, HubError};
use super::hubs::{Hub, HubId, Trust, VouchedHub};
use super::peer::Command;
use crate::device_id::DeviceId;
use crate::hub_wire::{
    CHANNEL_PATH, CHANNEL_UPGRADE, FromHub, ListedDevice, MAX_FROM_HUB_BYTES, ToHub,
};
use crate::public_key::PublicKey;

/// Pings go out this often.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// A channel silent for this long (three pings unanswered) is reopened.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// A write to the hub that makes no progress for this long ends the channel.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time the hub has to answer a registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Fastest heartbeat, whatever TTL a hub returns.
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// Messages queued for the hub; beyond it, signals are dropped (their
/// senders retry).
const OUTGOING_QUEUE: usize = 256;

/// How long a stopping device tries to tell a hub it is leaving.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);

/// A device that asked for the whole list and still gets deltas that do
/// not apply asks again after this long (its request may have been lost).
const RESYNC_AGAIN: Duration = Duration::from_secs(2);

/// Keeps hub `id`'s channel open until cancelled, reopening it with
/// backoff when it fails.
pub async fn run(mesh: Arc<Mesh>, id: HubId, cancel: CancellationToken) {
    let hub = mesh.local.hubs.get(id);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut outage = Outage::default();
    loop {
        let outcome = session(&mesh, id, &mut backoff, &mut outage, &cancel).await;
        hub.set_channel(None);
        if cancel.is_cancelled() {
            return;
        }
        match outcome {
            // An operator forgot the hub's key: reopen at once, to pin the
            // key it proves now.
            Err(ChannelError::Forgotten) => continue,
            // The hub itself answers again: back to it now.
            Err(ChannelError::GoingHome) => {
                hub.set_stand_in(None);
                tracing::info!(hub = %hub.url(), "the hub answers again: moving back to it from the hub of its cluster");
                continue;
            }
            Err(error) => {
                outage.failed(hub, &error, &mesh.local.id.to_string());
                if !matches!(error, ChannelError::Closed(_)) && move_on(&mesh, hub) {
                    continue;
                }
            }
            Ok(()) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_wait()) => {}
            () = hub.retry_asked() => backoff.reset(),
        }
    }
}

/// After a failure to open the channel: when no hub of this device has a
/// channel open, sends this one to the next hub its cluster vouched for
/// (docs/cluster.md, "When a hub dies"), or back to the hub itself after
/// the last. Whether to try again at once.
fn move_on(mesh: &Mesh, hub: &Hub) -> bool {
    let hubs = &mesh.local.hubs;
    if hubs.any_open() {
        return false;
    }
    let current = hub.target().stand_in;
    let next = hubs.move_on(hub.id());
    match (&current, &next) {
        (None, None) => return false,
        (_, Some(next)) => {
            tracing::info!(hub = %hub.url(), stand_in = %next.url, stand_in_id = %next.id, "no hub of this device answers: trying another hub of its cluster");
        }
        (Some(_), None) => {
            tracing::info!(hub = %hub.url(), "no hub of the cluster answers: trying the hub itself again");
        }
    }
    let back_home = next.is_none();
    // Round the cluster's hubs at once; the hub itself again after the
    // backoff.
    !back_home
}

/// While a channel is on a stand-in, the hub itself is tried this often.
const HOME_CHECK: Duration = Duration::from_secs(10);

/// Completes once the hub itself accepts a connection again, tried every
/// [`HOME_CHECK`]; never when the channel is on the hub itself. A device
/// that moved goes back, so a stand-in that later loses its cluster does
/// not keep it.
async fn hub_answers_again(hub: &Hub, on_stand_in: bool) {
    if !on_stand_in {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(HOME_CHECK).await;
        if HubConnection::open(hub.url(), None).await.is_ok() {
            return;
        }
    }
}

/// Why a channel failed or ended.
#[derive(Debug, thiserror::Error)]
enum ChannelError {
    #[error("{0}")]
    Hub(#[from] HubError),
    #[error("hub channel: {0}")]
    Link(#[from] LinkError),
    #[error("{0}")]
    WrongKey(Box<WrongKey>),
    #[error("{status}: {error}")]
    Refused { status: u16, error: String },
    #[error("no answer to the registration within {}s", REGISTER_TIMEOUT.as_secs())]
    NoAnswer,
    #[error("silent for {}s", SILENCE_LIMIT.as_secs())]
    Silent,
    #[error("no write progress for {}s", WRITE_TIMEOUT.as_secs())]
    Stalled,
    #[error("malformed message from the hub: {0}")]
    Malformed(String),
    /// An open, registered channel ended; not an outage by itself.
    #[error("channel closed: {0}")]
    Closed(Box<ChannelError>),
    /// An operator forgot the hub's key while its channel was open.
    #[error("the hub's key was forgotten by an operator")]
    Forgotten,
    /// The channel is on a stand-in, and the hub itself answers again.
    #[error("the hub answers again")]
    GoingHome,
}

/// A hub that proved another key than the one pinned.
#[derive(Debug)]
struct WrongKey {
    url: String,
    pinned: Trust,
    proved: PublicKey,
    known_hubs: String,
    /// The stand-in's id, when the hub was one (its key was vouched for).
    stand_in: Option<String>,
}

impl std::fmt::Display for WrongKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.url;
        let proved = self.proved;
        if let (Some(id), Some(vouched)) = (&self.stand_in, self.pinned.key()) {
            return write!(
                f,
                "the hub at {url} proved key {proved}, but its cluster announces hub {id} with key {vouched}: nothing it says is used; check [cluster] advertise on hub {id}"
            );
        }
        match self.pinned {
            Trust::Configured(pinned) => write!(
                f,
                "the hub at {url} proved key {proved}, but [mesh] signaling pins {pinned}: nothing it says is used; if the hub's key was replaced on purpose, put the new key after '#' in [mesh] signaling and restart meshd"
            ),
            Trust::Known(pinned) => write!(
                f,
                "the hub at {url} proved key {proved}, but {pinned} was pinned when this device first met it ({}): nothing it says is used; if the hub's key was replaced on purpose, check the new key on the hub (`meshctl status`) and run `meshctl hubs forget {url}`",
                self.known_hubs
            ),
            Trust::FirstUse => write!(f, "the hub at {url} proved key {proved}"),
        }
    }
}

/// What the log has said about a hub's outage, so that it says it once.
#[derive(Default)]
struct Outage {
    /// `Some(true)` while registered, `Some(false)` during an outage.
    reachable: Option<bool>,
    last_error: String,
}

impl Outage {
    fn registered(&mut self, hub: &Hub) {
        let target = hub.target();
        match (self.reachable, &target.stand_in) {
            (Some(true), _) => {}
            (_, Some(stand_in)) => {
                tracing::info!(hub = %hub.url(), stand_in = %target.url, stand_in_id = %stand_in, "moved to another hub of the cluster while this one is down")
            }
            (Some(false), None) => {
                tracing::info!(hub = %hub.url(), "signaling server reachable again")
            }
            (None, None) => tracing::info!(hub = %hub.url(), "registered with signaling server"),
        }
        self.reachable = Some(true);
        self.last_error.clear();
        hub.answered(None);
    }

    fn failed(&mut self, hub: &Hub, error: &ChannelError, id: &str) {
        if let ChannelError::Closed(reason) = error {
            // The hub restarted, or the path broke: the next attempt, a
            // second later, tells which (and the log says so then).
            tracing::debug!(hub = %hub.url(), %reason, "hub channel closed; reopening");
            return;
        }
        let message = explain(error, id);
        hub.answered(Some(message.clone()));
        // Once per outage, and again only if the reason changes.
        if self.reachable != Some(false) || message != self.last_error {
            match error {
                ChannelError::WrongKey(_) => {
                    tracing::warn!(hub = %hub.url(), error = %message, "signaling server refused: it proved another key; retrying with backoff")
                }
                ChannelError::Refused { .. } => {
                    tracing::warn!(hub = %hub.url(), error = %message, "signaling server refused the registration; retrying with backoff")
                }
                ChannelError::Hub(
                    HubError::Http(_) | HubError::Decode(_) | HubError::Status { .. },
                )
                | ChannelError::Link(_)
                | ChannelError::Malformed(_) => {
                    tracing::warn!(hub = %hub.url(), error = %message, "signaling server answered, but not as a meshd hub; retrying with backoff")
                }
                _ => {
                    tracing::warn!(hub = %hub.url(), error = %message, "signaling server unreachable; retrying with backoff")
                }
            }
        }
        self.reachable = Some(false);
        self.last_error = message;
    }
}

/// The error with what to do about it, said once (the hub's own 409 text
/// already names the fix, so it is replaced rather than repeated).
fn explain(error: &ChannelError, id: &str) -> String {
    match error {
        ChannelError::Refused { status: 409, .. } => format!(
            "409: the id {id} is bound to another key there; if this device's key was replaced on purpose, run `meshctl devices remove {id}` on that hub"
        ),
        ChannelError::Refused { status: 401, .. } => {
            "401: wrong or missing join token: set [mesh] join_token to the server's [signaling] join_token".to_owned()
        }
        ChannelError::Hub(HubError::Status { status, .. })
            if status.as_u16() == 404 || status.as_u16() == 426 =>
        {
            format!(
                "{error}; the server does not speak meshd's hub channel ({CHANNEL_UPGRADE}): is it a meshd hub, of this version or newer? Upgrade hubs before their devices"
            )
        }
        ChannelError::Link(LinkError::Handshake(_) | LinkError::Decrypt | LinkError::Io(_)) => format!(
            "{error}; the server does not complete meshd's hub handshake: is it a meshd hub of this version?"
        ),
        _ => error.to_string(),
    }
}

/// One channel, from opening it to its end. When meshd stops, the device
/// says [`ToHub::Leave`] first, so its peers drop it at once instead of
/// showing it `connecting` until its registration expires.
async fn session(
    mesh: &Arc<Mesh>,
    id: HubId,
    backoff: &mut Backoff,
    outage: &mut Outage,
    cancel: &CancellationToken,
) -> Result<(), ChannelError> {
    let local = &mesh.local;
    let hub = local.hubs.get(id);
    let target = hub.target();
    let open = async {
        let connection = HubConnection::open(&target.url, Some(mesh.listen)).await?;
        let (local_addr, remote_addr) = (connection.local_addr(), connection.remote_addr());
        let stream = connection.upgrade(CHANNEL_PATH, CHANNEL_UPGRADE).await?;
        let trust = match (&target.stand_in, target.key) {
            (Some(_), Some(key)) => Trust::Configured(key),
            _ => hub.trust(),
        };
        let expected = trust.key().map(|key| *key.as_bytes());
        let opened =
            meshd_link::channel::open(stream, &local.key, &local.id.to_string(), expected.as_ref())
                .await;
        let (channel, proved) = match opened {
            Ok(opened) => opened,
            Err(LinkError::UnexpectedHubKey { proved }) => {
                return Err(ChannelError::WrongKey(Box::new(WrongKey {
                    url: target.url.to_string(),
                    pinned: trust,
                    proved: PublicKey::from(*proved),
                    known_hubs: mesh.known_hubs.path().display().to_string(),
                    stand_in: target.stand_in.clone(),
                })));
            }
            Err(error) => return Err(error.into()),
        };
        if trust == Trust::FirstUse && target.stand_in.is_none() {
            pin_first_use(mesh, hub, PublicKey::from(proved));
        }
        Ok::<_, ChannelError>((channel, local_addr, remote_addr))
    };
    let (channel, local_addr, remote_addr) = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        opened = open => opened?,
    };
    let (mut reader, mut writer) = channel.split(MAX_FROM_HUB_BYTES);

    // Register first: the hub lists and relays only for registered devices.
    let register = || ToHub::Register {
        addr: mesh.endpoint_via(id, local_addr).to_string(),
        endpoints: mesh.endpoints().iter().map(ToString::to_string).collect(),
        join_token: mesh.join_token.clone(),
    };
    send(&mut writer, &register()).await?;
    let first = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        read = tokio::time::timeout(REGISTER_TIMEOUT, reader.next()) => {
            read.map_err(|_| ChannelError::NoAnswer)??
        }
    };
    let mut ttl = match decode(&first)? {
        FromHub::Registered { observed, ttl_secs } => {
            let ttl = Duration::from_secs(ttl_secs.max(3));
            hub.registered(observed, ttl);
            ttl
        }
        FromHub::RegisterRefused { status, error } => {
            return Err(ChannelError::Refused { status, error });
        }
        other => {
            return Err(ChannelError::Malformed(format!(
                "expected an answer to the registration, got {other:?}"
            )));
        }
    };
    hub.set_connection(local_addr, remote_addr);
    let (outgoing, mut queue) = mpsc::channel(OUTGOING_QUEUE);
    hub.set_channel(Some(outgoing));
    outage.registered(hub);
    backoff.reset();
    tracing::debug!(hub = %hub.url(), "hub channel open");

    let heartbeat = |ttl: Duration| (ttl / 3).max(MIN_HEARTBEAT);
    let mut next_heartbeat = Instant::now() + heartbeat(ttl);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut back_home = std::pin::pin!(hub_answers_again(hub, target.stand_in.is_some()));
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut nonce = 0u64;
    let mut heard = Instant::now();
    // The hub sends its list once, then only changes; each heartbeat
    // answer says the list still stands, so the roster counts this hub as
    // answering and lets the devices it dropped go (roster.rs).
    let mut list = ListVersion::default();
    let ended = async {
        loop {
            let outgoing = tokio::select! {
                () = cancel.cancelled() => {
                    let _ = tokio::time::timeout(LEAVE_TIMEOUT, send(&mut writer, &ToHub::Leave)).await;
                    return Ok(());
                }
                message = queue.recv() => match message {
                    Some(message) => message,
                    None => return Ok(()),
                },
                () = tokio::time::sleep_until(next_heartbeat) => {
                    next_heartbeat = Instant::now() + heartbeat(ttl);
                    register()
                }
                // The hub's list lacks this device (it expired there while
                // the channel stayed open): register now.
                () = hub.register_asked() => register(),
                () = hub.retry_asked() => return Err(ChannelError::Forgotten),
                () = &mut back_home => return Err(ChannelError::GoingHome),
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
                    let mut answer = None;
                    match decode(&bytes)? {
                        FromHub::Registered { observed, ttl_secs } => {
                            ttl = Duration::from_secs(ttl_secs.max(3));
                            hub.registered(observed, ttl);
                            if list.held.is_some() {
                                mesh.confirm_roster(id);
                            }
                        }
                        FromHub::RegisterRefused { status, error } => {
                            return Err(ChannelError::Refused { status, error });
                        }
                        FromHub::Observed { .. } => {}
                        FromHub::Pong { nonce } => {
                            if let Some((sent_nonce, sent)) = ping_sent
                                && sent_nonce == nonce
                            {
                                hub.set_rtt(sent.elapsed());
                            }
                        }
                        FromHub::Devices { version, devices } => {
                            list.whole(version);
                            on_devices(mesh, id, &devices);
                        }
                        FromHub::Delta { from, version, devices, removed } => {
                            if list.applies(from) {
                                list.held = Some(version);
                                on_delta(mesh, id, &devices, &removed);
                            } else if list.should_ask_again() {
                                tracing::debug!(hub = %hub.url(), from, version, held = ?list.held, "hub list delta does not apply; asking for the whole list");
                                answer = Some(ToHub::Resync);
                            }
                        }
                        FromHub::Signal { from, signal } => {
                            tell(mesh, &from, Command::Signal { hub: id, signal });
                        }
                        FromHub::Relay { peer, token, dial, at } => {
                            match at.as_ref().map(VouchedHub::from_wire).transpose() {
                                Ok(at) => tell(mesh, &peer, Command::RelayOffer { hub: id, token, dial, at }),
                                // The peer asks again when no relay comes.
                                Err(error) => tracing::debug!(hub = %hub.url(), %peer, %error, "relay offer on another hub ignored: its hub does not parse"),
                            }
                        }
                        FromHub::Hubs { hubs } => {
                            let vouched = hubs.iter().filter_map(|other| {
                                VouchedHub::from_wire(other)
                                    .inspect_err(|error| tracing::debug!(hub = %hub.url(), other = %other.id, %error, "a hub of the cluster ignored: it does not parse"))
                                    .ok()
                            });
                            mesh.local.hubs.vouched_by(id, vouched.collect());
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
                    match answer {
                        Some(answer) => answer,
                        None => continue,
                    }
                }
            };
            send(&mut writer, &outgoing).await?;
        }
    };
    // A refusal of a heartbeat (a rotated join token, a removed id) is an
    // outage to report; anything else that ends an open channel is not yet.
    ended.await.map_err(|error| match error {
        ChannelError::Refused { .. } | ChannelError::Forgotten | ChannelError::GoingHome => error,
        other => ChannelError::Closed(Box::new(other)),
    })
}

/// Pins the key a hub proved on first contact: in memory at once, before
/// anything else is said, and in `state_dir/known-hubs` by a tracked task
/// off the async workers, so the file's fsync does not delay the
/// registration (shutdown waits for it). A file that cannot be written
/// leaves the pin in memory for this run, and says so.
fn pin_first_use(mesh: &Arc<Mesh>, hub: &Hub, key: PublicKey) {
    hub.set_trust(Trust::Known(key));
    let url = hub.url().to_string();
    let known = mesh.known_hubs.clone();
    mesh.local.tracker.spawn(async move {
        let saved = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || known.pin(&url, key)).await
        };
        match saved {
            Ok(Ok(())) => {
                tracing::info!(hub = %url, hub_key = %key, "pinned the hub's key on first contact");
            }
            Ok(Err(error)) => {
                tracing::warn!(hub = %url, hub_key = %key, %error, "pinned the hub's key for this run only");
            }
            Err(error) => {
                tracing::warn!(hub = %url, hub_key = %key, %error, "pinned the hub's key for this run only");
            }
        }
    });
}

/// Sends one message. A hub that stops reading must not stall the channel
/// task (and with it the silence check) for ever.
async fn send<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut ChannelWriter<W>,
    message: &ToHub,
) -> Result<(), ChannelError> {
    let bytes =
        serde_json::to_vec(message).map_err(|error| ChannelError::Malformed(error.to_string()))?;
    tokio::time::timeout(WRITE_TIMEOUT, writer.send(&bytes))
        .await
        .map_err(|_| ChannelError::Stalled)?
        .map_err(ChannelError::from)
}

fn decode(bytes: &[u8]) -> Result<FromHub, ChannelError> {
    meshd_ipc::strict::from_slice(bytes).map_err(|error| ChannelError::Malformed(error.to_string()))
}

/// The list version this device holds from one hub, and whether it is
/// waiting for the whole list.
#[derive(Default)]
struct ListVersion {
    /// The version of the list held; `None` before the first whole list
    /// and after a delta that did not apply.
    held: Option<u64>,
    /// When the whole list was last asked for.
    asked: Option<Instant>,
}

impl ListVersion {
    fn whole(&mut self, version: u64) {
        self.held = Some(version);
        self.asked = None;
    }

    /// A delta from `from` applies to the list held. One that does not
    /// leaves no list version held: nothing more applies until the whole
    /// list comes, so the roster is never built from a wrong base.
    fn applies(&mut self, from: u64) -> bool {
        let applies = self.held == Some(from);
        if !applies {
            self.held = None;
        }
        applies
    }

    /// Whether to ask for the whole list now (not again while an earlier
    /// request may still be answered).
    fn should_ask_again(&mut self) -> bool {
        let now = Instant::now();
        let ask = self
            .asked
            .is_none_or(|asked| now.duration_since(asked) >= RESYNC_AGAIN);
        if ask {
            self.asked = Some(now);
        }
        ask
    }
}

fn on_delta(mesh: &Mesh, hub: HubId, devices: &[ListedDevice], removed: &[String]) {
    let own = mesh.local.id.as_str();
    if removed.iter().any(|id| id == own) {
        mesh.local.hubs.get(hub).register_now();
    }
    mesh.apply_roster_delta(hub, devices, removed);
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
