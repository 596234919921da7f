//! soak: meshd under traffic and injected faults for N minutes, on this
//! machine only (issue 12, section 4).
//!
//! `bench/soak.sh` is the one command: it creates a network namespace with
//! only loopback in it, builds the release binaries, and runs this driver
//! inside the namespace, where everything the driver starts runs too. The
//! driver starts one hub (signaling and chat) and N mesh devices, sends
//! acknowledged messages between the devices, drives chat clients against
//! the hub, injects a fault every 10-30 s (seeded), and at the end checks:
//!
//! 1. every acknowledged message was received exactly once;
//! 2. no panic, crash, or error-level log line that no fault explains;
//! 3. RSS and open fds of every meshd grew less than 10% over the compared
//!    window;
//! 4. every running control socket answered `status` within 1 s.
//!
//! The report (Markdown) goes to stdout, progress to stderr; the exit status
//! is 0 only if every check held. docs/testing.md ("Soak") explains the
//! accounting and the checks.
//!
//! - `cluster.rs`: the meshd processes, their configs, starts, kills,
//!   freezes and stops, and their control sockets.
//! - `traffic.rs`: the senders and the ledger of every message.
//! - `inbox.rs`: follow streams and snapshots of each device's inbox.
//! - `chat.rs`: the chat clients.
//! - `faults.rs`: the fault schedule and the thread that injects it.
//! - `fill.rs`: filling each device's bounded caches before its memory is
//!   measured.
//! - `monitor.rs`: crashes, RSS and fd samples, control-socket probes.
//! - `logs.rs`: reading the meshd logs.
//! - `report.rs`: accounting, the checks and the report.

mod accounting;
mod chat;
mod cluster;
mod faults;
mod fill;
mod inbox;
mod logs;
mod monitor;
mod report;
mod traffic;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use meshd_ipc::LinkState;

use crate::chat::Chat;
use crate::cluster::{Bins, Node, State, devices as list_devices, full_mesh};
use crate::faults::{CHAIN, Faults, iptables};
use crate::inbox::Receipts;
use crate::monitor::Monitor;
use crate::traffic::Ledger;
use crate::util::{Clock, lock, sleep_until};

/// Runs meshd under traffic and injected faults and checks it held up.
/// Meant to be run by bench/soak.sh, inside a network namespace of its own.
#[derive(Debug, Parser)]
#[command(name = "soak", version)]
struct Cli {
    /// Minutes of traffic and faults.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Seed of the fault schedule and of every random choice; a random
    /// one is drawn and printed when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// The directory holding the release meshd and meshctl.
    #[arg(long)]
    bin_dir: PathBuf,
    /// An empty work directory (configs, state, logs).
    #[arg(long)]
    dir: PathBuf,
    /// The network namespace this runs in; the driver refuses to run where
    /// there is any network interface but `lo`.
    #[arg(long)]
    netns: String,
    /// Mesh devices besides the hub.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(2..=50))]
    devices: u8,
    /// The command line the report names.
    #[arg(long)]
    invocation: Option<String>,
    /// Inject no faults: traffic only, to tell what the faults cost from
    /// what the traffic does (a diagnosis, not the soak).
    #[arg(long)]
    no_faults: bool,
}

/// Set by SIGINT, SIGTERM or SIGHUP: the run stops early and reports.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = watch_signals() {
        eprintln!("soak: cannot watch for signals: {error}");
        return ExitCode::from(2);
    }
    match soak(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) if INTERRUPTED.load(Ordering::SeqCst) => ExitCode::from(130),
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: {error}");
            ExitCode::from(2)
        }
    }
}

/// Sets [`INTERRUPTED`] on the first SIGINT, SIGTERM or SIGHUP, and exits
/// at once on one that comes more than 2 s later. Handlers, not a blocked mask: children inherit a
/// mask, and meshd must see its SIGTERM.
fn watch_signals() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut int, mut term, mut hup) = {
        let _guard = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut first: Option<std::time::Instant> = None;
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                // Ctrl-C reaches the driver and bench/soak.sh, which passes a
                // SIGTERM on: signals close together count as one.
                match first {
                    Some(at) if at.elapsed() > Duration::from_secs(2) => {
                        eprintln!("soak: {name} again; exiting at once");
                        std::process::exit(130);
                    }
                    Some(_) => {}
                    None => {
                        eprintln!("soak: {name}: stopping early, then reporting");
                        first = Some(std::time::Instant::now());
                        INTERRUPTED.store(true, Ordering::SeqCst);
                    }
                }
            }
        });
    });
    Ok(())
}

