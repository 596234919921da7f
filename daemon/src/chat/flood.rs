//! Flood control: each user may send `rate_per_user` messages a second, after
//! a burst of `burst_per_user` (docs/chat-protocol.md, "Flood control").
//!
//! A user over the limit is slowed, not cut off: its session waits before it
//! publishes the line and reads nothing from its socket meanwhile, so the
//! kernel's buffers push back on the flooder (as IRC servers delay a
//! flooder's lines). The room never sees more than the rate, so readers that
//! keep up are never cut off as slow because of one sender.
//!
//! The bucket is per user name, shared by all of that user's sessions, and
//! exists only while the user has one: the map is bounded by the sessions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sync::lock;
use crate::token_bucket::TokenBucket;

/// Every logged-in user's bucket, and the limits in force.
pub struct FloodControl {
    rate: AtomicU64,
    burst: AtomicU64,
    users: Mutex<HashMap<String, UserBucket>>,
}

struct UserBucket {
    sessions: usize,
    bucket: TokenBucket,
}

/// A session's hold on its user's bucket; the bucket goes with the last.
pub struct Sender<'a> {
    flood: &'a FloodControl,
    user: String,
}

impl FloodControl {
    /// Limits of `rate` messages a second (0: none) after `burst`.
    pub fn new(rate: u64, burst: u64) -> FloodControl {
        FloodControl {
            rate: AtomicU64::new(rate),
            burst: AtomicU64::new(burst),
            users: Mutex::new(HashMap::new()),
        }
    }

    /// New limits, from a reload; buckets keep their tokens.
    pub fn set_limits(&self, rate: u64, burst: u64) {
        self.rate.store(rate, Ordering::Relaxed);
        self.burst.store(burst, Ordering::Relaxed);
    }

    /// Registers a session of `user`.
    pub fn sender(&self, user: &str) -> Sender<'_> {
        let mut users = lock(&self.users);
        users
            .entry(user.to_owned())
            .or_insert_with(|| UserBucket {
                sessions: 0,
                bucket: TokenBucket::full(Instant::now()),
            })
            .sessions += 1;
        Sender {
            flood: self,
            user: user.to_owned(),
        }
    }

    /// Users with a bucket (for tests).
    #[cfg(test)]
    fn users(&self) -> usize {
        lock(&self.users).len()
    }
}

impl Sender<'_> {
    /// How long the next message must wait at `now` (zero: send it now).
    pub fn delay(&self, now: Instant) -> Duration {
        let rate = self.flood.rate.load(Ordering::Relaxed);
        let burst = self.flood.burst.load(Ordering::Relaxed);
        lock(&self.flood.users)
            .get_mut(&self.user)
            .map_or(Duration::ZERO, |user| user.bucket.take(1, rate, burst, now))
    }
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        let mut users = lock(&self.flood.users);
        if let Some(user) = users.get_mut(&self.user) {
            user.sessions -= 1;
            if user.sessions == 0 {
                users.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_of_one_user_share_a_bucket() {
        let flood = FloodControl::new(10, 5);
        let now = Instant::now();
        let first = flood.sender("mallory");
        let second = flood.sender("mallory");
        let alice = flood.sender("alice");
        for _ in 0..5 {
            assert_eq!(first.delay(now), Duration::ZERO);
        }
        assert_eq!(second.delay(now), Duration::from_millis(100));
        assert_eq!(alice.delay(now), Duration::ZERO, "per user");
        drop((first, second, alice));
        assert_eq!(flood.users(), 0, "buckets go with the last session");
    }

    #[test]
    fn rate_zero_is_no_limit_and_reload_applies() {
        let flood = FloodControl::new(0, 1);
        let now = Instant::now();
        let sender = flood.sender("bench");
        for _ in 0..10_000 {
            assert_eq!(sender.delay(now), Duration::ZERO);
        }
        flood.set_limits(1, 1);
        assert_eq!(sender.delay(now), Duration::ZERO);
        assert_eq!(sender.delay(now), Duration::from_secs(1));
    }
}
