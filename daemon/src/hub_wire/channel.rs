//! What travels over a hub channel (docs/mesh.md, "The hub channel"):
//! JSON messages inside the Noise channel of `meshd_link::channel`, served
//! by the signaling role and kept open by the mesh role to each of its hubs.
//! Everything meshd says to a hub goes this way: registration and
//! heartbeats included.
//!
//! Also the names of the HTTP upgrades that open a channel or a relay.

use serde::{Deserialize, Serialize};

use super::ListedDevice;

/// `GET /channel` with `Upgrade: meshd-channel/5` opens a channel.
pub const CHANNEL_PATH: &str = "/channel";
/// The upgrade protocol of a channel: after one whole device list the hub
/// sends only changes ([`FromHub::Delta`]), the device reports its links
/// ([`ToHub::Links`]), and a hub of a cluster names the cluster's other
/// hubs ([`FromHub::Hubs`]) and may offer a relay on one of them
/// ([`FromHub::Relay`]'s `at`).
pub const CHANNEL_UPGRADE: &str = "meshd-channel/5";
/// The channel before clusters: no [`FromHub::Hubs`], and relays only on
/// the hub itself. Hubs still serve it, so hubs can be upgraded before
/// their devices.
pub const CHANNEL_UPGRADE_NO_CLUSTER: &str = "meshd-channel/4";
/// The channel before link reports: deltas, and no [`ToHub::Links`]. Hubs
/// still serve it, so hubs can be upgraded before their devices.
pub const CHANNEL_UPGRADE_NO_REPORTS: &str = "meshd-channel/3";
/// The channel of meshd before deltas: the hub pushes the whole list on
/// every change. Hubs still serve it, so hubs can be upgraded before their
/// devices.
pub const CHANNEL_UPGRADE_WHOLE_LISTS: &str = "meshd-channel/2";
/// `GET /relay` with `Upgrade: meshd-relay/2` joins a relay; the token
/// travels inside the hub handshake that follows.
pub const RELAY_PATH: &str = "/relay";
/// The upgrade protocol of a relay.
pub const RELAY_UPGRADE: &str = "meshd-relay/2";

/// Device to hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToHub {
    /// Register this device (the id and key the handshake proved), or
    /// refresh its registration: the heartbeat. Answered with
    /// [`FromHub::Registered`] or [`FromHub::RegisterRefused`].
    Register {
        /// The address peers should dial, `ip:port`.
        addr: String,
        /// Further addresses the device can be reached at.
        endpoints: Vec<String>,
        /// The hub's `[signaling] join_token`, if it has one.
        join_token: String,
    },
    /// Which address does this connection come from? Answered with
    /// [`FromHub::Observed`]; needs no registration.
    Observe,
    /// Liveness, and the round-trip time to the hub.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Pass `signal` on to device `to`.
    Signal {
        /// The device to tell.
        to: String,
        /// What to tell it.
        signal: Signal,
    },
    /// Open a relay between this device and `to`.
    Relay {
        /// The other device.
        to: String,
    },
    /// This device is stopping: take it off the list now (its key binding
    /// stays), and tell the others it left.
    Leave,
    /// The device list the device holds does not follow from what it was
    /// sent (a [`FromHub::Delta`] that does not start at its version):
    /// send the whole list again.
    Resync,
    /// This device's links, for the hub's web console: sent when they
    /// change, paced (docs/web.md, "Link reports"). Replaces the last
    /// report; the hub forgets it when the channel closes.
    Links {
        /// Peers with a direct link, all of them.
        direct: u32,
        /// Peers with only a relayed link.
        relayed: u32,
        /// Peers with no link (connecting or down).
        down: u32,
        /// The links themselves, sorted by peer; at most
        /// [`super::MAX_REPORTED_LINKS`], and fewer when long ids would
        /// pass [`super::MAX_TO_HUB_BYTES`].
        links: Vec<ReportedLink>,
    },
}

/// One link in a [`ToHub::Links`] report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedLink {
    /// The device at the other end.
    pub peer: String,
    /// How the link goes now.
    pub path: ReportedPath,
    /// Last measured round-trip time, in microseconds.
    pub rtt_us: Option<u64>,
    /// Seconds the link has been on this path (none when down).
    pub up_secs: Option<u64>,
}

