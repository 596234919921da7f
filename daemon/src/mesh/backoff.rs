//! Exponential backoff with jitter, for redialling peers and retrying hubs:
//! waits double up to a ceiling, and each is scattered over ±50% so that
//! devices that failed together do not retry together.

use std::time::Duration;

use rand::Rng;

/// The factor each wait is scattered by: ±50%.
pub const JITTER: std::ops::Range<f64> = 0.5..1.5;

/// The state of one retry sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    ceiling: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `first`, never above `ceiling` (before jitter).
    pub fn new(first: Duration, ceiling: Duration) -> Self {
        Backoff {
            first,
            ceiling,
            attempt: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        self.next_wait_jittered(rand::rng().random_range(JITTER))
    }

    /// The wait before the next attempt, scattered by `jitter` (a factor
    /// drawn from [`JITTER`]): for callers that draw their own randomness,
    /// such as the peer state machine, whose tests fix it.
    pub fn next_wait_jittered(&mut self, jitter: f64) -> Duration {
        let base = self
            .first
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.ceiling);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(jitter)
    }

    /// After a success: the next failure starts from the first wait again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] < Duration::from_millis(150));
        assert!(waits[7] >= Duration::from_millis(500) && waits[7] < Duration::from_millis(1500));
        backoff.reset();
        assert!(backoff.next_wait() < Duration::from_millis(150));
    }
}
