//! The peer task's shell: it owns the channels, the links' queues and
//! tasks, and the clock, feeds the state machine one input at a time and
//! carries out what it asks. It decides nothing itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshd_ipc::LinkState;
use meshd_link::{Frame, Link};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::Local;
use super::super::error::{LinkDown, StopReason};
use super::super::hubs::OpenHubs;
use super::super::link_io::{self, LinkEvent, ReadContext, WriteContext};
use super::super::path::{self, Established, Path, Stream, Target};
use super::super::roster::Listing;
use super::events::{Action, DialId, Input, LinkFacts, LinkId, PeerEvent};
use super::state::{Entropy, MAX_PINGS, PeerState, Setup};
use super::{Command, ExitWatch, MAX_IN_FLIGHT, PeerView, PingOutcome, SendError};
use crate::device_id::DeviceId;
use crate::metrics::{Direction, Metrics, metrics};
use crate::public_key::PublicKey;
use crate::sync::lock;

type SendReply = oneshot::Sender<Result<Duration, SendError>>;
type PingReply = oneshot::Sender<Result<PingOutcome, SendError>>;
type State = PeerState<SendReply, PingReply>;

/// Frames queued for a link's writer. Larger than everything that can be
/// outstanding (our messages, acks of the peer's, pings and pongs), so the
/// reader never waits on the writer while the peer behaves.
const WRITE_QUEUE: usize = 4 * MAX_IN_FLIGHT + 4 * MAX_PINGS;

/// A running link's queue and the token that stops its reader.
struct LinkIo {
    frames: mpsc::Sender<Frame>,
    stop: CancellationToken,
    /// Its queue overflowed: the state machine is told once, and nothing
    /// more is queued.
    dead: bool,
}

/// A link handed over (by a dial, a relay or the listener) that the state
/// machine has not yet adopted or refused.
struct Arriving {
    link: Link<Stream>,
    instance: u64,
    path: Path,
}

pub(super) struct PeerTask {
    state: State,
    local: Arc<Local>,
    target: Target,
    view: Arc<Mutex<PeerView>>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Receiver<LinkEvent>,
    events_tx: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
    links: HashMap<LinkId, LinkIo>,
    arriving: HashMap<LinkId, Arriving>,
    next_link: u64,
    /// The hubs whose channels are open, refreshed at every step.
    open_hubs: OpenHubs,
    /// Reused for every step's actions.
    actions: Vec<Action<SendReply, PingReply>>,
    /// Reused for what actions report back within a step.
    feedback: VecDeque<Input<SendReply, PingReply>>,
}

impl PeerTask {
    pub(super) fn new(
        local: Arc<Local>,
        peer: DeviceId,
        key: PublicKey,
        listing: Listing,
        view: Arc<Mutex<PeerView>>,
        commands: mpsc::Receiver<Command>,
        stop: CancellationToken,
    ) -> PeerTask {
        let (events_tx, events) = mpsc::channel(WRITE_QUEUE);
        let state = PeerState::new(
            Instant::now(),
            Setup {
                me: local.id.clone(),
                peer: peer.clone(),
                listing,
                entropy: Entropy::Os,
            },
        );
        PeerTask {
            state,
            local,
            target: Target { peer, key },
            view,
            commands,
            events,
            events_tx,
            stop,
            links: HashMap::new(),
            arriving: HashMap::new(),
            next_link: 0,
            open_hubs: OpenHubs::default(),
            actions: Vec::new(),
            feedback: VecDeque::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let _exit = ExitWatch {
            peer: self.target.peer.clone(),
            stop: self.stop.clone(),
            local: self.local.clone(),
        };
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        // Since when a direct link is wanted and missing: from the start,
        // and again whenever the direct path is lost.
        let mut wanting_direct = Some(Instant::now());
        loop {
            let view = self.state.view();
            let direct = view.state == LinkState::Direct;
            match wanting_direct {
                Some(since) if direct => {
                    Metrics::observe(&metrics().time_to_direct_seconds, since.elapsed());
                    wanting_direct = None;
                }
                None if !direct => wanting_direct = Some(Instant::now()),
                _ => {}
            }
            *lock(&self.view) = view;
            let wake = self.state.poll_timeout().unwrap_or(far);
            let input = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                event = self.events.recv() => match event {
                    Some(event) => self.input_from_event(event),
                    None => break,
                },
                command = self.commands.recv() => match command {
                    Some(command) => self.input_from_command(command),
                    None => break,
                },
                () = tokio::time::sleep_until(wake) => Input::Timeout,
            };
            self.step(input);
        }
        let reason = if self.local.cancel.is_cancelled() {
            StopReason::MeshdStopping
        } else {
            StopReason::DeviceLeft
        };
        self.step(Input::Stop(reason));
    }

