//! The serde mirror of the TOML file: every key optional, unknown keys refused.
//!
//! Nothing here is validated; `validate.rs` turns this into [`super::Config`].
//! The same structs, filled from a validated config, print the effective
//! configuration for `meshd --check-config`.

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: Option<RawNode>,
    pub control: Option<RawControl>,
    pub signaling: Option<RawSignaling>,
    pub chat: Option<RawChat>,
    pub mesh: Option<RawMesh>,
    pub web: Option<RawWeb>,
    pub cluster: Option<RawCluster>,
}

/// `[node]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: Option<String>,
    pub state_dir: Option<String>,
    pub log_level: Option<String>,
}

/// `[control]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub socket: Option<String>,
    pub group: Option<String>,
}

/// `[signaling]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignaling {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub device_ttl: Option<String>,
    pub join_token: Option<String>,
    pub request_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub max_devices: Option<u64>,
    pub relay_bytes_per_sec: Option<u64>,
    pub registrations_per_sec: Option<u64>,
}

/// `[chat]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawChat {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub max_clients: Option<u64>,
    pub max_line_bytes: Option<u64>,
    pub rate_per_user: Option<u64>,
    pub burst_per_user: Option<u64>,
    pub tls: Option<bool>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub allow_plaintext: Option<bool>,
}

/// `[mesh]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMesh {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub signaling: Option<Vec<String>>,
    pub join_token: Option<String>,
    pub advertise: Option<Vec<String>>,
}

/// `[web]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub token: Option<String>,
}

/// `[cluster]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub nats: Option<Vec<String>>,
    pub advertise: Option<String>,
}
