//! The cluster role (docs/cluster.md): hubs that name the same NATS servers
//! in `[cluster] nats` share one mesh through NATS JetStream.
//!
//! This part is the ground the sharing stands on: one NATS connection per
//! hub, its health, and the cluster's membership. Health is *degraded, not
//! down*: when NATS cannot be reached, or JetStream does not answer, the hub
//! goes on serving its own devices and chat clients, says so once per
//! outage in the log and in `meshctl status`, and sets everything up again
//! when NATS is back.
//!
//! Task: one, on the supervisor's tracker. It waits for the connection
//! (async-nats reconnects by itself, with backoff), makes the buckets,
//! watches the hubs' bucket into a mirror, and announces this hub every
//! [`hubs::ANNOUNCE_EVERY`]; any failure ends that session as degraded, and
//! the next starts when the connection is back. On shutdown the hub takes
//! its announcement back, so the others drop it at once.

mod bindings;
mod buckets;
mod chat;
mod devices;
mod forward;
mod hubs;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Operation, Store};
use async_nats::{ConnectOptions, connection::State};
use futures_util::StreamExt;
use meshd_ipc::{ClusterHub, ClusterStatus};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::device_id::DeviceId;
use crate::hub_wire::Signal;
use crate::shared_chat::{ChatCluster, ChatEvent, SharedRoom, UserOp, UserRefusal};
use crate::shared_list::{Answer, BindRefusal, Cluster, RelayHalf, RemoteAsker, SharedList};
use crate::sync::lock;
use devices::{DeviceSync, SyncEvent};
use hubs::{HubMirror, PeerHub};

/// Pings on the NATS connection: a server that vanished without closing is
/// noticed within two or three of these (async-nats' default is a minute).
const PING_EVERY: Duration = Duration::from_secs(5);

/// One attempt to connect to one server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Every JetStream request (bucket setup, announcements) must be answered
/// within this, or the cluster counts as degraded.
pub(super) const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a degraded hub looks at the connection again.
pub(super) const RECHECK_EVERY: Duration = Duration::from_millis(250);

/// A session that failed on a working connection is retried after this.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A hub that has not reached NATS this long after its start says so; the
/// first connection gets this long before that counts as an outage.
const FIRST_CONNECT_GRACE: Duration = Duration::from_secs(5);

/// Why the cluster cannot be used now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server answers.
    #[error(
        "no NATS server answers at {urls}: check that nats-server runs there with JetStream (-js) and that this host reaches it"
    )]
    Unreachable {
        /// The servers tried.
        urls: String,
    },
    /// A bucket could not be made or opened.
    #[error(
        "JetStream bucket {bucket}: {reason}; is JetStream enabled on the NATS servers (nats-server -js)?"
    )]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The server's or the client's words.
        reason: String,
    },
    /// JetStream did not take a write or a watch.
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// Whether the cluster can be used, and since when it cannot.
#[derive(Debug, Clone)]
enum Health {
    /// Not connected yet since start.
    Starting,
    /// Connected, buckets made, announcing.
    Connected,
    /// Cannot be used; why.
    Degraded(ClusterError),
}

struct ClusterState {
    /// `[cluster] nats`, as written.
    urls: Vec<String>,
    /// What this hub announces.
    me: PeerHub,
    health: Mutex<Health>,
    mirror: Mutex<HubMirror>,
    /// The hub's device list, shared.
    shared: Arc<dyn SharedList>,
    /// The key bindings' bucket while a session runs; `None` while
    /// degraded.
    bindings: Mutex<Option<Store>>,
    /// The connection, once made (it reconnects by itself).
    client: Mutex<Option<async_nats::Client>>,
    /// The chat room, when this hub runs chat.
    chat_room: Option<Arc<dyn SharedRoom>>,
    /// The chat users' bucket while the chat's session runs.
    chat_users: Mutex<Option<Store>>,
    /// Background work (releasing a binding) runs here.
    tracker: TaskTracker,
}

impl ClusterState {
    /// Forgets the hubs not heard of lately, and the devices they listed.
    fn expire_hubs(&self) {
        let gone = lock(&self.mirror).expire(Instant::now());
        for hub in gone {
            self.hub_left(&hub);
        }
    }

    /// The ids of the hubs in the cluster now, this one included.
    fn live_hubs(&self) -> Vec<String> {
        lock(&self.mirror)
            .live(Instant::now())
            .into_iter()
            .map(|hub| hub.id)
            .collect()
    }

