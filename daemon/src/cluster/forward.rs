//! Signals and relays between hubs (docs/cluster.md, "Signals and
//! relays"): NATS requests on each hub's own subjects, `meshd.hub.<id>.*`.
//!
//! A hub asks the hub whose listing of a device is freshest (its channel is
//! most likely there) and waits [`FORWARD_TIMEOUT`] for the answer; a hub
//! that is gone has no subscriber, which NATS says at once ("no
//! responders"). Requests are small JSON documents; one that does not parse,
//! or is too large, gets a refusal and changes nothing.
//!
//! Three requests:
//! - `signal`: pass a hole-punching signal to a device of the hub asked;
//! - `relay`: a device of the asking hub wants a relay to a device of the
//!   hub asked, which runs it and returns the asker's half;
//! - `half`: the asking hub runs a relay with a device of the hub asked,
//!   which hands that device its half.

use std::net::IpAddr;
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::buckets;
use crate::device_id::DeviceId;
use crate::hub_wire::{PeerHub, Signal};
use crate::public_key::PublicKey;
use crate::shared_list::{RelayHalf, RemoteAsker, SharedList};

/// How long a hub waits for another hub's answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request a hub reads: ids are at most 64 bytes, so real
/// requests are a few hundred.
const MAX_REQUEST_BYTES: usize = 4096;

/// The subjects hub `hub` answers on, as a wildcard.
pub fn subjects_of(hub: &str) -> String {
    format!("meshd.hub.{}.*", buckets::key_of(hub))
}

