//! The peer state machine: every decision a peer task makes, as a pure
//! function of its state, the time and one input (the quinn-proto and
//! str0m shape). [`PeerState::handle`] turns an input into actions;
//! [`PeerState::poll_timeout`] says when to call it with
//! [`Input::Timeout`]. No clock is read, nothing is spawned or awaited and
//! no lock is taken here, so the tests drive it to the millisecond.
//!
//! The decisions about direct paths live in `direct.rs`, about the relay in
//! `relay.rs`, about links coming and going in `links.rs`; this file holds
//! the state, the dispatch, the timers, and messages and pings.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use meshd_ipc::LinkState;
use meshd_link::Frame;
use rand::Rng;
use tokio::time::Instant;

use super::super::backoff::{Backoff, JITTER};
use super::super::error::{LinkDown, NoLinkReason, StopReason};
use super::super::hubs::{HubId, OpenHubs};
use super::super::link_io::{IDLE_KEEPALIVE, IN_USE_FOR, KEEPALIVE, SILENCE_LIMIT};
use super::super::path::Path;
use super::super::roster::Listing;
use super::events::{Action, CloseReason, DialId, Input, LinkId, PeerEvent};
use super::timers::{Timer, Timers};
use super::{ANSWER_TIMEOUT, MAX_IN_FLIGHT, PeerView, PingOutcome, SendError};
use crate::device_id::DeviceId;

/// Pings awaiting an answer per peer.
pub const MAX_PINGS: usize = 64;

/// Direct paths get this long before a relay is asked for. The device
/// with the larger id waits three times as long, so that usually only one
/// of the two asks.
pub const RELAY_HEAD_START: Duration = Duration::from_millis(300);

/// Dial rounds are retried after 250 ms, doubling up to 30 s (with jitter).
const DIAL_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

/// Relay requests are retried after 500 ms, doubling up to 15 s.
const RELAY_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(15));

/// Where the state machine's randomness comes from: the operating system
/// in meshd, fixed values in tests.
#[derive(Debug)]
pub enum Entropy {
    /// Backoff jitter and nonces from the thread's random generator.
    Os,
    /// A fixed jitter factor and counting nonces.
    #[cfg(test)]
    Fixed {
        /// Multiplies every backoff wait (1.0: the base waits exactly).
        jitter: f64,
        /// The next nonce handed out.
        next_nonce: u64,
    },
}

impl Entropy {
    fn jitter(&mut self) -> f64 {
        match self {
            Entropy::Os => rand::rng().random_range(JITTER),
            #[cfg(test)]
            Entropy::Fixed { jitter, .. } => *jitter,
        }
    }

    fn nonce(&mut self) -> u64 {
        match self {
            Entropy::Os => rand::random(),
            #[cfg(test)]
            Entropy::Fixed { next_nonce, .. } => {
                *next_nonce += 1;
                *next_nonce - 1
            }
        }
    }
}

/// How a peer task starts.
pub struct Setup {
    /// This device.
    pub me: DeviceId,
    /// The device this task links to.
    pub peer: DeviceId,
    /// The hubs' listing of it.
    pub listing: Listing,
    /// Randomness for jitter and nonces.
    pub entropy: Entropy,
}

/// A link the state machine adopted (the shell holds its queue and tasks).
#[derive(Debug, Clone, Copy)]
pub(super) struct LinkRecord {
    pub id: LinkId,
    /// The peer's instance, from its hello.
    pub instance: u64,
    /// The side that ran the initiator handshake was this one.
    pub dialled_here: bool,
    /// When it was adopted.
    pub since: Instant,
    pub endpoint: SocketAddr,
    pub path: Path,
    /// When an ack, a pong or a message last came over it.
    pub heard: Instant,
    /// A check ping went at the first instant, and an answer must come by
    /// the second: the peer joined a relay, so it has no direct link, and
    /// this one is likely dead.
    pub check: Option<(Instant, Instant)>,
}

/// A round of direct dials in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    /// It includes the peer's public endpoint (a hole-punching dial).
    pub punch: bool,
    pub started: Instant,
}

/// Hole punching, as far as this side arranged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Punch {
    /// Nothing arranged.
    Idle,
    /// Connect sent through `hub` at `sent`; waiting for ConnectReply.
    AwaitingReply {
        nonce: u64,
        hub: HubId,
        sent: Instant,
        /// Hubs whose channel could not take the Connect.
        failed: Vec<HubId>,
    },
}

