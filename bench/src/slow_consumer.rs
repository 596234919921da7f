//! Scenario c: a subscriber that stops reading. N - 1 subscribers read, one
//! never does; the publisher floods (within the window of the readers). The
//! scenario watches the state of the server's side of the stalled connection
//! (`tcp_state.rs`) and notes when the server closes it, and how many
//! messages the readers got until then. A second run without the stalled
//! subscriber, over the same time, is the yardstick for the readers' rate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::load::{self, Load, Settings};
use crate::protocol::Protocol;
use crate::publisher::Pace;
use crate::subscriber::Role;
use crate::tcp_state::{self, TcpStateProbe};

/// How long the stalled subscriber is watched at most.
pub const WATCH_LIMIT: Duration = Duration::from_secs(15);
/// How often the stalled connection's state is looked up.
const WATCH_POLL: Duration = Duration::from_millis(10);
/// The yardstick run lasts as long as the stall did, but no longer than this.
const YARDSTICK_LIMIT: Duration = Duration::from_secs(5);

/// One slow-consumer run.
#[derive(Debug, Clone)]
pub struct SlowConsumer {
    /// Subscribers, the stalled one included.
    pub subscribers: usize,
    /// From the first publish until the server closed the stalled
    /// subscriber; `None`: not within [`WATCH_LIMIT`].
    pub cut_off: Option<Duration>,
    /// The readers' delivered msgs/s while the stalled one was connected.
    pub readers_rate: f64,
    /// The same readers' msgs/s without a stalled subscriber, over as long.
    pub yardstick_rate: f64,
}

/// Runs the stall, then the yardstick.
pub async fn run<P: Protocol>(
    proto: &P,
    subscribers: usize,
    settings: Settings,
) -> Result<SlowConsumer, BenchError> {
    let readers = subscribers.saturating_sub(1).max(1);
    let reading = vec![
        Role::Reader {
            expected: u64::MAX,
            latency_from: None,
        };
        readers
    ];
    // The stalled subscriber connects last, so that no login after its own
    // sends it anything before the publisher starts.
    let stalled_group = [Role::Stalled];
    let mut load = load::setup(proto, &[&reading, &stalled_group], settings).await?;
    let (server, stalled) = match (proto.addr(), load.subscribers[readers].local_addr) {
        (SocketAddr::V4(server), SocketAddr::V4(stalled)) => (server, stalled),
        _ => {
            load.finish(proto).await;
            return Err(BenchError::Usage(
                "the slow-consumer run watches IPv4 connections only; use 127.0.0.1".to_owned(),
            ));
        }
    };
    let mut probe = TcpStateProbe::new()?;
    let mut open = move || Ok(probe.state(server, stalled)? == Some(tcp_state::ESTABLISHED));
    if !open()? {
        load.finish(proto).await;
        return Err(BenchError::protocol(
            P::NAME,
            "the server closed the stalled subscriber before anything was published",
        ));
    }
    let watch = flood_and_watch(proto, &mut load, readers, settings, WATCH_LIMIT, open).await;
    load.finish(proto).await;
    let (cut_off, watched, delivered) = watch?;

    let mut yardstick = load::setup(proto, &[&reading], settings).await?;
    let same_time = watched.min(YARDSTICK_LIMIT);
    let measured = flood_and_watch(proto, &mut yardstick, readers, settings, same_time, || {
        Ok(true)
    })
    .await;
    yardstick.finish(proto).await;
    let (_, measured, yardstick_delivered) = measured?;

    Ok(SlowConsumer {
        subscribers,
        cut_off,
        readers_rate: rate(delivered, watched),
        yardstick_rate: rate(yardstick_delivered, measured),
    })
}

fn rate(delivered: u64, time: Duration) -> f64 {
    delivered as f64 / time.as_secs_f64().max(1e-9)
}

/// Floods until `still_open` says no or `limit` passes; returns when it said
/// no (if it did), how long was watched, and the deliveries to the first
/// `readers` subscribers by then.
async fn flood_and_watch<P: Protocol>(
    proto: &P,
    load: &mut Load,
    readers: usize,
    settings: Settings,
    limit: Duration,
    mut still_open: impl FnMut() -> Result<bool, BenchError>,
) -> Result<(Option<Duration>, Duration, u64), BenchError> {
    let stalled: Vec<usize> = (readers..load.subscribers.len()).collect();
    let progress = load.readers(&stalled);
    let pace = Pace::Flood {
        window: settings.window,
        readers: progress.clone(),
    };
    let start = Instant::now();
    let publishing = load.publish(proto, u64::MAX, pace, limit + Duration::from_secs(1))?;
    let watched = loop {
        tokio::time::sleep(WATCH_POLL).await;
        let elapsed = start.elapsed();
        match still_open() {
            Ok(false) => break Ok((Some(elapsed), elapsed)),
            Ok(true) if elapsed >= limit || publishing.task.is_finished() => {
                break Ok((None, elapsed));
            }
            Ok(true) => {}
            Err(error) => break Err(error),
        }
    };
    let delivered = progress.iter().map(|p| p.delivered()).sum();
    publishing
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    publishing.finished().await?;
    let (cut_off, watched) = watched?;
    Ok((cut_off, watched, delivered))
}
