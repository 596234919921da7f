//! The room: who is logged in, and the fan-out of every line to all of them.
//!
//! Fan-out is one `tokio::sync::broadcast` ring: a sender formats a line once
//! into a shared `Bytes` and pushes it once, whatever the number of clients;
//! each client's writer reads the ring at its own pace. The ring is the
//! bounded outbound queue of every client at once: a client that falls more
//! than its capacity behind is lagging and is disconnected as slow (NATS's
//! slow-consumer policy), and a stalled client never blocks the sender or the
//! others. One ring also gives every receiver one sender's lines in order.
//!
//! In a cluster (docs/cluster.md, "Chat across hubs") the room also queues
//! its own clients' events for the other hubs (a bounded outbox the cluster
//! drains), takes theirs into the same ring, and keeps who is logged in at
//! each other hub for `/who`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::protocol;
use crate::log_limit::LogLimiter;
use crate::metrics::metrics;
use crate::shared_chat::{ChatEvent, ChatEventKind};
use crate::sync::lock;

/// Users listed per other hub at most; beyond it a hub's list is cut, so a
/// flood on the bus cannot grow this hub's memory without end.
pub const MAX_REMOTE_USERS: usize = 10_000;

/// Other hubs whose users the room counts at most.
pub const MAX_REMOTE_HUBS: usize = 256;

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
    /// In a cluster: this hub's events for the other hubs.
    outbox: OnceLock<mpsc::Sender<ChatEvent>>,
    /// Events the outbox had no room for.
    outbox_full: LogLimiter,
    /// Woken when this hub's logged-in users change.
    presence: Arc<Notify>,
    /// The users logged in at each other hub of the cluster.
    remote: Mutex<BTreeMap<String, Vec<String>>>,
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
            outbox: OnceLock::new(),
            outbox_full: LogLimiter::new(Duration::from_secs(60)),
            presence: Arc::new(Notify::new()),
            remote: Mutex::new(BTreeMap::new()),
        }
    }

    /// From now on this hub's events go to the cluster too, through the
    /// returned outbox (bounded: [`crate::shared_chat::OUTBOX`]).
    pub fn share(&self) -> Option<mpsc::Receiver<ChatEvent>> {
        let (sender, receiver) = mpsc::channel(crate::shared_chat::OUTBOX);
        self.outbox.set(sender).ok().map(|()| receiver)
    }

    /// Queues an event of this hub's clients for the other hubs.
    fn to_cluster(&self, kind: ChatEventKind, user: &str, text: &str) {
        let Some(outbox) = self.outbox.get() else {
            return;
        };
        let event = ChatEvent {
            kind,
            user: user.to_owned(),
            text: text.to_owned(),
        };
        if outbox.try_send(event).is_err() {
            self.outbox_full.log(|suppressed| {
                tracing::warn!(role = "chat", suppressed, "chat outbox full: the cluster is slow or unreachable, and this hub's lines reach only its own clients meanwhile");
            });
        }
    }

    /// Woken when this hub's logged-in users change.
    pub fn presence_changed(&self) -> Arc<Notify> {
        self.presence.clone()
    }

    /// The users logged in at this hub, sorted, each once.
    pub fn local_users(&self) -> Vec<String> {
        let members = lock(&self.members);
        let names: BTreeSet<&str> = members.values().map(|m| m.user.as_str()).collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Hub `hub`'s clients said or did `event`; one no client could have
    /// made is dropped. A `JOIN` or `LEAVE` also counts for `/who` until
    /// the hub's next presence says otherwise (presence travels apart from
    /// the lines, and may come later).
    pub fn deliver(&self, hub: &str, event: &ChatEvent) {
        let named = super::users::check_name(&event.user).is_ok();
        let one_line = !event.text.contains(['\n', '\r']);
        let line = match event.kind {
            ChatEventKind::Msg if named && one_line => protocol::msg(&event.user, &event.text),
            ChatEventKind::Join if named && event.text.is_empty() => {
                let mut remote = lock(&self.remote);
                if remote.len() < MAX_REMOTE_HUBS || remote.contains_key(hub) {
                    let users = remote.entry(hub.to_owned()).or_default();
                    if users.len() < MAX_REMOTE_USERS {
                        users.push(event.user.clone());
                    }
                }
                protocol::join(&event.user)
            }
            ChatEventKind::Leave if named && event.text.is_empty() => {
                let mut remote = lock(&self.remote);
                if let Some(users) = remote.get_mut(hub) {
                    if let Some(at) = users.iter().position(|user| *user == event.user) {
                        users.swap_remove(at);
                    }
                    if users.is_empty() {
                        remote.remove(hub);
                    }
                }
                protocol::leave(&event.user)
            }
            ChatEventKind::Sys if event.user.is_empty() && one_line => protocol::sys(&event.text),
            _ => {
                tracing::debug!(
                    role = "chat",
                    ?event,
                    "chat event from another hub dropped: no client could have sent it"
                );
                return;
            }
        };
        self.send(SYSTEM, line);
    }

    /// The users logged in at hub `hub` now.
    pub fn remote_users(&self, hub: &str, mut users: Vec<String>) {
        users.truncate(MAX_REMOTE_USERS);
        users.retain(|user| super::users::check_name(user).is_ok());
        let mut remote = lock(&self.remote);
        if users.is_empty() {
            remote.remove(hub);
        } else if remote.len() < MAX_REMOTE_HUBS || remote.contains_key(hub) {
            remote.insert(hub.to_owned(), users);
        }
    }

    /// Every other hub not in `live` is gone.
    pub fn remote_hubs_alive(&self, live: &[String]) {
        let gone: Vec<String> = lock(&self.remote)
            .keys()
            .filter(|hub| !live.contains(hub))
            .cloned()
            .collect();
        for hub in gone {
            self.remote_hub_gone(&hub);
        }
    }

    /// Hub `hub` is gone: its users logged in nowhere else leave.
    pub fn remote_hub_gone(&self, hub: &str) {
        let Some(gone) = lock(&self.remote).remove(hub) else {
            return;
        };
        let still = self.online();
        for user in gone.iter().filter(|user| !still.contains(user.as_str())) {
            self.send(SYSTEM, protocol::leave(user));
        }
    }

    /// Every user logged in here or at another hub.
    fn online(&self) -> BTreeSet<String> {
        let mut online: BTreeSet<String> = self.local_users().into_iter().collect();
        for users in lock(&self.remote).values() {
            online.extend(users.iter().cloned());
        }
        online
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
        self.to_cluster(ChatEventKind::Join, user, "");
        self.presence.notify_one();
        Membership { id, ring, revoked }
    }

    /// Removes a session and tells the others.
    pub fn leave(&self, id: ClientId) {
        let removed = lock(&self.members).remove(&id);
        if let Some(member) = removed {
            self.send(id, protocol::leave(&member.user));
            self.to_cluster(ChatEventKind::Leave, &member.user, "");
            self.presence.notify_one();
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
            self.to_cluster(ChatEventKind::Leave, &member.user, "");
        }
        if !revoked.is_empty() {
            self.presence.notify_one();
        }
        revoked.len()
    }

    /// Sends a message from `id` to everyone else.
    pub fn publish(&self, id: ClientId, user: &str, text: &str) {
        self.relayed.fetch_add(1, Ordering::Relaxed);
        metrics().chat_messages.inc();
        self.send(id, protocol::msg(user, text));
        self.to_cluster(ChatEventKind::Msg, user, text);
    }

    /// Sends `SYS text` to every client, at every hub of a cluster;
    /// returns how many there are here.
    pub fn system(&self, text: &str) -> usize {
        self.send(SYSTEM, protocol::sys(text));
        self.to_cluster(ChatEventKind::Sys, "", text);
        self.clients()
    }

    /// The `WHO` line: every logged-in user once, sorted, at every hub of
    /// a cluster.
    pub fn who(&self) -> Bytes {
        let online = self.online();
        protocol::who(online.iter().map(String::as_str))
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

    fn event(kind: ChatEventKind, user: &str, text: &str) -> ChatEvent {
        ChatEvent {
            kind,
            user: user.to_owned(),
            text: text.to_owned(),
        }
    }

    #[test]
    fn another_hubs_lines_reach_every_client_and_ones_no_client_could_send_do_not() {
        let room = Room::new(16);
        let mut ring = room.join("alice").ring;
        let _ = ring.try_recv(); // alice's own JOIN
        room.deliver("h2", &event(ChatEventKind::Join, "bob", ""));
        room.deliver("h2", &event(ChatEventKind::Msg, "bob", "hi  there"));
        room.deliver("h2", &event(ChatEventKind::Sys, "", "noon"));
        // Shapes no client of another hub could have made.
        room.deliver("h2", &event(ChatEventKind::Msg, "bad name", "x"));
        room.deliver("h2", &event(ChatEventKind::Msg, "bob", "two\nlines"));
        room.deliver("h2", &event(ChatEventKind::Join, "bob", "text"));
        room.deliver("h2", &event(ChatEventKind::Sys, "bob", "x"));
        room.deliver("h2", &event(ChatEventKind::Leave, "", ""));
        let lines: Vec<Bytes> = std::iter::from_fn(|| ring.try_recv().ok())
            .map(|out| out.line)
            .collect();
        assert_eq!(
            lines,
            [&b"JOIN bob\n"[..], b"MSG bob hi  there\n", b"SYS noon\n"]
        );
        // Remote lines are not this hub's clients' messages.
        assert_eq!(room.relayed(), 0);
        // The JOIN counts for /who before h2's presence comes, and its
        // LEAVE undoes it.
        assert_eq!(&room.who()[..], b"WHO alice bob\n");
        room.deliver("h2", &event(ChatEventKind::Leave, "bob", ""));
        assert_eq!(&room.who()[..], b"WHO alice\n");
    }

    #[test]
    fn a_hub_that_goes_right_after_a_join_takes_that_user_with_it() {
        let room = Room::new(16);
        let mut ring = room.join("alice").ring;
        room.deliver("h2", &event(ChatEventKind::Join, "carol", ""));
        // h2 dies before its presence arrives.
        room.remote_hub_gone("h2");
        let lines: Vec<Bytes> = std::iter::from_fn(|| ring.try_recv().ok())
            .map(|out| out.line)
            .filter(|line| !line.starts_with(b"JOIN alice"))
            .collect();
        assert_eq!(lines, [&b"JOIN carol\n"[..], b"LEAVE carol\n"]);
    }

    #[test]
    fn who_covers_other_hubs_and_a_hub_that_goes_takes_its_users() {
        let room = Room::new(16);
        let mut ring = room.join("alice").ring;
        let _ = ring.try_recv();
        room.remote_users("h2", vec!["bob".into(), "carol".into(), "bad name".into()]);
        room.remote_users("h3", vec!["carol".into()]);
        assert_eq!(&room.who()[..], b"WHO alice bob carol\n");
        // h2 goes: bob is logged in nowhere else, carol is (at h3).
        room.remote_hub_gone("h2");
        let lines: Vec<Bytes> = std::iter::from_fn(|| ring.try_recv().ok())
            .map(|out| out.line)
            .collect();
        assert_eq!(lines, [&b"LEAVE bob\n"[..]]);
        assert_eq!(&room.who()[..], b"WHO alice carol\n");
        room.remote_hub_gone("h2");
        room.remote_users("h3", Vec::new());
        assert_eq!(&room.who()[..], b"WHO alice\n");
    }

    #[tokio::test]
    async fn in_a_cluster_this_hubs_events_go_to_the_outbox_in_order() {
        let room = Room::new(16);
        let mut outbox = room.share().unwrap();
        assert!(room.share().is_none(), "shared once");
        let presence = room.presence_changed();
        let alice = room.join("alice");
        presence.notified().await;
        room.publish(alice.id, "alice", "one");
        room.system("noon");
        room.leave(alice.id);
        let mut events = Vec::new();
        outbox.recv_many(&mut events, 16).await;
        assert_eq!(
            events,
            [
                event(ChatEventKind::Join, "alice", ""),
                event(ChatEventKind::Msg, "alice", "one"),
                event(ChatEventKind::Sys, "", "noon"),
                event(ChatEventKind::Leave, "alice", ""),
            ]
        );
        assert!(room.local_users().is_empty());
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
