//! The signaling server's accept loop and per-connection HTTP/1.1 service.
//!
//! Tasks: one accept loop, and one task per connection, all on the
//! supervisor's tracker. Connections are capped by a semaphore
//! (`signaling.max_connections`): at the cap, the loop stops accepting and
//! new clients wait in the kernel backlog. A client gets
//! `signaling.request_timeout` to send each request's headers (hyper's header
//! timer, which also runs while a kept-alive connection sits idle) and its body
//! (see `routes.rs`), and a connection lives at most six request timeouts, so
//! a slow, silent or non-reading client cannot hold a slot forever.

use crate::accept;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SignalingState;
use super::routes;

/// How long open connections get to finish their request on shutdown.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A connection lives at most this many request timeouts (60 s by default).
/// Header and body reads have their own timeouts, but writing a response to a
/// client that never reads would otherwise block for ever; honest clients
/// simply reconnect.
const MAX_AGE_IN_REQUEST_TIMEOUTS: u32 = 6;

/// Accepts connections until `cancel` fires.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<SignalingState>,
    max_connections: usize,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let serve = {
        let cancel = cancel.clone();
        move |stream, peer| serve_connection(stream, peer, state.clone(), cancel.clone())
    };
    accept::bounded(
        "signaling",
        listener,
        max_connections,
        cancel,
        tracker,
        serve,
    )
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<SignalingState>,
    cancel: CancellationToken,
) {
    // Relays and channels carry small, latency-bound records: no Nagle.
    let _ = stream.set_nodelay(true);
    let timeout = state.settings().request_timeout;
    let service = {
        let state = state.clone();
        service_fn(move |request| routes::route(request, peer, state.clone()))
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(64 * 1024);
    // Upgrades hand the stream to a channel or relay task (routes.rs).
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let max_age = timeout * MAX_AGE_IN_REQUEST_TIMEOUTS;
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = cancel.cancelled() => None,
        () = tokio::time::sleep(max_age) => {
            tracing::debug!(peer_addr = %peer, ?max_age, "signaling connection reached its maximum age");
            None
        }
    };
    // Otherwise let the request in flight finish, for at most DRAIN_TIME.
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
        tracing::debug!(peer_addr = %peer, %error, "signaling connection ended with an error");
    }
}
