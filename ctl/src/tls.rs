//! TLS for `meshctl chat --tls` (docs/meshctl.md#chat). The pinned-certificate
//! verifier and the blocking reader/writer split live in `meshd_ipc::tls`,
//! shared with the bench and the tests; here is only what is meshctl's: the
//! choice of trust, the system's roots, and handshake errors explained in
//! meshctl's terms.
//!
//! The server is trusted one of two ways. With `--fingerprint` only the
//! certificate whose SHA-256 is that value is accepted, as SSH pins a host
//! key: that is how a client trusts meshd's self-signed certificate. Without
//! it the certificate must chain to a root in the system's store
//! (rustls-native-certs) and hold the host name dialled.

use std::io;
use std::net::TcpStream;

use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use meshd_ipc::fingerprint::SHA256_LEN;
use meshd_ipc::tls::{FingerprintMismatch, TlsReader, TlsWriter};

/// Why a TLS connection could not be made: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnectError {
    /// No root to check the server against.
    #[error("{0}")]
    Roots(String),
    /// The handshake failed; the text says why and what to do.
    #[error("{0}")]
    Handshake(String),
}

/// The chat client's trust in the server.
#[derive(Debug, Clone, Copy)]
pub enum Trust {
    /// `--fingerprint`: only this certificate.
    Pinned([u8; SHA256_LEN]),
    /// The system's roots, for the host name dialled.
    SystemRoots,
}

/// Runs the TLS 1.3 handshake on `stream` for `host` and returns the two
/// halves of the connection.
pub fn connect(
    stream: TcpStream,
    host: &str,
    trust: Trust,
) -> Result<(TlsReader, TlsWriter), TlsConnectError> {
    let config = match trust {
        Trust::Pinned(expected) => meshd_ipc::tls::pinned_client_config(expected),
        Trust::SystemRoots => meshd_ipc::tls::roots_client_config(system_roots()?),
    }
    .map_err(|error| TlsConnectError::Handshake(error.to_string()))?;
    // With a pinned certificate the name is not checked; it must still be a
    // valid one to send.
    let name = ServerName::try_from(host.to_owned()).or_else(|_| match trust {
        Trust::Pinned(_) => Ok(ServerName::try_from("localhost")
            .map_err(|error| TlsConnectError::Handshake(error.to_string()))?
            .to_owned()),
        Trust::SystemRoots => Err(TlsConnectError::Handshake(format!(
            "{host:?} is not a host name or IP address to check the certificate against; pass --fingerprint sha256:... from `meshctl status` on the server"
        ))),
    })?;
    let mut conn = ClientConnection::new(config, name)
        .map_err(|error| TlsConnectError::Handshake(error.to_string()))?;
    let mut socket = stream;
    while conn.is_handshaking() {
        conn.complete_io(&mut socket)
            .map_err(|error| TlsConnectError::Handshake(explain(&error, host)))?;
    }
    meshd_ipc::tls::split(conn, socket)
        .map_err(|error| TlsConnectError::Handshake(error.to_string()))
}

fn system_roots() -> Result<rustls::RootCertStore, TlsConnectError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|error| format!(" ({error})"))
            .unwrap_or_default();
        return Err(TlsConnectError::Roots(format!(
            "no trusted root certificates found on this system{why}; install them (apt-get install ca-certificates), or pass --fingerprint sha256:... from `meshctl status` on the server"
        )));
    }
    Ok(roots)
}

/// A failed handshake as one line: what failed and what to do.
fn explain(error: &io::Error, host: &str) -> String {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let pin_hint = "pass --fingerprint sha256:... from `meshctl status` on the server";
    match tls {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            match other.0.downcast_ref::<FingerprintMismatch>() {
                Some(mismatch) => format!(
                    "the server's certificate has fingerprint {}, not {} as given with --fingerprint; check the value with `meshctl status` on the server: if it differs there too, someone may be intercepting the connection",
                    mismatch.actual, mismatch.expected
                ),
                None => format!("the server's certificate was refused: {other}"),
            }
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            format!("the server's certificate is not signed by a trusted root; {pin_hint}")
        }
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "the server's certificate is not valid for {host}; connect by a name it holds, or {pin_hint}"
        ),
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
        )) => "the server's certificate has expired; renew it on the server".to_owned(),
        Some(rustls::Error::InvalidMessage(_)) => {
            "the server did not answer in TLS; is [chat] tls = true on the server? (without it, leave out --tls)".to_owned()
        }
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "the server refused the TLS handshake ({alert:?}); it needs TLS 1.3: is it meshd with [chat] tls = true?"
        ),
        Some(other) => format!("TLS handshake failed: {other}"),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the TLS handshake; is [chat] tls = true on the server?".to_owned()
        }
        None => format!("TLS handshake failed: {error}"),
    }
}
