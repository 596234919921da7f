//! The hub's key bindings on disk: which public key owns each device id.
//!
//! A binding must outlive a hub restart, or anyone could claim an id with a
//! new key by registering first after the restart. The file is
//! `state_dir/signaling-keys`, one `ID BASE64KEY` per line, mode 0600,
//! rewritten atomically by one task whenever the bindings change (a new
//! device's first registration, or `meshctl devices remove`), never on a
//! heartbeat. A file that cannot be parsed stops the start with its line: an
//! operator decides, because deleting it releases every id.

use std::path::{Path, PathBuf};

use crate::atomic_file::write_private;
use crate::device_id::DeviceId;
use crate::public_key::PublicKey;

/// The file's name in the state directory.
pub const BINDINGS_FILE: &str = "signaling-keys";

/// Why the bindings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BindingsError {
    /// Reading or writing failed.
    #[error("{}: {source}; check that the state directory exists and belongs to meshd's user", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file exists but cannot be read as text.
    #[error("{0}; fix or remove the file (removing it releases every id's key binding)")]
    Unreadable(#[from] crate::state_file::StateFileError),
    /// A line is not `ID BASE64KEY`.
    #[error(
        "{}:{line}: {reason}; fix the line, or remove it to release that id's key binding",
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

/// The bindings file of a state directory.
#[derive(Debug, Clone)]
pub struct BindingsFile {
    path: PathBuf,
}

/// One id's key.
pub type Binding = (DeviceId, PublicKey);

impl BindingsFile {
    /// The file in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> Self {
        BindingsFile {
            path: state_dir.join(BINDINGS_FILE),
        }
    }

    /// Reads every binding; none if the file does not exist yet.
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn load(&self) -> Result<Vec<Binding>, BindingsError> {
        let Some(text) = crate::state_file::read_text(&self.path)? else {
            return Ok(Vec::new());
        };
        parse(&text, &self.path)
    }

    /// Replaces the file with `bindings`.
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn save(&self, bindings: &[Binding]) -> Result<(), BindingsError> {
        let text = render(bindings);
        write_private(&self.path, text.as_bytes()).map_err(|source| BindingsError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// The file format: a comment header, then one `ID BASE64KEY` per line.
pub fn render(bindings: &[Binding]) -> String {
    let mut text = String::from(
        "# meshd signaling: the public key bound to each device id.\n\
         # Release one with `meshctl devices remove ID`, not by editing.\n",
    );
    for (id, key) in bindings {
        text.push_str(&format!("{id} {key}\n"));
    }
    text
}

/// Parses the file format; `path` is for messages.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Binding>, BindingsError> {
    let mut bindings: Vec<Binding> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |reason: String| BindingsError::Invalid {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        let (id, key) = line
            .split_once(' ')
            .ok_or_else(|| invalid("expected ID BASE64KEY".to_owned()))?;
        let id = DeviceId::parse(id).map_err(|reason| invalid(reason.to_string()))?;
        let key =
            PublicKey::from_base64(key).map_err(|reason| invalid(format!("key: {reason}")))?;
        // Two keys for one id would leave which one holds to the order of
        // the lines: refuse, as the chat users file does.
        if let Some(first) = seen.insert(id.clone(), index + 1) {
            return Err(invalid(format!(
                "id {id} is bound twice (first on line {first}); keep the line with the key the device really has"
            )));
        }
        bindings.push((id, key));
    }
    Ok(bindings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_bindings_load_back_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = BindingsFile::in_dir(dir.path());
        assert!(file.load().unwrap().is_empty());
        let key = PublicKey::from([7; 32]);
        let bindings = vec![(DeviceId::parse("laptop").unwrap(), key)];
        file.save(&bindings).unwrap();
        assert_eq!(file.load().unwrap(), bindings);
        std::fs::write(dir.path().join(BINDINGS_FILE), "ok AAAA\n").unwrap();
        let error = file.load().unwrap_err().to_string();
        assert!(error.contains("signaling-keys:1: key:"), "{error}");
        let other = PublicKey::from([8; 32]);
        std::fs::write(
            dir.path().join(BINDINGS_FILE),
            format!("# c\nlaptop {key}\nphone {other}\nlaptop {other}\n"),
        )
        .unwrap();
        let error = file.load().unwrap_err().to_string();
        assert!(
            error.contains("signaling-keys:4: id laptop is bound twice (first on line 2)"),
            "{error}"
        );
        std::fs::write(dir.path().join(BINDINGS_FILE), b"laptop \xff\n").unwrap();
        let error = file.load().unwrap_err().to_string();
        assert!(error.contains("signaling-keys:1: not UTF-8"), "{error}");
    }
}
