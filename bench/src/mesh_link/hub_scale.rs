//! One meshd hub and N simulated devices on loopback (issue 15): real hub
//! channels from `meshd-link`, real keys, one task per device, no meshd
//! process per device.
//!
//! 1. **Join**: every device opens its channel and registers, as fast as
//!    the hub's handshake cap lets them. Measured: the time from the first
//!    registration until every device holds the whole list; the hub's CPU
//!    seconds and peak RSS, and the simulation's own CPU (it shares the
//!    machine); the list bytes devices received per device each ends up
//!    holding (n² in all: whole lists and deltas together).
//! 2. **Churn**: a tenth of the devices leave and join again (from another
//!    address, so every device can tell it saw the change). Measured: the
//!    time until every device holds the list with every rejoined device at
//!    its new address; the list bytes each staying device received per
//!    leave or join.
//!
//! Each device keeps its list as bits, one per device of the run (ids are
//! `d<index>`), so that 10,000 lists of 10,000 devices fit in memory. It
//! asks for `meshd-channel/3` and falls back to `meshd-channel/2` (whole
//! lists only) when the hub is an older meshd, so one build measures both.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use meshd_link::StaticKey;
use meshd_link::channel::{ChannelReader, ChannelWriter};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::control::{Error, Nodes, start_hub};
use crate::process::{cpu_seconds, own_cpu_seconds, peak_rss};
use crate::scrape;

/// Channel handshakes the simulated devices run at once (the hub takes 64).
const HANDSHAKES_AT_ONCE: usize = 48;

/// Heartbeats, well within the hub's default TTL of 60 s.
const HEARTBEAT: Duration = Duration::from_secs(20);

/// What one run measured.
struct Run {
    devices: usize,
    protocol: &'static str,
    join: Phase,
    registered_secs: f64,
    join_cpu_secs: f64,
    simulation_cpu_secs: f64,
    join_peak_rss: u64,
    join_bytes: u64,
    churned: usize,
    churn: Phase,
    churn_bytes: u64,
    peak_rss: u64,
    /// The web console's cost, when asked for.
    scrape: Option<(scrape::Steady, Vec<scrape::Cost>)>,
}

/// How a phase ended: the seconds until every device held the list, or
/// how many did when the time ran out.
#[derive(Clone, Copy)]
enum Phase {
    Settled(f64),
    TimedOut { settled: usize, after: Duration },
    Skipped,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Settled(secs) => write!(f, "{secs:.1} s"),
            Phase::TimedOut { settled, after } => {
                write!(f, "not within {} s ({settled} did)", after.as_secs())
            }
            Phase::Skipped => f.write_str("-"),
        }
    }
}

/// Runs once per device count and prints the Markdown table.
pub fn run(
    meshd: &Path,
    counts: &[usize],
    churn_percent: usize,
    timeout: Duration,
    scrape_seconds: u64,
) -> Result<(), Error> {
    raise_fd_limit()?;
    let mut runs = Vec::new();
    for &devices in counts {
        eprintln!("==> {devices} devices");
        runs.push(once(
            meshd,
            devices,
            churn_percent,
            timeout,
            scrape_seconds,
        )?);
    }
    print_scrapes(&runs);
    println!(
        "| devices | channel | all registered | join: all hold the whole list | hub CPU | simulated devices' CPU | hub peak RSS | list bytes per device held | churn ({churn_percent}%): all hold the list | list bytes per leave or join per channel | hub peak RSS after churn |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in &runs {
        // Every device ends up holding every device: n² entries.
        let held = (run.devices * run.devices) as f64;
        let stayers = (run.devices - run.churned) as f64;
        let churn_events = (2 * run.churned) as f64;
        println!(
            "| {} | {} | {:.1} s | {} | {:.1} s | {:.1} s | {} MiB | {:.0} B | {} | {} | {} MiB |",
            run.devices,
            run.protocol,
            run.registered_secs,
            run.join,
            run.join_cpu_secs,
            run.simulation_cpu_secs,
            run.join_peak_rss >> 20,
            run.join_bytes as f64 / held,
            run.churn,
            match run.churned {
                0 => "-".to_owned(),
                _ => format!("{:.0} B", run.churn_bytes as f64 / (stayers * churn_events)),
            },
            run.peak_rss >> 20,
        );
    }
    Ok(())
}

