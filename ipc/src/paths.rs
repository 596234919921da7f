//! Where the control socket lives when the config does not say, shared so that
//! meshd and meshctl agree without configuration (docs/config.md).

use std::path::PathBuf;

/// The system service's socket.
const SYSTEM_SOCKET: &str = "/run/meshd/meshd.sock";

/// `/run/meshd/meshd.sock` for root, `$XDG_RUNTIME_DIR/meshd/meshd.sock` for
/// anyone else (falling back to `/tmp/meshd-UID/meshd.sock` when
/// `XDG_RUNTIME_DIR` is unset, as on a bare ssh login). For an ordinary user
/// with no meshd of their own but a system meshd running (a member of group
/// meshd), the system socket.
pub fn default_socket_path() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    let own = match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("meshd").join("meshd.sock"),
        None => PathBuf::from(format!("/tmp/meshd-{uid}")).join("meshd.sock"),
    };
    if !own.exists() && std::path::Path::new(SYSTEM_SOCKET).exists() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    own
}
