//! The mesh role: this node as a device.
//!
//! - [`identity`]: the static key pair in the state directory.
//! - [`registrar`]: one task per signaling server: register, heartbeat, list.
//! - [`hub_channel`]: one task per signaling server: the authenticated
//!   channel over which the hub pushes list changes, hole-punching signals
//!   and relay offers.
//! - [`roster`]: the servers' lists, merged; the source of trusted keys.
//! - [`peer`]: one task per other device, owning the encrypted link to it
//!   (the link protocol itself is the `meshd-link` crate); [`path`] opens
//!   those links, directly or through a hub's relay.
//! - [`netcheck`]: what the NAT in front of this device does.
//! - [`listener`]: inbound links, checked against the roster.
//! - [`inbox`]: messages received, for `meshctl messages`.
//!
//! [`MeshHandle`] is the role's face to the control socket: status, devices,
//! send, ping and messages.

mod backoff;
mod hub_channel;
pub(crate) mod hub_client;
pub(crate) mod identity;
mod inbox;
mod interfaces;
mod link_io;
mod listener;
mod netcheck;
mod path;
mod peer;
mod registrar;
mod roster;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshd_ipc::{
    DeviceEntry, HubStatus, InboxMessage, LinkState, MeshStatus, NetcheckReply, PingReply,
    SendResult,
};
use meshd_link::{Hello, StaticKey};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MeshConfig;
use crate::device_id::DeviceId;
use crate::hub_wire::{HubUrl, ListedDevice, MAX_ENDPOINTS};
use crate::public_key::PublicKey;
use crate::sync::lock;
use hub_client::HubConnection;
pub use identity::IdentityError;
use inbox::Inbox;
use path::Established;
pub use peer::SendError;
use peer::{Command, PeerHandle};
use roster::{KeyStatus, Roster};

/// The longest message `meshctl send` accepts, in bytes; the link checks it
/// again on receipt.
pub const MAX_MESSAGE_BYTES: usize = meshd_link::MAX_MESSAGE_BYTES;

/// Devices this node keeps links to at most.
const MAX_PEERS: usize = 4096;

/// A hub's device list counts for this long when its TTL is unknown.
const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// On-demand roster refreshes (for diallers not known yet) happen at most
/// this often, whoever asks.
const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// Time an on-demand refresh may take: well inside the dialler's handshake
/// timeout.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the roster is re-merged, so devices whose hubs' answers expired
/// lose their links even while no hub answers.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// Why the mesh role could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The device key.
    #[error("device key: {0}")]
    Identity(#[from] IdentityError),
    /// The listener's address.
    #[error("mesh listener: {0}")]
    Listener(std::io::Error),
    /// A task meshd depends on failed.
    #[error("{0}")]
    Internal(String),
}

/// Why a `send` or `ping` request failed before reaching a peer task.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Bad arguments.
    #[error("{0}")]
    BadRequest(String),
    /// No signaling server lists the device.
    #[error(
        "unknown device {0}: no signaling server lists it; `meshctl devices` shows the known ones"
    )]
    Unknown(String),
    /// The device is listed but cannot have a link.
    #[error("no link to {device}: {reason}")]
    NoKey {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: &'static str,
    },
    /// The peer task answered with a failure.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// What every peer task and the listener share about this node.
pub struct Local {
    /// This device's id.
    pub id: DeviceId,
    /// Its key pair.
    pub key: StaticKey,
    /// Its public key, as the hubs list it.
    pub public: PublicKey,
    /// Random per start; lets peers tell a restart from a duplicate link.
    pub instance: u64,
    /// The mesh listener's address: dials leave from its port, so that the
    /// NAT mapping a hub observed is the one they use.
    pub listen: SocketAddr,
    /// Received messages.
    pub inbox: Inbox,
    /// Ids for sent messages: one counter per process, so a peer task that
    /// is re-created never reuses an id the receiver would drop as a
    /// duplicate.
    next_message: AtomicU64,
    /// The channel to each hub, by index in `[mesh] signaling`.
    pub hubs: Vec<hub_channel::HubChannel>,
    /// meshd is stopping.
    pub cancel: CancellationToken,
    /// Every mesh task runs here, so shutdown waits for them.
    pub tracker: TaskTracker,
    /// A peer task ended on its own (see `peer::ExitWatch`): reconcile now.
    pub peer_exited: tokio::sync::Notify,
}

