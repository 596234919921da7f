//! Where the control socket lives when the config does not say, shared so that
//! meshd and meshctl agree without configuration (CONTRACT section 1).

use std::path::PathBuf;

/// `/run/meshd/meshd.sock` for root, `$XDG_RUNTIME_DIR/meshd/meshd.sock` for
/// anyone else (falling back to `/tmp/meshd-UID/meshd.sock` when
/// `XDG_RUNTIME_DIR` is unset, as on a bare ssh login).
pub fn default_socket_path() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/meshd/meshd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("meshd").join("meshd.sock"),
        None => PathBuf::from(format!("/tmp/meshd-{uid}")).join("meshd.sock"),
    }
}
