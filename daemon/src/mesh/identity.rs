//! The device's identity: a static X25519 key pair kept in the state
//! directory.
//!
//! Created on first start, written atomically with mode 0600, and never
//! replaced by meshd: a file that cannot be read or parsed stops the start
//! with an error naming it, because a new key would be a new identity that the
//! signaling servers refuse for this id (409) until an operator removes the
//! old binding.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use meshd_link::{KEY_LEN, StaticKey};

use crate::atomic_file::write_atomically;

/// The key file's name inside the state directory.
pub const KEY_FILE: &str = "device-key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading, creating or writing failed.
    #[error("{path}: {source}; check that the state directory exists and belongs to meshd's user")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file holds something other than a key.
    #[error(
        "{path}: {reason}; meshd will not replace an identity on its own: restore the file, or delete it to make a new identity (then run `meshctl devices remove ID` on each hub so they accept the new key)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: KeyFileError,
    },
    /// The file exists but cannot be read as text (or is a dangling link).
    #[error("{0}; meshd will not replace an identity on its own, so it does not start")]
    Unreadable(#[from] crate::state_file::StateFileError),
    /// The operating system gave no randomness.
    #[error("generating a key pair: {0}")]
    Generate(String),
}

/// Loads the key pair from `state_dir`, creating it on first start.
///
/// Blocking: call it from `spawn_blocking`.
pub fn load_or_create(state_dir: &Path) -> Result<StaticKey, IdentityError> {
    let path = state_dir.join(KEY_FILE);
    match crate::state_file::read_text(&path)? {
        Some(text) => parse(&text).map_err(|reason| IdentityError::Invalid { path, reason }),
        None => create(state_dir, &path),
    }
}

/// Why the key file's text holds no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
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

/// Parses the key file's text.
pub fn parse(text: &str) -> Result<StaticKey, KeyFileError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or(KeyFileError::NoKey)?;
    let bytes = STANDARD.decode(line)?;
    let private: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| KeyFileError::Length(bytes.len()))?;
    Ok(StaticKey::from_private(private))
}

/// The key file's text for `key`.
pub fn render(key: &StaticKey) -> String {
    format!(
        "# meshd device key: the private half of this device's identity. Keep it secret.\n{}\n",
        STANDARD.encode(key.private())
    )
}

fn create(state_dir: &Path, path: &Path) -> Result<StaticKey, IdentityError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| IdentityError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
    let key = StaticKey::generate().map_err(IdentityError::Generate)?;
    let contents = render(&key);
    write_atomically(path, contents.as_bytes(), 0o600).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })?;
    tracing::info!(path = %path.display(), "created a new device key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_once_then_loaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = load_or_create(&state).unwrap();
        let mode = std::fs::metadata(state.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(&state).unwrap();
        assert_eq!(first.public(), again.public());
    }

    #[test]
    fn a_damaged_key_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, "not a key\n").unwrap();
        let error = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("device-key") && error.contains("not base64"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
    }
}
