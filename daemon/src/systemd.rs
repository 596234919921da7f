//! sd_notify: readiness, status, reload and stop notifications, and the
//! watchdog (docs/packaging.md).
//!
//! Every function is a no-op when NOTIFY_SOCKET is unset, so meshd behaves the
//! same outside systemd. The watchdog is pinged by a task on the same runtime
//! that serves requests: if that runtime stalls, the pings stop and systemd
//! restarts meshd.

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "sd_notify failed");
    }
}

/// Every listener is bound: READY=1 with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload has started. MONOTONIC_USEC lets newer systemd match it to the
/// reload it asked for.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => notify(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

/// Shutdown has started.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Updates the free-form status line shown by `systemctl status`.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Pings the watchdog at half of WATCHDOG_USEC, if systemd asked for pings.
pub fn spawn_watchdog(cancel: CancellationToken, tracker: &TaskTracker) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = timeout / 2;
    tracing::info!(period_ms = period.as_millis() as u64, "watchdog enabled");
    tracker.spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
    });
}
