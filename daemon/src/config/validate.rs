//! Raw values into typed config: defaults filled in, every value checked, every
//! problem recorded with its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Problem;
use super::parse::KeyLines;
use super::raw::{
    RawChat, RawCluster, RawConfig, RawControl, RawMesh, RawNode, RawSignaling, RawWeb,
};
use super::{
    ChatConfig, ChatTls, ClusterConfig, Config, ControlConfig, LogLevel, MeshConfig, NatsUrl,
    NodeConfig, SignalingConfig, WebConfig,
};
use crate::device_id::DeviceId;
use crate::hub_wire::{HubUrl, MAX_ENDPOINTS};
use crate::paths;

/// Longest Unix socket path the kernel accepts (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

struct Checker<'a> {
    lines: &'a KeyLines,
    problems: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line: self.lines.of(key),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn addr(&mut self, key: &str, value: Option<String>, default: &str) -> SocketAddr {
        let fallback = default
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let Some(text) = value else { return fallback };
        match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.problem(
                    key,
                    format!("{text:?} is not an address: expected IP:PORT such as {default:?}"),
                );
                fallback
            }
        }
    }

    fn duration(
        &mut self,
        key: &str,
        value: Option<String>,
        default: Duration,
        range: (Duration, Duration),
    ) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(&text) {
            Ok(d) if d >= range.0 && d <= range.1 => d,
            Ok(_) => {
                self.problem(
                    key,
                    format!(
                        "{text:?} is out of range: must be between {} and {}",
                        humantime::format_duration(range.0),
                        humantime::format_duration(range.1)
                    ),
                );
                default
            }
            Err(error) => {
                self.problem(
                    key,
                    format!("{text:?} is not a duration ({error}): write e.g. \"500ms\", \"30s\", \"5m\""),
                );
                default
            }
        }
    }

    fn count(&mut self, key: &str, value: Option<u64>, default: usize, range: (u64, u64)) -> usize {
        let Some(n) = value else { return default };
        if n < range.0 || n > range.1 {
            self.problem(
                key,
                format!(
                    "{n} is out of range: must be between {} and {}",
                    range.0, range.1
                ),
            );
            return default;
        }
        usize::try_from(n).unwrap_or(default)
    }

    fn absolute_path(&mut self, key: &str, value: Option<String>, default: PathBuf) -> PathBuf {
        let Some(text) = value else { return default };
        let path = PathBuf::from(&text);
        if !path.is_absolute() {
            self.problem(key, format!("{text:?} must be an absolute path"));
            return default;
        }
        path
    }
}