/// A reported link's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedPath {
    /// A direct TCP connection.
    Direct,
    /// Through a hub's relay.
    Relayed,
    /// No link now (connecting or down).
    Down,
}

/// Hub to device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromHub {
    /// The device is registered; the device list follows, then its changes.
    Registered {
        /// The channel's source address as the hub sees it.
        observed: String,
        /// Register again well within this many seconds.
        ttl_secs: u64,
    },
    /// The registration was refused; the hub closes the channel.
    RegisterRefused {
        /// The HTTP status the same refusal has in the HTTP API (400, 401,
        /// 409, 429, 503).
        status: u16,
        /// What is wrong and what to do about it.
        error: String,
    },
    /// Answer to [`ToHub::Observe`].
    Observed {
        /// The channel's source address as the hub sees it, `ip:port`.
        observed: String,
    },
    /// Answer to [`ToHub::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The whole device list: when the channel registers, when the device
    /// asked ([`ToHub::Resync`]) or fell too far behind for a delta, and on
    /// a `meshd-channel/2` channel whenever the list changes.
    Devices {
        /// The registry version (as in the `meshd-registry-version` header).
        version: u64,
        /// Every live device, as `GET /devices` lists them.
        devices: Vec<ListedDevice>,
    },
    /// What changed in the list from version `from` to `version`, merged:
    /// a device that changed twice appears once, as it is now. Applies
    /// only to a list at version `from`; a device holding another version
    /// asks for the whole list ([`ToHub::Resync`]). Arrivals, departures
    /// and moves make deltas; heartbeats that change nothing do not.
    Delta {
        /// The version this delta applies to.
        from: u64,
        /// The version the list is at after it.
        version: u64,
        /// Devices added or changed, whole.
        devices: Vec<ListedDevice>,
        /// Ids no longer listed.
        removed: Vec<String>,
    },
    /// A signal from device `from`.
    Signal {
        /// The sender, authenticated by its channel.
        from: String,
        /// What it says.
        signal: Signal,
    },
    /// A relay to `peer` is ready: join it with `GET /relay` and this token,
    /// which only this device's key can use.
    /// The device with `dial` runs the link's initiator side over it.
    Relay {
        /// The other device.
        peer: String,
        /// One-time token, valid for a few seconds.
        token: String,
        /// This device opens the link through the relay.
        dial: bool,
        /// The hub of the cluster that runs the relay, when it is not this
        /// one (the other device's channel is there): join it there, with
        /// the key given here, which this hub vouches for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<PeerHub>,
    },
    /// The other hubs of this hub's cluster, whole: sent after the
    /// registration and whenever they change. A device whose hubs all stop
    /// answering moves to one of them (docs/cluster.md, "When a hub dies").
    Hubs {
        /// Every other hub the cluster knows now.
        hubs: Vec<PeerHub>,
    },
    /// Device `id` left cleanly (it said [`ToHub::Leave`] over its own
    /// channel): drop it now rather than after its TTL.
    Left {
        /// The device that left.
        id: String,
    },
    /// A signal or relay request could not be carried out.
    Refused {
        /// The device it was for.
        to: String,
        /// Which request.
        request: Refusable,
        /// Why.
        reason: String,
    },
}

/// Another hub of the cluster, as a hub vouches for it to its devices.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerHub {
    /// Its `[node] id`.
    pub id: String,
    /// Where devices reach it (its `[cluster] advertise`).
    pub url: String,
    /// The key it proves in the hub handshake, base64.
    pub hub_key: String,
}

/// The requests a hub may refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusable {
    /// A [`ToHub::Signal`].
    Signal,
    /// A [`ToHub::Relay`].
    Relay,
}

