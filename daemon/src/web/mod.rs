//! The web console (docs/web.md): `GET /metrics` for Prometheus, the live
//! page of the mesh at `GET /`, and the JSON it polls, `GET /api/v1/mesh`.
//!
//! A read-only window on the other roles: it holds their handles and asks
//! them at each request, so it keeps no state of its own but the token and
//! the page's login sessions. Everything a request costs beyond routing
//! (reading /proc, walking the registry, serializing) runs on the blocking
//! pool.

mod api;
mod auth;
mod routes;
mod server;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use meshd_ipc::WebStatus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebConfig;
use crate::control::Roles;
use crate::sync::{read_lock, write_lock};

/// What every request of the console shares.
struct WebState {
    /// The roles it shows (without itself).
    roles: Roles,
    /// This node's id, for the page's title.
    node: String,
    /// `[web] token`, live on reload.
    token: RwLock<String>,
    /// The page's login sessions and failed attempts.
    sessions: auth::Sessions,
    /// The port it listens on, for the Host check.
    listen: SocketAddr,
}

impl WebState {
    fn token(&self) -> String {
        read_lock(&self.token).clone()
    }
}

/// The web console as the rest of meshd sees it.
#[derive(Clone)]
pub struct WebHandle {
    state: Arc<WebState>,
}

/// Binds the listener; before [`start`], so READY=1 means it is up.
pub async fn bind(config: &WebConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Serves the console on an already bound listener.
pub fn start(
    config: &WebConfig,
    listener: TcpListener,
    node: String,
    roles: Roles,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<WebHandle> {
    let listen = listener.local_addr()?;
    let state = Arc::new(WebState {
        roles,
        node,
        token: RwLock::new(config.token.clone()),
        sessions: auth::Sessions::new(),
        listen,
    });
    tracker.spawn(server::accept_loop(
        listener,
        state.clone(),
        cancel,
        tracker.clone(),
    ));
    tracing::info!(role = "web", %listen, token = !config.token.is_empty(), "web console listening");
    Ok(WebHandle { state })
}

impl WebHandle {
    /// For `meshctl status`.
    pub fn status(&self) -> WebStatus {
        WebStatus {
            listen: self.state.listen.to_string(),
            token_required: !read_lock(&self.state.token).is_empty(),
        }
    }

    /// Applies the live part of a reloaded config: the token. Sessions made
    /// with the old token end with it.
    pub fn apply(&self, config: &WebConfig) {
        *write_lock(&self.state.token) = config.token.clone();
    }
}
