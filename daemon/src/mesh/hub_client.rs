//! The device's side of the signaling HTTP API (docs/signaling-api.md): one
//! HTTP/1.1 connection per round, over a TCP stream meshd dials itself so
//! that it can read the local address the route to the hub uses.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::hub_wire::{
    DEVICES_PATH, ErrorReply, HubUrl, ListedDevice, MAX_BODY_BYTES, MAX_FROM_HUB_BYTES,
    OBSERVED_PATH, ObservedReply, REGISTER_PATH, RELAY_TOKEN_HEADER, RegisterReply,
    RegisterRequest,
};

/// A stream after an HTTP upgrade (a hub channel or a relay).
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Time for connecting and for each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a round with a hub failed.
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

    /// Registers or refreshes this device.
    pub async fn register(
        &mut self,
        body: &RegisterRequest,
        join_token: &str,
    ) -> Result<RegisterReply, HubError> {
        let json = serde_json::to_vec(body).map_err(|error| HubError::Decode(error.to_string()))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(REGISTER_PATH)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if !join_token.is_empty() {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {join_token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(json)))
            .map_err(|error| HubError::Decode(error.to_string()))?;
        let body = self.exchange(request, MAX_BODY_BYTES).await?;
        serde_json::from_slice(&body).map_err(|error| HubError::Decode(error.to_string()))
    }

    /// Asks for an HTTP upgrade to `protocol` at `path` (a hub channel or
    /// a relay, with its token) and returns the raw stream after the 101.
    pub async fn upgrade(
        mut self,
        path: &str,
        protocol: &str,
        relay_token: Option<&str>,
    ) -> Result<Upgraded, HubError> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, protocol);
        if let Some(token) = relay_token {
            request = request.header(RELAY_TOKEN_HEADER, token);
        }
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

    /// The address this connection sees for itself from the hub's side
    /// (`GET /observed`), for `meshctl netcheck`.
    pub async fn observed(&mut self) -> Result<String, HubError> {
        let body = self
            .exchange(self.last_get(OBSERVED_PATH)?, MAX_BODY_BYTES)
            .await?;
        serde_json::from_slice::<ObservedReply>(&body)
            .map(|answer| answer.observed)
            .map_err(|error| HubError::Decode(error.to_string()))
    }

    /// Lists the live devices. Always the last request on a connection: it
    /// asks the hub to close first, so the TIME_WAIT state stays on the hub's
    /// side and this device can reconnect from its mesh port at once.
    /// With a join token, the hub lists its devices only to holders of it.
    pub async fn devices(&mut self, join_token: &str) -> Result<Vec<ListedDevice>, HubError> {
        let mut request = self.last_get(DEVICES_PATH)?;
        if !join_token.is_empty() {
            let value = hyper::header::HeaderValue::from_str(&format!("Bearer {join_token}"))
                .map_err(|error| HubError::Decode(format!("the join token: {error}")))?;
            request
                .headers_mut()
                .insert(hyper::header::AUTHORIZATION, value);
        }
        let body = self.exchange(request, MAX_FROM_HUB_BYTES).await?;
        serde_json::from_slice(&body).map_err(|error| HubError::Decode(error.to_string()))
    }

    /// A `GET` that is the connection's last request: it asks the hub to
    /// close first, so the TIME_WAIT state stays on the hub's side and the
    /// mesh port can reach the hub again at once.
    fn last_get(&self, path: &str) -> Result<Request<Full<Bytes>>, HubError> {
        Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "close")
            .body(Full::new(Bytes::new()))
            .map_err(|error| HubError::Decode(error.to_string()))
    }

    /// Sends `request`; the body of a success.
    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<Bytes, HubError> {
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|error| HubError::Decode(format!("reading the body: {error}")))?
                .to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                Err(HubError::Status {
                    status,
                    message: ErrorReply::message_of(&body),
                })
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| HubError::Timeout)?
    }
}
