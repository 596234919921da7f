//! Built-in locations, which differ for root and for an ordinary user
//! (docs/config.md), and follow the directories systemd creates for the
//! service when it runs as one.

use std::path::PathBuf;

/// Where meshd looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/meshd/meshd.toml";

/// `$STATE_DIRECTORY` under systemd (StateDirectory=); otherwise
/// `/var/lib/meshd` for root, `$XDG_STATE_HOME/meshd` or
/// `~/.local/state/meshd` for anyone else.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = systemd_directory("STATE_DIRECTORY") {
        return dir;
    }
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

/// `meshd.sock` in `$RUNTIME_DIRECTORY` under systemd (RuntimeDirectory=,
/// which is `/run/meshd` for the packaged unit even though meshd runs as
/// user meshd); otherwise the default shared with meshctl.
pub fn default_socket_path() -> PathBuf {
    match systemd_directory("RUNTIME_DIRECTORY") {
        Some(dir) => dir.join("meshd.sock"),
        None => meshd_ipc::default_socket_path(),
    }
}

/// The first directory systemd exported in `var` (a `:`-separated list).
fn systemd_directory(var: &str) -> Option<PathBuf> {
    first_absolute(&std::env::var(var).ok()?)
}

fn first_absolute(list: &str) -> Option<PathBuf> {
    let first = PathBuf::from(list.split(':').next()?);
    first.is_absolute().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::first_absolute;
    use std::path::PathBuf;

    #[test]
    fn takes_the_first_absolute_directory() {
        assert_eq!(
            first_absolute("/run/meshd"),
            Some(PathBuf::from("/run/meshd"))
        );
        assert_eq!(
            first_absolute("/run/a:/run/b"),
            Some(PathBuf::from("/run/a"))
        );
        assert_eq!(first_absolute(""), None);
        assert_eq!(first_absolute("relative"), None);
    }
}
