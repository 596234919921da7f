//! A token bucket: `rate` units a second on average, `burst` at once.
//!
//! Pure: the caller passes the time and decides what to do with a wait (the
//! relay sleeps off its bytes, a chat sender's lines wait), so the arithmetic
//! is tested to the microsecond without a clock. [`PerSource`] keeps one
//! bucket per client address, in a bounded table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Tokens and the last time they were topped up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: the first `burst` units pass at once.
    pub fn full(now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::MAX,
            last: now,
        }
    }

    /// Takes `amount` units at `now`; returns how long the caller must wait
    /// before acting on them (zero when the bucket had them). The debt is
    /// taken at once, so callers that wait in turn are spaced by `rate`.
    /// `rate == 0` means no limit.
    pub fn take(&mut self, amount: u64, rate: u64, burst: u64, now: Instant) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let burst = burst.max(1) as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = self.last.max(now);
        self.tokens -= amount as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

impl TokenBucket {
    /// Takes `amount` units at `now` if the bucket holds them, and nothing
    /// otherwise: for refusing rather than delaying. `rate == 0` means no
    /// limit.
    pub fn try_take(&mut self, amount: u64, rate: u64, burst: u64, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate as f64).min(burst.max(1) as f64);
        self.last = self.last.max(now);
        if self.tokens >= amount as f64 {
            self.tokens -= amount as f64;
            true
        } else {
            false
        }
    }

    /// When the bucket was last used: a bucket idle for longer than its
    /// burst takes to refill is full again, and can be forgotten.
    pub fn last_used(&self) -> Instant {
        self.last
    }
}

/// One bucket per source address, for limits that must not let one client
/// spend the others' budget. An IPv6 /64 counts as one address (one host
/// is handed a whole /64 and could otherwise take a new budget per
/// request); an IPv4-mapped address as its IPv4 address. At most
/// `max_sources` are kept: when the table is full, buckets idle long enough
/// to be full again are forgotten, then, if a flood of addresses still
/// fills it, all of them (the limits start over rather than memory
/// growing).
#[derive(Debug)]
pub struct PerSource {
    buckets: HashMap<IpAddr, TokenBucket>,
    max_sources: usize,
}

impl PerSource {
    /// An empty table of at most `max_sources` addresses.
    pub fn new(max_sources: usize) -> PerSource {
        PerSource {
            buckets: HashMap::new(),
            max_sources,
        }
    }

    /// [`TokenBucket::try_take`] on `source`'s bucket (full when new).
    pub fn try_take(
        &mut self,
        source: IpAddr,
        amount: u64,
        rate: u64,
        burst: u64,
        now: Instant,
    ) -> bool {
        if rate == 0 {
            return true;
        }
        let source = source_key(source);
        if self.buckets.len() >= self.max_sources && !self.buckets.contains_key(&source) {
            let refill = Duration::from_secs(burst.div_ceil(rate) + 1);
            self.buckets
                .retain(|_, bucket| now.saturating_duration_since(bucket.last_used()) < refill);
            if self.buckets.len() >= self.max_sources {
                self.buckets.clear();
            }
        }
        self.buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::full(now))
            .try_take(amount, rate, burst, now)
    }

    /// How many addresses are tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// The address a limit is kept under: IPv4 as it is, IPv6 by its /64.
fn source_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_a_mapped_ipv4_its_address() {
        let t0 = Instant::now();
        let mut sources = PerSource::new(16);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(sources.try_take(one, 2, 1, 2, t0));
        assert!(
            !sources.try_take(same_64, 1, 1, 2, t0),
            "the /64's budget is spent"
        );
        assert!(sources.try_take(other_64, 1, 1, 2, t0));
        let v4: IpAddr = "203.0.113.5".parse().unwrap();
        let mapped: IpAddr = "::ffff:203.0.113.5".parse().unwrap();
        assert!(sources.try_take(v4, 2, 1, 2, t0));
        assert!(
            !sources.try_take(mapped, 1, 1, 2, t0),
            "one address, two spellings"
        );
    }

    #[test]
    fn a_full_table_forgets_idle_sources_before_busy_ones() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut sources = PerSource::new(4);
        let busy: IpAddr = "203.0.113.1".parse().unwrap();
        for last in 2..5u8 {
            assert!(sources.try_take(IpAddr::from([203, 0, 113, last]), 1, 1, 3, t0));
        }
        // busy spends its burst now; the three others have been idle long
        // enough to be full again.
        for _ in 0..3 {
            assert!(sources.try_take(busy, 1, 1, 3, later));
        }
        assert!(sources.try_take(IpAddr::from([203, 0, 113, 9]), 1, 1, 3, later));
        assert_eq!(
            sources.len(),
            2,
            "the idle ones went, busy and the new one stay"
        );
        assert!(
            !sources.try_take(busy, 1, 1, 3, later),
            "busy kept its spent bucket"
        );
    }

    #[test]
    fn each_source_has_its_own_bucket_and_the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut sources = PerSource::new(4);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        for _ in 0..3 {
            assert!(sources.try_take(a, 1, 1, 3, t0));
        }
        assert!(!sources.try_take(a, 1, 1, 3, t0), "a's burst is spent");
        assert!(sources.try_take(b, 1, 1, 3, t0), "b is not charged for a");
        // A flood of addresses: the table never passes its bound, and idle
        // buckets (full again) go first.
        for i in 0..100u32 {
            let source = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            assert!(sources.try_take(source, 1, 1, 3, t0 + Duration::from_secs(10)));
            assert!(sources.len() <= 4);
        }
        assert!(sources.try_take(a, 1, 0, 0, t0), "rate 0: no limit");
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(t0);
        for _ in 0..100 {
            assert_eq!(bucket.take(1, 20, 100, t0), Duration::ZERO);
        }
        // The 101st waits one token's time, the 102nd two.
        assert_eq!(bucket.take(1, 20, 100, t0), Duration::from_millis(50));
        assert_eq!(bucket.take(1, 20, 100, t0), Duration::from_millis(100));
        // A second later 20 tokens came back: the debt of 2 is paid and 18
        // pass at once.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..18 {
            assert_eq!(bucket.take(1, 20, 100, t1), Duration::ZERO);
        }
        assert!(bucket.take(1, 20, 100, t1) > Duration::ZERO);
    }

    #[test]
    fn an_idle_bucket_refills_only_to_its_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(t0);
        assert_eq!(bucket.take(10, 10, 10, t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.take(10, 10, 10, later), Duration::ZERO);
        assert_eq!(bucket.take(1, 10, 10, later), Duration::from_millis(100));
    }

    #[test]
    fn rate_zero_is_no_limit_and_time_never_runs_backwards() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(t0 + Duration::from_secs(1));
        assert_eq!(bucket.take(1_000_000, 0, 1, t0), Duration::ZERO);
        assert_eq!(bucket.take(1, 1, 1, t0), Duration::ZERO);
        assert_eq!(bucket.take(1, 1, 1, t0), Duration::from_secs(1));
    }

    #[test]
    fn try_take_refuses_without_going_into_debt() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(t0);
        for _ in 0..5 {
            assert!(bucket.try_take(1, 1, 5, t0));
        }
        // Refusals take nothing: a flood does not push the next token away.
        for _ in 0..100 {
            assert!(!bucket.try_take(1, 1, 5, t0));
        }
        assert!(bucket.try_take(1, 1, 5, t0 + Duration::from_secs(1)));
        assert!(!bucket.try_take(1, 1, 5, t0 + Duration::from_secs(1)));
        assert!(bucket.try_take(1, 0, 0, t0), "rate 0: no limit");
    }
}