/// The relay, as far as this side asked for or accepted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RelayAttempt {
    /// Nothing asked for or being joined.
    Idle,
    /// Asked `hub` at `since`; waiting for its offer.
    Asked {
        hub: HubId,
        since: Instant,
        /// Hubs whose channel could not take the request.
        failed: Vec<HubId>,
    },
    /// Joining an offered relay.
    Joining,
}

struct PendingSend<S> {
    text: Bytes,
    sent: Instant,
    deadline: Instant,
    /// The deadline was extended once already, at a failover.
    extended: bool,
    reply: S,
}

struct PendingPing<P> {
    link: LinkId,
    sent: Instant,
    deadline: Instant,
    /// `None` for a keepalive.
    reply: Option<P>,
}

/// One peer's links and everything waiting on them.
pub struct PeerState<S, P> {
    pub(super) me: DeviceId,
    pub(super) peer: DeviceId,
    pub(super) listing: Listing,
    pub(super) direct: Option<LinkRecord>,
    pub(super) relayed: Option<LinkRecord>,
    pub(super) rounds: BTreeMap<DialId, Round>,
    next_dial: u64,
    pub(super) dial_backoff: Backoff,
    pub(super) punch: Punch,
    pub(super) relay: RelayAttempt,
    pub(super) relay_backoff: Backoff,
    /// The hub the last relay request was refused by: the next one goes
    /// round the others first.
    pub(super) relay_refused_by: Option<HubId>,
    pub(super) timers: Timers,
    pub(super) last_error: Option<NoLinkReason>,
    rtt: Option<Duration>,
    pending: BTreeMap<u64, PendingSend<S>>,
    pings: HashMap<u64, PendingPing<P>>,
    next_nonce: u64,
    entropy: Entropy,
    /// When a message last went to or came from the peer, or this side
    /// last pinged it on a user's behalf.
    last_use: Option<Instant>,
    /// When the peer's current spell of use began: a link in use must be
    /// heard within [`SILENCE_LIMIT`] of it, not of a quiet time before.
    in_use_since: Option<Instant>,
}

/// One call's context: the time, the hubs that can take a message, and
/// where the actions go.
pub(super) struct Step<'a, S, P> {
    pub now: Instant,
    pub hubs: &'a OpenHubs,
    pub out: &'a mut Vec<Action<S, P>>,
}

impl<S, P> PeerState<S, P> {
    /// A task that dials at once and asks for a relay after its head start.
    pub fn new(now: Instant, setup: Setup) -> Self {
        let mut state = PeerState {
            me: setup.me,
            peer: setup.peer,
            listing: setup.listing,
            direct: None,
            relayed: None,
            rounds: BTreeMap::new(),
            next_dial: 0,
            dial_backoff: Backoff::new(DIAL_BACKOFF.0, DIAL_BACKOFF.1),
            punch: Punch::Idle,
            relay: RelayAttempt::Idle,
            relay_backoff: Backoff::new(RELAY_BACKOFF.0, RELAY_BACKOFF.1),
            relay_refused_by: None,
            timers: Timers::default(),
            last_error: None,
            rtt: None,
            pending: BTreeMap::new(),
            pings: HashMap::new(),
            next_nonce: 0,
            entropy: setup.entropy,
            last_use: None,
            in_use_since: None,
        };
        state.timers.set(Timer::Redial, now);
        state
            .timers
            .set(Timer::RelayAsk, now + state.relay_head_start());
        state.timers.set(Timer::Keepalive, now);
        state
    }

