//! chat-fanout: meshd's chat fan-out measured against nats-server and
//! redis-server pub/sub, with the same load in the same run (issue 4, item 6).
//!
//! One publisher and N subscribers on loopback, 64-byte messages. For each
//! server given on the command line it measures, scenario by scenario so
//! that the servers take turns under the same machine conditions:
//! - idle clients (`memory.rs`): server memory per idle client, and whether
//!   K clients at once all get a message; first, while the servers are fresh;
//! - throughput (`throughput.rs`): delivered messages/s for each N;
//! - latency (`latency.rs`): p50/p99 at a fixed offered rate;
//! - slow consumer (`slow_consumer.rs`): when a client that stops reading is
//!   cut off, and what that costs the others;
//! - burst (`throughput.rs` without a window): one publisher writes
//!   thousands of messages at once to N readers; how many readers the
//!   server cuts off, and how long until the rest have everything.
//!
//! Then it prints Markdown tables with the ratios of meshd to the others.
//! The clients (`meshd.rs`, `nats.rs`, `redis.rs`) are small hand-written
//! implementations of one [`protocol::Protocol`] trait; subscribers are
//! tokio tasks (`subscriber.rs`), the publisher a blocking thread
//! (`publisher.rs`). Every wait is bounded and the run ends by itself.
//! `bench/chat-fanout.sh` starts the servers and runs this; see
//! docs/benchmarks.md.

mod clock;
mod error;
mod latency;
mod load;
mod logins;
mod memory;
mod meshd;
mod nats;
mod procfs;
mod propagation;
mod protocol;
mod publisher;
mod redis;
mod report;
mod slow_consumer;
mod subscriber;
mod target;
mod tcp_state;
mod throughput;
mod tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use error::BenchError;
use load::Settings;
use report::{Runs, TargetResults};
use target::{Server, Target};

/// Measures chat fan-out: meshd against nats-server and redis-server.
#[derive(Debug, Parser)]
#[command(name = "chat-fanout", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark against the servers given and print Markdown tables.
    Run(Box<RunArgs>),
    /// Print a free TCP port on 127.0.0.1 (used by chat-fanout.sh).
    FreePort,
    /// A login storm: N clients log in to meshd at once; prints one
    /// Markdown row (used by login-storm.sh).
    Logins(LoginsArgs),
    /// How long a registration at one hub of a cluster takes to appear at
    /// another, beside one message through nats-server; prints a Markdown
    /// table (used by cluster.sh).
    Propagation(PropagationArgs),
}

#[derive(Debug, Args)]
struct PropagationArgs {
    /// The hub that takes the registrations: its signaling address.
    #[arg(long, value_name = "ADDR")]
    from: SocketAddr,
    /// The hub whose list is watched.
    #[arg(long, value_name = "ADDR")]
    to: SocketAddr,
    /// nats-server, the reference.
    #[arg(long, value_name = "ADDR")]
    nats: SocketAddr,
    /// Samples of each kind.
    #[arg(long, default_value_t = 200)]
    count: usize,
}

