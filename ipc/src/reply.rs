//! Replies from meshd to meshctl.
//!
//! These structs are also what `meshctl --json` prints, so their field names
//! are part of the external contract (docs/meshctl.md): add fields freely,
//! never rename or remove one.

use serde::{Deserialize, Serialize};

/// One reply frame: `{"v":1,"id":7,"ok":{...}}` or
/// `{"v":1,"id":7,"error":{"code":"permission","message":"..."}}`.
///
/// A streaming reply sends frames with `"more":true` and ends with one without
/// it; every other reply is a single frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyFrame {
    /// Protocol version of the daemon.
    pub v: u32,
    /// The id of the request this answers.
    pub id: u64,
    /// More frames follow for the same request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// The outcome.
    #[serde(flatten)]
    pub reply: Reply,
}

/// Success or failure of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request succeeded.
    Ok(Response),
    /// The request failed; nothing was changed unless the message says so.
    Error(ErrorReply),
}

/// The payload of a successful reply, one variant per request kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Answer to `status`.
    Status(Box<StatusReply>),
    /// Answer to `devices`, sorted by id.
    Devices(Vec<DeviceEntry>),
    /// Answer to `devices remove`.
    Removed(RemovedReply),
    /// Answer to `hubs forget`.
    HubForgotten(HubForgottenReply),
    /// Answer to `reload`.
    Reloaded(ReloadReply),
    /// Answer to `users list`, sorted by name.
    Users(Vec<UserEntry>),
    /// Answer to `users add`, `users passwd` and `users remove`.
    UserChanged(UserChange),
    /// Answer to `broadcast`.
    Broadcasted(BroadcastReply),
    /// Answer to `send`: the device acknowledged the message.
    Sent(SendResult),
    /// Answer to `send --all`: one result per device, sorted by id.
    SentAll(Vec<SendResult>),
    /// Answer to `messages`: the inbox, oldest first.
    Messages(Vec<InboxMessage>),
    /// One message as it arrives, streamed by `messages --follow`.
    Message(InboxMessage),
    /// Answer to `ping`.
    Pong(PingReply),
    /// Answer to `netcheck`.
    Netcheck(NetcheckReply),
}

/// Why a request failed, in a form scripts can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The caller may not run this command.
    Permission,
    /// The request could not be parsed or has bad arguments.
    BadRequest,
    /// The request line exceeded the frame limit; the connection is closed.
    TooLarge,
    /// The named thing does not exist.
    NotFound,
    /// The named thing exists already.
    Conflict,
    /// The role that would answer is not enabled on this node.
    Unavailable,
    /// A reload found the new configuration invalid; the old one stays.
    InvalidConfig,
    /// meshd failed internally; its log says more.
    Internal,
    /// There is no working link to the device.
    Unreachable,
    /// The device did not answer in time.
    Timeout,
    /// Too many control connections (in all, or from this uid); closed.
    Busy,
    /// A code from a newer daemon that this build does not know.
    #[serde(other)]
    Unknown,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable category.
    pub code: ErrorCode,
    /// One line for a person: what failed and what to do about it.
    pub message: String,
}

/// `meshctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// meshd's version.
    pub version: String,
    /// Control protocol version.
    #[serde(default)]
    pub protocol: u32,
    /// This node's device id.
    pub node_id: String,
    /// Seconds since meshd started.
    pub uptime_secs: u64,
    /// meshd's process id.
    #[serde(default)]
    pub pid: u32,
    /// The configuration file in use, or null on the built-in defaults.
    #[serde(default)]
    pub config: Option<String>,
    /// The roles that are enabled; a disabled role is absent.
    pub roles: RoleStatus,
}

/// The enabled roles and what each is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleStatus {
    /// The discovery server, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signaling: Option<SignalingStatus>,
    /// The chat server, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatStatus>,
    /// This node as a device of the mesh, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshStatus>,
    /// The web console, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebStatus>,
    /// The cluster, when `[cluster] nats` names servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// The cluster in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `[cluster] nats`.
    pub nats: Vec<String>,
    /// This hub's URL as the cluster hands it to devices.
    pub advertise: String,
    /// NATS and JetStream answer: the hub shares the mesh.
    pub connected: bool,
    /// Why not, while not connected.
    pub error: Option<String>,
    /// The hubs of the cluster heard of lately, this one included.
    pub hubs: Vec<ClusterHub>,
}

