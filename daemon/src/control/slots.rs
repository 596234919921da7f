//! Who may hold how many control connections.
//!
//! A `messages --follow` stream or an idle connection holds a slot for as
//! long as it lasts, and every member of the control group can open them.
//! So slots are not first come, first served: [`RESERVED_FOR_WRITERS`] of
//! them are kept for callers with write access (root and meshd's own user),
//! and one uid without it may hold at most [`PER_READER_UID`]. A read-only
//! user can then never lock root out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Control connections at once, in all.
pub const MAX_CONNECTIONS: usize = 64;
/// Of those, the ones only root and meshd's user may take.
pub const RESERVED_FOR_WRITERS: usize = 16;
/// Connections one uid without write access may hold at once.
pub const PER_READER_UID: usize = 8;

/// The slots in use, by uid.
#[derive(Debug, Default)]
pub struct Slots {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This uid holds its share already.
    #[error(
        "uid {uid} holds {PER_READER_UID} control connections already (messages --follow streams count); close one and try again"
    )]
    PerUid {
        /// The caller.
        uid: u32,
    },
    /// Every slot this caller may use is taken.
    #[error(
        "meshd has {in_use} control connections open, the most it serves{}; try again in a moment",
        if *.writer { "" } else { " to callers without write access" }
    )]
    Full {
        /// Connections open now.
        in_use: usize,
        /// The caller has write access.
        writer: bool,
    },
}

/// A held slot; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Slots {
    /// Takes a slot for `uid`, which has write access or not.
    pub fn take(self: &Arc<Self>, uid: u32, writer: bool) -> Result<Slot, Refusal> {
        let mut held = lock(&self.held);
        let limit = if writer {
            MAX_CONNECTIONS
        } else {
            MAX_CONNECTIONS - RESERVED_FOR_WRITERS
        };
        if held.total >= limit {
            return Err(Refusal::Full {
                in_use: held.total,
                writer,
            });
        }
        let mine = held.by_uid.get(&uid).copied().unwrap_or(0);
        if !writer && mine >= PER_READER_UID {
            return Err(Refusal::PerUid { uid });
        }
        held.total += 1;
        held.by_uid.insert(uid, mine + 1);
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }

    /// Connections open now (for tests).
    #[cfg(test)]
    fn in_use(&self) -> usize {
        lock(&self.held).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(&self.slots.held);
        held.total = held.total.saturating_sub(1);
        if let Some(count) = held.by_uid.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                held.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_its_share_and_never_the_writers_reserve() {
        let slots = Arc::new(Slots::default());
        let reader: Vec<Slot> = (0..PER_READER_UID)
            .map(|_| slots.take(1000, false).unwrap())
            .collect();
        assert_eq!(
            slots.take(1000, false).unwrap_err(),
            Refusal::PerUid { uid: 1000 }
        );
        // Many read-only uids fill what readers may use...
        let mut others = Vec::new();
        for uid in 2000.. {
            match slots.take(uid, false) {
                Ok(slot) => others.push(slot),
                Err(refusal) => {
                    assert!(matches!(refusal, Refusal::Full { writer: false, .. }));
                    break;
                }
            }
        }
        assert_eq!(slots.in_use(), MAX_CONNECTIONS - RESERVED_FOR_WRITERS);
        // ...and root still gets in, up to the reserve.
        let root: Vec<Slot> = (0..RESERVED_FOR_WRITERS)
            .map(|_| slots.take(0, true).unwrap())
            .collect();
        assert!(matches!(
            slots.take(0, true),
            Err(Refusal::Full { writer: true, .. })
        ));
        drop((reader, others, root));
        assert_eq!(slots.in_use(), 0);
        assert!(lock(&slots.held).by_uid.is_empty());
    }
}