impl Local {
    /// A message id never used before by this process.
    pub fn next_message_id(&self) -> u64 {
        self.next_message.fetch_add(1, Ordering::Relaxed)
    }

    /// Our side of a handshake with `peer`.
    pub fn hello_to(&self, peer: &DeviceId) -> Hello {
        Hello {
            from: self.id.to_string(),
            to: peer.to_string(),
            instance: self.instance,
        }
    }
}

struct HubState {
    status: HubStatus,
    ttl: Duration,
}

/// The role's shared state.
pub struct Mesh {
    local: Arc<Local>,
    listen: SocketAddr,
    /// This node's own hub serves other machines: a loopback route to a hub
    /// is replaced by the host's reachable addresses.
    advertise_interfaces: bool,
    advertise: Vec<SocketAddr>,
    hubs: Vec<HubUrl>,
    join_token: String,
    roster: Mutex<Roster>,
    hub_states: Mutex<Vec<HubState>>,
    /// The endpoint learnt on the route to each hub, by hub index.
    endpoints: Mutex<Vec<Option<SocketAddr>>>,
    peers: Mutex<HashMap<DeviceId, PeerHandle>>,
    /// Devices whose peer task died, and when it may be started again.
    restarts: Mutex<HashMap<DeviceId, Restart>>,
    /// `too many devices; no link made`, once per interval with a count:
    /// every reconcile would say it again for every device over the cap.
    over_cap: crate::log_limit::LogLimiter,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Per hub: wakes its registrar to register at once.
    register_now: Vec<tokio::sync::Notify>,
    /// Per hub: this device is registered there (so its channel can open).
    registered: Vec<watch::Sender<bool>>,
}

