//! Password hashing and login checks.
//!
//! argon2id is deliberately slow, so it never runs on the async workers: each
//! hash or verification runs on the blocking pool, behind a semaphore sized to
//! the cores, in memory from a fixed pool ([`Argon2Pool`]). An unknown user is
//! verified against a dummy hash of the same cost, so the reply and its timing
//! do not reveal which names exist.
//!
//! Guesses are limited per source address ([`LoginThrottle`]): a window of
//! failures, and a cap on the checks one address may have in flight, so a
//! storm of wrong passwords sent at the same moment is refused after the
//! window's worth instead of queueing thousands of argon2 runs ahead of
//! everyone else's logins. Correct logins are never refused by the cap: they
//! wait their turn, so many users behind one NAT address still all log in.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::argon2_pool::Argon2Pool;
use crate::sync::lock;

/// Failed logins allowed per source address within [`THROTTLE_WINDOW`].
pub const MAX_FAILURES_PER_WINDOW: u32 = 10;
/// The window over which failures are counted.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked at most; the map is bounded like every map fed
/// from the network.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Runs argon2 off the async workers, a bounded number at a time.
pub struct Authenticator {
    slots: Arc<Semaphore>,
    pool: Arc<Argon2Pool>,
    dummy_hash: String,
    throttle: Mutex<LoginThrottle>,
}

/// What a login attempt may do, once admitted.
pub enum Admission<'a> {
    /// Check the password now, and say how it went on the [`Attempt`].
    Go(Attempt<'a>),
    /// Too many failures from this address: refuse, retry after this long.
    Refused(Duration),
}

/// An admitted check, in flight until dropped; it counts as a failed guess
/// unless [`Attempt::succeeded`] says otherwise.
pub struct Attempt<'a> {
    auth: &'a Authenticator,
    ip: IpAddr,
    failed: bool,
}

impl Attempt<'_> {
    /// The password was right: not a guess.
    pub fn succeeded(mut self) {
        self.failed = false;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        lock(&self.auth.throttle).finish(self.ip, self.failed, Instant::now());
    }
}

/// Why a hash could not be made.
pub type HashError = String;

impl Authenticator {
    /// Prepares the dummy hash (one hash, on the blocking pool).
    pub async fn new() -> Authenticator {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let pool = Arc::new(Argon2Pool::new(cores));
        let dummy_pool = pool.clone();
        let dummy = tokio::task::spawn_blocking(move || dummy_pool.hash("meshd dummy password"))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Authenticator {
            slots: Arc::new(Semaphore::new(cores)),
            pool,
            dummy_hash: dummy,
            throttle: Mutex::new(LoginThrottle::new(cores as u32)),
        }
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.hash(&password).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Checks a login. `hash` is the user's hash, or `None` for an unknown
    /// user, which is checked against the dummy hash and always fails.
    pub async fn verify(&self, hash: Option<String>, password: String) -> bool {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return false;
        };
        let pool = self.pool.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.verify(&hash, &password)
        })
        .await
        .unwrap_or(false);
        known && matched
    }

    /// Waits until a login from `ip` may be checked. Returns `Refused` at
    /// once when the address has failed too often, and never waits past
    /// what the caller's own deadline allows (the caller wraps it).
    pub async fn admit(&self, ip: IpAddr) -> Admission<'_> {
        loop {
            let wake = match lock(&self.throttle).admit(ip, Instant::now()) {
                Gate::Go => {
                    return Admission::Go(Attempt {
                        auth: self,
                        ip,
                        failed: true,
                    });
                }
                Gate::Refused(retry) => return Admission::Refused(retry),
                Gate::Wait(wake) => wake,
            };
            // The notification may have come between the check and here;
            // `Notify` keeps one permit for that, so this never sleeps
            // through a freed slot.
            wake.notified().await;
        }
    }
}

