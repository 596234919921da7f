//! The accept step every listener shares.
//!
//! An accept error (EMFILE, ENFILE, ENOBUFS, a connection reset before it was
//! taken) must neither end the role nor spin the loop: it is logged and the
//! listener tried again after a pause. Cancellation ends the wait at once.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Pause after a failed accept.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The next accepted connection of `role`'s listener, or `None` once
/// `cancel` fires.
pub async fn next<T, F, Fut>(
    role: &'static str,
    cancel: &CancellationToken,
    mut accept: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    loop {
        tokio::select! {
            () = cancel.cancelled() => return None,
            accepted = accept() => match accepted {
                Ok(connection) => return Some(connection),
                Err(error) => {
                    tracing::warn!(%error, "{role} accept failed; retrying in 100ms");
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
            },
        }
    }
}

/// Accepts `role`'s TCP connections until `cancel` fires, at most
/// `max_connections` served at once: at the cap the loop stops accepting,
/// and new clients wait in the kernel's backlog. Each connection is served
/// by `serve` in a task on `tracker`.
pub async fn bounded<F, Fut>(
    role: &'static str,
    listener: tokio::net::TcpListener,
    max_connections: usize,
    cancel: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let Some((stream, peer)) = next(role, &cancel, || listener.accept()).await else {
            break;
        };
        let connection = serve(stream, peer);
        tracker.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    tracing::debug!("{role} listener closed");
}
