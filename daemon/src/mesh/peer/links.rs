//! Links coming and going: adopting a new link (or refusing it in the
//! tie-break), losing one, and closing the relayed link once a direct one
//! has proved itself (docs/mesh.md, "One link per pair" and "Moving between
//! paths").

use std::time::Duration;

use tokio::time::Instant;

use super::super::error::{LinkDown, NoLinkReason};
use super::super::link_io::KEEPALIVE;
use super::super::path::Path;
use super::events::{Action, CloseReason, LinkFacts, LinkId, PeerEvent};
use super::state::{LinkRecord, PeerState, Punch, RELAY_HEAD_START, Step};
use super::timers::Timer;
use crate::device_id::DeviceId;

/// Two links of one peer instance on the same path set up within this
/// window are a simultaneous dial, settled by the tie-break; beyond it the
/// newer link wins, because the peer evidently gave up on the older one.
pub const SIMULTANEOUS_WINDOW: Duration = Duration::from_secs(2);

/// A relayed link stays this long beside a new direct one, so that both
/// ends have moved before it closes.
pub const RELAY_LINGER: Duration = Duration::from_secs(5);

impl<S, P> PeerState<S, P> {
    /// Takes a new link, or refuses it in favour of the one on its path.
    pub(super) fn adopt(&mut self, step: &mut Step<'_, S, P>, link: LinkId, facts: LinkFacts) {
        let now = step.now;
        let LinkFacts {
            instance,
            dialled,
            endpoint,
            path,
        } = facts;
        let dialler = if dialled { &self.me } else { &self.peer };
        let slot = match path {
            Path::Direct => &self.direct,
            Path::Relayed => &self.relayed,
        };
        if let Some(current) = slot {
            let current_dialler = if current.dialled_here {
                &self.me
            } else {
                &self.peer
            };
            let keep_new = prefer_new_link(
                (current.instance, current_dialler, current.since),
                (instance, dialler, now),
            );
            if !keep_new {
                step.out
                    .push(Action::Log(PeerEvent::DuplicateClosed { endpoint }));
                step.out.push(Action::RejectLink { link });
                return;
            }
        }
        let slot = match path {
            Path::Direct => &mut self.direct,
            Path::Relayed => &mut self.relayed,
        };
        if let Some(old) = slot.take() {
            step.out.push(Action::Log(PeerEvent::Replaced {
                endpoint: old.endpoint,
            }));
            step.out.push(Action::CloseLink {
                link: old.id,
                reason: CloseReason::Replaced,
            });
        }
        // A second path coming up puts the peer in use until one goes.
        let second = match path {
            Path::Direct => self.relayed.is_some(),
            Path::Relayed => self.direct.is_some(),
        };
        if second {
            self.begin_use(now);
        }
        let previous = self.current().map(|link| link.id);
        step.out.push(Action::StartLink { link });
        step.out.push(Action::Log(PeerEvent::LinkUp {
            endpoint,
            path,
            dialled,
        }));
        let record = LinkRecord {
            id: link,
            instance,
            dialled_here: dialled,
            since: now,
            endpoint,
            path,
            heard: now,
            check: None,
        };
        match path {
            Path::Direct => {
                self.direct = Some(record);
                self.dial_backoff.reset();
                self.timers.clear(Timer::Redial);
                self.punch = Punch::Idle;
                self.timers.clear(Timer::PunchDial);
            }
            Path::Relayed => {
                self.relayed = Some(record);
                self.relay_backoff.reset();
                self.timers.clear(Timer::RelayAsk);
            }
        }
        self.last_error = None;
        if self.direct.is_some() && self.relayed.is_some() {
            self.timers.set(Timer::Linger, now + RELAY_LINGER);
        }
        if self.current().map(|link| link.id) != previous {
            self.resend_pending(step);
        }
        // A first measurement right away, for `meshctl devices`.
        self.ping_on(step, link, None);
        // The peer joined a relay, so it has no direct link: this side's
        // is likely dead (its path cut while idle here). It must answer a
        // ping within a keepalive, or it goes.
        if path == Path::Relayed
            && let Some(direct) = &mut self.direct
        {
            direct.check = Some((now, now + KEEPALIVE));
            let direct = direct.id;
            self.ping_on(step, direct, None);
        }
    }

    /// `link` ended: a lost direct link is redialled after the backoff and
    /// the relay asked for at once (the larger id a moment later); messages
    /// move to the link that is left, if any.
    pub(super) fn link_lost(&mut self, step: &mut Step<'_, S, P>, link: LinkId, reason: LinkDown) {
        let now = step.now;
        let was_current = self.current().is_some_and(|current| current.id == link);
        let lost = if self.direct.is_some_and(|direct| direct.id == link) {
            self.direct.take()
        } else if self.relayed.is_some_and(|relayed| relayed.id == link) {
            self.relayed.take()
        } else {
            None
        };
        let Some(lost) = lost else { return };
        let path = lost.path;
        step.out.push(Action::Log(PeerEvent::LinkDown {
            endpoint: lost.endpoint,
            path,
            reason: reason.clone(),
        }));
        step.out.push(Action::CloseLink {
            link,
            reason: CloseReason::Lost(reason.clone()),
        });
        self.forget_pings_on(link);
        if path == Path::Direct && self.rounds.is_empty() {
            let wait = self.next_dial_wait();
            self.timers.set(Timer::Redial, now + wait);
        }
        if path == Path::Direct && !step.hubs.is_empty() {
            self.extend_deadlines(now);
        }
        if self.current().is_none() {
            self.last_error = Some(NoLinkReason::Link(reason));
            self.clear_rtt();
            // Fall back to the relay at once after a direct path failed
            // (the larger id a moment later, so that the two ask for one
            // relay); after a failed relay, retry it with backoff.
            let at = match path {
                Path::Direct => now + self.relay_head_start() - RELAY_HEAD_START,
                Path::Relayed => now + self.next_relay_wait(),
            };
            self.timers.set(Timer::RelayAsk, at);
        } else if was_current {
            step.out.push(Action::Log(PeerEvent::MovedToRelayed));
            self.resend_pending(step);
        }
    }

    /// Closes the relayed link once the direct one was heard within two
    /// keepalives; otherwise looks again a keepalive later.
    pub(super) fn end_linger(&mut self, step: &mut Step<'_, S, P>) {
        let now = step.now;
        self.timers.clear(Timer::Linger);
        let (Some(direct), Some(relayed)) = (self.direct, self.relayed) else {
            return;
        };
        if now.duration_since(direct.heard) <= KEEPALIVE * 2 {
            self.relayed = None;
            step.out.push(Action::Log(PeerEvent::MovedToDirect {
                endpoint: direct.endpoint,
            }));
            step.out.push(Action::CloseLink {
                link: relayed.id,
                reason: CloseReason::MovedToDirect,
            });
        } else {
            self.timers.set(Timer::Linger, now + KEEPALIVE);
        }
    }
}

/// The tie-break between the current link to a peer on one path and a new
/// one, each given as (the peer's instance, who dialled, when it was set
/// up). Both ends see the same facts, so both keep the same link.
pub fn prefer_new_link(
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
