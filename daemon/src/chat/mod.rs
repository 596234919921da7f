//! The chat role: a TCP broadcast server (docs/chat-protocol.md). Clients log in
//! with a user name and password; every message goes to all other clients.
//!
//! [`start`] spawns the accept loop on the supervisor's tracker; each
//! connection gets a task (`session.rs`), and each logged-in client a writer.
//! The room (`room.rs`) fans lines out; users (`users.rs`) and password checks
//! (`auth.rs`) decide who may log in. [`ChatHandle`] is the role's face to the
//! rest of meshd: status, operator broadcasts, and user management. With
//! `tls = true` every connection goes through a TLS handshake first
//! (`tls.rs`, the certificate in `certificate.rs`), and the same sessions run
//! over the TLS stream. In a cluster (docs/cluster.md, "Chat across hubs")
//! the room and the users are shared through it (`shared.rs`): user
//! changes are made in the cluster first.

mod argon2_pool;
mod auth;
mod certificate;
mod flood;
mod line_reader;
pub(crate) mod protocol;
mod room;
mod session;
mod shared;
mod tls;
pub(crate) mod users;

use crate::accept;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshd_ipc::ChatStatus;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ChatConfig;
use crate::log_limit::LogLimiter;
use crate::shared_chat::{UserOp, UserRefusal};
use auth::Authenticator;
use flood::FloodControl;
use room::Room;
pub use tls::{ChatTlsServer, TlsError};
use users::UserStore;
pub use users::UsersError;

/// Lines the room's ring holds; a client further behind than this is slow.
pub(crate) const RING_CAPACITY: usize = 8192;

/// What every session shares.
pub struct ChatShared {
    room: Room,
    users: UserStore,
    auth: Authenticator,
    flood: FloodControl,
    /// One `chat login throttled` line per interval, however many are.
    throttled_logins: LogLimiter,
    max_line_bytes: usize,
    cancel: CancellationToken,
    /// In a cluster: where user changes are made first.
    cluster: std::sync::OnceLock<Arc<dyn crate::shared_chat::ChatCluster>>,
}

/// The chat role as the rest of meshd sees it.
#[derive(Clone)]
pub struct ChatHandle {
    shared: Arc<ChatShared>,
    listen: SocketAddr,
    tls_fingerprint: Option<String>,
}

