//! One task per known device: it owns the link to that device.
//!
//! The peer task dials (with backoff), adopts links that arrive from the
//! listener, keeps exactly one of them when both sides dialled at once,
//! keeps the link alive, and carries `send` and `ping` requests. Each link
//! has a reader task (frames in; messages go straight to the inbox and are
//! acknowledged from there) and a writer task (frames out, batched). The peer
//! task hears from them over one channel of [`LinkEvent`]s.
//!
//! Messages wait for their acknowledgement in `pending`. If the link they
//! went out on dies, they are sent again on the next one before their
//! deadline; the receiver drops the duplicates, so a message acknowledged
//! once is never lost and never stored twice.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use meshd_ipc::LinkState;
use meshd_link::{Frame, Hello, Link, LinkError, LinkReader, LinkWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Local;
use super::backoff::Backoff;
use super::inbox::MessageKey;
use super::roster::Listing;
use crate::device_id::DeviceId;
use crate::public_key::PublicKey;

/// A link that carried nothing for this long is dead.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// Keepalive pings go out this often; they also measure the round-trip time.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// How long a `send` or `ping` waits for its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed to open a TCP connection to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Time a dial to a device's public endpoint (the address its hub
/// observed) stays open. Behind NATs that drop unsolicited packets the
/// dial goes unanswered, but while it waits (its SYN retransmitted) the
/// device's own dial back, up to one registration round later, meets it in
/// the NATs as a TCP simultaneous open. Longer than a round (20 s).
const PUNCH_TIMEOUT: Duration = Duration::from_secs(25);

/// Two links of one peer instance set up within this window are a
/// simultaneous dial, settled by the tie-break; beyond it the newer link
/// wins, because the peer evidently gave up on the older one.
const SIMULTANEOUS_WINDOW: Duration = Duration::from_secs(2);

/// Messages awaiting acknowledgement per peer; more are refused as busy.
pub const MAX_IN_FLIGHT: usize = 256;

/// Pings awaiting an answer per peer.
const MAX_PINGS: usize = 64;

/// Frames queued for a link's writer. Larger than everything that can be
/// outstanding (our messages, acks of the peer's, pings and pongs), so the
/// reader never waits on the writer while the peer behaves.
const WRITE_QUEUE: usize = 4 * MAX_IN_FLIGHT + 4 * MAX_PINGS;

/// Frames and bytes the writer puts in one write.
const WRITE_BATCH_FRAMES: usize = 64;
const WRITE_BATCH_BYTES: usize = 256 * 1024;

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
}

/// A successful ping.
#[derive(Debug, Clone, Copy)]
pub struct PingOutcome {
    /// Round-trip time.
    pub rtt: Duration,
    /// The link's remote endpoint.
    pub endpoint: SocketAddr,
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
        reason: String,
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
        reason: String,
    },
}

