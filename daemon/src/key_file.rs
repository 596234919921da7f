//! meshd's private keys: the device key (`state_dir/device-key`, the mesh
//! role's identity) and the hub key (`state_dir/hub-key`, the signaling
//! role's identity). Both are static X25519 key pairs kept one per file.
//!
//! Created on first start, written atomically with mode 0600, and never
//! replaced by meshd: a file that cannot be read or parsed stops the start
//! with an error naming it, because a new key is a new identity that others
//! refuse until an operator says otherwise. A key file that others can read
//! stops the start too, as OpenSSH refuses a loose private key: whoever read
//! it can be this node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use meshd_link::{KEY_LEN, StaticKey};

use crate::atomic_file::{create_private_dir, write_atomically};

/// Which key a file holds, and what replacing it would cost.
#[derive(Debug, Clone, Copy)]
pub struct KeyKind {
    /// The file's name inside the state directory.
    pub file: &'static str,
    /// As logs and errors name it.
    pub what: &'static str,
    /// The file's first line, a comment.
    header: &'static str,
    /// What deleting the file means, for the error that refuses to replace it.
    if_replaced: &'static str,
}

/// The mesh role's identity.
pub const DEVICE_KEY: KeyKind = KeyKind {
    file: "device-key",
    what: "device key",
    header: "# meshd device key: the private half of this device's identity. Keep it secret.",
    if_replaced: "delete it to make a new identity (then run `meshctl devices remove ID` on each hub so they accept the new key)",
};

/// The signaling role's identity, which devices pin.
pub const HUB_KEY: KeyKind = KeyKind {
    file: "hub-key",
    what: "hub key",
    header: "# meshd hub key: the private half of this hub's identity. Keep it secret.",
    if_replaced: "delete it to make a new hub identity (then every device that pinned the old key refuses this hub until its operator runs `meshctl hubs forget URL` or changes the pinned key)",
};

/// Why a key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading, creating or writing failed.
    #[error("{}: {source}; check that the state directory exists and belongs to meshd's user", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file holds something other than a key.
    #[error("{}: {reason}; meshd will not replace a {} on its own: restore the file, or {}", path.display(), kind.what, kind.if_replaced)]
    Invalid {
        /// Which key.
        kind: KeyKind,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: KeyTextError,
    },
    /// Others than meshd's user may read the file.
    #[error("{}: the {} can be read by others (mode {mode:04o}); a private key must be readable by meshd's user only: chmod 600 {}", path.display(), kind.what, path.display())]
    Exposed {
        /// Which key.
        kind: KeyKind,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file exists but cannot be read as text (or is a dangling link).
    #[error("{0}; meshd will not replace a key on its own, so it does not start")]
    Unreadable(#[from] crate::state_file::StateFileError),
    /// The operating system gave no randomness.
    #[error("generating a key pair: {0}")]
    Generate(String),
}

/// Why a key file's text holds no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    /// Only comments and blank lines.
    #[error("the file holds no key")]
    NoKey,
    /// The key line is not base64.
    #[error("the key is not base64 ({0})")]
    NotBase64(#[from] base64::DecodeError),
    /// The key has another length than a key's.
    #[error("the key has {0} bytes, expected {KEY_LEN}")]
    Length(usize),
}

/// Loads the `kind` key from `state_dir`, creating it on first start.
///
/// Blocking: call it from `spawn_blocking`.
pub fn load_or_create(state_dir: &Path, kind: KeyKind) -> Result<StaticKey, KeyError> {
    let path = state_dir.join(kind.file);
    let Some(text) = crate::state_file::read_text(&path)? else {
        return create(state_dir, &path, kind);
    };
    let mode = std::fs::metadata(&path)
        .map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            kind,
            path,
            mode: mode & 0o7777,
        });
    }
    parse(&text).map_err(|reason| KeyError::Invalid { kind, path, reason })
}

/// [`load_or_create`] on the blocking pool; before any role starts, so a
/// damaged or exposed key stops meshd before it serves anything.
pub async fn load(state_dir: &Path, kind: KeyKind) -> Result<StaticKey, KeyError> {
    let dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || load_or_create(&dir, kind))
        .await
        .map_err(|error| KeyError::Io {
            path: state_dir.join(kind.file),
            source: std::io::Error::other(error),
        })?
}

/// Parses a key file's text: the first line that is not blank or a comment.
pub fn parse(text: &str) -> Result<StaticKey, KeyTextError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or(KeyTextError::NoKey)?;
    let bytes = STANDARD.decode(line)?;
    let private: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| KeyTextError::Length(bytes.len()))?;
    Ok(StaticKey::from_private(private))
}

/// The file's text for `key`.
pub fn render(kind: KeyKind, key: &StaticKey) -> String {
    format!("{}\n{}\n", kind.header, STANDARD.encode(key.private()))
}

fn create(state_dir: &Path, path: &Path, kind: KeyKind) -> Result<StaticKey, KeyError> {
    create_private_dir(state_dir).map_err(|source| KeyError::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    let key = StaticKey::generate().map_err(KeyError::Generate)?;
    let contents = render(kind, &key);
    write_atomically(path, contents.as_bytes(), 0o600).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    tracing::info!(path = %path.display(), "created a new {}", kind.what);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_then_loaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        for kind in [DEVICE_KEY, HUB_KEY] {
            let first = load_or_create(&state, kind).unwrap();
            let mode = std::fs::metadata(state.join(kind.file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let again = load_or_create(&state, kind).unwrap();
            assert_eq!(first.public(), again.public());
        }
        let device = load_or_create(&state, DEVICE_KEY).unwrap();
        let hub = load_or_create(&state, HUB_KEY).unwrap();
        assert_ne!(device.public(), hub.public(), "two identities, two keys");
    }

    #[test]
    fn a_damaged_key_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [DEVICE_KEY, HUB_KEY] {
            let path = dir.path().join(kind.file);
            std::fs::write(&path, "not a key\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let error = load_or_create(dir.path(), kind).unwrap_err().to_string();
            assert!(
                error.contains(kind.file) && error.contains("not base64"),
                "{error}"
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
        }
    }

    #[test]
    fn a_key_others_can_read_stops_the_start_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [DEVICE_KEY, HUB_KEY] {
            load_or_create(dir.path(), kind).unwrap();
            let path = dir.path().join(kind.file);
            for mode in [0o644, 0o640, 0o604] {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                let error = load_or_create(dir.path(), kind).unwrap_err();
                assert!(matches!(error, KeyError::Exposed { .. }), "{error}");
                let text = error.to_string();
                assert!(
                    text.contains(&format!("chmod 600 {}", path.display()))
                        && text.contains(&format!("{mode:04o}")),
                    "{text}"
                );
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
            assert!(
                load_or_create(dir.path(), kind).is_ok(),
                "read-only for the owner is fine"
            );
        }
    }
}
