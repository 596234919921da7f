//! The relay: asking a hub for one when no link is up, joining what a hub
//! offers, and going round the hubs when one refuses (docs/mesh.md, "The
//! relay").

use std::time::Duration;

use super::super::error::{JoinRelayError, NoLinkReason};
use super::super::hubs::{HubId, VouchedHub};
use super::events::{Action, LinkFacts, LinkId, PeerEvent};
use super::state::{PeerState, Punch, RelayAttempt, Step};
use super::timers::Timer;
use crate::hub_wire::{Refusable, Signal, ToHub};

/// An asked-for relay that brought no offer by then is asked for again.
pub const RELAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl<S, P> PeerState<S, P> {
    /// Asks an open hub for a relay to the peer, going round from the hub
    /// after the one that last refused.
    pub(super) fn ask_for_relay(&mut self, step: &mut Step<'_, S, P>) {
        self.timers.clear(Timer::RelayAsk);
        let first = step.hubs.after(self.relay_refused_by).next();
        match first {
            Some(hub) => self.send_relay_request(step, hub, Vec::new()),
            None => {
                let wait = self.next_relay_wait();
                self.timers.set(Timer::RelayAsk, step.now + wait);
            }
        }
    }

    fn send_relay_request(&mut self, step: &mut Step<'_, S, P>, hub: HubId, failed: Vec<HubId>) {
        step.out.push(Action::ToHub {
            hub,
            message: ToHub::Relay {
                to: self.peer.to_string(),
            },
        });
        self.relay = RelayAttempt::Asked {
            hub,
            since: step.now,
            failed,
        };
        self.timers
            .set(Timer::RelayAnswer, step.now + RELAY_ANSWER_TIMEOUT);
    }

    /// No offer in time: ask again after the backoff.
    pub(super) fn relay_unanswered(&mut self, step: &mut Step<'_, S, P>) {
        self.relay = RelayAttempt::Idle;
        self.timers.clear(Timer::RelayAnswer);
        let wait = self.next_relay_wait();
        self.timers.set(Timer::RelayAsk, step.now + wait);
    }

    /// Joins a relay a hub offered, whoever asked for it. The peer asks
    /// only when it has no link, so a direct link here is probably dead
    /// too: the relayed link stands by beside it until that is clear.
    pub(super) fn join_relay(
        &mut self,
        step: &mut Step<'_, S, P>,
        hub: HubId,
        token: String,
        dial: bool,
        at: Option<VouchedHub>,
    ) {
        if self.relay == RelayAttempt::Joining {
            return;
        }
        self.relay = RelayAttempt::Joining;
        step.out.push(Action::JoinRelay {
            hub,
            token,
            dial,
            at,
        });
    }

    pub(super) fn relayed_outcome(
        &mut self,
        step: &mut Step<'_, S, P>,
        outcome: Result<(LinkId, LinkFacts), JoinRelayError>,
    ) {
        self.relay = RelayAttempt::Idle;
        match outcome {
            Ok((link, facts)) => self.adopt(step, link, facts),
            Err(error) => {
                step.out.push(Action::Log(PeerEvent::RelayFailed {
                    error: error.clone(),
                }));
                if self.current().is_none() {
                    self.last_error = Some(NoLinkReason::Relay(error));
                }
                let wait = self.next_relay_wait();
                self.timers.set(Timer::RelayAsk, step.now + wait);
            }
        }
    }

    /// A hub could not pass our signal or relay request on.
    pub(super) fn refused(
        &mut self,
        step: &mut Step<'_, S, P>,
        hub: HubId,
        request: Refusable,
        reason: String,
    ) {
        if request == Refusable::Signal {
            if matches!(self.punch, Punch::AwaitingReply { hub: asked, .. } if asked == hub) {
                // The peer cannot be told to dial back: dial its public
                // endpoint anyway, with the long wait.
                self.punch = Punch::Idle;
                self.punch_dial(step);
            }
            return;
        }
        if !matches!(self.relay, RelayAttempt::Asked { hub: asked, .. } if asked == hub) {
            return;
        }
        step.out.push(Action::Log(PeerEvent::RelayRefused {
            reason: reason.clone(),
        }));
        self.relay = RelayAttempt::Idle;
        self.relay_refused_by = Some(hub);
        if self.current().is_none() {
            self.last_error = Some(NoLinkReason::RelayRefused(reason));
        }
        let wait = self.next_relay_wait();
        self.timers.set(Timer::RelayAsk, step.now + wait);
    }

    /// The shell could not queue `message` on `hub`'s channel.
    pub(super) fn hub_send_failed(
        &mut self,
        step: &mut Step<'_, S, P>,
        hub: HubId,
        message: ToHub,
    ) {
        match message {
            ToHub::Signal {
                signal: Signal::Connect { nonce },
                ..
            } => self.connect_not_sent(step, hub, nonce),
            ToHub::Relay { .. } => self.relay_request_not_sent(step, hub),
            // Answers to the peer's signals are not retried: it times out
            // and dials anyway.
            // The rest is the channel task's or the link reporter's, never
            // a peer's.
            ToHub::Signal { .. }
            | ToHub::Ping { .. }
            | ToHub::Leave
            | ToHub::Register { .. }
            | ToHub::Observe
            | ToHub::Resync
            | ToHub::Links { .. } => {}
        }
    }

    /// The relay request could not be queued on `hub`: the next open hub,
    /// and with none left, again after the backoff.
    fn relay_request_not_sent(&mut self, step: &mut Step<'_, S, P>, hub: HubId) {
        let RelayAttempt::Asked {
            hub: asked, failed, ..
        } = &self.relay
        else {
            return;
        };
        if *asked != hub {
            return;
        }
        let mut failed = failed.clone();
        failed.push(hub);
        let next = step.hubs.after(Some(hub)).find(|id| !failed.contains(id));
        match next {
            Some(next) => self.send_relay_request(step, next, failed),
            None => {
                self.relay = RelayAttempt::Idle;
                self.timers.clear(Timer::RelayAnswer);
                let wait = self.next_relay_wait();
                self.timers.set(Timer::RelayAsk, step.now + wait);
            }
        }
    }
}
