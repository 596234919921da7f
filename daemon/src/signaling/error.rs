//! Signaling errors, each mapped once to an HTTP status and a JSON body
//! `{"error": "..."}` (docs/signaling-api.md).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

/// Why a signaling request failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// Malformed JSON, or a body that is not what the API takes.
    #[error("{0}")]
    BadRequest(String),
    /// A registration with a field at fault.
    #[error("{0}")]
    InvalidRegistration(#[from] super::api::RegisterBodyError),
    /// A join token is configured and the request lacks it or has another.
    #[error("missing or wrong bearer token: send \"Authorization: Bearer <signaling.join_token>\"")]
    Unauthorized,
    /// The id is bound to another key.
    #[error(
        "device id {0:?} is bound to another public key; an operator can release it on the hub with: meshctl devices remove {0}"
    )]
    KeyConflict(String),
    /// A live plain registration holds the id with another key.
    #[error(
        "device id {0:?} is registered with another public key until that registration expires (signaling.device_ttl); a device that proves its key over a hub channel takes the id at once"
    )]
    Claimed(String),
    /// A plain registration for an id whose key its device proved.
    #[error(
        "device id {0:?} is bound to a key its device proved over a hub channel; only that device can register it (an operator can release it on the hub with: meshctl devices remove {0})"
    )]
    ProvenId(String),
    /// Too many new ids from one address.
    #[error(
        "too many new device ids from {address}: at most {rate} a second (signaling.registrations_per_sec); try again in a moment"
    )]
    RateLimited {
        /// The address.
        address: std::net::IpAddr,
        /// The limit.
        rate: u64,
    },
    /// The body exceeds the limit.
    #[error("request body exceeds {} bytes", crate::hub_wire::MAX_BODY_BYTES)]
    TooLarge,
    /// The request line and headers exceed the limit.
    #[error("request headers exceed {} bytes", crate::hub_wire::MAX_HEAD_BYTES)]
    HeadersTooLarge,
    /// The body did not arrive in time.
    #[error("request body not received within the timeout")]
    Timeout,
    /// The path exists but not with this method.
    #[error("method not allowed: use {0}")]
    MethodNotAllowed(&'static str),
    /// No such path.
    #[error(
        "no such path: the API has POST /register, GET /devices, GET /healthz and GET /observed (and the upgrades GET /channel and GET /relay)"
    )]
    NotFound,
    /// An upgrade path requested without its upgrade.
    #[error("this path needs \"Connection: upgrade\" and \"Upgrade: {0}\"")]
    UpgradeRequired(&'static str),
    /// Too many channel handshakes at once.
    #[error("{0}; try again in a moment")]
    Busy(String),
    /// The registry is at `signaling.max_devices`.
    #[error("{0}; try again later or raise signaling.max_devices")]
    Full(String),
    /// A new id needs the cluster's word, and the cluster cannot be asked.
    #[error(
        "device id {id:?} is new to this hub, and the cluster that binds ids to keys cannot be asked now ({reason}); devices already known keep working; try again when the cluster is back"
    )]
    ClusterUnavailable {
        /// The id.
        id: String,
        /// Why the cluster cannot be asked.
        reason: String,
    },
}

impl SignalingError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            SignalingError::BadRequest(_) | SignalingError::InvalidRegistration(_) => {
                StatusCode::BAD_REQUEST
            }
            SignalingError::Unauthorized => StatusCode::UNAUTHORIZED,
            SignalingError::KeyConflict(_)
            | SignalingError::ProvenId(_)
            | SignalingError::Claimed(_) => StatusCode::CONFLICT,
            SignalingError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            SignalingError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SignalingError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            SignalingError::Timeout => StatusCode::REQUEST_TIMEOUT,
            SignalingError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            SignalingError::NotFound => StatusCode::NOT_FOUND,
            SignalingError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            SignalingError::Full(_)
            | SignalingError::Busy(_)
            | SignalingError::ClusterUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The full HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = json_response(self.status(), &body);
        let headers = response.headers_mut();
        match self {
            SignalingError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            SignalingError::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            SignalingError::UpgradeRequired(protocol) => {
                headers.insert(UPGRADE, HeaderValue::from_static(protocol));
            }
            // The rest of the body may still be on the wire: do not try to
            // read another request after it.
            SignalingError::TooLarge
            | SignalingError::HeadersTooLarge
            | SignalingError::Timeout => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