    /// Feeds `input` to the state machine and carries out its actions; what
    /// an action reports back (a full queue) is fed in next, at the same
    /// time.
    fn step(&mut self, input: Input<SendReply, PingReply>) {
        let now = Instant::now();
        self.local.hubs.open_into(&mut self.open_hubs);
        // Both queues are kept between steps: an ack (one per message sent)
        // allocates nothing.
        let mut actions = std::mem::take(&mut self.actions);
        let mut feedback = std::mem::take(&mut self.feedback);
        let mut next = Some(input);
        while let Some(input) = next.take().or_else(|| feedback.pop_front()) {
            self.state.handle(now, &self.open_hubs, input, &mut actions);
            for action in actions.drain(..) {
                if let Some(report) = self.execute(action) {
                    feedback.push_back(report);
                }
            }
        }
        self.actions = actions;
        self.feedback = feedback;
        debug_assert!(
            self.arriving.is_empty(),
            "every link handed over is adopted or refused"
        );
    }

    fn link_id(&mut self) -> LinkId {
        self.next_link += 1;
        LinkId(self.next_link)
    }

    /// Keeps an established link until the state machine decides on it.
    fn arrive(&mut self, established: Established) -> (LinkId, LinkFacts) {
        let id = self.link_id();
        let facts = LinkFacts {
            instance: established.hello.instance,
            dialled: established.dialled,
            endpoint: established.endpoint,
            path: established.path,
        };
        self.arriving.insert(
            id,
            Arriving {
                link: established.link,
                instance: established.hello.instance,
                path: established.path,
            },
        );
        (id, facts)
    }

    fn input_from_command(&mut self, command: Command) -> Input<SendReply, PingReply> {
        match command {
            Command::Send { text, reply } => {
                if crate::faults::fire("peer-task-panic", &self.target.peer.to_string()) {
                    panic!("injected fault: peer-task-panic for {}", self.target.peer);
                }
                Input::Send {
                    id: self.local.next_message_id(),
                    text,
                    reply,
                }
            }
            Command::Ping { reply } => Input::Ping { reply },
            Command::Established(established) => {
                let (link, facts) = self.arrive(established);
                Input::Arrived { link, facts }
            }
            Command::Listing(listing) => Input::Listing(listing),
            Command::Signal { hub, signal } => Input::Signal { hub, signal },
            Command::RelayOffer {
                hub,
                token,
                dial,
                at,
            } => Input::RelayOffer {
                hub,
                token,
                dial,
                at,
            },
            Command::Refused {
                hub,
                request,
                reason,
            } => Input::Refused {
                hub,
                request,
                reason,
            },
        }
    }

    fn input_from_event(&mut self, event: LinkEvent) -> Input<SendReply, PingReply> {
        match event {
            LinkEvent::Ack { link, id } => Input::Ack {
                link: LinkId(link),
                id,
            },
            LinkEvent::Pong { link, nonce } => Input::Pong {
                link: LinkId(link),
                nonce,
            },
            LinkEvent::Received { link } => Input::Received { link: LinkId(link) },
            LinkEvent::Closed { link, reason } => Input::LinkDown {
                link: LinkId(link),
                reason,
            },
            LinkEvent::Dialled { dial, outcome } => Input::Dialled {
                dial: DialId(dial),
                outcome: outcome.map(|established| self.arrive(established)),
            },
            LinkEvent::Relayed(outcome) => Input::Relayed {
                outcome: outcome.map(|established| self.arrive(established)),
            },
        }
    }

