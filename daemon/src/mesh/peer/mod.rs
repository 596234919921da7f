//! One task per known device: it owns the links to that device.
//!
//! A device is reached by up to two links at once: a direct one and a
//! relayed one (through a hub). Messages go over the direct link when there
//! is one, over the relayed link otherwise. When there is no link, the task
//! dials every endpoint of the device at once (see `path.rs`), asks the
//! device through the hub channel to dial back at the same moment (hole
//! punching), and after a short head start asks a hub for a relay, so a
//! first message never waits for hole punching. A relayed link keeps the
//! task trying for a direct one in the background; once a direct link is up
//! the relayed one is closed a few seconds later. A direct link that goes
//! silent is dropped, and the relay takes over.
//!
//! Messages wait for their acknowledgement. Whenever the link they go out
//! on changes, they are sent again on the new one; the receiver drops the
//! duplicates, so a message acknowledged once is never lost and never
//! stored twice.
//!
//! The task is a state machine and a shell (docs/architecture.md, "Mesh"):
//! [`state::PeerState`] decides everything from inputs and the time it is
//! given (`state.rs`, with `direct.rs`, `relay.rs` and `links.rs`), and
//! the shell (`shell.rs`) feeds it commands, link events and timer
//! expiries and carries out the actions it returns.

mod direct;
mod events;
mod links;
mod relay;
mod shell;
mod state;
#[cfg(test)]
mod tests;
mod timers;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use meshd_ipc::LinkState;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Local;
use super::error::{NoLinkReason, StopReason};
use super::hubs::{HubId, VouchedHub};
use super::path::Established;
use super::roster::Listing;
use crate::device_id::DeviceId;
use crate::hub_wire::{Refusable, Signal};
use crate::public_key::PublicKey;
use crate::sync::lock;

/// How long a `send` or `ping` waits for its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages awaiting acknowledgement per peer; more are refused as busy.
pub const MAX_IN_FLIGHT: usize = 256;

/// Requests for a peer task.
pub enum Command {
    /// Deliver a message and answer with the time to its acknowledgement.
    Send {
        /// UTF-8 text.
        text: Bytes,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Duration, SendError>>,
    },
    /// Measure the round-trip time.
    Ping {
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<PingOutcome, SendError>>,
    },
    /// A link the listener accepted for this peer.
    Established(Established),
    /// The hubs' latest listing of the peer.
    Listing(Listing),
    /// A hole-punching signal from the peer, through hub `hub`.
    Signal {
        /// The hub.
        hub: HubId,
        /// The signal.
        signal: Signal,
    },
    /// Hub `hub` offers a relay to the peer.
    RelayOffer {
        /// The hub.
        hub: HubId,
        /// The one-time token.
        token: String,
        /// This side runs the link's initiator handshake.
        dial: bool,
        /// Another hub of the cluster runs the relay, as `hub` vouches.
        at: Option<VouchedHub>,
    },
    /// Hub `hub` could not pass a signal or relay request to the peer.
    Refused {
        /// The hub.
        hub: HubId,
        /// Which request.
        request: Refusable,
        /// Why.
        reason: String,
    },
}

/// A successful ping.
#[derive(Debug, Clone, Copy)]
pub struct PingOutcome {
    /// Round-trip time.
    pub rtt: Duration,
    /// The link's remote endpoint.
    pub endpoint: SocketAddr,
    /// Direct or relayed.
    pub path: LinkState,
}

/// Why a send or ping failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// No working link, and none could be made.
    #[error("no link to {device}: {reason}")]
    NoLink {
        /// The device.
        device: DeviceId,
        /// The last dial or link error.
        reason: NoLinkReason,
    },
    /// The link was up but the answer did not come.
    #[error("{device} did not acknowledge within {}s", ANSWER_TIMEOUT.as_secs())]
    Timeout {
        /// The device.
        device: DeviceId,
    },
    /// Too many messages or pings in flight to this device.
    #[error("too many requests to {device} are awaiting an answer; try again")]
    Busy {
        /// The device.
        device: DeviceId,
    },
    /// meshd is stopping or the device was removed.
    #[error("the link to {device} was closed: {reason}")]
    Stopped {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: StopReason,
    },
}

/// What `meshctl devices` and the web console show about the link.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// Link state.
    pub state: LinkState,
    /// The endpoint in use.
    pub endpoint: Option<SocketAddr>,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
    /// When the link in use was adopted.
    pub since: Option<tokio::time::Instant>,
}

/// The rest of meshd's hold on a peer task.
pub struct PeerHandle {
    /// The key the task trusts for the peer.
    pub key: PublicKey,
    /// When the task started.
    pub started: std::time::Instant,
    commands: mpsc::Sender<Command>,
    view: Arc<Mutex<PeerView>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl PeerHandle {
    /// Starts the task for `peer`.
    pub fn spawn(local: Arc<Local>, peer: DeviceId, key: PublicKey, listing: Listing) -> Self {
        let (commands, inbox) = mpsc::channel(64);
        let view = Arc::new(Mutex::new(PeerView {
            state: LinkState::Connecting,
            endpoint: None,
            rtt: None,
            since: None,
        }));
        let stop = local.cancel.child_token();
        let task = shell::PeerTask::new(
            local.clone(),
            peer,
            key,
            listing,
            view.clone(),
            inbox,
            stop.clone(),
        );
        let task = local.tracker.spawn(task.run());
        PeerHandle {
            key,
            started: std::time::Instant::now(),
            commands,
            view,
            stop,
            task,
        }
    }

    /// The task ended without being asked to (it panicked, or returned):
    /// the mesh replaces it.
    pub fn died(&self) -> bool {
        self.task.is_finished() && !self.stop.is_cancelled()
    }

    /// A copy of the current view.
    pub fn view(&self) -> PeerView {
        lock(&self.view).clone()
    }

    /// Where commands for the task go.
    pub fn command_sender(&self) -> mpsc::Sender<Command> {
        self.commands.clone()
    }

    /// Passes on a listing unless the task is too busy to take it now (the
    /// next round brings another).
    pub fn update(&self, listing: Listing) {
        let _ = self.commands.try_send(Command::Listing(listing));
    }

    /// Ends the task and closes its links.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Notices a peer task ending on its own, panics included: logs it once and
/// wakes the mesh, which starts a new task for the device (with backoff).
struct ExitWatch {
    peer: DeviceId,
    stop: CancellationToken,
    local: Arc<Local>,
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        if self.stop.is_cancelled() {
            return;
        }
        if std::thread::panicking() {
            tracing::error!(peer = %self.peer, "link task panicked; it will be restarted");
        } else {
            tracing::error!(peer = %self.peer, "link task ended unexpectedly; it will be restarted");
        }
        self.local.peer_exited.notify_one();
    }
}
