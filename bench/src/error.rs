//! The benchmark's one error type: every failure names the target and what
//! the benchmark was doing, so a broken run says where it broke.

use std::time::Duration;

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the address or path.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server sent something the client does not accept.
    #[error("{target}: {message}")]
    Protocol {
        /// `meshd`, `nats` or `redis`.
        target: &'static str,
        /// What was wrong, with the offending bytes where useful.
        message: String,
    },
    /// A bounded wait ran out.
    #[error("{what}: nothing within {limit:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The bound.
        limit: Duration,
    },
    /// The command line or the environment is unusable.
    #[error("{0}")]
    Usage(String),
}

impl BenchError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    /// A protocol violation by `target`.
    pub fn protocol(target: &'static str, message: impl Into<String>) -> BenchError {
        BenchError::Protocol {
            target,
            message: message.into(),
        }
    }
}

/// Shows at most the first 80 bytes of what a server sent, escaped.
pub fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(80)];
    let text = cut.escape_ascii().to_string();
    if bytes.len() > cut.len() {
        format!("{text}...")
    } else {
        text
    }
}