/// One hub of the cluster in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHub {
    /// Its node id.
    pub id: String,
    /// Its URL, as devices dial it.
    pub url: String,
    /// Its hub key, base64.
    pub hub_key: String,
}

/// The web console in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebStatus {
    /// Where it listens, `ip:port`.
    pub listen: String,
    /// Requests need `[web] token`.
    pub token_required: bool,
}

/// The mesh role in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// The peer-to-peer address actually bound.
    pub listen: String,
    /// This device's X25519 public key, base64: its identity.
    pub pubkey: String,
    /// This device's address as a signaling server saw it, once one answered.
    pub observed: Option<String>,
    /// Devices with a working link.
    pub links: usize,
    /// The endpoints this device advertises.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Each configured signaling server, in config order.
    #[serde(default)]
    pub signaling: Vec<HubStatus>,
}

/// One signaling server as a mesh node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubStatus {
    /// The server's URL from the config.
    pub url: String,
    /// The last registration succeeded.
    pub reachable: bool,
    /// This device's address as that server saw it.
    pub observed: Option<String>,
    /// Why the last registration failed, if it did.
    pub error: Option<String>,
    /// The authenticated channel to the server is open.
    #[serde(default)]
    pub channel: bool,
    /// Round-trip time to the server over the channel, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The hub key in force (base64): pinned in the config, or by the first
    /// contact; null before first contact.
    #[serde(default)]
    pub hub_key: Option<String>,
    /// While the hub is down and no other hub of this device answers: the
    /// hub of its cluster the device moved to (its URL), whose state the
    /// other fields describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The other hubs of its cluster it named (their URLs): where the
    /// device goes if every hub of its own stops answering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_hubs: Vec<String>,
}

/// `meshctl netcheck`: what the NAT in front of this device does, probed
/// from the mesh port through each signaling server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetcheckReply {
    /// The mesh port the probes leave from.
    pub mesh_port: u16,
    /// One probe per signaling server.
    pub probes: Vec<NetcheckProbe>,
    /// The public address peers see, when the probes agree on one.
    pub observed: Option<String>,
    /// Every probe that left from the mesh port kept that port.
    pub port_preserved: Option<bool>,
    /// The NAT maps the mesh port to the same public port whatever the
    /// destination (needs two servers at different addresses, or a kept
    /// port); `false` means direct links need a relay or luck.
    pub same_port_for_all_destinations: Option<bool>,
    /// One line for people.
    pub verdict: String,
}

/// One netcheck probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetcheckProbe {
    /// The server's URL.
    pub hub: String,
    /// The local address the probe left from.
    pub local: Option<String>,
    /// The address the server saw.
    pub observed: Option<String>,
    /// Why the probe failed, if it did.
    pub error: Option<String>,
}

/// The outcome of a send to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendResult {
    /// The device id.
    pub device: String,
    /// The device acknowledged the message.
    pub delivered: bool,
    /// Time from sending to the acknowledgement, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why it was not delivered.
    pub error: Option<String>,
}

/// One message received over the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// The sending device's id.
    pub from: String,
    /// The text.
    pub text: String,
    /// When this node received it, RFC 3339 in UTC with milliseconds.
    pub received_at: String,
}

/// `meshctl ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    /// The device id.
    pub device: String,
    /// Round-trip time in milliseconds.
    pub rtt_ms: f64,
    /// `direct` or `relayed`.
    pub path: LinkState,
    /// The endpoint the link uses.
    pub endpoint: Option<String>,
}

/// The chat role in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatStatus {
    /// The address actually bound.
    pub listen: String,
    /// Logged-in clients.
    pub clients: usize,
    /// Messages relayed since meshd started.
    #[serde(default)]
    pub messages_relayed: u64,
    /// With `[chat] tls = true`: the certificate's fingerprint, `sha256:` and
    /// the hex SHA-256 of its DER form (what `meshctl chat --fingerprint`
    /// takes); absent on a plain-text chat port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
}

/// One chat user in `meshctl users list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// The user name.
    pub name: String,
}

