//! Chat users: names and argon2id password hashes (PHC strings) in
//! `state_dir/chat-users`, one `name:hash` per line.
//!
//! The file is the source of truth. Every change re-reads it first (so hand
//! edits are never overwritten), applies the change, and writes it back
//! atomically with mode 0600, one change at a time, so two concurrent
//! `meshctl users add` both land. A file that does not parse is never
//! overwritten: the error names its line, changes are refused, and logins keep
//! using the last good set. File work runs on the blocking pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::atomic_file::write_private;
use crate::sync::{read_lock, write_lock};

/// The file name inside `state_dir`.
pub const USERS_FILE: &str = "chat-users";

/// Longest user name.
pub const MAX_NAME_LEN: usize = 32;

/// Why a users operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The users file.
        path: String,
        /// The error.
        message: String,
    },
    /// A line of the file is invalid.
    #[error(
        "{path}:{line}: {message}; fix or remove that line, then run meshctl reload (logins use the last good set meanwhile)"
    )]
    Invalid {
        /// The users file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No such user.
    #[error("no chat user {0:?}; meshctl users list shows them")]
    NotFound(String),
    /// The user exists already.
    #[error("chat user {0:?} exists already; use meshctl users passwd to change the password")]
    Exists(String),
    /// The name is not valid.
    #[error("{0}")]
    BadName(String),
    /// The password is not valid.
    #[error("{0}")]
    BadPassword(String),
    /// Hashing the password failed.
    #[error("{0}")]
    Hash(String),
    /// In a cluster, user changes go through it first, and it cannot be
    /// asked now.
    #[error(
        "the cluster that shares chat users cannot be asked now ({0}); a change must reach every hub: try again when meshctl status shows the cluster connected"
    )]
    Cluster(String),
}

/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Checks a password: non-empty, at most 1 KiB, and one line (the chat
/// protocol's `AUTH` carries it to the end of its line).
pub fn check_password(password: &str) -> Result<(), UsersError> {
    if password.is_empty() {
        return Err(UsersError::BadPassword("the password is empty".to_owned()));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(UsersError::BadPassword(format!(
            "the password is longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    if password.contains(['\n', '\r']) {
        return Err(UsersError::BadPassword(
            "the password must not contain line breaks".to_owned(),
        ));
    }
    Ok(())
}

/// Checks a user name: 1-32 characters of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), UsersError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(UsersError::BadName(format!(
            "invalid user name {name:?}: use 1-{MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-'"
        )))
    }
}

/// A parsed users file: name to PHC hash string, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSet(BTreeMap<String, String>);

impl UserSet {
    /// Parses the file format; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<UserSet, UsersError> {
        let mut users = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let invalid = |message: String| UsersError::Invalid {
                path: path.display().to_string(),
                line: index + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| invalid("expected NAME:HASH".to_owned()))?;
            check_name(name).map_err(|e| invalid(e.to_string()))?;
            argon2::PasswordHash::new(hash)
                .map_err(|e| invalid(format!("user {name:?}: not a PHC password hash ({e})")))?;
            if users.insert(name.to_owned(), hash.to_owned()).is_some() {
                return Err(invalid(format!("user {name:?} is listed twice")));
            }
        }
        Ok(UserSet(users))
    }

    /// The file format.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# meshd chat users: NAME:ARGON2ID-PHC-HASH, managed with meshctl users\n",
        );
        for (name, hash) in &self.0 {
            out.push_str(name);
            out.push(':');
            out.push_str(hash);
            out.push('\n');
        }
        out
    }

    /// Makes `name` have `hash` (`None`: not exist); whether that changed
    /// anything.
    pub fn put(&mut self, name: &str, hash: Option<&str>) -> bool {
        match hash {
            Some(hash) if self.hash_of(name) != Some(hash) => {
                self.0.insert(name.to_owned(), hash.to_owned());
                true
            }
            Some(_) => false,
            None => self.0.remove(name).is_some(),
        }
    }

    /// Every user with its hash, sorted by name.
    pub fn entries(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(name, hash)| (name.clone(), hash.clone()))
            .collect()
    }

    /// The hash of `name`.
    pub fn hash_of(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// Adds a new user.
    pub fn add(&mut self, name: &str, hash: String) -> Result<(), UsersError> {
        check_name(name)?;
        if self.0.contains_key(name) {
            return Err(UsersError::Exists(name.to_owned()));
        }
        self.0.insert(name.to_owned(), hash);
        Ok(())
    }

    /// Replaces a user's hash.
    pub fn set_password(&mut self, name: &str, hash: String) -> Result<(), UsersError> {
        match self.0.get_mut(name) {
            Some(slot) => {
                *slot = hash;
                Ok(())
            }
            None => Err(UsersError::NotFound(name.to_owned())),
        }
    }

    /// Removes a user.
    pub fn remove(&mut self, name: &str) -> Result<(), UsersError> {
        self.0
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| UsersError::NotFound(name.to_owned()))
    }
}