#[derive(Debug, Args)]
struct LoginsArgs {
    /// meshd's chat server, IP:PORT on loopback.
    #[arg(long, value_name = "ADDR")]
    meshd: SocketAddr,
    /// meshd's process id, for its memory.
    #[arg(long, value_name = "PID")]
    meshd_pid: u32,
    /// The chat user every client logs in as.
    #[arg(long, default_value = "bench")]
    user: String,
    /// Its password.
    #[arg(long, env = "CHAT_FANOUT_PASSWORD", hide_env_values = true)]
    password: String,
    /// Clients logging in at once.
    #[arg(long, default_value_t = 200)]
    logins: usize,
    /// The row's label.
    #[arg(long, default_value = "meshd")]
    label: String,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// meshd's chat server, IP:PORT on loopback.
    #[arg(long, value_name = "ADDR")]
    meshd: Option<SocketAddr>,
    /// meshd's process id, for the memory figures.
    #[arg(long, value_name = "PID")]
    meshd_pid: Option<u32>,
    /// The chat user every connection logs in as.
    #[arg(long, default_value = "bench")]
    user: String,
    /// Its password.
    #[arg(long, env = "CHAT_FANOUT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A meshd with `[chat] tls = true`, IP:PORT on loopback, measured as a
    /// server of its own (`meshd-tls`) with the same user and password.
    #[arg(long, value_name = "ADDR", requires = "meshd_tls_fingerprint")]
    meshd_tls: Option<SocketAddr>,
    /// Its process id.
    #[arg(long, value_name = "PID")]
    meshd_tls_pid: Option<u32>,
    /// Its certificate's fingerprint, from `meshctl status` (`sha256:...`).
    #[arg(long, value_name = "sha256:HEX")]
    meshd_tls_fingerprint: Option<String>,
    /// The chat servers of a meshd cluster's hubs, IP:PORT,... on loopback,
    /// measured together as one server (`meshd-cluster`): the publisher at
    /// the first, subscribers at each in turn; same user and password.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    meshd_cluster: Vec<SocketAddr>,
    /// nats-server, IP:PORT on loopback.
    #[arg(long, value_name = "ADDR")]
    nats: Option<SocketAddr>,
    /// nats-server's process id.
    #[arg(long, value_name = "PID")]
    nats_pid: Option<u32>,
    /// redis-server, IP:PORT on loopback.
    #[arg(long, value_name = "ADDR")]
    redis: Option<SocketAddr>,
    /// redis-server's process id.
    #[arg(long, value_name = "PID")]
    redis_pid: Option<u32>,
    /// Subscriber counts of the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    subscribers: Vec<usize>,
    /// Runs of each throughput and latency measurement; the tables show the
    /// median. The two cores are shared by the servers and the clients, and
    /// single runs vary by tens of percent.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    repeat: u32,
    /// Deliveries per throughput run: each publishes this / N messages.
    #[arg(long, default_value_t = 15_000_000)]
    deliveries: u64,
    /// Offered rate of the latency run, msgs/s.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Subscribers of the latency run.
    #[arg(long, default_value_t = 100)]
    latency_subscribers: usize,
    /// Seconds the latency run records (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3)]
    latency_seconds: u64,
    /// Subscribers of the burst run.
    #[arg(long, default_value_t = 1000)]
    burst_subscribers: usize,
    /// Messages the burst run's publisher writes at once.
    #[arg(long, default_value_t = 20_000)]
    burst_messages: u64,
    /// Subscribers of the slow-consumer run, the stalled one included.
    #[arg(long, default_value_t = 100)]
    slow_subscribers: usize,
    /// Idle clients connected at once for the memory figures (K).
    #[arg(long, default_value_t = 1000)]
    idle_clients: usize,
    /// Scenarios to run, in this order whatever the order given.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "memory,throughput,latency,slow,burst"
    )]
    scenarios: Vec<Scenario>,
    /// Messages the publisher may be ahead of the slowest subscriber. meshd's
    /// room holds 8192 lines; staying under it keeps the measurement about
    /// sustained rate, not about its slow-consumer policy.
    #[arg(long, default_value_t = 4096)]
    window: u64,
    /// Connection setups (meshd logins) in flight at once.
    #[arg(long, default_value_t = 32)]
    login_concurrency: usize,
}

