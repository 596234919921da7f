//! Keeping one peer task per listed device: the roster fed by the hubs'
//! answers, merged and reconciled against the running peer tasks, which
//! are started, updated, stopped, or restarted with backoff when one died.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Mesh;
use super::hubs::HubId;
use super::path::Established;
use super::peer::{Command, PeerHandle};
use super::roster::KeyStatus;
use crate::device_id::DeviceId;
use crate::hub_wire::ListedDevice;
use crate::public_key::PublicKey;
use crate::sync::lock;

/// Devices this node keeps links to at most.
const MAX_PEERS: usize = 4096;

/// How often the roster is re-merged, so devices whose hubs' answers expired
/// lose their links even while no hub answers.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// Reconciles every [`RECONCILE_INTERVAL`], and at once when a peer task
/// ended on its own; drops every peer task when meshd stops.
pub(super) async fn reconcile_periodically(mesh: Arc<Mesh>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => mesh.reconcile(),
            () = mesh.local.peer_exited.notified() => mesh.reconcile(),
        }
    }
    // Dropping the handles stops the peer tasks.
    lock(&mesh.peers).clear();
}

impl Mesh {
    /// Hub `hub` sent its whole list.
    pub(super) fn update_roster(&self, hub: HubId, devices: &[ListedDevice]) {
        let ttl = self.local.hubs.get(hub).ttl();
        lock(&self.roster).update(hub.index(), devices, ttl, Instant::now());
        self.roster_changed();
    }

    /// Hub `hub` sent what changed in its list.
    pub(super) fn apply_roster_delta(
        &self,
        hub: HubId,
        devices: &[ListedDevice],
        removed: &[String],
    ) {
        let ttl = self.local.hubs.get(hub).ttl();
        lock(&self.roster).apply_delta(hub.index(), devices, removed, ttl, Instant::now());
        self.roster_changed();
    }

    /// Hub `hub` answered a heartbeat: its list stands, and the devices it
    /// stopped listing a TTL ago may go.
    pub(super) fn confirm_roster(&self, hub: HubId) {
        let ttl = self.local.hubs.get(hub).ttl();
        lock(&self.roster).confirm(hub.index(), ttl, Instant::now());
        self.reconcile();
    }

    fn roster_changed(&self) {
        self.reconcile();
        self.roster_updates.send_modify(|version| *version += 1);
    }

    /// Hub `hub` says `id` left cleanly: drop it from that hub's view now.
    pub(super) fn forget(&self, hub: HubId, id: &DeviceId) {
        lock(&self.roster).forget(hub.index(), id, Instant::now());
        self.reconcile();
    }

    pub(super) fn key_of(&self, id: &DeviceId) -> Option<KeyStatus> {
        lock(&self.roster).key_of(id, Instant::now())
    }

