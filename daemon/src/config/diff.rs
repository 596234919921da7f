//! What a reload changes: keys applied live, and keys that need a restart.
//!
//! Like Nebula's config, every key is either reloadable or not; the
//! distinction is documented per key in `etc/meshd.toml`. Listeners, the
//! socket and the node's identity are fixed for a process's life, because
//! rebinding them would drop every client and peer. The two tables below are
//! the only place that decides which is which.

use std::path::Path;

use super::error::Problem;
use super::{ChatTls, Config, ConfigError};

/// A key a reload applies at once: how to see it changed, and how to take
/// the new value.
struct LiveKey {
    name: &'static str,
    differs: Differs,
    apply: fn(&mut Config, &Config),
}

const LIVE_KEYS: &[LiveKey] = &[
    LiveKey {
        name: "node.log_level",
        differs: |a, b| a.node.log_level != b.node.log_level,
        apply: |to, from| to.node.log_level = from.node.log_level,
    },
    LiveKey {
        name: "signaling.device_ttl",
        differs: |a, b| a.signaling.device_ttl != b.signaling.device_ttl,
        apply: |to, from| to.signaling.device_ttl = from.signaling.device_ttl,
    },
    LiveKey {
        name: "signaling.join_token",
        differs: |a, b| a.signaling.join_token != b.signaling.join_token,
        apply: |to, from| {
            to.signaling
                .join_token
                .clone_from(&from.signaling.join_token)
        },
    },
    LiveKey {
        name: "signaling.request_timeout",
        differs: |a, b| a.signaling.request_timeout != b.signaling.request_timeout,
        apply: |to, from| to.signaling.request_timeout = from.signaling.request_timeout,
    },
    LiveKey {
        name: "signaling.max_devices",
        differs: |a, b| a.signaling.max_devices != b.signaling.max_devices,
        apply: |to, from| to.signaling.max_devices = from.signaling.max_devices,
    },
    LiveKey {
        name: "signaling.relay_bytes_per_sec",
        differs: |a, b| a.signaling.relay_bytes_per_sec != b.signaling.relay_bytes_per_sec,
        apply: |to, from| to.signaling.relay_bytes_per_sec = from.signaling.relay_bytes_per_sec,
    },
    LiveKey {
        name: "signaling.registrations_per_sec",
        differs: |a, b| a.signaling.registrations_per_sec != b.signaling.registrations_per_sec,
        apply: |to, from| {
            to.signaling.registrations_per_sec = from.signaling.registrations_per_sec;
        },
    },
    LiveKey {
        name: "chat.rate_per_user",
        differs: |a, b| a.chat.rate_per_user != b.chat.rate_per_user,
        apply: |to, from| to.chat.rate_per_user = from.chat.rate_per_user,
    },
    LiveKey {
        name: "chat.burst_per_user",
        differs: |a, b| a.chat.burst_per_user != b.chat.burst_per_user,
        apply: |to, from| to.chat.burst_per_user = from.chat.burst_per_user,
    },
    LiveKey {
        name: "web.token",
        differs: |a, b| a.web.token != b.web.token,
        apply: |to, from| to.web.token.clone_from(&from.web.token),
    },
];

/// Tells whether a key differs between two configs.
type Differs = fn(&Config, &Config) -> bool;

