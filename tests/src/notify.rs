//! A NOTIFY_SOCKET the harness owns, to see what meshd tells systemd.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait::wait_until;

/// A datagram socket collecting sd_notify messages in the background.
pub struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    /// Binds a datagram socket at `path` and starts collecting.
    pub fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("binding the notify socket");
        // meshd may run as another user (see NodeOptions::run_as).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod the notify socket");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test process exits; the socket file goes with the
            // temp dir.
            while let Ok(len) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                sink.lock().expect("notify lock").push(text);
            }
        });
        NotifySocket {
            path: path.to_path_buf(),
            messages,
        }
    }

    /// Forgets what was received (before a restart).
    pub fn clear(&self) {
        self.messages.lock().expect("notify lock").clear();
    }

    /// The socket path, for NOTIFY_SOCKET.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every assignment received so far (`READY=1`, `STATUS=...`), one per
    /// line of each datagram, in order.
    pub fn assignments(&self) -> Vec<String> {
        self.messages
            .lock()
            .expect("notify lock")
            .iter()
            .flat_map(|message| message.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    /// How many times `assignment` (e.g. `READY=1`) was received.
    pub fn count(&self, assignment: &str) -> usize {
        self.assignments()
            .iter()
            .filter(|a| *a == assignment)
            .count()
    }

    /// Waits until `assignment` has been received at least `times` times.
    pub fn wait_for(&self, assignment: &str, times: usize, timeout: Duration) {
        wait_until(
            &format!("{assignment} to be notified {times} time(s)"),
            timeout,
            || (self.count(assignment) >= times).then_some(()),
        );
    }
}
