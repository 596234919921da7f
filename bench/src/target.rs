//! The servers under test as one type, so the scenarios can take turns over
//! them: each method runs one scenario, generic over [`Protocol`], against
//! whichever server this is.

use std::time::Duration;

use crate::error::BenchError;
use crate::latency::{self, Latency};
use crate::load::Settings;
use crate::memory::{self, Memory};
use crate::meshd::{Meshd, MeshdCluster, MeshdTls};
use crate::nats::Nats;
use crate::protocol::Protocol;
use crate::redis::Redis;
use crate::slow_consumer::{self, SlowConsumer};
use crate::throughput::{self, Throughput};

/// One of the servers.
#[derive(Debug, Clone)]
pub enum Target {
    /// meshd's chat role.
    Meshd(Meshd),
    /// meshd's chat role over TLS.
    MeshdTls(MeshdTls),
    /// The chat of a meshd cluster's hubs.
    MeshdCluster(MeshdCluster),
    /// nats-server.
    Nats(Nats),
    /// redis-server.
    Redis(Redis),
}

/// A server and, when known, its process id (for its memory).
#[derive(Debug, Clone)]
pub struct Server {
    target: Target,
    /// The server's process id.
    pub pid: Option<u32>,
}

/// Runs `$call` with `$proto` bound to the concrete client of `$target`.
macro_rules! with_proto {
    ($target:expr, $proto:ident => $call:expr) => {
        match $target {
            Target::Meshd($proto) => $call,
            Target::MeshdTls($proto) => $call,
            Target::MeshdCluster($proto) => $call,
            Target::Nats($proto) => $call,
            Target::Redis($proto) => $call,
        }
    };
}

impl Server {
    /// `target`, with process id `pid`.
    pub fn new(target: Target, pid: Option<u32>) -> Server {
        Server { target, pid }
    }

    /// `meshd`, `nats` or `redis`.
    pub fn name(&self) -> &'static str {
        match self.target {
            Target::Meshd(_) => Meshd::NAME,
            Target::MeshdTls(_) => MeshdTls::NAME,
            Target::MeshdCluster(_) => MeshdCluster::NAME,
            Target::Nats(_) => Nats::NAME,
            Target::Redis(_) => Redis::NAME,
        }
    }

    /// See [`throughput::run`].
    pub async fn throughput(
        &self,
        subscribers: usize,
        messages: u64,
        settings: Settings,
    ) -> Result<Throughput, BenchError> {
        with_proto!(&self.target, proto => throughput::run(proto, subscribers, messages, settings).await)
    }

    /// See [`latency::run`].
    pub async fn latency(
        &self,
        subscribers: usize,
        rate: u64,
        duration: Duration,
        settings: Settings,
    ) -> Result<Latency, BenchError> {
        with_proto!(&self.target, proto => latency::run(proto, subscribers, rate, duration, settings).await)
    }

    /// See [`slow_consumer::run`].
    pub async fn slow_consumer(
        &self,
        subscribers: usize,
        settings: Settings,
    ) -> Result<SlowConsumer, BenchError> {
        with_proto!(&self.target, proto => slow_consumer::run(proto, subscribers, settings).await)
    }

    /// See [`memory::run`].
    pub async fn memory(
        &self,
        pid: u32,
        clients: usize,
        settings: Settings,
    ) -> Result<Memory, BenchError> {
        with_proto!(&self.target, proto => memory::run(proto, pid, clients, settings).await)
    }
}
