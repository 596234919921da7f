//! Password hashing and login checks.
//!
//! argon2id with at least OWASP's recommended cost (19 MiB, 2 passes, 1 lane)
//! is deliberately slow, so it never runs on the async workers: each hash or
//! verification runs on the blocking pool, behind a semaphore sized to the
//! cores, so a storm of logins queues there instead of delaying delivery
//! between clients already logged in. An unknown user is verified against a
//! dummy hash of the same cost, so the reply and its timing do not reveal
//! which names exist. Failed logins are counted per source address
//! ([`LoginThrottle`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

/// Failed logins allowed per source address within [`THROTTLE_WINDOW`].
pub const MAX_FAILURES_PER_WINDOW: u32 = 10;
/// The window over which failures are counted.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked at most; the map is bounded like every map fed
/// from the network.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// The argon2id instance with meshd's cost parameters.
fn argon2() -> Argon2<'static> {
    let params = Params::new(
        Params::DEFAULT_M_COST,
        Params::DEFAULT_T_COST,
        Params::DEFAULT_P_COST,
        None,
    )
    .unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string with a fresh random salt (blocking).
pub fn hash_blocking(password: &str) -> Result<String, String> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `hash` (blocking).
fn verify_blocking(hash: &str, password: &str) -> bool {
    argon2().verify_password(password.as_bytes(), hash).is_ok()
}

/// Runs argon2 off the async workers, a bounded number at a time.
pub struct Authenticator {
    slots: Arc<Semaphore>,
    dummy_hash: String,
    throttle: Mutex<LoginThrottle>,
}

impl Authenticator {
    /// Prepares the dummy hash (one hash, on the blocking pool).
    pub async fn new() -> Authenticator {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let dummy = tokio::task::spawn_blocking(|| hash_blocking("meshd dummy password"))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Authenticator {
            slots: Arc::new(Semaphore::new(cores)),
            dummy_hash: dummy,
            throttle: Mutex::new(LoginThrottle::default()),
        }
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash_blocking(&password)
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
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_blocking(&hash, &password)
        })
        .await
        .unwrap_or(false);
        known && matched
    }

    /// `Err(retry_after)` if `ip` has failed too often recently.
    pub fn check_throttle(&self, ip: IpAddr) -> Result<(), Duration> {
        self.throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(ip, Instant::now())
    }

    /// Counts a failed login from `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        self.throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record_failure(ip, Instant::now());
    }
}

/// Failed logins per source address in a fixed window. Pure: callers pass
/// the time.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: HashMap<IpAddr, (Instant, u32)>,
}

impl LoginThrottle {
    /// `Err(retry_after)` once `ip` reached the limit in its current window.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.failures.get(&ip) {
            Some(&(start, count)) if count >= MAX_FAILURES_PER_WINDOW => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed < THROTTLE_WINDOW {
                    Err(THROTTLE_WINDOW - elapsed)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        if self.failures.len() >= MAX_TRACKED_ADDRESSES && !self.failures.contains_key(&ip) {
            self.failures
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < THROTTLE_WINDOW);
            if self.failures.len() >= MAX_TRACKED_ADDRESSES {
                return;
            }
        }
        let entry = self.failures.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= THROTTLE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_owasp_cost_and_verify() {
        let hash = hash_blocking("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_blocking(&hash, "correct horse"));
        assert!(!verify_blocking(&hash, "wrong"));
        assert_ne!(hash, hash_blocking("correct horse").unwrap(), "salted");
    }

    #[test]
    fn throttles_after_too_many_failures_in_a_window() {
        let mut throttle = LoginThrottle::default();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let other: IpAddr = "203.0.113.10".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES_PER_WINDOW {
            assert!(throttle.check(ip, t0).is_ok());
            throttle.record_failure(ip, t0);
        }
        assert!(throttle.check(ip, t0).is_err());
        assert!(throttle.check(other, t0).is_ok(), "per address");
        assert!(
            throttle.check(ip, t0 + THROTTLE_WINDOW).is_ok(),
            "the window passes"
        );
    }
}
