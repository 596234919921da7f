//! The one place that maps each control request to the role that answers it.

use std::path::PathBuf;
use std::time::Instant;

use meshd_ipc::{
    BroadcastReply, DeviceEntry, ErrorCode, ErrorReply, InboxMessage, LinkState, PROTOCOL_VERSION,
    ReloadReply, Reply, Request, Response, RoleStatus, SendResult, StatusReply, UserChange,
    UserEntry,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::chat::{ChatHandle, UsersError};
use crate::cluster::ClusterHandle;
use crate::config::ConfigError;
use crate::device_id::DeviceId;
use crate::mesh::{MeshHandle, RequestError, SendError};
use crate::signaling::SignalingHandle;
use crate::web::WebHandle;

/// Facts about this process that `status` reports.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// This node's device id.
    pub id: DeviceId,
    /// When meshd started.
    pub started: Instant,
    /// The config file in use, if any.
    pub config_file: Option<PathBuf>,
}

/// Why a reload left the running configuration in place.
#[derive(Debug, thiserror::Error)]
#[error("{0}; meshd keeps running on its previous configuration")]
pub struct ReloadError(#[from] pub ConfigError);

/// A reload asked for over the control socket; the supervisor runs it and
/// answers on `reply`.
pub struct ReloadRequest {
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ReloadReply, ReloadError>>,
}

/// The running roles' handles; `None` for a role that is disabled.
#[derive(Clone, Default)]
pub struct Roles {
    /// The discovery server.
    pub signaling: Option<SignalingHandle>,
    /// The chat server.
    pub chat: Option<ChatHandle>,
    /// This node as a mesh device.
    pub mesh: Option<MeshHandle>,
    /// The web console.
    pub web: Option<WebHandle>,
    /// The hubs' cluster.
    pub cluster: Option<ClusterHandle>,
}

/// How a request is answered: a fixed list of frames, or frames and then a
/// stream that lasts until the client goes away.
pub enum Answer {
    /// Every frame of the reply.
    Replies(Vec<Reply>),
    /// `messages --follow`: the inbox so far, then each new message.
    Follow {
        /// Frames to send first.
        backlog: Vec<Reply>,
        /// New messages.
        feed: broadcast::Receiver<InboxMessage>,
    },
}

/// Routes requests to roles.
pub struct Dispatcher {
    node: NodeFacts,
    roles: Roles,
    reload: mpsc::Sender<ReloadRequest>,
}

impl Dispatcher {
    /// A dispatcher over the running roles.
    pub fn new(node: NodeFacts, roles: Roles, reload: mpsc::Sender<ReloadRequest>) -> Self {
        Dispatcher {
            node,
            roles,
            reload,
        }
    }

    /// Runs one request whose access was already checked.
    pub async fn answer(&self, request: Request) -> Answer {
        match request {
            Request::Messages { follow: true } => match &self.roles.mesh {
                Some(mesh) => {
                    let (messages, feed) = mesh.follow();
                    let backlog = messages
                        .into_iter()
                        .map(|message| Reply::Ok(Response::Message(message)))
                        .collect();
                    Answer::Follow { backlog, feed }
                }
                None => Answer::Replies(vec![no_mesh()]),
            },
            request => Answer::Replies(self.handle(request).await),
        }
    }

    /// Runs one request whose access was already checked, and returns its
    /// reply frames in order (most requests have one).
    pub async fn handle(&self, request: Request) -> Vec<Reply> {
        match request {
            Request::Status => vec![Reply::Ok(Response::Status(Box::new(self.status())))],
            Request::Devices => match (&self.roles.mesh, &self.roles.signaling) {
                // A mesh node shows links; a hub alone shows its registry.
                (Some(mesh), None) => paged_devices(mesh.devices()),
                (Some(mesh), Some(signaling)) => {
                    paged_devices(with_registry(mesh.devices(), signaling.devices()))
                }
                (None, Some(signaling)) => paged_devices(signaling.devices()),
                (None, None) => vec![unavailable(
                    "no device list here: this node runs neither the signaling nor the mesh role",
                )],
            },
            Request::DevicesRemove { device } => vec![self.remove(&device)],
            Request::Reload => vec![self.reload().await],
            Request::UsersList => vec![self.with_chat(|chat| {
                let users = chat
                    .user_names()
                    .into_iter()
                    .map(|name| UserEntry { name })
                    .collect();
                Reply::Ok(Response::Users(users))
            })],
            Request::UsersAdd { name, password } => {
                vec![
                    self.change_user(name, "added", |chat, name| async move {
                        chat.add_user(&name, password).await
                    })
                    .await,
                ]
            }
            Request::UsersPasswd { name, password } => {
                vec![
                    self.change_user(name, "changed", |chat, name| async move {
                        chat.set_password(&name, password).await
                    })
                    .await,
                ]
            }
            Request::UsersRemove { name } => {
                vec![
                    self.change_user(name, "removed", |chat, name| async move {
                        chat.remove_user(&name).await
                    })
                    .await,
                ]
            }
            Request::Broadcast { text } => vec![self.broadcast(&text)],
            Request::Send { device, text } => vec![self.send(&device, text).await],
            Request::SendAll { text } => vec![self.send_all(text).await],
            Request::Messages { .. } => match &self.roles.mesh {
                Some(mesh) => paged_messages(mesh.messages()),
                None => vec![no_mesh()],
            },
            Request::Ping { device } => vec![self.ping(&device).await],
            Request::Netcheck => vec![match &self.roles.mesh {
                Some(mesh) => Reply::Ok(Response::Netcheck(mesh.netcheck().await)),
                None => no_mesh(),
            }],
            Request::HubsForget { url } => vec![match &self.roles.mesh {
                Some(mesh) => match mesh.forget_hub(&url).await {
                    Ok(forgotten) => Reply::Ok(Response::HubForgotten(forgotten)),
                    Err(refused) => error(refused.code(), refused.to_string()),
                },
                None => no_mesh(),
            }],
        }
    }

    async fn send(&self, device: &str, text: String) -> Reply {
        let Some(mesh) = &self.roles.mesh else {
            return no_mesh();
        };
        match mesh.send(device, text).await {
            Ok(rtt) => Reply::Ok(Response::Sent(SendResult {
                device: device.to_owned(),
                delivered: true,
                rtt_ms: Some(crate::mesh::millis(rtt)),
                error: None,
            })),
            Err(error) => mesh_error(&error),
        }
    }

    async fn send_all(&self, text: String) -> Reply {
        let Some(mesh) = &self.roles.mesh else {
            return no_mesh();
        };
        match mesh.send_all(text).await {
            Ok(results) => Reply::Ok(Response::SentAll(results)),
            Err(error) => mesh_error(&error),
        }
    }

    async fn ping(&self, device: &str) -> Reply {
        let Some(mesh) = &self.roles.mesh else {
            return no_mesh();
        };
        match mesh.ping(device).await {
            Ok(pong) => Reply::Ok(Response::Pong(pong)),
            Err(error) => mesh_error(&error),
        }
    }

    fn with_chat(&self, answer: impl FnOnce(&ChatHandle) -> Reply) -> Reply {
        match &self.roles.chat {
            Some(chat) => answer(chat),
            None => unavailable("this node runs no chat role ([chat] enabled = false)"),
        }
    }

    async fn change_user<F, Fut>(&self, name: String, action: &str, change: F) -> Reply
    where
        F: FnOnce(ChatHandle, String) -> Fut,
        Fut: std::future::Future<Output = Result<(), UsersError>>,
    {
        let Some(chat) = self.roles.chat.clone() else {
            return unavailable("this node runs no chat role ([chat] enabled = false)");
        };
        match change(chat, name.clone()).await {
            Ok(()) => Reply::Ok(Response::UserChanged(UserChange {
                name,
                action: action.to_owned(),
            })),
            Err(error) => {
                let code = match &error {
                    UsersError::NotFound(_) => ErrorCode::NotFound,
                    UsersError::Exists(_) => ErrorCode::Conflict,
                    UsersError::BadName(_) | UsersError::BadPassword(_) => ErrorCode::BadRequest,
                    UsersError::Cluster(_) => ErrorCode::Unavailable,
                    UsersError::Io { .. } | UsersError::Invalid { .. } | UsersError::Hash(_) => {
                        ErrorCode::Internal
                    }
                };
                Reply::Error(ErrorReply {
                    code,
                    message: error.to_string(),
                })
            }
        }
    }

    fn broadcast(&self, text: &str) -> Reply {
        if text.contains(['\n', '\r']) {
            return error(
                ErrorCode::BadRequest,
                "a broadcast is one line: it must not contain line breaks".to_owned(),
            );
        }
        self.with_chat(|chat| {
            let clients = chat.broadcast(text);
            Reply::Ok(Response::Broadcasted(BroadcastReply { clients }))
        })
    }

    fn status(&self) -> StatusReply {
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
            node_id: self.node.id.to_string(),
            uptime_secs: self.node.started.elapsed().as_secs(),
            pid: std::process::id(),
            config: self
                .node
                .config_file
                .as_ref()
                .map(|path| path.display().to_string()),
            roles: RoleStatus {
                signaling: self.roles.signaling.as_ref().map(SignalingHandle::status),
                chat: self.roles.chat.as_ref().map(ChatHandle::status),
                mesh: self.roles.mesh.as_ref().map(MeshHandle::status),
                web: self.roles.web.as_ref().map(WebHandle::status),
                cluster: self.roles.cluster.as_ref().map(ClusterHandle::status),
            },
        }
    }

    fn remove(&self, device: &str) -> Reply {
        let Some(signaling) = &self.roles.signaling else {
            return unavailable("devices remove works on a hub: this node runs no signaling role");
        };
        let id = match DeviceId::parse(device) {
            Ok(id) => id,
            Err(invalid) => return error(ErrorCode::BadRequest, invalid.to_string()),
        };
        match signaling.remove(&id) {
            Some(removed) => Reply::Ok(Response::Removed(removed)),
            None => error(
                ErrorCode::NotFound,
                format!(
                    "no device or key binding for \"{id}\"; meshctl devices lists what is known"
                ),
            ),
        }
    }

    async fn reload(&self) -> Reply {
        let (reply, outcome) = oneshot::channel();
        if self.reload.send(ReloadRequest { reply }).await.is_err() {
            return error(ErrorCode::Unavailable, "meshd is shutting down".to_owned());
        }
        match outcome.await {
            Ok(Ok(reloaded)) => Reply::Ok(Response::Reloaded(reloaded)),
            Ok(Err(invalid)) => error(ErrorCode::InvalidConfig, invalid.to_string()),
            Err(_dropped) => error(ErrorCode::Unavailable, "meshd is shutting down".to_owned()),
        }
    }
}