/// The four measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Idle clients: memory per client and K clients at once.
    Memory,
    /// Delivered messages/s for each subscriber count.
    Throughput,
    /// p50/p99 at a fixed offered rate.
    Latency,
    /// A subscriber that stops reading.
    Slow,
    /// A publisher that writes everything at once, with no window.
    Burst,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FreePort => free_port(),
        Command::Logins(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(BenchError::io("starting the tokio runtime"))
            .and_then(|runtime| {
                runtime.block_on(async {
                    raise_open_files();
                    let storm = logins::storm(
                        args.meshd,
                        args.meshd_pid,
                        &args.user,
                        &args.password,
                        args.logins,
                    )
                    .await?;
                    println!("{}", storm.row(&args.label));
                    Ok(())
                })
            }),
        Command::Propagation(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(BenchError::io("starting the tokio runtime"))
            .and_then(|runtime| {
                runtime.block_on(async {
                    for addr in [args.from, args.to, args.nats] {
                        loopback(addr)?;
                    }
                    let table = propagation::run(args.from, args.to, args.nats, args.count).await?;
                    print!("{table}");
                    Ok(())
                })
            }),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(BenchError::io("starting the tokio runtime"))
            .and_then(|runtime| runtime.block_on(run(*args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-fanout: {error}");
            ExitCode::FAILURE
        }
    }
}

fn free_port() -> Result<(), BenchError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("binding 127.0.0.1:0"))?;
    let addr = listener
        .local_addr()
        .map_err(BenchError::io("reading the bound address"))?;
    println!("{}", addr.port());
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), BenchError> {
    clock::epoch();
    raise_open_files();
    let servers = servers(&args)?;
    let settings = Settings {
        login_concurrency: args.login_concurrency,
        window: args.window,
    };
    let mut results: Vec<TargetResults> = servers
        .iter()
        .map(|server| TargetResults {
            name: server.name(),
            ..TargetResults::default()
        })
        .collect();

    let runs = |scenario| args.scenarios.contains(&scenario);
    for (server, result) in servers.iter().zip(&mut results) {
        if !runs(Scenario::Memory) {
            break;
        }
        let Some(pid) = server.pid else {
            eprintln!(
                "{}: no process id given; skipping the idle-clients run",
                server.name()
            );
            continue;
        };
        let what = format!(
            "{} idle clients",
            report::group_digits(args.idle_clients as u64)
        );
        result.memory = Some(
            step(
                server,
                &what,
                server.memory(pid, args.idle_clients, settings),
            )
            .await,
        );
    }
    if runs(Scenario::Throughput) {
        for &n in &args.subscribers {
            let messages = (args.deliveries / n.max(1) as u64).max(1);
            let mut series: Vec<Result<Runs<_>, String>> =
                servers.iter().map(|_| Ok(Runs(Vec::new()))).collect();
            // Repetitions take turns over the servers, so that a slow phase
            // of the machine does not fall on one server only.
            for repeat in 1..=args.repeat {
                for (server, runs) in servers.iter().zip(&mut series) {
                    let Ok(done) = runs else { continue };
                    let what = format!(
                        "throughput, {n} subscribers, {messages} messages, run {repeat} of {}",
                        args.repeat
                    );
                    match step(server, &what, server.throughput(n, messages, settings)).await {
                        Ok(t) => {
                            eprintln!(
                                "    {} published, {} delivered in {:.2} s: {}; the publisher waited {:.2} s for the slowest subscriber",
                                t.published,
                                t.delivered,
                                t.seconds,
                                report::rate(t.per_second),
                                t.window_wait.as_secs_f64(),
                            );
                            done.0.push(t);
                        }
                        Err(error) => *runs = Err(error),
                    }
                }
            }
            for (result, runs) in results.iter_mut().zip(series) {
                result.throughput.push(runs);
            }
        }
    }
    if runs(Scenario::Latency) {
        let duration = Duration::from_secs(args.latency_seconds);
        let mut series: Vec<Result<Runs<_>, String>> =
            servers.iter().map(|_| Ok(Runs(Vec::new()))).collect();
        for repeat in 1..=args.repeat {
            for (server, runs) in servers.iter().zip(&mut series) {
                let Ok(done) = runs else { continue };
                let what = format!(
                    "latency, {} msgs/s, {} subscribers, run {repeat} of {}",
                    args.latency_rate, args.latency_subscribers, args.repeat
                );
                let run = server.latency(
                    args.latency_subscribers,
                    args.latency_rate,
                    duration,
                    settings,
                );
                match step(server, &what, run).await {
                    Ok(l) => {
                        eprintln!(
                            "    p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
                            l.p50_us, l.p99_us, l.p999_us
                        );
                        done.0.push(l);
                    }
                    Err(error) => *runs = Err(error),
                }
            }
        }
        for (result, runs) in results.iter_mut().zip(series) {
            result.latency = Some(runs);
        }
    }
    if runs(Scenario::Slow) {
        for (server, result) in servers.iter().zip(&mut results) {
            let what = format!("slow consumer, {} subscribers", args.slow_subscribers);
            let run = server.slow_consumer(args.slow_subscribers, settings);
            result.slow = Some(step(server, &what, run).await);
        }
    }
    if runs(Scenario::Burst) {
        // No window: the publisher writes as fast as the server reads it,
        // as a flooding client does. What keeps the room whole is then the
        // server's own policy (meshd: the per-user rate, then slow readers).
        let burst = Settings {
            window: u64::MAX,
            ..settings
        };
        let (n, messages) = (args.burst_subscribers, args.burst_messages);
        // Every run is kept, failed ones too: without a flood limit a burst
        // may end in the server cutting the publisher itself, which the
        // table must show beside the runs that completed.
        let mut series: Vec<Vec<Result<throughput::Throughput, String>>> =
            servers.iter().map(|_| Vec::new()).collect();
        for repeat in 1..=args.repeat {
            for (server, runs) in servers.iter().zip(&mut series) {
                let what = format!(
                    "burst, {n} subscribers, {messages} messages at once, run {repeat} of {}",
                    args.repeat
                );
                let run = step(server, &what, server.throughput(n, messages, burst)).await;
                if let Ok(t) = &run {
                    eprintln!(
                        "    {} published, {} delivered in {:.2} s, {} subscribers cut",
                        t.published, t.delivered, t.seconds, t.cut,
                    );
                }
                runs.push(run);
            }
        }
        for (result, runs) in results.iter_mut().zip(series) {
            result.burst = runs;
        }
    }
    let counts = if runs(Scenario::Throughput) {
        args.subscribers.clone()
    } else {
        Vec::new()
    };
    print!("{}", report::render(&results, &counts));
    Ok(())
}

