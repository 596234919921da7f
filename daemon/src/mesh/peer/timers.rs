//! The peer state machine's timers, in one table keyed by [`Timer`].
//!
//! Each entry is the instant a timer was set for. Whether it is live at that
//! instant is decided in one place, `PeerState::timer_live`, from which
//! both the next wake-up and the firing are derived: a timer's condition
//! is written once.

use tokio::time::Instant;

/// A peer task's timers, in the order they fire when several are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Start a round of direct dials.
    Redial,
    /// Ask a hub for a relay.
    RelayAsk,
    /// A relay asked for brought no offer in time.
    RelayAnswer,
    /// The peer did not answer a hole-punching request in time.
    PunchAnswer,
    /// Dial the peer's public endpoint, timed to meet its dial.
    PunchDial,
    /// See whether the relayed link beside a direct one may close.
    Linger,
    /// Ping every link.
    Keepalive,
}

impl Timer {
    /// Every timer, in firing order.
    pub const ALL: [Timer; 7] = [
        Timer::Redial,
        Timer::RelayAsk,
        Timer::RelayAnswer,
        Timer::PunchAnswer,
        Timer::PunchDial,
        Timer::Linger,
        Timer::Keepalive,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

/// When each timer is set for, if it is.
#[derive(Debug, Clone, Default)]
pub struct Timers([Option<Instant>; Timer::ALL.len()]);

impl Timers {
    /// When `timer` is set for.
    pub fn at(&self, timer: Timer) -> Option<Instant> {
        self.0[timer.slot()]
    }

    /// Sets `timer` for `at`.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer.slot()] = Some(at);
    }

    /// Sets `timer` for `at`, unless it is set for sooner already.
    pub fn set_no_later(&mut self, timer: Timer, at: Instant) {
        let slot = &mut self.0[timer.slot()];
        *slot = Some(slot.map_or(at, |current| current.min(at)));
    }

    /// Unsets `timer`.
    pub fn clear(&mut self, timer: Timer) {
        self.0[timer.slot()] = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_timer_has_its_own_slot() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        for (n, timer) in Timer::ALL.into_iter().enumerate() {
            timers.set(timer, t0 + Duration::from_millis(n as u64));
        }
        for (n, timer) in Timer::ALL.into_iter().enumerate() {
            assert_eq!(timers.at(timer), Some(t0 + Duration::from_millis(n as u64)));
        }
        timers.set_no_later(Timer::RelayAsk, t0 + Duration::from_secs(9));
        assert_eq!(
            timers.at(Timer::RelayAsk),
            Some(t0 + Duration::from_millis(1))
        );
        timers.set_no_later(Timer::RelayAsk, t0);
        assert_eq!(timers.at(Timer::RelayAsk), Some(t0));
        timers.clear(Timer::Redial);
        assert_eq!(timers.at(Timer::Redial), None);
    }
}
