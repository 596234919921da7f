//! HTTP routes of the signaling server: one function per endpoint, all
//! returning `Result<Response, SignalingError>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HeaderValue, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::SignalingState;
use super::admission::token_matches;
use super::api;
use super::channels::{self, ChannelVersion};
use super::error::{SignalingError, json_response};
use super::registry::Proof;
use crate::http_head::head_bytes;
use crate::hub_wire::{
    CHANNEL_PATH, CHANNEL_UPGRADE, CHANNEL_UPGRADE_NO_CLUSTER, CHANNEL_UPGRADE_NO_REPORTS,
    CHANNEL_UPGRADE_WHOLE_LISTS, DEVICES_PATH, HEALTH_PATH, MAX_BODY_BYTES, MAX_HEAD_BYTES,
    OBSERVED_PATH, ObservedReply, REGISTER_PATH, RELAY_PATH, RELAY_UPGRADE, RegisterRequest,
};

/// Dispatches one request. Never fails: every error becomes a JSON response.
pub async fn route(
    request: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<SignalingState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = match (path.as_str(), &method) {
        // hyper's read buffer (64 KiB) bounds what it holds, but a head that
        // arrives in one read can still pass it, so the limit is checked here.
        _ if head_bytes(&request) > MAX_HEAD_BYTES => Err(SignalingError::HeadersTooLarge),
        (REGISTER_PATH, &Method::POST) => register(request, peer, &state).await,
        (REGISTER_PATH, _) => Err(SignalingError::MethodNotAllowed("POST")),
        (DEVICES_PATH, &Method::GET) => match authorize(&request, &state) {
            Ok(()) => Ok(devices(&request, &state).await),
            Err(error) => Err(error),
        },
        (DEVICES_PATH, _) => Err(SignalingError::MethodNotAllowed("GET")),
        (HEALTH_PATH, &Method::GET) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok" }),
        )),
        (HEALTH_PATH, _) => Err(SignalingError::MethodNotAllowed("GET")),
        (OBSERVED_PATH, &Method::GET) => Ok(json_response(
            StatusCode::OK,
            &ObservedReply {
                observed: peer.to_string(),
            },
        )),
        (OBSERVED_PATH, _) => Err(SignalingError::MethodNotAllowed("GET")),
        (CHANNEL_PATH, &Method::GET) => channel(request, peer, &state),
        (RELAY_PATH, &Method::GET) => relay(request, peer, &state),
        (CHANNEL_PATH | RELAY_PATH, _) => Err(SignalingError::MethodNotAllowed("GET")),
        _ => Err(SignalingError::NotFound),
    };
    let response = result.unwrap_or_else(|error| {
        tracing::debug!(peer_addr = %peer, %method, %path, %error, "signaling request refused");
        error.into_response()
    });
    Ok(response)
}

async fn register(
    request: Request<Incoming>,
    peer: SocketAddr,
    state: &SignalingState,
) -> Result<Response<Full<Bytes>>, SignalingError> {
    authorize(&request, state)?;
    let settings = state.settings();
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(SignalingError::TooLarge);
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(settings.request_timeout, body.collect()).await {
        Err(_elapsed) => return Err(SignalingError::Timeout),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(SignalingError::TooLarge);
        }
        Ok(Err(error)) => {
            return Err(SignalingError::BadRequest(format!("reading body: {error}")));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let body: RegisterRequest = meshd_ipc::strict::from_slice(&bytes).map_err(|error| {
        SignalingError::BadRequest(format!(
            "malformed JSON: {error}; the body is one object: {{\"id\":..., \"addr\":...}}"
        ))
    })?;
    let registration = api::validate(body)?;
    let reply = state.admit(registration, Proof::Claimed, peer)?;
    Ok(json_response(StatusCode::OK, &reply))
}

/// The response header carrying the registry's version, for long-polls.
pub const VERSION_HEADER: &str = "meshd-registry-version";

/// Longest a long-poll waits; well inside a connection's lifetime (six
/// request timeouts).
const LONG_POLL: Duration = Duration::from_secs(25);

/// `GET /devices`, and its long-poll form `GET /devices?wait=VERSION`: with
/// `wait` equal to the current version the answer waits until the list
/// changes (at most 25 s, or three request timeouts if less). Every answer
/// carries the version in a header.
async fn devices(request: &Request<Incoming>, state: &SignalingState) -> Response<Full<Bytes>> {
    let wait = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("wait="))
            .and_then(|version| version.parse::<u64>().ok())
    });
    let mut changes = state.changes.subscribe();
    // Given back however the answer ends, including when the client hangs
    // up and hyper drops this future mid-wait.
    let _slot = PollSlot::take(&state.polls);
    let waiting = _slot.waiting_before;
    // Over the cap a long-poll is answered at once; the device sees the same
    // version and waits before asking again.
    if wait == Some(*changes.borrow_and_update()) && waiting < state.max_polls {
        let limit = LONG_POLL.min(state.settings().request_timeout * 3);
        tokio::select! {
            () = state.stopping.cancelled() => {}
            _ = tokio::time::timeout(limit, changes.changed()) => {}
        }
    }
    let version = *changes.borrow();
    let views = state.listed_devices();
    let mut response = json_response(StatusCode::OK, &views);
    if let Ok(value) = hyper::header::HeaderValue::from_str(&version.to_string()) {
        response.headers_mut().insert(VERSION_HEADER, value);
    }
    response
}

