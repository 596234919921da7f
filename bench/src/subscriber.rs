//! Subscribers: connecting many at once, and the task each one runs.
//!
//! [`connect`] sets up to `concurrency` connections up at a time (a meshd
//! login costs ~55 ms of argon2 and meshd allows 10 s to log in, so an
//! unbounded storm would time out) and spawns each subscriber's task as soon
//! as it is connected, so that nothing a server sends in the meantime (meshd's
//! `JOIN` lines) piles up unread. A task reads, parses and counts messages
//! until it has its expected count, its stop token fires, or the server
//! closes it; it publishes its progress through atomics that the publisher
//! and the scenarios read while it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::error::{BenchError, excerpt};
use crate::protocol::{Frame, Protocol};

/// Read buffer of a counting subscriber: one read takes ~800 messages.
const READ_BUFFER: usize = 64 * 1024;

/// What a subscriber does once connected.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Reads and counts messages until it has `expected` of them. With
    /// `latency_from`, records the latency of every message from that
    /// 0-based delivery on (the ones before are a warm-up).
    Reader {
        /// Messages after which it stops.
        expected: u64,
        /// The first delivery whose latency is recorded.
        latency_from: Option<u64>,
    },
    /// Never reads: a client that stopped reading.
    Stalled,
}

/// A subscriber's progress while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    delivered: AtomicU64,
    last_ns: AtomicU64,
}

impl Progress {
    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// When the latest message arrived (ns since the bench epoch; 0: none).
    pub fn last_ns(&self) -> u64 {
        self.last_ns.load(Ordering::Relaxed)
    }
}

/// What a subscriber reports when it ends.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages delivered.
    pub delivered: u64,
    /// Latencies in ns, if recorded.
    pub latencies_ns: Vec<u64>,
    /// The server closed the connection before the subscriber was done.
    pub closed_by_server: bool,
    /// An error the server sent or the client hit, if any.
    pub error: Option<String>,
}

/// One running subscriber.
#[derive(Debug)]
pub struct Subscriber {
    /// Its live progress.
    pub progress: Arc<Progress>,
    /// Its task.
    pub task: JoinHandle<Outcome>,
    /// Its local address: the server's side of the connection is found by it.
    pub local_addr: SocketAddr,
}

/// Connects one subscriber per role, at most `concurrency` setups at a time,
/// and starts each at once. Returns the subscribers in role order and the
/// connections that failed.
pub async fn connect<P: Protocol>(
    proto: &P,
    roles: &[Role],
    concurrency: usize,
    stop: &CancellationToken,
) -> (Vec<Subscriber>, Vec<BenchError>) {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut setups = JoinSet::new();
    for (index, &role) in roles.iter().enumerate() {
        let proto = proto.clone();
        let slots = slots.clone();
        let stop = stop.clone();
        setups.spawn(async move {
            let _permit = slots.acquire_owned().await;
            let connected = proto.subscriber().await;
            (
                index,
                connected.and_then(|conn| start(proto, conn, role, stop)),
            )
        });
    }
    let mut started: Vec<Option<Subscriber>> = roles.iter().map(|_| None).collect();
    let mut failures = Vec::new();
    while let Some(joined) = setups.join_next().await {
        match joined {
            Ok((index, Ok(subscriber))) => started[index] = Some(subscriber),
            Ok((_, Err(error))) => failures.push(error),
            Err(join) => failures.push(BenchError::Usage(format!("subscriber setup: {join}"))),
        }
    }
    (started.into_iter().flatten().collect(), failures)
}

/// Spawns the task of one connected subscriber.
fn start<P: Protocol>(
    proto: P,
    conn: crate::protocol::Connection,
    role: Role,
    stop: CancellationToken,
) -> Result<Subscriber, BenchError> {
    let local_addr = conn.stream.local_addr().map_err(BenchError::io(format!(
        "{}: reading a local address",
        P::NAME
    )))?;
    let progress = Arc::new(Progress::default());
    let task = tokio::spawn(run(proto, conn, role, progress.clone(), stop));
    Ok(Subscriber {
        progress,
        task,
        local_addr,
    })
}

/// A subscriber's life: its role, then a polite close.
async fn run<P: Protocol>(
    proto: P,
    mut conn: crate::protocol::Connection,
    role: Role,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Outcome {
    let outcome = match role {
        Role::Stalled => {
            stop.cancelled().await;
            Outcome::default()
        }
        Role::Reader {
            expected,
            latency_from,
        } => {
            conn.buf.grow(READ_BUFFER);
            read(&proto, &mut conn, expected, latency_from, &progress, &stop).await
        }
    };
    conn.close(&proto).await;
    outcome
}

/// The hot loop: read a chunk, count the messages in it.
async fn read<P: Protocol>(
    proto: &P,
    conn: &mut crate::protocol::Connection,
    expected: u64,
    latency_from: Option<u64>,
    progress: &Progress,
    stop: &CancellationToken,
) -> Outcome {
    let mut outcome = Outcome::default();
    while outcome.delivered < expected {
        // Everything in the buffer arrived by the read that just returned (or
        // by the handshake's read-ahead), so one clock reading serves it all.
        let now = clock::now_ns();
        let before = outcome.delivered;
        let mut pings = 0;
        let mut at = 0;
        let data = conn.buf.data();
        loop {
            match proto.parse(&data[at..]) {
                Ok(Some((frame, len))) => {
                    at += len;
                    match frame {
                        Frame::Message(payload) => {
                            if latency_from.is_some_and(|from| outcome.delivered >= from) {
                                record_latency(payload, now, &mut outcome);
                            }
                            outcome.delivered += 1;
                        }
                        Frame::Ping => pings += 1,
                        Frame::Error(text) => outcome.error = Some(excerpt(text)),
                        Frame::Other(_) => {}
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    outcome.error = Some(error.to_string());
                    return outcome;
                }
            }
        }
        conn.buf.consume(at);
        if outcome.delivered > before {
            progress.last_ns.store(now, Ordering::Relaxed);
            progress
                .delivered
                .store(outcome.delivered, Ordering::Relaxed);
        }
        for _ in 0..pings {
            if let Err(error) = conn.send(P::NAME, proto.pong()).await {
                outcome.error = Some(error.to_string());
                return outcome;
            }
        }
        if outcome.delivered >= expected {
            break;
        }
        let read = tokio::select! {
            () = stop.cancelled() => break,
            read = conn.buf.fill(&mut conn.stream) => read,
        };
        match read {
            Ok(0) => {
                outcome.closed_by_server = true;
                break;
            }
            Ok(_) => {}
            Err(error) => {
                outcome.closed_by_server = true;
                outcome.error = Some(error.to_string());
                break;
            }
        }
    }
    outcome
}

fn record_latency(payload: &[u8], now_ns: u64, outcome: &mut Outcome) {
    match clock::read_stamp(payload) {
        Some(sent) => outcome.latencies_ns.push(now_ns.saturating_sub(sent)),
        None => outcome.error = Some(format!("payload without a stamp: {}", excerpt(payload))),
    }
}

/// Stops every subscriber and collects their outcomes.
pub async fn finish(subscribers: Vec<Subscriber>, stop: &CancellationToken) -> Vec<Outcome> {
    stop.cancel();
    let mut outcomes = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        outcomes.push(subscriber.task.await.unwrap_or_else(|join| Outcome {
            error: Some(format!("subscriber task failed: {join}")),
            ..Outcome::default()
        }));
    }
    outcomes
}