/// The hub's file descriptors and ours: one per channel.
fn raise_fd_limit() -> Result<(), Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

/// The web console's table, for the runs that measured it.
fn print_scrapes(runs: &[Run]) {
    if runs.iter().all(|run| run.scrape.is_none()) {
        return;
    }
    println!(
        "| devices | hub CPU, idle (reference) | hub CPU, scraped every second | difference | hub CPU per /metrics (burst) | /metrics bytes | hub CPU per /api/v1/mesh (burst) | /api/v1/mesh bytes | the page's poll every 2 s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in runs {
        let Some((steady, costs)) = &run.scrape else {
            continue;
        };
        let cost = |path: &str| costs.iter().find(|cost| cost.path == path);
        let (Some(metrics), Some(mesh)) = (cost("/metrics"), cost("/api/v1/mesh")) else {
            continue;
        };
        println!(
            "| {} | {:.2}% | {:.2}% | {:+.2} points | {:.2} ms | {} | {:.2} ms | {} | {:.2}% of a core |",
            run.devices,
            steady.idle_share * 100.0,
            steady.scraped_share * 100.0,
            (steady.scraped_share - steady.idle_share) * 100.0,
            metrics.cpu_per_request * 1e3,
            metrics.bytes,
            mesh.cpu_per_request * 1e3,
            mesh.bytes,
            mesh.cpu_per_request / 2.0 * 100.0,
        );
        eprintln!(
            "    steady: {} s idle and {} s scraped, alternating",
            steady.seconds, steady.seconds
        );
    }
}

fn once(
    meshd: &Path,
    devices: usize,
    churn_percent: usize,
    timeout: Duration,
    scrape_seconds: u64,
) -> Result<Run, Error> {
    let dir = tempfile::Builder::new().prefix("hub-scale-").tempdir()?;
    // The defaults but two: new ids from one address are not limited (every
    // device here is 127.0.0.1), and max_devices only if over its default.
    let max_devices = devices.max(10_000);
    let mut nodes = Nodes(Vec::new());
    let web = match scrape_seconds {
        0 => None,
        _ => Some(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?),
    };
    let hub = start_hub(
        &mut nodes,
        meshd,
        dir.path(),
        &format!("registrations_per_sec = 0\nmax_devices = {max_devices}"),
        web,
    )?;
    let pid = nodes.0[0].id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(simulate(
        hub,
        pid,
        devices,
        churn_percent,
        timeout,
        web.map(|web| (web, scrape_seconds)),
    ))
}

/// Shared by the simulated devices and the run.
struct Fleet {
    hub: SocketAddr,
    devices: usize,
    handshakes: Semaphore,
    /// Ciphertext bytes devices received from the hub.
    received: AtomicU64,
    /// Devices that hold what the current phase expects.
    settled: AtomicUsize,
    settled_changed: Notify,
    /// Devices that rejoin in the churn phase (every `churn_every`th).
    churn_every: usize,
    /// The phase: 0 join, 1 churn.
    phase: AtomicUsize,
    /// Devices whose first registration was answered.
    registered: AtomicUsize,
    /// When the last of them was, in µs from the start.
    last_registered_micros: AtomicU64,
    started: Instant,
    /// The protocol the hub took.
    whole_lists_only: std::sync::atomic::AtomicBool,
    /// Each device reports its links once registered (when the web
    /// console is measured), so the console has a mesh's pairs to serve.
    report_links: bool,
}

impl Fleet {
    fn churned(&self) -> usize {
        if self.churn_every == 0 {
            0
        } else {
            self.devices.div_ceil(self.churn_every)
        }
    }

    fn churns(&self, index: usize) -> bool {
        self.churn_every != 0 && index.is_multiple_of(self.churn_every)
    }
}

