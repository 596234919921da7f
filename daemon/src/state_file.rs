//! Reading meshd's own state files (the device key, the hub's key bindings,
//! the chat users), with errors that name the file and the line.
//!
//! Two cases need care. Bytes that are not UTF-8 must name their line, not
//! fail as a bare I/O error. And a name that exists but leads nowhere (a
//! dangling symbolic link) is not a missing file: treating it as one would
//! make meshd create a new file in its place, which for the device key is a
//! new identity.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file system refused.
    #[error("{}: {source}; check that the state directory exists and belongs to meshd's user", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Bytes that are not UTF-8.
    #[error("{}:{line}: not UTF-8 text; the file was damaged or is not meshd's", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first bad byte.
        line: usize,
    },
    /// A symbolic link whose target does not exist.
    #[error(
        "{} is a symbolic link to {}, which does not exist; restore the target, or remove the link to let meshd create the file",
        path.display(),
        target.display()
    )]
    DanglingLink {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
}

/// Reads `path` as UTF-8 text; `None` when there is no such file.
///
/// Blocking: call it from `spawn_blocking` in async code.
pub fn read_text(path: &Path) -> Result<Option<String>, StateFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            return match std::fs::read_link(path) {
                Ok(target) => Err(StateFileError::DanglingLink {
                    path: path.to_owned(),
                    target,
                }),
                Err(_) => Ok(None),
            };
        }
        Err(source) => {
            return Err(StateFileError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    String::from_utf8(bytes).map(Some).map_err(|error| {
        let valid = error.utf8_error().valid_up_to();
        let line = error.as_bytes()[..valid]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1;
        StateFileError::NotUtf8 {
            path: path.to_owned(),
            line,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_text_bad_bytes_and_dangling_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert!(read_text(&path).unwrap().is_none());
        std::fs::write(&path, "one\ntwo\n").unwrap();
        assert_eq!(read_text(&path).unwrap().as_deref(), Some("one\ntwo\n"));
        std::fs::write(&path, b"one\ntwo\nth\xffree\n").unwrap();
        let error = read_text(&path).unwrap_err().to_string();
        assert!(error.contains("state:3: not UTF-8"), "{error}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("gone"), &link).unwrap();
        let error = read_text(&link).unwrap_err();
        assert!(
            matches!(error, StateFileError::DanglingLink { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("gone, which does not exist"));
    }
}
