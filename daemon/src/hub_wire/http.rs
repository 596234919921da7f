//! The JSON bodies of the signaling HTTP API (docs/signaling-api.md), one
//! type for each, read and written by both sides. Field checks that build
//! the hub's registry types stay with the hub; the device's roster checks
//! what it lists.

use serde::{Deserialize, Serialize};

/// `POST /register`: a device announces itself.
pub const REGISTER_PATH: &str = "/register";
/// `GET /devices`: the device list.
pub const DEVICES_PATH: &str = "/devices";
/// `GET /observed`: the caller's source address as the hub sees it.
pub const OBSERVED_PATH: &str = "/observed";
/// `GET /healthz`: liveness.
pub const HEALTH_PATH: &str = "/healthz";

/// `POST /register` body. Unknown fields are ignored so newer devices can add
/// some; meshd always sends `pubkey` and `endpoints`, other clients may not.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RegisterRequest {
    /// Device id.
    pub id: String,
    /// The address peers should dial (as `ip:port`).
    pub addr: String,
    /// Base64 X25519 public key.
    #[serde(default)]
    pub pubkey: Option<String>,
    /// Further addresses the device can be reached at.
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
}

/// `POST /register` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RegisterReply {
    /// The registered id.
    #[serde(default)]
    pub id: String,
    /// The registered address.
    #[serde(default)]
    pub addr: String,
    /// The request's source address as the hub saw it.
    pub observed: String,
    /// Re-register well within this many seconds.
    pub ttl_secs: u64,
}

/// One element of `GET /devices` and of a channel's device list. Fields a
/// device can do without default, so that a list with a field missing still
/// reads; the roster validates each entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ListedDevice {
    /// Device id.
    pub id: String,
    /// Registered address.
    pub addr: String,
    /// Source address of the last registration.
    #[serde(default)]
    pub observed: String,
    /// Base64 public key, or null.
    #[serde(default)]
    pub pubkey: Option<String>,
    /// Last registration, RFC 3339 UTC.
    #[serde(default)]
    pub last_seen: String,
    /// Further advertised endpoints.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// `GET /observed` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ObservedReply {
    /// The caller's source address, `ip:port`.
    pub observed: String,
}

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorReply {
    /// What went wrong and what to do about it.
    pub error: String,
}

impl ErrorReply {
    /// The `error` text of an answer body, or the body as it is when it is
    /// not an error object (a proxy's page, another server).
    pub fn message_of(body: &[u8]) -> String {
        serde_json::from_slice::<ErrorReply>(body)
            .map(|reply| reply.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_written_as_the_api_documents_it() {
        let request = RegisterRequest {
            id: "devA".into(),
            addr: "192.0.2.7:8082".into(),
            pubkey: Some("a2V5".into()),
            endpoints: Some(vec!["10.0.0.7:8082".into()]),
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"id":"devA","addr":"192.0.2.7:8082","pubkey":"a2V5","endpoints":["10.0.0.7:8082"]}"#
        );
        let minimal: RegisterRequest =
            serde_json::from_str(r#"{"id":"devA","addr":"192.0.2.7:8082"}"#).unwrap();
        assert_eq!((minimal.pubkey, minimal.endpoints), (None, None));
    }

    #[test]
    fn a_listed_device_reads_with_only_id_and_addr_and_writes_every_field() {
        let listed: ListedDevice =
            serde_json::from_str(r#"{"id":"a","addr":"192.0.2.7:1"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&listed).unwrap(),
            r#"{"id":"a","addr":"192.0.2.7:1","observed":"","pubkey":null,"last_seen":"","endpoints":[]}"#
        );
    }

    #[test]
    fn error_text_comes_from_the_object_or_the_body() {
        assert_eq!(ErrorReply::message_of(br#"{"error":"no"}"#), "no");
        assert_eq!(ErrorReply::message_of(b"<html>"), "<html>");
    }
}
