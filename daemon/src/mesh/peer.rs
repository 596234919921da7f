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
//! Messages wait for their acknowledgement in `pending`. Whenever the link
//! they go out on changes, they are sent again on the new one; the receiver
//! drops the duplicates, so a message acknowledged once is never lost and
//! never stored twice.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use meshd_ipc::LinkState;
use meshd_link::Frame;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Local;
use super::backoff::Backoff;
use super::error::{DialError, LinkDown, NoLinkReason, StopReason};
use super::hubs::{Hub, HubId};
use super::link_io::{self, KEEPALIVE, LinkEvent, ReadContext};
use super::path::{self, Established, PUNCH_TIMEOUT, Path, RELAYED_PUNCH_TIMEOUT, Target};
use super::roster::Listing;
use crate::device_id::DeviceId;
use crate::hub_wire::{Refusable, Signal, ToHub};
use crate::public_key::PublicKey;
use crate::sync::lock;

/// How long a `send` or `ping` waits for its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Two links of one peer instance on the same path set up within this
/// window are a simultaneous dial, settled by the tie-break; beyond it the
/// newer link wins, because the peer evidently gave up on the older one.
const SIMULTANEOUS_WINDOW: Duration = Duration::from_secs(2);

/// Direct paths get this long before a relay is asked for. The device
/// with the larger id waits three times as long, so that usually only one
/// of the two asks.
const RELAY_HEAD_START: Duration = Duration::from_millis(300);

/// An asked-for relay that brought no offer by then is asked for again.
const RELAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A relayed link stays this long beside a new direct one, so that both
/// ends have moved before it closes.
const RELAY_LINGER: Duration = Duration::from_secs(5);

/// Time for the device's answer to a hole-punching request.
const PUNCH_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Messages awaiting acknowledgement per peer; more are refused as busy.
pub const MAX_IN_FLIGHT: usize = 256;

/// Pings awaiting an answer per peer.
const MAX_PINGS: usize = 64;

/// Frames queued for a link's writer. Larger than everything that can be
/// outstanding (our messages, acks of the peer's, pings and pongs), so the
/// reader never waits on the writer while the peer behaves.
const WRITE_QUEUE: usize = 4 * MAX_IN_FLIGHT + 4 * MAX_PINGS;

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

/// What `meshctl devices` shows about the link.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// Link state.
    pub state: LinkState,
    /// The endpoint in use.
    pub endpoint: Option<SocketAddr>,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
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
        }));
        let stop = local.cancel.child_token();
        let (events_tx, events) = mpsc::channel(WRITE_QUEUE);
        let now = Instant::now();
        let head_start = if local.id < peer {
            RELAY_HEAD_START
        } else {
            RELAY_HEAD_START * 3
        };
        let task = PeerTask {
            local: local.clone(),
            target: Target { peer, key },
            listing,
            view: view.clone(),
            commands: inbox,
            events,
            events_tx,
            stop: stop.clone(),
            direct: None,
            relayed: None,
            next_link: 0,
            dials: 0,
            punching: 0,
            dial_at: Some(now),
            dial_backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            punch: None,
            punch_at: None,
            relay: RelayState::Idle,
            relay_at: Some(now + head_start),
            relay_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(15)),
            relay_hub: None,
            linger_until: None,
            last_error: None,
            pending: BTreeMap::new(),
            pings: HashMap::new(),
            next_nonce: 0,
        };
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

struct ActiveLink {
    id: u64,
    frames: mpsc::Sender<Frame>,
    instance: u64,
    /// The id of the device that ran the initiator side.
    dialler: DeviceId,
    since: Instant,
    endpoint: SocketAddr,
    path: Path,
    /// When an ack or pong last came over it.
    heard: Instant,
    stop: CancellationToken,
}

impl ActiveLink {
    fn close(self, reason: impl std::fmt::Display) {
        let _ = self.frames.try_send(Frame::Close {
            reason: reason.to_string(),
        });
        self.stop.cancel();
    }
}

/// The relay, as far as this task asked for or accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayState {
    Idle,
    /// Asked hub `hub` at `since`; waiting for its offer.
    Asked {
        hub: HubId,
        since: Instant,
    },
    /// Joining an offered relay.
    Joining,
}