    /// Carries out one action; what it reports back, if anything.
    fn execute(
        &mut self,
        action: Action<SendReply, PingReply>,
    ) -> Option<Input<SendReply, PingReply>> {
        match action {
            Action::Dial {
                dial,
                candidates,
                public,
                public_wait,
            } => {
                let (local, target) = (self.local.clone(), self.target.clone());
                self.spawn_attempt(
                    async move { path::dial(&local, &target, &candidates, public, public_wait).await },
                    move |outcome| LinkEvent::Dialled {
                        dial: dial.0,
                        outcome,
                    },
                );
            }
            Action::JoinRelay {
                hub,
                token,
                dial,
                at,
            } => {
                let (local, target) = (self.local.clone(), self.target.clone());
                self.spawn_attempt(
                    async move { path::relay(&local, hub, at.as_ref(), &token, dial, &target).await },
                    LinkEvent::Relayed,
                );
            }
            Action::StartLink { link } => self.start_link(link),
            Action::RejectLink { link } => {
                if let Some(arriving) = self.arriving.remove(&link) {
                    let (_, writer) = arriving.link.split();
                    self.local.tracker.spawn(async move {
                        writer.close("duplicate link").await;
                    });
                }
            }
            Action::Write { link, frame } => {
                let io = self.links.get_mut(&link)?;
                if io.dead || io.frames.try_send(frame).is_ok() {
                    return None;
                }
                io.dead = true;
                return Some(Input::LinkDown {
                    link,
                    reason: LinkDown::WriteQueueFull,
                });
            }
            Action::CloseLink { link, reason } => {
                if let Some(io) = self.links.remove(&link) {
                    let _ = io.frames.try_send(Frame::Close {
                        reason: reason.to_string(),
                    });
                    io.stop.cancel();
                }
            }
            Action::ToHub { hub, message } => {
                if !self.local.hubs.get(hub).send(message.clone()) {
                    return Some(Input::HubSendFailed { hub, message });
                }
            }
            Action::SendDone { reply, outcome } => {
                if outcome.is_ok() {
                    metrics().messages_sent.inc();
                }
                let _ = reply.send(outcome);
            }
            Action::PingDone { reply, outcome } => {
                let _ = reply.send(outcome);
            }
            Action::Log(event) => self.log(event),
        }
        None
    }

    /// Starts an adopted link's reader and writer.
    fn start_link(&mut self, link: LinkId) {
        let Some(Arriving {
            link: io,
            instance,
            path,
        }) = self.arriving.remove(&link)
        else {
            return;
        };
        let label = path.label();
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let stop = self.stop.child_token();
        let (reader, writer) = io.split();
        self.local.tracker.spawn(link_io::read_link(
            ReadContext {
                local: self.local.clone(),
                peer: self.target.peer.clone(),
                instance,
                link: link.0,
                frames: frames.clone(),
                events: self.events_tx.clone(),
                stop: stop.clone(),
                bytes_in: metrics().link_bytes(label, Direction::In),
            },
            reader,
        ));
        self.local.tracker.spawn(link_io::write_link(
            WriteContext {
                link: link.0,
                events: self.events_tx.clone(),
                shutdown: self.local.cancel.clone(),
                bytes_out: metrics().link_bytes(label, Direction::Out),
            },
            writer,
            queue,
        ));
        self.links.insert(
            link,
            LinkIo {
                frames,
                stop,
                dead: false,
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

    fn log(&self, event: PeerEvent) {
        let peer = &self.target.peer;
        match event {
            PeerEvent::LinkUp {
                endpoint,
                path,
                dialled,
            } => tracing::info!(%peer, %endpoint, path = ?path, dialled, "link up"),
            PeerEvent::LinkDown {
                endpoint,
                path,
                reason,
            } => tracing::info!(%peer, %endpoint, path = ?path, %reason, "link down"),
            PeerEvent::MovedToRelayed => tracing::info!(%peer, "moved to the relayed link"),
            PeerEvent::MovedToDirect { endpoint } => {
                tracing::info!(%peer, %endpoint, "moved to a direct path; relay closed")
            }
            PeerEvent::LinkClosed { reason } => tracing::info!(%peer, %reason, "link closed"),
            PeerEvent::DuplicateClosed { endpoint } => {
                tracing::debug!(%peer, %endpoint, "duplicate link closed (tie-break)")
            }
            PeerEvent::Replaced { endpoint } => {
                tracing::debug!(%peer, %endpoint, "link replaced by a newer one")
            }
            PeerEvent::DialFailed { error } => tracing::debug!(%peer, %error, "dial failed"),
            PeerEvent::RelayFailed { error } => tracing::debug!(%peer, %error, "relay failed"),
            PeerEvent::RelayRefused { reason } => tracing::debug!(%peer, %reason, "relay refused"),
        }
    }
}