/// Binds the peer-to-peer listener; before [`start`], so READY=1 means it
/// is up. The port is shared (SO_REUSEPORT) with this device's connections
/// to its hubs, so that a hub observes the NAT mapping of the mesh port.
pub async fn bind(config: &MeshConfig) -> std::io::Result<TcpListener> {
    // SO_REUSEPORT would let a second meshd share the port without a word.
    // A probe without it fails on any listener already there, and only on
    // a listener (SO_REUSEADDR passes over connections in TIME_WAIT).
    if config.listen.port() != 0 {
        let probe = match config.listen {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        probe.set_reuseaddr(true)?;
        probe.bind(config.listen)?;
    }
    reusable_socket(config.listen)?.listen(LISTEN_BACKLOG)
}

/// Pending connections the mesh listener queues.
const LISTEN_BACKLOG: u32 = 1024;

/// A TCP socket bound to `local` with SO_REUSEADDR and SO_REUSEPORT, so that
/// the listener and outgoing connections can share the mesh port.
pub(crate) fn reusable_socket(local: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match local {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(local)?;
    Ok(socket)
}

/// Loads the device key, creating it on first start; before any role
/// starts, so a damaged key file stops meshd before it serves anything.
pub async fn load_identity(state_dir: &Path) -> Result<StaticKey, MeshError> {
    let state_dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || identity::load_or_create(&state_dir))
        .await
        .map_err(|error| MeshError::Internal(format!("loading the device key: {error}")))?
        .map_err(MeshError::from)
}

/// The signaling role of the same process, as the mesh role sees it.
pub struct LocalHub {
    /// Changes when that hub's device list changes; the roster is then
    /// refreshed at once rather than at the next round.
    pub changes: watch::Receiver<u64>,
    /// It listens beyond loopback, so devices on other machines use it: this
    /// node must not register its loopback address with it.
    pub serves_others: bool,
}

/// Starts the role; `local_hub` when this node is also a hub.
pub async fn start(
    config: &MeshConfig,
    id: DeviceId,
    key: StaticKey,
    listener: TcpListener,
    local_hub: Option<LocalHub>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<MeshHandle, MeshError> {
    let hubs = config.signaling.clone();
    let listen = listener.local_addr().map_err(MeshError::Listener)?;
    let public = PublicKey::from(*key.public());
    let local = Arc::new(Local {
        id,
        key,
        public,
        instance: rand::random(),
        listen,
        inbox: Inbox::new(),
        next_message: AtomicU64::new(0),
        hubs: hubs
            .iter()
            .cloned()
            .map(hub_channel::HubChannel::new)
            .collect(),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        peer_exited: tokio::sync::Notify::new(),
    });
    let hub_states = hubs
        .iter()
        .map(|hub| HubState {
            status: HubStatus {
                url: hub.to_string(),
                reachable: false,
                observed: None,
                error: None,
                channel: false,
                rtt_ms: None,
            },
            ttl: DEFAULT_TTL,
        })
        .collect();
    let advertise_interfaces = local_hub.as_ref().is_some_and(|hub| hub.serves_others);
    let mesh = Arc::new(Mesh {
        local,
        listen,
        advertise_interfaces,
        advertise: config.advertise.clone(),
        roster: Mutex::new(Roster::new(hubs.len())),
        hubs,
        join_token: config.join_token.clone(),
        hub_states: Mutex::new(hub_states),
        endpoints: Mutex::new(vec![None; config.signaling.len()]),
        peers: Mutex::new(HashMap::new()),
        restarts: Mutex::new(HashMap::new()),
        over_cap: crate::log_limit::LogLimiter::default(),
        last_refresh: tokio::sync::Mutex::new(None),
        register_now: config
            .signaling
            .iter()
            .map(|_| tokio::sync::Notify::new())
            .collect(),
        registered: config
            .signaling
            .iter()
            .map(|_| watch::Sender::new(false))
            .collect(),
    });
    tracker.spawn(listener::accept_loop(
        mesh.clone(),
        listener,
        cancel.clone(),
    ));
    for index in 0..mesh.hubs.len() {
        tracker.spawn(registrar::run(mesh.clone(), index, cancel.clone()));
        tracker.spawn(hub_channel::run(mesh.clone(), index, cancel.clone()));
    }
    if let Some(hub) = local_hub {
        tracker.spawn(refresh_on_hub_changes(
            mesh.clone(),
            hub.changes,
            cancel.clone(),
        ));
    }
    tracker.spawn(reconcile_periodically(mesh.clone(), cancel));
    tracing::info!(
        role = "mesh",
        %listen,
        pubkey = %public,
        hubs = mesh.hubs.len(),
        "mesh device listening"
    );
    Ok(MeshHandle { mesh })
}

async fn refresh_on_hub_changes(
    mesh: Arc<Mesh>,
    mut changes: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = changes.changed() => match changed {
                Ok(()) => mesh.refresh_roster().await,
                Err(_closed) => return,
            },
        }
    }
}

async fn reconcile_periodically(mesh: Arc<Mesh>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => mesh.reconcile(),
            () = mesh.local.peer_exited.notified() => mesh.reconcile(),
        }
    }
    // Dropping the handles stops the peer tasks.
    lock(&mesh.peers).clear();
}

impl Mesh {
    /// The endpoint peers should dial, given our local address on the route
    /// to a hub; remembered among the advertised endpoints. Configured
    /// `advertise` endpoints replace all of this.
    fn endpoint_via(&self, hub: usize, local: SocketAddr) -> SocketAddr {
        if let Some(first) = self.advertise.first() {
            return *first;
        }
        let endpoint = if self.listen.ip().is_unspecified() {
            SocketAddr::new(local.ip(), self.listen.port())
        } else {
            self.listen
        };
        if let Some(slot) = lock(&self.endpoints).get_mut(hub) {
            *slot = Some(endpoint);
        }
        // Over loopback (a node that is its own hub) the route's address is
        // no use to anyone else: register an address of the host instead.
        if endpoint.ip().is_loopback() && self.reports_interfaces() {
            return self.endpoints().first().copied().unwrap_or(endpoint);
        }
        endpoint
    }