async fn simulate(
    hub: SocketAddr,
    pid: u32,
    devices: usize,
    churn_percent: usize,
    timeout: Duration,
    web: Option<(SocketAddr, u64)>,
) -> Result<Run, Error> {
    let fleet = Arc::new(Fleet {
        hub,
        devices,
        handshakes: Semaphore::new(HANDSHAKES_AT_ONCE),
        received: AtomicU64::new(0),
        settled: AtomicUsize::new(0),
        settled_changed: Notify::new(),
        churn_every: 100usize
            .checked_div(churn_percent)
            .map_or(0, |every| every.max(1)),
        phase: AtomicUsize::new(0),
        registered: AtomicUsize::new(0),
        last_registered_micros: AtomicU64::new(0),
        started: Instant::now(),
        whole_lists_only: std::sync::atomic::AtomicBool::new(false),
        report_links: web.is_some(),
    });
    let keys: Vec<StaticKey> = (0..devices)
        .map(|_| StaticKey::generate())
        .collect::<Result<_, _>>()?;
    let cpu_before = cpu_seconds(pid)?;
    let own_cpu_before = own_cpu_seconds()?;
    let started = fleet.started;
    let churn = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for (index, key) in keys.into_iter().enumerate() {
        tasks.push(tokio::spawn(device(
            fleet.clone(),
            index,
            key,
            churn.clone(),
        )));
    }
    let join = wait_settled(&fleet, devices, timeout, started).await;
    let join_cpu_secs = cpu_seconds(pid)? - cpu_before;
    let simulation_cpu_secs = own_cpu_seconds()? - own_cpu_before;
    let registered_secs = fleet.last_registered_micros.load(Ordering::SeqCst) as f64 / 1e6;
    let join_peak_rss = peak_rss(pid)?;
    let join_bytes = fleet.received.swap(0, Ordering::SeqCst);
    eprintln!("    join: {join}");

    // The console's cost, with every device joined and heartbeating.
    let mut scraped = None;
    if let (Some((web, seconds)), Phase::Settled(_)) = (web, join) {
        let measured = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let steady = scrape::steady(web, pid, seconds, HEARTBEAT)?;
            let costs = vec![
                scrape::burst(web, pid, "/metrics")?,
                scrape::burst(web, pid, "/api/v1/mesh")?,
            ];
            Ok((steady, costs))
        })
        .await
        .map_err(|error| error.to_string())??;
        eprintln!(
            "    scrape: idle {:.2}%, scraped {:.2}%",
            measured.0.idle_share * 100.0,
            measured.0.scraped_share * 100.0
        );
        scraped = Some(measured);
    }

    let mut churn_phase = Phase::Skipped;
    if fleet.churned() > 0 && matches!(join, Phase::Settled(_)) {
        fleet.settled.store(0, Ordering::SeqCst);
        fleet.phase.store(1, Ordering::SeqCst);
        let churn_started = Instant::now();
        churn.notify_waiters();
        churn_phase = wait_settled(&fleet, devices, timeout, churn_started).await;
        eprintln!("    churn: {churn_phase}");
    }
    let churn_bytes = fleet.received.swap(0, Ordering::SeqCst);
    let peak = peak_rss(pid)?;
    for task in tasks {
        task.abort();
    }
    Ok(Run {
        devices,
        protocol: if fleet.whole_lists_only.load(Ordering::SeqCst) {
            "whole lists (channel/2)"
        } else {
            "deltas (channel/3)"
        },
        join,
        registered_secs,
        join_cpu_secs,
        simulation_cpu_secs,
        join_peak_rss,
        join_bytes,
        churned: fleet.churned(),
        churn: churn_phase,
        churn_bytes,
        peak_rss: peak,
        scrape: scraped,
    })
}

/// Waits until every device holds what the phase expects, or `timeout`.
async fn wait_settled(fleet: &Fleet, devices: usize, timeout: Duration, started: Instant) -> Phase {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = fleet.settled_changed.notified();
        let settled = fleet.settled.load(Ordering::SeqCst);
        if settled >= devices {
            return Phase::Settled(started.elapsed().as_secs_f64());
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Phase::TimedOut {
                settled: fleet.settled.load(Ordering::SeqCst),
                after: timeout,
            };
        }
    }
}

/// One simulated device: joins, keeps its list, heartbeats; in the churn
/// phase, if it is one of the churned, leaves and joins again.
async fn device(fleet: Arc<Fleet>, index: usize, key: StaticKey, churn: Arc<Notify>) {
    let churn_wait = churn.notified();
    let result = async {
        let mut session = Session::open(&fleet, index, &key, "127.0.0.1").await?;
        let mut list = List::new(fleet.devices);
        if fleet.churns(index) {
            tokio::select! {
                outcome = session.follow(&fleet, &mut list) => outcome?,
                () = churn_wait => {}
            }
            session.leave().await;
            let mut session = Session::open(&fleet, index, &key, "127.0.0.2").await?;
            let mut list = List::new(fleet.devices);
            session.follow(&fleet, &mut list).await
        } else {
            session.follow(&fleet, &mut list).await
        }
    }
    .await;
    if let Err(error) = result {
        eprintln!("    device d{index}: {error}");
    }
}

