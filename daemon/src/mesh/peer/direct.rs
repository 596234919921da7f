//! Direct paths: rounds of dials and hole punching coordinated through a
//! hub (docs/mesh.md, "Dialling" and "Hole punching").

use std::net::SocketAddr;
use std::time::Duration;

use super::super::error::{DialError, NoLinkReason};
use super::super::hubs::HubId;
use super::super::path::{PUNCH_TIMEOUT, RELAYED_PUNCH_TIMEOUT};
use super::super::roster::Listing;
use super::events::{Action, DialId, LinkFacts, LinkId, PeerEvent};
use super::state::{PeerState, Punch, Round, Step};
use super::timers::Timer;
use crate::hub_wire::{Signal, ToHub};

/// Time for the device's answer to a hole-punching request.
pub const PUNCH_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

impl<S, P> PeerState<S, P> {
    /// A new listing from the hubs. If the device moved while there is no
    /// direct link, dial its new endpoints now rather than after the backoff.
    pub(super) fn relisted(&mut self, step: &mut Step<'_, S, P>, listing: Listing) {
        let moved = listing.dial_candidates() != self.listing.dial_candidates();
        let old_public = self.listing.punch_endpoint();
        self.listing = listing;
        if !moved || self.direct.is_some() {
            return;
        }
        self.dial_backoff.reset();
        if self.rounds.is_empty() {
            self.timers.set(Timer::Redial, step.now);
            return;
        }
        // A hole-punching dial may wait for 25 s; the new endpoints need
        // not (after a NAT rebinding, usually only the public one is new).
        let public = self.listing.punch_endpoint();
        let candidates: Vec<SocketAddr> = self
            .listing
            .dial_candidates()
            .into_iter()
            .filter(|endpoint| Some(*endpoint) != public)
            .collect();
        let new_public = public.filter(|_| public != old_public);
        if !candidates.is_empty() || new_public.is_some() {
            self.start_round(step, candidates, new_public);
        }
    }