    /// The endpoints to advertise: configured, or one per route to a hub,
    /// without repeats (a route that changes replaces its old address).
    /// A loopback route, on a node whose own hub serves other machines and
    /// whose mesh listens on every interface, adds every reachable address
    /// of the host, before the loopback one (`interfaces.rs`).
    fn endpoints(&self) -> Vec<SocketAddr> {
        if !self.advertise.is_empty() {
            return self.advertise.clone();
        }
        let routes: Vec<SocketAddr> = lock(&self.endpoints).iter().flatten().copied().collect();
        let mut candidates: Vec<SocketAddr> = Vec::new();
        let over_loopback = routes.iter().any(|endpoint| endpoint.ip().is_loopback());
        if over_loopback && self.reports_interfaces() {
            candidates.extend(interfaces::reachable_endpoints(self.listen.port()));
        }
        // Routed addresses first among what is left, loopback last.
        candidates.extend(routes.iter().filter(|e| !e.ip().is_loopback()));
        candidates.extend(routes.iter().filter(|e| e.ip().is_loopback()));
        let mut endpoints: Vec<SocketAddr> = Vec::new();
        for endpoint in candidates {
            if !endpoints.contains(&endpoint) && endpoints.len() < MAX_ENDPOINTS {
                endpoints.push(endpoint);
            }
        }
        endpoints
    }

    /// Whether loopback routes are replaced by the host's addresses.
    fn reports_interfaces(&self) -> bool {
        self.advertise_interfaces && self.listen.ip().is_unspecified()
    }

    fn hub_registered(&self, index: usize, observed: String, ttl: Duration) {
        if let Some(state) = lock(&self.hub_states).get_mut(index) {
            state.status.observed = Some(observed);
            state.ttl = ttl;
        }
    }

    fn hub_answered(&self, index: usize, error: Option<String>) {
        if let Some(state) = lock(&self.hub_states).get_mut(index) {
            state.status.reachable = error.is_none();
            state.status.error = error;
        }
    }

    fn hub_ttl(&self, index: usize) -> Duration {
        lock(&self.hub_states)
            .get(index)
            .map_or(DEFAULT_TTL, |state| state.ttl)
    }

    fn update_roster(&self, index: usize, devices: &[ListedDevice]) {
        let ttl = self.hub_ttl(index);
        lock(&self.roster).update(index, devices, ttl, Instant::now());
        self.reconcile();
    }

    /// Hub `index` says `id` left cleanly: drop it from that hub's view now.
    fn forget(&self, index: usize, id: &DeviceId) {
        lock(&self.roster).forget(index, id, Instant::now());
        self.reconcile();
    }

    fn key_of(&self, id: &DeviceId) -> Option<KeyStatus> {
        lock(&self.roster).key_of(id, Instant::now())
    }

    /// Fetches every hub's list, unless a fetch that started after this
    /// call was made already did; at most one fetch per
    /// [`REFRESH_INTERVAL`], whoever asks, so diallers cannot make meshd
    /// hammer its hubs.
    async fn refresh_roster(self: &Arc<Self>) {
        let asked = Instant::now();
        let mut last = self.last_refresh.lock().await;
        if let Some(started) = *last {
            if started >= asked {
                return;
            }
            let next = started + REFRESH_INTERVAL;
            if next > Instant::now() {
                tokio::time::sleep_until(next.into()).await;
            }
        }
        *last = Some(Instant::now());
        let mut fetches = tokio::task::JoinSet::new();
        for index in 0..self.hubs.len() {
            let mesh = self.clone();
            fetches.spawn(async move {
                let mut connection = HubConnection::open(&mesh.hubs[index], None).await?;
                let devices = connection.devices().await?;
                lock(&mesh.roster).update(index, &devices, mesh.hub_ttl(index), Instant::now());
                Ok::<_, hub_client::HubError>(())
            });
        }
        // Each hub's answer starts its peer tasks as soon as it arrives.
        let _ = tokio::time::timeout(REFRESH_TIMEOUT, async {
            while fetches.join_next().await.is_some() {
                self.reconcile();
            }
        })
        .await;
        drop(last);
        self.reconcile();
    }

