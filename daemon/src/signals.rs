//! The signals meshd acts on: SIGHUP reloads, SIGTERM and SIGINT stop.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// SIGHUP: re-read the config.
    Reload,
    /// SIGTERM or SIGINT: shut down gracefully.
    Stop(&'static str),
}

/// The installed handlers.
pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Installs the handlers; until then the default actions apply.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Intent {
        tokio::select! {
            _ = self.hangup.recv() => Intent::Reload,
            _ = self.terminate.recv() => Intent::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Intent::Stop("SIGINT"),
        }
    }
}
