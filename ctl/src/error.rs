//! What can go wrong in meshctl, each with what to do about it.

use std::path::PathBuf;

use meshd_ipc::ErrorReply;

/// A failed command; printed as one line on stderr, exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Nothing answers on the socket.
    #[error(
        "cannot reach meshd at {}: {source}; is it running? try: systemctl status meshd",
        path.display()
    )]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The socket exists but this user may not open it.
    #[error(
        "permission denied opening {}: read-only commands need membership in the socket's group (usually meshd: sudo usermod -aG meshd $USER, then log in again); changes need root or the user meshd runs as",
        path.display()
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// meshd answered with an error.
    #[error("{}", .0.message)]
    Daemon(ErrorReply),
    /// Part of a command failed; what did is already printed.
    #[error("{0}")]
    Failed(String),
    /// A local problem: no terminal, passwords differ, bad input.
    #[error("{0}")]
    Input(String),
    /// The chat server could not be used.
    #[error("chat server {server}: {reason}")]
    Chat {
        /// HOST:PORT.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The conversation with meshd broke.
    #[error("talking to meshd at {}: {reason}", path.display())]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}
