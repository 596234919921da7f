//! The console's accept loop and per-connection HTTP/1.1 service, bounded
//! like the other listeners: [`MAX_CONNECTIONS`] at once (more wait in the
//! kernel's backlog), [`REQUEST_TIMEOUT`] to send a request's head, heads of
//! [`MAX_HEAD_BYTES`] at most, and a connection lives [`MAX_AGE`] at most.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::WebState;
use super::routes;
use crate::accept;

/// Connections served at once: a few browsers and a scraper need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// Time a client has to send a request's head (also while a kept-alive
/// connection sits idle).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A connection lives at most this long: a page polling every 2 s opens a
/// new one now and then; a client that stops reading does not hold a slot.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// How long a request in flight gets to finish on shutdown.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Accepts connections until `cancel` fires.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<WebState>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let serve = {
        let cancel = cancel.clone();
        move |stream, peer| serve_connection(stream, peer, state.clone(), cancel.clone())
    };
    accept::bounded("web", listener, MAX_CONNECTIONS, cancel, tracker, serve).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<WebState>,
    cancel: CancellationToken,
) {
    let service = service_fn(move |request| routes::route(request, state.clone(), peer));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES.max(8192));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = cancel.cancelled() => None,
        () = tokio::time::sleep(MAX_AGE) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(DRAIN_TIME, connection.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer_addr = %peer, %error, "web connection ended with an error");
    }
}
