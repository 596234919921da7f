//! The hub's side of the HTTP API's bodies (docs/signaling-api.md): a
//! registration checked into registry types, and the registry's devices as
//! the wire lists them. The bodies themselves are in `hub_wire`.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::registry::{Device, Registration};
use crate::device_id::{DeviceId, DeviceIdError};
use crate::hub_wire::{ListedDevice, MAX_ENDPOINTS, RegisterRequest};
use crate::public_key::{PublicKey, PublicKeyError};

/// Why a registration was refused; each message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterBodyError {
    /// `id` is not a device id.
    #[error("id: {0}")]
    Id(#[from] DeviceIdError),
    /// `addr` or one of `endpoints` is not `ip:port`.
    #[error("{field}: {text:?} is not ip:port, e.g. \"192.0.2.7:8082\"")]
    Addr {
        /// `addr` or `endpoints`.
        field: &'static str,
        /// As sent.
        text: String,
    },
    /// `pubkey` is not a key.
    #[error("pubkey: {0}")]
    Pubkey(#[from] PublicKeyError),
    /// More endpoints than a device may advertise.
    #[error("endpoints: at most {MAX_ENDPOINTS} are allowed, got {0}")]
    TooManyEndpoints(usize),
}

/// Checks every field of a registration.
pub fn validate(body: RegisterRequest) -> Result<Registration, RegisterBodyError> {
    let id = DeviceId::parse(&body.id)?;
    let addr = parse_addr("addr", &body.addr)?;
    let pubkey = body
        .pubkey
        .map(|key| PublicKey::from_base64(&key))
        .transpose()?;
    let endpoints = body.endpoints.unwrap_or_default();
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(RegisterBodyError::TooManyEndpoints(endpoints.len()));
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

fn parse_addr(field: &'static str, text: &str) -> Result<SocketAddr, RegisterBodyError> {
    text.parse().map_err(|_| RegisterBodyError::Addr {
        field,
        text: text.to_owned(),
    })
}

/// A live device as `GET /devices` and the channels list it.
pub fn listed(device: &Device) -> ListedDevice {
    let registration = &device.registration;
    ListedDevice {
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

/// `2026-11-25T14:08:30Z`
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<Registration, String> {
        validate(serde_json::from_str::<RegisterRequest>(json).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
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