/// The mesh's view, plus what this node's own hub lists that the mesh has
/// not learnt yet (the hub pushes each registration to this node's channel
/// at once, so only for a moment): shown as `connecting` if the device has
/// a key, `down` if it has none and so can have no link.
fn with_registry(mut devices: Vec<DeviceEntry>, registry: Vec<DeviceEntry>) -> Vec<DeviceEntry> {
    let known: std::collections::HashSet<String> =
        devices.iter().map(|device| device.id.clone()).collect();
    for mut device in registry {
        if !known.contains(&device.id) {
            device.link = Some(match device.pubkey {
                Some(_) => LinkState::Connecting,
                None => LinkState::Down,
            });
            devices.push(device);
        }
    }
    devices.sort_by(|a, b| a.id.cmp(&b.id));
    devices
}

/// Devices per reply frame: even with every optional field at its maximum a
/// page stays far below the 1 MiB frame limit, however large the hub.
const DEVICES_PER_FRAME: usize = 256;

/// Splits a device list into frames; the client concatenates them.
fn paged_devices(devices: Vec<DeviceEntry>) -> Vec<Reply> {
    if devices.is_empty() {
        return vec![Reply::Ok(Response::Devices(devices))];
    }
    devices
        .chunks(DEVICES_PER_FRAME)
        .map(|page| Reply::Ok(Response::Devices(page.to_vec())))
        .collect()
}

