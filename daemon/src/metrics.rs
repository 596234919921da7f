//! meshd's Prometheus metrics (docs/metrics.md): every series, defined once,
//! and the text the web console serves at `GET /metrics`.
//!
//! The metrics are process-wide, like the process they describe: counters
//! are bumped where the event happens (a link's reader, the chat room, the
//! hub's registry), which would otherwise need a handle passed through every
//! layer of every role. Gauges that are a count of something held elsewhere
//! (devices, channels, clients, links) are not kept twice: the web console
//! reads them from the roles at each scrape ([`Snapshot`]). Labels are typed
//! enums, so the number of series is fixed: nothing is labelled per device.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The one set of metrics of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// A link's path, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathLabel {
    /// A direct TCP connection between the devices.
    Direct,
    /// Through a hub's relay.
    Relayed,
}

/// Which way bytes went, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received.
    In,
    /// Sent.
    Out,
}

/// Why a link handshake failed, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The Noise handshake itself failed: garbage, a key that does not
    /// match, tampering or a timeout.
    Protocol,
    /// The other end closed the connection before the handshake finished:
    /// most often the losing attempt of a dial race, or a port scan. Kept
    /// apart so `protocol` stays a signal worth alerting on.
    Abandoned,
    /// The dialler's id is listed by no hub (usual for a moment while a
    /// device joins).
    UnknownPeer,
    /// The dialler's id is listed with another key (or none, or several).
    WrongKey,
    /// The other end proved a key but named other ids than expected.
    WrongPeer,
}

impl HandshakeFailure {
    /// `Abandoned` when `error` is the other end going away, else
    /// `Protocol`.
    pub fn of(error: &meshd_link::LinkError) -> HandshakeFailure {
        use std::io::ErrorKind;
        match error {
            meshd_link::LinkError::Closed => HandshakeFailure::Abandoned,
            meshd_link::LinkError::Io(io) => match io.kind() {
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                    HandshakeFailure::Abandoned
                }
                _ => HandshakeFailure::Protocol,
            },
            _ => HandshakeFailure::Protocol,
        }
    }
}

/// How a chat login ended, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginResult {
    /// Logged in.
    Ok,
    /// Wrong name or password.
    Failed,
    /// Refused unchecked: the address had too many failures or guesses in
    /// flight.
    Throttled,
}

/// Label values in snake case, as Prometheus names them (the derive would
/// spell them as the variants are).
macro_rules! label_values {
    ($($kind:ty { $($variant:ident => $name:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self {
                    $(<$kind>::$variant => $name,)+
                })
            }
        }
    )+};
}

label_values! {
    PathLabel { Direct => "direct", Relayed => "relayed" }
    Direction { In => "in", Out => "out" }
    HandshakeFailure {
        Protocol => "protocol",
        Abandoned => "abandoned",
        UnknownPeer => "unknown_peer",
        WrongKey => "wrong_key",
        WrongPeer => "wrong_peer",
    }
    LoginResult { Ok => "ok", Failed => "failed", Throttled => "throttled" }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabels {
    path: PathLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LinkBytesLabels {
    path: PathLabel,
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    reason: HandshakeFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LoginLabels {
    result: LoginResult,
}

/// Every series meshd exports (docs/metrics.md).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    links: Family<PathLabels, Gauge>,
    link_bytes: Family<LinkBytesLabels, Counter>,
    /// Messages this device sent that the peer acknowledged.
    pub messages_sent: Counter,
    /// Messages this device received and stored (duplicates not counted).
    pub messages_received: Counter,
    /// Dial rounds that included a peer's public endpoint.
    pub holepunch_attempts: Counter,
    /// Of those, rounds whose link came through the public endpoint.
    pub holepunch_successes: Counter,
    handshake_failures: Family<HandshakeLabels, Counter>,
    /// Link handshakes that succeeded, by how long they took.
    pub handshake_seconds: Histogram,
    /// From a peer task's start (or a lost direct path) to a direct link.
    pub time_to_direct_seconds: Histogram,
    hub_devices: Gauge,
    hub_channels: Gauge,
    hub_relays: Gauge,
    /// Bytes a hub's relays carried, both ways.
    pub hub_relay_bytes: Counter,
    /// Registrations a hub accepted (heartbeats included).
    pub hub_registrations: Counter,
    /// Link reports a hub took from its devices.
    pub hub_link_reports: Counter,
    chat_clients: Gauge,
    /// Lines clients said in the room (not counting the copies sent).
    pub chat_messages: Counter,
    chat_logins: Family<LoginLabels, Counter>,
    /// Clients that fell too far behind the room and were cut off.
    pub chat_slow_consumers: Counter,
    /// From a line entering the room to a client's writer sending it.
    pub chat_fanout_seconds: Histogram,
    resident_memory: Gauge,
    open_fds: Gauge,
}

/// The two text formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, what prometheus-client writes and Prometheus
    /// prefers (`Accept: application/openmetrics-text`).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, for every other client
    /// (curl, promtool, older scrapers).
    Text,
}

impl Format {
    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }
}

