//! Inbound links: accept, run the listener's half of the handshake, and
//! check the dialler before answering.
//!
//! The dialler proves a static key in the first handshake message and names
//! itself. It is answered only if that key is the one the signaling servers
//! list for that name, and it addressed this device. A dialler the roster
//! does not know yet (it registered a moment ago) triggers one refresh of the
//! roster first. Anything else is refused and logged; a refused dialler gets
//! no answer at all.

use crate::accept;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Mesh;
use super::path::{Established, Path, Stream};
use super::roster::KeyStatus;
use crate::device_id::DeviceId;
use crate::metrics::{HandshakeFailure, Metrics, metrics};
use crate::public_key::PublicKey;

/// Handshakes in progress at once; connections beyond it are closed at once,
/// so a flood of half-open dials cannot exhaust memory or descriptors.
const MAX_HANDSHAKES: usize = 256;

/// Accepts connections until cancelled.
pub async fn accept_loop(mesh: Arc<Mesh>, listener: TcpListener, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Some((stream, remote)) = accept::next("mesh", &cancel, || listener.accept()).await
        else {
            break;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "too many handshakes in progress; connection closed");
            continue;
        };
        let mesh_for_task = mesh.clone();
        mesh.local.tracker.spawn(async move {
            inbound(&mesh_for_task, stream, remote).await;
            drop(permit);
        });
    }
}

async fn inbound(mesh: &Arc<Mesh>, stream: TcpStream, remote: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let local = &mesh.local;
    let stream: Stream = Box::new(stream);
    let started = std::time::Instant::now();
    let pending = match meshd_link::accept(stream, &local.key).await {
        Ok(pending) => pending,
        Err(error) => {
            metrics().handshake_failed(HandshakeFailure::of(&error));
            tracing::debug!(%remote, %error, "inbound handshake failed");
            return;
        }
    };
    let hello = pending.hello().clone();
    let key = PublicKey::from(*pending.remote_key());
    let refuse = |reason: String| {
        metrics().handshake_failed(HandshakeFailure::WrongPeer);
        tracing::warn!(%remote, claimed = %hello.from, key = %key, %reason, "link refused");
    };
    let Ok(peer) = DeviceId::parse(&hello.from) else {
        return refuse("the dialler's id is not a valid device id".to_owned());
    };
    if hello.to != local.id.to_string() {
        return refuse(format!(
            "it asked for device {:?}, this is {}",
            hello.to, local.id
        ));
    }
    if peer == local.id {
        return refuse("it claims this device's own id".to_owned());
    }
    match check_key(mesh, &peer, key).await {
        Ok(()) => {}
        // Usual while a device joins; not a security event.
        Err(Refusal::Unknown(reason)) => {
            metrics().handshake_failed(HandshakeFailure::UnknownPeer);
            tracing::info!(%remote, claimed = %hello.from, %reason, "link refused");
            return;
        }
        Err(Refusal::WrongKey(reason)) => {
            metrics().handshake_failed(HandshakeFailure::WrongKey);
            tracing::warn!(%remote, claimed = %hello.from, key = %key, %reason, "link refused");
            return;
        }
    }
    let link = match pending.complete(&local.hello_to(&peer)).await {
        Ok(link) => link,
        Err(error) => {
            metrics().handshake_failed(HandshakeFailure::of(&error));
            tracing::debug!(%remote, %peer, %error, "inbound handshake failed");
            return;
        }
    };
    // Includes the wait for the hubs to list a device that just joined.
    Metrics::observe(&metrics().handshake_seconds, started.elapsed());
    mesh.deliver(
        &peer,
        key,
        Established {
            link,
            hello,
            dialled: false,
            endpoint: remote,
            path: Path::Direct,
        },
    )
    .await;
}

/// Why a dialler was not answered.
enum Refusal {
    /// No hub lists the id (yet).
    Unknown(String),
    /// The id is listed, but not with this key.
    WrongKey(String),
}

/// Time a dialler unknown here may wait for the hubs' pushes to list it:
/// well inside its handshake timeout.
const LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks `key` against the roster, waiting a moment if the device is
/// unknown or listed with another key (it may have just registered, and
/// the hubs' news of it be on its way).
async fn check_key(mesh: &Arc<Mesh>, peer: &DeviceId, key: PublicKey) -> Result<(), Refusal> {
    if mesh.wait_for_key(peer, key, LIST_WAIT).await {
        return Ok(());
    }
    match mesh.key_of(peer) {
        Some(KeyStatus::Trusted(listed)) if listed == key => Ok(()),
        Some(KeyStatus::Trusted(listed)) => Err(Refusal::WrongKey(format!(
            "its key is not the key the signaling servers list for {peer} ({listed})"
        ))),
        Some(KeyStatus::Missing) => Err(Refusal::WrongKey(format!(
            "{peer} registered without a public key"
        ))),
        Some(KeyStatus::Conflict) => Err(Refusal::WrongKey(format!(
            "the signaling servers list different keys for {peer}"
        ))),
        None => Err(Refusal::Unknown(format!(
            "no signaling server lists a device {peer}"
        ))),
    }
}