    /// Starts peer tasks for newly listed devices, updates the others, and
    /// stops those no hub lists any more (or whose key changed).
    fn reconcile(&self) {
        let now = Instant::now();
        let merged = lock(&self.roster).merged(now);
        let mut peers = lock(&self.peers);
        let mut restarts = lock(&self.restarts);
        restarts.retain(|id, _| merged.contains_key(id));
        peers.retain(|id, handle| {
            if handle.died() {
                let restart = restarts
                    .entry(id.clone())
                    .or_insert_with(|| Restart::new(now));
                restart.died(now, handle.started.elapsed());
                return false;
            }
            let reason = match merged.get(id) {
                None => "no signaling server that answers lists it any more",
                Some(device) if device.key == KeyStatus::Trusted(handle.key) => return true,
                Some(device) if device.key == KeyStatus::Conflict => {
                    "the signaling servers list different keys for it"
                }
                Some(_) => "the signaling servers list another key for it",
            };
            tracing::info!(peer = %id, reason, "closing the link to a device");
            handle.stop();
            false
        });
        let mut left_out = 0usize;
        for (id, device) in merged {
            if id == self.local.id {
                continue;
            }
            let KeyStatus::Trusted(key) = device.key else {
                continue;
            };
            if restarts
                .get(&id)
                .is_some_and(|restart| restart.not_before > now)
            {
                continue;
            }
            match peers.get(&id) {
                Some(handle) => handle.update(device.listing),
                None if peers.len() < MAX_PEERS => {
                    let handle =
                        PeerHandle::spawn(self.local.clone(), id.clone(), key, device.listing);
                    peers.insert(id, handle);
                }
                None => left_out += 1,
            }
        }
        if left_out > 0 {
            self.over_cap.log(|suppressed| {
                tracing::warn!(
                    devices = left_out,
                    max = MAX_PEERS,
                    suppressed,
                    "too many devices; no link made"
                );
            });
        }
        // Maps that grew for a crowd of (perhaps fake) devices give the
        // memory back once it has gone.
        if peers.capacity() > 64 && peers.len() < peers.capacity() / 4 {
            peers.shrink_to_fit();
        }
    }

    /// Passes a hub's message to a peer task, unless it is too busy to
    /// take it now (the sender retries).
    fn tell_peer(&self, peer: &DeviceId, command: Command) {
        if let Some(handle) = lock(&self.peers).get(peer) {
            let _ = handle.command_sender().try_send(command);
        }
    }

    /// Hands an accepted link to its peer task.
    async fn deliver(&self, peer: &DeviceId, key: PublicKey, established: Established) {
        let sender = {
            let peers = lock(&self.peers);
            peers
                .get(peer)
                .filter(|handle| handle.key == key)
                .map(|handle| handle.command_sender())
        };
        match sender {
            Some(sender) => {
                let _ = sender.send(Command::Established(established)).await;
            }
            None => {
                tracing::debug!(%peer, "no peer task for an accepted link; closed");
            }
        }
    }
}

/// How long a device whose peer task keeps dying waits before the next.
#[derive(Debug)]
struct Restart {
    /// Deaths in a row, each within [`HEALTHY_RUN`] of its start.
    attempts: u32,
    not_before: Instant,
}

/// A peer task that ran this long before it died starts over at once.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Longest wait between restarts of a peer task that keeps dying.
const MAX_RESTART_WAIT: Duration = Duration::from_secs(30);

impl Restart {
    fn new(now: Instant) -> Restart {
        Restart {
            attempts: 0,
            not_before: now,
        }
    }

    /// Records a death at `now` of a task that ran `lived`: the first is
    /// replaced at once, then 1 s, 2 s, 4 s ... up to 30 s apart.
    fn died(&mut self, now: Instant, lived: Duration) {
        if lived >= HEALTHY_RUN {
            self.attempts = 0;
        }
        let wait = match self.attempts {
            0 => Duration::ZERO,
            n => (Duration::from_secs(1) * 2u32.saturating_pow(n - 1)).min(MAX_RESTART_WAIT),
        };
        self.attempts = self.attempts.saturating_add(1);
        self.not_before = now + wait;
    }
}

/// The mesh role as the control socket sees it.
#[derive(Clone)]
pub struct MeshHandle {
    mesh: Arc<Mesh>,
}

