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
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::protocol;

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
}

/// The chat room.
pub struct Room {
    ring: broadcast::Sender<Outgoing>,
    members: Mutex<BTreeMap<ClientId, String>>,
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
    /// (subscribed before the JOIN, so nothing after it is missed).
    pub fn join(&self, user: &str) -> (ClientId, broadcast::Receiver<Outgoing>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let receiver = self.ring.subscribe();
        self.members().insert(id, user.to_owned());
        self.send(id, protocol::join(user));
        (id, receiver)
    }

    /// Removes a session and tells the others.
    pub fn leave(&self, id: ClientId) {
        if let Some(user) = self.members().remove(&id) {
            self.send(id, protocol::leave(&user));
        }
    }

    /// Sends a message from `id` to everyone else.
    pub fn publish(&self, id: ClientId, user: &str, text: &str) {
        self.relayed.fetch_add(1, Ordering::Relaxed);
        self.send(id, protocol::msg(user, text));
    }

    /// Sends `SYS text` to every client; returns how many there are.
    pub fn system(&self, text: &str) -> usize {
        self.send(SYSTEM, protocol::sys(text));
        self.clients()
    }

    /// The `WHO` line: every logged-in user once, sorted.
    pub fn who(&self) -> Bytes {
        let members = self.members();
        let mut names: Vec<&str> = members.values().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        protocol::who(names)
    }

    /// Logged-in sessions.
    pub fn clients(&self) -> usize {
        self.members().len()
    }

    /// Messages relayed since start.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    fn send(&self, from: ClientId, line: Bytes) {
        // An error only means nobody is listening.
        let _ = self.ring.send(Outgoing { from, line });
    }

    fn members(&self) -> std::sync::MutexGuard<'_, BTreeMap<ClientId, String>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_see_join_messages_and_leave_in_order() {
        let room = Room::new(16);
        let (alice, mut alice_rx) = room.join("alice");
        let (bob, _bob_rx) = room.join("bob");
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
        let (_, mut rx) = room.join("slow");
        let (id, _) = room.join("fast");
        for i in 0..10 {
            room.publish(id, "fast", &i.to_string());
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