/// Bytes of encoded messages one `messages` frame carries at most, well
/// inside the 1 MiB frame limit.
const MESSAGE_PAGE_BYTES: usize = 512 * 1024;

/// The inbox in frames that each fit the frame limit however the texts
/// escape in JSON: a message is counted at six bytes per byte of text (the
/// longest escape, `\u00XX`), so 64 KiB texts go two to a page.
fn paged_messages(messages: Vec<InboxMessage>) -> Vec<Reply> {
    let mut pages = Vec::new();
    let mut page = Vec::new();
    let mut page_bytes = 0;
    for message in messages {
        let size = 6 * (message.text.len() + message.from.len() + message.received_at.len()) + 64;
        if !page.is_empty() && page_bytes + size > MESSAGE_PAGE_BYTES {
            pages.push(Reply::Ok(Response::Messages(std::mem::take(&mut page))));
            page_bytes = 0;
        }
        page_bytes += size;
        page.push(message);
    }
    pages.push(Reply::Ok(Response::Messages(page)));
    pages
}

fn error(code: ErrorCode, message: String) -> Reply {
    Reply::Error(ErrorReply { code, message })
}

fn no_mesh() -> Reply {
    unavailable("this node is not a mesh device ([mesh] enabled = false)")
}

fn mesh_error(error: &RequestError) -> Reply {
    let code = match error {
        RequestError::InvalidId(_) | RequestError::OwnId(_) | RequestError::TooLong(_) => {
            ErrorCode::BadRequest
        }
        RequestError::Unknown(_) => ErrorCode::NotFound,
        RequestError::NoKey { .. } => ErrorCode::Unreachable,
        RequestError::Send(SendError::NoLink { .. } | SendError::Stopped { .. }) => {
            ErrorCode::Unreachable
        }
        RequestError::Send(SendError::Timeout { .. }) => ErrorCode::Timeout,
        RequestError::Send(SendError::Busy { .. }) => ErrorCode::Unavailable,
    };
    error_reply(code, error.to_string())
}