impl MeshHandle {
    /// For `meshctl status`.
    pub fn status(&self) -> MeshStatus {
        let mesh = &self.mesh;
        let signaling: Vec<HubStatus> = lock(&mesh.hub_states)
            .iter()
            .zip(&mesh.local.hubs)
            .map(|(state, channel)| HubStatus {
                channel: channel.is_open(),
                rtt_ms: channel.rtt().map(millis),
                ..state.status.clone()
            })
            .collect();
        let links = lock(&mesh.peers)
            .values()
            .filter(|handle| matches!(handle.view().state, LinkState::Direct | LinkState::Relayed))
            .count();
        MeshStatus {
            listen: mesh.listen.to_string(),
            pubkey: mesh.local.public.to_base64(),
            observed: signaling.iter().find_map(|hub| hub.observed.clone()),
            links,
            endpoints: mesh.endpoints().iter().map(ToString::to_string).collect(),
            signaling,
        }
    }

    /// For `meshctl devices`: every device the hubs list, with the link.
    pub fn devices(&self) -> Vec<DeviceEntry> {
        let mesh = &self.mesh;
        let merged = lock(&mesh.roster).merged(Instant::now());
        let peers = lock(&mesh.peers);
        merged
            .into_iter()
            .map(|(id, device)| {
                let listing = device.listing;
                let (link, endpoint, rtt) = if id == mesh.local.id {
                    (LinkState::Local, None, None)
                } else {
                    match peers.get(&id) {
                        Some(handle) => {
                            let view = handle.view();
                            (view.state, view.endpoint, view.rtt)
                        }
                        None => (LinkState::Down, None, None),
                    }
                };
                DeviceEntry {
                    id: id.to_string(),
                    addr: listing.addr.to_string(),
                    observed: listing.observed,
                    last_seen: listing.last_seen,
                    pubkey: listing.pubkey.map(PublicKey::to_base64),
                    link: Some(link),
                    endpoint: endpoint.map(|endpoint| endpoint.to_string()),
                    rtt_ms: rtt.map(millis),
                    endpoints: listing.endpoints.iter().map(ToString::to_string).collect(),
                }
            })
            .collect()
    }

    /// Delivers `text` to `device`; the time to its acknowledgement.
    pub async fn send(&self, device: &str, text: String) -> Result<Duration, RequestError> {
        check_text(&text)?;
        let id = self.peer_id(device)?;
        let (reply, answer) = oneshot::channel();
        self.command(
            &id,
            Command::Send {
                text: Bytes::from(text),
                reply,
            },
        )
        .await?;
        Ok(self.await_answer(&id, answer).await?)
    }

    /// Delivers `text` to every other device at once.
    pub async fn send_all(&self, text: String) -> Result<Vec<SendResult>, RequestError> {
        check_text(&text)?;
        let mesh = &self.mesh;
        let others: Vec<DeviceId> = lock(&mesh.roster)
            .merged(Instant::now())
            .into_keys()
            .filter(|id| *id != mesh.local.id)
            .collect();
        let text = Bytes::from(text);
        let mut sends = tokio::task::JoinSet::new();
        for id in others {
            let handle = self.clone();
            let text = text.clone();
            sends.spawn(async move {
                let (reply, answer) = oneshot::channel();
                let outcome = match handle.peer_id(&id.to_string()) {
                    Err(error) => Err(error),
                    Ok(_) => handle.command(&id, Command::Send { text, reply }).await,
                };
                let outcome = match outcome {
                    Ok(()) => handle
                        .await_answer(&id, answer)
                        .await
                        .map_err(RequestError::from),
                    Err(error) => Err(error),
                };
                SendResult {
                    device: id.to_string(),
                    delivered: outcome.is_ok(),
                    rtt_ms: outcome.as_ref().ok().map(|rtt| millis(*rtt)),
                    error: outcome.err().map(|error| error.to_string()),
                }
            });
        }
        let mut results = Vec::new();
        while let Some(result) = sends.join_next().await {
            if let Ok(result) = result {
                results.push(result);
            }
        }
        results.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(results)
    }