/// A hole-punching request sent to the peer, awaiting its answer.
#[derive(Debug, Clone, Copy)]
struct Punch {
    nonce: u64,
    hub: HubId,
    sent: Instant,
}

struct PendingSend {
    text: Bytes,
    sent: Instant,
    deadline: Instant,
    /// The deadline was extended once already, at a failover.
    extended: bool,
    reply: oneshot::Sender<Result<Duration, SendError>>,
}

struct PendingPing {
    link: u64,
    sent: Instant,
    deadline: Instant,
    reply: Option<oneshot::Sender<Result<PingOutcome, SendError>>>,
}

struct PeerTask {
    local: Arc<Local>,
    target: Target,
    listing: Listing,
    view: Arc<Mutex<PeerView>>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Receiver<LinkEvent>,
    events_tx: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
    direct: Option<ActiveLink>,
    relayed: Option<ActiveLink>,
    next_link: u64,
    /// Direct dials in flight.
    dials: usize,
    /// How many of them include the public endpoint (hole-punching dials).
    punching: usize,
    dial_at: Option<Instant>,
    dial_backoff: Backoff,
    punch: Option<Punch>,
    /// When to send our own punching dial, timed from the hub RTT.
    punch_at: Option<Instant>,
    relay: RelayState,
    relay_at: Option<Instant>,
    relay_backoff: Backoff,
    /// The hub to ask for the next relay (rotates on refusals).
    relay_hub: Option<HubId>,
    /// When to close the relayed link beside a direct one.
    linger_until: Option<Instant>,
    last_error: Option<NoLinkReason>,
    pending: BTreeMap<u64, PendingSend>,
    pings: HashMap<u64, PendingPing>,
    next_nonce: u64,
}

impl PeerTask {
    fn peer(&self) -> &DeviceId {
        &self.target.peer
    }

    /// The link messages go over: direct if there is one.
    fn current(&self) -> Option<&ActiveLink> {
        self.direct.as_ref().or(self.relayed.as_ref())
    }