    /// Hands the hub the cluster's other hubs (for its devices), as the
    /// mirror has them now; only while connected, so a hub cut off from
    /// NATS keeps handing out the last hubs it knew.
    fn tell_other_hubs(&self) {
        let mut others = lock(&self.mirror).live(Instant::now());
        others.retain(|hub| hub.id != self.me.id);
        others.truncate(hubs::MAX_HANDED_OUT);
        self.shared.other_hubs(others);
    }

    /// The connection for a request to another hub, or why there is none:
    /// while NATS is away requests are refused at once, not after their
    /// timeout.
    fn client(&self) -> Result<async_nats::Client, String> {
        let client = lock(&self.client).clone();
        match client {
            Some(client) if client.connection_state() == State::Connected => Ok(client),
            _ => Err("the cluster is unreachable".to_owned()),
        }
    }

    /// Hub `hub` is no longer in the cluster.
    fn hub_left(&self, hub: &str) {
        if hub != self.me.id {
            self.shared.remote_drop_hub(hub);
            if let Some(room) = &self.chat_room {
                room.remote_hub_gone(hub);
            }
        }
    }

    /// Marks the cluster usable; says so when it was not.
    fn connected(&self) {
        let mut health = lock(&self.health);
        match &*health {
            Health::Connected => {}
            Health::Starting => {
                tracing::info!(role = "cluster", nats = %self.urls.join(","), "joined the cluster");
            }
            Health::Degraded(reason) => {
                tracing::info!(role = "cluster", was = %reason, "cluster reachable again; this hub shares the mesh again");
            }
        }
        *health = Health::Connected;
    }

    /// Marks the cluster unusable; says so once per outage.
    fn degraded(&self, reason: ClusterError) {
        let mut health = lock(&self.health);
        if !matches!(&*health, Health::Degraded(_)) {
            tracing::warn!(
                role = "cluster",
                %reason,
                "cluster unreachable: this hub keeps serving its own devices and chat clients, and retries"
            );
        }
        *health = Health::Degraded(reason);
    }
}

/// The cluster role as the rest of meshd sees it.
#[derive(Clone)]
pub struct ClusterHandle {
    state: Arc<ClusterState>,
}

/// This hub as the cluster should know it.
pub struct Identity {
    /// `[node] id`.
    pub id: String,
    /// `[cluster] advertise`, or the signaling listen address.
    pub url: String,
    /// The hub key's public half, base64.
    pub hub_key: String,
}

/// The chat room to share, with its outbox.
pub type ChatShare = (Arc<dyn SharedRoom>, tokio::sync::mpsc::Receiver<ChatEvent>);