/// Hole-punching coordination between two devices, modelled on libp2p's
/// DCUtR: the initiator times the round trip of Connect and its reply
/// through the hub, sends Sync, and dials half that time later; the other
/// device dials as soon as Sync arrives, so both dials leave together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    /// "I want a direct link; are you there?"
    Connect {
        /// Matches the reply.
        nonce: u64,
    },
    /// The answer to Connect.
    ConnectReply {
        /// Connect's nonce.
        nonce: u64,
    },
    /// "Dial my public endpoint now."
    Sync {
        /// Connect's nonce.
        nonce: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_a_stable_json_form() {
        let signal = ToHub::Signal {
            to: "b".into(),
            signal: Signal::Sync { nonce: 3 },
        };
        assert_eq!(
            serde_json::to_string(&signal).unwrap(),
            r#"{"type":"signal","to":"b","signal":{"kind":"sync","nonce":3}}"#
        );
        let relay: FromHub =
            serde_json::from_str(r#"{"type":"relay","peer":"a","token":"t","dial":false}"#)
                .unwrap();
        assert_eq!(
            relay,
            FromHub::Relay {
                peer: "a".into(),
                token: "t".into(),
                dial: false,
                at: None,
            }
        );
        // A relay on another hub of the cluster, and the cluster's hubs.
        let elsewhere = r#"{"type":"relay","peer":"a","token":"t","dial":true,"at":{"id":"h2","url":"http://10.0.0.2:8080","hub_key":"k"}}"#;
        let relay: FromHub = meshd_ipc::strict::from_slice(elsewhere.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&relay).unwrap(), elsewhere);
        let hubs =
            r#"{"type":"hubs","hubs":[{"id":"h2","url":"http://10.0.0.2:8080","hub_key":"k"}]}"#;
        let parsed: FromHub = meshd_ipc::strict::from_slice(hubs.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), hubs);
        let register = ToHub::Register {
            addr: "192.0.2.7:8082".into(),
            endpoints: vec!["10.0.0.7:8082".into()],
            join_token: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&register).unwrap(),
            r#"{"type":"register","addr":"192.0.2.7:8082","endpoints":["10.0.0.7:8082"],"join_token":""}"#
        );
        let refused: FromHub =
            serde_json::from_str(r#"{"type":"register_refused","status":409,"error":"no"}"#)
                .unwrap();
        assert_eq!(
            refused,
            FromHub::RegisterRefused {
                status: 409,
                error: "no".into()
            }
        );
    }

    #[test]
    fn channel_messages_of_another_shape_are_refused_both_ways() {
        use meshd_ipc::strict::from_slice;
        // serde alone reads a struct variant from an array of its fields.
        let array = br#"["signal","b",["sync",3]]"#;
        assert!(from_slice::<ToHub>(array).is_err());
        for wrong in [
            &br#"{"type":"signal","to":"b","signal":["sync",3]}"#[..],
            br#"{"type":"signal","to":"b","signal":{"kind":2,"nonce":3}}"#,
            br#"{"type":"relay","to":["b"]}"#,
            br#"{"type":"ping","nonce":"1"}"#,
        ] {
            assert!(
                from_slice::<ToHub>(wrong).is_err(),
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(
            from_slice::<ToHub>(
                br#"{"type":"signal","to":"b","signal":{"kind":"sync","nonce":3}}"#
            )
            .is_ok()
        );
        let refused = br#"{"type":"refused","to":"b","request":1,"reason":"x"}"#;
        assert!(from_slice::<FromHub>(refused).is_err());
        let devices =
            br#"{"type":"devices","version":1,"devices":[{"id":"a","addr":"192.0.2.7:1"}]}"#;
        assert!(from_slice::<FromHub>(devices).is_ok());
        let as_array = br#"{"type":"devices","version":1,"devices":[["a","192.0.2.7:1"]]}"#;
        assert!(from_slice::<FromHub>(as_array).is_err());
        let links = br#"{"type":"links","direct":1,"relayed":0,"down":0,"links":[{"peer":"b","path":"direct","rtt_us":900,"up_secs":3}]}"#;
        assert!(from_slice::<ToHub>(links).is_ok());
        for wrong in [
            &br#"{"type":"links","direct":1,"relayed":0,"down":0,"links":[{"peer":"b","path":2,"rtt_us":900,"up_secs":3}]}"#[..],
            br#"{"type":"links","direct":-1,"relayed":0,"down":0,"links":[]}"#,
            br#"{"type":"links","direct":1,"relayed":0,"down":0,"links":{"b":"direct"}}"#,
            br#"{"type":"links","direct":1,"relayed":0,"down":0,"links":[{"peer":"b","path":"sideways","rtt_us":null,"up_secs":null}]}"#,
        ] {
            assert!(
                from_slice::<ToHub>(wrong).is_err(),
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
    }
}