    async fn run(mut self) {
        let _exit = ExitWatch {
            peer: self.target.peer.clone(),
            stop: self.stop.clone(),
            local: self.local.clone(),
        };
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            self.publish_view();
            let wake = self.next_wake().unwrap_or(far);
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                () = tokio::time::sleep_until(wake) => self.on_timer(),
                _ = keepalive.tick() => self.keepalive(),
            }
        }
        let reason = if self.local.cancel.is_cancelled() {
            StopReason::MeshdStopping
        } else {
            StopReason::DeviceLeft
        };
        for active in [self.direct.take(), self.relayed.take()]
            .into_iter()
            .flatten()
        {
            tracing::info!(peer = %self.peer(), %reason, "link closed");
            active.close(reason);
        }
        for (_, pending) in std::mem::take(&mut self.pending) {
            let _ = pending.reply.send(Err(self.stopped(reason)));
        }
        for (_, ping) in std::mem::take(&mut self.pings) {
            if let Some(reply) = ping.reply {
                let _ = reply.send(Err(self.stopped(reason)));
            }
        }
    }

    fn stopped(&self, reason: StopReason) -> SendError {
        SendError::Stopped {
            device: self.peer().clone(),
            reason,
        }
    }

    fn no_link(&self) -> SendError {
        SendError::NoLink {
            device: self.peer().clone(),
            reason: self.last_error.clone().unwrap_or(NoLinkReason::NotYet),
        }
    }

    fn publish_view(&self) {
        let mut view = lock(&self.view);
        match self.current() {
            Some(active) => {
                view.state = active.path.state();
                view.endpoint = Some(active.endpoint);
            }
            None => {
                view.state = if self.dials > 0 || self.relay != RelayState::Idle {
                    LinkState::Connecting
                } else {
                    LinkState::Down
                };
                view.endpoint = None;
                view.rtt = None;
            }
        }
    }

    /// The earliest of the task's timers.
    fn next_wake(&self) -> Option<Instant> {
        let dial = self
            .dial_at
            .filter(|_| self.direct.is_none() && self.dials == 0);
        let relay = self.relay_at.filter(|_| self.needs_relay());
        let asked = match self.relay {
            RelayState::Asked { since, .. } => Some(since + RELAY_ANSWER_TIMEOUT),
            _ => None,
        };
        let punch = self.punch.map(|punch| punch.sent + PUNCH_ANSWER_TIMEOUT);
        let send = self.pending.values().next().map(|pending| pending.deadline);
        let ping = self.pings.values().map(|ping| ping.deadline).min();
        [
            dial,
            relay,
            asked,
            punch,
            self.punch_at,
            self.linger_until,
            send,
            ping,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// How long direct paths get before this side asks for a relay: three
    /// times as long for the device with the larger id, so that usually
    /// only one of the two asks (the hub also merges crossing requests).
    fn relay_head_start(&self) -> Duration {
        if self.local.id < self.target.peer {
            RELAY_HEAD_START
        } else {
            RELAY_HEAD_START * 3
        }
    }

    /// No link at all, and no relay on the way.
    fn needs_relay(&self) -> bool {
        self.direct.is_none() && self.relayed.is_none() && self.relay == RelayState::Idle
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.direct.is_none() && self.dials == 0 && self.dial_at.is_some_and(|at| at <= now) {
            self.dial_round();
        }
        if self.needs_relay() && self.relay_at.is_some_and(|at| at <= now) {
            self.ask_for_relay();
        }
        if let RelayState::Asked { since, .. } = self.relay
            && since + RELAY_ANSWER_TIMEOUT <= now
        {
            self.relay = RelayState::Idle;
            self.relay_at = Some(now + self.relay_backoff.next_wait());
        }
        if let Some(punch) = self.punch
            && punch.sent + PUNCH_ANSWER_TIMEOUT <= now
        {
            // No answer: dial the public endpoint anyway, with the long
            // wait, for the peer's own round to meet.
            self.punch = None;
            self.punch_dial();
        }
        if self.punch_at.is_some_and(|at| at <= now) {
            self.punch_at = None;
            self.punch_dial();
        }
        if self.linger_until.is_some_and(|at| at <= now) {
            self.end_linger(now);
        }
        self.expire(now);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Send { text, reply } => {
                if crate::faults::fire("peer-task-panic", &self.target.peer.to_string()) {
                    panic!("injected fault: peer-task-panic for {}", self.target.peer);
                }
                self.send(text, reply)
            }
            Command::Ping { reply } => self.ping(Some(reply)),
            Command::Established(established) => self.adopt(established),
            Command::Listing(listing) => self.relisted(listing),
            Command::Signal { hub, signal } => self.on_signal(hub, signal),
            Command::RelayOffer { hub, token, dial } => self.join_relay(hub, token, dial),
            Command::Refused {
                hub,
                request,
                reason,
            } => self.refused(hub, request, reason),
        }
    }

    /// A new listing from the hubs. If the device moved while there is no
    /// direct link, dial its new endpoints now rather than after the backoff.
    fn relisted(&mut self, listing: Listing) {
        let moved = listing.dial_candidates() != self.listing.dial_candidates();
        let old_public = self.listing.public_endpoint();
        self.listing = listing;
        if !moved || self.direct.is_some() {
            return;
        }
        self.dial_backoff.reset();
        if self.dials == 0 {
            self.dial_at = Some(Instant::now());
            return;
        }
        // A hole-punching dial may wait for 25 s; the new endpoints need
        // not (after a NAT rebinding, usually only the public one is new).
        let public = self.listing.public_endpoint();
        let candidates: Vec<SocketAddr> = self
            .listing
            .dial_candidates()
            .into_iter()
            .filter(|endpoint| Some(*endpoint) != public)
            .collect();
        let new_public = public.filter(|_| public != old_public);
        if !candidates.is_empty() || new_public.is_some() {
            self.spawn_dial(candidates, new_public);
        }
    }

    fn send(&mut self, text: Bytes, reply: oneshot::Sender<Result<Duration, SendError>>) {
        if self.pending.len() >= MAX_IN_FLIGHT {
            let _ = reply.send(Err(SendError::Busy {
                device: self.peer().clone(),
            }));
            return;
        }
        let id = self.local.next_message_id();
        let now = Instant::now();
        let message = Frame::Message {
            id,
            text: text.clone(),
        };
        self.pending.insert(
            id,
            PendingSend {
                text,
                sent: now,
                deadline: now + ANSWER_TIMEOUT,
                extended: false,
                reply,
            },
        );
        if self.current().is_some() {
            self.write(message);
            return;
        }
        // Queued until a link is up: dial now rather than at the next
        // backoff step (unless a hole punch is being arranged), and ask for
        // a relay soon.
        if self.dials == 0 && self.punch.is_none() && self.punch_at.is_none() {
            self.dial_at = Some(now);
        }
        let soon = now + self.relay_head_start();
        self.relay_at = Some(self.relay_at.map_or(soon, |at| at.min(soon)));
    }

    fn ping(&mut self, reply: Option<oneshot::Sender<Result<PingOutcome, SendError>>>) {
        let Some(link) = self.current().map(|active| active.id) else {
            if let Some(reply) = reply {
                let _ = reply.send(Err(self.no_link()));
            }
            return;
        };
        self.ping_on(link, reply);
    }

    fn ping_on(
        &mut self,
        link: u64,
        reply: Option<oneshot::Sender<Result<PingOutcome, SendError>>>,
    ) {
        if self.pings.len() >= MAX_PINGS {
            // Keepalive pings that were never answered make room.
            self.pings.retain(|_, ping| ping.reply.is_some());
            if self.pings.len() >= MAX_PINGS {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(SendError::Busy {
                        device: self.peer().clone(),
                    }));
                }
                return;
            }
        }
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let now = Instant::now();
        self.pings.insert(
            nonce,
            PendingPing {
                link,
                sent: now,
                deadline: now + ANSWER_TIMEOUT,
                reply,
            },
        );
        self.write_on(link, Frame::Ping { nonce });
    }

    /// Pings every link: keeps NAT mappings and the relay open, measures
    /// the RTT, and lets a silent link be noticed by its reader.
    fn keepalive(&mut self) {
        let links: Vec<u64> = [&self.direct, &self.relayed]
            .into_iter()
            .flatten()
            .map(|active| active.id)
            .collect();
        for link in links {
            self.ping_on(link, None);
        }
    }

    /// Queues a frame on the current link.
    fn write(&mut self, frame: Frame) {
        if let Some(link) = self.current().map(|active| active.id) {
            self.write_on(link, frame);
        }
    }

    /// Queues a frame on link `link`. A full queue means the peer stopped
    /// reading; that link is dropped.
    fn write_on(&mut self, link: u64, frame: Frame) {
        let Some(active) = self.link(link) else {
            return;
        };
        if active.frames.try_send(frame).is_err() {
            self.link_lost(link, LinkDown::WriteQueueFull);
        }
    }

    fn link(&self, id: u64) -> Option<&ActiveLink> {
        [&self.direct, &self.relayed]
            .into_iter()
            .flatten()
            .find(|active| active.id == id)
    }

    fn on_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Frame { link, frame } => self.on_frame(link, frame),
            LinkEvent::Closed { link, reason } => self.link_lost(link, reason),
            LinkEvent::Dialled {
                punch,
                started,
                outcome,
            } => {
                self.dials = self.dials.saturating_sub(1);
                if punch {
                    self.punching = self.punching.saturating_sub(1);
                }
                match outcome {
                    Ok(established) => self.adopt(established),
                    Err(error) => self.dial_failed(error, started),
                }
            }
            LinkEvent::Relayed(outcome) => {
                self.relay = RelayState::Idle;
                match outcome {
                    Ok(established) => self.adopt(established),
                    Err(error) => {
                        tracing::debug!(peer = %self.peer(), %error, "relay failed");
                        if self.current().is_none() {
                            self.last_error = Some(NoLinkReason::Relay(error));
                        }
                        self.relay_at = Some(Instant::now() + self.relay_backoff.next_wait());
                    }
                }
            }
        }
    }

    fn dial_failed(&mut self, error: DialError, started: Instant) {
        if self.direct.is_some() || self.dials > 0 {
            return;
        }
        tracing::debug!(peer = %self.peer(), %error, "dial failed");
        if self.relayed.is_none() {
            self.last_error = Some(NoLinkReason::Dial(error));
        }
        if started.elapsed() >= self.punch_timeout() {
            // A hole-punching dial waited its full time: go again soon, so
            // that a dial stays open for the peer's to meet.
            self.dial_backoff.reset();
        }
        self.dial_at = Some(Instant::now() + self.dial_backoff.next_wait());
        if self.current().is_none() && !self.relay_possible() {
            // Nothing else will bring a link soon: messages waiting for
            // one fail now with the reason, rather than at their deadline.
            let error = self.no_link();
            for (_, pending) in std::mem::take(&mut self.pending) {
                let _ = pending.reply.send(Err(error.clone()));
            }
        }
    }

    /// Some hub channel is open, so a relay can be asked for.
    fn relay_possible(&self) -> bool {
        self.local.hubs.any_open()
    }

    fn on_frame(&mut self, link: u64, frame: Frame) {
        let now = Instant::now();
        let current = self.current().map(|active| active.id);
        let Some(active) = [&mut self.direct, &mut self.relayed]
            .into_iter()
            .flatten()
            .find(|active| active.id == link)
        else {
            return;
        };
        active.heard = now;
        let (endpoint, path) = (active.endpoint, active.path);
        match frame {
            Frame::Ack { id } => {
                if let Some(pending) = self.pending.remove(&id) {
                    let _ = pending.reply.send(Ok(now - pending.sent));
                }
            }
            Frame::Pong { nonce } => {
                let Some(ping) = self.pings.remove(&nonce) else {
                    return;
                };
                let rtt = now - ping.sent;
                if current == Some(link) {
                    lock(&self.view).rtt = Some(rtt);
                }
                if let Some(reply) = ping.reply {
                    let _ = reply.send(Ok(PingOutcome {
                        rtt,
                        endpoint,
                        path: path.state(),
                    }));
                }
            }
            // Messages, pings and closes are handled by the reader task.
            Frame::Message { .. } | Frame::Ping { .. } | Frame::Close { .. } => {}
        }
    }

    fn link_lost(&mut self, link: u64, reason: LinkDown) {
        let was_current = self.current().is_some_and(|active| active.id == link);
        let lost = if self.direct.as_ref().is_some_and(|active| active.id == link) {
            self.direct.take()
        } else if self
            .relayed
            .as_ref()
            .is_some_and(|active| active.id == link)
        {
            self.relayed.take()
        } else {
            None
        };
        let Some(lost) = lost else { return };
        let path = lost.path;
        tracing::info!(peer = %self.peer(), endpoint = %lost.endpoint, path = ?path, %reason, "link down");
        lost.close(&reason);
        self.pings.retain(|_, ping| ping.link != link);
        let now = Instant::now();
        if path == Path::Direct && self.dials == 0 {
            self.dial_at = Some(now + self.dial_backoff.next_wait());
        }
        if path == Path::Direct && self.relay_possible() {
            // Messages in flight on the failed path get a full answer time
            // on the one that takes over, rather than failing meanwhile.
            for pending in self
                .pending
                .values_mut()
                .filter(|pending| !pending.extended)
            {
                pending.deadline = pending.deadline.max(now + ANSWER_TIMEOUT);
                pending.extended = true;
            }
        }
        if self.current().is_none() {
            self.last_error = Some(NoLinkReason::Link(reason));
            lock(&self.view).rtt = None;
            // Fall back to the relay at once after a direct path failed
            // (the larger id a moment later, so that the two ask for one
            // relay); after a failed relay, retry it with backoff.
            self.relay_at = Some(match path {
                Path::Direct => now + self.relay_head_start() - RELAY_HEAD_START,
                Path::Relayed => now + self.relay_backoff.next_wait(),
            });
        } else if was_current {
            tracing::info!(peer = %self.peer(), "moved to the relayed link");
            self.resend_pending();
        }
    }

    /// Takes a new link, or refuses it in favour of the one on that path.
    fn adopt(&mut self, established: Established) {
        let Established {
            link,
            hello,
            dialled,
            endpoint,
            path,
        } = established;
        let dialler = if dialled {
            self.local.id.clone()
        } else {
            self.peer().clone()
        };
        let now = Instant::now();
        let slot = match path {
            Path::Direct => &mut self.direct,
            Path::Relayed => &mut self.relayed,
        };
        if let Some(current) = slot.as_ref() {
            let keep_new = prefer_new_link(
                (current.instance, &current.dialler, current.since),
                (hello.instance, &dialler, now),
            );
            if !keep_new {
                tracing::debug!(peer = %self.target.peer, %endpoint, "duplicate link closed (tie-break)");
                let (_, writer) = link.split();
                self.local.tracker.spawn(async move {
                    writer.close("duplicate link").await;
                });
                return;
            }
        }
        if let Some(old) = slot.take() {
            tracing::debug!(peer = %self.target.peer, endpoint = %old.endpoint, "link replaced by a newer one");
            old.close("replaced by a newer link");
        }
        let previous = self.current().map(|active| active.id);
        let id = self.next_link;
        self.next_link += 1;
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let stop = self.stop.child_token();
        let (reader, writer) = link.split();
        self.local.tracker.spawn(link_io::read_link(
            ReadContext {
                local: self.local.clone(),
                peer: self.target.peer.clone(),
                instance: hello.instance,
                link: id,
                frames: frames.clone(),
                events: self.events_tx.clone(),
                stop: stop.clone(),
            },
            reader,
        ));
        self.local.tracker.spawn(link_io::write_link(
            writer,
            queue,
            id,
            self.events_tx.clone(),
            self.local.cancel.clone(),
        ));
        tracing::info!(peer = %self.target.peer, %endpoint, path = ?path, dialled, "link up");
        let active = ActiveLink {
            id,
            frames,
            instance: hello.instance,
            dialler,
            since: now,
            endpoint,
            path,
            heard: now,
            stop,
        };
        match path {
            Path::Direct => {
                self.direct = Some(active);
                self.dial_backoff.reset();
                self.dial_at = None;
                self.punch = None;
                self.punch_at = None;
            }
            Path::Relayed => {
                self.relayed = Some(active);
                self.relay_backoff.reset();
                self.relay_at = None;
            }
        }
        self.last_error = None;
        if self.direct.is_some() && self.relayed.is_some() {
            self.linger_until = Some(now + RELAY_LINGER);
        }
        if self.current().map(|active| active.id) != previous {
            self.resend_pending();
        }
        // A first measurement right away, for `meshctl devices`.
        self.ping_on(id, None);
    }

    /// Sends every unacknowledged message (again) on the current link; the
    /// receiver drops what it already has.
    fn resend_pending(&mut self) {
        let resend: Vec<Frame> = self
            .pending
            .iter()
            .map(|(id, pending)| Frame::Message {
                id: *id,
                text: pending.text.clone(),
            })
            .collect();
        for frame in resend {
            self.write(frame);
        }
    }

    /// Closes the relayed link once the direct one has proved itself;
    /// otherwise looks again a keepalive later.
    fn end_linger(&mut self, now: Instant) {
        self.linger_until = None;
        let Some(direct) = &self.direct else { return };
        if self.relayed.is_none() {
            return;
        }
        if now.duration_since(direct.heard) <= KEEPALIVE * 2 {
            if let Some(relayed) = self.relayed.take() {
                tracing::info!(peer = %self.target.peer, endpoint = %direct.endpoint, "moved to a direct path; relay closed");
                relayed.close("moved to a direct path");
            }
        } else {
            self.linger_until = Some(now + KEEPALIVE);
        }
    }

    /// Starts a round of direct dials: every endpoint at once, the public
    /// one with a long wait; and asks the peer, through a hub, to dial back
    /// now, so the two dials meet in the NATs.
    fn dial_round(&mut self) {
        self.dial_at = None;
        let candidates = self.listing.dial_candidates();
        let public = self.listing.public_endpoint();
        if candidates.is_empty() {
            self.last_error = Some(NoLinkReason::Dial(DialError::NoEndpoint));
            self.dial_at = Some(Instant::now() + self.dial_backoff.next_wait());
            return;
        }
        // With a hub to coordinate through, the public endpoint is dialled
        // when the peer dials back (at `punch_at`); without one, at once
        // and with the long wait.
        let others: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|endpoint| Some(*endpoint) != public)
            .collect();
        let coordinated = public.is_some() && self.request_punch();
        let public = public.filter(|_| !coordinated);
        if others.is_empty() && public.is_none() {
            return;
        }
        self.spawn_dial(others, public);
    }

    /// How long a dial to the public endpoint waits: long while nothing
    /// else links the two devices, so that an uncoordinated dial back can
    /// still meet it; short while relayed, when every round is coordinated.
    fn punch_timeout(&self) -> Duration {
        match self.relayed {
            Some(_) => RELAYED_PUNCH_TIMEOUT,
            None => PUNCH_TIMEOUT,
        }
    }

    fn spawn_dial(&mut self, candidates: Vec<SocketAddr>, public: Option<SocketAddr>) {
        let punch = public.is_some();
        let punch_timeout = self.punch_timeout();
        self.dials += 1;
        self.punching += usize::from(punch);
        let started = Instant::now();
        let (local, target) = (self.local.clone(), self.target.clone());
        self.spawn_attempt(
            async move { path::dial(&local, &target, &candidates, public, punch_timeout).await },
            move |outcome| LinkEvent::Dialled {
                punch,
                started,
                outcome,
            },
        );
    }

    /// Runs one attempt at a link in its own task (ended with the peer
    /// task) and reports its outcome as an event.
    fn spawn_attempt<E: Send + 'static>(
        &self,
        attempt: impl Future<Output = Result<Established, E>> + Send + 'static,
        event: impl FnOnce(Result<Established, E>) -> LinkEvent + Send + 'static,
    ) {
        let events = self.events_tx.clone();
        let stop = self.stop.clone();
        self.local.tracker.spawn(async move {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = attempt => outcome,
            };
            let _ = events.send(event(outcome)).await;
        });
    }

    /// DCUtR's first step: Connect, through the first hub with an open
    /// channel; its answer times our dial. False when no hub could take it.
    fn request_punch(&mut self) -> bool {
        let nonce = rand::random();
        let to = self.target.peer.to_string();
        let sent = self
            .local
            .hubs
            .iter()
            .find(|hub| {
                hub.send(ToHub::Signal {
                    to: to.clone(),
                    signal: Signal::Connect { nonce },
                })
            })
            .map(Hub::id);
        if let Some(hub) = sent {
            self.punch = Some(Punch {
                nonce,
                hub,
                sent: Instant::now(),
            });
        }
        sent.is_some()
    }

    fn on_signal(&mut self, hub: HubId, signal: Signal) {
        let to = self.target.peer.to_string();
        match signal {
            Signal::Connect { nonce } => {
                self.local.hubs.get(hub).send(ToHub::Signal {
                    to,
                    signal: Signal::ConnectReply { nonce },
                });
            }
            Signal::ConnectReply { nonce } => {
                let Some(punch) = self.punch.filter(|punch| punch.nonce == nonce) else {
                    return;
                };
                self.punch = None;
                self.local.hubs.get(punch.hub).send(ToHub::Signal {
                    to,
                    signal: Signal::Sync { nonce },
                });
                // The Sync reaches the peer about half a round trip from
                // now; dial then, so both dials leave together.
                self.punch_at = Some(Instant::now() + punch.sent.elapsed() / 2);
            }
            Signal::Sync { .. } => self.punch_dial(),
        }
    }

    /// Dials the peer's public endpoint alone, unless a direct link is up
    /// or such a dial is already waiting.
    fn punch_dial(&mut self) {
        if self.direct.is_some() || self.punching > 0 {
            return;
        }
        match self.listing.public_endpoint() {
            Some(public) => self.spawn_dial(Vec::new(), Some(public)),
            // The device no longer lists one: a plain round later.
            None if self.dials == 0 => {
                self.dial_at = Some(Instant::now() + self.dial_backoff.next_wait());
            }
            None => {}
        }
    }

    /// Asks a hub with an open channel for a relay to the peer.
    fn ask_for_relay(&mut self) {
        self.relay_at = None;
        let to = self.target.peer.to_string();
        let asked = self
            .local
            .hubs
            .starting_at(self.relay_hub)
            .find(|hub| hub.send(ToHub::Relay { to: to.clone() }))
            .map(Hub::id);
        match asked {
            Some(hub) => {
                self.relay = RelayState::Asked {
                    hub,
                    since: Instant::now(),
                };
            }
            None => {
                self.relay_at = Some(Instant::now() + self.relay_backoff.next_wait());
            }
        }
    }

    /// Joins a relay a hub offered, whoever asked for it. The peer asks
    /// only when it has no link, so a direct link here is probably dead
    /// too: the relayed link stands by beside it until that is clear.
    fn join_relay(&mut self, hub: HubId, token: String, dial: bool) {
        if self.relay == RelayState::Joining {
            return;
        }
        self.relay = RelayState::Joining;
        let (local, target) = (self.local.clone(), self.target.clone());
        self.spawn_attempt(
            async move { path::relay(&local, hub, &token, dial, &target).await },
            LinkEvent::Relayed,
        );
    }

    fn refused(&mut self, hub: HubId, request: Refusable, reason: String) {
        if request == Refusable::Signal {
            if self.punch.is_some_and(|punch| punch.hub == hub) {
                // The peer cannot be told to dial back: dial its public
                // endpoint anyway, with the long wait.
                self.punch = None;
                self.punch_dial();
            }
            return;
        }
        if let RelayState::Asked { hub: asked, .. } = self.relay
            && asked == hub
        {
            tracing::debug!(peer = %self.target.peer, %reason, "relay refused");
            self.relay = RelayState::Idle;
            self.relay_hub = Some(self.local.hubs.next_after(hub));
            if self.current().is_none() {
                self.last_error = Some(NoLinkReason::RelayRefused(reason));
            }
            self.relay_at = Some(Instant::now() + self.relay_backoff.next_wait());
        }
    }

    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(pending) = self.pending.remove(&id) {
                let error = match self.current() {
                    Some(_) => SendError::Timeout {
                        device: self.target.peer.clone(),
                    },
                    None => self.no_link(),
                };
                let _ = pending.reply.send(Err(error));
            }
        }
        let expired: Vec<u64> = self
            .pings
            .iter()
            .filter(|(_, ping)| ping.deadline <= now)
            .map(|(nonce, _)| *nonce)
            .collect();
        for nonce in expired {
            if let Some(PendingPing {
                reply: Some(reply), ..
            }) = self.pings.remove(&nonce)
            {
                let _ = reply.send(Err(SendError::Timeout {
                    device: self.target.peer.clone(),
                }));
            }
        }
    }
}