/// A device's view of the list: who is listed, and who is listed at a
/// rejoined address.
struct List {
    listed: Vec<u64>,
    rejoined: Vec<u64>,
    listed_count: usize,
    rejoined_count: usize,
    version: Option<u64>,
    /// The phase whose expectation this list met, and was counted for.
    settled: Option<usize>,
}

impl List {
    fn new(devices: usize) -> List {
        let words = devices.div_ceil(64);
        List {
            listed: vec![0; words],
            rejoined: vec![0; words],
            listed_count: 0,
            rejoined_count: 0,
            version: None,
            settled: None,
        }
    }

    fn clear(&mut self) {
        self.listed.fill(0);
        self.rejoined.fill(0);
        self.listed_count = 0;
        self.rejoined_count = 0;
    }

    fn set(bits: &mut [u64], count: &mut usize, index: usize, on: bool) {
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let Some(word) = bits.get_mut(word) else {
            return;
        };
        if (*word & bit != 0) != on {
            *word ^= bit;
            if on {
                *count += 1;
            } else {
                *count -= 1;
            }
        }
    }

    fn upsert(&mut self, entry: &Entry<'_>) {
        if let Some(index) = index_of(entry.id) {
            Self::set(&mut self.listed, &mut self.listed_count, index, true);
            let rejoined = entry.addr.starts_with("127.0.0.2:");
            Self::set(
                &mut self.rejoined,
                &mut self.rejoined_count,
                index,
                rejoined,
            );
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(index) = index_of(id) {
            Self::set(&mut self.listed, &mut self.listed_count, index, false);
            Self::set(&mut self.rejoined, &mut self.rejoined_count, index, false);
        }
    }
}

fn index_of(id: &str) -> Option<usize> {
    id.strip_prefix('d')?.parse().ok()
}

/// The parts of a hub message the simulation reads; serde skips the rest.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    from: u64,
    #[serde(default, borrow)]
    devices: Vec<Entry<'a>>,
    #[serde(default, borrow)]
    removed: Vec<&'a str>,
    /// `left` (channel/2): who.
    #[serde(default, borrow)]
    id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    addr: &'a str,
}

