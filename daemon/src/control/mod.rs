//! The control socket: how meshctl talks to meshd.
//!
//! [`bind`] creates the socket (`socket.rs`); [`start`] spawns the accept loop,
//! which spawns one task per connection (`server.rs`) within the caller's share of the
//! slots (`slots.rs`). Each connection reads
//! one JSON request per line, checks the caller's access (`peer.rs`) and hands
//! the request to the [`Dispatcher`] (`dispatch.rs`), the one place that knows
//! every role. A bad request costs only its own connection.

mod dispatch;
mod peer;
mod server;
mod slots;
mod socket;

use std::path::PathBuf;
use std::sync::Arc;

pub use dispatch::{Dispatcher, NodeFacts, ReloadError, ReloadRequest, Roles};
pub use interprocess::os::unix::uds_local_socket::tokio::Listener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process answers on the socket.
    #[error(
        "control socket {} is in use by a running meshd; stop it first (systemctl stop meshd) or set [control] socket to another path",
        .0.display()
    )]
    InUse(PathBuf),
    /// Something other than a socket sits at the path.
    #[error("{} exists and is not a socket; remove it or set [control] socket to another path", .0.display())]
    NotASocket(PathBuf),
    /// Creating, binding or configuring the socket failed.
    #[error("cannot create control socket {}: {reason}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Creates the control socket; see `socket.rs`.
pub fn bind(path: &std::path::Path, group: &str) -> Result<Listener, ControlError> {
    socket::bind(path, group)
}

/// Serves control connections until `cancel` fires; the socket file is
/// removed when the accept loop ends.
pub fn start(
    listener: Listener,
    dispatcher: Dispatcher,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(server::accept_loop(
        listener,
        Arc::new(dispatcher),
        cancel,
        tracker.clone(),
    ));
}
