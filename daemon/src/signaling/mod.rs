//! The signaling role: the discovery server ("hub") where devices register and
//! list each other (docs/signaling-api.md).
//!
//! [`start`] binds the listener and spawns the accept loop and the expiry
//! sweeper on the supervisor's tracker; the returned [`SignalingHandle`] is the
//! role's whole public face: status, the device list, removal, and live
//! settings on reload. The registry here is the one source of truth for
//! `meshctl devices` on a hub.

mod admission;
pub(crate) mod api;
pub(crate) mod bindings;
mod channels;
mod error;
mod link_reports;
mod list_history;
mod registry;
mod relay;
mod remote;
mod routes;
mod server;

pub use bindings::{BindingsError, BindingsFile};
pub use link_reports::{LinkCounts, Pair};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use meshd_ipc::{DeviceEntry, RemovedReply, SignalingStatus};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use meshd_link::StaticKey;

use crate::config::SignalingConfig;
use crate::device_id::DeviceId;
use crate::public_key::PublicKey;
use crate::sync::{lock, read_lock, write_lock};
use registry::{Device, Proof, Registry};

/// The settings a reload may change while connections are open.
#[derive(Debug, Clone)]
struct Settings {
    device_ttl: Duration,
    join_token: String,
    request_timeout: Duration,
    relay_bytes_per_sec: u64,
    registrations_per_sec: u64,
}

impl From<&SignalingConfig> for Settings {
    fn from(config: &SignalingConfig) -> Self {
        Settings {
            device_ttl: config.device_ttl,
            join_token: config.join_token.clone(),
            request_timeout: config.request_timeout,
            relay_bytes_per_sec: config.relay_bytes_per_sec,
            registrations_per_sec: config.registrations_per_sec,
        }
    }
}

/// State shared by the HTTP tasks, the sweeper and the handle.
pub struct SignalingState {
    registry: Mutex<Registry>,
    settings: RwLock<Settings>,
    /// Woken when the key bindings change, to save them.
    bindings_changed: Notify,
    /// The registry's version: changes whenever the list `GET /devices`
    /// answers changes in membership or addresses (not on a heartbeat), so
    /// long-polling devices and channel writers learn of changes at once.
    /// Always [`list_history::ListHistory::version`], sent while its lock is held.
    changes: watch::Sender<u64>,
    /// The list's recent changes, for the channels' deltas. Locked before
    /// the registry when both are.
    history: Mutex<list_history::ListHistory>,
    /// Ends long-polls when meshd stops.
    stopping: CancellationToken,
    /// Long-polls waiting now, and the most allowed: half the connection
    /// cap, so that waiting devices never crowd out registrations.
    polls: std::sync::atomic::AtomicUsize,
    max_polls: usize,
    /// Devices' open channels.
    channels: channels::Channels,
    /// Channel handshakes in progress: an upgraded connection leaves the
    /// connection cap, so the unauthenticated part of a channel has its own.
    channel_handshakes: Arc<tokio::sync::Semaphore>,
    /// Offered and running relays.
    relays: relay::Relays,
    /// Channel and relay tasks run here, so shutdown waits for them.
    tracker: TaskTracker,
    /// The hub's own key (`state_dir/hub-key`), proven in every channel and
    /// relay handshake.
    hub_key: StaticKey,
    /// New ids per source address.
    source_limits: admission::SourceLimits,
    /// The devices' latest link reports, for the web console.
    link_reports: Mutex<link_reports::LinkReports>,
    /// The devices the cluster's other hubs list (docs/cluster.md). Locked
    /// after the registry when both are.
    remote: Mutex<remote::RemoteDevices>,
    /// With a cluster: this hub's own devices that changed since the
    /// cluster last looked, and its wake-up. Without one nothing is kept.
    sharing: std::sync::atomic::AtomicBool,
    local_dirty: Mutex<std::collections::HashSet<DeviceId>>,
    local_changes: Arc<Notify>,
    /// With a cluster: its key bindings, asked before this hub binds an id,
    /// and the way to other hubs' devices.
    cluster: std::sync::OnceLock<Arc<dyn crate::shared_list::Cluster>>,
    /// Signals and relay requests on their way to other hubs now.
    forwards: Arc<tokio::sync::Semaphore>,
    /// The cluster's other hubs, for the devices' channels.
    peer_hubs: watch::Sender<Vec<crate::hub_wire::PeerHub>>,
}

