//! meshd's configuration: the TOML file (docs/config.md) parsed into typed,
//! validated structs.
//!
//! Loading never half-succeeds: either every key is valid and a [`Config`] comes
//! back, or a [`ConfigError`] lists every problem with file, line and key. A
//! reload builds a whole new `Config` the same way and compares it with the
//! running one (`diff.rs`), so an invalid file never touches a running daemon.

mod diff;
mod error;
mod parse;
mod raw;
mod validate;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diff::ReloadPlan;
pub use error::ConfigError;

use crate::device_id::DeviceId;
use crate::hub_wire::HubUrl;

/// Where the configuration comes from: an explicit `--config PATH` must exist;
/// the default path may be absent, and then the built-in defaults apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLocation {
    /// The file to read.
    pub path: PathBuf,
    /// Named on the command line, so a missing file is an error.
    pub explicit: bool,
}

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from; `None` when running on built-in defaults.
    pub file: Option<PathBuf>,
    /// `[node]`
    pub node: NodeConfig,
    /// `[control]`
    pub control: ControlConfig,
    /// `[signaling]`
    pub signaling: SignalingConfig,
    /// `[chat]`
    pub chat: ChatConfig,
    /// `[mesh]`
    pub mesh: MeshConfig,
    /// `[web]`
    pub web: WebConfig,
    /// `[cluster]`
    pub cluster: ClusterConfig,
}

/// `[node]`: who this node is and where it keeps state.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// This device's id; defaults to the host name.
    pub id: DeviceId,
    /// Keys, users and other state live here.
    pub state_dir: PathBuf,
    /// The default log filter; `RUST_LOG` overrides it.
    pub log_level: LogLevel,
}

/// `[control]`: the control socket.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// The socket's path.
    pub socket: PathBuf,
    /// The group given the socket, when it exists; empty to keep the daemon's.
    pub group: String,
}

/// `[signaling]`: the discovery server.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalingConfig {
    /// Role switch.
    pub enabled: bool,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// A device not heard from for this long leaves the list.
    pub device_ttl: Duration,
    /// Non-empty: `POST /register` needs this bearer token.
    pub join_token: String,
    /// Time a client has to send a whole request, headers and body.
    pub request_timeout: Duration,
    /// Concurrent HTTP connections; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Device ids (and key bindings) the registry holds at most.
    pub max_devices: usize,
    /// Bytes per second each device may send through the relay; 0 turns
    /// relaying off.
    pub relay_bytes_per_sec: u64,
    /// New device ids one source address may register per second (five
    /// seconds' worth at once); 0 means no limit.
    pub registrations_per_sec: u64,
}

/// `[chat]`: the broadcast TCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatConfig {
    /// Role switch.
    pub enabled: bool,
    /// TCP listen address.
    pub listen: SocketAddr,
    /// Logged-in clients at most.
    pub max_clients: usize,
    /// Longest line a client may send.
    pub max_line_bytes: usize,
    /// Messages a second each user may send, sustained; 0: no limit.
    pub rate_per_user: u64,
    /// Messages each user may send at once before the rate applies.
    pub burst_per_user: u64,
    /// TLS on the chat port, and where its certificate comes from; `None`:
    /// plain text.
    pub tls: Option<ChatTls>,
    /// A plain-text port that is not on loopback was asked for on purpose.
    pub allow_plaintext: bool,
}

/// Where the chat port's certificate comes from (`[chat] tls_cert`,
/// `tls_key`); both or neither, so one without the other cannot be
/// represented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTls {
    /// Neither key set: meshd's own self-signed certificate in `state_dir`,
    /// created on first start.
    SelfSigned,
    /// The operator's PEM files.
    Files {
        /// `tls_cert`: the certificate chain, end-entity first.
        cert: PathBuf,
        /// `tls_key`: its private key.
        key: PathBuf,
    },
}

/// `[mesh]`: this node as a device.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// Role switch.
    pub enabled: bool,
    /// Peer-to-peer listen address.
    pub listen: SocketAddr,
    /// Signaling servers, as `http://HOST:PORT`.
    pub signaling: Vec<HubUrl>,
    /// Bearer token sent when registering.
    pub join_token: String,
    /// Endpoints to advertise instead of the learnt ones (a port forward, a
    /// known public address); empty: learn them.
    pub advertise: Vec<SocketAddr>,
}

/// `[web]`: the local console: metrics, the live page and its JSON
/// (docs/web.md).
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// Role switch.
    pub enabled: bool,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Non-empty: every request needs this bearer token (or the page's
    /// login); required when `listen` is not loopback.
    pub token: String,
}

impl WebConfig {
    /// Whether this console with `token` would be open beyond loopback to
    /// anyone: it shows every device and its addresses, so that is refused
    /// at start and on reload (docs/config.md).
    pub fn exposed_with(&self, token: &str) -> bool {
        self.enabled && token.is_empty() && !self.listen.ip().to_canonical().is_loopback()
    }
}

/// `[cluster]`: hubs that share one mesh through NATS JetStream
/// (docs/cluster.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// NATS servers, `nats://HOST:PORT`; empty: no cluster.
    pub nats: Vec<NatsUrl>,
    /// This hub's URL as the cluster hands it to devices; `None` without a
    /// cluster.
    pub advertise: Option<HubUrl>,
}

impl ClusterConfig {
    /// The hub is part of a cluster.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }
}

/// A NATS server of `[cluster] nats`, `nats://HOST:PORT`, checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl(String);

impl NatsUrl {
    /// Accepts `nats://HOST:PORT` (a host name or an IP, no path).
    pub fn parse(text: &str) -> Result<NatsUrl, String> {
        let hint = "write e.g. \"nats://127.0.0.1:4222\"";
        let Some(rest) = text.strip_prefix("nats://") else {
            return Err(format!("{text:?} is not a nats:// URL: {hint}"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(format!("{text:?} must be just nats://HOST:PORT: {hint}"));
        }
        let port = authority
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port))
            .and_then(|port| port.parse::<u16>().ok())
            .filter(|port| *port != 0);
        if port.is_none() {
            return Err(format!("{text:?} needs a host and a port: {hint}"));
        }
        Ok(NatsUrl(format!("nats://{authority}")))
    }

    /// As the NATS client takes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[node] log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: lifecycle events.
    Info,
    /// Per-request detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The spelling used in the config and in `RUST_LOG`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl Config {
    /// The built-in defaults: every role on, on loopback.
    pub fn builtin() -> Result<Config, ConfigError> {
        Config::from_toml("", None)
    }

    /// Loads the configuration from `location` (see [`ConfigLocation`]).
    pub fn load(location: &ConfigLocation) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(&location.path) {
            Ok(text) => Config::from_toml(&text, Some(&location.path)),
            Err(error) if error.kind() == ErrorKind::NotFound && !location.explicit => {
                Config::builtin()
            }
            Err(source) => Err(ConfigError::Read {
                path: location.path.clone(),
                source,
            }),
        }
    }

    /// Parses and validates TOML text read from `file`.
    pub fn from_toml(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let (raw, lines) = parse::parse_document(text, &mut problems);
        let config = validate::validate(raw, &lines, file, &mut problems);
        problems.sort_by_key(|problem| problem.line);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                origin: file.map_or_else(
                    || "<built-in defaults>".to_owned(),
                    |path| path.display().to_string(),
                ),
                problems,
            })
        }
    }

    /// The effective configuration as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        let raw = validate::to_raw(self);
        toml::to_string_pretty(&raw).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }
}
