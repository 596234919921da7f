//! Admitting one registration, whichever way it came: a hub channel (the
//! device proved its key) or `POST /register` (a claim). Both pass the same
//! join token check, the same per-address limit on new ids, and the same
//! registry rules (registry.rs), so neither door is easier than the other
//! (docs/signaling-api.md, docs/security.md).

use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use subtle::ConstantTimeEq;

use super::SignalingState;
use super::error::SignalingError;
use super::registry::{Proof, RegisterError, Registration};
use crate::hub_wire::RegisterReply;
use crate::metrics::metrics;
use crate::sync::lock;
use crate::token_bucket::PerSource;

/// Source addresses whose limits are remembered at most (token_bucket.rs,
/// [`PerSource`]).
const MAX_TRACKED_SOURCES: usize = 16_384;

/// A burst of new ids from one address: this many seconds' worth.
const BURST_SECONDS: u64 = 5;

/// Compares a presented token with the configured one in constant time, so
/// its bytes cannot be guessed one by one from response timing.
pub fn token_matches(sent: &str, expected: &str) -> bool {
    bool::from(sent.trim().as_bytes().ct_eq(expected.as_bytes()))
}

/// New-id budgets per source address.
pub struct SourceLimits {
    buckets: std::sync::Mutex<PerSource>,
}

impl Default for SourceLimits {
    fn default() -> SourceLimits {
        SourceLimits {
            buckets: std::sync::Mutex::new(PerSource::new(MAX_TRACKED_SOURCES)),
        }
    }
}

impl SourceLimits {
    /// Takes one new registration for `source`; false when it is over
    /// `rate` per second.
    fn try_take(&self, source: IpAddr, rate: u64, now: Instant) -> bool {
        let burst = rate.saturating_mul(BURST_SECONDS);
        lock(&self.buckets).try_take(source, 1, rate, burst, now)
    }
}

impl SignalingState {
    /// Registers or refreshes `registration` from `peer`, under `proof`; the
    /// answer the device gets. The caller has checked the join token.
    pub(super) fn admit(
        &self,
        registration: Registration,
        proof: Proof,
        peer: SocketAddr,
    ) -> Result<RegisterReply, SignalingError> {
        let settings = self.settings();
        let ttl = settings.device_ttl;
        let now = Instant::now();
        let id = registration.id.clone();
        // One lock for the whole admission: the rate limit applies to ids
        // not live now, decided under the same lock that registers them.
        let (is_new, moved, reply) = self.change_registry(|registry| {
            // What peers see of it. A channel's new source address is a
            // new NAT mapping, news to peers as much as new endpoints are;
            // a `POST /register` comes from a new port each time, and its
            // source address is not dialled.
            let previous = registry
                .live(&id, now, ttl)
                .map(|device| (device.registration.clone(), device.observed));
            if previous.is_none()
                && !self
                    .source_limits
                    .try_take(peer.ip(), settings.registrations_per_sec, now)
            {
                return Err(SignalingError::RateLimited {
                    address: peer.ip(),
                    rate: settings.registrations_per_sec,
                });
            }
            let device = registry
                .register(registration, proof, peer, now, SystemTime::now(), ttl)
                .map_err(|error| match error {
                    RegisterError::KeyConflict(id) => SignalingError::KeyConflict(id.to_string()),
                    RegisterError::Proven(id) => SignalingError::ProvenId(id.to_string()),
                    RegisterError::Claimed(id) => SignalingError::Claimed(id.to_string()),
                    full @ RegisterError::Full(_) => SignalingError::Full(full.to_string()),
                })?;
            metrics().hub_registrations.inc();
            let moved = previous.as_ref().is_some_and(|(registration, observed)| {
                *registration != device.registration
                    || (proof == Proof::Proven && *observed != device.observed)
            });
            let reply = RegisterReply {
                id: device.registration.id.to_string(),
                addr: device.registration.addr.to_string(),
                observed: peer.to_string(),
                ttl_secs: ttl.as_secs(),
            };
            Ok::<_, SignalingError>((previous.is_none(), moved, reply))
        })?;
        if is_new || moved {
            self.changed([id]);
        }
        if is_new {
            tracing::info!(device_id = %reply.id, peer_addr = %peer, addr = %reply.addr, proven = (proof == Proof::Proven), "device registered");
        } else {
            tracing::debug!(device_id = %reply.id, peer_addr = %peer, "device refreshed");
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_address_has_its_own_budget_of_new_ids() {
        let limits = SourceLimits::default();
        let now = Instant::now();
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        for _ in 0..10 {
            assert!(limits.try_take(a, 2, now));
        }
        assert!(!limits.try_take(a, 2, now), "over the burst of 5 s");
        assert!(limits.try_take(b, 2, now), "another address is not charged");
        assert!(limits.try_take(a, 2, now + Duration::from_millis(500)));
        assert!(limits.try_take(a, 0, now), "0: no limit");
    }

    #[test]
    fn the_table_of_addresses_stays_bounded() {
        let limits = SourceLimits::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 10) {
            let source = IpAddr::from(i.to_be_bytes());
            assert!(limits.try_take(source, 1, now));
        }
        assert!(lock(&limits.buckets).len() <= MAX_TRACKED_SOURCES);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(token_matches(" s3cret\n", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}
