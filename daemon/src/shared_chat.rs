//! What the chat room and the cluster ask of each other (docs/cluster.md,
//! "Chat across hubs"), so that neither names the other: the chat role
//! implements [`SharedRoom`] and hands the cluster its outbox, and the
//! cluster implements [`ChatCluster`] for the users.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::shared_list::Answer;

/// Events this hub's clients made that wait for the cluster; beyond it,
/// new ones reach this hub's clients only (and are counted).
pub const OUTBOX: usize = 10_000;

/// What a chat event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatEventKind {
    /// `MSG user text`.
    Msg,
    /// `JOIN user`.
    Join,
    /// `LEAVE user`.
    Leave,
    /// `SYS text` (an operator's broadcast).
    Sys,
}

/// One thing a hub's clients said or did, as the cluster carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatEvent {
    /// What it is.
    pub kind: ChatEventKind,
    /// Who (empty for `sys`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// What they said (empty for `join` and `leave`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

/// The chat room as the cluster shares it.
pub trait SharedRoom: Send + Sync {
    /// Woken when the users logged in at this hub change.
    fn presence_changed(&self) -> Arc<Notify>;
    /// The users logged in at this hub now, sorted, each once.
    fn local_users(&self) -> Vec<String>;
    /// Hub `hub`'s clients said or did `event`: this hub's clients see it.
    /// One that a client could not have made (a bad name, a line break) is
    /// dropped.
    fn deliver(&self, hub: &str, event: ChatEvent);
    /// The users logged in at hub `hub` now (empty: none).
    fn remote_users(&self, hub: &str, users: Vec<String>);
    /// Hub `hub` left the cluster, or is no longer heard of: its users
    /// not logged in anywhere else are said to leave.
    fn remote_hub_gone(&self, hub: &str);
    /// The hubs in the cluster now: any other hub the room counts users
    /// of is gone ([`SharedRoom::remote_hub_gone`]).
    fn remote_hubs_alive(&self, live: &[String]);
    /// Every chat user this hub has, with the password's hash.
    fn users(&self) -> Vec<(String, String)>;
    /// The cluster holds `name` with `hash` (`None`: removed): make this
    /// hub agree, ending the user's sessions if its password changed.
    fn apply_user<'a>(&'a self, name: &'a str, hash: Option<&'a str>) -> Answer<'a, ()>;
}

/// A change to a chat user, made in the cluster first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOp<'a> {
    /// A new user with this hash.
    Add(&'a str),
    /// A new hash for a user.
    SetPassword(&'a str),
    /// The user goes.
    Remove,
}

/// Why the cluster did not take a user change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRefusal {
    /// `Add` of a user the cluster has.
    Exists,
    /// The cluster cannot be asked now.
    Unavailable(String),
}

/// The cluster as the chat role asks it: the users every hub shares.
pub trait ChatCluster: Send + Sync {
    /// Makes `op` on user `name` in the cluster, where every hub picks it
    /// up.
    fn change_user<'a>(
        &'a self,
        name: &'a str,
        op: UserOp<'a>,
    ) -> Answer<'a, Result<(), UserRefusal>>;
}