    /// Takes one input at `now`, with `hubs` the hubs whose channels are
    /// open, and appends what to do to `out`.
    pub fn handle(
        &mut self,
        now: Instant,
        hubs: &OpenHubs,
        input: Input<S, P>,
        out: &mut Vec<Action<S, P>>,
    ) {
        let mut step = Step { now, hubs, out };
        match input {
            Input::Send { id, text, reply } => self.send(&mut step, id, text, reply),
            Input::Ping { reply } => self.ping(&mut step, reply),
            Input::Listing(listing) => self.relisted(&mut step, listing),
            Input::Arrived { link, facts } => self.adopt(&mut step, link, facts),
            Input::Dialled { dial, outcome } => self.dialled(&mut step, dial, outcome),
            Input::Relayed { outcome } => self.relayed_outcome(&mut step, outcome),
            Input::Ack { link, id } => self.on_ack(&mut step, link, id),
            Input::Pong { link, nonce } => self.on_pong(&mut step, link, nonce),
            Input::Received { link } => self.on_received(&mut step, link),
            Input::LinkDown { link, reason } => self.link_lost(&mut step, link, reason),
            Input::Signal { hub, signal } => self.on_signal(&mut step, hub, signal),
            Input::RelayOffer {
                hub,
                token,
                dial,
                at,
            } => self.join_relay(&mut step, hub, token, dial, at),
            Input::Refused {
                hub,
                request,
                reason,
            } => self.refused(&mut step, hub, request, reason),
            Input::HubSendFailed { hub, message } => self.hub_send_failed(&mut step, hub, message),
            Input::Timeout => self.on_timeout(&mut step),
            Input::Stop(reason) => self.stop(&mut step, reason),
        }
    }

