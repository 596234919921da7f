//! The meshd control protocol, defined once for the daemon and for meshctl.
//!
//! meshctl and meshd talk over a Unix stream socket, one JSON document per line
//! in each direction (see `docs/control-protocol.md`). A client sends a
//! [`RequestFrame`]; the daemon answers with one or more [`ReplyFrame`]s carrying
//! the same request id, the last one with `more` unset, so follow-mode commands
//! can stream. This crate holds only types and framing, and behind the `tls`
//! feature the chat's blocking TLS client (`tls`): it must never pull in an
//! async runtime, because meshctl stays small and synchronous.

pub mod fingerprint;
mod frame;
mod paths;
mod reply;
mod request;
pub mod strict;
#[cfg(feature = "tls")]
pub mod tls;

pub use frame::{FrameError, MAX_FRAME_BYTES, decode, decode_strict, encode, read_frame};
pub use paths::default_socket_path;
pub use reply::{
    BroadcastReply, ChatStatus, ClusterHub, ClusterStatus, DeviceEntry, ErrorCode, ErrorReply,
    HubForgottenReply, HubStatus, InboxMessage, LinkState, MeshStatus, NetcheckProbe,
    NetcheckReply, PingReply, ReloadReply, RemovedReply, Reply, ReplyFrame, Response, RoleStatus,
    SendResult, SignalingStatus, StatusReply, UserChange, UserEntry, WebStatus,
};
pub use request::{Access, Request, RequestFrame, RequestHeader};

/// The control protocol version spoken by this build.
///
/// The history of versions is kept in `docs/control-protocol.md`. Peers accept
/// frames of other versions as long as they parse, and ignore unknown fields;
/// meshctl warns once when the daemon speaks a different version.
pub const PROTOCOL_VERSION: u32 = 1;
