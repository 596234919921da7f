//! Scenario b: latency at a fixed offered rate. The publisher sends evenly
//! spaced messages, each stamped with its send time; every subscriber
//! records arrival minus stamp. The first half second is a warm-up and is
//! not recorded.

use std::time::Duration;

use crate::error::BenchError;
use crate::load::{self, Settings};
use crate::protocol::Protocol;
use crate::publisher::Pace;
use crate::subscriber::Role;

/// Not recorded at the start.
const WARM_UP: Duration = Duration::from_millis(500);
/// How long the subscribers may take to catch up after the last publish.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// One latency run.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Subscribers.
    pub subscribers: usize,
    /// The offered rate, msgs/s.
    pub offered: u64,
    /// The rate the publisher achieved.
    pub achieved: f64,
    /// Latencies recorded.
    pub samples: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Why deliveries are missing, if they are.
    pub note: Option<String>,
}

/// Offers `rate` msgs/s for `duration` (plus the warm-up) to `subscribers`.
pub async fn run<P: Protocol>(
    proto: &P,
    subscribers: usize,
    rate: u64,
    duration: Duration,
    settings: Settings,
) -> Result<Latency, BenchError> {
    let warm_up = messages_in(rate, WARM_UP);
    let messages = warm_up + messages_in(rate, duration);
    let roles = vec![
        Role::Reader {
            expected: messages,
            latency_from: Some(warm_up),
        };
        subscribers
    ];
    let mut load = load::setup(proto, &[&roles], settings).await?;
    let readers = load.readers(&[]);
    let limit = (WARM_UP + duration) * 2;
    let publishing = load.publish(proto, messages, Pace::Rate { per_second: rate }, limit)?;
    let published = publishing.finished().await;
    if published.is_ok() {
        load.wait_delivered(&readers, messages, CATCH_UP_LIMIT)
            .await;
    }
    let outcomes = load.finish(proto).await;
    let published = published?;
    let delivered: u64 = outcomes.iter().map(|outcome| outcome.delivered).sum();
    let expected = published.sent * subscribers as u64;
    let note = (delivered < expected).then(|| {
        let why = load::first_error(&outcomes).unwrap_or_else(|| "no error reported".to_owned());
        format!("{delivered} of {expected} deliveries: {why}")
    });
    let mut latencies: Vec<u64> = outcomes
        .into_iter()
        .flat_map(|outcome| outcome.latencies_ns)
        .collect();
    let seconds = published.last_ns.saturating_sub(published.first_ns) as f64 / 1e9;
    Ok(Latency {
        subscribers,
        offered: rate,
        achieved: if seconds > 0.0 {
            published.sent as f64 / seconds
        } else {
            0.0
        },
        samples: latencies.len(),
        p50_us: percentile_us(&mut latencies, 0.50),
        p99_us: percentile_us(&mut latencies, 0.99),
        p999_us: percentile_us(&mut latencies, 0.999),
        note,
    })
}

fn messages_in(rate: u64, duration: Duration) -> u64 {
    u64::try_from(u128::from(rate) * duration.as_millis() / 1000).unwrap_or(u64::MAX)
}

/// The `q` quantile (nearest rank) in µs; NaN when there are no samples.
fn percentile_us(samples: &mut [u64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    let (_, value, _) = samples.select_nth_unstable(rank);
    *value as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=100).rev().map(|us| us * 1000).collect();
        assert_eq!(percentile_us(&mut samples, 0.50), 50.0);
        assert_eq!(percentile_us(&mut samples, 0.99), 99.0);
        assert_eq!(percentile_us(&mut samples, 1.0), 100.0);
        assert!(percentile_us(&mut [], 0.5).is_nan());
        assert_eq!(messages_in(10_000, Duration::from_millis(500)), 5_000);
    }
}
