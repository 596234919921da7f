//! Built-in locations, which differ for root and for an ordinary user
//! (CONTRACT section 1).

use std::path::PathBuf;

/// Where meshd looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/meshd/meshd.toml";

/// `/var/lib/meshd` for root; `$XDG_STATE_HOME/meshd` or
/// `~/.local/state/meshd` for anyone else.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/meshd");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("meshd");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/meshd"),
        None => PathBuf::from(format!("/tmp/meshd-{}/state", nix::unistd::geteuid())),
    }
}

/// The control socket's default path, shared with meshctl.
pub fn default_socket_path() -> PathBuf {
    meshd_ipc::default_socket_path()
}
