//! Chat across hubs (docs/cluster.md, "Chat across hubs"): one room over
//! every hub of the cluster.
//!
//! - **Lines** (messages, JOIN, LEAVE, operator broadcasts) go through the
//!   JetStream stream `MESHD_CHAT`: each hub publishes its own clients'
//!   events in batches on `meshd.chat.<hub>`, in order, one batch at a time,
//!   each with a message id the stream deduplicates (a batch resent after a
//!   lost acknowledgement is stored once). The room queues them in a bounded
//!   outbox, which waits while NATS is unreachable. Each hub reads the
//!   stream with an ordered consumer from where it stopped (the last stream
//!   sequence it applied), so lines published while it was cut off arrive
//!   when it is back, each once.
//! - **Users** live in the bucket `meshd_chat_users` (name to argon2id
//!   hash): a change is made there first, and every hub applies the bucket
//!   to its own users file, which keeps logins working while NATS is away.
//! - **Presence** (`/who`): each hub keeps the users logged in there in the
//!   bucket `meshd_chat_online` under its own id; a hub that leaves takes its
//!   users with it, and those logged in nowhere else are said to leave.
//!
//! Task: its own, beside the membership's, on the same connection.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use async_nats::jetstream::{Context, ContextBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ClusterError, ClusterState, JETSTREAM_TIMEOUT, RECHECK_EVERY, RETRY_AFTER, buckets};
use crate::shared_chat::{ChatEvent, SharedRoom, UserOp, UserRefusal};
use crate::sync::lock;

/// The stream of every hub's chat events.
const STREAM: &str = "MESHD_CHAT";

/// Chat users, name to password hash.
pub const USERS: &str = "meshd_chat_users";

/// The users logged in at each hub.
pub const ONLINE: &str = "meshd_chat_online";

/// Events per published batch at most.
const MAX_BATCH: usize = 64;

/// A published batch's size at most: well under NATS's default
/// `max_payload` (1 MiB), whatever `[chat] max_line_bytes` allows.
const MAX_PUBLISH_BYTES: usize = 256 << 10;

/// How long the stream keeps events: a hub cut off for longer misses what
/// is older.
const KEEP_EVENTS: Duration = Duration::from_secs(3600);

/// The stream's size at most; the oldest events go first.
const MAX_STREAM_BYTES: i64 = 256 << 20;

/// A batch resent within this is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The largest batch a hub reads from another (64 lines of at most 64 KiB,
/// and their framing).
const MAX_BATCH_BYTES: usize = 5 << 20;

/// The subject a hub publishes its events on.
fn subject_of(hub: &str) -> String {
    format!("meshd.chat.{}", buckets::key_of(hub))
}

/// One published batch.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    hub: String,
    events: Vec<ChatEvent>,
}

/// The chat room, as the cluster task holds it.
pub struct ChatSync {
    room: Arc<dyn SharedRoom>,
    outbox: mpsc::Receiver<ChatEvent>,
    /// Events taken from the outbox and not yet in a batch, in order.
    taken: Vec<ChatEvent>,
    /// A batch not yet acknowledged: its message id and bytes.
    pending: Option<(String, Bytes)>,
    /// Numbers this start's batches.
    next_batch: u64,
    /// Tells this start's batches from an earlier start's.
    boot: u64,
    /// The last stream sequence applied; `None` before the first session.
    applied: Option<u64>,
}

impl ChatSync {
    /// The room to share, and its outbox.
    pub fn new(room: Arc<dyn SharedRoom>, outbox: mpsc::Receiver<ChatEvent>) -> ChatSync {
        ChatSync {
            room,
            outbox,
            taken: Vec::with_capacity(MAX_BATCH),
            pending: None,
            next_batch: 0,
            boot: rand::random(),
            applied: None,
        }
    }
}