pub fn validate(
    raw: RawConfig,
    lines: &KeyLines,
    file: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> Config {
    let mut check = Checker { lines, problems };
    let signaling = signaling(&mut check, raw.signaling.unwrap_or_default());
    let cluster = cluster(&mut check, raw.cluster.unwrap_or_default(), &signaling);
    Config {
        file: file.map(Path::to_path_buf),
        node: node(&mut check, raw.node.unwrap_or_default()),
        control: control(&mut check, raw.control.unwrap_or_default()),
        signaling,
        chat: chat(&mut check, raw.chat.unwrap_or_default()),
        mesh: mesh(&mut check, raw.mesh.unwrap_or_default()),
        web: web(&mut check, raw.web.unwrap_or_default()),
        cluster,
    }
}

fn cluster(check: &mut Checker<'_>, raw: RawCluster, signaling: &SignalingConfig) -> ClusterConfig {
    let nats: Vec<NatsUrl> = raw
        .nats
        .unwrap_or_default()
        .iter()
        .filter_map(|url| match NatsUrl::parse(url) {
            Ok(url) => Some(url),
            Err(problem) => {
                check.problem("cluster.nats", problem);
                None
            }
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for url in &nats {
        if !seen.insert(url.as_str()) {
            check.problem(
                "cluster.nats",
                format!("{url} is listed twice; list each NATS server once"),
            );
        }
    }
    let written = raw.advertise.unwrap_or_default();
    if nats.is_empty() {
        if !written.is_empty() {
            check.problem(
                "cluster.advertise",
                "is set but cluster.nats is empty, so there is no cluster to advertise to: set nats, or remove advertise",
            );
        }
        return ClusterConfig {
            nats,
            advertise: None,
        };
    }
    if !signaling.enabled {
        check.problem(
            "cluster.nats",
            "a cluster joins hubs, and [signaling] is not enabled on this node: enable it, or leave nats empty",
        );
    }
    let advertise = if written.is_empty() {
        if signaling.listen.ip().is_unspecified() {
            check.problem(
                "cluster.advertise",
                format!(
                    "signaling.listen {} is a wildcard address, which devices cannot dial: \
                     set advertise = \"http://HOST:{}\" with the name or address devices reach this hub at",
                    signaling.listen,
                    signaling.listen.port()
                ),
            );
            None
        } else {
            HubUrl::parse(&format!("http://{}", signaling.listen)).ok()
        }
    } else if written.contains('#') {
        check.problem(
            "cluster.advertise",
            format!("{written:?}: write the URL without #KEY; the cluster hands devices this hub's own key"),
        );
        None
    } else {
        match HubUrl::parse(&written) {
            Ok(url) => Some(url),
            Err(error) => {
                check.problem("cluster.advertise", error.to_string());
                None
            }
        }
    };
    ClusterConfig { nats, advertise }
}

fn web(check: &mut Checker<'_>, raw: RawWeb) -> WebConfig {
    let enabled = raw.enabled.unwrap_or(true);
    let listen = check.addr("web.listen", raw.listen, "127.0.0.1:8083");
    let token = raw.token.unwrap_or_default();
    // Sent as `Authorization: Bearer TOKEN` or a form field, and compared
    // byte for byte: spaces, control or non-ASCII characters could never
    // match, and would lock everyone out without a word.
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        check.problem(
            "web.token",
            "must be visible ASCII without spaces (e.g. from: openssl rand -hex 32)".to_owned(),
        );
    }
    let web = WebConfig {
        enabled,
        listen,
        token,
    };
    if web.exposed_with(&web.token) {
        check.problems.push(Problem {
            line: check.lines.of("web.token").or_else(|| check.lines.of("web.listen")),
            key: "web.token".to_owned(),
            message: format!(
                "web.listen {listen} is not a loopback address, so anyone who can reach it would see every device: \
                 set token = \"<a long random string>\" (e.g. from: openssl rand -hex 32), or listen on 127.0.0.1"
            ),
        });
    }
    web
}

fn node(check: &mut Checker<'_>, raw: RawNode) -> NodeConfig {
    let id = match raw.id {
        Some(text) => DeviceId::parse(&text).unwrap_or_else(|invalid| {
            check.problem("node.id", invalid.to_string());
            DeviceId::from_hostname("")
        }),
        None => {
            let host = nix::unistd::gethostname().unwrap_or_default();
            DeviceId::from_hostname(&host.to_string_lossy())
        }
    };
    let log_level = match raw.log_level.as_deref() {
        None | Some("info") => LogLevel::Info,
        Some("error") => LogLevel::Error,
        Some("warn") => LogLevel::Warn,
        Some("debug") => LogLevel::Debug,
        Some("trace") => LogLevel::Trace,
        Some(other) => {
            check.problem(
                "node.log_level",
                format!("{other:?} is not a log level: use error, warn, info, debug or trace"),
            );
            LogLevel::Info
        }
    };
    NodeConfig {
        id,
        state_dir: check.absolute_path("node.state_dir", raw.state_dir, paths::default_state_dir()),
        log_level,
    }
}

fn control(check: &mut Checker<'_>, raw: RawControl) -> ControlConfig {
    let socket = check.absolute_path("control.socket", raw.socket, paths::default_socket_path());
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        check.problem(
            "control.socket",
            format!(
                "path is {} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket allows: choose a shorter path",
                socket.as_os_str().len()
            ),
        );
    }
    ControlConfig {
        socket,
        group: raw.group.unwrap_or_else(|| "meshd".to_owned()),
    }
}

fn signaling(check: &mut Checker<'_>, raw: RawSignaling) -> SignalingConfig {
    SignalingConfig {
        enabled: raw.enabled.unwrap_or(true),
        listen: check.addr("signaling.listen", raw.listen, "127.0.0.1:8080"),
        device_ttl: check.duration(
            "signaling.device_ttl",
            raw.device_ttl,
            Duration::from_secs(60),
            (Duration::from_secs(1), Duration::from_secs(86_400)),
        ),
        join_token: raw.join_token.unwrap_or_default(),
        request_timeout: check.duration(
            "signaling.request_timeout",
            raw.request_timeout,
            Duration::from_secs(10),
            (Duration::from_millis(100), Duration::from_secs(600)),
        ),
        max_connections: check.count(
            "signaling.max_connections",
            raw.max_connections,
            1024,
            (1, 1_000_000),
        ),
        max_devices: check.count(
            "signaling.max_devices",
            raw.max_devices,
            10_000,
            (1, 1_000_000),
        ),
        relay_bytes_per_sec: check.count(
            "signaling.relay_bytes_per_sec",
            raw.relay_bytes_per_sec,
            8 << 20,
            (0, 1 << 40),
        ) as u64,
        registrations_per_sec: check.count(
            "signaling.registrations_per_sec",
            raw.registrations_per_sec,
            20,
            (0, 1_000_000),
        ) as u64,
    }
}

fn chat(check: &mut Checker<'_>, raw: RawChat) -> ChatConfig {
    let enabled = raw.enabled.unwrap_or(true);
    let listen = check.addr("chat.listen", raw.listen, "127.0.0.1:8081");
    let allow_plaintext = raw.allow_plaintext.unwrap_or(false);
    let tls = chat_tls(check, raw.tls, raw.tls_cert, raw.tls_key);
    // Passwords cross the chat port in clear unless it speaks TLS; off
    // loopback that is refused unless asked for (docs/config.md).
    if enabled && tls.is_none() && !allow_plaintext && !listen.ip().to_canonical().is_loopback() {
        check.problems.push(Problem {
            line: check.lines.of("chat.tls").or_else(|| check.lines.of("chat.listen")),
            key: "chat.tls".to_owned(),
            message: format!(
                "chat.listen {listen} is not a loopback address, so passwords and messages would cross the network in clear: \
                 set tls = true (with tls_cert and tls_key, or neither for a self-signed certificate), \
                 or allow_plaintext = true to accept that on purpose"
            ),
        });
    }
    ChatConfig {
        enabled,
        listen,
        max_clients: check.count("chat.max_clients", raw.max_clients, 10_000, (1, 1_000_000)),
        max_line_bytes: check.count(
            "chat.max_line_bytes",
            raw.max_line_bytes,
            4096,
            (64, 1 << 20),
        ),
        rate_per_user: check.count("chat.rate_per_user", raw.rate_per_user, 20, (0, 1_000_000))
            as u64,
        burst_per_user: check.count(
            "chat.burst_per_user",
            raw.burst_per_user,
            100,
            (1, 1_000_000),
        ) as u64,
        tls,
        allow_plaintext,
    }
}

/// `tls`, `tls_cert` and `tls_key` into one [`ChatTls`]: the files come as a
/// pair, and only with `tls = true`.
fn chat_tls(
    check: &mut Checker<'_>,
    tls: Option<bool>,
    cert: Option<String>,
    key: Option<String>,
) -> Option<ChatTls> {
    let non_empty = |value: Option<String>| value.filter(|text| !text.is_empty());
    let (cert, key) = (non_empty(cert), non_empty(key));
    if !tls.unwrap_or(false) {
        for (name, value) in [("chat.tls_cert", &cert), ("chat.tls_key", &key)] {
            if value.is_some() {
                check.problem(
                    name,
                    "is set but chat.tls is false, so the port would speak plain text: set tls = true, or remove it",
                );
            }
        }
        return None;
    }
    match (cert, key) {
        (None, None) => Some(ChatTls::SelfSigned),
        (Some(cert), Some(key)) => {
            let cert = check.absolute_path("chat.tls_cert", Some(cert), PathBuf::new());
            let key = check.absolute_path("chat.tls_key", Some(key), PathBuf::new());
            Some(ChatTls::Files { cert, key })
        }
        (Some(_), None) => {
            check.problem(
                "chat.tls_cert",
                "is set without chat.tls_key: set both (PEM files), or neither for a self-signed certificate",
            );
            Some(ChatTls::SelfSigned)
        }
        (None, Some(_)) => {
            check.problem(
                "chat.tls_key",
                "is set without chat.tls_cert: set both (PEM files), or neither for a self-signed certificate",
            );
            Some(ChatTls::SelfSigned)
        }
    }
}

fn mesh(check: &mut Checker<'_>, raw: RawMesh) -> MeshConfig {
    let signaling = raw
        .signaling
        .unwrap_or_else(|| vec!["http://127.0.0.1:8080".to_owned()]);
    if signaling.is_empty() && raw.enabled != Some(false) {
        check.problem(
            "mesh.signaling",
            "needs one or more signaling servers, e.g. [\"http://127.0.0.1:8080\"]",
        );
    }
    let signaling = signaling
        .iter()
        .filter_map(|url| match HubUrl::parse(url) {
            Ok(hub) => Some(hub),
            Err(error) => {
                check.problem("mesh.signaling", error.to_string());
                None
            }
        })
        .collect::<Vec<HubUrl>>();
    let mut seen = std::collections::HashSet::new();
    for hub in &signaling {
        if !seen.insert(hub.to_string()) {
            check.problem(
                "mesh.signaling",
                format!("{hub} is listed twice; list each signaling server once"),
            );
        }
    }
    let advertise = raw.advertise.unwrap_or_default();
    if advertise.len() > MAX_ENDPOINTS {
        check.problem(
            "mesh.advertise",
            format!("at most {MAX_ENDPOINTS} endpoints, got {}", advertise.len()),
        );
    }
    let advertise = advertise
        .into_iter()
        .map(|text| check.addr("mesh.advertise", Some(text), "203.0.113.7:8082"))
        .collect::<Vec<_>>();
    if advertise
        .iter()
        .any(|addr| addr.ip().is_unspecified() || addr.port() == 0)
    {
        check.problem(
            "mesh.advertise",
            "peers cannot dial a wildcard address or port 0: list addresses they can reach",
        );
    }
    MeshConfig {
        enabled: raw.enabled.unwrap_or(true),
        listen: check.addr("mesh.listen", raw.listen, "0.0.0.0:8082"),
        signaling,
        join_token: raw.join_token.unwrap_or_default(),
        advertise,
    }
}

/// What `--check-config` prints for a secret that is set: enough to see it
/// is there, nothing that would leak it into a terminal, a ticket or a log.
pub const REDACTED: &str = "<redacted>";

/// A secret as printed: empty stays empty, anything else is [`REDACTED`].
fn redact(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        REDACTED.to_owned()
    }
}