/// The tie-break between the current link to a peer on one path and a new
/// one, each given as (the peer's instance, who dialled, when it was set
/// up). Both ends see the same facts, so both keep the same link.
fn prefer_new_link(
    (current_instance, current_dialler, current_since): (u64, &DeviceId, Instant),
    (new_instance, new_dialler, new_since): (u64, &DeviceId, Instant),
) -> bool {
    if new_instance != current_instance {
        // The peer restarted: the current link is stale.
        return true;
    }
    if new_since.duration_since(current_since) > SIMULTANEOUS_WINDOW {
        // Not a simultaneous dial: the peer gave up on the current link.
        return true;
    }
    // Both sides dialled at once: keep the link dialled by the smaller id.
    new_dialler < current_dialler
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_keep_the_same_link_when_dials_cross() {
        let a = DeviceId::parse("alpha").unwrap();
        let b = DeviceId::parse("beta").unwrap();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(3);
        // At alpha: its own dial finished first, beta's arrived next.
        assert!(!prefer_new_link((7, &a, t0), (7, &b, t1)));
        // At beta: its own dial finished first, alpha's arrived next.
        assert!(prefer_new_link((7, &b, t0), (7, &a, t1)));
    }

    #[test]
    fn a_restarted_or_reconnecting_peer_replaces_the_old_link() {
        let a = DeviceId::parse("alpha").unwrap();
        let b = DeviceId::parse("beta").unwrap();
        let t0 = Instant::now();
        assert!(prefer_new_link((7, &a, t0), (8, &b, t0)));
        let later = t0 + SIMULTANEOUS_WINDOW + Duration::from_millis(1);
        assert!(prefer_new_link((7, &a, t0), (7, &b, later)));
    }
}