/// The chat's task: a session whenever the connection is up.
pub async fn run(state: Arc<ClusterState>, mut chat: ChatSync, cancel: CancellationToken) {
    loop {
        let client = lock(&state.client).clone();
        let connected = client.as_ref().is_some_and(|client| {
            client.connection_state() == async_nats::connection::State::Connected
        });
        let Some(client) = client.filter(|_| connected) else {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(RECHECK_EVERY) => continue,
            }
        };
        let js = ContextBuilder::new()
            .timeout(JETSTREAM_TIMEOUT)
            .build(client);
        let outcome = tokio::select! {
            () = cancel.cancelled() => break,
            outcome = session(&state, &mut chat, &js) => outcome,
        };
        *lock(&state.chat_users) = None;
        if let Err(error) = outcome {
            tracing::debug!(role = "cluster", %error, "chat session ended; retrying");
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    }
    // Leave at once: the others say this hub's users left.
    let client = lock(&state.client).clone();
    if let Some(client) = client {
        let js = ContextBuilder::new()
            .timeout(JETSTREAM_TIMEOUT)
            .build(client);
        if let Ok(online) = js.get_key_value(ONLINE).await {
            let key = buckets::key_of(&state.me.id);
            let _ = tokio::time::timeout(Duration::from_secs(1), online.delete(key)).await;
        }
    }
}

fn jetstream(what: &str) -> impl Fn(String) -> ClusterError + '_ {
    move |error| ClusterError::JetStream(format!("{what}: {error}"))
}

/// One healthy stretch; returns why it ended.
async fn session(
    state: &ClusterState,
    chat: &mut ChatSync,
    js: &Context,
) -> Result<(), ClusterError> {
    let users = buckets::ensure(js, USERS, 1, Duration::ZERO).await?;
    let mut users_watch = sync_users(&users, chat.room.as_ref()).await?;
    *lock(&state.chat_users) = Some(users);

    let online = buckets::ensure(js, ONLINE, 1, Duration::ZERO).await?;
    let me = buckets::key_of(&state.me.id);
    let presence = chat.room.presence_changed();
    put_presence(&online, &me, chat.room.as_ref()).await?;
    let mut online_watch = online
        .watch_with_history(">")
        .await
        .map_err(|error| jetstream("watching chat presence")(error.to_string()))?;

    let stream = js
        .get_or_create_stream(Config {
            name: STREAM.to_owned(),
            subjects: vec!["meshd.chat.>".to_owned()],
            max_age: KEEP_EVENTS,
            max_bytes: MAX_STREAM_BYTES,
            discard: DiscardPolicy::Old,
            duplicate_window: DUPLICATE_WINDOW,
            storage: StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|error| jetstream("the chat stream")(error.to_string()))?;
    // A hub that starts sees what is said from now on, as a client that
    // logs in does; from then on it reads from where it stopped.
    let applied = *chat
        .applied
        .get_or_insert(stream.cached_info().state.last_sequence);
    let deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: applied + 1,
    };
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: "meshd.chat.>".to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|error| jetstream("reading the chat stream")(error.to_string()))?;
    let mut events = consumer
        .messages()
        .await
        .map_err(|error| jetstream("reading the chat stream")(error.to_string()))?;
    let own_subject = subject_of(&state.me.id);
    let mut presence_cache = PresenceCache::default();
    let mut recheck = tokio::time::interval(super::hubs::ANNOUNCE_EVERY);
    loop {
        if chat.pending.is_none() && !chat.taken.is_empty() {
            chat.pending = seal(chat, &state.me.id);
        }
        if let Some((id, bytes)) = &chat.pending {
            let publish = PublishMessage::build()
                .payload(bytes.clone())
                .message_id(id);
            let ack = match js.send_publish(own_subject.clone(), publish).await {
                Ok(ack) => ack,
                Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    // It never will fit: the lines stay on this hub.
                    tracing::warn!(role = "cluster", bytes = bytes.len(), %error, "chat lines too large for NATS dropped; they reached this hub's clients only");
                    chat.pending = None;
                    continue;
                }
                Err(error) => return Err(jetstream("publishing chat lines")(error.to_string())),
            };
            ack.await
                .map_err(|error| jetstream("publishing chat lines")(error.to_string()))?;
            chat.pending = None;
            continue;
        }
        tokio::select! {
            received = chat.outbox.recv_many(&mut chat.taken, MAX_BATCH) => {
                if received == 0 {
                    // The chat role is gone: meshd is stopping.
                    return Ok(());
                }
            }
            _ = recheck.tick() => {
                // Presence counts only for hubs in the cluster now: an old
                // entry of a hub that died is nobody logged in.
                let live = state.live_hubs();
                presence_cache.apply(chat.room.as_ref(), &live);
                chat.room.remote_hubs_alive(&live);
            }
            () = presence.notified() => put_presence(&online, &me, chat.room.as_ref()).await?,
            entry = users_watch.next() => match entry {
                Some(Ok(entry)) => apply_user_entry(chat.room.as_ref(), &entry).await,
                Some(Err(error)) => return Err(jetstream("watching chat users")(error.to_string())),
                None => return Err(jetstream("watching chat users")("ended".to_owned())),
            },
            entry = online_watch.next() => match entry {
                Some(Ok(entry)) => {
                    let hub = buckets::id_of(&entry.key);
                    if hub != state.me.id {
                        presence_cache.take(chat.room.as_ref(), &hub, &entry, &state.live_hubs());
                    }
                }
                Some(Err(error)) => return Err(jetstream("watching chat presence")(error.to_string())),
                None => return Err(jetstream("watching chat presence")("ended".to_owned())),
            },
            message = events.next() => match message {
                Some(Ok(message)) => {
                    if let Ok(info) = message.info() {
                        chat.applied = Some(info.stream_sequence);
                    }
                    let subject = message.subject.as_str();
                    if let Some(hub) = subject.strip_prefix("meshd.chat.")
                        && subject != own_subject
                    {
                        deliver(chat.room.as_ref(), &buckets::id_of(hub), &message.payload);
                    }
                }
                Some(Err(error)) => return Err(jetstream("reading the chat stream")(error.to_string())),
                None => return Err(jetstream("reading the chat stream")("ended".to_owned())),
            },
        }
    }
}