/// The validated config back in raw form, every key present, for printing;
/// secrets (the join tokens) are redacted.
pub fn to_raw(config: &Config) -> RawConfig {
    let duration = |d: Duration| humantime::format_duration(d).to_string();
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    RawConfig {
        node: Some(RawNode {
            id: Some(config.node.id.to_string()),
            state_dir: Some(config.node.state_dir.display().to_string()),
            log_level: Some(config.node.log_level.as_str().to_owned()),
        }),
        control: Some(RawControl {
            socket: Some(config.control.socket.display().to_string()),
            group: Some(config.control.group.clone()),
        }),
        signaling: Some(RawSignaling {
            enabled: Some(config.signaling.enabled),
            listen: Some(config.signaling.listen.to_string()),
            device_ttl: Some(duration(config.signaling.device_ttl)),
            join_token: Some(redact(&config.signaling.join_token)),
            request_timeout: Some(duration(config.signaling.request_timeout)),
            max_connections: Some(count(config.signaling.max_connections)),
            max_devices: Some(count(config.signaling.max_devices)),
            relay_bytes_per_sec: Some(config.signaling.relay_bytes_per_sec),
            registrations_per_sec: Some(config.signaling.registrations_per_sec),
        }),
        chat: Some(RawChat {
            enabled: Some(config.chat.enabled),
            listen: Some(config.chat.listen.to_string()),
            max_clients: Some(count(config.chat.max_clients)),
            max_line_bytes: Some(count(config.chat.max_line_bytes)),
            rate_per_user: Some(config.chat.rate_per_user),
            burst_per_user: Some(config.chat.burst_per_user),
            tls: Some(config.chat.tls.is_some()),
            tls_cert: Some(match &config.chat.tls {
                Some(ChatTls::Files { cert, .. }) => cert.display().to_string(),
                _ => String::new(),
            }),
            tls_key: Some(match &config.chat.tls {
                Some(ChatTls::Files { key, .. }) => key.display().to_string(),
                _ => String::new(),
            }),
            allow_plaintext: Some(config.chat.allow_plaintext),
        }),
        mesh: Some(RawMesh {
            enabled: Some(config.mesh.enabled),
            listen: Some(config.mesh.listen.to_string()),
            signaling: Some(
                config
                    .mesh
                    .signaling
                    .iter()
                    .map(HubUrl::as_written)
                    .collect(),
            ),
            join_token: Some(redact(&config.mesh.join_token)),
            advertise: Some(
                config
                    .mesh
                    .advertise
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            ),
        }),
        web: Some(RawWeb {
            enabled: Some(config.web.enabled),
            listen: Some(config.web.listen.to_string()),
            token: Some(redact(&config.web.token)),
        }),
        cluster: Some(RawCluster {
            nats: Some(
                config
                    .cluster
                    .nats
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            ),
            advertise: Some(
                config
                    .cluster
                    .advertise
                    .as_ref()
                    .map(HubUrl::as_written)
                    .unwrap_or_default(),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::REDACTED;
    use std::path::Path;

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml(text, Some(Path::new("/etc/meshd/meshd.toml"))) {
            Ok(_) => Vec::new(),
            Err(error @ ConfigError::Invalid { .. }) => error.lines(),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_on_loopback() {
        let config = Config::builtin().unwrap();
        assert!(config.signaling.enabled && config.chat.enabled && config.mesh.enabled);
        assert_eq!(config.signaling.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.chat.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(config.mesh.listen.to_string(), "0.0.0.0:8082");
        assert_eq!(config.signaling.device_ttl.as_secs(), 60);
        assert_eq!(config.chat.max_clients, 10_000);
        assert_eq!(config.chat.max_line_bytes, 4096);
    }

    #[test]
    fn semantic_problems_name_file_line_and_key() {
        let text = "[signaling]\nlisten = \"localhost\"\ndevice_ttl = \"soon\"\n[node]\nid = \"no spaces\"\nlog_level = \"loud\"\n[mesh]\nsignaling = [\"ftp://x:1\"]\n";
        let lines = problems(text);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(
            lines[0].starts_with("/etc/meshd/meshd.toml:2: "),
            "sorted by line: {lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("/etc/meshd/meshd.toml:5: node.id: ")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with(
                "/etc/meshd/meshd.toml:2: signaling.listen: \"localhost\" is not an address"
            )),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("/etc/meshd/meshd.toml:3: signaling.device_ttl: ")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("/etc/meshd/meshd.toml:6: node.log_level: ")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("/etc/meshd/meshd.toml:8: mesh.signaling: ")),
            "{lines:#?}"
        );
    }

    #[test]
    fn ranges_are_enforced() {
        assert_eq!(problems("[chat]\nmax_line_bytes = 1\n").len(), 1);
        assert_eq!(problems("[signaling]\ndevice_ttl = \"10ms\"\n").len(), 1);
        assert_eq!(problems("[control]\nsocket = \"relative.sock\"\n").len(), 1);
        assert!(
            problems("[mesh]\nsignaling = [\"http://10.0.0.1:8080\", \"http://hub:80/\"]\n")
                .is_empty()
        );
    }

    #[test]
    fn a_plain_text_chat_port_off_loopback_is_refused_naming_chat_tls() {
        let lines = problems("[chat]\nlisten = \"0.0.0.0:8081\"\n");
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("/etc/meshd/meshd.toml:2: chat.tls: chat.listen 0.0.0.0:8081 is not a loopback address"),
            "{lines:#?}"
        );
        assert!(lines[0].contains("allow_plaintext = true"), "{lines:#?}");
        let lines = problems("[chat]\ntls = false\nlisten = \"[::]:8081\"\n");
        assert!(
            lines[0].starts_with("/etc/meshd/meshd.toml:2: chat.tls: "),
            "the tls line: {lines:#?}"
        );
        assert!(problems("[chat]\nlisten = \"0.0.0.0:8081\"\nallow_plaintext = true\n").is_empty());
        assert!(problems("[chat]\nlisten = \"0.0.0.0:8081\"\ntls = true\n").is_empty());
        assert!(problems("[chat]\nlisten = \"[::1]:8081\"\n").is_empty());
        assert!(problems("[chat]\nlisten = \"[::ffff:127.0.0.1]:8081\"\n").is_empty());
        assert!(problems("[chat]\nenabled = false\nlisten = \"0.0.0.0:8081\"\n").is_empty());
    }

    #[test]
    fn a_web_token_that_could_never_be_sent_is_refused_with_its_line() {
        for token in [
            " s3cret",
            "s3cret ",
            "two words",
            "   ",
            "caf\u{e9}",
            "tab\there",
        ] {
            let lines = problems(&format!("[web]\n\ntoken = {token:?}\n"));
            assert_eq!(
                lines,
                [
                    "/etc/meshd/meshd.toml:3: web.token: must be visible ASCII without spaces (e.g. from: openssl rand -hex 32)"
                ],
                "{token:?}"
            );
        }
        assert!(problems("[web]\ntoken = \"a-Z_0.9~!@#$%^&*()+=\"\n").is_empty());
    }

    #[test]
    fn a_web_console_off_loopback_needs_a_token_naming_web_token() {
        let config = Config::builtin().unwrap();
        assert!(config.web.enabled);
        assert_eq!(config.web.listen.to_string(), "127.0.0.1:8083");
        assert_eq!(config.web.token, "");
        let lines = problems("[web]\nlisten = \"0.0.0.0:8083\"\n");
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("/etc/meshd/meshd.toml:2: web.token: web.listen 0.0.0.0:8083 is not a loopback address"),
            "{lines:#?}"
        );
        let lines = problems("[web]\ntoken = \"\"\nlisten = \"[::]:8083\"\n");
        assert!(
            lines[0].starts_with("/etc/meshd/meshd.toml:2: web.token: "),
            "{lines:#?}"
        );
        assert!(problems("[web]\nlisten = \"0.0.0.0:8083\"\ntoken = \"s3cret\"\n").is_empty());
        assert!(problems("[web]\nlisten = \"[::1]:8083\"\n").is_empty());
        assert!(problems("[web]\nenabled = false\nlisten = \"0.0.0.0:8083\"\n").is_empty());
        let lines = problems("[web]\nlisten = \"localhost:8083\"\n");
        assert!(
            lines[0].contains("web.listen: \"localhost:8083\" is not an address"),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_cluster_names_nats_servers_and_a_url_devices_can_dial() {
        let none = Config::builtin().unwrap();
        assert!(!none.cluster.enabled() && none.cluster.advertise.is_none());
        let config = Config::from_toml(
            "[signaling]\nlisten = \"10.0.0.1:8080\"\n[cluster]\nnats = [\"nats://10.0.0.9:4222\", \"nats://nats.example:4222/\"]\n",
            None,
        )
        .unwrap();
        assert!(config.cluster.enabled());
        let urls: Vec<&str> = config.cluster.nats.iter().map(|url| url.as_str()).collect();
        assert_eq!(urls, ["nats://10.0.0.9:4222", "nats://nats.example:4222"]);
        assert_eq!(
            config
                .cluster
                .advertise
                .map(|url| url.as_written())
                .as_deref(),
            Some("http://10.0.0.1:8080"),
            "the signaling listen address, when it is one"
        );
        // Every problem names its key and what to write.
        for (text, expected) in [
            (
                "[cluster]\nnats = [\"http://10.0.0.9:4222\"]\n",
                ":2: cluster.nats: \"http://10.0.0.9:4222\" is not a nats:// URL",
            ),
            (
                "[cluster]\nnats = [\"nats://10.0.0.9\"]\n",
                ":2: cluster.nats: \"nats://10.0.0.9\" needs a host and a port",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\", \"nats://a:1\"]\n",
                "cluster.nats: nats://a:1 is listed twice",
            ),
            (
                "[signaling]\nlisten = \"0.0.0.0:8080\"\n[cluster]\nnats = [\"nats://a:1\"]\n",
                "cluster.advertise: signaling.listen 0.0.0.0:8080 is a wildcard address",
            ),
            (
                "[signaling]\nenabled = false\n[cluster]\nnats = [\"nats://a:1\"]\n",
                "cluster.nats: a cluster joins hubs",
            ),
            (
                "[cluster]\nadvertise = \"http://hub:8080\"\n",
                "cluster.advertise: is set but cluster.nats is empty",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nadvertise = \"http://hub:8080#AAAA\"\n",
                "cluster.advertise: \"http://hub:8080#AAAA\": write the URL without #KEY",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nadvertise = \"hub:8080\"\n",
                "cluster.advertise: ",
            ),
        ] {
            let lines = problems(text);
            assert_eq!(lines.len(), 1, "{text}: {lines:#?}");
            assert!(lines[0].contains(expected), "{text}: {lines:#?}");
        }
        let set = Config::from_toml(
            "[signaling]\nlisten = \"0.0.0.0:8080\"\n[cluster]\nnats = [\"nats://a:1\"]\nadvertise = \"http://hub.example:8080\"\n",
            None,
        )
        .unwrap();
        assert_eq!(
            set.cluster.advertise.map(|url| url.as_written()).as_deref(),
            Some("http://hub.example:8080")
        );
    }

    #[test]
    fn the_web_token_is_redacted_in_the_effective_config() {
        let config = Config::from_toml("[web]\ntoken = \"s3cret\"\n", None).unwrap();
        let text = config.to_toml();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains(&format!("token = \"{REDACTED}\"")), "{text}");
    }

    #[test]
    fn tls_files_come_as_a_pair_and_only_with_tls() {
        let lines = problems("[chat]\ntls = true\ntls_cert = \"/etc/meshd/chat.pem\"\n");
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains(":3: chat.tls_cert: is set without chat.tls_key"),
            "{lines:#?}"
        );
        let lines = problems("[chat]\ntls = true\ntls_key = \"/etc/meshd/chat.key\"\n");
        assert!(
            lines[0].contains(":3: chat.tls_key: is set without chat.tls_cert"),
            "{lines:#?}"
        );
        let lines = problems("[chat]\ntls_cert = \"/a\"\ntls_key = \"/b\"\n");
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("chat.tls is false"), "{lines:#?}");
        let lines = problems("[chat]\ntls = true\ntls_cert = \"c.pem\"\ntls_key = \"/k.pem\"\n");
        assert!(
            lines[0].contains("chat.tls_cert: \"c.pem\" must be an absolute path"),
            "{lines:#?}"
        );
        let config = Config::from_toml(
            "[chat]\ntls = true\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
            None,
        )
        .unwrap();
        assert_eq!(
            config.chat.tls,
            Some(super::ChatTls::Files {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        let own = Config::from_toml("[chat]\ntls = true\ntls_cert = \"\"\n", None).unwrap();
        assert_eq!(
            own.chat.tls,
            Some(super::ChatTls::SelfSigned),
            "empty means unset"
        );
        assert_eq!(
            Config::builtin().unwrap().chat.tls,
            None,
            "plain text by default"
        );
    }

    #[test]
    fn effective_config_round_trips() {
        for text in [
            "[node]\nid = \"x\"\n[chat]\nenabled = false\n",
            "[chat]\ntls = true\n",
            "[chat]\ntls = true\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
            "[chat]\nlisten = \"0.0.0.0:1\"\nallow_plaintext = true\n",
        ] {
            let config = Config::from_toml(text, None).unwrap();
            let again = Config::from_toml(&config.to_toml(), None).unwrap();
            assert_eq!(config, again);
        }
    }

    #[test]
    fn the_effective_config_never_shows_a_secret() {
        let config = Config::from_toml(
            "[signaling]\njoin_token = \"hub-s3cret\"\n[mesh]\njoin_token = \"dev-s3cret\"\n",
            None,
        )
        .unwrap();
        let printed = config.to_toml();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert_eq!(printed.matches(REDACTED).count(), 2, "{printed}");
        let unset = Config::from_toml("", None).unwrap().to_toml();
        assert!(!unset.contains(REDACTED), "an unset token shows as empty");
    }
}