impl SignalingState {
    fn new(
        config: &SignalingConfig,
        registry: Registry,
        hub_key: StaticKey,
        stopping: CancellationToken,
        tracker: &TaskTracker,
    ) -> SignalingState {
        SignalingState {
            registry: Mutex::new(registry),
            settings: RwLock::new(Settings::from(config)),
            bindings_changed: Notify::new(),
            changes: watch::Sender::new(0),
            history: Mutex::new(list_history::ListHistory::default()),
            stopping,
            polls: std::sync::atomic::AtomicUsize::new(0),
            max_polls: config.max_connections / 2,
            channels: channels::Channels::default(),
            channel_handshakes: Arc::new(tokio::sync::Semaphore::new(channels::MAX_HANDSHAKES)),
            relays: relay::Relays::new(config.max_connections),
            tracker: tracker.clone(),
            hub_key,
            source_limits: admission::SourceLimits::default(),
            link_reports: Mutex::new(link_reports::LinkReports::default()),
            remote: Mutex::new(remote::RemoteDevices::default()),
            sharing: std::sync::atomic::AtomicBool::new(false),
            local_dirty: Mutex::new(std::collections::HashSet::new()),
            local_changes: Arc::new(Notify::new()),
            cluster: std::sync::OnceLock::new(),
            forwards: Arc::new(tokio::sync::Semaphore::new(channels::MAX_FORWARDS)),
            peer_hubs: watch::Sender::new(Vec::new()),
        }
    }

    /// Records that this hub's listing of `ids` changed (registered,
    /// moved, left, expired, removed), as the registry has them now, and
    /// bumps the version; with a cluster, tells it too. Called after the
    /// registry's lock is released.
    fn changed(&self, ids: impl IntoIterator<Item = DeviceId>) {
        let ids: Vec<DeviceId> = ids.into_iter().collect();
        if self.sharing.load(std::sync::atomic::Ordering::Relaxed) && !ids.is_empty() {
            lock(&self.local_dirty).extend(ids.iter().cloned());
            self.local_changes.notify_one();
        }
        self.record(ids);
    }

    /// Records that another hub's listing of `ids` changed.
    fn changed_remotely(&self, ids: Vec<DeviceId>) {
        self.record(ids);
    }

    /// Puts the listing of `ids` as the list shows them now (this hub's
    /// own, or else another hub's) into the history.
    fn record(&self, ids: Vec<DeviceId>) {
        let mut history = lock(&self.history);
        let ttl = self.settings().device_ttl;
        let now = Instant::now();
        let devices = {
            let registry = self.registry();
            let remote = lock(&self.remote);
            ids.into_iter()
                .map(|id| {
                    let listed = registry
                        .live(&id, now, ttl)
                        .map(api::listed)
                        .or_else(|| remote.listed(&id).cloned());
                    (id, listed)
                })
                .collect()
        };
        let before = history.version();
        let version = history.record(devices);
        // A sweep that expired nobody changes nothing: no writer is woken.
        if version != before {
            self.changes.send_replace(version);
        }
    }

    /// What a channel whose device holds list version `held` sends next:
    /// the version it brings the device to and the message, or `None` when
    /// the device is up to date. `deltas: false` for `meshd-channel/2`
    /// channels, which get the whole list every time.
    fn list_update(&self, held: Option<u64>, deltas: bool) -> Option<(u64, bytes::Bytes)> {
        let mut history = lock(&self.history);
        let listed = || self.listed_devices();
        if !deltas {
            return (held != Some(history.version())).then(|| history.current_whole(listed));
        }
        match history.update(held) {
            list_history::Update::Current => None,
            list_history::Update::Delta { version, message } => Some((version, message)),
            list_history::Update::Whole => Some(history.whole(listed)),
        }
    }
}

