//! What goes into the peer state machine and what comes out of it.
//!
//! Inputs are everything that can happen to a peer task: commands from the
//! control socket, link and attempt outcomes, hub messages, the clock.
//! Actions are everything it can do: dial, join a relay, start, write to or
//! close a link, send to a hub, answer a command, log. The state machine
//! decides; the shell (`shell.rs`) only feeds inputs and carries out
//! actions, so every decision is testable with a fake clock.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use meshd_link::Frame;

use super::super::error::{DialError, JoinRelayError, LinkDown, StopReason};
use super::super::hubs::{HubId, VouchedHub};
use super::super::path::Path;
use super::super::roster::Listing;
use super::{PingOutcome, SendError};
use crate::hub_wire::{Refusable, Signal, ToHub};

/// A link the shell holds, by the number it gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// A dial round the state machine started, by the number it gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialId(pub u64);

/// What the handshake established about a new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFacts {
    /// The peer's instance, from its hello: new on every start.
    pub instance: u64,
    /// This side ran the handshake's initiator.
    pub dialled: bool,
    /// The peer's address (direct) or the hub's (relayed).
    pub endpoint: SocketAddr,
    /// Direct or relayed.
    pub path: Path,
}

/// Something that happened to a peer task. `S` and `P` answer a send and a
/// ping (oneshot senders in meshd, plain tags in tests).
#[derive(Debug)]
pub enum Input<S, P> {
    /// Deliver `text` as message `id` (a process-wide unique number).
    Send {
        /// The message id.
        id: u64,
        /// The text.
        text: Bytes,
        /// Where the outcome goes.
        reply: S,
    },
    /// Measure the round trip of the current link.
    Ping {
        /// Where the outcome goes.
        reply: P,
    },
    /// The hubs' latest listing of the peer.
    Listing(Listing),
    /// The listener accepted a link from the peer; the shell holds it.
    Arrived {
        /// The shell's number for it.
        link: LinkId,
        /// What its handshake established.
        facts: LinkFacts,
    },
    /// Dial round `dial` ended: a link the shell now holds, or why not.
    Dialled {
        /// The round.
        dial: DialId,
        /// The link and its facts, or every attempt's error.
        outcome: Result<(LinkId, LinkFacts), DialError>,
    },
    /// A relay join ended.
    Relayed {
        /// The link and its facts, or why not.
        outcome: Result<(LinkId, LinkFacts), JoinRelayError>,
    },
    /// The peer acknowledged message `id` on `link`.
    Ack {
        /// The link it came over.
        link: LinkId,
        /// The message.
        id: u64,
    },
    /// The peer answered ping `nonce` on `link`.
    Pong {
        /// The link it came over.
        link: LinkId,
        /// The ping.
        nonce: u64,
    },
    /// Messages from the peer arrive on `link` (said at most once a second):
    /// the link works, and the peer is in use.
    Received {
        /// The link they came over.
        link: LinkId,
    },
    /// `link` ended (its reader or writer says why, or its queue was full).
    LinkDown {
        /// The link.
        link: LinkId,
        /// Why.
        reason: LinkDown,
    },
    /// A hole-punching signal from the peer, through `hub`.
    Signal {
        /// The hub it came through.
        hub: HubId,
        /// The signal.
        signal: Signal,
    },
    /// `hub` offers a relay to the peer.
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
    /// `hub` could not pass a signal or relay request to the peer.
    Refused {
        /// The hub.
        hub: HubId,
        /// Which request.
        request: Refusable,
        /// The hub's words.
        reason: String,
    },
    /// The shell could not queue `message` on `hub`'s channel (it closed,
    /// or its queue is full).
    HubSendFailed {
        /// The hub.
        hub: HubId,
        /// What did not go.
        message: ToHub,
    },
    /// The time [`super::state::PeerState::poll_timeout`] named has come.
    Timeout,
    /// The task is ending.
    Stop(StopReason),
}