/// Reads a hub message the way meshd writes it (compact JSON, a list
/// entry's fields in their fixed order: `id` first, `addr` second), without
/// a JSON parser: 10,000 simulated devices read about 17 GB of lists at
/// 10,000 devices, and must not starve the hub they measure of the CPU
/// they share. `None` for anything of another shape (serde reads it then).
fn scan(bytes: &[u8]) -> Option<Message<'_>> {
    static ENTRY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#"{"id":""#));
    let text = std::str::from_utf8(bytes).ok()?;
    let (kind, _) = quoted(text.strip_prefix(r#"{"type":""#)?)?;
    // The numbers are in the envelope, before any entry.
    let head = &text[..text.len().min(96)];
    let number = |key: &str| -> u64 {
        head.find(key)
            .map(|at| &head[at + key.len()..])
            .map(|rest| {
                let end = rest
                    .bytes()
                    .position(|byte| !byte.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..end].parse().unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let mut message = Message {
        kind,
        version: number(r#""version":"#),
        from: number(r#""from":"#),
        devices: Vec::new(),
        removed: Vec::new(),
        id: None,
    };
    match kind {
        "left" => {
            let rest = head.split_once(r#""id":""#)?.1;
            message.id = Some(quoted(rest)?.0);
            return Some(message);
        }
        "devices" | "delta" => {}
        _ => return Some(message),
    }
    // `removed` is last: looked for from the end.
    const REMOVED: &str = r#""removed":["#;
    let (list, removed) = match kind {
        "delta" => {
            let at = text.rfind(REMOVED)?;
            (&text[..at], Some(&text[at + REMOVED.len()..]))
        }
        _ => (text, None),
    };
    for at in ENTRY.find_iter(list.as_bytes()) {
        let (id, rest) = quoted(&list[at + r#"{"id":""#.len()..])?;
        let (addr, _) = quoted(rest.strip_prefix(r#","addr":""#)?)?;
        message.devices.push(Entry { id, addr });
    }
    if let Some(removed) = removed {
        let end = removed.find(']')?;
        for id in removed[..end].split(',').filter(|item| !item.is_empty()) {
            message
                .removed
                .push(id.strip_prefix('"')?.strip_suffix('"')?);
        }
    }
    Some(message)
}

/// A string value up to its closing quote, and what follows the quote;
/// `None` if it holds an escape.
fn quoted(text: &str) -> Option<(&str, &str)> {
    let end = memchr::memchr(b'"', text.as_bytes())?;
    let value = &text[..end];
    (memchr::memchr(b'\\', value.as_bytes()).is_none()).then_some((value, &text[end + 1..]))
}

type Reader = ChannelReader<tokio::io::ReadHalf<Counted>>;
type Writer = ChannelWriter<tokio::io::WriteHalf<Counted>>;

struct Session {
    reader: Reader,
    writer: Writer,
    register: Vec<u8>,
    /// The link report to send once registered.
    report: Option<Vec<u8>>,
}

impl Session {
    /// Opens a channel (retrying while the hub's handshake cap is full)
    /// and registers from `ip`.
    async fn open(
        fleet: &Arc<Fleet>,
        index: usize,
        key: &StaticKey,
        ip: &str,
    ) -> Result<Session, Error> {
        let id = format!("d{index}");
        let port = 10_000 + index % 50_000;
        let register = serde_json::to_vec(&serde_json::json!({
            "type": "register",
            "addr": format!("{ip}:{port}"),
            "endpoints": [],
            "join_token": "",
        }))?;
        loop {
            let permit = fleet.handshakes.acquire().await?;
            let stream = match upgrade(fleet).await {
                Ok(stream) => stream,
                Err(error) if error.to_string().contains(" 503 ") => {
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let counted = Counted {
                stream,
                fleet: fleet.clone(),
            };
            let (channel, _) = meshd_link::channel::open(counted, key, &id, None).await?;
            drop(permit);
            let (reader, mut writer) = channel.split(64 << 20);
            writer.send(&register).await?;
            let report = match fleet.report_links {
                true => Some(link_report(index, fleet.devices)?),
                false => None,
            };
            return Ok(Session {
                reader,
                writer,
                register,
                report,
            });
        }
    }

    /// Reads the hub's messages into `list` and heartbeats, until the
    /// channel ends.
    async fn follow(&mut self, fleet: &Fleet, list: &mut List) -> Result<(), Error> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            let bytes = tokio::select! {
                _ = heartbeat.tick() => {
                    self.writer.send(&self.register).await?;
                    continue;
                }
                bytes = self.reader.next() => bytes?,
            };
            let message = match scan(&bytes) {
                Some(message) => message,
                None => serde_json::from_slice(&bytes)?,
            };
            match message.kind {
                "registered" => {
                    if let Some(report) = self.report.take() {
                        self.writer.send(&report).await?;
                    }
                    if fleet.phase.load(Ordering::SeqCst) == 0 {
                        let micros = fleet.started.elapsed().as_micros() as u64;
                        fleet
                            .last_registered_micros
                            .fetch_max(micros, Ordering::SeqCst);
                        fleet.registered.fetch_add(1, Ordering::SeqCst);
                    }
                    continue;
                }
                "devices" => {
                    list.clear();
                    for entry in &message.devices {
                        list.upsert(entry);
                    }
                    list.version = Some(message.version);
                }
                "delta" => {
                    if list.version != Some(message.from) {
                        return Err(format!(
                            "a delta from {} to a list at {:?}",
                            message.from, list.version
                        )
                        .into());
                    }
                    for entry in &message.devices {
                        list.upsert(entry);
                    }
                    for id in &message.removed {
                        list.remove(id);
                    }
                    list.version = Some(message.version);
                }
                "left" => {
                    if let Some(id) = message.id {
                        list.remove(id);
                    }
                }
                "register_refused" => {
                    return Err(String::from_utf8_lossy(&bytes).into_owned().into());
                }
                _ => continue,
            }
            let phase = fleet.phase.load(Ordering::SeqCst);
            let expected = match phase {
                0 => list.listed_count == fleet.devices,
                _ => list.listed_count == fleet.devices && list.rejoined_count == fleet.churned(),
            };
            if expected && list.settled != Some(phase) {
                list.settled = Some(phase);
                fleet.settled.fetch_add(1, Ordering::SeqCst);
                fleet.settled_changed.notify_waiters();
            } else if !expected && list.settled == Some(phase) {
                list.settled = None;
                fleet.settled.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Says `leave` and waits for the hub to close the channel.
    async fn leave(mut self) {
        let _ = self.writer.send(br#"{"type":"leave"}"#).await;
        while self.reader.next().await.is_ok() {}
    }
}

/// The link report device `index` of a mesh of `devices` sends its hub
/// (docs/web.md, "Link reports"): its next 200 peers (as many as a report
/// holds), most of them direct, some relayed, a few down.
fn link_report(index: usize, devices: usize) -> Result<Vec<u8>, Error> {
    let mut counts = [0u32; 3];
    let links: Vec<serde_json::Value> = (1..devices.min(201))
        .map(|step| {
            let peer = (index + step) % devices;
            let roll = (index * 31 + peer * 17) % 100;
            let (slot, path, rtt_us) = match roll {
                0..=2 => (2, "down", None),
                3..=9 => (1, "relayed", Some(20_000 + roll * 100)),
                _ => (0, "direct", Some(300 + roll * 20)),
            };
            counts[slot] += 1;
            serde_json::json!({"peer": format!("d{peer}"), "path": path,
                               "rtt_us": rtt_us, "up_secs": rtt_us.map(|_| 60)})
        })
        .collect();
    Ok(serde_json::to_vec(&serde_json::json!({
        "type": "links", "direct": counts[0], "relayed": counts[1], "down": counts[2],
        "links": links,
    }))?)
}

/// The channel's HTTP upgrade, reading the answer's head byte by byte.
async fn upgrade(fleet: &Fleet) -> Result<TcpStream, Error> {
    let protocols: &[&str] = if fleet.whole_lists_only.load(Ordering::SeqCst) {
        &["meshd-channel/2"]
    } else {
        &["meshd-channel/3", "meshd-channel/2"]
    };
    let mut refused = String::new();
    for protocol in protocols {
        let mut stream = TcpStream::connect(fleet.hub).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET /channel HTTP/1.1\r\nHost: hub\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await?);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if head.starts_with("HTTP/1.1 101") {
            if *protocol == "meshd-channel/2" {
                fleet.whole_lists_only.store(true, Ordering::SeqCst);
            }
            return Ok(stream);
        }
        if head.contains(" 503 ") {
            return Err(head.into());
        }
        refused = head;
    }
    Err(format!("the hub refused the channel: {refused}").into())
}

/// A stream that counts the bytes read from it into the fleet's total.
struct Counted {
    stream: TcpStream,
    fleet: Arc<Fleet>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.fleet
            .received
            .fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_reads_what_serde_reads() {
        let messages = [
            r#"{"type":"delta","from":12,"version":15,"devices":[{"id":"d1","addr":"127.0.0.1:10001","observed":"127.0.0.1:5","pubkey":"AQ==","last_seen":"2026-12-03T12:00:00Z","endpoints":["10.0.0.1:1"]},{"id":"d22","addr":"127.0.0.2:10022","observed":"127.0.0.1:6","pubkey":null,"last_seen":"x","endpoints":[]}],"removed":["d3","d44"]}"#,
            r#"{"type":"devices","version":7,"devices":[{"id":"d9","addr":"127.0.0.1:10009","observed":"","pubkey":null,"last_seen":"","endpoints":[]}]}"#,
            r#"{"type":"delta","from":1,"version":2,"devices":[],"removed":[]}"#,
            r#"{"type":"left","id":"d5"}"#,
            r#"{"type":"registered","observed":"127.0.0.1:1","ttl_secs":60}"#,
        ];
        for text in messages {
            let scanned = scan(text.as_bytes()).expect(text);
            let parsed: Message<'_> = serde_json::from_str(text).unwrap();
            assert_eq!(scanned.kind, parsed.kind, "{text}");
            assert_eq!(
                (scanned.version, scanned.from, scanned.id),
                (parsed.version, parsed.from, parsed.id),
                "{text}"
            );
            let pairs = |message: &Message<'_>| -> Vec<(String, String)> {
                message
                    .devices
                    .iter()
                    .map(|entry| (entry.id.to_owned(), entry.addr.to_owned()))
                    .collect()
            };
            assert_eq!(pairs(&scanned), pairs(&parsed), "{text}");
            assert_eq!(scanned.removed, parsed.removed, "{text}");
        }
    }
}