impl SignalingState {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry's invariants hold between calls, so a panic elsewhere
        // leaves it usable.
        lock(&self.registry)
    }

    fn settings(&self) -> Settings {
        read_lock(&self.settings).clone()
    }

    /// Runs `change` on the registry and wakes the persister if it changed
    /// a key binding.
    fn change_registry<T>(&self, change: impl FnOnce(&mut Registry) -> T) -> T {
        let mut registry = self.registry();
        let before = registry.bindings_generation();
        let outcome = change(&mut registry);
        if registry.bindings_generation() != before {
            self.bindings_changed.notify_one();
        }
        outcome
    }

    fn live_devices(&self) -> Vec<Device> {
        let ttl = self.settings().device_ttl;
        self.registry().list(Instant::now(), ttl)
    }

    /// How many devices the list holds (this hub's own, and those only the
    /// other hubs list), without making the list.
    fn listed_count(&self, ttl: Duration) -> usize {
        let now = Instant::now();
        let registry = self.registry();
        let remote = lock(&self.remote);
        let only_remote = remote
            .ids()
            .filter(|id| registry.live(id, now, ttl).is_none())
            .count();
        registry.live_count(now, ttl) + only_remote
    }

    /// The list every client gets: this hub's own devices, and those only
    /// the cluster's other hubs list, sorted by id.
    fn listed_devices(&self) -> Vec<crate::hub_wire::ListedDevice> {
        let ttl = self.settings().device_ttl;
        let registry = self.registry();
        let own = registry.list(Instant::now(), ttl);
        let remote = lock(&self.remote);
        let mut listed: Vec<(DeviceId, crate::hub_wire::ListedDevice)> = own
            .iter()
            .map(|device| (device.registration.id.clone(), api::listed(device)))
            .collect();
        let own_count = listed.len();
        for (id, device) in remote.all() {
            if listed[..own_count]
                .binary_search_by(|(own, _)| own.cmp(&id))
                .is_err()
            {
                listed.push((id, device));
            }
        }
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        listed.into_iter().map(|(_, device)| device).collect()
    }
}

/// The hub's side of the cluster's shared list.
struct Shared(Arc<SignalingState>);

impl crate::shared_list::SharedList for Shared {
    fn local_changes(&self) -> Arc<Notify> {
        self.0.local_changes.clone()
    }

    fn take_local_changes(&self) -> Vec<DeviceId> {
        lock(&self.0.local_dirty).drain().collect()
    }

    fn local_listing(&self, id: &DeviceId) -> Option<crate::hub_wire::ListedDevice> {
        let ttl = self.0.settings().device_ttl;
        self.0
            .registry()
            .live(id, Instant::now(), ttl)
            .map(api::listed)
    }

    fn local_devices(&self) -> Vec<crate::hub_wire::ListedDevice> {
        self.0.live_devices().iter().map(api::listed).collect()
    }

    fn remote_upsert(&self, hub: &str, id: DeviceId, device: crate::hub_wire::ListedDevice) {
        let changed = lock(&self.0.remote).upsert(hub, id.clone(), device);
        if changed {
            self.0.changed_remotely(vec![id]);
        }
    }

    fn remote_remove(&self, hub: &str, id: &DeviceId) {
        let changed = lock(&self.0.remote).remove(hub, id);
        if changed {
            self.0.changed_remotely(vec![id.clone()]);
        }
    }

    fn remote_drop_hub(&self, hub: &str) {
        let changed = lock(&self.0.remote).drop_hub(hub);
        self.0.changed_remotely(changed);
    }

    fn remote_retain(&self, keep: &std::collections::HashSet<(String, DeviceId)>) {
        let changed = lock(&self.0.remote).retain(keep);
        self.0.changed_remotely(changed);
    }

    fn local_bindings(&self) -> Vec<(DeviceId, String)> {
        let (_, bindings) = self.0.registry().bindings();
        bindings
            .into_iter()
            .map(|(id, key)| (id, key.to_base64()))
            .collect()
    }

    fn binding_released(&self, id: &DeviceId) {
        let released = self
            .0
            .change_registry(|registry| registry.release_binding(id));
        if released {
            self.0.channels.close_device(id);
            tracing::info!(device_id = %id, "binding released by another hub of the cluster");
        }
    }