    /// When to call [`PeerState::handle`] with [`Input::Timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = Timer::ALL
            .into_iter()
            .filter_map(|timer| self.timer_live(timer));
        let sends = self.pending.values().map(|pending| pending.deadline);
        let pings = self.pings.values().map(|ping| ping.deadline);
        let silence = self.silence_deadline();
        timers.chain(sends).chain(pings).chain(silence).min()
    }

    /// The peer is in use: a message went to it or came from it, or a user
    /// pinged it, within [`IN_USE_FOR`]; something is still unanswered; or a
    /// direct link and a relayed one both stand (one is about to go). Its
    /// links are pinged every [`KEEPALIVE`] and a dead one is noticed within
    /// [`SILENCE_LIMIT`]; otherwise every [`IDLE_KEEPALIVE`].
    pub(super) fn in_use(&self, now: Instant) -> bool {
        !self.pending.is_empty()
            || self.pings.values().any(|ping| ping.reply.is_some())
            || (self.direct.is_some() && self.relayed.is_some())
            || self
                .last_use
                .is_some_and(|last| now.saturating_duration_since(last) < IN_USE_FOR)
    }

    /// Call before what puts the peer in use: a spell of use that begins
    /// now pings within [`KEEPALIVE`] and counts silence from now.
    pub(super) fn begin_use(&mut self, now: Instant) {
        if !self.in_use(now) {
            self.in_use_since = Some(now);
            self.timers.set_no_later(Timer::Keepalive, now + KEEPALIVE);
        }
    }

    /// When the first link is due to be judged silent: a link whose check
    /// is unanswered at its deadline, and, while in use, one not heard for
    /// [`SILENCE_LIMIT`] (counted from the start of the spell of use at the
    /// earliest).
    fn silence_deadline(&self) -> Option<Instant> {
        let links = [&self.direct, &self.relayed].into_iter().flatten();
        let checks = links
            .clone()
            .filter_map(|link| link.check.filter(|(asked, _)| link.heard < *asked))
            .map(|(_, by)| by);
        // Only while in use then: an idle peer's links are not judged here.
        let silences = self
            .in_use_since
            .into_iter()
            .flat_map(|since| {
                links
                    .clone()
                    .map(move |link| link.heard.max(since) + SILENCE_LIMIT)
            })
            .filter(|deadline| self.in_use(*deadline));
        checks.chain(silences).min()
    }

    /// Closes, as dead, every link whose check went unanswered, and every
    /// link of a peer in use that was not heard within [`SILENCE_LIMIT`].
    fn close_silent_links(&mut self, step: &mut Step<'_, S, P>) {
        let now = step.now;
        // Judged as poll_timeout does: silent if the peer was still in use
        // when its time ran out, however late this runs.
        let since = self.in_use_since;
        let silent: Vec<(LinkId, LinkDown)> = [&self.direct, &self.relayed]
            .into_iter()
            .flatten()
            .filter_map(|link| {
                let unanswered = link
                    .check
                    .is_some_and(|(asked, by)| link.heard < asked && by <= now);
                if unanswered {
                    return Some((link.id, LinkDown::Unanswered));
                }
                let silent = since.is_some_and(|since| {
                    let deadline = link.heard.max(since) + SILENCE_LIMIT;
                    deadline <= now && self.in_use(deadline)
                });
                silent.then_some((link.id, LinkDown::Silent))
            })
            .collect();
        for (link, reason) in silent {
            self.link_lost(step, link, reason);
        }
    }

    /// What `meshctl devices` shows.
    pub fn view(&self) -> PeerView {
        match self.current() {
            Some(link) => PeerView {
                state: link.path.state(),
                endpoint: Some(link.endpoint),
                rtt: self.rtt,
                since: Some(link.since),
            },
            None => PeerView {
                state: if !self.rounds.is_empty() || self.relay != RelayAttempt::Idle {
                    LinkState::Connecting
                } else {
                    LinkState::Down
                },
                endpoint: None,
                rtt: None,
                since: None,
            },
        }
    }

    /// When `timer` fires, if it is set and its condition holds: the one
    /// place each timer's condition is written.
    pub(super) fn timer_live(&self, timer: Timer) -> Option<Instant> {
        let at = self.timers.at(timer)?;
        let live = match timer {
            // Only with no direct link and no round in flight.
            Timer::Redial => self.direct.is_none() && self.rounds.is_empty(),
            Timer::RelayAsk => self.needs_relay(),
            Timer::RelayAnswer => matches!(self.relay, RelayAttempt::Asked { .. }),
            Timer::PunchAnswer => matches!(self.punch, Punch::AwaitingReply { .. }),
            Timer::PunchDial | Timer::Linger | Timer::Keepalive => true,
        };
        live.then_some(at)
    }

    /// Fires every timer that is due, in [`Timer::ALL`]'s order (each
    /// condition looked at after the ones before fired), then answers what
    /// is past its deadline, then pings if the keepalive is due: the order
    /// the task always had.
    fn on_timeout(&mut self, step: &mut Step<'_, S, P>) {
        let now = step.now;
        // First: losing a link sets timers (the relay request) due now.
        self.close_silent_links(step);
        let due = |state: &Self, timer| state.timer_live(timer).is_some_and(|at| at <= now);
        for timer in Timer::ALL {
            if timer == Timer::Keepalive || !due(self, timer) {
                continue;
            }
            match timer {
                Timer::Redial => self.dial_round(step),
                Timer::RelayAsk => self.ask_for_relay(step),
                Timer::RelayAnswer => self.relay_unanswered(step),
                Timer::PunchAnswer => self.punch_unanswered(step),
                Timer::PunchDial => {
                    self.timers.clear(Timer::PunchDial);
                    self.punch_dial(step);
                }
                Timer::Linger => self.end_linger(step),
                Timer::Keepalive => {}
            }
        }
        self.expire(step);
        if due(self, Timer::Keepalive) {
            self.keepalive(step);
        }
    }

    /// The link messages go over: direct if there is one.
    pub(super) fn current(&self) -> Option<&LinkRecord> {
        self.direct.as_ref().or(self.relayed.as_ref())
    }

    /// The adopted link `id`, on either path.
    pub(super) fn link_mut(&mut self, id: LinkId) -> Option<&mut LinkRecord> {
        [&mut self.direct, &mut self.relayed]
            .into_iter()
            .flatten()
            .find(|link| link.id == id)
    }

    /// How long direct paths get before this side asks for a relay: three
    /// times as long for the device with the larger id, so that usually
    /// only one of the two asks (the hub also merges crossing requests).
    pub(super) fn relay_head_start(&self) -> Duration {
        if self.me < self.peer {
            RELAY_HEAD_START
        } else {
            RELAY_HEAD_START * 3
        }
    }

    /// No link at all, and no relay on the way.
    pub(super) fn needs_relay(&self) -> bool {
        self.direct.is_none() && self.relayed.is_none() && self.relay == RelayAttempt::Idle
    }

    pub(super) fn next_dial_wait(&mut self) -> Duration {
        let jitter = self.entropy.jitter();
        self.dial_backoff.next_wait_jittered(jitter)
    }

    pub(super) fn next_relay_wait(&mut self) -> Duration {
        let jitter = self.entropy.jitter();
        self.relay_backoff.next_wait_jittered(jitter)
    }

    pub(super) fn nonce(&mut self) -> u64 {
        self.entropy.nonce()
    }

    pub(super) fn new_dial(&mut self) -> DialId {
        self.next_dial += 1;
        DialId(self.next_dial)
    }

    pub(super) fn no_link(&self) -> SendError {
        SendError::NoLink {
            device: self.peer.clone(),
            reason: self.last_error.clone().unwrap_or(NoLinkReason::NotYet),
        }
    }

    fn send(&mut self, step: &mut Step<'_, S, P>, id: u64, text: Bytes, reply: S) {
        self.begin_use(step.now);
        self.last_use = Some(step.now);
        if self.pending.len() >= MAX_IN_FLIGHT {
            let outcome = Err(SendError::Busy {
                device: self.peer.clone(),
            });
            step.out.push(Action::SendDone { reply, outcome });
            return;
        }
        let now = step.now;
        self.pending.insert(
            id,
            PendingSend {
                text: text.clone(),
                sent: now,
                deadline: now + ANSWER_TIMEOUT,
                extended: false,
                reply,
            },
        );
        if let Some(link) = self.current() {
            let link = link.id;
            step.out.push(Action::Write {
                link,
                frame: Frame::Message { id, text },
            });
            return;
        }
        // Queued until a link is up: dial now rather than at the next
        // backoff step (unless a hole punch is being arranged), and ask for
        // a relay soon.
        if self.rounds.is_empty()
            && self.punch == Punch::Idle
            && self.timers.at(Timer::PunchDial).is_none()
        {
            self.timers.set(Timer::Redial, now);
        }
        let soon = now + self.relay_head_start();
        self.timers.set_no_later(Timer::RelayAsk, soon);
    }

    /// Sends every unacknowledged message (again) on the current link, in
    /// the order they were sent; the receiver drops what it already has.
    pub(super) fn resend_pending(&mut self, step: &mut Step<'_, S, P>) {
        let Some(link) = self.current().map(|link| link.id) else {
            return;
        };
        for (id, pending) in &self.pending {
            step.out.push(Action::Write {
                link,
                frame: Frame::Message {
                    id: *id,
                    text: pending.text.clone(),
                },
            });
        }
    }

    /// Messages in flight on a failed direct path get a full answer time on
    /// the path that takes over, once, rather than failing meanwhile.
    pub(super) fn extend_deadlines(&mut self, now: Instant) {
        for pending in self
            .pending
            .values_mut()
            .filter(|pending| !pending.extended)
        {
            pending.deadline = pending.deadline.max(now + ANSWER_TIMEOUT);
            pending.extended = true;
        }
    }

    /// Every waiting message fails now with the last error.
    pub(super) fn fail_pending(&mut self, step: &mut Step<'_, S, P>) {
        let error = self.no_link();
        for (_, pending) in std::mem::take(&mut self.pending) {
            step.out.push(Action::SendDone {
                reply: pending.reply,
                outcome: Err(error.clone()),
            });
        }
    }

    fn ping(&mut self, step: &mut Step<'_, S, P>, reply: P) {
        self.begin_use(step.now);
        self.last_use = Some(step.now);
        match self.current().map(|link| link.id) {
            Some(link) => self.ping_on(step, link, Some(reply)),
            None => step.out.push(Action::PingDone {
                reply,
                outcome: Err(self.no_link()),
            }),
        }
    }

    pub(super) fn ping_on(&mut self, step: &mut Step<'_, S, P>, link: LinkId, reply: Option<P>) {
        if self.pings.len() >= MAX_PINGS {
            // Keepalive pings that were never answered make room.
            self.pings.retain(|_, ping| ping.reply.is_some());
            if self.pings.len() >= MAX_PINGS {
                if let Some(reply) = reply {
                    let outcome = Err(SendError::Busy {
                        device: self.peer.clone(),
                    });
                    step.out.push(Action::PingDone { reply, outcome });
                }
                return;
            }
        }
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.pings.insert(
            nonce,
            PendingPing {
                link,
                sent: step.now,
                deadline: step.now + ANSWER_TIMEOUT,
                reply,
            },
        );
        step.out.push(Action::Write {
            link,
            frame: Frame::Ping { nonce },
        });
    }

    /// Drops the pings that went out on `link`.
    pub(super) fn forget_pings_on(&mut self, link: LinkId) {
        self.pings.retain(|_, ping| ping.link != link);
    }

    /// The last round trip measured on the current link; none without one.
    pub(super) fn clear_rtt(&mut self) {
        self.rtt = None;
    }

    /// Pings every link: keeps NAT mappings and the relay open, measures
    /// the RTT, and lets a dead link be noticed. Every [`KEEPALIVE`] while
    /// the peer is in use, every [`IDLE_KEEPALIVE`] while not; after a late
    /// firing, that long from then.
    fn keepalive(&mut self, step: &mut Step<'_, S, P>) {
        let every = if self.in_use(step.now) {
            KEEPALIVE
        } else {
            IDLE_KEEPALIVE
        };
        let next = self.timers.at(Timer::Keepalive).unwrap_or(step.now) + every;
        let next = if next <= step.now {
            step.now + every
        } else {
            next
        };
        self.timers.set(Timer::Keepalive, next);
        let links: Vec<LinkId> = [&self.direct, &self.relayed]
            .into_iter()
            .flatten()
            .map(|link| link.id)
            .collect();
        for link in links {
            self.ping_on(step, link, None);
        }
    }

    fn on_ack(&mut self, step: &mut Step<'_, S, P>, link: LinkId, id: u64) {
        let now = step.now;
        let Some(record) = self.link_mut(link) else {
            return;
        };
        record.heard = now;
        if let Some(pending) = self.pending.remove(&id) {
            step.out.push(Action::SendDone {
                reply: pending.reply,
                outcome: Ok(now - pending.sent),
            });
        }
    }

    /// Messages from the peer arrive on `link`: it works, and the peer is in
    /// use (traffic either way counts, as the receiving end must notice a
    /// dead path as soon as the sending end).
    fn on_received(&mut self, step: &mut Step<'_, S, P>, link: LinkId) {
        let now = step.now;
        self.begin_use(now);
        self.last_use = Some(now);
        if let Some(record) = self.link_mut(link) {
            record.heard = now;
        }
    }

    fn on_pong(&mut self, step: &mut Step<'_, S, P>, link: LinkId, nonce: u64) {
        let now = step.now;
        let current = self.current().map(|link| link.id);
        let Some(record) = self.link_mut(link) else {
            return;
        };
        record.heard = now;
        let (endpoint, path) = (record.endpoint, record.path);
        let Some(ping) = self.pings.remove(&nonce) else {
            return;
        };
        let rtt = now - ping.sent;
        if current == Some(link) {
            self.rtt = Some(rtt);
        }
        if let Some(reply) = ping.reply {
            step.out.push(Action::PingDone {
                reply,
                outcome: Ok(PingOutcome {
                    rtt,
                    endpoint,
                    path: path.state(),
                }),
            });
        }
    }

    /// Answers what is past its deadline: a send with `timeout` if a link
    /// is up (the answer is late) and with the last error if none is; a
    /// user's ping with `timeout`. Keepalive pings just go.
    fn expire(&mut self, step: &mut Step<'_, S, P>) {
        let now = step.now;
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
                        device: self.peer.clone(),
                    },
                    None => self.no_link(),
                };
                step.out.push(Action::SendDone {
                    reply: pending.reply,
                    outcome: Err(error),
                });
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
                step.out.push(Action::PingDone {
                    reply,
                    outcome: Err(SendError::Timeout {
                        device: self.peer.clone(),
                    }),
                });
            }
        }
    }

    /// The task ends: links close, and everything waiting is answered.
    fn stop(&mut self, step: &mut Step<'_, S, P>, reason: StopReason) {
        for link in [self.direct.take(), self.relayed.take()]
            .into_iter()
            .flatten()
        {
            step.out.push(Action::Log(PeerEvent::LinkClosed { reason }));
            step.out.push(Action::CloseLink {
                link: link.id,
                reason: CloseReason::Stopping(reason),
            });
        }
        let stopped = SendError::Stopped {
            device: self.peer.clone(),
            reason,
        };
        for (_, pending) in std::mem::take(&mut self.pending) {
            step.out.push(Action::SendDone {
                reply: pending.reply,
                outcome: Err(stopped.clone()),
            });
        }
        for (_, ping) in std::mem::take(&mut self.pings) {
            if let Some(reply) = ping.reply {
                step.out.push(Action::PingDone {
                    reply,
                    outcome: Err(stopped.clone()),
                });
            }
        }
    }
}
