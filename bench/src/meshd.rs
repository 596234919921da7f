//! The meshd chat client (docs/chat-protocol.md): `HELLO`, `AUTH`, then plain
//! lines out and `MSG <user> <text>` lines in. Every logged-in client is in
//! the one room, so a "subscriber" is simply a logged-in client; `JOIN`,
//! `LEAVE` and any other verb are ignored, as the contract asks of clients.
//! [`MeshdTls`] is the same client over TLS (`tls.rs`), a server of its own
//! in the tables, so the cost of TLS shows beside plain TCP in one run.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::{BenchError, excerpt};
use crate::protocol::{
    Connection, Frame, OwnedFrame, Parsed, Protocol, handshake_deadline, unexpected,
};

/// meshd's chat server, logged into as one user by every connection
/// (several sessions of one user are allowed).
#[derive(Debug, Clone)]
pub struct Meshd {
    addr: SocketAddr,
    user: Arc<str>,
    password: Arc<str>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Meshd {
    /// The chat server at `addr`, logged into as `user`.
    pub fn new(addr: SocketAddr, user: &str, password: &str) -> Meshd {
        Meshd {
            addr,
            user: user.into(),
            password: password.into(),
            tls: None,
        }
    }

    /// Connects, reads `HELLO` and logs in; returns after `OK`.
    async fn login(&self) -> Result<Connection, BenchError> {
        let mut conn = match &self.tls {
            None => Connection::open(Self::NAME, self.addr).await?,
            Some(config) => Connection::open_tls(MeshdTls::NAME, self.addr, config.clone()).await?,
        };
        let deadline = handshake_deadline();
        match conn.next_frame(self, deadline, "HELLO").await? {
            OwnedFrame::Other(line) if line.starts_with(b"HELLO meshd-chat ") => {}
            other => return Err(unexpected(Self::NAME, "HELLO meshd-chat", &other)),
        }
        let auth = format!("AUTH {} {}\n", self.user, self.password);
        conn.send(Self::NAME, auth.as_bytes()).await?;
        let ok = format!("OK {}", self.user);
        loop {
            match conn.next_frame(self, deadline, &ok).await? {
                OwnedFrame::Other(line) if line == ok.as_bytes() => return Ok(conn),
                // Unknown verbs are ignored (docs/chat-protocol.md).
                OwnedFrame::Other(_) => {}
                other => return Err(unexpected(Self::NAME, &ok, &other)),
            }
        }
    }
}

impl Protocol for Meshd {
    const NAME: &'static str = "meshd";

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn parse<'a>(&self, buf: &'a [u8]) -> Parsed<'a> {
        parse_line(buf)
    }

    fn encode_publish(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(payload);
        out.push(b'\n');
    }

    fn pong(&self) -> &'static [u8] {
        // meshd never pings.
        b""
    }

    fn goodbye(&self) -> &'static [u8] {
        b"/quit\n"
    }

    async fn subscriber(&self) -> Result<Connection, BenchError> {
        self.login().await
    }

    async fn publisher(&self) -> Result<Connection, BenchError> {
        self.login().await
    }

    /// meshd sends `OK` just before the session joins the room, and `JOIN`
    /// to the others just after it subscribed to the room's ring; so once
    /// the publisher saw one `JOIN` per subscriber, every subscriber gets
    /// every later message. Each `JOIN` gets its own deadline: 10,000
    /// logins take minutes.
    async fn await_subscribers(
        &self,
        publisher: &mut Connection,
        subscribers: usize,
    ) -> Result<(), BenchError> {
        let mut joined = 0;
        while joined < subscribers {
            let waiting_for = format!("JOIN {} of {subscribers}", joined + 1);
            match publisher
                .next_frame(self, handshake_deadline(), &waiting_for)
                .await?
            {
                OwnedFrame::Other(line) if line.starts_with(b"JOIN ") => joined += 1,
                OwnedFrame::Other(_) => {}
                other => return Err(unexpected(Self::NAME, "JOIN lines", &other)),
            }
        }
        Ok(())
    }
}

/// meshd's chat server with `[chat] tls = true`: the same client inside TLS.
#[derive(Debug, Clone)]
pub struct MeshdTls(Meshd);

impl MeshdTls {
    /// The TLS chat server at `addr`, logged into as `user`, trusted by the
    /// certificate's fingerprint.
    pub fn new(
        addr: SocketAddr,
        user: &str,
        password: &str,
        fingerprint: &str,
    ) -> Result<MeshdTls, BenchError> {
        let mut meshd = Meshd::new(addr, user, password);
        let pinned = meshd_ipc::fingerprint::parse(fingerprint)
            .map_err(|error| BenchError::Usage(format!("--meshd-tls-fingerprint: {error}")))?;
        let config = meshd_ipc::tls::pinned_client_config(pinned)
            .map_err(|error| BenchError::Usage(format!("TLS 1.3 with ring: {error}")))?;
        meshd.tls = Some(config);
        Ok(MeshdTls(meshd))
    }
}

