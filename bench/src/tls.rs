//! meshd's chat over TLS as the benchmark's clients speak it
//! (docs/chat-protocol.md#tls), pinned to the fingerprint `meshctl status`
//! prints, as `meshctl chat --fingerprint` does. The verifier, the client
//! configuration and the blocking halves are meshctl's too, in
//! `meshd_ipc::tls`; here is only the glue to tokio-rustls.
//!
//! Subscribers use tokio-rustls. The publisher is a blocking thread
//! (`publisher.rs`), so [`blocking`] turns its TLS stream back into a std
//! socket and the rustls connection, split into a reading and a writing half.

use std::io;

use meshd_ipc::tls::{TlsReader, TlsWriter};
use rustls::pki_types::ServerName;

/// The name sent in the handshake; the pinned certificate is not checked
/// against it.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A connected TLS stream as two blocking halves for the publisher.
pub fn blocking(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> io::Result<(TlsReader, TlsWriter)> {
    let (socket, conn) = stream.into_inner();
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    meshd_ipc::tls::split(conn, socket)
}
