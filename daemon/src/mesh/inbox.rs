//! Messages this node received over the mesh: the last [`INBOX_CAPACITY`]
//! in memory for `meshctl messages`, and a live feed for `--follow`. The
//! inbox is bounded by bytes too ([`INBOX_MAX_BYTES`]): a thousand texts at
//! the 64 KiB limit would otherwise hold 64 MiB.
//!
//! A message that arrives twice (resent on a new link because the
//! acknowledgement was lost with the old one) is stored once: the inbox
//! remembers the last ids per sender instance.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use meshd_ipc::InboxMessage;
use tokio::sync::broadcast;

use crate::device_id::DeviceId;
use crate::sync::lock;

/// Messages kept.
pub const INBOX_CAPACITY: usize = 1000;

/// Bytes of text kept at most; the oldest messages go first.
pub const INBOX_MAX_BYTES: usize = 8 << 20;

/// Followers that fall this far behind lose the oldest messages (they are
/// still in the inbox).
const FOLLOW_BACKLOG: usize = 1024;

/// Message ids remembered per sender for duplicate detection.
const RECENT_IDS: usize = 1024;

/// Senders remembered for duplicate detection.
const MAX_SENDERS: usize = 65_536;

/// A message id as seen from this node: who sent it, from which run of its
/// meshd, and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageKey {
    /// The sender's instance nonce (from its link hello).
    pub instance: u64,
    /// The sender's message id.
    pub id: u64,
}

#[derive(Default)]
struct Recent {
    order: VecDeque<MessageKey>,
    set: HashSet<MessageKey>,
}

impl Recent {
    /// Records `key`; false if it was already there.
    fn insert(&mut self, key: MessageKey) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

#[derive(Default)]
struct State {
    messages: VecDeque<InboxMessage>,
    /// Bytes of text in `messages`.
    bytes: usize,
    recent: HashMap<DeviceId, Recent>,
}

/// The inbox.
pub struct Inbox {
    state: Mutex<State>,
    feed: broadcast::Sender<InboxMessage>,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Inbox {
            state: Mutex::new(State::default()),
            feed: broadcast::channel(FOLLOW_BACKLOG).0,
        }
    }

    /// Stores a message unless it is a duplicate; true if stored.
    pub fn store(&self, from: &DeviceId, key: MessageKey, text: &str) -> bool {
        let message = InboxMessage {
            from: from.to_string(),
            text: text.to_owned(),
            received_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        {
            let mut state = lock(&self.state);
            if state.recent.len() >= MAX_SENDERS && !state.recent.contains_key(from) {
                state.recent.clear();
            }
            if !state.recent.entry(from.clone()).or_default().insert(key) {
                return false;
            }
            state.bytes += message.text.len();
            state.messages.push_back(message.clone());
            while state.messages.len() > INBOX_CAPACITY || state.bytes > INBOX_MAX_BYTES {
                let Some(oldest) = state.messages.pop_front() else {
                    break;
                };
                state.bytes -= oldest.text.len();
            }
        }
        // No followers is fine.
        let _ = self.feed.send(message);
        true
    }

    /// Everything in the inbox, oldest first.
    pub fn list(&self) -> Vec<InboxMessage> {
        let state = lock(&self.state);
        state.messages.iter().cloned().collect()
    }

    /// The inbox now, and a feed of what arrives after it.
    pub fn follow(&self) -> (Vec<InboxMessage>, broadcast::Receiver<InboxMessage>) {
        let state = lock(&self.state);
        // Subscribing under the lock: nothing falls between list and feed.
        let feed = self.feed.subscribe();
        (state.messages.iter().cloned().collect(), feed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_thousand_and_drops_duplicates() {
        let inbox = Inbox::new();
        let a = DeviceId::parse("a").unwrap();
        for id in 0..1500 {
            assert!(inbox.store(&a, MessageKey { instance: 1, id }, &format!("m{id}")));
        }
        assert!(!inbox.store(
            &a,
            MessageKey {
                instance: 1,
                id: 1499
            },
            "again"
        ));
        assert!(inbox.store(
            &a,
            MessageKey {
                instance: 2,
                id: 1499
            },
            "new run"
        ));
        let list = inbox.list();
        assert_eq!(list.len(), INBOX_CAPACITY);
        assert_eq!(list[0].text, "m501");
        assert_eq!(list[INBOX_CAPACITY - 1].text, "new run");
    }

    #[test]
    fn large_texts_are_bounded_by_bytes() {
        let inbox = Inbox::new();
        let a = DeviceId::parse("a").unwrap();
        let big = "x".repeat(64 * 1024);
        for id in 0..1000 {
            inbox.store(&a, MessageKey { instance: 1, id }, &big);
        }
        let list = inbox.list();
        assert_eq!(list.len(), INBOX_MAX_BYTES / big.len());
        assert!(list.iter().map(|m| m.text.len()).sum::<usize>() <= INBOX_MAX_BYTES);
        // Small messages push the big ones out, byte for byte.
        for id in 1000..1010 {
            inbox.store(&a, MessageKey { instance: 1, id }, "small");
        }
        assert_eq!(inbox.list().last().unwrap().text, "small");
    }

    #[test]
    fn followers_see_what_arrives_after_the_snapshot() {
        let inbox = Inbox::new();
        let a = DeviceId::parse("a").unwrap();
        inbox.store(&a, MessageKey { instance: 1, id: 1 }, "before");
        let (snapshot, mut feed) = inbox.follow();
        inbox.store(&a, MessageKey { instance: 1, id: 2 }, "after");
        assert_eq!(snapshot.len(), 1);
        assert_eq!(feed.try_recv().unwrap().text, "after");
    }
}