/// Keys (or whole sections) that only a restart applies.
const RESTART_KEYS: &[(&str, Differs)] = &[
    ("node.id", |a, b| a.node.id != b.node.id),
    ("node.state_dir", |a, b| {
        a.node.state_dir != b.node.state_dir
    }),
    ("control.socket", |a, b| {
        a.control.socket != b.control.socket
    }),
    ("control.group", |a, b| a.control.group != b.control.group),
    ("signaling.enabled", |a, b| {
        a.signaling.enabled != b.signaling.enabled
    }),
    ("signaling.listen", |a, b| {
        a.signaling.listen != b.signaling.listen
    }),
    ("signaling.max_connections", |a, b| {
        a.signaling.max_connections != b.signaling.max_connections
    }),
    ("chat.enabled", |a, b| a.chat.enabled != b.chat.enabled),
    ("chat.listen", |a, b| a.chat.listen != b.chat.listen),
    ("chat.max_clients", |a, b| {
        a.chat.max_clients != b.chat.max_clients
    }),
    ("chat.max_line_bytes", |a, b| {
        a.chat.max_line_bytes != b.chat.max_line_bytes
    }),
    // The certificate is loaded, and the port switched to TLS or not, once
    // at start: a reload cannot turn a connected plain-text client into a
    // TLS one (docs/config.md#chat-the-chat-server).
    ("chat.tls", |a, b| {
        a.chat.tls.is_some() != b.chat.tls.is_some()
    }),
    ("chat.tls_cert", |a, b| {
        cert_file(&a.chat.tls) != cert_file(&b.chat.tls)
    }),
    ("chat.tls_key", |a, b| {
        key_file(&a.chat.tls) != key_file(&b.chat.tls)
    }),
    ("chat.allow_plaintext", |a, b| {
        a.chat.allow_plaintext != b.chat.allow_plaintext
    }),
    ("mesh", |a, b| a.mesh != b.mesh),
    ("web.enabled", |a, b| a.web.enabled != b.web.enabled),
    // The NATS connection and what this hub announces are set up once.
    ("cluster", |a, b| a.cluster != b.cluster),
    ("web.listen", |a, b| a.web.listen != b.web.listen),
];

fn cert_file(tls: &Option<ChatTls>) -> Option<&Path> {
    match tls {
        Some(ChatTls::Files { cert, .. }) => Some(cert),
        _ => None,
    }
}

fn key_file(tls: &Option<ChatTls>) -> Option<&Path> {
    match tls {
        Some(ChatTls::Files { key, .. }) => Some(key),
        _ => None,
    }
}

/// The outcome of comparing the running config with a newly loaded one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed keys that take effect at once.
    pub applied: Vec<&'static str>,
    /// Changed keys that are ignored until meshd restarts.
    pub restart_required: Vec<&'static str>,
}

impl ReloadPlan {
    /// Compares the running config with a newly loaded one.
    pub fn between(running: &Config, new: &Config) -> ReloadPlan {
        ReloadPlan {
            applied: LIVE_KEYS
                .iter()
                .filter(|key| (key.differs)(running, new))
                .map(|key| key.name)
                .collect(),
            restart_required: RESTART_KEYS
                .iter()
                .filter(|(_, differs)| differs(running, new))
                .map(|(name, _)| *name)
                .collect(),
        }
    }
}

impl Config {
    /// Refuses a reload whose live keys would be unsafe beside the keys
    /// that keep their running values until a restart: a token removed
    /// while the console still listens beyond loopback would open it to
    /// the network (docs/config.md#web-the-web-console).
    pub fn check_live(&self, new: &Config) -> Result<(), ConfigError> {
        let running = &self.web;
        if running.exposed_with(&new.web.token) {
            return Err(ConfigError::Invalid {
                origin: new.file.as_ref().map_or_else(
                    || "<built-in defaults>".to_owned(),
                    |file| file.display().to_string(),
                ),
                problems: vec![Problem {
                    line: None,
                    key: "web.token".to_owned(),
                    message: format!(
                        "the web console listens on {} until meshd restarts (web.listen and web.enabled \
                         change only at a restart), so a reload cannot remove its token: keep the token, \
                         or restart meshd (systemctl restart meshd) to apply the new listen address",
                        running.listen
                    ),
                }],
            });
        }
        Ok(())
    }