fn subject(hub: &str, request: &str) -> String {
    format!("meshd.hub.{}.{request}", buckets::key_of(hub))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalRequest {
    from: String,
    to: String,
    signal: Signal,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayRequest {
    device: String,
    key: String,
    source: IpAddr,
    to: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HalfRequest {
    to: String,
    peer: String,
    token: String,
    dial: bool,
    at: PeerHub,
}

/// A hub's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
enum Reply {
    /// Done.
    Done,
    /// The asker's half of a relay the answering hub runs.
    Half { token: String, dial: bool },
    /// Not done, and why.
    Refused { reason: String },
}

/// Answers one request made to this hub on `subject`.
pub fn answer(subject: &str, payload: &[u8], shared: &dyn SharedList, me: &PeerHub) -> Bytes {
    let reply = if payload.len() > MAX_REQUEST_BYTES {
        Reply::Refused {
            reason: format!("request of {} bytes refused", payload.len()),
        }
    } else {
        let request = subject.rsplit('.').next().unwrap_or_default();
        match handle(request, payload, shared, me) {
            Ok(reply) => {
                tracing::debug!(
                    role = "cluster",
                    request,
                    "request from another hub carried out"
                );
                reply
            }
            Err(reason) => {
                tracing::debug!(role = "cluster", request, %reason, "request from another hub refused");
                Reply::Refused { reason }
            }
        }
    };
    // Infallible for these types; an empty answer reads as malformed.
    serde_json::to_vec(&reply)
        .map(Bytes::from)
        .unwrap_or_default()
}

fn handle(
    request: &str,
    payload: &[u8],
    shared: &dyn SharedList,
    me: &PeerHub,
) -> Result<Reply, String> {
    let malformed = |error: serde_json::Error| format!("malformed {request} request: {error}");
    let id = |text: &str| DeviceId::parse(text).map_err(|error| error.to_string());
    match request {
        "signal" => {
            let request: SignalRequest = serde_json::from_slice(payload).map_err(malformed)?;
            shared.deliver_signal(&id(&request.from)?, &id(&request.to)?, request.signal)?;
            Ok(Reply::Done)
        }
        "relay" => {
            let request: RelayRequest = serde_json::from_slice(payload).map_err(malformed)?;
            let asker = RemoteAsker {
                device: id(&request.device)?,
                key: PublicKey::from_base64(&request.key).map_err(|error| error.to_string())?,
                source: request.source,
            };
            let half = shared.offer_relay(&asker, &id(&request.to)?)?;
            Ok(Reply::Half {
                token: half.token,
                dial: half.dial,
            })
        }
        "half" => {
            let request: HalfRequest = serde_json::from_slice(payload).map_err(malformed)?;
            if request.at.id == me.id {
                return Err("a relay half names the hub it was sent to".to_owned());
            }
            let half = RelayHalf {
                token: request.token,
                dial: request.dial,
            };
            shared.deliver_relay_half(&id(&request.to)?, &id(&request.peer)?, half, request.at)?;
            Ok(Reply::Done)
        }
        other => Err(format!("unknown request {other:?}")),
    }
}

/// Asks hub `hub` to pass `signal` from `from` to `to`.
pub async fn signal(
    client: &Client,
    hub: &str,
    from: &DeviceId,
    to: &DeviceId,
    signal: Signal,
) -> Result<(), String> {
    let request = SignalRequest {
        from: from.to_string(),
        to: to.to_string(),
        signal,
    };
    match ask(client, hub, "signal", &request).await? {
        Reply::Done => Ok(()),
        Reply::Refused { reason } => Err(reason),
        Reply::Half { .. } => Err(format!("hub {hub} answered a signal with a relay")),
    }
}

/// Asks hub `hub` for a relay between `asker` and its device `to`.
pub async fn relay(
    client: &Client,
    hub: &str,
    asker: &RemoteAsker,
    to: &DeviceId,
) -> Result<RelayHalf, String> {
    let request = RelayRequest {
        device: asker.device.to_string(),
        key: asker.key.to_base64(),
        source: asker.source,
        to: to.to_string(),
    };
    match ask(client, hub, "relay", &request).await? {
        Reply::Half { token, dial } => Ok(RelayHalf { token, dial }),
        Reply::Refused { reason } => Err(reason),
        Reply::Done => Err(format!(
            "hub {hub} answered a relay request without a token"
        )),
    }
}

/// Asks hub `hub` to hand its device `to` its half of a relay that `at`
/// (this hub) runs with `peer`.
pub async fn relay_half(
    client: &Client,
    hub: &str,
    to: &DeviceId,
    peer: &DeviceId,
    half: RelayHalf,
    at: PeerHub,
) -> Result<(), String> {
    let request = HalfRequest {
        to: to.to_string(),
        peer: peer.to_string(),
        token: half.token,
        dial: half.dial,
        at,
    };
    match ask(client, hub, "half", &request).await? {
        Reply::Done => Ok(()),
        Reply::Refused { reason } => Err(reason),
        Reply::Half { .. } => Err(format!("hub {hub} answered a relay half with a relay")),
    }
}

/// One request to hub `hub`, and its answer.
async fn ask<T: Serialize>(
    client: &Client,
    hub: &str,
    request: &str,
    body: &T,
) -> Result<Reply, String> {
    let payload = serde_json::to_vec(body).map_err(|error| error.to_string())?;
    let asked = tokio::time::timeout(
        FORWARD_TIMEOUT,
        client.request(subject(hub, request), payload.into()),
    )
    .await;
    let message = match asked {
        Ok(Ok(message)) => message,
        Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => {
            return Err(format!(
                "hub {hub} does not answer through the cluster (it may have stopped)"
            ));
        }
        Ok(Err(error)) if error.kind() != RequestErrorKind::TimedOut => {
            return Err(format!("asking hub {hub} through the cluster: {error}"));
        }
        _ => {
            return Err(format!(
                "hub {hub} did not answer within {}s",
                FORWARD_TIMEOUT.as_secs()
            ));
        }
    };
    serde_json::from_slice(&message.payload)
        .map_err(|error| format!("hub {hub} answered something malformed: {error}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::hub_wire::ListedDevice;

    /// Records what it was asked to do.
    #[derive(Default)]
    struct Recorder {
        done: Mutex<Vec<String>>,
    }

    impl SharedList for Recorder {
        fn local_changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
            std::sync::Arc::default()
        }
        fn take_local_changes(&self) -> Vec<DeviceId> {
            Vec::new()
        }
        fn local_listing(&self, _: &DeviceId) -> Option<ListedDevice> {
            None
        }
        fn local_devices(&self) -> Vec<ListedDevice> {
            Vec::new()
        }
        fn remote_upsert(&self, _: &str, _: DeviceId, _: ListedDevice) {}
        fn remote_remove(&self, _: &str, _: &DeviceId) {}
        fn remote_drop_hub(&self, _: &str) {}
        fn remote_retain(&self, _: &std::collections::HashSet<(String, DeviceId)>) {}
        fn local_bindings(&self) -> Vec<(DeviceId, String)> {
            Vec::new()
        }
        fn binding_released(&self, _: &DeviceId) {}
        fn deliver_signal(&self, from: &DeviceId, to: &DeviceId, _: Signal) -> Result<(), String> {
            self.done
                .lock()
                .unwrap()
                .push(format!("signal {from}->{to}"));
            Ok(())
        }
        fn offer_relay(&self, asker: &RemoteAsker, to: &DeviceId) -> Result<RelayHalf, String> {
            if to.as_str() == "busy" {
                return Err("relay slots full".to_owned());
            }
            self.done.lock().unwrap().push(format!(
                "relay {}->{to} from {}",
                asker.device, asker.source
            ));
            Ok(RelayHalf {
                token: "t1".to_owned(),
                dial: true,
            })
        }
        fn deliver_relay_half(
            &self,
            to: &DeviceId,
            peer: &DeviceId,
            half: RelayHalf,
            at: PeerHub,
        ) -> Result<(), String> {
            self.done
                .lock()
                .unwrap()
                .push(format!("half {to}<-{peer} {} at {}", half.token, at.id));
            Ok(())
        }
        fn other_hubs(&self, _: Vec<PeerHub>) {}
    }

    fn me() -> PeerHub {
        PeerHub {
            id: "h1".to_owned(),
            url: "http://10.0.0.1:7000".to_owned(),
            hub_key: "k".to_owned(),
        }
    }

    fn reply(bytes: &Bytes) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn each_request_reaches_the_hub_and_is_answered() {
        let hub = Recorder::default();
        let signal = br#"{"from":"a","to":"b","signal":{"kind":"sync","nonce":3}}"#;
        let answer_to =
            |subject: &str, payload: &[u8]| reply(&answer(subject, payload, &hub, &me()));
        assert_eq!(answer_to("meshd.hub.h1.signal", signal)["result"], "done");
        let relay = br#"{"device":"a","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","source":"10.0.0.9","to":"b"}"#;
        let half = answer_to("meshd.hub.h1.relay", relay);
        assert_eq!(half["result"], "half");
        assert_eq!(half["token"], "t1");
        let other = r#"{"to":"b","peer":"a","token":"t2","dial":false,"at":{"id":"h2","url":"http://10.0.0.2:7000","hub_key":"k2"}}"#;
        assert_eq!(
            answer_to("meshd.hub.h1.half", other.as_bytes())["result"],
            "done"
        );
        assert_eq!(
            *hub.done.lock().unwrap(),
            [
                "signal a->b",
                "relay a->b from 10.0.0.9",
                "half b<-a t2 at h2"
            ]
        );
    }

    #[test]
    fn a_request_of_the_wrong_shape_is_refused_and_changes_nothing() {
        let hub = Recorder::default();
        let refused = |subject: &str, payload: &[u8]| {
            let answer = reply(&answer(subject, payload, &hub, &me()));
            assert_eq!(answer["result"], "refused", "{answer}");
            answer["reason"].as_str().unwrap().to_owned()
        };
        assert!(refused("meshd.hub.h1.signal", b"[1,2]").contains("malformed signal"));
        assert!(refused("meshd.hub.h1.signal", br#"{"from":"a","to":"b"}"#).contains("malformed"));
        assert!(
            refused(
                "meshd.hub.h1.signal",
                br#"{"from":"a","to":"b","signal":{"kind":"sync","nonce":3},"extra":1}"#
            )
            .contains("malformed")
        );
        refused(
            "meshd.hub.h1.signal",
            br#"{"from":"../x","to":"b","signal":{"kind":"sync","nonce":3}}"#,
        );
        refused(
            "meshd.hub.h1.relay",
            br#"{"device":"a","key":"short","source":"10.0.0.9","to":"b"}"#,
        );
        assert!(refused("meshd.hub.h1.other", b"{}").contains("unknown request"));
        assert!(refused("meshd.hub.h1.signal", &[b' '; 5000]).contains("5000 bytes"));
        // A half that names this hub as the relay's would loop.
        let looping = r#"{"to":"b","peer":"a","token":"t","dial":false,"at":{"id":"h1","url":"http://10.0.0.1:7000","hub_key":"k"}}"#;
        refused("meshd.hub.h1.half", looping.as_bytes());
        // The hub's own refusal is passed on as it is.
        let busy = br#"{"device":"a","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","source":"10.0.0.9","to":"busy"}"#;
        assert_eq!(refused("meshd.hub.h1.relay", busy), "relay slots full");
        assert!(hub.done.lock().unwrap().is_empty());
    }

    #[test]
    fn subjects_are_single_tokens_per_hub() {
        assert_eq!(subjects_of("hub.one"), "meshd.hub.hub=one.*");
        assert_eq!(subject("hub.one", "signal"), "meshd.hub.hub=one.signal");
    }
}
