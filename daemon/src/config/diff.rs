//! What a reload changes: keys applied live, and keys that need a restart.
//!
//! Like Nebula's config, every key is either reloadable or not; the
//! distinction is documented per key in `etc/meshd.toml`. Listeners, the
//! socket and the node's identity are fixed for a process's life, because
//! rebinding them would drop every client and peer.

use super::Config;

/// The outcome of comparing the running config with a newly loaded one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed keys that take effect at once.
    pub applied: Vec<&'static str>,
    /// Changed keys that are ignored until meshd restarts.
    pub restart_required: Vec<&'static str>,
}

impl ReloadPlan {
    /// Compares `old` with `new`.
    pub fn between(old: &Config, new: &Config) -> ReloadPlan {
        let mut plan = ReloadPlan::default();
        let mut live = |key: &'static str, changed: bool| {
            if changed {
                plan.applied.push(key);
            }
        };
        live("node.log_level", old.node.log_level != new.node.log_level);
        live(
            "signaling.device_ttl",
            old.signaling.device_ttl != new.signaling.device_ttl,
        );
        live(
            "signaling.join_token",
            old.signaling.join_token != new.signaling.join_token,
        );
        live(
            "signaling.request_timeout",
            old.signaling.request_timeout != new.signaling.request_timeout,
        );
        live(
            "signaling.max_devices",
            old.signaling.max_devices != new.signaling.max_devices,
        );

        let mut fixed = |key: &'static str, changed: bool| {
            if changed {
                plan.restart_required.push(key);
            }
        };
        fixed("node.id", old.node.id != new.node.id);
        fixed("node.state_dir", old.node.state_dir != new.node.state_dir);
        fixed("control.socket", old.control.socket != new.control.socket);
        fixed("control.group", old.control.group != new.control.group);
        fixed(
            "signaling.enabled",
            old.signaling.enabled != new.signaling.enabled,
        );
        fixed(
            "signaling.listen",
            old.signaling.listen != new.signaling.listen,
        );
        fixed(
            "signaling.max_connections",
            old.signaling.max_connections != new.signaling.max_connections,
        );
        fixed("chat", old.chat != new.chat);
        fixed("mesh", old.mesh != new.mesh);
        plan
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
}