    /// Takes the live keys of `new` (and its file name); everything else keeps
    /// its running value, so the result is the configuration actually in
    /// force, and a later reload still reports pending restart keys.
    pub fn apply_live(&mut self, new: &Config) {
        for key in LIVE_KEYS {
            (key.apply)(self, new);
        }
        self.file.clone_from(&new.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_changes_into_live_and_restart() {
        let old = Config::from_toml("", None).unwrap();
        let new = Config::from_toml(
            "[node]\nlog_level = \"debug\"\n[signaling]\nlisten = \"127.0.0.1:9\"\ndevice_ttl = \"5s\"\n",
            None,
        )
        .unwrap();
        let plan = ReloadPlan::between(&old, &new);
        assert_eq!(plan.applied, vec!["node.log_level", "signaling.device_ttl"]);
        assert_eq!(plan.restart_required, vec!["signaling.listen"]);
        assert_eq!(ReloadPlan::between(&old, &old), ReloadPlan::default());
    }

    #[test]
    fn restart_keys_stay_pending_until_a_restart() {
        let mut running = Config::from_toml("", None).unwrap();
        let new = Config::from_toml(
            "[signaling]\nlisten = \"127.0.0.1:9\"\ndevice_ttl = \"5s\"\n",
            None,
        )
        .unwrap();
        running.apply_live(&new);
        assert_eq!(running.signaling.device_ttl.as_secs(), 5);
        assert_eq!(running.signaling.listen.port(), 8080, "listener unchanged");
        // Reloading the same file again: nothing new to apply, the listen
        // change still pending.
        let again = ReloadPlan::between(&running, &new);
        assert!(again.applied.is_empty());
        assert_eq!(again.restart_required, vec!["signaling.listen"]);
    }

    #[test]
    fn a_reload_cannot_take_the_token_from_a_console_beyond_loopback() {
        let exposed =
            Config::from_toml("[web]\nlisten = \"0.0.0.0:8083\"\ntoken = \"t\"\n", None).unwrap();
        // Valid on its own, but the listener stays on 0.0.0.0 until a restart.
        for new in [
            "[web]\nlisten = \"127.0.0.1:8083\"\n",
            "[web]\nenabled = false\n",
        ] {
            let new = Config::from_toml(new, None).unwrap();
            let refused = exposed.check_live(&new).unwrap_err().to_string();
            assert!(refused.contains("web.token"), "{refused}");
            assert!(refused.contains("0.0.0.0:8083"), "{refused}");
        }
        // Another token, or none on a loopback console, reloads.
        let other =
            Config::from_toml("[web]\nlisten = \"0.0.0.0:8083\"\ntoken = \"u\"\n", None).unwrap();
        assert!(exposed.check_live(&other).is_ok());
        let local = Config::from_toml("[web]\ntoken = \"t\"\n", None).unwrap();
        assert!(
            local
                .check_live(&Config::from_toml("", None).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn chat_tls_changes_need_a_restart() {
        let plain = Config::from_toml("", None).unwrap();
        let own = Config::from_toml("[chat]\ntls = true\n", None).unwrap();
        let files = Config::from_toml(
            "[chat]\ntls = true\ntls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"\n",
            None,
        )
        .unwrap();
        let plan = ReloadPlan::between(&plain, &own);
        assert!(plan.applied.is_empty());
        assert_eq!(plan.restart_required, vec!["chat.tls"]);
        let plan = ReloadPlan::between(&own, &files);
        assert_eq!(plan.restart_required, vec!["chat.tls_cert", "chat.tls_key"]);
        let mut running = plain.clone();
        running.apply_live(&own);
        assert_eq!(running.chat.tls, None, "still plain text until a restart");
    }

    #[test]
    fn the_web_token_is_live_and_the_listener_is_not() {
        let old = Config::from_toml("", None).unwrap();
        let new =
            Config::from_toml("[web]\ntoken = \"t\"\nlisten = \"127.0.0.1:9\"\n", None).unwrap();
        let plan = ReloadPlan::between(&old, &new);
        assert_eq!(plan.applied, vec!["web.token"]);
        assert_eq!(plan.restart_required, vec!["web.listen"]);
    }

    #[test]
    fn every_live_key_is_applied() {
        let old = Config::from_toml("", None).unwrap();
        let new = Config::from_toml(
            "[node]\nlog_level = \"trace\"\n[signaling]\ndevice_ttl = \"5s\"\njoin_token = \"t\"\nrequest_timeout = \"1s\"\nmax_devices = 3\nrelay_bytes_per_sec = 1000\nregistrations_per_sec = 3\n[chat]\nrate_per_user = 5\nburst_per_user = 7\n[web]\ntoken = \"x\"\n",
            None,
        )
        .unwrap();
        let mut running = old.clone();
        running.apply_live(&new);
        assert_eq!(running, new, "only live keys changed, so all of them apply");
        assert_eq!(
            ReloadPlan::between(&old, &new).applied.len(),
            LIVE_KEYS.len()
        );
    }
}
