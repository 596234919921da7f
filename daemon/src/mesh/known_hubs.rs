//! The hub keys this device pinned on first use: `state_dir/known-hubs`,
//! one `URL BASE64KEY` per line, mode 0600, rewritten atomically when a hub
//! is first met or an operator forgets one (`meshctl hubs forget URL`).
//!
//! As OpenSSH's `known_hosts`: the first key a hub proves is trusted and
//! kept; a hub that later proves another key is refused until an operator
//! checks the new key and forgets the old one (docs/security.md). A key in
//! the config (`http://HOST:PORT#KEY`) overrides this file for its hub. A
//! file that cannot be parsed stops the start with its line: trusting any
//! key instead would undo the pins it holds.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::atomic_file::write_private;
use crate::public_key::PublicKey;
use crate::state_file::StateFileError;
use crate::sync::lock;

/// The file's name in the state directory.
pub const KNOWN_HUBS_FILE: &str = "known-hubs";

/// Why the known-hubs file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KnownHubsError {
    /// Writing failed.
    #[error("{}: {source}; check that the state directory exists and belongs to meshd's user", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file exists but cannot be read as text.
    #[error("{0}; fix or remove the file (removing it forgets every pinned hub key)")]
    Unreadable(#[from] StateFileError),
    /// A line is not `URL BASE64KEY`.
    #[error(
        "{}:{line}: {reason}; fix the line, or remove it to forget that hub's key",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One pinned hub: its URL as the config writes it (without `#KEY`), and
/// its key.
pub type KnownHub = (String, PublicKey);

/// The file, and what it holds.
#[derive(Debug)]
pub struct KnownHubs {
    path: PathBuf,
    hubs: Mutex<Vec<KnownHub>>,
}

impl KnownHubs {
    /// Reads the file in `state_dir`; empty when there is none yet.
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn load(state_dir: &Path) -> Result<KnownHubs, KnownHubsError> {
        let path = state_dir.join(KNOWN_HUBS_FILE);
        let hubs = match crate::state_file::read_text(&path)? {
            Some(text) => parse(&text, &path)?,
            None => Vec::new(),
        };
        Ok(KnownHubs {
            path,
            hubs: Mutex::new(hubs),
        })
    }

    /// No pins, and no file behind them: for unit tests.
    #[cfg(test)]
    pub fn none() -> KnownHubs {
        KnownHubs {
            path: PathBuf::from("/nonexistent/known-hubs"),
            hubs: Mutex::new(Vec::new()),
        }
    }

    /// The key pinned for `url`.
    pub fn key_of(&self, url: &str) -> Option<PublicKey> {
        lock(&self.hubs)
            .iter()
            .find(|(known, _)| known == url)
            .map(|(_, key)| *key)
    }

    /// Where the file is, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pins `key` for `url` and saves the file.
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn pin(&self, url: &str, key: PublicKey) -> Result<(), KnownHubsError> {
        let mut hubs = lock(&self.hubs);
        hubs.retain(|(known, _)| known != url);
        hubs.push((url.to_owned(), key));
        self.save(&hubs)
    }

    /// Forgets the key pinned for `url` and saves the file; the key it had.
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn forget(&self, url: &str) -> Result<Option<PublicKey>, KnownHubsError> {
        let mut hubs = lock(&self.hubs);
        let Some(place) = hubs.iter().position(|(known, _)| known == url) else {
            return Ok(None);
        };
        let (_, key) = hubs.remove(place);
        self.save(&hubs)?;
        Ok(Some(key))
    }

    fn save(&self, hubs: &[KnownHub]) -> Result<(), KnownHubsError> {
        write_private(&self.path, render(hubs).as_bytes()).map_err(|source| KnownHubsError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// The file format: a comment header, then one `URL BASE64KEY` per line.
pub(crate) fn render(hubs: &[KnownHub]) -> String {
    let mut text = String::from(
        "# meshd: the key each signaling server proved when this device first met it.\n\
         # Forget one with `meshctl hubs forget URL` after checking the hub's new key.\n",
    );
    for (url, key) in hubs {
        text.push_str(&format!("{url} {key}\n"));
    }
    text
}

/// Parses the file format; `path` is for messages.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Vec<KnownHub>, KnownHubsError> {
    let mut hubs: Vec<KnownHub> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |reason: String| KnownHubsError::Invalid {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        let (url, key) = line
            .split_once(' ')
            .ok_or_else(|| invalid("expected URL BASE64KEY".to_owned()))?;
        let key =
            PublicKey::from_base64(key).map_err(|reason| invalid(format!("key: {reason}")))?;
        if hubs.iter().any(|(known, _)| known == url) {
            return Err(invalid(format!(
                "{url} is listed twice; keep the line with the key the hub really has"
            )));
        }
        hubs.push((url.to_owned(), key));
    }
    Ok(hubs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pins_load_back_forget_and_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownHubs::load(dir.path()).unwrap();
        assert_eq!(known.key_of("http://hub:8080"), None);
        let key = PublicKey::from([7; 32]);
        known.pin("http://hub:8080", key).unwrap();
        known
            .pin("http://other:8080", PublicKey::from([8; 32]))
            .unwrap();
        let again = KnownHubs::load(dir.path()).unwrap();
        assert_eq!(again.key_of("http://hub:8080"), Some(key));
        let mode = std::fs::metadata(again.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(again.forget("http://hub:8080").unwrap(), Some(key));
        assert_eq!(again.forget("http://hub:8080").unwrap(), None);
        let after = KnownHubs::load(dir.path()).unwrap();
        assert_eq!(after.key_of("http://hub:8080"), None);
        assert!(after.key_of("http://other:8080").is_some());
    }

    #[test]
    fn a_damaged_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KNOWN_HUBS_FILE);
        std::fs::write(&path, "# c\nhttp://hub:8080 AAAA\n").unwrap();
        let error = KnownHubs::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("known-hubs:2: key:"), "{error}");
        let key = PublicKey::from([7; 32]);
        std::fs::write(&path, format!("http://h:1 {key}\nhttp://h:1 {key}\n")).unwrap();
        let error = KnownHubs::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("known-hubs:2: http://h:1 is listed twice"),
            "{error}"
        );
        std::fs::write(&path, "just-a-url\n").unwrap();
        let error = KnownHubs::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("known-hubs:1: expected URL BASE64KEY"),
            "{error}"
        );
    }
}