/// Something a peer task must do.
#[derive(Debug)]
pub enum Action<S, P> {
    /// Race `candidates` (each within the connect timeout), then `public`
    /// (within `public_wait`), and report [`Input::Dialled`] for `dial`.
    Dial {
        /// The round.
        dial: DialId,
        /// Endpoints to dial.
        candidates: Vec<SocketAddr>,
        /// The hole-punching endpoint, dialled last.
        public: Option<SocketAddr>,
        /// How long the public endpoint's dial may wait.
        public_wait: Duration,
    },
    /// Join the relay `hub` offered and report [`Input::Relayed`].
    JoinRelay {
        /// The hub.
        hub: HubId,
        /// Its token.
        token: String,
        /// This side runs the initiator handshake.
        dial: bool,
        /// Join there instead: another hub of the cluster, as `hub`
        /// vouches.
        at: Option<VouchedHub>,
    },
    /// The link is adopted: start its reader and writer.
    StartLink {
        /// The link.
        link: LinkId,
    },
    /// The link lost the tie-break: close it, saying "duplicate link".
    RejectLink {
        /// The link.
        link: LinkId,
    },
    /// Queue `frame` on `link`; a full queue comes back as
    /// [`Input::LinkDown`] with [`LinkDown::WriteQueueFull`].
    Write {
        /// The link.
        link: LinkId,
        /// The frame.
        frame: Frame,
    },
    /// Say Close with `reason` (best effort) and stop the link's tasks.
    CloseLink {
        /// The link.
        link: LinkId,
        /// Why, as the peer will read it.
        reason: CloseReason,
    },
    /// Queue `message` on `hub`'s channel; failure comes back as
    /// [`Input::HubSendFailed`].
    ToHub {
        /// The hub.
        hub: HubId,
        /// The message.
        message: ToHub,
    },
    /// Answer a send.
    SendDone {
        /// Its reply handle.
        reply: S,
        /// The time to the acknowledgement, or why not.
        outcome: Result<Duration, SendError>,
    },
    /// Answer a ping.
    PingDone {
        /// Its reply handle.
        reply: P,
        /// The round trip, or why not.
        outcome: Result<PingOutcome, SendError>,
    },
    /// Write one log line.
    Log(PeerEvent),
}

/// Why the state machine closes a link.
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// It failed.
    Lost(LinkDown),
    /// A newer link on the same path replaced it.
    Replaced,
    /// A direct link took over from this relayed one.
    MovedToDirect,
    /// The task is ending.
    Stopping(StopReason),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Lost(reason) => reason.fmt(f),
            CloseReason::Replaced => f.write_str("replaced by a newer link"),
            CloseReason::MovedToDirect => f.write_str("moved to a direct path"),
            CloseReason::Stopping(reason) => reason.fmt(f),
        }
    }
}

/// A line for the log (docs/logging.md); the shell writes each with its
/// level, message and fields.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// info `link up`.
    LinkUp {
        /// Where.
        endpoint: SocketAddr,
        /// Direct or relayed.
        path: Path,
        /// This side dialled.
        dialled: bool,
    },
    /// info `link down`.
    LinkDown {
        /// Where.
        endpoint: SocketAddr,
        /// Direct or relayed.
        path: Path,
        /// Why.
        reason: LinkDown,
    },
    /// info `moved to the relayed link`.
    MovedToRelayed,
    /// info `moved to a direct path; relay closed`.
    MovedToDirect {
        /// The direct link's endpoint.
        endpoint: SocketAddr,
    },
    /// info `link closed`, when the task ends.
    LinkClosed {
        /// Why the task ends.
        reason: StopReason,
    },
    /// debug `duplicate link closed (tie-break)`.
    DuplicateClosed {
        /// The refused link's endpoint.
        endpoint: SocketAddr,
    },
    /// debug `link replaced by a newer one`.
    Replaced {
        /// The old link's endpoint.
        endpoint: SocketAddr,
    },
    /// debug `dial failed`.
    DialFailed {
        /// Every attempt's error.
        error: DialError,
    },
    /// debug `relay failed`.
    RelayFailed {
        /// Why.
        error: JoinRelayError,
    },
    /// debug `relay refused`.
    RelayRefused {
        /// The hub's words.
        reason: String,
    },
}
