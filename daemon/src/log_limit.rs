//! One log line per cause per interval, however often the cause repeats.
//!
//! A peer or client that can make meshd log at will (fake registrations, a
//! login storm) must not be able to fill the journal: each repeated warning
//! goes through its own [`LogLimiter`], which lets one line through per
//! interval and tells that line how many were held back since the last.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// The interval meshd uses for repeated warnings.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Rate limit for one kind of log line.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(DEFAULT_INTERVAL)
    }
}

impl LogLimiter {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    /// Calls `emit` with the number of lines held back since the last one,
    /// if a line may go out now; otherwise counts this one as held back.
    pub fn log(&self, emit: impl FnOnce(u64)) {
        if let Some(suppressed) = self.allow(Instant::now()) {
            emit(suppressed);
        }
    }

    /// `Some(held back)` when a line may go out at `now`.
    fn allow(&self, now: Instant) -> Option<u64> {
        let mut state = lock(&self.state);
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.allow(t0), Some(0));
        for _ in 0..280_000 {
            assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(limiter.allow(t0 + Duration::from_secs(10)), Some(280_000));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(11)), None);
    }
}
