//! Opening a link to a device: directly, by racing its endpoints from the
//! mesh port, or through a hub's relay. Both end in the same Noise_IK
//! handshake over whatever stream they got, so the rest of meshd sees one
//! kind of link with a [`Path`] label.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshd_ipc::LinkState;
use meshd_link::{Hello, Link, LinkError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::Local;
use super::error::{AttemptError, AttemptKind, DialError, JoinRelayError};
use super::hub_client::HubConnection;
use super::hubs::{HubId, VouchedHub};
use crate::device_id::DeviceId;
use crate::hub_wire::{RELAY_PATH, RELAY_UPGRADE};
use crate::metrics::{HandshakeFailure, Metrics, PathLabel, metrics};
use crate::public_key::PublicKey;

/// Time allowed to open a TCP connection to a local or advertised endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Time a dial to a device's public endpoint (the address its hub
/// observed) stays open. Behind NATs that drop unsolicited packets the
/// dial goes unanswered until the device dials back, and the two dials
/// meet in the NATs as a TCP simultaneous open; the SYN retransmissions of
/// a waiting dial keep its NAT mapping open meanwhile.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(25);

/// The same wait while a relayed link is up: the peer is known to be
/// reachable through the hub, so every round is coordinated and fresh
/// dials every few seconds find a path that came back sooner than the
/// retransmissions of one long dial would.
pub const RELAYED_PUNCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Endpoints are dialled in order of preference, each this long after the
/// one before or as soon as it failed, whichever comes first (as in Happy
/// Eyeballs, RFC 8305), and the first link made wins: a preferred path that
/// answers is never beaten by a later one, and one that is refused or
/// unreachable costs nothing.
const STAGGER: Duration = Duration::from_millis(250);

/// Any byte stream a link runs over: a TCP connection, or a relay.
pub trait LinkStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> LinkStream for T {}

/// The stream under every link.
pub type Stream = Box<dyn LinkStream>;

/// How a link reaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// A TCP connection between the two devices.
    Direct,
    /// Two TCP connections to a hub, spliced by it.
    Relayed,
}

impl Path {
    /// As `meshctl devices` and `ping` show it.
    pub fn state(self) -> LinkState {
        match self {
            Path::Direct => LinkState::Direct,
            Path::Relayed => LinkState::Relayed,
        }
    }

    /// As a metrics label.
    pub fn label(self) -> PathLabel {
        match self {
            Path::Direct => PathLabel::Direct,
            Path::Relayed => PathLabel::Relayed,
        }
    }
}

/// An open link, handed to the peer task by a dial, the listener or a
/// relay.
pub struct Established {
    /// The link.
    pub link: Link<Stream>,
    /// The peer's hello from the handshake.
    pub hello: Hello,
    /// We ran the handshake's initiator side.
    pub dialled: bool,
    /// The peer's address on a direct link; the hub's on a relayed one.
    pub endpoint: SocketAddr,
    /// Direct or relayed.
    pub path: Path,
}

/// Who to reach, and how to check that we did.
#[derive(Clone)]
pub struct Target {
    /// The device.
    pub peer: DeviceId,
    /// Its key, as the hubs list it.
    pub key: PublicKey,
}

/// Dials `candidates` (each within [`CONNECT_TIMEOUT`]) and `public` (the
/// hole-punching endpoint, within `punch_timeout`) in a staggered race;
/// the first link made to the right device wins and the other attempts are
/// dropped. The errors of all attempts if none succeeds.
pub async fn dial(
    local: &Arc<Local>,
    target: &Target,
    candidates: &[SocketAddr],
    public: Option<SocketAddr>,
    punch_timeout: Duration,
) -> Result<Established, DialError> {
    let mut queue: VecDeque<(SocketAddr, Duration)> = candidates
        .iter()
        .filter(|endpoint| Some(**endpoint) != public)
        .map(|endpoint| (*endpoint, CONNECT_TIMEOUT))
        .chain(public.map(|endpoint| (endpoint, punch_timeout)))
        .collect();
    if public.is_some() {
        metrics().holepunch_attempts.inc();
    }
    let mut attempts = JoinSet::new();
    // Which endpoint each attempt dials, for an attempt that dies.
    let mut dialling = HashMap::new();
    let mut errors = Vec::new();
    loop {
        if let Some((endpoint, timeout)) = queue.pop_front() {
            let local = local.clone();
            let target = target.clone();
            let attempt = attempts.spawn(async move {
                dial_one(&local, &target, endpoint, timeout)
                    .await
                    .map_err(|kind| AttemptError { endpoint, kind })
            });
            dialling.insert(attempt.id(), endpoint);
        }
        if attempts.is_empty() {
            break;
        }
        // Until the next one is due: the stagger, or a failure.
        tokio::select! {
            joined = attempts.join_next() => match joined {
                Some(Ok(Ok(established))) => {
                    if public == Some(established.endpoint) {
                        metrics().holepunch_successes.inc();
                    }
                    return Ok(established);
                }
                Some(Ok(Err(error))) => errors.push(error),
                Some(Err(died)) => {
                    if let Some(endpoint) = dialling.get(&died.id()) {
                        errors.push(AttemptError {
                            endpoint: *endpoint,
                            kind: AttemptKind::Aborted(died.to_string()),
                        });
                    }
                }
                None => {}
            },
            () = tokio::time::sleep(STAGGER), if !queue.is_empty() => {}
        }
    }
    if errors.is_empty() {
        return Err(DialError::NoEndpoint);
    }
    Err(DialError::Attempts(errors))
}