fn error_reply(code: ErrorCode, message: String) -> Reply {
    Reply::Error(ErrorReply { code, message })
}

fn unavailable(message: &str) -> Reply {
    error(ErrorCode::Unavailable, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_of_messages_fits_a_frame_whatever_the_text() {
        // Control characters escape to six bytes each in JSON: the worst case.
        let worst = "\u{1}".repeat(64 * 1024);
        let messages: Vec<InboxMessage> = (0..40)
            .map(|i| InboxMessage {
                from: format!("device-{i}"),
                text: if i % 3 == 0 {
                    "short".to_owned()
                } else {
                    worst.clone()
                },
                received_at: "2026-12-02T16:00:00.000Z".to_owned(),
            })
            .collect();
        let pages = paged_messages(messages.clone());
        assert!(pages.len() > 1);
        let mut back = Vec::new();
        for (index, reply) in pages.into_iter().enumerate() {
            let frame = meshd_ipc::ReplyFrame {
                v: PROTOCOL_VERSION,
                id: 1,
                more: true,
                reply,
            };
            let bytes = meshd_ipc::encode(&frame)
                .unwrap_or_else(|e| panic!("page {index} does not fit a frame: {e}"));
            assert!(bytes.len() <= meshd_ipc::MAX_FRAME_BYTES);
            if let Reply::Ok(Response::Messages(page)) = frame.reply {
                back.extend(page);
            }
        }
        assert_eq!(back, messages, "nothing lost or reordered");
        assert_eq!(
            paged_messages(Vec::new()).len(),
            1,
            "an empty inbox is one frame"
        );
    }
}