    /// Waits until the roster trusts `key` for `peer`, or `timeout`
    /// passed: a device that just registered dials the others as soon as it
    /// has the list, and the hubs' pushes of its arrival may still be on
    /// their way here. True if it is trusted now.
    pub(super) async fn wait_for_key(
        &self,
        peer: &DeviceId,
        key: PublicKey,
        timeout: Duration,
    ) -> bool {
        let mut updates = self.roster_updates.subscribe();
        let trusted = |mesh: &Mesh| mesh.key_of(peer) == Some(KeyStatus::Trusted(key));
        let wait = async {
            loop {
                if trusted(self) {
                    return;
                }
                if updates.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        trusted(self)
    }

    /// Starts peer tasks for newly listed devices, updates the others, and
    /// stops those no hub lists any more (or whose key changed).
    pub(super) fn reconcile(&self) {
        let now = Instant::now();
        let merged = lock(&self.roster).merged(now);
        let mut peers = lock(&self.peers);
        let mut restarts = lock(&self.restarts);
        restarts.retain(|id, _| merged.contains_key(id));
        peers.retain(|id, handle| {
            if handle.died() {
                let restart = restarts
                    .entry(id.clone())
                    .or_insert_with(|| Restart::new(now));
                restart.died(now, handle.started.elapsed());
                return false;
            }
            let reason = match merged.get(id) {
                None => "no signaling server that answers lists it any more",
                Some(device) if device.key == KeyStatus::Trusted(handle.key) => return true,
                Some(device) if device.key == KeyStatus::Conflict => {
                    "the signaling servers list different keys for it"
                }
                Some(_) => "the signaling servers list another key for it",
            };
            tracing::info!(peer = %id, reason, "closing the link to a device");
            handle.stop();
            false
        });
        let mut left_out = 0usize;
        for (id, device) in merged {
            if id == self.local.id {
                continue;
            }
            let KeyStatus::Trusted(key) = device.key else {
                continue;
            };
            if restarts
                .get(&id)
                .is_some_and(|restart| restart.not_before > now)
            {
                continue;
            }
            match peers.get(&id) {
                Some(handle) => handle.update(device.listing),
                None if peers.len() < MAX_PEERS => {
                    let handle =
                        PeerHandle::spawn(self.local.clone(), id.clone(), key, device.listing);
                    peers.insert(id, handle);
                }
                None => left_out += 1,
            }
        }
        if left_out > 0 {
            self.over_cap.log(|suppressed| {
                tracing::warn!(
                    devices = left_out,
                    max = MAX_PEERS,
                    suppressed,
                    "too many devices; no link made"
                );
            });
        }
        // Maps that grew for a crowd of (perhaps fake) devices give the
        // memory back once it has gone.
        if peers.capacity() > 64 && peers.len() < peers.capacity() / 4 {
            peers.shrink_to_fit();
        }
    }

    /// Passes a hub's message to a peer task, unless it is too busy to
    /// take it now (the sender retries).
    pub(super) fn tell_peer(&self, peer: &DeviceId, command: Command) {
        if let Some(handle) = lock(&self.peers).get(peer) {
            let _ = handle.command_sender().try_send(command);
        }
    }

    /// Hands an accepted link to its peer task.
    pub(super) async fn deliver(&self, peer: &DeviceId, key: PublicKey, established: Established) {
        let sender = {
            let peers = lock(&self.peers);
            peers
                .get(peer)
                .filter(|handle| handle.key == key)
                .map(|handle| handle.command_sender())
        };
        match sender {
            Some(sender) => {
                let _ = sender.send(Command::Established(established)).await;
            }
            None => {
                tracing::debug!(%peer, "no peer task for an accepted link; closed");
            }
        }
    }
}

/// How long a device whose peer task keeps dying waits before the next.
#[derive(Debug)]
pub(super) struct Restart {
    /// Deaths in a row, each within [`HEALTHY_RUN`] of its start.
    attempts: u32,
    not_before: Instant,
}

/// A peer task that ran this long before it died starts over at once.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Longest wait between restarts of a peer task that keeps dying.
const MAX_RESTART_WAIT: Duration = Duration::from_secs(30);

impl Restart {
    fn new(now: Instant) -> Restart {
        Restart {
            attempts: 0,
            not_before: now,
        }
    }

    /// Records a death at `now` of a task that ran `lived`: the first is
    /// replaced at once, then 1 s, 2 s, 4 s ... up to 30 s apart.
    fn died(&mut self, now: Instant, lived: Duration) {
        if lived >= HEALTHY_RUN {
            self.attempts = 0;
        }
        let wait = match self.attempts {
            0 => Duration::ZERO,
            n => (Duration::from_secs(1) * 2u32.saturating_pow(n - 1)).min(MAX_RESTART_WAIT),
        };
        self.attempts = self.attempts.saturating_add(1);
        self.not_before = now + wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dying_peer_task_is_restarted_at_once_then_with_backoff() {
        let t0 = Instant::now();
        let mut restart = Restart::new(t0);
        let waits: Vec<Duration> = (0..8)
            .map(|_| {
                restart.died(t0, Duration::from_millis(10));
                restart.not_before - t0
            })
            .collect();
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(30),
                secs(30)
            ]
        );
        // A task that ran a minute before dying starts over at once.
        restart.died(t0, HEALTHY_RUN);
        assert_eq!(restart.not_before, t0);
    }
}
