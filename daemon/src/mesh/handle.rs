//! The mesh role as the control socket sees it: status, devices, send,
//! ping, netcheck and the inbox. Requests reach a device's peer task
//! through its command queue; the task answers by its own deadlines.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use meshd_ipc::{
    DeviceEntry, HubForgottenReply, HubStatus, InboxMessage, LinkState, MeshStatus, NetcheckReply,
    PingReply, SendResult,
};
use tokio::sync::{broadcast, oneshot};

use super::error::StopReason;
use super::hubs::Trust;
use super::peer::{self, Command, PeerHandle, SendError};
use super::roster::KeyStatus;
use super::{MAX_MESSAGE_BYTES, Mesh, netcheck};
use crate::device_id::{DeviceId, DeviceIdError};
use crate::public_key::PublicKey;
use crate::sync::lock;

/// Why a `send` or `ping` request failed before reaching a peer task.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not a device id.
    #[error("{0}")]
    InvalidId(#[from] DeviceIdError),
    /// This device's own id.
    #[error("{0} is this device; name another one")]
    OwnId(DeviceId),
    /// A message over the limit.
    #[error("message of {0} bytes; at most {MAX_MESSAGE_BYTES} are allowed")]
    TooLong(usize),
    /// No signaling server lists the device.
    #[error(
        "unknown device {0}: no signaling server lists it; `meshctl devices` shows the known ones"
    )]
    Unknown(DeviceId),
    /// The device is listed but cannot have a link.
    #[error("no link to {device}: {reason}")]
    NoKey {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: &'static str,
    },
    /// The peer task answered with a failure.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Why `hubs forget` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// No such hub in the config.
    #[error("{url} is not in [mesh] signaling; `meshctl status` lists the hubs by URL")]
    NotConfigured {
        /// As given.
        url: String,
    },
    /// The config pins this hub's key: the file has nothing to forget.
    #[error(
        "the key of {url} is pinned in the config (after '#' in [mesh] signaling); change it there and restart meshd"
    )]
    PinnedInConfig {
        /// The hub.
        url: String,
    },
    /// The file could not be written.
    #[error("{0}")]
    File(String),
}

impl ForgetError {
    /// The control protocol's code for it.
    pub fn code(&self) -> meshd_ipc::ErrorCode {
        match self {
            ForgetError::NotConfigured { .. } => meshd_ipc::ErrorCode::NotFound,
            ForgetError::PinnedInConfig { .. } => meshd_ipc::ErrorCode::BadRequest,
            ForgetError::File(_) => meshd_ipc::ErrorCode::Internal,
        }
    }
}

/// This device's view for the web console (docs/web.md): the devices its
/// hubs list, with the hubs that list each, and its own links.
#[derive(Debug, Clone)]
pub struct MeshConsole {
    /// This device.
    pub local: DeviceId,
    /// Every listed device (this one included, its link `self`), sorted by
    /// id, with the URLs of the hubs that list it.
    pub devices: Vec<(DeviceEntry, Vec<String>)>,
    /// This device's links, sorted by peer.
    pub links: Vec<OwnLink>,
}

/// One of this device's links.
#[derive(Debug, Clone)]
pub struct OwnLink {
    /// The device at the other end.
    pub peer: DeviceId,
    /// How it goes.
    pub state: LinkState,
    /// Round-trip time, when measured.
    pub rtt: Option<Duration>,
    /// When it came up on this path.
    pub since: Option<SystemTime>,
}

/// The mesh role as the control socket sees it.
#[derive(Clone)]
pub struct MeshHandle {
    mesh: Arc<Mesh>,
}

impl MeshHandle {
    pub(super) fn new(mesh: Arc<Mesh>) -> MeshHandle {
        MeshHandle { mesh }
    }

    /// For `meshctl status`.
    pub fn status(&self) -> MeshStatus {
        let mesh = &self.mesh;
        let hubs = &mesh.local.hubs;
        let signaling: Vec<HubStatus> = hubs.iter().map(|hub| hubs.status(hub.id())).collect();
        let links = lock(&mesh.peers)
            .values()
            .filter(|handle| matches!(handle.view().state, LinkState::Direct | LinkState::Relayed))
            .count();
        MeshStatus {
            listen: mesh.listen.to_string(),
            pubkey: mesh.local.public.to_base64(),
            observed: signaling.iter().find_map(|hub| hub.observed.clone()),
            links,
            endpoints: mesh.endpoints().iter().map(ToString::to_string).collect(),
            signaling,
        }
    }

