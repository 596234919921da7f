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