/// Starts the role, sharing the hub's list `shared` and, when this hub runs
/// chat, its room; `None` without `[cluster] nats`.
pub fn start(
    config: &ClusterConfig,
    me: Identity,
    shared: Arc<dyn SharedList>,
    chat: Option<ChatShare>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Option<ClusterHandle> {
    if !config.enabled() {
        return None;
    }
    let state = Arc::new(ClusterState {
        urls: config.nats.iter().map(ToString::to_string).collect(),
        me: PeerHub {
            id: me.id,
            url: me.url,
            hub_key: me.hub_key,
        },
        health: Mutex::new(Health::Starting),
        mirror: Mutex::new(HubMirror::default()),
        shared,
        bindings: Mutex::new(None),
        client: Mutex::new(None),
        chat_room: chat.as_ref().map(|(room, _)| room.clone()),
        chat_users: Mutex::new(None),
        tracker: tracker.clone(),
    });
    if let Some((room, outbox)) = chat {
        let sync = chat::ChatSync::new(room, outbox);
        tracker.spawn(chat::run(state.clone(), sync, cancel.clone()));
    }
    tracker.spawn(run(state.clone(), cancel));
    Some(ClusterHandle { state })
}

impl ClusterHandle {
    /// For `meshctl status`.
    pub fn status(&self) -> ClusterStatus {
        let state = &self.state;
        let (connected, error) = match &*lock(&state.health) {
            Health::Connected => (true, None),
            Health::Starting => (false, Some("connecting to NATS".to_owned())),
            Health::Degraded(reason) => (false, Some(reason.to_string())),
        };
        let hubs = lock(&state.mirror)
            .live(Instant::now())
            .into_iter()
            .map(|hub| ClusterHub {
                id: hub.id,
                url: hub.url,
                hub_key: hub.hub_key,
            })
            .collect();
        ClusterStatus {
            nats: state.urls.clone(),
            advertise: state.me.url.clone(),
            connected,
            error,
            hubs,
        }
    }
}

/// The role's task: sessions on the connection until meshd stops.
async fn run(state: Arc<ClusterState>, cancel: CancellationToken) {
    let name = format!("meshd {}", state.me.id);
    let connecting = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .ping_interval(PING_EVERY)
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(forward::FORWARD_TIMEOUT))
        .connect(state.urls.clone());
    let client = tokio::select! {
        () = cancel.cancelled() => return,
        client = connecting => match client {
            Ok(client) => client,
            Err(error) => {
                // Only a malformed URL fails here; the config checked them.
                state.degraded(ClusterError::JetStream(error.to_string()));
                return;
            }
        },
    };
    *lock(&state.client) = Some(client.clone());
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(JETSTREAM_TIMEOUT)
        .build(client.clone());
    let mut hubs: Option<Store> = None;
    let started = Instant::now();
    loop {
        if client.connection_state() != State::Connected {
            // What cannot be confirmed goes: the other hubs, and their
            // devices, once not heard of for their TTL.
            state.expire_hubs();
            let starting = matches!(&*lock(&state.health), Health::Starting);
            if !starting || started.elapsed() >= FIRST_CONNECT_GRACE {
                state.degraded(ClusterError::Unreachable {
                    urls: state.urls.join(", "),
                });
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(RECHECK_EVERY) => continue,
            }
        }
        let outcome = tokio::select! {
            () = cancel.cancelled() => break,
            outcome = session(&state, &js, &mut hubs) => outcome,
        };
        *lock(&state.bindings) = None;
        if let Err(reason) = outcome {
            state.expire_hubs();
            state.degraded(reason);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    }
    // Leave at once rather than after the others' TTL; best effort.
    if let Some(store) = hubs {
        let key = buckets::key_of(&state.me.id);
        let _ = tokio::time::timeout(Duration::from_secs(1), store.delete(key)).await;
    }
}

/// Puts this hub's announcement under `key`.
async fn announce(store: &Store, key: &str, announcement: &[u8]) -> Result<(), ClusterError> {
    store
        .put(key, bytes::Bytes::copy_from_slice(announcement))
        .await
        .map(|_revision| ())
        .map_err(|error| ClusterError::JetStream(format!("announcing this hub: {error}")))
}

/// One healthy stretch: the buckets, the watch, the announcements; returns
/// why it ended.
async fn session(
    state: &ClusterState,
    js: &async_nats::jetstream::Context,
    kept: &mut Option<Store>,
) -> Result<(), ClusterError> {
    // Made again each time: a NATS server that restarted without its
    // storage has lost them.
    let store = buckets::ensure(js, buckets::HUBS, 1, hubs::HUB_TTL).await?;
    *kept = Some(store.clone());
    let announcement = serde_json::to_vec(&state.me)
        .map_err(|error| ClusterError::JetStream(error.to_string()))?;
    let key = buckets::key_of(&state.me.id);
    announce(&store, &key, &announcement).await?;
    // A watch is made anew each session: one resumed after a restart of a
    // server that lost the bucket would skip what the new one holds.
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|error| ClusterError::JetStream(format!("watching the hubs: {error}")))?;
    lock(&state.mirror).clear();
    let mut sync = DeviceSync::start(js, state.shared.clone(), &state.me.id).await?;
    let bindings = buckets::ensure(js, buckets::BINDINGS, 1, Duration::ZERO).await?;
    bindings::publish_local(&bindings, state.shared.as_ref()).await?;
    // Changes from now on: a release anywhere is a release here.
    let mut releases = bindings
        .watch_all()
        .await
        .map_err(|error| ClusterError::JetStream(format!("watching the bindings: {error}")))?;
    // Other hubs' requests for this hub's devices.
    let client = js.client();
    let mut requests = client
        .subscribe(forward::subjects_of(&state.me.id))
        .await
        .map_err(|error| ClusterError::JetStream(format!("subscribing to requests: {error}")))?;
    *lock(&state.bindings) = Some(bindings);
    state.connected();
    // Not at once: the devices are told the other hubs once the watch has
    // replayed them, not an empty list first.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + hubs::ANNOUNCE_EVERY,
        hubs::ANNOUNCE_EVERY,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                announce(&store, &key, &announcement).await?;
                state.expire_hubs();
                state.tell_other_hubs();
            }
            request = requests.next() => match request {
                Some(request) => {
                    let answer = forward::answer(&request.subject, &request.payload, state.shared.as_ref(), &state.me);
                    if let Some(reply) = request.reply {
                        // Lost with the connection if it breaks: the asker
                        // times out and its device retries.
                        let _ = client.publish(reply, answer).await;
                    }
                }
                None => return Err(ClusterError::JetStream("the requests' subscription ended".to_owned())),
            },
            release = releases.next() => match release {
                Some(Ok(entry)) => {
                    if matches!(entry.operation, Operation::Delete | Operation::Purge)
                        && let Ok(id) = crate::device_id::DeviceId::parse(&buckets::id_of(&entry.key))
                    {
                        state.shared.binding_released(&id);
                    }
                }
                Some(Err(error)) => {
                    return Err(ClusterError::JetStream(format!("watching the bindings: {error}")));
                }
                None => return Err(ClusterError::JetStream("the bindings' watch ended".to_owned())),
            },
            event = sync.next() => match event {
                SyncEvent::LocalChanged => sync.publish_local_changes().await?,
                SyncEvent::Entry(Some(Ok(entry))) => sync.apply(entry),
                SyncEvent::Entry(Some(Err(error))) => {
                    return Err(ClusterError::JetStream(format!("watching devices: {error}")));
                }
                SyncEvent::Entry(None) => {
                    return Err(ClusterError::JetStream("the devices' watch ended".to_owned()));
                }
            },
            entry = watch.next() => match entry {
                Some(Ok(entry)) => {
                    let mut mirror = lock(&state.mirror);
                    match entry.operation {
                        Operation::Put => match serde_json::from_slice::<PeerHub>(&entry.value) {
                            Ok(hub) => {
                                let new = !mirror.knows(&hub);
                                mirror.heard(hub, Instant::now());
                                if new {
                                    drop(mirror);
                                    state.tell_other_hubs();
                                }
                            }
                            Err(error) => tracing::debug!(key = %entry.key, %error, "cluster: a hub announcement that does not parse; ignored"),
                        },
                        Operation::Delete | Operation::Purge => {
                            let hub = buckets::id_of(&entry.key);
                            if mirror.left(&hub) {
                                drop(mirror);
                                state.hub_left(&hub);
                                state.tell_other_hubs();
                            }
                        }
                    }
                }
                Some(Err(error)) => {
                    return Err(ClusterError::JetStream(format!("watching the hubs: {error}")));
                }
                None => return Err(ClusterError::JetStream("the hubs' watch ended".to_owned())),
            },
        }
    }
}

