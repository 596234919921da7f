//! Registration and heartbeat with one signaling server.
//!
//! One task per server in `[mesh] signaling`. Each round opens a connection,
//! registers (which doubles as the heartbeat), lists the devices and feeds
//! the roster; then it waits a third of the TTL the server returned. A
//! server that fails is retried with backoff and jitter; the log says when a
//! server goes down and when it comes back, not on every retry.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Mesh;
use super::backoff::Backoff;
use super::hub_client::{HubConnection, HubError};
use super::hubs::HubId;
use crate::hub_wire::RegisterRequest;

/// Fastest heartbeat, whatever TTL a server returns.
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// Runs the rounds for hub `id` until cancelled.
pub async fn run(mesh: Arc<Mesh>, id: HubId, cancel: CancellationToken) {
    let hub = mesh.local.hubs.get(id);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut reachable: Option<bool> = None;
    let mut last_error = String::new();
    loop {
        let wait = match round(&mesh, id).await {
            Ok(ttl) => {
                match reachable {
                    Some(true) => {}
                    Some(false) => {
                        tracing::info!(hub = %hub.url(), "signaling server reachable again")
                    }
                    None => tracing::info!(hub = %hub.url(), "registered with signaling server"),
                }
                reachable = Some(true);
                last_error.clear();
                backoff.reset();
                hub.answered(None);
                (ttl / 3).max(MIN_HEARTBEAT)
            }
            Err(error) => {
                let message = explain(&error, &mesh.local.id.to_string());
                // Once per outage, and again only if the reason changes.
                if reachable != Some(false) || message != last_error {
                    match error {
                        HubError::Status { .. } => {
                            tracing::warn!(hub = %hub.url(), error = %message, "signaling server refused the registration; retrying with backoff")
                        }
                        HubError::Http(_) | HubError::Decode(_) => {
                            tracing::warn!(hub = %hub.url(), error = %message, "signaling server answered, but not as a meshd hub; retrying with backoff")
                        }
                        HubError::Connect { .. } | HubError::Timeout => {
                            tracing::warn!(hub = %hub.url(), error = %message, "signaling server unreachable; retrying with backoff")
                        }
                    }
                }
                reachable = Some(false);
                hub.answered(Some(message.clone()));
                last_error = message;
                backoff.next_wait()
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            // The hub channel saw the list without this device (a
            // restarted hub): register now.
            () = hub.register_asked() => {}
        }
    }
}

/// One registration and listing; the server's TTL on success.
async fn round(mesh: &Arc<Mesh>, id: HubId) -> Result<Duration, HubError> {
    let hub = mesh.local.hubs.get(id);
    let mut connection = HubConnection::open(hub.url(), Some(mesh.listen)).await?;
    let addr = mesh.endpoint_via(id, connection.local_addr());
    let local = &mesh.local;
    let body = RegisterRequest {
        id: local.id.to_string(),
        addr: addr.to_string(),
        pubkey: Some(local.public.to_base64()),
        endpoints: Some(mesh.endpoints().iter().map(ToString::to_string).collect()),
    };
    let registered = match connection.register(&body, &mesh.join_token).await {
        Ok(registered) => registered,
        Err(error) => {
            // Still learn the others where the hub allows it (no join
            // token, or a 409 for a token holder), so a device whose
            // registration is refused can at least be seen trying.
            if let Ok(devices) = connection.devices(&mesh.join_token).await {
                mesh.update_roster(id, &devices);
            }
            return Err(error);
        }
    };
    let ttl = Duration::from_secs(registered.ttl_secs.max(3));
    hub.registered(registered.observed, ttl);
    let devices = connection.devices(&mesh.join_token).await?;
    mesh.update_roster(id, &devices);
    Ok(ttl)
}

/// The error with what to do about it, said once (the hub's own 409 text
/// already names the fix, so it is replaced rather than repeated).
fn explain(error: &HubError, id: &str) -> String {
    match error {
        HubError::Status { status, .. } if status.as_u16() == 409 => format!(
            "{status}: the id {id} is bound to another key there; if this device's key was replaced on purpose, run `meshctl devices remove {id}` on that hub"
        ),
        HubError::Status { status, .. } if status.as_u16() == 401 => {
            format!("{error}: set [mesh] join_token to the server's [signaling] join_token")
        }
        _ => error.to_string(),
    }
}