/// The throttle's answer for one attempt.
#[derive(Debug)]
pub enum Gate {
    /// Admitted; counted as in flight until [`LoginThrottle::finish`].
    Go,
    /// Refused: the window's failures are used up.
    Refused(Duration),
    /// Too many in flight for what is left of the window: wait for a wake.
    Wait(Arc<Notify>),
}

/// One source address's guesses.
#[derive(Debug)]
struct AddressState {
    window_start: Instant,
    failures: u32,
    in_flight: u32,
    /// Woken when one of its checks ends.
    wake: Arc<Notify>,
}

impl AddressState {
    /// Attempts parked on this address hold a clone of its `wake`; it must
    /// outlive them, or they would wait on a `Notify` nobody signals.
    fn has_waiters(&self) -> bool {
        Arc::strong_count(&self.wake) > 1
    }
}

/// Logins per source address: failures in a fixed window, and checks in
/// flight. Pure apart from the wake-ups: callers pass the time.
#[derive(Debug)]
pub struct LoginThrottle {
    addresses: HashMap<IpAddr, AddressState>,
    /// Checks one address may run at once (the cores: a NAT full of users
    /// logs in as fast as one client per core).
    max_in_flight: u32,
}

impl LoginThrottle {
    /// A throttle that lets one address run `max_in_flight` checks at once.
    pub fn new(max_in_flight: u32) -> LoginThrottle {
        LoginThrottle {
            addresses: HashMap::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Admits, refuses or parks one attempt from `ip`. An address may have
    /// no more checks in flight than failures it has left, so the window's
    /// limit holds however many guesses arrive at once.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Gate {
        if self.addresses.len() >= MAX_TRACKED_ADDRESSES && !self.addresses.contains_key(&ip) {
            self.forget_idle(now);
        }
        let tracked = self.addresses.len() < MAX_TRACKED_ADDRESSES;
        let state = match self.addresses.entry(ip) {
            Entry::Occupied(entry) => entry.into_mut(),
            // Over the bound every address is as busy as it may be: admit
            // without tracking rather than lock everyone out.
            Entry::Vacant(_) if !tracked => return Gate::Go,
            Entry::Vacant(entry) => entry.insert(AddressState {
                window_start: now,
                failures: 0,
                in_flight: 0,
                wake: Arc::new(Notify::new()),
            }),
        };
        if now.saturating_duration_since(state.window_start) >= THROTTLE_WINDOW {
            state.window_start = now;
            state.failures = 0;
        }
        if state.failures >= MAX_FAILURES_PER_WINDOW {
            let elapsed = now.saturating_duration_since(state.window_start);
            return Gate::Refused(THROTTLE_WINDOW.saturating_sub(elapsed));
        }
        let allowed = self
            .max_in_flight
            .min(MAX_FAILURES_PER_WINDOW - state.failures);
        if state.in_flight >= allowed {
            return Gate::Wait(state.wake.clone());
        }
        state.in_flight += 1;
        Gate::Go
    }

    /// Ends an admitted check from `ip`; `failed` counts it as a guess.
    pub fn finish(&mut self, ip: IpAddr, failed: bool, now: Instant) {
        let Some(state) = self.addresses.get_mut(&ip) else {
            return;
        };
        state.in_flight = state.in_flight.saturating_sub(1);
        if failed {
            if now.saturating_duration_since(state.window_start) >= THROTTLE_WINDOW {
                state.window_start = now;
                state.failures = 0;
            }
            state.failures += 1;
            // Everyone parked may now be refused: let them all look.
            state.wake.notify_waiters();
        }
        // One slot is free: one parked attempt takes it (or the permit
        // waits for the next to park).
        state.wake.notify_one();
        if state.in_flight == 0 && state.failures == 0 && !state.has_waiters() {
            self.addresses.remove(&ip);
        }
    }

    /// Drops addresses with nothing in flight and an expired window.
    fn forget_idle(&mut self, now: Instant) {
        self.addresses.retain(|_, state| {
            state.in_flight > 0
                || state.has_waiters()
                || now.saturating_duration_since(state.window_start) < THROTTLE_WINDOW
        });
    }

    /// Addresses tracked (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn throttles_after_too_many_failures_in_a_window() {
        let mut throttle = LoginThrottle::new(2);
        let (attacker, other) = (ip("203.0.113.9"), ip("203.0.113.10"));
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES_PER_WINDOW {
            assert!(matches!(throttle.admit(attacker, t0), Gate::Go));
            throttle.finish(attacker, true, t0);
        }
        assert!(matches!(throttle.admit(attacker, t0), Gate::Refused(_)));
        assert!(matches!(throttle.admit(other, t0), Gate::Go), "per address");
        assert!(
            matches!(throttle.admit(attacker, t0 + THROTTLE_WINDOW), Gate::Go),
            "the window passes"
        );
    }

