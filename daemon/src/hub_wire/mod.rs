//! The hub wire: everything a device and its hubs say to each other, and
//! its limits, defined once for both sides (docs/signaling-api.md for the
//! HTTP API, docs/mesh.md "The hub channel" for the channel).
//!
//! Not a role: the signaling role (which serves it), the mesh role (which
//! speaks it as a device) and config (which checks hub URLs and endpoint
//! counts) import it, and none of them imports another role.

mod channel;
mod http;
mod url;

pub use channel::{
    CHANNEL_PATH, CHANNEL_UPGRADE, CHANNEL_UPGRADE_NO_CLUSTER, CHANNEL_UPGRADE_NO_REPORTS,
    CHANNEL_UPGRADE_WHOLE_LISTS, FromHub, PeerHub, RELAY_PATH, RELAY_UPGRADE, Refusable,
    ReportedLink, ReportedPath, Signal, ToHub,
};
pub use http::{
    DEVICES_PATH, ErrorReply, HEALTH_PATH, ListedDevice, OBSERVED_PATH, ObservedReply,
    REGISTER_PATH, RegisterReply, RegisterRequest,
};
pub use url::HubUrl;

/// Endpoints one device may advertise at most.
pub const MAX_ENDPOINTS: usize = 16;

/// The largest request body a hub reads (a registration), and the largest
/// small answer a device reads (a registration's, `/observed`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The largest request head (request line and headers) a hub reads.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The largest message a device may send a hub over its channel.
pub const MAX_TO_HUB_BYTES: usize = 16 * 1024;

/// Links one [`ToHub::Links`] report lists at most: every pair of a mesh
/// of 200 devices, the size the web console's page is made for. Beyond
/// it a report gives counts, and the first links by id.
pub const MAX_REPORTED_LINKS: usize = 200;

/// The largest message a hub may send a device: a whole device list, over
/// the channel or as a `GET /devices` answer. Ample for
/// [`MAX_DEVICES_PER_LIST`] devices with every field at its longest.
pub const MAX_FROM_HUB_BYTES: usize = 32 << 20;

/// Devices a device takes from one hub's list at most: the rest of a longer
/// list is ignored, so a hostile hub cannot grow a device's memory without
/// bound.
pub const MAX_DEVICES_PER_LIST: usize = 65_536;
