//! The room: who is logged in, and the fan-out of every line to all of them.
//!
//! Fan-out is one `tokio::sync::broadcast` ring: a sender formats a line once
//! into a shared `Bytes` and pushes it once, whatever the number of clients;
//! each client's writer reads the ring at its own pace. The ring is the
//! bounded outbound queue of every client at once: a client that falls more
//! than its capacity behind is lagging and is disconnected as slow (NATS's
//! slow-consumer policy), and a stalled client never blocks the sender or the
//! others. One ring also gives every receiver one sender's lines in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::protocol;
use crate::metrics::metrics;
use crate::sync::lock;

/// Identifies one logged-in session; 0 is the system.
pub type ClientId = u64;

/// The sender of `SYS` lines.
pub const SYSTEM: ClientId = 0;

/// A line for every client but its sender.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Who sent it; its own session skips it (no echo).
    pub from: ClientId,
    /// The formatted line, shared by all receivers.
    pub line: Bytes,
    /// When it entered the room, for the fan-out delay metric.
    pub at: std::time::Instant,
}

/// Ends a session whose user was removed or got a new password.
#[derive(Debug, Default)]
pub struct Revocation {
    token: CancellationToken,
    reason: OnceLock<&'static str>,
}

impl Revocation {
    /// Completes once the session is revoked.
    pub async fn revoked(&self) {
        self.token.cancelled().await;
    }

    /// Why, once revoked.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason.get().copied()
    }

    fn revoke(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Whether it was revoked (for tests).
    #[cfg(test)]
    pub fn is_revoked(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// A logged-in session as the room knows it.
struct Member {
    user: String,
    revoked: Arc<Revocation>,
}

/// What a session gets when it joins.
pub struct Membership {
    /// Its id in the room.
    pub id: ClientId,
    /// Every line from the moment it joined.
    pub ring: broadcast::Receiver<Outgoing>,
    /// Fires when its user's login is revoked.
    pub revoked: Arc<Revocation>,
}

/// The chat room.
pub struct Room {
    ring: broadcast::Sender<Outgoing>,
    members: Mutex<BTreeMap<ClientId, Member>>,
    next_id: AtomicU64,
    relayed: AtomicU64,
}

impl Room {
    /// A room whose ring holds `capacity` lines.
    pub fn new(capacity: usize) -> Room {
        let (ring, _) = broadcast::channel(capacity);
        Room {
            ring,
            members: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(SYSTEM + 1),
            relayed: AtomicU64::new(0),
        }
    }

    /// Adds a logged-in session, tells the others, and returns its receiver
    /// (subscribed before the JOIN, so nothing after it is missed). The
    /// session is a member from here on: `/who` lists it and every line sent
    /// after this reaches it, so its `OK` is written only after this.
    pub fn join(&self, user: &str) -> Membership {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ring = self.ring.subscribe();
        let revoked = Arc::new(Revocation::default());
        lock(&self.members).insert(
            id,
            Member {
                user: user.to_owned(),
                revoked: revoked.clone(),
            },
        );
        self.send(id, protocol::join(user));
        Membership { id, ring, revoked }
    }

    /// Removes a session and tells the others.
    pub fn leave(&self, id: ClientId) {
        let removed = lock(&self.members).remove(&id);
        if let Some(member) = removed {
            self.send(id, protocol::leave(&member.user));
        }
    }

    /// Ends every session of `user` (removed, or its password changed): they
    /// leave the room at once and their sessions close with `ERR auth
    /// <reason>`. Returns how many there were.
    pub fn revoke(&self, user: &str, reason: &'static str) -> usize {
        let revoked: Vec<(ClientId, Member)> = {
            let mut members = lock(&self.members);
            let ids: Vec<ClientId> = members
                .iter()
                .filter(|(_, member)| member.user == user)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| members.remove(&id).map(|member| (id, member)))
                .collect()
        };
        for (id, member) in &revoked {
            member.revoked.revoke(reason);
            self.send(*id, protocol::leave(&member.user));
        }
        revoked.len()
    }

    /// Sends a message from `id` to everyone else.
    pub fn publish(&self, id: ClientId, user: &str, text: &str) {
        self.relayed.fetch_add(1, Ordering::Relaxed);
        metrics().chat_messages.inc();
        self.send(id, protocol::msg(user, text));
    }

    /// Sends `SYS text` to every client; returns how many there are.
    pub fn system(&self, text: &str) -> usize {
        self.send(SYSTEM, protocol::sys(text));
        self.clients()
    }

    /// The `WHO` line: every logged-in user once, sorted.
    pub fn who(&self) -> Bytes {
        let members = lock(&self.members);
        let mut names: Vec<&str> = members
            .values()
            .map(|member| member.user.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        protocol::who(names)
    }

    /// Logged-in sessions.
    pub fn clients(&self) -> usize {
        lock(&self.members).len()
    }

    /// Messages relayed since start.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    fn send(&self, from: ClientId, line: Bytes) {
        // An error only means nobody is listening.
        let _ = self.ring.send(Outgoing {
            from,
            line,
            at: std::time::Instant::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_see_join_messages_and_leave_in_order() {
        let room = Room::new(16);
        let Membership {
            id: alice,
            ring: mut alice_rx,
            ..
        } = room.join("alice");
        let bob = room.join("bob").id;
        room.publish(bob, "bob", "one");
        room.publish(bob, "bob", "two");
        room.leave(bob);
        let seen: Vec<(ClientId, Bytes)> = std::iter::from_fn(|| alice_rx.try_recv().ok())
            .map(|out| (out.from, out.line))
            .collect();
        let for_alice: Vec<&[u8]> = seen
            .iter()
            .filter(|(from, _)| *from != alice)
            .map(|(_, line)| &line[..])
            .collect();
        assert_eq!(
            for_alice,
            [
                &b"JOIN bob\n"[..],
                b"MSG bob one\n",
                b"MSG bob two\n",
                b"LEAVE bob\n"
            ]
        );
        assert_eq!(room.relayed(), 2);
        assert_eq!(&room.who()[..], b"WHO alice\n");
    }

    #[test]
    fn a_receiver_that_falls_behind_lags() {
        let room = Room::new(4);
        let mut rx = room.join("slow").ring;
        let id = room.join("fast").id;
        for i in 0..10 {
            room.publish(id, "fast", &i.to_string());
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }

    #[test]
    fn revoking_a_user_ends_all_its_sessions_and_only_them() {
        let room = Room::new(16);
        let first = room.join("mallory");
        let second = room.join("mallory");
        let other = room.join("alice");
        assert_eq!(room.revoke("mallory", "user removed"), 2);
        assert!(first.revoked.is_revoked() && second.revoked.is_revoked());
        assert_eq!(first.revoked.reason(), Some("user removed"));
        assert!(!other.revoked.is_revoked());
        assert_eq!(&room.who()[..], b"WHO alice\n");
        assert_eq!(room.revoke("mallory", "user removed"), 0);
        // Leaving after a revocation says LEAVE only once.
        room.leave(first.id);
        let mut ring = other.ring;
        let leaves = std::iter::from_fn(|| ring.try_recv().ok())
            .filter(|out| out.line.starts_with(b"LEAVE"))
            .count();
        assert_eq!(leaves, 2);
    }
}