/// The counts the roles hold, read at each scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    /// Links up on a direct path.
    pub direct_links: i64,
    /// Links up through a relay.
    pub relayed_links: i64,
    /// Devices the hub lists.
    pub hub_devices: i64,
    /// Devices' channels open to the hub.
    pub hub_channels: i64,
    /// Relays the hub carries now.
    pub hub_relays: i64,
    /// Chat clients logged in.
    pub chat_clients: i64,
}

impl Metrics {
    fn new() -> Metrics {
        let mut root = Registry::default();
        let resident_memory = Gauge::default();
        root.register_with_unit(
            "process_resident_memory",
            "Resident memory of the meshd process",
            Unit::Bytes,
            resident_memory.clone(),
        );
        let open_fds = Gauge::default();
        root.register(
            "process_open_fds",
            "Open file descriptors of the meshd process",
            open_fds.clone(),
        );
        let registry = root.sub_registry_with_prefix("meshd");
        // Families get every label value at once, so each series exists
        // (at 0) from the start and a rate over it is never absent.

        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "meshd's version; always 1", build_info);

        let links = Family::<PathLabels, Gauge>::default();
        for path in [PathLabel::Direct, PathLabel::Relayed] {
            drop(links.get_or_create(&PathLabels { path }));
        }
        registry.register(
            "links",
            "Links to other devices that are up, by path",
            links.clone(),
        );
        let link_bytes = Family::<LinkBytesLabels, Counter>::default();
        for path in [PathLabel::Direct, PathLabel::Relayed] {
            for direction in [Direction::In, Direction::Out] {
                drop(link_bytes.get_or_create(&LinkBytesLabels { path, direction }));
            }
        }
        registry.register(
            "link_bytes",
            "Bytes of frames carried by links to other devices, before encryption",
            link_bytes.clone(),
        );
        let messages_sent = Counter::default();
        registry.register(
            "messages_sent",
            "Messages sent to other devices and acknowledged by them",
            messages_sent.clone(),
        );
        let messages_received = Counter::default();
        registry.register(
            "messages_received",
            "Messages received from other devices (each once)",
            messages_received.clone(),
        );
        let holepunch_attempts = Counter::default();
        registry.register(
            "holepunch_attempts",
            "Dial rounds that tried a peer's public endpoint (hole punching)",
            holepunch_attempts.clone(),
        );
        let holepunch_successes = Counter::default();
        registry.register(
            "holepunch_successes",
            "Hole-punching dial rounds whose link came through the public endpoint",
            holepunch_successes.clone(),
        );
        let handshake_failures = Family::<HandshakeLabels, Counter>::default();
        for reason in [
            HandshakeFailure::Protocol,
            HandshakeFailure::Abandoned,
            HandshakeFailure::UnknownPeer,
            HandshakeFailure::WrongKey,
            HandshakeFailure::WrongPeer,
        ] {
            drop(handshake_failures.get_or_create(&HandshakeLabels { reason }));
        }
        registry.register(
            "handshake_failures",
            "Link handshakes that failed, by reason",
            handshake_failures.clone(),
        );
        // 1 ms .. 16 s: a LAN handshake to one over a slow relay.
        let handshake_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register_with_unit(
            "handshake_duration",
            "Time a successful link handshake took",
            Unit::Seconds,
            handshake_seconds.clone(),
        );
        // 10 ms .. 164 s: a LAN dial to a hole punch after several rounds.
        let time_to_direct_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register_with_unit(
            "time_to_direct",
            "Time from needing a link to a peer (its task starting, or the direct path lost) to a direct link",
            Unit::Seconds,
            time_to_direct_seconds.clone(),
        );

