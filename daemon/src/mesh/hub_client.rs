//! The device's HTTP with a hub: only the upgrade that turns a connection
//! into a hub channel or a relay join (docs/signaling-api.md); everything
//! else meshd says to a hub goes inside those. The TCP stream is dialled
//! here, so that it can leave from the mesh port and its local address is
//! known.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::hub_wire::{ErrorReply, HubUrl, MAX_BODY_BYTES};

/// A stream after an HTTP upgrade (a hub channel or a relay).
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Time for connecting and for the upgrade.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection to a hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Name resolution or TCP connect failed.
    #[error("connecting to {authority}: {source}")]
    Connect {
        /// host:port
        authority: String,
        /// The error.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("no answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    /// The HTTP exchange failed: often not a hub at all (a chat or mesh
    /// port answers something else, or closes).
    #[error(
        "no HTTP answer a signaling server would give ({0}); check that the URL names the hub's [signaling] listen port, not its chat or mesh port"
    )]
    Http(#[from] hyper::Error),
    /// The hub answered with an error status.
    #[error("{status}: {message}")]
    Status {
        /// The status code.
        status: StatusCode,
        /// The hub's `error` text.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

/// Connects to `authority` from the address `local`, sharing its port with
/// the mesh listener (SO_REUSEADDR and SO_REUSEPORT on both). If that port
/// cannot be used for this destination right now (a previous connection's
/// TIME_WAIT), connects from any port instead: registration still works,
/// only the hub's observed port is then not the mesh port's mapping.
async fn connect_from(local: SocketAddr, authority: &str) -> std::io::Result<TcpStream> {
    let mut last_error = None;
    for remote in tokio::net::lookup_host(authority).await? {
        if remote.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = super::reusable_socket(local)?;
        match socket.connect(remote).await {
            Ok(stream) => return Ok(stream),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                ) =>
            {
                tracing::debug!(%remote, %error, "mesh port busy for this hub; connecting from another port");
                return TcpStream::connect(remote).await;
            }
            Err(error) => last_error = Some(error),
        }
    }
    match last_error {
        Some(error) => Err(error),
        None => TcpStream::connect(authority).await,
    }
}

/// One HTTP/1.1 connection to a hub.
pub struct HubConnection {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    local: SocketAddr,
    remote: SocketAddr,
}

impl HubConnection {
    /// Resolves and dials the hub, from `from` (the mesh port, so the hub
    /// observes the NAT mapping peers must reach) or from any port.
    pub async fn open(hub: &HubUrl, from: Option<SocketAddr>) -> Result<Self, HubError> {
        let authority = hub.authority().to_owned();
        let connect = async {
            let connect_error = |source| HubError::Connect {
                authority: authority.clone(),
                source,
            };
            let stream = match from {
                Some(local) => connect_from(local, &authority)
                    .await
                    .map_err(connect_error)?,
                None => TcpStream::connect(authority.as_str())
                    .await
                    .map_err(connect_error)?,
            };
            let _ = stream.set_nodelay(true);
            let addresses = stream
                .local_addr()
                .and_then(|local| Ok((local, stream.peer_addr()?)));
            let (local, remote) = addresses.map_err(|source| HubError::Connect {
                authority: authority.clone(),
                source,
            })?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            // The connection task ends when the sender is dropped, or hands
            // the stream over after an upgrade.
            tokio::spawn(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "signaling connection ended");
                }
            });
            Ok(HubConnection {
                sender,
                authority: authority.clone(),
                local,
                remote,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| HubError::Timeout)?
    }

    /// The hub's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// This end's address: the local address on the route to the hub.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Asks for an HTTP upgrade to `protocol` at `path` (a hub channel or
    /// a relay) and returns the raw stream after the 101.
    pub async fn upgrade(mut self, path: &str, protocol: &str) -> Result<Upgraded, HubError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, protocol);
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|error| HubError::Decode(error.to_string()))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            if status != StatusCode::SWITCHING_PROTOCOLS {
                let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                    .collect()
                    .await
                    .map(|body| body.to_bytes())
                    .unwrap_or_default();
                return Err(HubError::Status {
                    status,
                    message: ErrorReply::message_of(&body),
                });
            }
            Ok(TokioIo::new(hyper::upgrade::on(response).await?))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| HubError::Timeout)?
    }
}
