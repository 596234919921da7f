//! The device's side of the signaling HTTP API (CONTRACT section 3): one
//! HTTP/1.1 connection per round, over a TCP stream meshd dials itself so
//! that it can read the local address the route to the hub uses.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::hub_protocol::RELAY_TOKEN_HEADER;

/// A stream after an HTTP upgrade (a hub channel or a relay).
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Time for connecting and for each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest `GET /devices` answer read: ample for the hub's maximum
/// device count with every field at its longest.
const MAX_LIST_BYTES: usize = 32 << 20;

/// A signaling server from `[mesh] signaling`, `http://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct HubUrl {
    /// As written in the config.
    pub url: String,
    authority: String,
}

impl HubUrl {
    /// Parses a URL that config validation already accepted.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|error| format!("{url:?} is not a URL: {error}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .to_string();
        Ok(HubUrl {
            url: url.to_owned(),
            authority,
        })
    }
}

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

/// `POST /register` body.
#[derive(Debug, Serialize)]
pub struct RegisterBody<'a> {
    /// Device id.
    pub id: &'a str,
    /// The endpoint on the route to this hub.
    pub addr: String,
    /// Base64 public key.
    pub pubkey: &'a str,
    /// Every endpoint this device advertises.
    pub endpoints: Vec<String>,
}

/// `POST /register` answer (the fields meshd uses).
#[derive(Debug, Deserialize)]
pub struct Registered {
    /// This device's address as the hub saw it.
    pub observed: String,
    /// Re-register well within this.
    pub ttl_secs: u64,
}

/// One element of `GET /devices`, as sent; validated by the roster.
/// Serialize is for the strict decoder's shape check.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ListedDevice {
    /// Device id.
    pub id: String,
    /// Registered address.
    pub addr: String,
    /// Source address of the registration.
    #[serde(default)]
    pub observed: String,
    /// Base64 key, if any.
    #[serde(default)]
    pub pubkey: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub last_seen: String,
    /// Further endpoints.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// The hub's `{"error": ...}` text, or the body as it is.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|body| body.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
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
        let authority = hub.authority.clone();
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
        body: &RegisterBody<'_>,
        join_token: &str,
    ) -> Result<Registered, HubError> {
        let json = serde_json::to_vec(body).map_err(|error| HubError::Decode(error.to_string()))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/register")
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if !join_token.is_empty() {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {join_token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(json)))
            .map_err(|error| HubError::Decode(error.to_string()))?;
        let body = self.exchange(request, 64 * 1024).await?;
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
                let body = Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map(|body| body.to_bytes())
                    .unwrap_or_default();
                return Err(HubError::Status {
                    status,
                    message: error_message(&body),
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
        #[derive(Deserialize)]
        struct Observed {
            observed: String,
        }
        let body = self
            .exchange(self.last_get("/observed")?, 64 * 1024)
            .await?;
        serde_json::from_slice::<Observed>(&body)
            .map(|answer| answer.observed)
            .map_err(|error| HubError::Decode(error.to_string()))
    }

    /// Lists the live devices. Always the last request on a connection: it
    /// asks the hub to close first, so the TIME_WAIT state stays on the hub's
    /// side and this device can reconnect from its mesh port at once.
    pub async fn devices(&mut self) -> Result<Vec<ListedDevice>, HubError> {
        let body = self
            .exchange(self.last_get("/devices")?, MAX_LIST_BYTES)
            .await?;
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
                    message: error_message(&body),
                })
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| HubError::Timeout)?
    }
}