/// The users file and the last good set read from it.
pub struct UserStore {
    path: PathBuf,
    current: RwLock<Arc<UserSet>>,
    /// Serializes changes: read, modify, write.
    changes: tokio::sync::Mutex<()>,
}

impl UserStore {
    /// A store for `state_dir/chat-users`, empty until [`UserStore::reload`].
    pub fn new(state_dir: &Path) -> UserStore {
        UserStore {
            path: state_dir.join(USERS_FILE),
            current: RwLock::new(Arc::new(UserSet::default())),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// The last good set.
    pub fn snapshot(&self) -> Arc<UserSet> {
        read_lock(&self.current).clone()
    }

    /// Re-reads the file; on error the last good set stays in use. Returns the
    /// number of users.
    pub async fn reload(&self) -> Result<usize, UsersError> {
        let _guard = self.changes.lock().await;
        let set = self.read_file().await?;
        let count = set.0.len();
        self.install(set);
        Ok(count)
    }

    /// Applies `change` to the file's current content and writes it back.
    pub async fn change(
        &self,
        change: impl FnOnce(&mut UserSet) -> Result<(), UsersError>,
    ) -> Result<(), UsersError> {
        let _guard = self.changes.lock().await;
        let mut set = self.read_file().await?;
        change(&mut set)?;
        let path = self.path.clone();
        let text = set.render();
        tokio::task::spawn_blocking(move || write_private(&path, text.as_bytes()))
            .await
            .map_err(|e| self.io_error(e.to_string()))?
            .map_err(|e| self.io_error(e.to_string()))?;
        self.install(set);
        Ok(())
    }

    fn install(&self, set: UserSet) {
        *write_lock(&self.current) = Arc::new(set);
    }

    async fn read_file(&self) -> Result<UserSet, UsersError> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || crate::state_file::read_text(&path))
            .await
            .map_err(|e| self.io_error(e.to_string()))?;
        match read {
            Ok(Some(text)) => UserSet::parse(&text, &self.path),
            Ok(None) => Ok(UserSet::default()),
            Err(crate::state_file::StateFileError::NotUtf8 { line, .. }) => {
                Err(UsersError::Invalid {
                    path: self.path.display().to_string(),
                    line,
                    message: "not UTF-8 text".to_owned(),
                })
            }
            Err(e) => Err(self.io_error(e.to_string())),
        }
    }

    fn io_error(&self, message: String) -> UsersError {
        UsersError::Io {
            path: self.path.display().to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$ZmFrZWhhc2hmYWtlaGFzaGZha2VoYXNoZmFrZWg";

    #[test]
    fn parses_and_renders() {
        let text = format!("# comment\n\nalice:{HASH}\nbob:{HASH}\n");
        let set = UserSet::parse(&text, Path::new("users")).unwrap();
        assert_eq!(set.names(), ["alice", "bob"]);
        assert_eq!(
            UserSet::parse(&set.render(), Path::new("users")).unwrap(),
            set
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            (format!("alice:{HASH}\nbroken line\n"), 2),
            (format!("\n\nbad name:{HASH}\n"), 3),
            ("carol:not-a-hash\n".to_owned(), 1),
            (format!("d:{HASH}\nd:{HASH}\n"), 2),
        ] {
            match UserSet::parse(&text, Path::new("/var/lib/meshd/chat-users")) {
                Err(UsersError::Invalid { line: got, .. }) => assert_eq!(got, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn changes_check_names_and_existence() {
        let mut set = UserSet::default();
        set.add("alice", HASH.into()).unwrap();
        assert_eq!(
            set.add("alice", HASH.into()),
            Err(UsersError::Exists("alice".into()))
        );
        assert!(matches!(
            set.add("no spaces", HASH.into()),
            Err(UsersError::BadName(_))
        ));
        assert_eq!(set.remove("bob"), Err(UsersError::NotFound("bob".into())));
        set.set_password("alice", "x".into()).unwrap();
        assert_eq!(set.hash_of("alice"), Some("x"));
    }

    #[tokio::test]
    async fn concurrent_changes_all_land_and_a_corrupt_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(UserStore::new(dir.path()));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .change(|set| set.add(&format!("user{i}"), HASH.to_owned()))
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store.snapshot().names().len(), 8);
        let path = dir.path().join(USERS_FILE);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert_eq!(UserSet::parse(&on_disk, &path).unwrap().names().len(), 8);

        std::fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(
            store.reload().await,
            Err(UsersError::Invalid { line: 1, .. })
        ));
        assert_eq!(store.snapshot().names().len(), 8, "the last good set stays");
        let refused = store.change(|set| set.add("late", HASH.to_owned())).await;
        assert!(refused.is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "garbage\n",
            "never overwritten"
        );
    }
}