    /// For the web console.
    pub fn console(&self) -> MeshConsole {
        let mesh = &self.mesh;
        let devices = self.devices();
        let roster = lock(&mesh.roster);
        let devices = devices
            .into_iter()
            .map(|entry| {
                let hubs = DeviceId::parse(&entry.id)
                    .map(|id| roster.listed_by(&id))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|index| {
                        mesh.local
                            .hubs
                            .iter()
                            .nth(index)
                            .map(|hub| hub.url().to_string())
                    })
                    .collect::<Option<Vec<String>>>()
                    .unwrap_or_default();
                (entry, hubs)
            })
            .collect();
        drop(roster);
        let (now, wall) = (tokio::time::Instant::now(), SystemTime::now());
        let mut links: Vec<OwnLink> = lock(&mesh.peers)
            .iter()
            .map(|(id, handle)| {
                let view = handle.view();
                OwnLink {
                    peer: id.clone(),
                    state: view.state,
                    rtt: view.rtt,
                    since: view
                        .since
                        .and_then(|since| wall.checked_sub(now.saturating_duration_since(since))),
                }
            })
            .collect();
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        MeshConsole {
            local: mesh.local.id.clone(),
            devices,
            links,
        }
    }

    /// Links up, by path: (direct, relayed).
    pub fn links_by_path(&self) -> (usize, usize) {
        lock(&self.mesh.peers)
            .values()
            .fold((0, 0), |(direct, relayed), handle| {
                match handle.view().state {
                    LinkState::Direct => (direct + 1, relayed),
                    LinkState::Relayed => (direct, relayed + 1),
                    _ => (direct, relayed),
                }
            })
    }

    /// For `meshctl devices`: every device the hubs list, with the link.
    pub fn devices(&self) -> Vec<DeviceEntry> {
        let mesh = &self.mesh;
        let merged = lock(&mesh.roster).merged(Instant::now());
        let peers = lock(&mesh.peers);
        merged
            .into_iter()
            .map(|(id, device)| {
                let listing = device.listing;
                let (link, endpoint, rtt) = if id == mesh.local.id {
                    (LinkState::Local, None, None)
                } else {
                    match peers.get(&id) {
                        Some(handle) => {
                            let view = handle.view();
                            (view.state, view.endpoint, view.rtt)
                        }
                        None => (LinkState::Down, None, None),
                    }
                };
                DeviceEntry {
                    id: id.to_string(),
                    addr: listing.addr.to_string(),
                    observed: listing.observed,
                    last_seen: listing.last_seen,
                    pubkey: listing.pubkey.map(PublicKey::to_base64),
                    link: Some(link),
                    endpoint: endpoint.map(|endpoint| endpoint.to_string()),
                    rtt_ms: rtt.map(millis),
                    endpoints: listing.endpoints.iter().map(ToString::to_string).collect(),
                }
            })
            .collect()
    }

    /// Delivers `text` to `device`; the time to its acknowledgement.
    pub async fn send(&self, device: &str, text: String) -> Result<Duration, RequestError> {
        check_text(&text)?;
        let id = self.peer_id(device)?;
        let (reply, answer) = oneshot::channel();
        self.command(
            &id,
            Command::Send {
                text: Bytes::from(text),
                reply,
            },
        )
        .await?;
        Ok(self.await_answer(&id, answer).await?)
    }

    /// Delivers `text` to every other device at once.
    pub async fn send_all(&self, text: String) -> Result<Vec<SendResult>, RequestError> {
        check_text(&text)?;
        let mesh = &self.mesh;
        let others: Vec<DeviceId> = lock(&mesh.roster)
            .merged(Instant::now())
            .into_keys()
            .filter(|id| *id != mesh.local.id)
            .collect();
        let text = Bytes::from(text);
        let mut sends = tokio::task::JoinSet::new();
        for id in others {
            let handle = self.clone();
            let text = text.clone();
            sends.spawn(async move {
                let (reply, answer) = oneshot::channel();
                let outcome = match handle.peer_id(&id.to_string()) {
                    Err(error) => Err(error),
                    Ok(_) => handle.command(&id, Command::Send { text, reply }).await,
                };
                let outcome = match outcome {
                    Ok(()) => handle
                        .await_answer(&id, answer)
                        .await
                        .map_err(RequestError::from),
                    Err(error) => Err(error),
                };
                SendResult {
                    device: id.to_string(),
                    delivered: outcome.is_ok(),
                    rtt_ms: outcome.as_ref().ok().map(|rtt| millis(*rtt)),
                    error: outcome.err().map(|error| error.to_string()),
                }
            });
        }
        let mut results = Vec::new();
        while let Some(result) = sends.join_next().await {
            if let Ok(result) = result {
                results.push(result);
            }
        }
        results.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(results)
    }

    /// Measures the round-trip time of the link to `device`.
    pub async fn ping(&self, device: &str) -> Result<PingReply, RequestError> {
        let id = self.peer_id(device)?;
        let (reply, answer) = oneshot::channel();
        self.command(&id, Command::Ping { reply }).await?;
        let outcome = self.await_answer(&id, answer).await?;
        Ok(PingReply {
            device: id.to_string(),
            rtt_ms: millis(outcome.rtt),
            path: outcome.path,
            endpoint: Some(outcome.endpoint.to_string()),
        })
    }

    /// Forgets the key pinned for hub `url` on first contact, and reopens
    /// its channel at once: the key it proves then is pinned instead. For an
    /// operator who checked that the hub's key was replaced on purpose.
    pub async fn forget_hub(&self, url: &str) -> Result<HubForgottenReply, ForgetError> {
        let wanted = url.trim_end_matches('/');
        let hub = self
            .mesh
            .local
            .hubs
            .iter()
            .find(|hub| hub.url().to_string().trim_end_matches('/') == wanted)
            .ok_or_else(|| ForgetError::NotConfigured {
                url: url.to_owned(),
            })?;
        if let Trust::Configured(_) = hub.trust() {
            return Err(ForgetError::PinnedInConfig {
                url: hub.url().to_string(),
            });
        }
        let known = self.mesh.known_hubs.clone();
        let key_url = hub.url().to_string();
        let forgotten = tokio::task::spawn_blocking(move || known.forget(&key_url))
            .await
            .map_err(|error| ForgetError::File(error.to_string()))?
            .map_err(|error| ForgetError::File(error.to_string()))?;
        let in_memory = hub.trust().key();
        hub.set_trust(Trust::FirstUse);
        hub.retry_now();
        let forgotten = forgotten.or(in_memory);
        tracing::info!(hub = %hub.url(), forgotten_key = ?forgotten.map(PublicKey::to_base64), "hub key forgotten by operator; the next key it proves will be pinned");
        Ok(HubForgottenReply {
            url: hub.url().to_string(),
            forgotten_key: forgotten.map(PublicKey::to_base64),
        })
    }

    /// Probes the NAT in front of this device through every hub.
    pub async fn netcheck(&self) -> NetcheckReply {
        netcheck::run(&self.mesh.local.hubs, self.mesh.listen)
    }

    /// The inbox, oldest first.
    pub fn messages(&self) -> Vec<InboxMessage> {
        self.mesh.local.inbox.list()
    }

    /// The inbox and a feed of later messages.
    pub fn follow(&self) -> (Vec<InboxMessage>, broadcast::Receiver<InboxMessage>) {
        self.mesh.local.inbox.follow()
    }

    fn peer_id(&self, device: &str) -> Result<DeviceId, RequestError> {
        let id = DeviceId::parse(device)?;
        if id == self.mesh.local.id {
            return Err(RequestError::OwnId(id));
        }
        match self.mesh.key_of(&id) {
            None => Err(RequestError::Unknown(id)),
            Some(KeyStatus::Missing) => Err(RequestError::NoKey {
                device: id,
                reason: "it registered without a public key, so no link can be authenticated",
            }),
            Some(KeyStatus::Conflict) => Err(RequestError::NoKey {
                device: id,
                reason: "the signaling servers list different keys for it",
            }),
            Some(KeyStatus::Trusted(_)) => Ok(id),
        }
    }

    async fn command(&self, id: &DeviceId, command: Command) -> Result<(), RequestError> {
        let sender = lock(&self.mesh.peers)
            .get(id)
            .map(PeerHandle::command_sender);
        let stopped = || SendError::Stopped {
            device: id.clone(),
            reason: if self.mesh.local.cancel.is_cancelled() {
                StopReason::MeshdStopping
            } else {
                StopReason::Restarting
            },
        };
        let sender = sender.ok_or_else(|| RequestError::NoKey {
            device: id.clone(),
            reason: "this node keeps links to at most 4096 devices",
        })?;
        sender.send(command).await.map_err(|_| stopped())?;
        Ok(())
    }

    async fn await_answer<T>(
        &self,
        id: &DeviceId,
        answer: oneshot::Receiver<Result<T, SendError>>,
    ) -> Result<T, SendError> {
        // The peer task answers by its own deadline (extended once when a
        // direct path fails over: silence limit plus another answer time);
        // this is a backstop.
        match tokio::time::timeout(peer::ANSWER_TIMEOUT * 3, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_dropped)) => Err(SendError::Stopped {
                device: id.clone(),
                reason: StopReason::TaskEnded,
            }),
            Err(_elapsed) => Err(SendError::Timeout { device: id.clone() }),
        }
    }
}

fn check_text(text: &str) -> Result<(), RequestError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(RequestError::TooLong(text.len()));
    }
    Ok(())
}

/// Milliseconds, rounded to the microsecond, for `rtt_ms` fields.
pub fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}