        let hub_devices = Gauge::default();
        registry.register("hub_devices", "Devices the hub lists", hub_devices.clone());
        let hub_channels = Gauge::default();
        registry.register(
            "hub_channels",
            "Devices' hub channels open to this hub",
            hub_channels.clone(),
        );
        let hub_relays = Gauge::default();
        registry.register(
            "hub_relays",
            "Relays this hub carries now",
            hub_relays.clone(),
        );
        let hub_relay_bytes = Counter::default();
        registry.register(
            "hub_relay_bytes",
            "Bytes this hub's relays carried, both ways",
            hub_relay_bytes.clone(),
        );
        let hub_registrations = Counter::default();
        registry.register(
            "hub_registrations",
            "Registrations this hub accepted, heartbeats included",
            hub_registrations.clone(),
        );
        let hub_link_reports = Counter::default();
        registry.register(
            "hub_link_reports",
            "Link reports this hub took from its devices",
            hub_link_reports.clone(),
        );

        let chat_clients = Gauge::default();
        registry.register(
            "chat_clients",
            "Chat clients logged in",
            chat_clients.clone(),
        );
        let chat_messages = Counter::default();
        registry.register(
            "chat_messages",
            "Lines chat clients said in the room",
            chat_messages.clone(),
        );
        let chat_logins = Family::<LoginLabels, Counter>::default();
        for result in [LoginResult::Ok, LoginResult::Failed, LoginResult::Throttled] {
            drop(chat_logins.get_or_create(&LoginLabels { result }));
        }
        registry.register("chat_logins", "Chat logins, by result", chat_logins.clone());
        let chat_slow_consumers = Counter::default();
        registry.register(
            "chat_slow_consumers",
            "Chat clients cut off for falling too far behind the room",
            chat_slow_consumers.clone(),
        );
        // 100 µs .. 3.3 s.
        let chat_fanout_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "chat_fanout_delay",
            "Time from a line entering the chat room to a client's writer sending it",
            Unit::Seconds,
            chat_fanout_seconds.clone(),
        );

        Metrics {
            registry: root,
            links,
            link_bytes,
            messages_sent,
            messages_received,
            holepunch_attempts,
            holepunch_successes,
            handshake_failures,
            handshake_seconds,
            time_to_direct_seconds,
            hub_devices,
            hub_channels,
            hub_relays,
            hub_relay_bytes,
            hub_registrations,
            hub_link_reports,
            chat_clients,
            chat_messages,
            chat_logins,
            chat_slow_consumers,
            chat_fanout_seconds,
            resident_memory,
            open_fds,
        }
    }

    /// The byte counter of one path and direction, to keep in a link's
    /// task instead of looking it up per frame.
    pub fn link_bytes(&self, path: PathLabel, direction: Direction) -> Counter {
        self.link_bytes
            .get_or_create_owned(&LinkBytesLabels { path, direction })
    }

    /// Counts a failed link handshake.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { reason })
            .inc();
    }

    /// Counts a chat login.
    pub fn chat_login(&self, result: LoginResult) {
        self.chat_logins
            .get_or_create(&LoginLabels { result })
            .inc();
    }

    /// Observes `elapsed` in `histogram`.
    pub fn observe(histogram: &Histogram, elapsed: Duration) {
        histogram.observe(elapsed.as_secs_f64());
    }

    /// Every series in the OpenMetrics text format, with the roles' counts
    /// from `snapshot` and the process's from /proc. Reads /proc: call it
    /// off the async workers.
    pub fn render(&self, snapshot: Snapshot, format: Format) -> String {
        self.links
            .get_or_create(&PathLabels {
                path: PathLabel::Direct,
            })
            .set(snapshot.direct_links);
        self.links
            .get_or_create(&PathLabels {
                path: PathLabel::Relayed,
            })
            .set(snapshot.relayed_links);
        self.hub_devices.set(snapshot.hub_devices);
        self.hub_channels.set(snapshot.hub_channels);
        self.hub_relays.set(snapshot.hub_relays);
        self.chat_clients.set(snapshot.chat_clients);
        let process = ProcessFacts::read();
        self.resident_memory.set(process.resident_bytes);
        self.open_fds.set(process.open_fds);
        let mut text = String::with_capacity(8 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing to a String fails only if an encoder does; say so in
            // the text rather than serving half a page as whole.
            return format!("# meshd: encoding the metrics failed: {error}\n");
        }
        match format {
            Format::OpenMetrics => text,
            Format::Text => classic_text(&text),
        }
    }
}

