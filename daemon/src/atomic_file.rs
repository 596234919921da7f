//! Writing files so that a crash leaves either the old or the new content,
//! never a mix: a temporary file in the same directory, fsync, rename over the
//! target, then fsync of the directory so the rename itself is durable.
//!
//! meshd's state is private to its user: [`write_private`] writes a state
//! file 0600 in a directory made 0700 ([`create_private_dir`]), so those
//! modes are set in one place rather than by each file's owner.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `contents`, created with `mode` (e.g. 0o600).
///
/// Blocking: call it from `spawn_blocking` in async code.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates `dir` and any missing parents with mode 0700 (existing ones are
/// left as they are).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Replaces `path` with `contents` as a private state file: mode 0600, in a
/// directory created with [`create_private_dir`] if missing, atomically.
///
/// Blocking: call it from `spawn_blocking` in async code.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    write_atomically(path, contents, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        write_atomically(&path, b"one\n", 0o600).unwrap();
        write_atomically(&path, b"two\n", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_private_file_is_0600_in_directories_made_0700() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let path = state.join("nested").join("keys");
        write_private(&path, b"secret\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"secret\n");
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("nested")), 0o700);
        // Written again into the directory that now exists.
        write_private(&path, b"again\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"again\n");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        write_atomically(&path, b"old\n", 0o600).unwrap();
        let missing_dir = dir.path().join("nope").join("users");
        assert!(write_atomically(&missing_dir, b"new\n", 0o600).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old\n");
    }
}
