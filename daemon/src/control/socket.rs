//! Creating the control socket safely (the approach pueue takes): a live
//! daemon on the path is an error, a stale file left by a crash is removed,
//! the mode is set before the socket listens, and the file goes away when the
//! listener is dropped.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use interprocess::os::unix::uds_local_socket::tokio::Listener;
use nix::unistd::{Group, chown};

use super::ControlError;

/// Socket file mode: owner and group may connect, nobody else (`mode_t`).
const SOCKET_MODE: u32 = 0o660;

/// Binds the control socket at `path`, giving it `group` when that group
/// exists.
pub fn bind(path: &Path, group: &str) -> Result<Listener, ControlError> {
    let error = |reason: String| ControlError::Bind {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| error(format!("cannot create directory {}: {e}", parent.display())))?;
    }
    remove_if_stale(path)?;
    let name = path
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| error(format!("invalid socket path: {e}")))?;
    let listener: Listener = ListenerOptions::new()
        .name(name)
        .mode(SOCKET_MODE)
        .reclaim_name(true)
        .create_tokio_as()
        .map_err(|e| error(e.to_string()))?;
    // bind() applies the umask on top of the mode interprocess set, so the
    // file can start out stricter than SOCKET_MODE (never looser): widen it
    // to exactly SOCKET_MODE now.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| error(format!("cannot set mode {SOCKET_MODE:o}: {e}")))?;
    set_group(path, group)?;
    Ok(listener)
}

/// Leaves the path free, or explains why it cannot be.
fn remove_if_stale(path: &Path) -> Result<(), ControlError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ControlError::Bind {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ControlError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ControlError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale control socket");
            std::fs::remove_file(path).map_err(|e| ControlError::Bind {
                path: path.to_path_buf(),
                reason: format!("cannot remove stale socket: {e}"),
            })
        }
        Err(e) => Err(ControlError::Bind {
            path: path.to_path_buf(),
            reason: format!("cannot probe existing socket: {e}"),
        }),
    }
}

fn file_gid(path: &Path) -> Option<u32> {
    std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(path).ok()?).into()
}

fn set_group(path: &Path, group: &str) -> Result<(), ControlError> {
    if group.is_empty() {
        return Ok(());
    }
    match Group::from_name(group) {
        // Already right (e.g. systemd's Group= is the control group): no
        // chown, which a hardened unit's syscall filter may forbid.
        Ok(Some(entry)) if file_gid(path) == Some(entry.gid.as_raw()) => Ok(()),
        Ok(Some(entry)) => match chown(path, None, Some(entry.gid)) {
            Ok(()) => Ok(()),
            // An ordinary user may only hand files to groups it belongs to;
            // the socket then stays private to that user, which is safe.
            Err(nix::errno::Errno::EPERM) => {
                tracing::warn!(
                    group,
                    path = %path.display(),
                    "not a member of the control group; the socket keeps the daemon's group"
                );
                Ok(())
            }
            Err(e) => Err(ControlError::Bind {
                path: PathBuf::from(path),
                reason: format!("cannot give the socket to group {group}: {e}"),
            }),
        },
        Ok(None) => {
            tracing::info!(
                group,
                path = %path.display(),
                "control group does not exist; the socket keeps the daemon's group"
            );
            Ok(())
        }
        Err(e) => {
            tracing::warn!(group, error = %e, "cannot look up the control group");
            Ok(())
        }
    }
}
