//! The benchmark's clock and the timestamped payload.
//!
//! Publisher and subscribers live in one process, so one monotonic epoch
//! serves both ends: a payload carries the nanoseconds since the epoch at
//! which it was written, as 64 zero-padded decimal digits (plain ASCII, valid
//! in every protocol's payload and in a meshd chat line).

use std::sync::OnceLock;
use std::time::Instant;

/// Payload size of every message, as the issue fixes it.
pub const PAYLOAD_BYTES: usize = 64;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The instant all timestamps count from; fixed at its first use.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    ns_since_epoch(Instant::now())
}

/// Nanoseconds from [`epoch`] to `at` (0 before it).
pub fn ns_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The payload stamped with `ns`.
pub fn stamp(ns: u64) -> [u8; PAYLOAD_BYTES] {
    let mut payload = [b'0'; PAYLOAD_BYTES];
    let digits = ns.to_string();
    payload[PAYLOAD_BYTES - digits.len()..].copy_from_slice(digits.as_bytes());
    payload
}

/// The timestamp in a payload made by [`stamp`]; `None` if it is not one.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    if payload.len() != PAYLOAD_BYTES {
        return None;
    }
    payload.iter().try_fold(0u64, |value, &byte| {
        byte.is_ascii_digit()
            .then(|| value.checked_mul(10)?.checked_add(u64::from(byte - b'0')))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        for ns in [0, 1, 999, 1_234_567_890_123, u64::MAX] {
            let payload = stamp(ns);
            assert_eq!(payload.len(), 64);
            assert_eq!(read_stamp(&payload), Some(ns));
        }
        assert_eq!(read_stamp(b"12"), None);
        assert_eq!(read_stamp(&[b'x'; 64]), None);
    }
}
