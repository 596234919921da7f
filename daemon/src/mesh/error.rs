//! Why a link could not be made, why one ended, and why a request got no
//! answer: typed on the whole mesh path, so a peer task can tell a refused
//! dial from a wrong peer, and turned into text only where meshctl or the
//! log shows them (docs/mesh.md, "Failures"). Each `Display` is the text
//! operators and scripts already know.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use meshd_link::LinkError;

use super::hub_client::HubError;
use super::link_io::{KEEPALIVE, READ_SILENCE_LIMIT, SILENCE_LIMIT, WRITE_STALL_LIMIT};
use crate::device_id::DeviceId;
use crate::hub_wire::HubUrl;

/// Why one endpoint of a dial round gave no link.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{endpoint}: {kind}")]
pub struct AttemptError {
    /// The endpoint dialled.
    pub endpoint: SocketAddr,
    /// What went wrong there.
    pub kind: AttemptKind,
}

/// What went wrong with one attempt at a link.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AttemptKind {
    /// Nothing listens at the endpoint.
    #[error("{0}")]
    Refused(Arc<io::Error>),
    /// No route to the endpoint.
    #[error("{0}")]
    Unreachable(Arc<io::Error>),
    /// Any other failure to connect.
    #[error("{0}")]
    Connect(Arc<io::Error>),
    /// No answer within the attempt's time.
    #[error("connect timed out")]
    TimedOut,
    /// The Noise handshake failed: another key, garbage, or a drop.
    #[error("{0}")]
    Handshake(Arc<LinkError>),
    /// The other end proved its key but named other ids than expected.
    #[error("answered as {from:?} expecting {to:?}")]
    WrongPeer {
        /// The id it claims.
        from: String,
        /// The id it thinks it talks to.
        to: String,
    },
    /// The attempt's task ended without an answer.
    #[error("{0}")]
    Aborted(String),
}

impl AttemptKind {
    /// Classifies a connect error.
    pub fn connect(error: io::Error) -> AttemptKind {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => AttemptKind::Refused(Arc::new(error)),
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                AttemptKind::Unreachable(Arc::new(error))
            }
            _ => AttemptKind::Connect(Arc::new(error)),
        }
    }
}

impl From<LinkError> for AttemptKind {
    fn from(error: LinkError) -> Self {
        AttemptKind::Handshake(Arc::new(error))
    }
}

/// Why a dial round gave no link.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// Nothing to dial.
    #[error("the device advertises no endpoint")]
    NoEndpoint,
    /// Every attempt failed, in the order they ended.
    #[error("{}", join(.0))]
    Attempts(Vec<AttemptError>),
}