    #[test]
    fn guesses_sent_at_once_are_capped_by_what_is_in_flight() {
        let mut throttle = LoginThrottle::new(4);
        let attacker = ip("203.0.113.9");
        let t0 = Instant::now();
        // 2,000 guesses at the same moment: four run, the rest wait.
        let gates: Vec<Gate> = (0..2000).map(|_| throttle.admit(attacker, t0)).collect();
        let admitted = gates.iter().filter(|g| matches!(g, Gate::Go)).count();
        assert_eq!(admitted, 4);
        // Failures use up the window; with 8 failed, only 2 may run.
        for _ in 0..4 {
            throttle.finish(attacker, true, t0);
        }
        for _ in 0..4 {
            assert!(matches!(throttle.admit(attacker, t0), Gate::Go));
        }
        for _ in 0..4 {
            throttle.finish(attacker, true, t0);
        }
        assert!(matches!(throttle.admit(attacker, t0), Gate::Go));
        assert!(matches!(throttle.admit(attacker, t0), Gate::Go));
        assert!(matches!(throttle.admit(attacker, t0), Gate::Wait(_)));
        throttle.finish(attacker, true, t0);
        throttle.finish(attacker, true, t0);
        // Ten checked in all, and every later guess is refused outright.
        assert!(matches!(throttle.admit(attacker, t0), Gate::Refused(_)));
    }

    #[test]
    fn correct_logins_from_one_address_are_never_refused() {
        let mut throttle = LoginThrottle::new(2);
        let nat = ip("203.0.113.50");
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(matches!(throttle.admit(nat, t0), Gate::Go));
            throttle.finish(nat, false, t0);
        }
        assert_eq!(throttle.tracked(), 0, "successes leave nothing behind");
    }

    #[tokio::test]
    async fn a_parked_attempt_is_woken_by_a_finished_one() {
        let throttle = Mutex::new(LoginThrottle::new(1));
        let nat = ip("203.0.113.50");
        let t0 = Instant::now();
        assert!(matches!(lock(&throttle).admit(nat, t0), Gate::Go));
        let Gate::Wait(wake) = lock(&throttle).admit(nat, t0) else {
            panic!("expected to wait");
        };
        let Gate::Wait(second) = lock(&throttle).admit(nat, t0) else {
            panic!("expected to wait");
        };
        lock(&throttle).finish(nat, false, t0);
        tokio::time::timeout(Duration::from_secs(1), wake.notified())
            .await
            .expect("woken");
        assert!(matches!(lock(&throttle).admit(nat, t0), Gate::Go));
        // The address stayed tracked while someone was parked on it, so the
        // second waiter hears the next finish.
        lock(&throttle).finish(nat, false, t0);
        tokio::time::timeout(Duration::from_secs(1), second.notified())
            .await
            .expect("the second is woken too");
        drop((wake, second));
        assert!(matches!(lock(&throttle).admit(nat, t0), Gate::Go));
        lock(&throttle).finish(nat, false, t0);
        assert_eq!(lock(&throttle).tracked(), 0);
    }
}
