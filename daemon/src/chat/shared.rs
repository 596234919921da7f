//! The room and the users as the cluster shares them (docs/cluster.md,
//! "Chat across hubs"): the chat role's side of [`SharedRoom`].

use std::sync::Arc;

use tokio::sync::Notify;

use super::ChatShared;
use crate::shared_chat::{ChatEvent, SharedRoom};
use crate::shared_list::Answer;

/// The chat role, shared.
pub struct Shared(pub Arc<ChatShared>);

impl SharedRoom for Shared {
    fn presence_changed(&self) -> Arc<Notify> {
        self.0.room.presence_changed()
    }

    fn local_users(&self) -> Vec<String> {
        self.0.room.local_users()
    }

    fn deliver(&self, hub: &str, event: ChatEvent) {
        self.0.room.deliver(hub, &event);
    }

    fn remote_users(&self, hub: &str, users: Vec<String>) {
        self.0.room.remote_users(hub, users);
    }

    fn remote_hub_gone(&self, hub: &str) {
        self.0.room.remote_hub_gone(hub);
    }

    fn remote_hubs_alive(&self, live: &[String]) {
        self.0.room.remote_hubs_alive(live);
    }

    fn users(&self) -> Vec<(String, String)> {
        self.0.users.snapshot().entries()
    }

    fn apply_user<'a>(&'a self, name: &'a str, hash: Option<&'a str>) -> Answer<'a, ()> {
        Box::pin(async move {
            if super::users::check_name(name).is_err() {
                tracing::debug!(role = "chat", user = %name.escape_debug(), "chat user from the cluster ignored: not a valid name");
                return;
            }
            let before = self.0.users.snapshot().hash_of(name).map(str::to_owned);
            if before.as_deref() == hash {
                return;
            }
            let changed = self
                .0
                .users
                .change(|set| {
                    set.put(name, hash);
                    Ok(())
                })
                .await;
            if let Err(error) = changed {
                tracing::error!(role = "chat", user = name, %error, "chat user change from the cluster not applied here");
                return;
            }
            let (what, reason) = match (&before, hash) {
                (None, _) => ("added", None),
                (Some(_), Some(_)) => (
                    "password changed",
                    Some("password changed; log in again with the new one"),
                ),
                (Some(_), None) => ("removed", Some("user removed")),
            };
            let ended = reason.map_or(0, |reason| self.0.room.revoke(name, reason));
            tracing::info!(
                role = "chat",
                user = name,
                sessions_ended = ended,
                "chat user {what} at another hub of the cluster"
            );
        })
    }
}