    /// Measures the round-trip time of the link to `device`.
    pub async fn ping(&self, device: &str) -> Result<PingReply, RequestError> {
        let id = self.peer_id(device)?;
        let (reply, answer) = oneshot::channel();
        self.command(&id, Command::Ping { reply }).await?;
        let outcome = self.await_answer(&id, answer).await?;
        Ok(PingReply {
            device: id.to_string(),
            rtt_ms: millis(outcome.rtt),
            path: outcome.path,
            endpoint: Some(outcome.endpoint.to_string()),
        })
    }

    /// Probes the NAT in front of this device through every hub.
    pub async fn netcheck(&self) -> NetcheckReply {
        netcheck::run(&self.mesh.hubs, self.mesh.listen).await
    }

    /// The inbox, oldest first.
    pub fn messages(&self) -> Vec<InboxMessage> {
        self.mesh.local.inbox.list()
    }

    /// The inbox and a feed of later messages.
    pub fn follow(&self) -> (Vec<InboxMessage>, broadcast::Receiver<InboxMessage>) {
        self.mesh.local.inbox.follow()
    }

    fn peer_id(&self, device: &str) -> Result<DeviceId, RequestError> {
        let id = DeviceId::parse(device).map_err(RequestError::BadRequest)?;
        if id == self.mesh.local.id {
            return Err(RequestError::BadRequest(format!(
                "{id} is this device; name another one"
            )));
        }
        match self.mesh.key_of(&id) {
            None => Err(RequestError::Unknown(id.to_string())),
            Some(KeyStatus::Missing) => Err(RequestError::NoKey {
                device: id,
                reason: "it registered without a public key, so no link can be authenticated",
            }),
            Some(KeyStatus::Conflict) => Err(RequestError::NoKey {
                device: id,
                reason: "the signaling servers list different keys for it",
            }),
            Some(KeyStatus::Trusted(_)) => Ok(id),
        }
    }

    async fn command(&self, id: &DeviceId, command: Command) -> Result<(), RequestError> {
        let sender = lock(&self.mesh.peers)
            .get(id)
            .map(PeerHandle::command_sender);
        let stopped = || SendError::Stopped {
            device: id.clone(),
            reason: if self.mesh.local.cancel.is_cancelled() {
                "meshd is stopping".to_owned()
            } else {
                "its link task ended and is being restarted; try again in a moment".to_owned()
            },
        };
        let sender = sender.ok_or_else(|| RequestError::NoKey {
            device: id.clone(),
            reason: "this node keeps links to at most 4096 devices",
        })?;
        sender.send(command).await.map_err(|_| stopped())?;
        Ok(())
    }

    async fn await_answer<T>(
        &self,
        id: &DeviceId,
        answer: oneshot::Receiver<Result<T, SendError>>,
    ) -> Result<T, SendError> {
        // The peer task answers by its own deadline (extended once when a
        // direct path fails over: silence limit plus another answer time);
        // this is a backstop.
        match tokio::time::timeout(peer::ANSWER_TIMEOUT * 3, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_dropped)) => Err(SendError::Stopped {
                device: id.clone(),
                reason: "the link task ended".to_owned(),
            }),
            Err(_elapsed) => Err(SendError::Timeout { device: id.clone() }),
        }
    }
}

fn check_text(text: &str) -> Result<(), RequestError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(RequestError::BadRequest(format!(
            "message of {} bytes; at most {MAX_MESSAGE_BYTES} are allowed",
            text.len()
        )));
    }
    Ok(())
}

/// Milliseconds, rounded to the microsecond, for `rtt_ms` fields.
pub fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dying_peer_task_is_restarted_at_once_then_with_backoff() {
        let t0 = Instant::now();
        let mut restart = Restart::new(t0);
        let waits: Vec<Duration> = (0..8)
            .map(|_| {
                restart.died(t0, Duration::from_millis(10));
                restart.not_before - t0
            })
            .collect();
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(30),
                secs(30)
            ]
        );
        // A task that ran a minute before dying starts over at once.
        restart.died(t0, HEALTHY_RUN);
        assert_eq!(restart.not_before, t0);
    }
}