/// Turns the events taken from the outbox, in order, into the next batch
/// to publish: as many as fit in [`MAX_PUBLISH_BYTES`]; the rest wait for
/// the next. `None` when only events too large to publish at all were
/// there (they are dropped, and said so).
fn seal(chat: &mut ChatSync, me: &str) -> Option<(String, Bytes)> {
    let mut events = Vec::new();
    let mut size = 64;
    while let Some(event) = chat.taken.first() {
        // Infallible for these types; counted as too large if not.
        let bytes = serde_json::to_vec(event).map_or(usize::MAX, |bytes| bytes.len() + 1);
        if bytes > MAX_PUBLISH_BYTES - 64 {
            let event = chat.taken.remove(0);
            tracing::warn!(role = "cluster", user = %event.user, bytes, "a chat line too large for the cluster reached this hub's clients only");
            continue;
        }
        if size + bytes > MAX_PUBLISH_BYTES {
            break;
        }
        size += bytes;
        events.push(chat.taken.remove(0));
    }
    if events.is_empty() {
        return None;
    }
    let batch = Batch {
        hub: me.to_owned(),
        events,
    };
    let bytes = serde_json::to_vec(&batch).ok()?;
    chat.next_batch += 1;
    let id = format!("{me}:{:x}:{}", chat.boot, chat.next_batch);
    Some((id, Bytes::from(bytes)))
}

/// Shows hub `hub`'s batch (the hub its subject names) to this hub's
/// clients.
fn deliver(room: &dyn SharedRoom, hub: &str, payload: &[u8]) {
    if payload.len() > MAX_BATCH_BYTES {
        tracing::debug!(
            role = "cluster",
            bytes = payload.len(),
            "chat batch from another hub dropped: too large"
        );
        return;
    }
    match serde_json::from_slice::<Batch>(payload) {
        Ok(batch) => {
            for event in batch.events.into_iter().take(MAX_BATCH) {
                room.deliver(hub, event);
            }
        }
        Err(error) => {
            tracing::debug!(role = "cluster", %error, "chat batch from another hub dropped: malformed")
        }
    }
}

