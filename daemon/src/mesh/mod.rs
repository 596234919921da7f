//! The mesh role: this node as a device.
//!
//! - the device key (`crate::key_file`, `state_dir/device-key`): this
//!   device's identity, loaded before any role starts.
//! - [`hubs`]: one [`hubs::Hub`] per signaling server, named by a
//!   [`hubs::HubId`]: what its channel, the peer tasks and the control
//!   socket share about it, the key it must prove included.
//! - [`hub_channel`]: one task per signaling server: the channel, opened
//!   from the mesh port and authenticated both ways, over which the device
//!   registers and heartbeats and the hub pushes list changes,
//!   hole-punching signals and relay offers.
//! - [`known_hubs`]: the hub keys pinned on first contact.
//! - [`roster`]: the servers' lists, merged; the source of trusted keys.
//! - [`reconcile`]: one peer task per listed device, started, updated,
//!   stopped, and restarted with backoff when one died.
//! - [`peer`]: one task per other device, owning the encrypted link to it
//!   (the link protocol itself is the `meshd-link` crate); [`path`] opens
//!   those links, directly or through a hub's relay.
//! - [`netcheck`]: what the NAT in front of this device does.
//! - [`listener`]: inbound links, checked against the roster.
//! - [`inbox`]: messages received, for `meshctl messages`.
//!
//! [`MeshHandle`] ([`handle`]) is the role's face to the control socket:
//! status, devices, send, ping and messages.

mod backoff;
mod error;
mod handle;
mod hub_channel;
pub(crate) mod hub_client;
mod hubs;
mod inbox;
mod interfaces;
pub(crate) mod known_hubs;
mod link_io;
mod link_report;
mod listener;
mod netcheck;
mod path;
mod peer;
mod reconcile;
mod roster;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meshd_link::{Hello, StaticKey};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MeshConfig;
use crate::device_id::DeviceId;
use crate::hub_wire::MAX_ENDPOINTS;
use crate::key_file::{self, KeyError};
use crate::public_key::PublicKey;
pub use handle::{MeshConsole, MeshHandle, RequestError, millis};
use hubs::{Hub, HubId, Hubs};
use inbox::Inbox;
pub use known_hubs::KnownHubs;
use peer::PeerHandle;
pub use peer::SendError;
use reconcile::Restart;
use roster::Roster;

/// The longest message `meshctl send` accepts, in bytes; the link checks it
/// again on receipt.
pub const MAX_MESSAGE_BYTES: usize = meshd_link::MAX_MESSAGE_BYTES;

/// Why the mesh role could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The device key.
    #[error("device key: {0}")]
    Identity(#[from] KeyError),
    /// The listener's address.
    #[error("mesh listener: {0}")]
    Listener(std::io::Error),
    /// The hub keys pinned on first contact.
    #[error("{0}")]
    KnownHubs(#[from] known_hubs::KnownHubsError),
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
    /// The hubs of `[mesh] signaling`.
    pub hubs: Hubs,
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

/// The role's shared state.
pub struct Mesh {
    local: Arc<Local>,
    listen: SocketAddr,
    /// This node's own hub serves other machines: a loopback route to a hub
    /// is replaced by the host's reachable addresses.
    advertise_interfaces: bool,
    advertise: Vec<SocketAddr>,
    join_token: String,
    /// Hub keys pinned on first contact.
    known_hubs: Arc<KnownHubs>,
    roster: Mutex<Roster>,
    /// Bumped on every roster update, for a listener waiting to learn a
    /// dialler's key.
    roster_updates: watch::Sender<u64>,
    peers: Mutex<HashMap<DeviceId, PeerHandle>>,
    /// Devices whose peer task died, and when it may be started again.
    restarts: Mutex<HashMap<DeviceId, Restart>>,
    /// `too many devices; no link made`, once per interval with a count:
    /// every reconcile would say it again for every device over the cap.
    over_cap: crate::log_limit::LogLimiter,
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
    Ok(key_file::load(state_dir, key_file::DEVICE_KEY).await?)
}

/// The signaling role of the same process, as the mesh role sees it.
pub struct LocalHub {
    /// It listens beyond loopback, so devices on other machines use it: this
    /// node must not register its loopback address with it.
    pub serves_others: bool,
}

/// Reads the hub keys pinned on first contact; before any role starts, so
/// a damaged file stops meshd with its line.
pub async fn load_known_hubs(state_dir: &Path) -> Result<KnownHubs, MeshError> {
    let dir = state_dir.to_owned();
    let path = state_dir.join(known_hubs::KNOWN_HUBS_FILE);
    tokio::task::spawn_blocking(move || KnownHubs::load(&dir))
        .await
        .map_err(|error| {
            MeshError::KnownHubs(known_hubs::KnownHubsError::Io {
                path,
                source: std::io::Error::other(error),
            })
        })?
        .map_err(MeshError::from)
}

/// Starts the role; `local_hub` when this node is also a hub.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    config: &MeshConfig,
    id: DeviceId,
    key: StaticKey,
    known_hubs: KnownHubs,
    listener: TcpListener,
    local_hub: Option<LocalHub>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<MeshHandle, MeshError> {
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
        hubs: Hubs::new(&config.signaling, &known_hubs),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        peer_exited: tokio::sync::Notify::new(),
    });
    let advertise_interfaces = local_hub.as_ref().is_some_and(|hub| hub.serves_others);
    let mesh = Arc::new(Mesh {
        local,
        listen,
        advertise_interfaces,
        advertise: config.advertise.clone(),
        roster: Mutex::new(Roster::new(config.signaling.len())),
        join_token: config.join_token.clone(),
        known_hubs: Arc::new(known_hubs),
        roster_updates: watch::Sender::new(0),
        peers: Mutex::new(HashMap::new()),
        restarts: Mutex::new(HashMap::new()),
        over_cap: crate::log_limit::LogLimiter::default(),
    });
    tracker.spawn(listener::accept_loop(
        mesh.clone(),
        listener,
        cancel.clone(),
    ));
    for hub in &mesh.local.hubs {
        tracker.spawn(hub_channel::run(mesh.clone(), hub.id(), cancel.clone()));
    }
    tracker.spawn(link_report::report_links(mesh.clone(), cancel.clone()));
    tracker.spawn(reconcile::reconcile_periodically(mesh.clone(), cancel));
    tracing::info!(
        role = "mesh",
        %listen,
        pubkey = %public,
        hubs = mesh.local.hubs.len(),
        "mesh device listening"
    );
    Ok(MeshHandle::new(mesh))
}

impl Mesh {
    /// The endpoint peers should dial, given our local address on the route
    /// to a hub; remembered among the advertised endpoints. Configured
    /// `advertise` endpoints replace all of this.
    fn endpoint_via(&self, hub: HubId, local: SocketAddr) -> SocketAddr {
        if let Some(first) = self.advertise.first() {
            return *first;
        }
        let endpoint = if self.listen.ip().is_unspecified() {
            SocketAddr::new(local.ip(), self.listen.port())
        } else {
            self.listen
        };
        self.local.hubs.get(hub).set_route(endpoint);
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
        let routes: Vec<SocketAddr> = self.local.hubs.iter().filter_map(Hub::route).collect();
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
}