/// Runs one scenario against one server, with a line on stderr before and
/// after, and keeps the error as text for the report.
async fn step<T>(
    server: &Server,
    what: &str,
    scenario: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, String> {
    eprintln!("{}: {what}...", server.name());
    let started = std::time::Instant::now();
    let result = scenario.await.map_err(|error| error.to_string());
    match &result {
        Ok(_) => eprintln!("    done in {:.1} s", started.elapsed().as_secs_f64()),
        Err(error) => eprintln!("    failed: {error}"),
    }
    result
}

/// The servers named on the command line, meshd first; all on loopback.
fn servers(args: &RunArgs) -> Result<Vec<Server>, BenchError> {
    let mut servers = Vec::new();
    if let Some(addr) = args.meshd {
        let password = args.password.as_deref().ok_or_else(|| {
            BenchError::Usage(
                "--meshd needs the chat user's password: set CHAT_FANOUT_PASSWORD".to_owned(),
            )
        })?;
        servers.push(Server::new(
            Target::Meshd(meshd::Meshd::new(loopback(addr)?, &args.user, password)),
            args.meshd_pid,
        ));
    }
    if let Some(addr) = args.meshd_tls {
        let password = args.password.as_deref().ok_or_else(|| {
            BenchError::Usage(
                "--meshd-tls needs the chat user's password: set CHAT_FANOUT_PASSWORD".to_owned(),
            )
        })?;
        let fingerprint = args.meshd_tls_fingerprint.as_deref().unwrap_or_default();
        servers.push(Server::new(
            Target::MeshdTls(meshd::MeshdTls::new(
                loopback(addr)?,
                &args.user,
                password,
                fingerprint,
            )?),
            args.meshd_tls_pid,
        ));
    }
    if !args.meshd_cluster.is_empty() {
        let password = args.password.as_deref().ok_or_else(|| {
            BenchError::Usage(
                "--meshd-cluster needs the chat user's password: set CHAT_FANOUT_PASSWORD"
                    .to_owned(),
            )
        })?;
        let addrs = args
            .meshd_cluster
            .iter()
            .map(|addr| loopback(*addr))
            .collect::<Result<Vec<_>, _>>()?;
        servers.push(Server::new(
            Target::MeshdCluster(meshd::MeshdCluster::new(&addrs, &args.user, password)?),
            None,
        ));
    }
    if let Some(addr) = args.nats {
        servers.push(Server::new(
            Target::Nats(nats::Nats::new(loopback(addr)?)),
            args.nats_pid,
        ));
    }
    if let Some(addr) = args.redis {
        servers.push(Server::new(
            Target::Redis(redis::Redis::new(loopback(addr)?)),
            args.redis_pid,
        ));
    }
    if servers.is_empty() {
        return Err(BenchError::Usage(
            "no server to measure: give --meshd, --meshd-tls, --meshd-cluster, --nats and/or --redis".to_owned(),
        ));
    }
    Ok(servers)
}

/// The benchmark only ever talks to this machine.
fn loopback(addr: SocketAddr) -> Result<SocketAddr, BenchError> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(BenchError::Usage(format!(
            "{addr} is not a loopback address; the benchmark only connects to 127.0.0.1 or ::1"
        )))
    }
}

/// Raises this process's open-file limit to its hard limit: 1,000
/// subscribers, or 10,000 idle clients, are as many descriptors.
fn raise_open_files() {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => eprintln!("raised the open file limit from {soft} to {hard}"),
            Err(error) => eprintln!("cannot raise the open file limit from {soft}: {error}"),
        },
        Ok(_) => {}
        Err(error) => eprintln!("cannot read the open file limit: {error}"),
    }
}