/// An open link, handed to the peer task by the dialler or the listener.
pub struct Established {
    /// The link.
    pub link: Link<TcpStream>,
    /// The peer's hello from the handshake.
    pub hello: Hello,
    /// We dialled.
    pub dialled: bool,
    /// The peer's address on this link.
    pub endpoint: SocketAddr,
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
    commands: mpsc::Sender<Command>,
    view: Arc<Mutex<PeerView>>,
    stop: CancellationToken,
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
        let task = PeerTask {
            local: local.clone(),
            peer,
            key,
            listing,
            view: view.clone(),
            commands: inbox,
            events,
            events_tx,
            stop: stop.clone(),
            active: None,
            next_link: 0,
            dialling: false,
            dial_started: Instant::now(),
            dial_at: Some(Instant::now()),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            last_error: None,
            pending: BTreeMap::new(),
            pings: HashMap::new(),
            next_nonce: 0,
        };
        local.tracker.spawn(task.run());
        PeerHandle {
            key,
            commands,
            view,
            stop,
        }
    }

    /// A copy of the current view.
    pub fn view(&self) -> PeerView {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

    /// Ends the task and closes its link.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

enum LinkEvent {
    /// An ack or pong from link `link`.
    Frame { link: u64, frame: Frame },
    /// Link `link` ended.
    Closed { link: u64, reason: String },
    /// A dial finished.
    Dialled(Result<Established, String>),
}

struct ActiveLink {
    id: u64,
    frames: mpsc::Sender<Frame>,
    instance: u64,
    /// The id of the device that dialled this link.
    dialler: DeviceId,
    since: Instant,
    endpoint: SocketAddr,
    stop: CancellationToken,
}

impl ActiveLink {
    fn close(self, reason: &str) {
        let _ = self.frames.try_send(Frame::Close {
            reason: reason.to_owned(),
        });
        self.stop.cancel();
    }
}

struct PendingSend {
    text: Bytes,
    sent: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Duration, SendError>>,
}

struct PendingPing {
    sent: Instant,
    deadline: Instant,
    reply: Option<oneshot::Sender<Result<PingOutcome, SendError>>>,
}

struct PeerTask {
    local: Arc<Local>,
    peer: DeviceId,
    key: PublicKey,
    listing: Listing,
    view: Arc<Mutex<PeerView>>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Receiver<LinkEvent>,
    events_tx: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
    active: Option<ActiveLink>,
    next_link: u64,
    dialling: bool,
    /// When the dial in progress started.
    dial_started: Instant,
    dial_at: Option<Instant>,
    backoff: Backoff,
    last_error: Option<String>,
    pending: BTreeMap<u64, PendingSend>,
    pings: HashMap<u64, PendingPing>,
    next_nonce: u64,
}

impl PeerTask {
    async fn run(mut self) {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            self.publish_view();
            let dial_at = match (&self.active, self.dialling, self.dial_at) {
                (None, false, Some(at)) => at,
                _ => far,
            };
            let deadline = self.next_deadline().unwrap_or(far);
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
                () = tokio::time::sleep_until(dial_at) => self.dial(),
                () = tokio::time::sleep_until(deadline) => self.expire(),
                _ = keepalive.tick() => self.keepalive(),
            }
        }
        let reason = if self.local.cancel.is_cancelled() {
            "meshd is stopping"
        } else {
            "the device left the signaling servers' lists"
        };
        if let Some(active) = self.active.take() {
            tracing::info!(peer = %self.peer, reason, "link closed");
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

    fn stopped(&self, reason: &str) -> SendError {
        SendError::Stopped {
            device: self.peer.clone(),
            reason: reason.to_owned(),
        }
    }

    fn no_link(&self) -> SendError {
        SendError::NoLink {
            device: self.peer.clone(),
            reason: self
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected yet".to_owned()),
        }
    }

    fn publish_view(&self) {
        let mut view = self.view.lock().unwrap_or_else(PoisonError::into_inner);
        match &self.active {
            Some(active) => {
                view.state = LinkState::Direct;
                view.endpoint = Some(active.endpoint);
            }
            None => {
                view.state = if self.dialling {
                    LinkState::Connecting
                } else {
                    LinkState::Down
                };
                view.endpoint = None;
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Send { text, reply } => self.send(text, reply),
            Command::Ping { reply } => self.ping(Some(reply)),
            Command::Established(established) => self.adopt(established),
            Command::Listing(listing) => self.relisted(listing),
        }
    }

    /// A new listing from the hubs. If the device moved while there is no
    /// link, dial its new endpoints now rather than after the backoff.
    fn relisted(&mut self, listing: Listing) {
        let moved = listing.dial_candidates() != self.listing.dial_candidates();
        self.listing = listing;
        if moved && self.active.is_none() && !self.dialling {
            self.backoff.reset();
            self.dial_at = Some(Instant::now());
        }
    }

    fn send(&mut self, text: Bytes, reply: oneshot::Sender<Result<Duration, SendError>>) {
        if self.pending.len() >= MAX_IN_FLIGHT {
            let _ = reply.send(Err(SendError::Busy {
                device: self.peer.clone(),
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
                reply,
            },
        );
        match &self.active {
            Some(_) => self.write(message),
            // Queued until a link is up; dial now rather than at the next
            // backoff step, and fail fast if that dial fails.
            None if !self.dialling => self.dial_at = Some(now),
            None => {}
        }
    }

    fn ping(&mut self, reply: Option<oneshot::Sender<Result<PingOutcome, SendError>>>) {
        if self.active.is_none() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(self.no_link()));
            }
            return;
        }
        if self.pings.len() >= MAX_PINGS {
            // Keepalive pings that were never answered make room.
            let stale: Vec<u64> = self
                .pings
                .iter()
                .filter(|(_, ping)| ping.reply.is_none())
                .map(|(nonce, _)| *nonce)
                .collect();
            for nonce in stale {
                self.pings.remove(&nonce);
            }
            if self.pings.len() >= MAX_PINGS {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(SendError::Busy {
                        device: self.peer.clone(),
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
                sent: now,
                deadline: now + ANSWER_TIMEOUT,
                reply,
            },
        );
        self.write(Frame::Ping { nonce });
    }

    fn keepalive(&mut self) {
        if self.active.is_some() {
            self.ping(None);
        }
    }

    /// Queues a frame on the active link. A full queue means the peer stopped
    /// reading; that link is dropped.
    fn write(&mut self, frame: Frame) {
        let Some(active) = &self.active else { return };
        if active.frames.try_send(frame).is_err() {
            let link = active.id;
            self.link_lost(
                link,
                "the peer stopped reading (write queue full)".to_owned(),
            );
        }
    }

    fn on_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Frame { link, frame } => {
                if self.active.as_ref().is_some_and(|active| active.id == link) {
                    self.on_frame(frame);
                }
            }
            LinkEvent::Closed { link, reason } => self.link_lost(link, reason),
            LinkEvent::Dialled(outcome) => {
                self.dialling = false;
                match outcome {
                    Ok(established) => self.adopt(established),
                    Err(error) => {
                        if self.active.is_none() {
                            tracing::debug!(peer = %self.peer, %error, "dial failed");
                            self.last_error = Some(error);
                            if self.dial_started.elapsed() >= PUNCH_TIMEOUT {
                                // A hole-punching dial waited its full time:
                                // go again soon, so that a dial stays open
                                // for the peer's to meet.
                                self.backoff.reset();
                            }
                            self.dial_at = Some(Instant::now() + self.backoff.next_wait());
                            // Messages waiting for a link fail now with the
                            // reason, rather than at their deadline.
                            let error = self.no_link();
                            for (_, pending) in std::mem::take(&mut self.pending) {
                                let _ = pending.reply.send(Err(error.clone()));
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let now = Instant::now();
        match frame {
            Frame::Ack { id } => {
                if let Some(pending) = self.pending.remove(&id) {
                    let _ = pending.reply.send(Ok(now - pending.sent));
                }
            }
            Frame::Pong { nonce } => {
                if let Some(ping) = self.pings.remove(&nonce) {
                    let rtt = now - ping.sent;
                    self.view.lock().unwrap_or_else(PoisonError::into_inner).rtt = Some(rtt);
                    if let (Some(reply), Some(active)) = (ping.reply, &self.active) {
                        let _ = reply.send(Ok(PingOutcome {
                            rtt,
                            endpoint: active.endpoint,
                        }));
                    }
                }
            }
            // Messages, pings and closes are handled by the reader task.
            Frame::Message { .. } | Frame::Ping { .. } | Frame::Close { .. } => {}
        }
    }

    fn link_lost(&mut self, link: u64, reason: String) {
        if self.active.as_ref().is_none_or(|active| active.id != link) {
            return;
        }
        if let Some(active) = self.active.take() {
            tracing::info!(peer = %self.peer, endpoint = %active.endpoint, %reason, "link down");
            active.close(&reason);
        }
        self.last_error = Some(reason);
        self.view.lock().unwrap_or_else(PoisonError::into_inner).rtt = None;
        for (_, ping) in std::mem::take(&mut self.pings) {
            if let Some(reply) = ping.reply {
                let _ = reply.send(Err(self.no_link()));
            }
        }
        self.dial_at = Some(Instant::now() + self.backoff.next_wait());
    }

    /// Takes a new link, or refuses it in favour of the current one.
    fn adopt(&mut self, established: Established) {
        let Established {
            link,
            hello,
            dialled,
            endpoint,
        } = established;
        let dialler = if dialled {
            self.local.id.clone()
        } else {
            self.peer.clone()
        };
        let now = Instant::now();
        if let Some(current) = &self.active {
            let keep_new = prefer_new_link(
                (current.instance, &current.dialler, current.since),
                (hello.instance, &dialler, now),
            );
            if !keep_new {
                tracing::debug!(peer = %self.peer, %endpoint, "duplicate link closed (tie-break)");
                let (_, writer) = link.split();
                self.local.tracker.spawn(async move {
                    writer.close("duplicate link").await;
                });
                return;
            }
        }
        if let Some(old) = self.active.take() {
            tracing::debug!(peer = %self.peer, endpoint = %old.endpoint, "link replaced by a newer one");
            old.close("replaced by a newer link");
        }
        let id = self.next_link;
        self.next_link += 1;
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let stop = self.stop.child_token();
        let (reader, writer) = link.split();
        self.local.tracker.spawn(read_link(
            ReadContext {
                local: self.local.clone(),
                peer: self.peer.clone(),
                instance: hello.instance,
                link: id,
                frames: frames.clone(),
                events: self.events_tx.clone(),
                stop: stop.clone(),
            },
            reader,
        ));
        self.local.tracker.spawn(write_link(
            writer,
            queue,
            id,
            self.events_tx.clone(),
            self.local.cancel.clone(),
        ));
        tracing::info!(peer = %self.peer, %endpoint, dialled, "link up");
        self.active = Some(ActiveLink {
            id,
            frames,
            instance: hello.instance,
            dialler,
            since: now,
            endpoint,
            stop,
        });
        self.backoff.reset();
        self.last_error = None;
        self.dial_at = None;
        // Everything unacknowledged goes (again) on the new link; the
        // receiver drops what it already has.
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
        // A first measurement right away, for `meshctl devices`.
        self.ping(None);
    }

    fn dial(&mut self) {
        self.dial_at = None;
        let candidates = self.listing.dial_candidates();
        let public = self.listing.public_endpoint();
        if candidates.is_empty() {
            self.last_error = Some("the device advertises no endpoint".to_owned());
            self.dial_at = Some(Instant::now() + self.backoff.next_wait());
            return;
        }
        self.dialling = true;
        self.dial_started = Instant::now();
        let local = self.local.clone();
        let peer = self.peer.clone();
        let key = self.key;
        let events = self.events_tx.clone();
        let stop = self.stop.clone();
        self.local.tracker.spawn(async move {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = dial(&local, &peer, key, &candidates, public) => outcome,
            };
            let _ = events.send(LinkEvent::Dialled(outcome)).await;
        });
    }

    fn next_deadline(&self) -> Option<Instant> {
        let send = self.pending.values().next().map(|pending| pending.deadline);
        let ping = self.pings.values().map(|ping| ping.deadline).min();
        match (send, ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(pending) = self.pending.remove(&id) {
                let error = match self.active {
                    Some(_) => SendError::Timeout {
                        device: self.peer.clone(),
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
                    device: self.peer.clone(),
                }));
            }
        }
    }
}

/// The tie-break between the current link to a peer and a new one, each
/// given as (the peer's instance, who dialled, when it was set up). Both ends
/// see the same facts, so both keep the same link.
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

/// Tries each candidate endpoint in order until one gives a link to the
/// device with the expected key and id.
async fn dial(
    local: &Local,
    peer: &DeviceId,
    key: PublicKey,
    candidates: &[SocketAddr],
    public: Option<SocketAddr>,
) -> Result<Established, String> {
    let mut errors = Vec::new();
    let hello = local.hello_to(peer);
    for &endpoint in candidates {
        let timeout = match public == Some(endpoint) {
            true => PUNCH_TIMEOUT,
            false => CONNECT_TIMEOUT,
        };
        let stream = match tokio::time::timeout(timeout, connect(local.listen, endpoint)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                errors.push(format!("{endpoint}: {error}"));
                continue;
            }
            Err(_elapsed) => {
                errors.push(format!("{endpoint}: connect timed out"));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match meshd_link::connect(stream, &local.key, key.as_bytes(), &hello).await {
            Ok((link, remote)) if remote.from == peer.to_string() && remote.to == hello.from => {
                return Ok(Established {
                    link,
                    hello: remote,
                    dialled: true,
                    endpoint,
                });
            }
            Ok((_, remote)) => errors.push(format!(
                "{endpoint}: answered as {:?} expecting {:?}",
                remote.from, remote.to
            )),
            Err(error) => errors.push(format!("{endpoint}: {error}")),
        }
    }
    Err(errors.join("; "))
}

/// Connects to `endpoint` from the mesh port, so that the NAT mapping is the
/// one the hubs observed and a peer dialling back at the same time meets
/// this connection in the NATs (TCP simultaneous open). Falls back to any
/// port when the mesh port cannot be used for this destination (a previous
/// connection to it in TIME_WAIT).
async fn connect(mesh: SocketAddr, endpoint: SocketAddr) -> std::io::Result<TcpStream> {
    if mesh.is_ipv4() == endpoint.is_ipv4() {
        let socket = super::reusable_socket(mesh)?;
        match socket.connect(endpoint).await {
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                ) =>
            {
                tracing::debug!(%endpoint, %error, "mesh port unusable for this dial; dialling from another port");
            }
            outcome => return outcome,
        }
    }
    TcpStream::connect(endpoint).await
}

struct ReadContext {
    local: Arc<Local>,
    peer: DeviceId,
    instance: u64,
    link: u64,
    frames: mpsc::Sender<Frame>,
    events: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
}

/// Reads frames until the link fails, goes silent or is stopped. Messages
/// are stored and acknowledged here; pings answered here; the rest goes to
/// the peer task.
async fn read_link(context: ReadContext, mut reader: LinkReader<ReadHalf<TcpStream>>) {
    let reason = loop {
        let frame = tokio::select! {
            () = context.stop.cancelled() => return,
            frame = tokio::time::timeout(SILENCE_LIMIT, reader.next()) => frame,
        };
        let frame = match frame {
            Err(_elapsed) => break format!("silent for {}s", SILENCE_LIMIT.as_secs()),
            Ok(Err(LinkError::Closed)) => break "closed by the peer".to_owned(),
            Ok(Err(error)) => break error.to_string(),
            Ok(Ok(frame)) => frame,
        };
        let reply = match frame {
            Frame::Message { id, text } => {
                let key = MessageKey {
                    instance: context.instance,
                    id,
                };
                // The frame layer checked the text is UTF-8.
                let text = String::from_utf8_lossy(&text);
                if context.local.inbox.store(&context.peer, key, &text) {
                    tracing::info!(from = %context.peer, bytes = text.len(), text = %preview(&text), "message received");
                }
                Frame::Ack { id }
            }
            Frame::Ping { nonce } => Frame::Pong { nonce },
            Frame::Close { reason } => break format!("closed by the peer: {reason}"),
            frame @ (Frame::Ack { .. } | Frame::Pong { .. }) => {
                let event = LinkEvent::Frame {
                    link: context.link,
                    frame,
                };
                if context.events.send(event).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if context.frames.send(reply).await.is_err() {
            return;
        }
    };
    let _ = context
        .events
        .send(LinkEvent::Closed {
            link: context.link,
            reason,
        })
        .await;
}

/// The start of a message for the log.
fn preview(text: &str) -> &str {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Writes queued frames in batches until the queue closes, a write fails or
/// stalls for [`SILENCE_LIMIT`], or meshd stops.
async fn write_link(
    mut writer: LinkWriter<WriteHalf<TcpStream>>,
    mut queue: mpsc::Receiver<Frame>,
    link: u64,
    events: mpsc::Sender<LinkEvent>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_FRAMES);
    loop {
        let first = tokio::select! {
            biased;
            frame = queue.recv() => frame,
            () = shutdown.cancelled() => {
                writer.close("meshd is stopping").await;
                return;
            }
        };
        let Some(first) = first else {
            // The link was dropped by its peer task.
            writer.close("link closed").await;
            return;
        };
        let mut bytes = first.encoded_len();
        let mut closing = matches!(first, Frame::Close { .. });
        batch.push(first);
        while !closing && batch.len() < WRITE_BATCH_FRAMES && bytes < WRITE_BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => {
                    bytes += frame.encoded_len();
                    closing = matches!(frame, Frame::Close { .. });
                    batch.push(frame);
                }
                Err(_) => break,
            }
        }
        let written = tokio::time::timeout(SILENCE_LIMIT, writer.send_all(&batch)).await;
        batch.clear();
        let reason = match written {
            Ok(Ok(())) if closing => return,
            Ok(Ok(())) => continue,
            Ok(Err(error)) => error.to_string(),
            Err(_elapsed) => format!("no write progress for {}s", SILENCE_LIMIT.as_secs()),
        };
        let _ = events.send(LinkEvent::Closed { link, reason }).await;
        return;
    }
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

    #[test]
    fn previews_cut_at_character_boundaries() {
        let text = "é".repeat(150);
        let cut = preview(&text);
        assert!(cut.len() <= 200 && text.starts_with(cut));
    }
}