/// A change to a chat user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserChange {
    /// The user name.
    pub name: String,
    /// `added`, `changed` or `removed`.
    pub action: String,
}

/// `meshctl broadcast`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastReply {
    /// Logged-in clients the line went to.
    pub clients: usize,
}

/// The signaling role in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalingStatus {
    /// The address actually bound (port 0 in the config is resolved here).
    pub listen: String,
    /// Devices currently registered and not expired.
    #[serde(default)]
    pub devices: usize,
    /// Devices with a hub channel open.
    #[serde(default)]
    pub channels: usize,
    /// Relays splicing two devices now.
    #[serde(default)]
    pub relays: usize,
    /// The hub's public key (`state_dir/hub-key`), base64: what devices pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_key: Option<String>,
}

/// How this node reaches a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// The device is this node.
    #[serde(rename = "self")]
    Local,
    /// A link is being set up.
    Connecting,
    /// An encrypted link over a direct path.
    Direct,
    /// An encrypted link through the hub's relay.
    Relayed,
    /// No working link.
    Down,
}

/// One device in `meshctl devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// Device id.
    pub id: String,
    /// The address the device registered.
    pub addr: String,
    /// The address the hub saw its registration come from.
    pub observed: String,
    /// Last registration or heartbeat, RFC 3339 in UTC.
    pub last_seen: String,
    /// Base64 X25519 public key, null if the device registered none.
    pub pubkey: Option<String>,
    /// Link state as seen from this node; null on a node that is only a hub.
    pub link: Option<LinkState>,
    /// The endpoint the link uses, when there is one.
    pub endpoint: Option<String>,
    /// Round-trip time of the link in milliseconds, when measured.
    pub rtt_ms: Option<f64>,
    /// Every endpoint the device advertised.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// `meshctl devices remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedReply {
    /// The id that was forgotten.
    pub device: String,
    /// It was in the device list.
    pub was_registered: bool,
    /// A public key was bound to the id, and no longer is.
    pub had_binding: bool,
}

/// `meshctl hubs forget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubForgottenReply {
    /// The hub's URL.
    pub url: String,
    /// The key that was pinned (base64), or null if none was.
    pub forgotten_key: Option<String>,
}

/// `meshctl reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// The file that was read, or null on built-in defaults.
    pub config: Option<String>,
    /// Keys whose new values are now in effect.
    pub applied: Vec<String>,
    /// Keys that changed but take effect only after a restart.
    pub restart_required: Vec<String>,
    /// Problems outside the config file found during the reload (such as an
    /// invalid chat users file); the reload itself succeeded.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_and_error_frames_round_trip() {
        let frame = ReplyFrame {
            v: 1,
            id: 3,
            more: false,
            reply: Reply::Ok(Response::Removed(RemovedReply {
                device: "a".into(),
                was_registered: true,
                had_binding: false,
            })),
        };
        let json = serde_json::to_string(&frame).unwrap();
        assert!(
            json.starts_with(r#"{"v":1,"id":3,"ok":{"removed":"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ReplyFrame>(&json).unwrap(), frame);

        let err = ReplyFrame {
            v: 1,
            id: 4,
            more: true,
            reply: Reply::Error(ErrorReply {
                code: ErrorCode::Permission,
                message: "no".into(),
            }),
        };
        let json = serde_json::to_string(&err).unwrap();
        assert_eq!(
            json,
            r#"{"v":1,"id":4,"more":true,"error":{"code":"permission","message":"no"}}"#
        );
        assert_eq!(serde_json::from_str::<ReplyFrame>(&json).unwrap(), err);
    }

    #[test]
    fn unknown_fields_and_codes_are_tolerated() {
        let json = r#"{"v":2,"id":1,"new_field":true,"error":{"code":"brand_new","message":"m","hint":"h"}}"#;
        let frame: ReplyFrame = serde_json::from_str(json).unwrap();
        match frame.reply {
            Reply::Error(e) => assert_eq!(e.code, ErrorCode::Unknown),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn link_state_self_is_spelled_self() {
        assert_eq!(
            serde_json::to_string(&LinkState::Local).unwrap(),
            r#""self""#
        );
    }
}
