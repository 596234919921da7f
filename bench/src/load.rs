//! Setting up one load: the publisher first, then the subscribers, then the
//! server's word that every subscriber is in. Every scenario starts here.
//!
//! The publisher is connected first and read from while the subscribers
//! connect: meshd tells it `JOIN` for each, and a client that left those
//! unread for the minutes 10,000 logins take would itself be cut off as slow.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::BenchError;
use crate::protocol::{Connection, Protocol};
use crate::publisher::{self, Pace, Plan, Published};
use crate::subscriber::{self, Outcome, Progress, Role, Subscriber};

/// Knobs shared by every scenario.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connection setups in flight at once.
    pub login_concurrency: usize,
    /// Messages the flooding publisher may be ahead of the slowest reader.
    pub window: u64,
}

/// A publisher and its subscribers, all set up.
#[derive(Debug)]
pub struct Load {
    /// The publisher's connection, until [`Load::publish`] takes it.
    publisher: Option<Connection>,
    /// The subscribers, in the order of the groups given to [`setup`].
    pub subscribers: Vec<Subscriber>,
    /// Stops every subscriber.
    stop: CancellationToken,
}

/// Connects the publisher and then each group of subscribers in turn (a
/// group after the previous one is complete).
pub async fn setup<P: Protocol>(
    proto: &P,
    groups: &[&[Role]],
    settings: Settings,
) -> Result<Load, BenchError> {
    let mut load = Load {
        publisher: Some(proto.publisher().await?),
        subscribers: Vec::new(),
        stop: CancellationToken::new(),
    };
    for group in groups {
        if let Err(error) = load.add(proto, group, settings).await {
            load.finish(proto).await;
            return Err(error);
        }
    }
    Ok(load)
}

impl Load {
    /// Connects one more group of subscribers, reading the publisher's
    /// connection meanwhile, and returns once the server confirmed them all.
    pub async fn add<P: Protocol>(
        &mut self,
        proto: &P,
        roles: &[Role],
        settings: Settings,
    ) -> Result<(), BenchError> {
        let publisher = self
            .publisher
            .as_mut()
            .ok_or_else(|| BenchError::Usage("the load's publisher already ran".to_owned()))?;
        let failed = CancellationToken::new();
        let connecting = async {
            let (started, failures) =
                subscriber::connect(proto, roles, settings.login_concurrency, &self.stop).await;
            if !failures.is_empty() {
                failed.cancel();
            }
            (started, failures)
        };
        let awaiting = async {
            tokio::select! {
                awaited = proto.await_subscribers(publisher, roles.len()) => awaited,
                // The failure itself is reported by `connecting`.
                () = failed.cancelled() => Ok(()),
            }
        };
        let ((started, failures), awaited) = tokio::join!(connecting, awaiting);
        self.subscribers.extend(started);
        match failures.into_iter().next() {
            Some(error) => Err(error),
            None => awaited,
        }
    }

    /// The progress of every subscriber but those listed in `except`.
    pub fn readers(&self, except: &[usize]) -> Vec<Arc<Progress>> {
        self.subscribers
            .iter()
            .enumerate()
            .filter(|(index, _)| !except.contains(index))
            .map(|(_, subscriber)| subscriber.progress.clone())
            .collect()
    }

    /// Starts publishing on a thread of the blocking pool.
    pub fn publish<P: Protocol>(
        &mut self,
        proto: &P,
        count: u64,
        pace: Pace,
        limit: Duration,
    ) -> Result<Publishing, BenchError> {
        let conn = self
            .publisher
            .take()
            .ok_or_else(|| BenchError::Usage("the load's publisher already ran".to_owned()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let plan = Plan {
            count,
            pace,
            limit,
            stop: stop.clone(),
        };
        let proto = proto.clone();
        let task = tokio::task::spawn_blocking(move || publisher::run(&proto, conn, &plan));
        Ok(Publishing { task, stop })
    }

    /// Waits, polling every 10 ms and at most `limit`, until every
    /// subscriber in `readers` delivered `expected` messages.
    pub async fn wait_delivered(&self, readers: &[Arc<Progress>], expected: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline
            && readers.iter().any(|reader| reader.delivered() < expected)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the subscribers, closes what is left, and returns their
    /// outcomes.
    pub async fn finish<P: Protocol>(mut self, proto: &P) -> Vec<Outcome> {
        if let Some(publisher) = self.publisher.take() {
            publisher.close(proto).await;
        }
        subscriber::finish(self.subscribers, &self.stop).await
    }
}

/// A publisher at work.
#[derive(Debug)]
pub struct Publishing {
    /// Its thread.
    pub task: JoinHandle<Result<Published, BenchError>>,
    /// Set to stop it early.
    pub stop: Arc<AtomicBool>,
}

impl Publishing {
    /// Waits for the publisher to finish.
    pub async fn finished(self) -> Result<Published, BenchError> {
        self.task
            .await
            .map_err(|join| BenchError::Usage(format!("the publisher thread failed: {join}")))?
    }
}

/// The first error any subscriber reported, for the notes under a table.
pub fn first_error(outcomes: &[Outcome]) -> Option<String> {
    outcomes.iter().find_map(|outcome| outcome.error.clone())
}
