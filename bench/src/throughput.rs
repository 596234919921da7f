//! Scenario a: delivered messages per second. One publisher floods (within
//! the window), N subscribers count; the rate is every delivery divided by
//! the time from the first publish to the last delivery.

use std::time::Duration;

use crate::error::BenchError;
use crate::load::{self, Settings};
use crate::protocol::Protocol;
use crate::publisher::Pace;
use crate::subscriber::Role;

/// How long a run may publish at most; a healthy one takes seconds.
const PUBLISH_LIMIT: Duration = Duration::from_secs(60);
/// How long the subscribers may take to catch up after the last publish.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

/// One throughput run.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// Subscribers that read.
    pub subscribers: usize,
    /// Messages published.
    pub published: u64,
    /// Deliveries counted, over all subscribers.
    pub delivered: u64,
    /// First publish to last delivery.
    pub seconds: f64,
    /// `delivered / seconds`.
    pub per_second: f64,
    /// How long the publisher waited for the slowest subscriber.
    pub window_wait: Duration,
    /// Subscribers the server closed before they had every message: cut
    /// off as slow consumers, or dropped for another reason.
    pub cut: usize,
    /// Why deliveries are missing, if they are.
    pub note: Option<String>,
}

/// Publishes `messages` to `subscribers` subscribers.
pub async fn run<P: Protocol>(
    proto: &P,
    subscribers: usize,
    messages: u64,
    settings: Settings,
) -> Result<Throughput, BenchError> {
    let roles = vec![
        Role::Reader {
            expected: messages,
            latency_from: None,
        };
        subscribers
    ];
    let mut load = load::setup(proto, &[&roles], settings).await?;
    let readers = load.readers(&[]);
    let pace = Pace::Flood {
        window: settings.window,
        readers: readers.clone(),
    };
    let publishing = load.publish(proto, messages, pace, PUBLISH_LIMIT)?;
    let published = publishing.finished().await;
    if published.is_ok() {
        load.wait_delivered(&readers, messages, CATCH_UP_LIMIT)
            .await;
    }
    let last_ns = readers.iter().map(|r| r.last_ns()).max().unwrap_or(0);
    let outcomes = load.finish(proto).await;
    let published = published?;
    let delivered: u64 = outcomes.iter().map(|outcome| outcome.delivered).sum();
    let cut = outcomes
        .iter()
        .filter(|outcome| outcome.closed_by_server)
        .count();
    let seconds = last_ns.saturating_sub(published.first_ns) as f64 / 1e9;
    let expected = published.sent * subscribers as u64;
    let note = (delivered < expected || published.sent < messages).then(|| {
        let why = load::first_error(&outcomes).unwrap_or_else(|| "no error reported".to_owned());
        format!(
            "{delivered} of {expected} deliveries, {} of {messages} published: {why}",
            published.sent
        )
    });
    Ok(Throughput {
        subscribers,
        published: published.sent,
        delivered,
        seconds,
        per_second: if seconds > 0.0 {
            delivered as f64 / seconds
        } else {
            0.0
        },
        window_wait: published.window_wait,
        cut,
        note,
    })
}
