//! Logging through tracing: to journald with structured fields when stderr is
//! the journal, otherwise human-readable lines on stderr.
//!
//! Field names are fixed in `docs/logging.md`; journald receives them
//! upper-cased (`device_id` becomes `DEVICE_ID`).

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogLevel;

/// Changes the log level on reload, unless RUST_LOG fixed it.
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

impl LogControl {
    /// RUST_LOG was set at start, so `[node] log_level` has no effect.
    pub fn fixed_by_env(&self) -> bool {
        self.from_env
    }

    /// Applies `[node] log_level` from a reloaded config.
    pub fn set_level(&self, level: LogLevel) {
        if self.from_env {
            return;
        }
        if let Err(error) = self.filter.reload(EnvFilter::new(level.as_str())) {
            tracing::warn!(%error, "cannot change the log level");
        }
    }
}

/// Installs the global subscriber.
pub fn init(level: LogLevel) -> LogControl {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let from_env = env.is_some();
    let filter = match env {
        Some(directives) => EnvFilter::try_new(&directives).unwrap_or_else(|error| {
            eprintln!("meshd: ignoring RUST_LOG={directives:?}: {error}");
            EnvFilter::new(level.as_str())
        }),
        None => EnvFilter::new(level.as_str()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let journald = journal_is_stderr()
        .then(|| {
            tracing_journald::layer()
                .map(|layer| {
                    layer
                        .with_field_prefix(None)
                        .with_syslog_identifier("meshd".to_owned())
                        .with_priority_mappings(priorities())
                })
                .ok()
        })
        .flatten();
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .init();
    LogControl {
        filter: handle,
        from_env,
    }
}

/// tracing's levels on syslog priorities as admins expect them, so that
/// `journalctl -p info` shows info and above (tracing-journald's default maps
/// info to notice and debug to info).
fn priorities() -> PriorityMappings {
    PriorityMappings {
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
        ..PriorityMappings::new()
    }
}

/// systemd sets JOURNAL_STREAM to the device and inode of the journal stream
/// it connected; it only counts if stderr is still that stream (a child whose
/// stderr was redirected inherits the variable too).
fn journal_is_stderr() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(stat.st_dev) && ino.parse::<u64>().ok() == Some(stat.st_ino)
}