    fn deliver_signal(
        &self,
        from: &DeviceId,
        to: &DeviceId,
        signal: crate::hub_wire::Signal,
    ) -> Result<(), String> {
        let message = crate::hub_wire::FromHub::Signal {
            from: from.to_string(),
            signal,
        };
        if self.0.channels.send(to, message) {
            Ok(())
        } else {
            Err(format!(
                "{to} has no channel open to its hub, or is not reading it"
            ))
        }
    }

    fn offer_relay(
        &self,
        asker: &crate::shared_list::RemoteAsker,
        to: &DeviceId,
    ) -> Result<crate::shared_list::RelayHalf, String> {
        let key = self.0.registry().binding(to);
        let Some(key) = key.filter(|_| self.0.channels.is_open(to)) else {
            return Err(format!("{to} has no channel open to its hub"));
        };
        let asker = relay::Asker {
            device: asker.device.clone(),
            key: asker.key,
            source: asker.source,
        };
        channels::offer_here(&self.0, &asker, to, key)
    }

    fn deliver_relay_half(
        &self,
        to: &DeviceId,
        peer: &DeviceId,
        half: crate::shared_list::RelayHalf,
        at: crate::hub_wire::PeerHub,
    ) -> Result<(), String> {
        channels::deliver_half(&self.0, to, peer, half, at)
    }

    fn other_hubs(&self, hubs: Vec<crate::hub_wire::PeerHub>) {
        self.0.peer_hubs.send_if_modified(|held| {
            let changed = *held != hubs;
            *held = hubs;
            changed
        });
    }
}

/// How long the web console shows a device that left or expired.
const DEPARTED_SHOWN: Duration = Duration::from_secs(3600);

/// What the hub's web console shows (docs/web.md): every device it lists or
/// listed within the last hour, and every pair its devices reported.
#[derive(Debug, Clone)]
pub struct ConsoleView {
    /// Devices, sorted by id: listed ones first, then departed ones.
    pub devices: Vec<ConsoleDevice>,
    /// Reported pairs, sorted.
    pub pairs: Vec<Pair>,
    /// More pairs were reported than asked for.
    pub pairs_truncated: bool,
}

/// One device on the hub's console.
#[derive(Debug, Clone)]
pub struct ConsoleDevice {
    /// As `GET /devices` lists it (or last listed it).
    pub listed: crate::hub_wire::ListedDevice,
    /// Listed, and with its channel open (or registered without one, over
    /// plain HTTP).
    pub online: bool,
    /// The URLs of the hubs that list it now: this one while its channel
    /// is open, and the cluster's other hubs that list it.
    pub hubs: Vec<String>,
    /// Its links as it last reported them.
    pub counts: Option<LinkCounts>,
}

/// The signaling role as the rest of meshd sees it.
#[derive(Clone)]
pub struct SignalingHandle {
    state: Arc<SignalingState>,
    listen: SocketAddr,
    /// The public half of the hub key (`state_dir/hub-key`).
    hub_key: PublicKey,
}

