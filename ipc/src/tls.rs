//! The client side of meshd's chat over TLS (docs/chat-protocol.md#tls),
//! written once for meshctl, the benchmark and the integration tests, so all
//! three trust meshd's certificate the same way. Behind the `tls` feature:
//! only crates that speak TLS link rustls and ring.
//!
//! A client trusts the server one of two ways: by pinning the one
//! certificate whose SHA-256 `meshctl status` prints ([`PinnedCertificate`]),
//! as SSH pins a host key, which is how meshd's self-signed certificate is
//! trusted; or by roots ([`roots_client_config`]). Either way TLS 1.3 only,
//! with ring as the provider.
//!
//! [`split`] makes a connection two blocking halves like a `TcpStream`
//! clone, so a client reads on one thread and writes on another without an
//! async runtime (meshctl links none). Both halves share the rustls state
//! behind a mutex that is never held while the socket blocks; only the
//! writing half writes to the socket, so TLS records leave in the order they
//! were made.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

use crate::fingerprint::{self, SHA256_LEN};

/// Bytes read from the socket at once; small enough that what one read
/// decrypts always fits rustls' buffer of received plaintext.
const READ_CHUNK: usize = 4096;

/// The SHA-256 of a DER certificate: what a fingerprint names.
pub fn sha256(der: &[u8]) -> [u8; SHA256_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut bytes = [0u8; SHA256_LEN];
    bytes.copy_from_slice(digest.as_ref());
    bytes
}

/// The server's certificate is not the pinned one.
#[derive(Debug)]
pub struct FingerprintMismatch {
    /// The pinned fingerprint.
    pub expected: String,
    /// The server's certificate's.
    pub actual: String,
}

impl FingerprintMismatch {
    /// The mismatch that failed a handshake with `error`, if that is why it
    /// failed. rustls itself shows it only in its `Debug` form.
    pub fn of(error: &rustls::Error) -> Option<&FingerprintMismatch> {
        match error {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<FingerprintMismatch>()
            }
            _ => None,
        }
    }

    /// [`FingerprintMismatch::of`] the rustls error inside `error`, as
    /// rustls' blocking API and tokio-rustls return handshake errors.
    pub fn in_io(error: &io::Error) -> Option<&FingerprintMismatch> {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(FingerprintMismatch::of)
    }
}

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fingerprint mismatch: the server's certificate is {}, not the pinned {}; check with `meshctl status` on the server: if it shows the pinned one, someone may be intercepting the connection; if the server's, pin that instead",
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

/// A TLS 1.3 client configuration with ring that trusts only the certificate
/// whose SHA-256 is `expected`.
pub fn pinned_client_config(
    expected: [u8; SHA256_LEN],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertificate::new(expected, &provider));
    let config = tls13(provider)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS 1.3 client configuration with ring that trusts certificates
/// chaining to `roots` and holding the name dialled.
pub fn roots_client_config(
    roots: rustls::RootCertStore,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = tls13(provider)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn tls13(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(provider).with_protocol_versions(&[&rustls::version::TLS13])
}

/// Splits a connection whose handshake is done (or under way in `conn`)
/// over the blocking `socket` into a reading and a writing half.
pub fn split(conn: ClientConnection, socket: TcpStream) -> io::Result<(TlsReader, TlsWriter)> {
    let reader_socket = socket.try_clone()?;
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

impl TlsReader {
    /// Sets the read timeout of the socket (both halves share it).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }
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

impl TlsWriter {
    /// Sends close_notify, then closes the socket's write side.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        lock(&self.conn).send_close_notify();
        self.write_all(&[])?;
        self.socket.shutdown(Shutdown::Write)
    }
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

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        // At least one write, so that an empty `data` still sends the
        // records pending (close_notify).
        loop {
            let n = self.write(data)?;
            data = &data[n..];
            if data.is_empty() {
                return Ok(());
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
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
        let mismatch = FingerprintMismatch::of(&refused)
            .unwrap_or_else(|| panic!("{refused:?}"))
            .to_string();
        assert!(
            mismatch.contains(&fingerprint_of(other.cert.der()))
                && mismatch.contains(&fingerprint_of(server.cert.der())),
            "both fingerprints are named: {mismatch}"
        );
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, refused);
        assert!(FingerprintMismatch::in_io(&wrapped).is_some());
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
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
        let mut client = ClientConnection::new(
            pinned_client_config(sha256(pinned))?,
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

    /// The split halves over a real socket: a line each way, then
    /// close_notify from each side ends the other's reading.
    #[test]
    fn the_split_halves_talk_and_close_cleanly() {
        let server = self_signed();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(server.signing_key.serialize_der().into());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server.cert.der().clone()], key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, socket);
            let mut received = Vec::new();
            // Ends with the client's close_notify, not a bare EOF.
            tls.read_to_end(&mut received).unwrap();
            tls.write_all(b"bye\n").unwrap();
            tls.conn.send_close_notify();
            tls.conn.complete_io(&mut tls.sock).unwrap();
            received
        });

        let mut socket = TcpStream::connect(addr).unwrap();
        let mut conn = ClientConnection::new(
            pinned_client_config(sha256(server.cert.der())).unwrap(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut socket).unwrap();
        }
        let (mut reader, mut writer) = split(conn, socket).unwrap();
        reader
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        writer.write_all(b"hello\n").unwrap();
        writer.shutdown_write().unwrap();
        let mut answer = Vec::new();
        reader.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"bye\n");
        assert_eq!(serving.join().unwrap(), b"hello\n");
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
        assert!(FingerprintMismatch::of(&error).is_some(), "{error:?}");
    }
}
