//! meshd's chat over TLS as the benchmark's clients speak it
//! (docs/chat-protocol.md#tls): TLS 1.3 with rustls and ring, trusting the
//! one certificate whose fingerprint `meshctl status` printed, as `meshctl
//! chat --fingerprint` does.
//!
//! Subscribers use tokio-rustls. The publisher is a blocking thread
//! (`publisher.rs`), so [`blocking`] turns its TLS stream into a reading and a
//! writing half over std sockets that share the rustls state behind a mutex,
//! never held while a socket blocks; only the writing half writes to the
//! socket, so records leave in order.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme};

use crate::error::BenchError;

/// Bytes read from the socket at once: what one read decrypts fits rustls'
/// buffer of received plaintext.
const READ_CHUNK: usize = 4096;

/// Trusts the certificate with one fingerprint; checks the signatures.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = fingerprint(end_entity);
        if actual == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "meshd's certificate is {actual}, not {} as given with --meshd-tls-fingerprint",
                self.fingerprint
            )))
        }
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

/// The client configuration every TLS connection of a run shares.
pub fn client_config(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, BenchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Pinned {
        fingerprint: fingerprint.to_owned(),
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| BenchError::Usage(format!("TLS 1.3 with ring: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name sent in the handshake; the pinned certificate is not checked
/// against it.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A connected TLS stream as two blocking halves for the publisher.
pub fn blocking(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> io::Result<(BlockingReader, BlockingWriter)> {
    let (socket, conn) = stream.into_inner();
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    let reader = socket.try_clone()?;
    let conn = Arc::new(Mutex::new(conn));
    Ok((
        BlockingReader {
            socket: reader,
            conn: conn.clone(),
            chunk: vec![0; READ_CHUNK],
        },
        BlockingWriter { socket, conn },
    ))
}

fn lock(conn: &Mutex<ClientConnection>) -> MutexGuard<'_, ClientConnection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Decrypts what arrives; its socket's read timeout applies.
pub struct BlockingReader {
    socket: TcpStream,
    conn: Arc<Mutex<ClientConnection>>,
    chunk: Vec<u8>,
}

impl BlockingReader {
    /// Sets the socket's read timeout.
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }
}

impl Read for BlockingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match lock(&self.conn).reader().read(out) {
                Ok(n) => return Ok(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
            let n = self.socket.read(&mut self.chunk)?;
            let mut conn = lock(&self.conn);
            let mut received = &self.chunk[..n];
            loop {
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

/// Encrypts and sends; the only writer to the socket.
pub struct BlockingWriter {
    socket: TcpStream,
    conn: Arc<Mutex<ClientConnection>>,
}

impl BlockingWriter {
    /// Sends close_notify, then closes the socket's write side.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        lock(&self.conn).send_close_notify();
        self.write_all(&[])?;
        self.socket.shutdown(Shutdown::Write)
    }
}

impl Write for BlockingWriter {
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
        // Also sends what is pending when `data` is empty (close_notify).
        loop {
            let n = self.write(data)?;
            data = &data[n..];
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
