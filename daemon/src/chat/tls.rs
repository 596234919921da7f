//! TLS on the chat port (docs/chat-protocol.md#tls): the rustls server
//! configuration (TLS 1.3 only, ring), the certificate's fingerprint, and the
//! handshake each connection goes through before `HELLO`.
//!
//! [`load`] runs once at start, before any role serves: the certificate files
//! are read (or made) on the blocking pool. The handshake runs in the
//! connection's own task under [`HANDSHAKE_TIMEOUT`], while the connection
//! already counts against `max_clients`, so clients that never finish one
//! cost a bounded number of sockets for a bounded time. Nothing here ever
//! writes a chat line: on a TLS port a client that does not speak TLS gets a
//! failed handshake and a closed socket, never `HELLO` in clear.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::certificate::{self, CertificateError};
use crate::config::ChatTls;

/// Time a client has to complete the TLS handshake; the same as the time it
/// has to log in afterwards.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The chat port's TLS: what accepts connections, and what clients pin.
#[derive(Clone)]
pub struct ChatTlsServer {
    acceptor: TlsAcceptor,
    fingerprint: String,
}

/// Why TLS could not be set up; meshd does not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// rustls refused the pair (a key that does not match the certificate,
    /// a key type it does not support).
    #[error("{} with key {}: {reason}; {fix}", cert.display(), key.display())]
    Refused {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// What rustls said.
        reason: String,
        /// What to do.
        fix: &'static str,
    },
    /// The blocking task that reads the files died.
    #[error("loading the chat TLS certificate: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl std::fmt::Debug for ChatTlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTlsServer")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Reads (or on first start makes) the certificate and builds the server
/// configuration; file work on the blocking pool.
pub async fn load(tls: &ChatTls, state_dir: &Path) -> Result<ChatTlsServer, TlsError> {
    let (tls, state_dir) = (tls.clone(), state_dir.to_owned());
    let certified =
        tokio::task::spawn_blocking(move || certificate::load(&tls, &state_dir)).await??;
    server(certified)
}

/// The rustls configuration for `certified`.
fn server(certified: certificate::CertifiedKey) -> Result<ChatTlsServer, TlsError> {
    let certificate::CertifiedKey {
        chain,
        key,
        cert_path,
        key_path,
        fix,
    } = certified;
    let refused = |reason: rustls::Error| TlsError::Refused {
        cert: cert_path.clone(),
        key: key_path.clone(),
        reason: reason.to_string(),
        fix,
    };
    let fingerprint = chain
        .first()
        .map(|cert| fingerprint(cert))
        .unwrap_or_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(refused)?;
    // Chat clients stay connected for long; resuming a session would save a
    // handshake now and then at the cost of state per client, so there is
    // none to resume.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(ChatTlsServer {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    })
}

/// `sha256:<hex>` of a DER certificate, as `meshctl status` shows it.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut bytes = [0u8; meshd_ipc::fingerprint::SHA256_LEN];
    bytes.copy_from_slice(digest.as_ref());
    meshd_ipc::fingerprint::format(&bytes)
}

impl ChatTlsServer {
    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Runs the server side of the handshake within `timeout`; `Err` says
    /// why it failed, for a debug line.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, String> {
        match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_elapsed) => Err(format!("no handshake within {}s", timeout.as_secs())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_der_in_lower_case_hex() {
        // SHA-256 of the empty input, a value anyone can check.
        assert_eq!(
            fingerprint(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let own = certificate::load(&ChatTls::SelfSigned, dir.path()).unwrap();
        let other = certificate::load(&ChatTls::SelfSigned, &dir.path().join("other")).unwrap();
        let mixed = certificate::CertifiedKey {
            key: other.key,
            ..own
        };
        let error = server(mixed).unwrap_err().to_string();
        assert!(
            error.contains("chat-cert.pem with key") && error.contains("chat-key.pem"),
            "{error}"
        );
    }
}
