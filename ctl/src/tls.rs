//! TLS for `meshctl chat --tls` (docs/meshctl.md#chat), with rustls' blocking
//! API over a std `TcpStream`: meshctl stays free of an async runtime.
//!
//! The server is trusted one of two ways. With `--fingerprint` only the
//! certificate whose SHA-256 is that value is accepted ([`PinnedCertificate`]),
//! as SSH pins a host key: that is how a client trusts meshd's self-signed
//! certificate. Without it the certificate must chain to a root in the
//! system's store (rustls-native-certs) and hold the host name dialled.
//!
//! After the handshake the connection is split in two like a `TcpStream`
//! clone: the chat client reads on one thread and writes on another. Both
//! halves share the rustls state behind a mutex that is never held while
//! the socket blocks; only the writer half ever writes to the socket, so
//! TLS records leave in the order they were made.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme};

use meshd_ipc::fingerprint::{self, SHA256_LEN};

/// Bytes read from the socket at once; small enough that what one read
/// decrypts always fits rustls' buffer of received plaintext.
const READ_CHUNK: usize = 4096;

fn sha256(der: &[u8]) -> [u8; SHA256_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut bytes = [0u8; SHA256_LEN];
    bytes.copy_from_slice(digest.as_ref());
    bytes
}

/// The server's certificate is not the pinned one.
#[derive(Debug)]
pub struct FingerprintMismatch {
    /// The fingerprint given with `--fingerprint`.
    pub expected: String,
    /// The certificate's.
    pub actual: String,
}

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate has fingerprint {}, not {} as given with --fingerprint; check the value with `meshctl status` on the server: if it differs there too, someone may be intercepting the connection",
            self.actual, self.expected
        )
    }
}

impl std::error::Error for FingerprintMismatch {}

/// Accepts exactly one end-entity certificate, named by its SHA-256, and
/// still checks the handshake's signatures with the provider's algorithms,
/// so a server must hold that certificate's private key.
#[derive(Debug)]
pub struct PinnedCertificate {
    expected: [u8; SHA256_LEN],
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCertificate {
    /// Pins `expected`, verifying signatures with `provider`'s algorithms.
    pub fn new(expected: [u8; SHA256_LEN], provider: &CryptoProvider) -> PinnedCertificate {
        PinnedCertificate {
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = sha256(end_entity);
        // A pinned certificate is trusted as itself: names, dates and
        // issuers do not matter, as with an SSH host key.
        if actual == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(FingerprintMismatch {
                expected: fingerprint::format(&self.expected),
                actual: fingerprint::format(&actual),
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsConnectError::Handshake(error.to_string()))?;
    let config = match trust {
        Trust::Pinned(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate::new(expected, &provider)))
            .with_no_client_auth(),
        Trust::SystemRoots => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
    };
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
    let mut conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|error| TlsConnectError::Handshake(error.to_string()))?;
    let mut socket = stream;
    while conn.is_handshaking() {
        conn.complete_io(&mut socket)
            .map_err(|error| TlsConnectError::Handshake(explain(&error, host)))?;
    }
    let reader_socket = socket
        .try_clone()
        .map_err(|error| TlsConnectError::Handshake(error.to_string()))?;
    let shared = Arc::new(Mutex::new(conn));
    Ok((
        TlsReader {
            socket: reader_socket,
            conn: shared.clone(),
            chunk: vec![0; READ_CHUNK],
        },
        TlsWriter {
            socket,
            conn: shared,
        },
    ))
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
                Some(mismatch) => mismatch.to_string(),
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

fn lock(conn: &Mutex<ClientConnection>) -> MutexGuard<'_, ClientConnection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reading half: decrypts what arrives. Its socket read blocks without
/// the lock held, so the writer is never held up by it.
pub struct TlsReader {
    socket: TcpStream,
    conn: Arc<Mutex<ClientConnection>>,
    chunk: Vec<u8>,
}

impl Read for TlsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match lock(&self.conn).reader().read(out) {
                // Ok(0): the server's close_notify.
                Ok(n) => return Ok(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
            let n = self.socket.read(&mut self.chunk)?;
            let mut conn = lock(&self.conn);
            let mut received = &self.chunk[..n];
            loop {
                // Zero bytes tell rustls the stream ended.
                conn.read_tls(&mut received)?;
                conn.process_new_packets()
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                if received.is_empty() {
                    break;
                }
            }
        }
    }
}

/// The writing half: encrypts and sends; the only writer to the socket.
pub struct TlsWriter {
    socket: TcpStream,
    conn: Arc<Mutex<ClientConnection>>,
}

impl Write for TlsWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut records = Vec::new();
        let written = {
            let mut conn = lock(&self.conn);
            let written = conn.writer().write(data)?;
            while conn.wants_write() {
                conn.write_tls(&mut records)?;
            }
            written
        };
        self.socket.write_all(&records)?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint_of(der: &[u8]) -> String {
        fingerprint::format(&sha256(der))
    }

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
    }

    #[test]
    fn the_pinned_certificate_alone_is_accepted() {
        let provider = rustls::crypto::ring::default_provider();
        let server = self_signed();
        let other = self_signed();
        let verifier = PinnedCertificate::new(sha256(server.cert.der()), &provider);
        let name = ServerName::try_from("anything.invalid").unwrap();
        assert!(
            verifier
                .verify_server_cert(server.cert.der(), &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let refused = verifier
            .verify_server_cert(other.cert.der(), &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other_error)) =
            &refused
        else {
            panic!("{refused:?}");
        };
        let mismatch = other_error
            .0
            .downcast_ref::<FingerprintMismatch>()
            .unwrap()
            .to_string();
        assert!(
            mismatch.contains(&fingerprint_of(other.cert.der()))
                && mismatch.contains(&fingerprint_of(server.cert.der())),
            "both fingerprints are named: {mismatch}"
        );
        assert!(!verifier.supported_verify_schemes().is_empty());
    }

    /// Serves a fixed certificate and key without checking that they match,
    /// as an impostor who copied a pinned certificate would.
    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// A whole handshake in memory between a pinning client and a server
    /// presenting `cert` with `key`.
    fn handshake(pinned: &[u8], cert: &[u8], key: &rcgen::KeyPair) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing = rustls::crypto::ring::sign::any_supported_type(
            &rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
        let certified =
            rustls::sign::CertifiedKey::new(vec![CertificateDer::from(cert.to_vec())], signing);
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
        let client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate::new(
                sha256(pinned),
                &provider,
            )))
            .with_no_client_auth();
        let mut client = ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("localhost").unwrap(),
        )?;
        let mut server = rustls::ServerConnection::new(Arc::new(server_config))?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn a_pinned_server_must_still_prove_its_key() {
        let server = self_signed();
        let der = server.cert.der().to_vec();
        handshake(&der, &der, &server.signing_key).expect("the real key passes");
        let impostor = rcgen::KeyPair::generate().unwrap();
        let error = handshake(&der, &der, &impostor).unwrap_err();
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
                    | rustls::Error::PeerMisbehaved(_)
            ),
            "the pinned certificate with another key is refused: {error:?}"
        );
        let other = self_signed();
        let error = handshake(other.cert.der(), &der, &server.signing_key).unwrap_err();
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(_))
            ),
            "{error:?}"
        );
    }
}
