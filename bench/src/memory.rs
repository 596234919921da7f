//! Scenario d: memory per idle client, and whether K clients at once work.
//!
//! A small warm-up load first makes the server allocate what it allocates on
//! first use; then RSS is read (the baseline). K clients connect in two
//! halves and stay idle (they read whatever comes, such as meshd's `JOIN`
//! lines, and send nothing); RSS is read after each half. Two figures come
//! out: the growth over the baseline divided by K, everything the server
//! kept, and the growth over the second half divided by its clients, the
//! marginal cost of one more client once one-off costs are paid (meshd's
//! allocator keeps one argon2 block of 19 MiB in each of its per-thread
//! arenas, up to 8 per core, which the first hundreds of logins fill).
//! Finally one of the K publishes a single message and every other one must
//! receive it.

use std::time::Duration;

use crate::error::BenchError;
use crate::load::{self, Settings};
use crate::procfs;
use crate::protocol::Protocol;
use crate::publisher::Pace;
use crate::subscriber::Role;

/// Clients in the warm-up load.
const WARM_UP_CLIENTS: usize = 8;
/// How often, and how many times at most, RSS is read until it settles.
const SETTLE_POLL: Duration = Duration::from_millis(250);
const SETTLE_TRIES: usize = 20;
/// How long the one message may take to reach every client.
const DELIVERY_LIMIT: Duration = Duration::from_secs(20);

/// One idle-clients run.
#[derive(Debug, Clone)]
pub struct Memory {
    /// Clients that were meant to be connected at once, the publisher among
    /// them.
    pub clients: usize,
    /// Resident memory before they connected.
    pub rss_before: u64,
    /// Resident memory with the first half connected.
    pub rss_half: u64,
    /// Clients in the first half, the publisher among them.
    pub first_half: usize,
    /// Resident memory with all of them connected.
    pub rss_after: u64,
    /// Clients that received the one message, of `clients - 1`.
    pub received: usize,
}

impl Memory {
    /// Growth of resident memory over the baseline per client.
    pub fn per_client(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.clients.max(1) as f64
    }

    /// Growth of resident memory per client of the second half.
    pub fn marginal_per_client(&self) -> f64 {
        let second_half = self.clients.saturating_sub(self.first_half).max(1);
        self.rss_after.saturating_sub(self.rss_half) as f64 / second_half as f64
    }

    /// Whether every client got the message.
    pub fn all_received(&self) -> bool {
        self.received + 1 == self.clients
    }
}

/// Connects `clients` idle clients to the server with process id `pid`.
pub async fn run<P: Protocol>(
    proto: &P,
    pid: u32,
    clients: usize,
    settings: Settings,
) -> Result<Memory, BenchError> {
    let idle = Role::Reader {
        expected: u64::MAX,
        latency_from: None,
    };
    let warm_up = load::setup(proto, &[&[idle; WARM_UP_CLIENTS - 1]], settings).await?;
    warm_up.finish(proto).await;
    let rss_before = settled_rss(pid).await?;

    // The publisher is one of the K clients, and of the first half.
    let clients = clients.max(4);
    let first_half = clients / 2;
    let waiting = Role::Reader {
        expected: 1,
        latency_from: None,
    };
    let mut load = load::setup(proto, &[&vec![waiting; first_half - 1]], settings).await?;
    let rss_half = settled_rss(pid).await;
    let second = load
        .add(proto, &vec![waiting; clients - first_half], settings)
        .await;
    let rss_after = settled_rss(pid).await;
    if let Err(error) = second {
        load.finish(proto).await;
        return Err(error);
    }
    let readers = load.readers(&[]);
    let sent = match load.publish(proto, 1, Pace::Rate { per_second: 1 }, DELIVERY_LIMIT) {
        Ok(publishing) => publishing.finished().await.map(|published| published.sent),
        Err(error) => Err(error),
    };
    if matches!(sent, Ok(1)) {
        load.wait_delivered(&readers, 1, DELIVERY_LIMIT).await;
    }
    let received = readers.iter().filter(|r| r.delivered() >= 1).count();
    load.finish(proto).await;
    sent?;
    Ok(Memory {
        clients,
        rss_before,
        rss_half: rss_half?,
        first_half,
        rss_after: rss_after?,
        received,
    })
}

/// RSS once two readings in a row differ by under 0.5%, or the last of
/// [`SETTLE_TRIES`].
async fn settled_rss(pid: u32) -> Result<u64, BenchError> {
    let mut last = procfs::rss_bytes(pid)?;
    for _ in 0..SETTLE_TRIES {
        tokio::time::sleep(SETTLE_POLL).await;
        let now = procfs::rss_bytes(pid)?;
        if now.abs_diff(last) <= last / 200 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}
