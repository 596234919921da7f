//! Logging through tracing: to journald with structured fields when stderr is
//! the journal, otherwise human-readable lines on stderr.
//!
//! Field names are fixed in `docs/logging.md`; journald receives them
//! upper-cased (`device_id` becomes `DEVICE_ID`).
//!
//! Fields often carry text a peer or client chose (a claimed device id, a
//! user name). On stderr every control character inside a line is written
//! escaped ([`EscapeControls`]), so such text can neither forge a log line
//! with a newline nor drive a terminal with escape sequences. journald keeps
//! each field apart, so it needs no escaping.

use std::io::Write;
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
    // No ANSI colours: they are control characters too, and the writer
    // escapes every one of those.
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(|| EscapeControls(std::io::stderr()))
            .with_ansi(false)
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

/// A writer for whole log lines: each write is one formatted event, whose
/// control characters (but its final newline) are written escaped.
pub struct EscapeControls<W>(pub W);

impl<W: Write> Write for EscapeControls<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&escape_controls(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `event` with every control character except a trailing newline written
/// as `\n`, `\r`, `\t` or `\u{..}`; invalid UTF-8 is replaced, never
/// passed through.
fn escape_controls(event: &[u8]) -> Vec<u8> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let text = String::from_utf8_lossy(body);
    if !text.chars().any(char::is_control) {
        let mut out = text.into_owned().into_bytes();
        out.extend_from_slice(end);
        return out;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    let mut out = out.into_bytes();
    out.extend_from_slice(end);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_cannot_forge_a_line_or_drive_a_terminal() {
        let event =
            b"INFO link refused claimed=evil\n2026-12-02T00:00:00Z INFO meshd ready\x1b[2J\r\n";
        let written = escape_controls(event);
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "INFO link refused claimed=evil\\n2026-12-02T00:00:00Z INFO meshd ready\\u{1b}[2J\\r\n"
        );
        assert_eq!(escape_controls(b"plain line\n"), b"plain line\n");
        assert_eq!(
            escape_controls(b"bad \xff byte\n"),
            "bad \u{fffd} byte\n".as_bytes()
        );
        let mut sink = EscapeControls(Vec::new());
        sink.write_all(b"a\tb\n").unwrap();
        assert_eq!(sink.0, b"a\\tb\n");
    }
}