impl Cluster for ClusterHandle {
    fn bind<'a>(&'a self, id: &'a DeviceId, key: &'a str) -> Answer<'a, Result<(), BindRefusal>> {
        Box::pin(bindings::bind(&self.state, id, key))
    }

    fn release(&self, id: &DeviceId) {
        bindings::release(&self.state, id);
    }

    fn signal<'a>(
        &'a self,
        hub: &'a str,
        from: &'a DeviceId,
        to: &'a DeviceId,
        signal: Signal,
    ) -> Answer<'a, Result<(), String>> {
        Box::pin(async move {
            let client = self.state.client()?;
            forward::signal(&client, hub, from, to, signal).await
        })
    }

    fn relay<'a>(
        &'a self,
        hub: &'a str,
        asker: &'a RemoteAsker,
        to: &'a DeviceId,
    ) -> Answer<'a, Result<(RelayHalf, PeerHub), String>> {
        Box::pin(async move {
            // Where the asker will join: the hub as the cluster announces it.
            let at = lock(&self.state.mirror)
                .live(Instant::now())
                .into_iter()
                .find(|known| known.id == hub)
                .ok_or_else(|| format!("hub {hub} is no longer in the cluster"))?;
            let client = self.state.client()?;
            let half = forward::relay(&client, hub, asker, to).await?;
            Ok((half, at))
        })
    }

    fn relay_half<'a>(
        &'a self,
        hub: &'a str,
        to: &'a DeviceId,
        peer: &'a DeviceId,
        half: RelayHalf,
    ) -> Answer<'a, Result<(), String>> {
        Box::pin(async move {
            let client = self.state.client()?;
            forward::relay_half(&client, hub, to, peer, half, self.state.me.clone()).await
        })
    }
}

impl ChatCluster for ClusterHandle {
    fn change_user<'a>(
        &'a self,
        name: &'a str,
        op: UserOp<'a>,
    ) -> Answer<'a, Result<(), UserRefusal>> {
        Box::pin(chat::change_user(&self.state, name, op))
    }
}
