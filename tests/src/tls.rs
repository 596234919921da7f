//! A chat client over TLS for tests (docs/chat-protocol.md#tls): rustls'
//! blocking API, TLS 1.3 only, trusting exactly the certificate whose
//! SHA-256 it is given, as `meshctl chat --fingerprint` does. Written here
//! rather than borrowed from meshctl, so the tests check meshd against a
//! second, independent client.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use crate::chat::LINE_WAIT;

/// `sha256:<lower-case hex>` of DER bytes, as meshd prints fingerprints.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The DER of the first certificate in a PEM file.
pub fn der_of_pem(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

/// Trusts the one certificate with this fingerprint; still checks the
/// handshake signatures.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
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
                "fingerprint mismatch: the server has {actual}, the test pinned {}",
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

/// One TLS connection to the chat server.
pub struct TlsChatClient {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsChatClient {
    /// Connects and completes the handshake, trusting only `fingerprint`;
    /// `Err` carries the handshake's error.
    pub fn try_connect_raw(addr: SocketAddr, fingerprint: &str) -> Result<TlsChatClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Pinned {
            fingerprint: fingerprint.to_owned(),
            algorithms: provider.signature_verification_algorithms,
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 with ring")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("a server name");
        let mut conn = ClientConnection::new(Arc::new(config), name).expect("a client");
        let mut socket = TcpStream::connect(addr).expect("connecting to the chat server");
        socket.set_nodelay(true).expect("nodelay");
        socket
            .set_read_timeout(Some(LINE_WAIT))
            .expect("read timeout");
        while conn.is_handshaking() {
            conn.complete_io(&mut socket).map_err(|e| e.to_string())?;
        }
        Ok(TlsChatClient {
            stream: BufReader::new(StreamOwned::new(conn, socket)),
        })
    }

    /// Connects, pinned to `fingerprint`, and reads `HELLO`.
    pub fn connect(addr: SocketAddr, fingerprint: &str) -> TlsChatClient {
        let mut client = TlsChatClient::try_connect_raw(addr, fingerprint)
            .unwrap_or_else(|error| panic!("TLS handshake with {addr}: {error}"));
        assert_eq!(client.line(), "HELLO meshd-chat 1");
        client
    }

    /// Connects and logs in, asserting `OK`.
    pub fn login(addr: SocketAddr, fingerprint: &str, user: &str, password: &str) -> TlsChatClient {
        let mut client = TlsChatClient::connect(addr, fingerprint);
        client.send(&format!("AUTH {user} {password}"));
        assert_eq!(client.line(), format!("OK {user}"));
        client
    }

    /// Sends one line (a `\n` is appended).
    pub fn send(&mut self, line: &str) {
        let stream = self.stream.get_mut();
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("sending over TLS");
        stream.flush().expect("flushing TLS");
    }

    /// The next server line without its `\n`; panics on timeout or close.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(0) => panic!("the chat server closed the TLS connection"),
            Ok(_) => line.trim_end_matches('\n').to_owned(),
            Err(e) => panic!("no chat line over TLS within {LINE_WAIT:?}: {e}"),
        }
    }

    /// Reads lines until `expected`, skipping other users' JOIN and LEAVE.
    pub fn expect(&mut self, expected: &str) {
        loop {
            let line = self.line();
            if line == expected {
                return;
            }
            assert!(
                line.starts_with("JOIN ") || line.starts_with("LEAVE "),
                "expected {expected:?}, got {line:?}"
            );
        }
    }
}