/// The other hubs' presence as the bucket has it, applied to the room only
/// for hubs in the cluster now (a dead hub's entry stays in the bucket).
/// Each entry is applied once: when it comes from a live hub, or when its
/// hub is first heard of later. Applying it again would undo the `JOIN`s
/// and `LEAVE`s that came through the stream since (presence and lines
/// travel apart), and a hub that then died would leave its newest users
/// online at the others for ever.
#[derive(Default)]
struct PresenceCache {
    /// Each hub's users, and whether the room has them yet.
    by_hub: std::collections::HashMap<String, (Vec<String>, bool)>,
}

impl PresenceCache {
    /// Takes an entry of the presence bucket.
    fn take(
        &mut self,
        room: &dyn SharedRoom,
        hub: &str,
        entry: &async_nats::jetstream::kv::Entry,
        live: &[String],
    ) {
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<Vec<String>>(&entry.value) {
                Ok(users) => self.put(room, hub, users, live),
                Err(error) => {
                    tracing::debug!(role = "cluster", %hub, %error, "chat presence that does not parse; ignored")
                }
            },
            Operation::Delete | Operation::Purge => {
                self.by_hub.remove(hub);
                room.remote_hub_gone(hub);
            }
        }
    }

    /// Hub `hub` says `users` are logged in there.
    fn put(&mut self, room: &dyn SharedRoom, hub: &str, users: Vec<String>, live: &[String]) {
        if self.by_hub.len() >= super::hubs::MAX_HUBS && !self.by_hub.contains_key(hub) {
            return;
        }
        let applied = live.iter().any(|known| known == hub);
        if applied {
            room.remote_users(hub, users.clone());
        }
        self.by_hub.insert(hub.to_owned(), (users, applied));
    }

    /// Applies what live hubs said before they were heard of (or before
    /// they were last taken for gone: the room drops a hub that leaves the
    /// cluster, so it gets its users again when it is back).
    fn apply(&mut self, room: &dyn SharedRoom, live: &[String]) {
        for (hub, (users, applied)) in &mut self.by_hub {
            let is_live = live.contains(hub);
            if is_live && !*applied {
                room.remote_users(hub, users.clone());
            }
            *applied = is_live;
        }
    }
}

/// Puts the users logged in at this hub.
async fn put_presence(online: &Store, me: &str, room: &dyn SharedRoom) -> Result<(), ClusterError> {
    let users = serde_json::to_vec(&room.local_users())
        .map_err(|error| ClusterError::JetStream(error.to_string()))?;
    online
        .put(me, users.into())
        .await
        .map(|_revision| ())
        .map_err(|error| jetstream("chat presence")(error.to_string()))
}

/// Applies a user entry of the bucket to this hub.
async fn apply_user_entry(room: &dyn SharedRoom, entry: &async_nats::jetstream::kv::Entry) {
    let name = buckets::id_of(&entry.key);
    match entry.operation {
        Operation::Put => match std::str::from_utf8(&entry.value) {
            Ok(hash) => room.apply_user(&name, Some(hash)).await,
            Err(_) => {
                tracing::debug!(role = "cluster", user = %name, "chat user hash that is not text; ignored")
            }
        },
        Operation::Delete | Operation::Purge => room.apply_user(&name, None).await,
    }
}

/// The first look at the users' bucket each session: every entry (removals
/// included) applied to this hub, then this hub's users the bucket has
/// never heard of (made before the hub joined) written to it. Returns the
/// watch, which goes on with the changes.
async fn sync_users(
    store: &Store,
    room: &dyn SharedRoom,
) -> Result<async_nats::jetstream::kv::Watch, ClusterError> {
    let values = store
        .status()
        .await
        .map_err(|error| jetstream("the chat users bucket")(error.to_string()))?
        .values();
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|error| jetstream("watching chat users")(error.to_string()))?;
    let mut known = std::collections::HashSet::new();
    if values > 0 {
        loop {
            let entry = tokio::time::timeout(JETSTREAM_TIMEOUT, watch.next())
                .await
                .map_err(|_| jetstream("reading chat users")("no answer".to_owned()))?;
            let entry = match entry {
                Some(Ok(entry)) => entry,
                Some(Err(error)) => return Err(jetstream("reading chat users")(error.to_string())),
                None => return Err(jetstream("reading chat users")("ended".to_owned())),
            };
            known.insert(buckets::id_of(&entry.key));
            apply_user_entry(room, &entry).await;
            if entry.delta == 0 {
                break;
            }
        }
    }
    for (name, hash) in room.users() {
        if known.contains(&name) {
            continue;
        }
        match store.create(buckets::key_of(&name), hash.into()).await {
            Ok(_) => {}
            // Made meanwhile at another hub: the watch brings it.
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {}
            Err(error) => return Err(jetstream("writing chat users")(error.to_string())),
        }
    }
    Ok(watch)
}