/// Binds the listener; separate from [`start`] so that READY=1 follows every
/// bind.
pub async fn bind(config: &ChatConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// With `tls = true`: reads the certificate and key, or makes meshd's own on
/// first start. Called right after [`bind`], before any role starts, so a
/// bad file stops meshd before it serves anything.
pub async fn load_tls(
    config: &ChatConfig,
    state_dir: &std::path::Path,
) -> Result<Option<ChatTlsServer>, TlsError> {
    match &config.tls {
        Some(tls) => tls::load(tls, state_dir).await.map(Some),
        None => Ok(None),
    }
}

/// Starts the role on a bound listener, loading users from `state_dir`;
/// `tls` from [`load_tls`].
pub async fn start(
    config: &ChatConfig,
    state_dir: &std::path::Path,
    listener: TcpListener,
    tls: Option<ChatTlsServer>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<ChatHandle> {
    let listen = listener.local_addr()?;
    let shared = Arc::new(ChatShared {
        room: Room::new(RING_CAPACITY),
        users: UserStore::new(state_dir),
        auth: Authenticator::new().await,
        flood: FloodControl::new(config.rate_per_user, config.burst_per_user),
        throttled_logins: LogLimiter::default(),
        max_line_bytes: config.max_line_bytes,
        cancel: cancel.clone(),
        cluster: std::sync::OnceLock::new(),
    });
    match shared.users.reload().await {
        Ok(count) => tracing::info!(role = "chat", users = count, "chat users loaded"),
        Err(error) => {
            tracing::error!(role = "chat", %error, "chat users not loaded; no one can log in until it is fixed")
        }
    }
    let tls_fingerprint = tls.as_ref().map(|tls| tls.fingerprint().to_owned());
    tracker.spawn(accept_loop(
        listener,
        shared.clone(),
        tls,
        config.max_clients,
        tracker.clone(),
    ));
    match &tls_fingerprint {
        Some(fingerprint) => {
            tracing::info!(role = "chat", %listen, tls_fingerprint = %fingerprint, "chat server listening with tls")
        }
        None => tracing::info!(role = "chat", %listen, "chat server listening"),
    }
    Ok(ChatHandle {
        shared,
        listen,
        tls_fingerprint,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ChatShared>,
    tls: Option<ChatTlsServer>,
    max_clients: usize,
    tracker: TaskTracker,
) {
    let connections = Arc::new(AtomicUsize::new(0));
    loop {
        let Some((stream, peer)) = accept::next("chat", &shared.cancel, || listener.accept()).await
        else {
            break;
        };
        if connections.load(Ordering::Relaxed) >= max_clients {
            tracker.spawn(refuse_full(stream, peer, tls.clone()));
            continue;
        }
        // Counted from accept, so TLS handshakes in progress count too.
        connections.fetch_add(1, Ordering::Relaxed);
        let connections = connections.clone();
        let shared = shared.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            session::serve(stream, peer, shared, tls).await;
            connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tracing::debug!("chat listener closed");
}

/// Tells a client over `max_clients` why it is turned away, within 1 s; on
/// a TLS port inside TLS, never in clear.
async fn refuse_full(stream: TcpStream, peer: SocketAddr, tls: Option<ChatTlsServer>) {
    const REFUSAL_TIME: Duration = Duration::from_secs(1);
    tracing::warn!(peer_addr = %peer, "chat full; connection refused");
    let mut lines = protocol::HELLO.to_vec();
    lines.extend_from_slice(&protocol::err(
        protocol::ErrCode::Full,
        "too many clients; try again later",
    ));
    let refusal = async {
        match tls {
            None => tell(stream, &lines).await,
            Some(tls) => {
                if let Ok(stream) = tls.accept(stream, REFUSAL_TIME).await {
                    tell(stream, &lines).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, refusal).await;
}

/// Writes `lines` and closes.
async fn tell(mut stream: impl tokio::io::AsyncWrite + Unpin, lines: &[u8]) {
    if stream.write_all(lines).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

impl ChatHandle {
    /// For `meshctl status`.
    pub fn status(&self) -> ChatStatus {
        ChatStatus {
            listen: self.listen.to_string(),
            clients: self.shared.room.clients(),
            messages_relayed: self.shared.room.relayed(),
            tls_fingerprint: self.tls_fingerprint.clone(),
        }
    }

    /// `meshctl broadcast`: `SYS text` to every client; returns how many.
    pub fn broadcast(&self, text: &str) -> usize {
        tracing::info!(role = "chat", "operator broadcast");
        self.shared.room.system(text)
    }

    /// `meshctl users list`
    pub fn user_names(&self) -> Vec<String> {
        self.shared.users.snapshot().names()
    }

    /// `meshctl users add`
    pub async fn add_user(&self, name: &str, password: String) -> Result<(), UsersError> {
        users::check_name(name)?;
        users::check_password(&password)?;
        if self.shared.users.snapshot().hash_of(name).is_some() {
            return Err(UsersError::Exists(name.to_owned()));
        }
        let hash = self.hash(password).await?;
        self.in_cluster(name, UserOp::Add(&hash)).await?;
        self.shared
            .users
            .change(|set| {
                // The cluster's copy may have come back first.
                if set.hash_of(name) == Some(hash.as_str()) {
                    return Ok(());
                }
                set.add(name, hash.clone())
            })
            .await?;
        tracing::info!(user = name, "chat user added");
        Ok(())
    }

    /// `meshctl users passwd`
    pub async fn set_password(&self, name: &str, password: String) -> Result<(), UsersError> {
        if self.shared.users.snapshot().hash_of(name).is_none() {
            return Err(UsersError::NotFound(name.to_owned()));
        }
        users::check_password(&password)?;
        let hash = self.hash(password).await?;
        self.in_cluster(name, UserOp::SetPassword(&hash)).await?;
        self.shared
            .users
            .change(|set| set.set_password(name, hash))
            .await?;
        // Sessions logged in with the old password end now (docs/chat-protocol.md).
        let ended = self
            .shared
            .room
            .revoke(name, "password changed; log in again with the new one");
        tracing::info!(
            user = name,
            sessions_ended = ended,
            "chat user password changed"
        );
        Ok(())
    }

    /// `meshctl users remove`
    pub async fn remove_user(&self, name: &str) -> Result<(), UsersError> {
        if self.shared.users.snapshot().hash_of(name).is_none() {
            return Err(UsersError::NotFound(name.to_owned()));
        }
        self.in_cluster(name, UserOp::Remove).await?;
        let clustered = self.shared.cluster.get().is_some();
        self.shared
            .users
            .change(|set| match set.remove(name) {
                // The cluster's removal may have come back first.
                Err(UsersError::NotFound(_)) if clustered => Ok(()),
                removed => removed,
            })
            .await?;
        let ended = self.shared.room.revoke(name, "user removed");
        tracing::info!(user = name, sessions_ended = ended, "chat user removed");
        Ok(())
    }

    /// In a cluster, makes a user change there first, so that it reaches
    /// every hub or none.
    async fn in_cluster(&self, name: &str, op: UserOp<'_>) -> Result<(), UsersError> {
        let Some(cluster) = self.shared.cluster.get() else {
            return Ok(());
        };
        match cluster.change_user(name, op).await {
            Ok(()) => Ok(()),
            Err(UserRefusal::Exists) => Err(UsersError::Exists(name.to_owned())),
            Err(UserRefusal::Unavailable(reason)) => Err(UsersError::Cluster(reason)),
        }
    }

    /// The room and the users for the cluster to share, with the outbox of
    /// this hub's events; `None` if already shared.
    pub fn share(
        &self,
    ) -> Option<(
        Arc<dyn crate::shared_chat::SharedRoom>,
        tokio::sync::mpsc::Receiver<crate::shared_chat::ChatEvent>,
    )> {
        let outbox = self.shared.room.share()?;
        Some((Arc::new(shared::Shared(self.shared.clone())), outbox))
    }

    /// From now on user changes are made in `cluster` first.
    pub fn join(&self, cluster: Arc<dyn crate::shared_chat::ChatCluster>) {
        let _ = self.shared.cluster.set(cluster);
    }

    /// Applies the live keys of a reloaded config (the flood limits).
    pub fn apply(&self, config: &ChatConfig) {
        self.shared
            .flood
            .set_limits(config.rate_per_user, config.burst_per_user);
    }

    /// Re-reads the users file (on reload); the last good set stays on error.
    pub async fn reload_users(&self) -> Result<usize, UsersError> {
        self.shared.users.reload().await
    }

    async fn hash(&self, password: String) -> Result<String, UsersError> {
        self.shared
            .auth
            .hash(password)
            .await
            .map_err(UsersError::Hash)
    }
}