/// Refuses to run anywhere but in a namespace of its own, as root.
fn preflight(cli: &Cli) -> Result<Bins, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (a network namespace, iptables, devices under their own uids); run bench/soak.sh as root".to_owned());
    }
    let interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map_err(|e| format!("reading /sys/class/net: {e}"))?
        .filter_map(|entry| {
            entry
                .ok()
                .map(|e| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    if interfaces != ["lo"] {
        return Err(format!(
            "this network namespace has interfaces {interfaces:?}; the soak runs only in a namespace of its own \
             with nothing but lo (bench/soak.sh makes one: {})",
            cli.netns
        ));
    }
    // Absolute: meshd runs in its own directory.
    let bin_dir = std::fs::canonicalize(&cli.bin_dir)
        .map_err(|e| format!("{}: {e}", cli.bin_dir.display()))?;
    let bins = Bins {
        meshd: bin_dir.join("meshd"),
        meshctl: bin_dir.join("meshctl"),
    };
    for bin in [&bins.meshd, &bins.meshctl] {
        if !bin.is_file() {
            return Err(format!(
                "{} is missing; build it with cargo build --release",
                bin.display()
            ));
        }
    }
    let crowded = std::fs::read_dir(&cli.dir)
        .map_err(|e| format!("reading {}: {e}", cli.dir.display()))?
        .next()
        .is_some();
    if crowded {
        return Err(format!("{} is not empty", cli.dir.display()));
    }
    Ok(bins)
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) % 1_000_000_000
}

/// Which device links are not direct, as `d1->d3: relayed`.
fn not_direct(devices: &[&Node]) -> Vec<String> {
    let mut out = Vec::new();
    for node in devices {
        if node.view().state != State::Running {
            out.push(format!("{} is not running", node.name));
            continue;
        }
        match list_devices(&node.socket, Duration::from_secs(2)) {
            Ok(list) => {
                for other in devices.iter().filter(|o| o.name != node.name) {
                    let link = list
                        .iter()
                        .find(|e| e.id == other.name)
                        .and_then(|e| e.link);
                    if link != Some(LinkState::Direct) {
                        out.push(format!("{}->{}: {link:?}", node.name, other.name));
                    }
                }
            }
            Err(error) => out.push(format!("{}: {error}", node.name)),
        }
    }
    out
}

/// Waits up to `timeout` for a full mesh of direct links; the time it took
/// or what was missing.
fn wait_full_mesh(devices: &[&Node], timeout: Duration) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if full_mesh(devices) {
            return Ok(started.elapsed());
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(not_direct(devices))
}

fn soak(cli: &Cli) -> Result<bool, String> {
    let bins = preflight(cli)?;
    let clock = Clock::new();
    let seed = cli.seed.unwrap_or_else(random_seed);
    let invocation = cli
        .invocation
        .clone()
        .unwrap_or_else(|| format!("soak --minutes {} --seed {seed}", cli.minutes));
    clock.say(&format!(
        "seed {seed} (replay with --seed {seed}); {} min; namespace {}; work directory {}",
        cli.minutes,
        cli.netns,
        cli.dir.display()
    ));
    std::fs::create_dir_all(cli.dir.join("logs"))
        .map_err(|e| format!("creating the log directory: {e}"))?;
    let hub = Node::hub(&cli.dir)?;
    let devices_owned = (1..=cli.devices)
        .map(|index| Node::device(&cli.dir, index))
        .collect::<Result<Vec<_>, _>>()?;
    let devices: Vec<&Node> = devices_owned.iter().collect();
    let nodes: Vec<&Node> = std::iter::once(&hub)
        .chain(devices.iter().copied())
        .collect();
    // The chain the path cuts go into, empty, and hooked into OUTPUT once.
    if iptables(&["-N", CHAIN]).is_err() {
        iptables(&["-F", CHAIN])?;
    }
    if iptables(&["-C", "OUTPUT", "-j", CHAIN]).is_err() {
        iptables(&["-I", "OUTPUT", "-j", CHAIN])?;
    }

    clock.say("starting the hub");
    hub.start(&bins, &clock)?;
    chat::add_users(&hub, &bins, seed)?;
    clock.say(&format!("starting {} devices", devices.len()));
    for node in &devices {
        node.start(&bins, &clock)?;
    }
    match wait_full_mesh(&devices, Duration::from_secs(30)) {
        Ok(took) => clock.say(&format!(
            "full mesh of direct links after {} ms",
            took.as_millis()
        )),
        Err(missing) => {
            return Err(format!(
                "no full mesh of direct links within 30 s: {}",
                missing.join(", ")
            ));
        }
    }
    let chat = Chat::default();
    chat::warm_up(&chat, seed);
    let filling = Instant::now();
    let never = AtomicBool::new(false);
    for index in 0..devices.len() {
        let filled = fill::fill(index, &devices, None, &never);
        if filled.acked < filled.sent {
            clock.say(&format!("{}: {}", devices[index].name, filled.describe()));
        }
    }
    clock.say(&format!(
        "filled every device's inbox and duplicate memory ({} messages from each other device) in {:.1} s",
        fill::PER_SENDER,
        filling.elapsed().as_secs_f64()
    ));

    let seconds = cli.minutes * 60.0;
    let plan = if cli.no_faults {
        Vec::new()
    } else {
        faults::plan(seed, devices.len(), seconds)
    };
    let start = clock.now();
    let end = start + seconds;
    let started_wall = clock.wall(start);
    clock.say(&format!(
        "traffic and {} faults for {:.1} min, until {}",
        plan.len(),
        cli.minutes,
        clock.wall(end)
    ));
    if !plan.is_empty() {
        let steps: Vec<String> = plan.iter().map(|p| p.describe(&devices)).collect();
        clock.say(&format!("fault plan: {}", steps.join(", ")));
    }
    let ledger = Ledger::default();
    let receipts = Receipts::new(devices.len());
    let monitor = Monitor::new(nodes.len());
    let faults = Faults {
        hub: &hub,
        devices: &devices,
        bins: &bins,
        clock: &clock,
        chat: &chat,
        seed,
        ledger: &ledger,
        receipts: &receipts,
        log: std::sync::Mutex::new(Vec::new()),
    };
    let stop_faults = AtomicBool::new(false);
    let stop_traffic = AtomicBool::new(false);
    let stop_all = AtomicBool::new(false);
    let mut settled = String::new();
    let mut interrupted = None;
    let mut traffic_end = end;

    std::thread::scope(|scope| {
        let watchers = vec![
            scope.spawn(|| monitor::watch(&nodes, &clock, &monitor, &stop_all)),
            scope.spawn(|| monitor::probe(&nodes, &clock, &monitor, &stop_all)),
            scope.spawn(|| {
                let mut next = Instant::now() + Duration::from_secs(20);
                while sleep_until(&stop_all, next) {
                    next += Duration::from_secs(20);
                    for (index, node) in devices.iter().enumerate() {
                        inbox::snapshot(index, node, &bins, &receipts);
                    }
                }
            }),
        ];
        let followers: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let (bins, clock, receipts, stop) = (&bins, &clock, &receipts, &stop_all);
                scope.spawn(move || inbox::follow(index, node, bins, clock, receipts, stop))
            })
            .collect();
        let mut workers: Vec<_> = (0..devices.len())
            .map(|index| {
                let (devices, bins, clock, ledger, stop) =
                    (&devices, &bins, &clock, &ledger, &stop_traffic);
                scope
                    .spawn(move || traffic::sender(index, devices, bins, clock, ledger, seed, stop))
            })
            .collect();
        for number in 0..2 {
            let (hub, clock, chat, stop) = (&hub, &clock, &chat, &stop_traffic);
            workers.push(scope.spawn(move || chat::talker(number, hub, clock, chat, seed, stop)));
        }
        workers.push(scope.spawn(|| chat::staller(&hub, &clock, &chat, seed, &stop_traffic)));
        workers.push(scope.spawn(|| chat::intruder(&hub, &chat, seed, &stop_traffic)));
        let fault_thread = scope.spawn(|| faults.run(&plan, start, &stop_faults));

        let mut next_progress = Instant::now() + Duration::from_secs(30);
        while clock.now() < end {
            if INTERRUPTED.load(Ordering::SeqCst) {
                interrupted = Some(clock.now());
                break;
            }
            if Instant::now() >= next_progress {
                next_progress += Duration::from_secs(30);
                clock.say(&format!(
                    "{:.0} s of {:.0}: {} messages acknowledged, {} faults",
                    clock.now() - start,
                    seconds,
                    ledger.acked(),
                    lock(&faults.log).len()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        clock.say("time is up: stopping the faults and the traffic");
        stop_faults.store(true, Ordering::SeqCst);
        let _ = fault_thread.join();
        stop_traffic.store(true, Ordering::SeqCst);
        for worker in workers {
            let _ = worker.join();
        }
        traffic_end = clock.now();
        settled = match wait_full_mesh(&devices, Duration::from_secs(30)) {
            Ok(took) => format!(
                "every device direct to every other {:.1} s after the traffic stopped",
                took.as_secs_f64()
            ),
            Err(missing) => format!(
                "not a full mesh of direct links after 30 s: {}",
                missing.join(", ")
            ),
        };
        clock.say(&settled);
        monitor.sample(&nodes, &clock);
        for (index, node) in devices.iter().enumerate() {
            inbox::snapshot(index, node, &bins, &receipts);
        }
        let caught_up = Instant::now();
        while !receipts.caught_up(&devices) && caught_up.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop_all.store(true, Ordering::SeqCst);
        receipts.stop_followers();
        for thread in watchers.into_iter().chain(followers) {
            let _ = thread.join();
        }
    });

    clock.say("stopping every meshd (SIGTERM)");
    let mut shutdown = Vec::new();
    for node in devices.iter().chain(std::iter::once(&&hub)) {
        if node.view().state == State::Down {
            continue;
        }
        match node.terminate(&clock) {
            Ok((status, _)) if status.success() => {}
            Ok((status, took)) => shutdown.push(format!(
                "{} exited with {status} {} ms after SIGTERM",
                node.name,
                took.as_millis()
            )),
            Err(error) => shutdown.push(error),
        }
    }
    if let Err(error) = iptables(&["-F", CHAIN]) {
        clock.say(&format!("could not flush {CHAIN}: {error}"));
    }

    let samples = monitor.samples();
    let mut csv = String::from("at_s,process,generation,rss_kib,anon_kib,fds\n");
    for sample in &samples {
        csv.push_str(&format!(
            "{:.1},{},{},{},{},{}\n",
            sample.at - start,
            nodes[sample.node].name,
            sample.generation,
            sample.rss_kib,
            sample.anon_kib,
            sample.fds
        ));
    }
    if let Err(error) = std::fs::write(cli.dir.join("samples.csv"), csv) {
        clock.say(&format!("could not write samples.csv: {error}"));
    }
    clock.say("reading the logs and accounting");
    let observed: Vec<_> = (0..devices.len())
        .map(|index| receipts.observed(index))
        .collect();
    let follow_restarts = observed
        .iter()
        .flat_map(|o| o.sessions.iter())
        .filter(|s| s.ended_early)
        .count();
    let run = report::Run {
        invocation,
        seed,
        minutes: cli.minutes,
        started_wall,
        traffic: (start, traffic_end),
        interrupted,
        nodes: &nodes,
        sent: ledger.all(),
        observed,
        scan: logs::scan(&nodes),
        samples,
        probes: monitor.probes(),
        crashes: monitor.crashes(),
        faults: lock(&faults.log).clone(),
        chat: chat.figures(),
        shutdown,
        settled,
        follow_restarts,
    };
    let ok = run.report();
    clock.say(if ok {
        "all checks hold"
    } else {
        "a check failed"
    });
    Ok(ok)
}