/// Makes a user change in the bucket (for [`crate::shared_chat::ChatCluster`]).
pub async fn change_user(
    state: &ClusterState,
    name: &str,
    op: UserOp<'_>,
) -> Result<(), UserRefusal> {
    let Some(store) = lock(&state.chat_users).clone() else {
        return Err(UserRefusal::Unavailable(
            "the cluster is unreachable".to_owned(),
        ));
    };
    let key = buckets::key_of(name);
    let unavailable = |error: String| UserRefusal::Unavailable(error);
    let changed = match op {
        UserOp::Add(hash) => match store.create(&key, hash.to_owned().into()).await {
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                return Err(UserRefusal::Exists);
            }
            other => other.map(|_| ()).map_err(|error| error.to_string()),
        },
        UserOp::SetPassword(hash) => store
            .put(&key, hash.to_owned().into())
            .await
            .map(|_| ())
            .map_err(|error| error.to_string()),
        UserOp::Remove => store.delete(&key).await.map_err(|error| error.to_string()),
    };
    changed.map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::shared_chat::ChatEventKind;
    use crate::shared_list::Answer;

    #[derive(Default)]
    struct Room {
        delivered: Mutex<Vec<(String, ChatEvent)>>,
        presence: Mutex<Vec<(String, Vec<String>)>>,
    }

    impl SharedRoom for Room {
        fn presence_changed(&self) -> Arc<tokio::sync::Notify> {
            Arc::default()
        }
        fn local_users(&self) -> Vec<String> {
            Vec::new()
        }
        fn deliver(&self, hub: &str, event: ChatEvent) {
            self.delivered.lock().unwrap().push((hub.to_owned(), event));
        }
        fn remote_users(&self, hub: &str, users: Vec<String>) {
            self.presence.lock().unwrap().push((hub.to_owned(), users));
        }
        fn remote_hub_gone(&self, _: &str) {}
        fn remote_hubs_alive(&self, _: &[String]) {}
        fn users(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn apply_user<'a>(&'a self, _: &'a str, _: Option<&'a str>) -> Answer<'a, ()> {
            Box::pin(async {})
        }
    }

    #[test]
    fn a_hubs_presence_is_applied_once_so_later_joins_stand() {
        let room = Room::default();
        let mut cache = PresenceCache::default();
        let live = ["h2".to_owned()];
        // h2 says nobody is there; then a JOIN comes through the stream
        // (the room counts it); the periodic recheck must not undo it.
        cache.put(&room, "h2", Vec::new(), &live);
        cache.apply(&room, &live);
        cache.apply(&room, &live);
        assert_eq!(
            *room.presence.lock().unwrap(),
            [("h2".to_owned(), Vec::new())]
        );
        // A hub heard of only after its presence gets it then, once.
        cache.put(&room, "h3", vec!["carol".to_owned()], &live);
        assert_eq!(room.presence.lock().unwrap().len(), 1, "h3 is not live yet");
        let both = ["h2".to_owned(), "h3".to_owned()];
        cache.apply(&room, &both);
        cache.apply(&room, &both);
        let applied = room.presence.lock().unwrap().clone();
        assert_eq!(applied.len(), 2);
        assert_eq!(applied[1], ("h3".to_owned(), vec!["carol".to_owned()]));
        // Taken for gone a while (the room dropped its users), then back:
        // its users again, once.
        cache.apply(&room, &live);
        cache.apply(&room, &both);
        cache.apply(&room, &both);
        let applied = room.presence.lock().unwrap().clone();
        assert_eq!(applied.len(), 3);
        assert_eq!(applied[2], ("h3".to_owned(), vec!["carol".to_owned()]));
    }

    fn msg(n: usize) -> ChatEvent {
        ChatEvent {
            kind: ChatEventKind::Msg,
            user: "bob".to_owned(),
            text: format!("line {n}"),
        }
    }

    #[test]
    fn batches_carry_their_events_in_order_under_ids_that_never_repeat() {
        let room: Arc<dyn SharedRoom> = Arc::new(Room::default());
        let (_sender, outbox) = mpsc::channel(4);
        let mut sync = ChatSync::new(room, outbox);
        sync.taken = vec![msg(0), msg(1)];
        let (first, bytes) = seal(&mut sync, "hub.1").unwrap();
        assert!(sync.taken.is_empty(), "the events went into the batch");
        sync.taken = vec![msg(2)];
        let (second, _) = seal(&mut sync, "hub.1").unwrap();
        assert_ne!(first, second);
        assert!(
            first.starts_with("hub.1:") && first.ends_with(":1"),
            "{first}"
        );
        assert!(second.ends_with(":2"), "{second}");

        // Another hub reads it back whole, in order, as the hub its
        // subject names.
        let reader = Room::default();
        deliver(&reader, "hub.1", &bytes);
        let delivered = reader.delivered.lock().unwrap();
        assert_eq!(
            *delivered,
            [("hub.1".to_owned(), msg(0)), ("hub.1".to_owned(), msg(1))]
        );
    }

    #[test]
    fn a_batch_never_passes_its_size_and_a_line_too_large_for_any_is_dropped() {
        let room: Arc<dyn SharedRoom> = Arc::new(Room::default());
        let (_sender, outbox) = mpsc::channel(4);
        let mut sync = ChatSync::new(room, outbox);
        let long = |text: &str| ChatEvent {
            kind: ChatEventKind::Msg,
            user: "bob".to_owned(),
            text: text.to_owned(),
        };
        // Control characters take six bytes each in JSON.
        let escaped = "\u{1}".repeat(30_000);
        sync.taken = vec![
            long(&"x".repeat(MAX_PUBLISH_BYTES)),
            long(&escaped),
            long(&escaped),
            msg(1),
        ];
        let (_, first) = seal(&mut sync, "h").unwrap();
        assert!(first.len() <= MAX_PUBLISH_BYTES, "{}", first.len());
        let first: Batch = serde_json::from_slice(&first).unwrap();
        assert_eq!(first.events, [long(&escaped)], "the too-large line went");
        let (_, second) = seal(&mut sync, "h").unwrap();
        let second: Batch = serde_json::from_slice(&second).unwrap();
        assert_eq!(second.events, [long(&escaped), msg(1)]);
        assert!(sync.taken.is_empty());
        assert!(seal(&mut sync, "h").is_none());
    }

    #[test]
    fn a_batch_of_the_wrong_shape_or_size_is_dropped_and_a_long_one_cut() {
        let room = Room::default();
        deliver(&room, "h", b"not json");
        deliver(
            &room,
            "h",
            br#"{"hub":"h","events":[{"kind":"msg","user":"a","text":"x","extra":1}]}"#,
        );
        deliver(
            &room,
            "h",
            br#"{"hub":"h","events":[{"kind":"shout","user":"a"}]}"#,
        );
        deliver(&room, "h", br#"{"hub":"h"}"#);
        let huge = vec![b' '; MAX_BATCH_BYTES + 1];
        deliver(&room, "h", &huge);
        assert!(room.delivered.lock().unwrap().is_empty());
        let many = Batch {
            hub: "h".to_owned(),
            events: (0..MAX_BATCH * 2).map(msg).collect(),
        };
        deliver(&room, "h", &serde_json::to_vec(&many).unwrap());
        assert_eq!(room.delivered.lock().unwrap().len(), MAX_BATCH);
    }
}