/// Binds the listener; separate from [`start`] so every listener is bound
/// before any task runs and READY=1 is sent.
pub async fn bind(config: &SignalingConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Reads the saved key bindings; before [`start`], so a damaged file stops
/// the start with its line.
pub async fn load_bindings(
    state_dir: &Path,
) -> Result<(BindingsFile, Vec<bindings::Binding>), BindingsError> {
    let file = BindingsFile::in_dir(state_dir);
    let reader = file.clone();
    let bindings = tokio::task::spawn_blocking(move || reader.load())
        .await
        .map_err(|error| BindingsError::Io {
            path: state_dir.join(bindings::BINDINGS_FILE),
            source: std::io::Error::other(error),
        })??;
    Ok((file, bindings))
}

/// Starts the role on an already bound listener, with the bindings
/// [`load_bindings`] read.
pub fn start(
    config: &SignalingConfig,
    listener: TcpListener,
    hub_key: StaticKey,
    (file, saved): (BindingsFile, Vec<bindings::Binding>),
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<SignalingHandle> {
    let listen = listener.local_addr()?;
    let hub_public = PublicKey::from(*hub_key.public());
    let mut registry = Registry::new(config.max_devices);
    let restored = saved.len();
    registry.restore_bindings(saved);
    let state = Arc::new(SignalingState::new(
        config,
        registry,
        hub_key,
        cancel.clone(),
        tracker,
    ));
    if restored > 0 {
        tracing::info!(bindings = restored, "key bindings restored");
    }
    tracker.spawn(save_bindings(state.clone(), file, cancel.clone()));
    tracker.spawn(server::accept_loop(
        listener,
        state.clone(),
        config.max_connections,
        cancel.clone(),
        tracker.clone(),
    ));
    tracker.spawn(sweep_expired(state.clone(), cancel));
    tracing::info!(role = "signaling", %listen, hub_key = %hub_public, "signaling server listening");
    Ok(SignalingHandle {
        state,
        listen,
        hub_key: hub_public,
    })
}

impl SignalingHandle {
    /// For `meshctl status`.
    pub fn status(&self) -> SignalingStatus {
        let ttl = self.state.settings().device_ttl;
        SignalingStatus {
            listen: self.listen.to_string(),
            devices: self.state.listed_count(ttl),
            channels: self.state.channels.count(),
            relays: self.state.relays.active(),
            hub_key: Some(self.hub_key.to_base64()),
        }
    }

    /// For `meshctl devices`: every live device, sorted by id, no link data.
    pub fn devices(&self) -> Vec<DeviceEntry> {
        self.state
            .listed_devices()
            .into_iter()
            .map(|view| DeviceEntry {
                id: view.id,
                addr: view.addr,
                observed: view.observed,
                last_seen: view.last_seen,
                pubkey: view.pubkey,
                link: None,
                endpoint: None,
                rtt_ms: None,
                endpoints: view.endpoints,
            })
            .collect()
    }

    /// The address it listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// From now on ids new to this hub are bound through the cluster, and
    /// signals and relays reach other hubs' devices through it.
    pub fn join(&self, cluster: Arc<dyn crate::shared_list::Cluster>) {
        let _ = self.state.cluster.set(cluster);
    }

    /// The hub's list for the cluster to share; from now on this hub's own
    /// changes are kept for it.
    pub fn share(&self) -> Arc<dyn crate::shared_list::SharedList> {
        self.state
            .sharing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Arc::new(Shared(self.state.clone()))
    }

    /// For the web console: devices, online or recently gone, the hubs
    /// that list each (this one as `own_url`, the cluster's others by
    /// their advertised URLs), and the pairs their reports describe (at
    /// most `max_pairs`).
    pub fn console(&self, max_pairs: usize, own_url: &str) -> ConsoleView {
        let live = self.state.live_devices();
        let departed = self
            .state
            .registry()
            .departed(SystemTime::now() - DEPARTED_SHOWN);
        // Taken under the lock, read after it: reports never wait on a page.
        let reports = lock(&self.state.link_reports).snapshot();
        let (pairs, pairs_truncated) = reports.pairs(max_pairs);
        let peer_urls: HashMap<String, String> = self
            .state
            .peer_hubs
            .borrow()
            .iter()
            .map(|hub| (hub.id.clone(), hub.url.clone()))
            .collect();
        // Copied out under the lock, read after it: signals and relays
        // routed through the cluster never wait on a page.
        let elsewhere = lock(&self.state.remote).all_with_hubs();
        let urls_of = |hub_ids: &[String]| -> Vec<String> {
            hub_ids
                .iter()
                .filter_map(|hub| peer_urls.get(hub).cloned())
                .collect()
        };
        let elsewhere_hubs: HashMap<&DeviceId, Vec<String>> = elsewhere
            .iter()
            .map(|(id, _, hub_ids)| (id, urls_of(hub_ids)))
            .collect();
        let hubs = |id: &DeviceId, here: bool| -> Vec<String> {
            let others = elsewhere_hubs.get(id).into_iter().flatten().cloned();
            here.then(|| own_url.to_owned())
                .into_iter()
                .chain(others)
                .collect()
        };
        let mut devices: Vec<ConsoleDevice> = live
            .iter()
            .map(|device| {
                let id = &device.registration.id;
                let online = device.proof == Proof::Claimed || self.state.channels.is_open(id);
                ConsoleDevice {
                    listed: api::listed(device),
                    online,
                    hubs: hubs(id, online),
                    counts: reports.counts(id),
                }
            })
            .collect();
        // Devices only the cluster's other hubs list: online while listed.
        let own: std::collections::HashSet<&DeviceId> =
            live.iter().map(|device| &device.registration.id).collect();
        let only_elsewhere: Vec<ConsoleDevice> = elsewhere
            .iter()
            .filter(|(id, _, _)| !own.contains(id))
            .map(|(id, listed, _)| ConsoleDevice {
                listed: listed.clone(),
                online: true,
                hubs: hubs(id, false),
                counts: None,
            })
            .collect();
        devices.extend(only_elsewhere);
        let departed = departed
            .iter()
            .filter(|device| !elsewhere_hubs.contains_key(&device.registration.id));
        devices.extend(departed.map(|device| ConsoleDevice {
            listed: api::listed(device),
            online: false,
            hubs: Vec::new(),
            counts: None,
        }));
        ConsoleView {
            devices,
            pairs,
            pairs_truncated,
        }
    }

    /// For `meshctl devices remove`; `None` when the id is not known at all.
    pub fn remove(&self, id: &DeviceId) -> Option<RemovedReply> {
        let removed = self.state.change_registry(|registry| registry.remove(id));
        if removed.was_registered {
            self.state.changed([id.clone()]);
        }
        // The channel spoke for the binding just released.
        self.state.channels.close_device(id);
        if removed.had_binding
            && let Some(cluster) = self.state.cluster.get()
        {
            cluster.release(id);
        }
        if !removed.was_registered && !removed.had_binding {
            return None;
        }
        tracing::info!(device_id = %id, "device removed by operator");
        Some(RemovedReply {
            device: id.to_string(),
            was_registered: removed.was_registered,
            had_binding: removed.had_binding,
        })
    }

    /// Applies the live part of a reloaded config.
    pub fn apply(&self, config: &SignalingConfig) {
        *write_lock(&self.state.settings) = Settings::from(config);
        self.state.registry().set_max_devices(config.max_devices);
    }
}

/// Saves of the bindings are at least this far apart: a change right after
/// a save waits out the rest, then everything that changed meanwhile is
/// saved at once. A storm of 10,000 new devices rewrites the file a few
/// dozen times, not once per device.
const BINDINGS_SAVE_PACE: Duration = Duration::from_secs(1);

/// Writes the key bindings whenever they change, off the async workers and
/// at most once per [`BINDINGS_SAVE_PACE`]; a last time on shutdown if a
/// change is still unsaved.
async fn save_bindings(state: Arc<SignalingState>, file: BindingsFile, cancel: CancellationToken) {
    let mut saved = state.registry().bindings_generation();
    let mut next_save = tokio::time::Instant::now();
    loop {
        let stopping = tokio::select! {
            () = cancel.cancelled() => true,
            () = state.bindings_changed.notified() => {
                tokio::select! {
                    () = cancel.cancelled() => true,
                    () = tokio::time::sleep_until(next_save) => false,
                }
            }
        };
        next_save = tokio::time::Instant::now() + BINDINGS_SAVE_PACE;
        let (generation, bindings) = state.registry().bindings();
        if generation != saved {
            let writer = file.clone();
            match tokio::task::spawn_blocking(move || writer.save(&bindings)).await {
                Ok(Ok(())) => saved = generation,
                Ok(Err(error)) => {
                    tracing::error!(%error, "key bindings not saved; they hold in memory until meshd stops");
                }
                Err(error) => tracing::error!(%error, "key bindings not saved"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// Drops expired devices so the map does not keep what `GET /devices` hides.
async fn sweep_expired(state: Arc<SignalingState>, cancel: CancellationToken) {
    loop {
        let ttl = state.settings().device_ttl;
        let period = (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let expired = state.registry().sweep(Instant::now(), ttl);
        for id in &expired {
            tracing::info!(device_id = %id, "device expired");
        }
        state.changed(expired);
    }
}