fn join(errors: &[AttemptError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why joining a relay gave no link.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JoinRelayError {
    /// The hub could not be reached or refused the join.
    #[error("relay at {url}: {source}")]
    Hub {
        /// The hub.
        url: HubUrl,
        /// What the exchange with it said.
        source: Arc<HubError>,
    },
    /// The end-to-end handshake through the relay failed.
    #[error("relay at {url}: {source}")]
    Handshake {
        /// The hub.
        url: HubUrl,
        /// How it failed.
        source: AttemptKind,
    },
    /// The other end of the relay is not the device with its listed key.
    #[error("relay at {url}: the other end is not {peer} with its listed key")]
    WrongPeer {
        /// The hub.
        url: HubUrl,
        /// The device expected.
        peer: DeviceId,
    },
}

/// Why a link ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkDown {
    /// In use, and no answer (pong or ack) for the silence limit: the path
    /// is dead.
    #[error("silent for {}s", SILENCE_LIMIT.as_secs())]
    Silent,
    /// The peer joined a relay, so it has no direct link, and this one did
    /// not answer a check ping within a keepalive.
    #[error("no answer within {}s after the peer moved to a relay", KEEPALIVE.as_secs())]
    Unanswered,
    /// Nothing at all read for the reader's limit, in use or not.
    #[error("nothing heard for {}s", READ_SILENCE_LIMIT.as_secs())]
    Quiet,
    /// The peer closed the stream between frames.
    #[error("closed by the peer")]
    ClosedByPeer,
    /// The peer said Close, with its reason.
    #[error("closed by the peer: {0}")]
    PeerClosed(String),
    /// Reading failed: a broken stream, a record that does not decrypt, a
    /// malformed frame.
    #[error("{0}")]
    Read(Arc<LinkError>),
    /// Writing failed.
    #[error("{0}")]
    Write(Arc<LinkError>),
    /// A write made no progress for the stall limit.
    #[error("no write progress for {}s", WRITE_STALL_LIMIT.as_secs())]
    WriteStalled,
    /// The link's write queue is full: the peer stopped reading.
    #[error("the peer stopped reading (write queue full)")]
    WriteQueueFull,
}

/// Why there is no link to a device, as a failed send or ping reports it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoLinkReason {
    /// Nothing has been tried and failed yet.
    #[error("not connected yet")]
    NotYet,
    /// The last dial round failed.
    #[error("{0}")]
    Dial(DialError),
    /// The last relay attempt failed.
    #[error("{0}")]
    Relay(JoinRelayError),
    /// A hub refused the relay request, in its words.
    #[error("{0}")]
    RelayRefused(String),
    /// The last link ended.
    #[error("{0}")]
    Link(LinkDown),
}

/// Why a peer task stopped, or is not there to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    /// meshd is shutting down.
    #[error("meshd is stopping")]
    MeshdStopping,
    /// No hub lists the device any more (or lists another key for it).
    #[error("the device left the signaling servers' lists")]
    DeviceLeft,
    /// Its task died and waits for its restart.
    #[error("its link task ended and is being restarted; try again in a moment")]
    Restarting,
    /// The task ended before it answered.
    #[error("the link task ended")]
    TaskEnded,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn connect_errors_keep_their_kind() {
        let refused = AttemptKind::connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(matches!(refused, AttemptKind::Refused(_)));
        let unreachable = AttemptKind::connect(io::Error::from(io::ErrorKind::HostUnreachable));
        assert!(matches!(unreachable, AttemptKind::Unreachable(_)));
        let other = AttemptKind::connect(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(other, AttemptKind::Connect(_)));
    }

    #[test]
    fn a_failed_round_reads_as_it_always_did() {
        let error = DialError::Attempts(vec![
            AttemptError {
                endpoint: addr("10.0.0.2:8082"),
                kind: AttemptKind::TimedOut,
            },
            AttemptError {
                endpoint: addr("203.0.113.2:40000"),
                kind: AttemptKind::WrongPeer {
                    from: "mallory".into(),
                    to: "alpha".into(),
                },
            },
        ]);
        assert_eq!(
            error.to_string(),
            r#"10.0.0.2:8082: connect timed out; 203.0.113.2:40000: answered as "mallory" expecting "alpha""#
        );
        assert_eq!(
            DialError::NoEndpoint.to_string(),
            "the device advertises no endpoint"
        );
    }

    #[test]
    fn link_and_stop_reasons_read_as_the_docs_and_tests_expect() {
        assert_eq!(LinkDown::Silent.to_string(), "silent for 6s");
        assert_eq!(
            LinkDown::PeerClosed("moved to a direct path".into()).to_string(),
            "closed by the peer: moved to a direct path"
        );
        assert_eq!(
            LinkDown::WriteStalled.to_string(),
            "no write progress for 30s"
        );
        assert_eq!(
            NoLinkReason::Link(LinkDown::WriteQueueFull).to_string(),
            "the peer stopped reading (write queue full)"
        );
        assert_eq!(StopReason::MeshdStopping.to_string(), "meshd is stopping");
        let url = HubUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            JoinRelayError::WrongPeer {
                url,
                peer: DeviceId::parse("beta").unwrap()
            }
            .to_string(),
            "relay at http://127.0.0.1:8080: the other end is not beta with its listed key"
        );
    }
}
