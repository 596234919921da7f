//! The JSON shapes of the HTTP API (CONTRACT section 3) and their validation
//! into registry types.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::registry::{Device, Registration};
use crate::device_id::DeviceId;
use crate::public_key::PublicKey;

/// Advertised endpoints a device may list at most.
pub const MAX_ENDPOINTS: usize = 16;

/// `POST /register` body. Unknown fields are ignored so newer devices can add
/// some. Serialize is for the strict decoder's shape check.
#[derive(Debug, Deserialize, Serialize)]
pub struct RegisterBody {
    id: String,
    addr: String,
    #[serde(default)]
    pubkey: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

impl RegisterBody {
    /// Checks every field; the message names the field at fault.
    pub fn validate(self) -> Result<Registration, String> {
        let id = DeviceId::parse(&self.id).map_err(|message| format!("id: {message}"))?;
        let addr = parse_addr("addr", &self.addr)?;
        let pubkey = self
            .pubkey
            .map(|key| PublicKey::from_base64(&key).map_err(|message| format!("pubkey: {message}")))
            .transpose()?;
        let endpoints = self.endpoints.unwrap_or_default();
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(format!(
                "endpoints: at most {MAX_ENDPOINTS} are allowed, got {}",
                endpoints.len()
            ));
        }
        let endpoints = endpoints
            .iter()
            .map(|endpoint| parse_addr("endpoints", endpoint))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Registration {
            id,
            addr,
            pubkey,
            endpoints,
        })
    }
}

fn parse_addr(field: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{field}: {text:?} is not ip:port, e.g. \"192.0.2.7:8082\""))
}

/// `POST /register` answer.
#[derive(Debug, Serialize)]
pub struct RegisterReply {
    /// The registered id.
    pub id: String,
    /// The registered address.
    pub addr: String,
    /// The request's source address as the server saw it.
    pub observed: String,
    /// Re-register well within this many seconds.
    pub ttl_secs: u64,
}

/// One element of `GET /devices`.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    /// Device id.
    pub id: String,
    /// Registered address.
    pub addr: String,
    /// Source address of the last registration.
    pub observed: String,
    /// Base64 public key or null.
    pub pubkey: Option<String>,
    /// Last registration, RFC 3339 UTC.
    pub last_seen: String,
    /// Further advertised endpoints.
    pub endpoints: Vec<String>,
}

impl From<&Device> for DeviceView {
    fn from(device: &Device) -> Self {
        let registration = &device.registration;
        DeviceView {
            id: registration.id.to_string(),
            addr: registration.addr.to_string(),
            observed: device.observed.to_string(),
            pubkey: registration.pubkey.map(|key| key.to_base64()),
            last_seen: rfc3339(device.last_seen),
            endpoints: registration
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// `2026-11-25T14:08:30Z`
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<Registration, String> {
        serde_json::from_str::<RegisterBody>(json)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn validates_each_field() {
        assert!(body(r#"{"id":"a","addr":"192.0.2.7:8082"}"#).is_ok());
        assert!(
            body(r#"{"id":"a b","addr":"192.0.2.7:8082"}"#)
                .unwrap_err()
                .starts_with("id:")
        );
        assert!(
            body(r#"{"id":"a","addr":"example.com:80"}"#)
                .unwrap_err()
                .starts_with("addr:")
        );
        assert!(
            body(r#"{"id":"a","addr":"192.0.2.7:1","pubkey":"x"}"#)
                .unwrap_err()
                .starts_with("pubkey:")
        );
        assert!(
            body(r#"{"id":"a","addr":"192.0.2.7:1","endpoints":["nope"]}"#)
                .unwrap_err()
                .starts_with("endpoints:")
        );
        assert!(
            body(r#"{"addr":"192.0.2.7:1"}"#)
                .unwrap_err()
                .contains("missing field `id`")
        );
    }

    #[test]
    fn ignores_unknown_fields() {
        assert!(body(r#"{"id":"a","addr":"[::1]:1","future":true}"#).is_ok());
    }
}