async fn dial_one(
    local: &Local,
    target: &Target,
    endpoint: SocketAddr,
    timeout: Duration,
) -> Result<Established, AttemptKind> {
    let stream = match tokio::time::timeout(timeout, connect(local.listen, endpoint)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(AttemptKind::connect(error)),
        Err(_elapsed) => return Err(AttemptKind::TimedOut),
    };
    let _ = stream.set_nodelay(true);
    handshake(local, target, Box::new(stream), endpoint, Path::Direct).await
}

/// Runs the initiator's handshake over `stream` and checks the answer
/// names the device we meant.
async fn handshake(
    local: &Local,
    target: &Target,
    stream: Stream,
    endpoint: SocketAddr,
    path: Path,
) -> Result<Established, AttemptKind> {
    let hello = local.hello_to(&target.peer);
    let started = std::time::Instant::now();
    match meshd_link::connect(stream, &local.key, target.key.as_bytes(), &hello).await {
        Ok((link, remote)) if remote.from == target.peer.to_string() && remote.to == hello.from => {
            Metrics::observe(&metrics().handshake_seconds, started.elapsed());
            Ok(Established {
                link,
                hello: remote,
                dialled: true,
                endpoint,
                path,
            })
        }
        Ok((_, remote)) => {
            metrics().handshake_failed(HandshakeFailure::WrongPeer);
            Err(AttemptKind::WrongPeer {
                from: remote.from,
                to: remote.to,
            })
        }
        Err(error) => {
            metrics().handshake_failed(HandshakeFailure::of(&error));
            Err(AttemptKind::from(error))
        }
    }
}

/// Connects to `endpoint` from the mesh port, so that the NAT mapping is the
/// one the hubs observed and a peer dialling back at the same time meets
/// this connection in the NATs (TCP simultaneous open). Falls back to any
/// port when the mesh port cannot be used for this destination (a previous
/// connection to it in TIME_WAIT).
async fn connect(mesh: SocketAddr, endpoint: SocketAddr) -> std::io::Result<TcpStream> {
    if mesh.is_ipv4() == endpoint.is_ipv4() {
        let socket = super::reusable_socket(mesh)?;
        match socket.connect(endpoint).await {
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                ) =>
            {
                tracing::debug!(%endpoint, %error, "mesh port unusable for this dial; dialling from another port");
            }
            outcome => return outcome,
        }
    }
    TcpStream::connect(endpoint).await
}

/// Joins the relay that hub `hub` offered with `token`: on that hub, or on
/// the hub of its cluster it vouched for (`at`). With `dial` this side runs
/// the link's initiator handshake; otherwise it answers, and accepts only
/// the device `target` with its listed key. The hub splices bytes it
/// cannot read: the handshake is end to end.
pub async fn relay(
    local: &Local,
    hub: HubId,
    at: Option<&VouchedHub>,
    token: &str,
    dial: bool,
    target: &Target,
) -> Result<Established, JoinRelayError> {
    // Without `at`, the hub whose channel carried the offer: the hub
    // itself, or the stand-in its channel went to.
    let target_hub = local.hubs.get(hub).target();
    let url = at.map_or(&target_hub.url, |at| &at.url);
    let hub_error = |source| JoinRelayError::Hub {
        url: url.clone(),
        source: Arc::new(source),
    };
    let handshake_error = |source| JoinRelayError::Handshake {
        url: url.clone(),
        source,
    };
    let connection = HubConnection::open(url, None).await.map_err(hub_error)?;
    let endpoint = connection.remote_addr();
    let upgraded = connection
        .upgrade(RELAY_PATH, RELAY_UPGRADE)
        .await
        .map_err(hub_error)?;
    // The offer came over a channel that proved the hub's key, so the key
    // is known; the join proves it again, then spends the token, which only
    // this device's key can.
    let Some(hub_key) = at.map_or(target_hub.key, |at| Some(at.key)) else {
        // Forgotten by an operator since the offer: nothing to check the
        // hub against until its channel pins a key again.
        return Err(handshake_error(AttemptKind::from(LinkError::Handshake(
            "the hub's key is not known (forgotten since the relay was offered)".to_owned(),
        ))));
    };
    let (joined, _) =
        meshd_link::relay_join::join(upgraded, &local.key, token, Some(hub_key.as_bytes()))
            .await
            .map_err(|error| handshake_error(AttemptKind::from(error)))?;
    let stream: Stream = Box::new(joined);
    if dial {
        return handshake(local, target, stream, endpoint, Path::Relayed)
            .await
            .map_err(handshake_error);
    }
    let started = std::time::Instant::now();
    let protocol_error = |error| {
        metrics().handshake_failed(HandshakeFailure::of(&error));
        handshake_error(AttemptKind::from(error))
    };
    let inbound = meshd_link::accept(stream, &local.key)
        .await
        .map_err(protocol_error)?;
    let hello = inbound.hello().clone();
    if inbound.remote_key() != target.key.as_bytes() {
        metrics().handshake_failed(HandshakeFailure::WrongKey);
        return Err(JoinRelayError::WrongPeer {
            url: url.clone(),
            peer: target.peer.clone(),
        });
    }
    if hello.from != target.peer.to_string() || hello.to != local.id.to_string() {
        metrics().handshake_failed(HandshakeFailure::WrongPeer);
        return Err(JoinRelayError::WrongPeer {
            url: url.clone(),
            peer: target.peer.clone(),
        });
    }
    let link = inbound
        .complete(&local.hello_to(&target.peer))
        .await
        .map_err(protocol_error)?;
    Metrics::observe(&metrics().handshake_seconds, started.elapsed());
    Ok(Established {
        link,
        hello,
        dialled: false,
        endpoint,
        path: Path::Relayed,
    })
}