/// OpenMetrics text as the classic format says it: a counter family is
/// named with its `_total` (OpenMetrics names the family without it), and
/// there are no `# UNIT` or `# EOF` lines. Everything else is the same.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match described {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// What /proc says of this process.
struct ProcessFacts {
    resident_bytes: i64,
    open_fds: i64,
}

impl ProcessFacts {
    fn read() -> ProcessFacts {
        // statm's second field is resident pages.
        let pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<i64>().ok())
            .unwrap_or(0);
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            // One entry is the directory being read.
            .map(|entries| entries.count().saturating_sub(1))
            .unwrap_or(0);
        ProcessFacts {
            resident_bytes: pages.saturating_mul(page_size),
            open_fds: i64::try_from(open_fds).unwrap_or(i64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_of_the_contract_is_rendered() {
        let snapshot = Snapshot {
            direct_links: 2,
            relayed_links: 1,
            hub_devices: 3,
            ..Snapshot::default()
        };
        let text = metrics().render(snapshot, Format::OpenMetrics);
        for series in [
            "meshd_build_info{version=\"",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "meshd_links{path=\"direct\"} 2",
            "meshd_links{path=\"relayed\"} 1",
            "meshd_link_bytes_total{path=\"direct\",direction=\"in\"} ",
            "meshd_link_bytes_total{path=\"relayed\",direction=\"out\"} ",
            "meshd_messages_sent_total ",
            "meshd_messages_received_total ",
            "meshd_holepunch_attempts_total ",
            "meshd_holepunch_successes_total ",
            "meshd_handshake_failures_total{reason=\"wrong_key\"} ",
            "meshd_hub_devices 3",
            "meshd_hub_channels ",
            "meshd_hub_relays ",
            "meshd_hub_relay_bytes_total ",
            "meshd_hub_registrations_total ",
            "meshd_chat_clients ",
            "meshd_chat_messages_total ",
            "meshd_chat_logins_total{result=\"throttled\"} ",
            "meshd_chat_slow_consumers_total ",
            "meshd_handshake_duration_seconds_bucket{le=\"",
            "meshd_time_to_direct_seconds_count ",
            "meshd_chat_fanout_delay_seconds_sum ",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = metrics().render(snapshot, Format::Text);
        assert!(
            classic.contains("# TYPE meshd_messages_sent_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP meshd_messages_sent_total Messages sent"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE meshd_hub_devices gauge\n"),
            "{classic}"
        );
        assert!(
            classic.contains("meshd_links{path=\"direct\"} 2\n"),
            "{classic}"
        );
        assert!(
            !classic.contains("# EOF") && !classic.contains("# UNIT"),
            "{classic}"
        );
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }

    #[test]
    fn the_process_is_measured() {
        let facts = ProcessFacts::read();
        assert!(facts.resident_bytes > 1 << 20, "{}", facts.resident_bytes);
        assert!(facts.open_fds >= 3, "{}", facts.open_fds);
    }
}