    /// Starts a round of direct dials: every endpoint at once, the public
    /// one with a long wait; and asks the peer, through a hub, to dial back
    /// now, so the two dials meet in the NATs.
    pub(super) fn dial_round(&mut self, step: &mut Step<'_, S, P>) {
        self.timers.clear(Timer::Redial);
        let candidates = self.listing.dial_candidates();
        // A device seen at an address it advertises is behind no NAT:
        // dialled at once, with no hole punching to coordinate.
        let public = self.listing.punch_endpoint();
        if candidates.is_empty() {
            self.last_error = Some(NoLinkReason::Dial(DialError::NoEndpoint));
            let wait = self.next_dial_wait();
            self.timers.set(Timer::Redial, step.now + wait);
            return;
        }
        // With a hub to coordinate through, the public endpoint is dialled
        // when the peer dials back (the punch-dial timer); without one, at
        // once and with the long wait.
        let others: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|endpoint| Some(*endpoint) != public)
            .collect();
        let coordinated = public.is_some() && self.request_punch(step);
        let public = public.filter(|_| !coordinated);
        if others.is_empty() && public.is_none() {
            return;
        }
        self.start_round(step, others, public);
    }

    /// How long a dial to the public endpoint waits: long while nothing
    /// else links the two devices, so that an uncoordinated dial back can
    /// still meet it; short while relayed, when every round is coordinated.
    pub(super) fn punch_timeout(&self) -> Duration {
        match self.relayed {
            Some(_) => RELAYED_PUNCH_TIMEOUT,
            None => PUNCH_TIMEOUT,
        }
    }

    fn start_round(
        &mut self,
        step: &mut Step<'_, S, P>,
        candidates: Vec<SocketAddr>,
        public: Option<SocketAddr>,
    ) {
        let dial = self.new_dial();
        self.rounds.insert(
            dial,
            Round {
                punch: public.is_some(),
                started: step.now,
            },
        );
        step.out.push(Action::Dial {
            dial,
            candidates,
            public,
            public_wait: self.punch_timeout(),
        });
    }

    /// A round ended: its link is adopted, or, if it was the last round and
    /// no direct link came up, the next round is scheduled.
    pub(super) fn dialled(
        &mut self,
        step: &mut Step<'_, S, P>,
        dial: DialId,
        outcome: Result<(LinkId, LinkFacts), DialError>,
    ) {
        let round = self.rounds.remove(&dial);
        match outcome {
            Ok((link, facts)) => self.adopt(step, link, facts),
            Err(error) => {
                let started = round.map_or(step.now, |round| round.started);
                self.dial_failed(step, error, started);
            }
        }
    }

    fn dial_failed(
        &mut self,
        step: &mut Step<'_, S, P>,
        error: DialError,
        started: tokio::time::Instant,
    ) {
        // Another round may still succeed, or a link came up meanwhile:
        // this round's errors no longer matter.
        if self.direct.is_some() || !self.rounds.is_empty() {
            return;
        }
        step.out.push(Action::Log(PeerEvent::DialFailed {
            error: error.clone(),
        }));
        if self.relayed.is_none() {
            self.last_error = Some(NoLinkReason::Dial(error));
        }
        if step.now.duration_since(started) >= self.punch_timeout() {
            // A hole-punching dial waited its full time: go again soon, so
            // that a dial stays open for the peer's to meet.
            self.dial_backoff.reset();
        }
        let wait = self.next_dial_wait();
        self.timers.set(Timer::Redial, step.now + wait);
        if self.current().is_none() && step.hubs.is_empty() {
            // Nothing else will bring a link soon: messages waiting for
            // one fail now with the reason, rather than at their deadline.
            self.fail_pending(step);
        }
    }

    /// DCUtR's first step: Connect through the first hub with an open
    /// channel; its answer times our dial. False when no hub is open.
    fn request_punch(&mut self, step: &mut Step<'_, S, P>) -> bool {
        let Some(hub) = step.hubs.first() else {
            return false;
        };
        let nonce = self.nonce();
        self.send_connect(step, hub, nonce, Vec::new());
        true
    }

    fn send_connect(
        &mut self,
        step: &mut Step<'_, S, P>,
        hub: HubId,
        nonce: u64,
        failed: Vec<HubId>,
    ) {
        step.out.push(Action::ToHub {
            hub,
            message: ToHub::Signal {
                to: self.peer.to_string(),
                signal: Signal::Connect { nonce },
            },
        });
        self.punch = Punch::AwaitingReply {
            nonce,
            hub,
            sent: step.now,
            failed,
        };
        self.timers
            .set(Timer::PunchAnswer, step.now + PUNCH_ANSWER_TIMEOUT);
    }

    /// The Connect could not be queued on `hub`: try the next open hub,
    /// and with none left dial the public endpoint with the long wait.
    pub(super) fn connect_not_sent(&mut self, step: &mut Step<'_, S, P>, hub: HubId, nonce: u64) {
        let Punch::AwaitingReply {
            nonce: awaited,
            hub: asked,
            failed,
            ..
        } = &self.punch
        else {
            return;
        };
        if *awaited != nonce || *asked != hub {
            return;
        }
        let mut failed = failed.clone();
        failed.push(hub);
        let next = step.hubs.after(Some(hub)).find(|id| !failed.contains(id));
        match next {
            Some(next) => self.send_connect(step, next, nonce, failed),
            None => {
                self.punch = Punch::Idle;
                self.punch_dial(step);
            }
        }
    }

    pub(super) fn on_signal(&mut self, step: &mut Step<'_, S, P>, hub: HubId, signal: Signal) {
        let to = self.peer.to_string();
        match signal {
            // Answered whatever our state: the peer times its dial on it.
            Signal::Connect { nonce } => step.out.push(Action::ToHub {
                hub,
                message: ToHub::Signal {
                    to,
                    signal: Signal::ConnectReply { nonce },
                },
            }),
            Signal::ConnectReply { nonce } => {
                let Punch::AwaitingReply {
                    nonce: awaited,
                    hub: asked,
                    sent,
                    ..
                } = self.punch
                else {
                    return;
                };
                if awaited != nonce {
                    return;
                }
                self.punch = Punch::Idle;
                step.out.push(Action::ToHub {
                    hub: asked,
                    message: ToHub::Signal {
                        to,
                        signal: Signal::Sync { nonce },
                    },
                });
                // The Sync reaches the peer about half a round trip from
                // now; dial then, so both dials leave together.
                let half_trip = step.now.duration_since(sent) / 2;
                self.timers.set(Timer::PunchDial, step.now + half_trip);
            }
            Signal::Sync { .. } => self.punch_dial(step),
        }
    }

    /// No ConnectReply in time: dial the public endpoint anyway, with the
    /// long wait, for the peer's own round to meet.
    pub(super) fn punch_unanswered(&mut self, step: &mut Step<'_, S, P>) {
        self.punch = Punch::Idle;
        self.punch_dial(step);
    }

    /// Dials the peer's public endpoint alone, unless a direct link is up
    /// or such a dial is already waiting.
    pub(super) fn punch_dial(&mut self, step: &mut Step<'_, S, P>) {
        if self.direct.is_some() || self.rounds.values().any(|round| round.punch) {
            return;
        }
        match self.listing.public_endpoint() {
            Some(public) => self.start_round(step, Vec::new(), Some(public)),
            // The device no longer lists one: a plain round later.
            None if self.rounds.is_empty() => {
                let wait = self.next_dial_wait();
                self.timers.set(Timer::Redial, step.now + wait);
            }
            None => {}
        }
    }
}
