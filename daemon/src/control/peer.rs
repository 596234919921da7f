//! Who is on the other end of a control connection, and what they may do.
//!
//! Read access is decided by the file system: the socket is mode 0660 and owned
//! by `[control] group`, so only root, the daemon's user and members of the
//! group can connect at all. This keeps working under systemd's PrivateUsers=,
//! where every other uid appears as nobody. Write access is decided here, from
//! SO_PEERCRED: root and the daemon's own user only (Tailscale's localapi makes
//! the same split).

use std::os::fd::AsFd;

use meshd_ipc::Access;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Uid;

/// The credentials the kernel recorded for the connecting process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// Process id at connect time.
    pub pid: i32,
}

impl Caller {
    /// Reads SO_PEERCRED from a connected Unix socket.
    pub fn of(socket: &impl AsFd) -> nix::Result<Caller> {
        let creds = getsockopt(socket, PeerCredentials)?;
        Ok(Caller {
            uid: creds.uid(),
            gid: creds.gid(),
            pid: creds.pid(),
        })
    }

    /// Whether this caller may run a request needing `access`, when the daemon
    /// runs as `daemon_uid`.
    pub fn may(&self, access: Access, daemon_uid: Uid) -> bool {
        match access {
            Access::Read => true,
            Access::Write => self.uid == 0 || self.uid == daemon_uid.as_raw(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            pid: 1,
        }
    }

    #[test]
    fn writes_need_root_or_the_daemon_user() {
        let daemon = Uid::from_raw(999);
        assert!(caller(0).may(Access::Write, daemon));
        assert!(caller(999).may(Access::Write, daemon));
        assert!(!caller(1000).may(Access::Write, daemon));
        assert!(caller(1000).may(Access::Read, daemon));
    }

    #[test]
    fn reads_credentials_of_a_real_socket() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = Caller::of(&a).unwrap();
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(me.pid, std::process::id() as i32);
    }
}
