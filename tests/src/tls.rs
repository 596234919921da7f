//! A chat client over TLS for tests (docs/chat-protocol.md#tls): TLS 1.3
//! only, trusting exactly the certificate whose SHA-256 it is given, as
//! `meshctl chat --fingerprint` does. The verifier and the configuration are
//! meshctl's (`meshd_ipc::tls`, unit-tested there); the connection is rustls'
//! own blocking `StreamOwned` rather than meshctl's reader/writer split.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use meshd_ipc::tls::FingerprintMismatch;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

use crate::chat::LINE_WAIT;

/// `sha256:<lower-case hex>` of DER bytes, as meshd prints fingerprints.
pub fn fingerprint(der: &[u8]) -> String {
    meshd_ipc::fingerprint::format(&meshd_ipc::tls::sha256(der))
}

/// The DER of the first certificate in a PEM file.
pub fn der_of_pem(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

/// One TLS connection to the chat server.
pub struct TlsChatClient {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsChatClient {
    /// Connects and completes the handshake, trusting only `fingerprint`;
    /// `Err` carries the handshake's error.
    pub fn try_connect_raw(addr: SocketAddr, fingerprint: &str) -> Result<TlsChatClient, String> {
        let pinned = meshd_ipc::fingerprint::parse(fingerprint).map_err(|e| e.to_string())?;
        let config = meshd_ipc::tls::pinned_client_config(pinned).expect("TLS 1.3 with ring");
        let name = ServerName::try_from("localhost").expect("a server name");
        let mut conn = ClientConnection::new(config, name).expect("a client");
        let mut socket = TcpStream::connect(addr).expect("connecting to the chat server");
        socket.set_nodelay(true).expect("nodelay");
        socket
            .set_read_timeout(Some(LINE_WAIT))
            .expect("read timeout");
        while conn.is_handshaking() {
            conn.complete_io(&mut socket)
                .map_err(|e| match FingerprintMismatch::in_io(&e) {
                    Some(mismatch) => mismatch.to_string(),
                    None => e.to_string(),
                })?;
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