/// One long-poll counted in `SignalingState::polls` while it lives.
struct PollSlot<'a> {
    polls: &'a AtomicUsize,
    waiting_before: usize,
}

impl<'a> PollSlot<'a> {
    fn take(polls: &'a AtomicUsize) -> PollSlot<'a> {
        PollSlot {
            waiting_before: polls.fetch_add(1, Ordering::Relaxed),
            polls,
        }
    }
}

impl Drop for PollSlot<'_> {
    fn drop(&mut self) {
        self.polls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /channel`: upgrades to a device's hub channel (channels.rs).
fn channel(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    state: &Arc<SignalingState>,
) -> Result<Response<Full<Bytes>>, SignalingError> {
    // Devices of this version take deltas, report links and learn the
    // cluster's hubs; older ones are still served (channel/4: no cluster
    // hubs; channel/3: no reports either; channel/2: whole lists), so
    // hubs can be upgraded first.
    let mut chosen = None;
    for (protocol, version) in [
        (CHANNEL_UPGRADE, ChannelVersion::Cluster),
        (CHANNEL_UPGRADE_NO_CLUSTER, ChannelVersion::Reports),
        (CHANNEL_UPGRADE_NO_REPORTS, ChannelVersion::Deltas),
        (CHANNEL_UPGRADE_WHOLE_LISTS, ChannelVersion::WholeLists),
    ] {
        if require_upgrade(&request, protocol).is_ok() {
            chosen = Some((protocol, version));
            break;
        }
    }
    let Some((protocol, version)) = chosen else {
        return Err(SignalingError::UpgradeRequired(CHANNEL_UPGRADE));
    };
    let slot = handshake_slot(state)?;
    let upgrade = hyper::upgrade::on(&mut request);
    let task_state = state.clone();
    state.tracker.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                channels::serve(task_state, TokioIo::new(upgraded), peer, slot, version).await;
            }
            Err(error) => tracing::debug!(peer_addr = %peer, %error, "hub channel upgrade failed"),
        }
    });
    Ok(switching_protocols(protocol))
}

/// `GET /relay`: joins one side of a relay offered over a channel
/// (relay.rs). The token travels inside the hub handshake after the
/// upgrade, and counts only for the key it was issued to.
fn relay(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    state: &Arc<SignalingState>,
) -> Result<Response<Full<Bytes>>, SignalingError> {
    require_upgrade(&request, RELAY_UPGRADE)?;
    let slot = handshake_slot(state)?;
    let upgrade = hyper::upgrade::on(&mut request);
    let task_state = state.clone();
    state.tracker.spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        super::relay::serve_join(task_state, TokioIo::new(upgraded), peer, slot).await;
    });
    Ok(switching_protocols(RELAY_UPGRADE))
}

/// A place among the hub handshakes in progress: an upgraded connection
/// leaves the connection cap, so its unauthenticated part has a cap of its
/// own.
fn handshake_slot(
    state: &SignalingState,
) -> Result<tokio::sync::OwnedSemaphorePermit, SignalingError> {
    state
        .channel_handshakes
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            SignalingError::Busy(format!(
                "{} hub handshakes are in progress",
                channels::MAX_HANDSHAKES
            ))
        })
}

fn require_upgrade(
    request: &Request<Incoming>,
    protocol: &'static str,
) -> Result<(), SignalingError> {
    let upgrade = request
        .headers()
        .get(UPGRADE)
        .and_then(|value| value.to_str().ok());
    match upgrade {
        Some(value) if value.eq_ignore_ascii_case(protocol) => Ok(()),
        _ => Err(SignalingError::UpgradeRequired(protocol)),
    }
}

fn switching_protocols(protocol: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static(protocol));
    response
}

/// With a join token set, only its holders may register or read the device
/// list (ids, addresses and keys are not for whoever can reach the port).
fn authorize(request: &Request<Incoming>, state: &SignalingState) -> Result<(), SignalingError> {
    let token = state.settings().join_token;
    if token.is_empty() || bearer_matches(request, &token) {
        Ok(())
    } else {
        Err(SignalingError::Unauthorized)
    }
}

/// Whether the request carries `Authorization: Bearer TOKEN`.
fn bearer_matches(request: &Request<Incoming>, token: &str) -> bool {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|sent| token_matches(sent, token))
}