impl Protocol for MeshdTls {
    const NAME: &'static str = "meshd-tls";

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn parse<'a>(&self, buf: &'a [u8]) -> Parsed<'a> {
        parse_line(buf)
    }

    fn encode_publish(&self, payload: &[u8], out: &mut Vec<u8>) {
        self.0.encode_publish(payload, out);
    }

    fn pong(&self) -> &'static [u8] {
        self.0.pong()
    }

    fn goodbye(&self) -> &'static [u8] {
        self.0.goodbye()
    }

    async fn subscriber(&self) -> Result<Connection, BenchError> {
        self.0.login().await
    }

    async fn publisher(&self) -> Result<Connection, BenchError> {
        self.0.login().await
    }

    async fn await_subscribers(
        &self,
        publisher: &mut Connection,
        subscribers: usize,
    ) -> Result<(), BenchError> {
        self.0.await_subscribers(publisher, subscribers).await
    }
}

/// The hubs of one meshd cluster (docs/cluster.md, "Chat across hubs") as
/// one server: the publisher logs in at the first hub, and subscribers at
/// each hub in turn, so most lines cross the cluster to reach them.
#[derive(Debug, Clone)]
pub struct MeshdCluster {
    hubs: Arc<[Meshd]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl MeshdCluster {
    /// The chat servers of the hubs at `addrs`, each logged into as `user`.
    pub fn new(
        addrs: &[SocketAddr],
        user: &str,
        password: &str,
    ) -> Result<MeshdCluster, BenchError> {
        if addrs.is_empty() {
            return Err(BenchError::Usage(
                "--meshd-cluster needs at least one address".to_owned(),
            ));
        }
        Ok(MeshdCluster {
            hubs: addrs
                .iter()
                .map(|addr| Meshd::new(*addr, user, password))
                .collect(),
            next: Arc::default(),
        })
    }

    fn first(&self) -> &Meshd {
        // Infallible: `new` refuses an empty list.
        &self.hubs[0]
    }
}

impl Protocol for MeshdCluster {
    const NAME: &'static str = "meshd-cluster";

    fn addr(&self) -> SocketAddr {
        self.first().addr
    }

    fn parse<'a>(&self, buf: &'a [u8]) -> Parsed<'a> {
        parse_line(buf)
    }

    fn encode_publish(&self, payload: &[u8], out: &mut Vec<u8>) {
        self.first().encode_publish(payload, out);
    }

    fn pong(&self) -> &'static [u8] {
        self.first().pong()
    }

    fn goodbye(&self) -> &'static [u8] {
        self.first().goodbye()
    }

    async fn subscriber(&self) -> Result<Connection, BenchError> {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.hubs[turn % self.hubs.len()].login().await
    }

    async fn publisher(&self) -> Result<Connection, BenchError> {
        self.first().login().await
    }

    /// Every hub's `JOIN` reaches the publisher's hub through the cluster,
    /// after the subscriber joined its own hub's room.
    async fn await_subscribers(
        &self,
        publisher: &mut Connection,
        subscribers: usize,
    ) -> Result<(), BenchError> {
        self.first().await_subscribers(publisher, subscribers).await
    }
}

/// Cuts one server line off `buf`.
fn parse_line(buf: &[u8]) -> Parsed<'_> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let frame = if let Some(rest) = line.strip_prefix(b"MSG ") {
        // `MSG <user> <text>`: user names have no spaces; the text may.
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            return Err(BenchError::protocol(
                Meshd::NAME,
                format!("MSG line without text: \"{}\"", excerpt(line)),
            ));
        };
        Frame::Message(&rest[space + 1..])
    } else if line.starts_with(b"ERR ") {
        Frame::Error(line)
    } else {
        Frame::Other(line)
    };
    Ok(Some((frame, newline + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_lines() {
        let buf =
            b"HELLO meshd-chat 1\nJOIN bob\r\nMSG bob hi there\nERR slow closing\nMSG bob part";
        let mut at = 0;
        let mut frames = Vec::new();
        while let Some((frame, len)) = parse_line(&buf[at..]).unwrap() {
            frames.push(OwnedFrame::from(frame));
            at += len;
        }
        assert_eq!(
            frames,
            [
                OwnedFrame::Other(b"HELLO meshd-chat 1".to_vec()),
                OwnedFrame::Other(b"JOIN bob".to_vec()),
                OwnedFrame::Message(b"hi there".to_vec()),
                OwnedFrame::Error(b"ERR slow closing".to_vec()),
            ]
        );
        assert_eq!(&buf[at..], b"MSG bob part");
        assert!(parse_line(b"MSG bob\n").is_err());
    }

    #[test]
    fn encodes_a_message_as_one_line() {
        let meshd = Meshd::new(([127, 0, 0, 1], 1).into(), "u", "p");
        let mut out = Vec::new();
        meshd.encode_publish(b"0042", &mut out);
        assert_eq!(out, b"0042\n");
    }
}
