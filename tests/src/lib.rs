//! Test harness for meshd's integration tests: real `meshd` and `meshctl`
//! processes on real sockets.
//!
//! Every node gets its own temporary directory holding its config, state,
//! control socket, log file and a NOTIFY_SOCKET owned by the harness, so the
//! harness can wait for READY=1 like systemd would. Listeners use port 0 and
//! the bound addresses are read back from `meshctl status --json`. A node still
//! running when its handle drops is killed, and when a test fails the tail of
//! every node's log is printed.

// A test harness reports failure by panicking, with a message saying what
// failed; that is what expect() is for here.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod binaries;
pub mod chat;
pub mod http;
pub mod nats;
pub mod netlab;
pub mod node;
pub mod notify;
pub mod tap;
pub mod tls;
pub mod wait;

/// Raises this test process's soft open-file limit to at least `wanted`
/// (within the hard limit), for tests that hold thousands of sockets.
pub fn raise_open_files(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("reading RLIMIT_NOFILE");
    let target = wanted.min(hard);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).expect("raising RLIMIT_NOFILE");
    }
    assert!(
        target >= wanted,
        "this test needs {wanted} open files; the hard limit is {hard}: raise it (ulimit -Hn)"
    );
}

pub use binaries::{meshctl_bin, meshd_bin};
pub use chat::ChatClient;
pub use node::{MeshOptions, Node, NodeOptions, copy_executable};
pub use notify::NotifySocket;
pub use tls::TlsChatClient;
pub use wait::wait_until;
