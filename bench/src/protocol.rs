//! What the benchmark asks of a pub/sub server, and the buffered connection
//! the three clients (`meshd.rs`, `nats.rs`, `redis.rs`) share.
//!
//! A [`Protocol`] knows how to set a connection up as a subscriber or as the
//! publisher, how to encode one publish, and how to cut the first complete
//! frame off a buffer ([`Protocol::parse`]). Parsing is pure and never
//! allocates, so the subscribers' hot loop is the same shape for every
//! server: read a chunk, parse frames out of it, count the messages.

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{BenchError, excerpt};

/// How long one handshake step may take. A meshd login waits for argon2
/// behind every login queued before it, so this is generous.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);

/// How long a polite close may take before the socket is simply dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One frame from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A published payload delivered to this connection.
    Message(&'a [u8]),
    /// The server wants a keep-alive answer: send [`Protocol::pong`].
    Ping,
    /// The server reports an error.
    Error(&'a [u8]),
    /// Anything else (greetings, JOIN/LEAVE, confirmations): the whole
    /// frame, without its line end where it is one line.
    Other(&'a [u8]),
}

/// The first complete frame of a buffer and its length, `None` while the
/// buffer holds only part of one.
pub type Parsed<'a> = Result<Option<(Frame<'a>, usize)>, BenchError>;

/// A pub/sub server as the benchmark drives it. Every method that talks to
/// the server returns a `Send` future so connections can be set up on any
/// worker.
pub trait Protocol: Clone + Send + Sync + 'static {
    /// Short name in tables and errors: `meshd`, `nats` or `redis`.
    const NAME: &'static str;

    /// The server's address.
    fn addr(&self) -> SocketAddr;

    /// Cuts the first complete frame off `buf`.
    fn parse<'a>(&self, buf: &'a [u8]) -> Parsed<'a>;

    /// Appends one publish of `payload` to `out`.
    fn encode_publish(&self, payload: &[u8], out: &mut Vec<u8>);

    /// The answer to [`Frame::Ping`].
    fn pong(&self) -> &'static [u8];

    /// What a client sends to leave politely before it closes its side.
    fn goodbye(&self) -> &'static [u8];

    /// Connects a subscriber. Once every subscriber is connected and
    /// [`Protocol::await_subscribers`] returned, each receives every later
    /// publish.
    fn subscriber(&self) -> impl Future<Output = Result<Connection, BenchError>> + Send;

    /// Connects the publisher; it is connected before the subscribers.
    fn publisher(&self) -> impl Future<Output = Result<Connection, BenchError>> + Send;

    /// Waits until the server will deliver to `subscribers` subscribers,
    /// reading what it must from the publisher's connection.
    fn await_subscribers(
        &self,
        publisher: &mut Connection,
        subscribers: usize,
    ) -> impl Future<Output = Result<(), BenchError>> + Send;
}

/// A read buffer that keeps a partial frame between reads.
#[derive(Debug)]
pub struct FrameBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuf {
    /// An empty buffer of `capacity` bytes; it grows when one frame needs
    /// more.
    pub fn new(capacity: usize) -> FrameBuf {
        FrameBuf {
            data: vec![0; capacity.max(64)],
            start: 0,
            end: 0,
        }
    }

    /// Grows the buffer to at least `capacity` bytes.
    pub fn grow(&mut self, capacity: usize) {
        if self.data.len() < capacity {
            self.data.resize(capacity, 0);
        }
    }

    /// The bytes read and not consumed yet.
    pub fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Drops the first `n` bytes of [`FrameBuf::data`].
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `reader` into the buffer; 0 means end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        let n = reader.read(self.spare()).await?;
        self.end += n;
        Ok(n)
    }

    /// [`FrameBuf::fill`] for a blocking reader.
    pub fn fill_blocking<R: std::io::Read>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        let n = reader.read(self.spare())?;
        self.end += n;
        Ok(n)
    }

    /// Room to read into: moves a partial frame to the front, or doubles the
    /// buffer when the partial frame fills all of it.
    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.data.resize(self.data.len() * 2, 0);
            }
        }
        &mut self.data[self.end..]
    }
}

/// A frame copied out of the buffer, for the handshakes, which are few.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedFrame {
    /// See [`Frame::Message`].
    Message(Vec<u8>),
    /// See [`Frame::Ping`].
    Ping,
    /// See [`Frame::Error`].
    Error(Vec<u8>),
    /// See [`Frame::Other`].
    Other(Vec<u8>),
}

impl From<Frame<'_>> for OwnedFrame {
    fn from(frame: Frame<'_>) -> OwnedFrame {
        match frame {
            Frame::Message(payload) => OwnedFrame::Message(payload.to_vec()),
            Frame::Ping => OwnedFrame::Ping,
            Frame::Error(text) => OwnedFrame::Error(text.to_vec()),
            Frame::Other(bytes) => OwnedFrame::Other(bytes.to_vec()),
        }
    }
}

/// A connection's byte stream: TCP, or TLS over it (meshd with
/// `[chat] tls = true`).
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS 1.3 over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The local address of the TCP socket underneath.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Stream::Plain(tcp) => tcp.local_addr(),
            Stream::Tls(tls) => tls.get_ref().0.local_addr(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One connection to a server and what was read from it but not parsed.
#[derive(Debug)]
pub struct Connection {
    /// The socket.
    pub stream: Stream,
    /// Bytes read and not consumed: a handshake may read past its last frame.
    pub buf: FrameBuf,
}

/// The read buffer of a connection during its handshake; subscribers that
/// count messages grow it.
const HANDSHAKE_BUFFER: usize = 4096;

impl Connection {
    /// Connects to `addr` with Nagle off, as every server under test does
    /// for its own side.
    pub async fn open(target: &'static str, addr: SocketAddr) -> Result<Connection, BenchError> {
        let stream = tokio::time::timeout(HANDSHAKE_WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| BenchError::Timeout {
                what: format!("{target}: connecting to {addr}"),
                limit: HANDSHAKE_WAIT,
            })?
            .map_err(BenchError::io(format!("{target}: connecting to {addr}")))?;
        stream
            .set_nodelay(true)
            .map_err(BenchError::io(format!("{target}: setting TCP_NODELAY")))?;
        Ok(Connection {
            stream: Stream::Plain(stream),
            buf: FrameBuf::new(HANDSHAKE_BUFFER),
        })
    }

    /// [`Connection::open`], then the TLS handshake with `config`.
    pub async fn open_tls(
        target: &'static str,
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Connection, BenchError> {
        let Connection { stream, buf } = Connection::open(target, addr).await?;
        let Stream::Plain(tcp) = stream else {
            return Err(BenchError::protocol(target, "already TLS".to_owned()));
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(
            HANDSHAKE_WAIT,
            connector.connect(crate::tls::server_name(), tcp),
        )
        .await
        .map_err(|_| BenchError::Timeout {
            what: format!("{target}: TLS handshake with {addr}"),
            limit: HANDSHAKE_WAIT,
        })?
        .map_err(|error| {
            // A wrong fingerprint in the verifier's words, not in rustls'
            // Debug form of them.
            let error = match meshd_ipc::tls::FingerprintMismatch::in_io(&error) {
                Some(mismatch) => std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("--meshd-tls-fingerprint: {mismatch}"),
                ),
                None => error,
            };
            BenchError::io(format!("{target}: TLS handshake with {addr}"))(error)
        })?;
        Ok(Connection {
            stream: Stream::Tls(Box::new(tls)),
            buf,
        })
    }

    /// Sends `bytes` (and flushes what TLS holds back).
    pub async fn send(&mut self, target: &'static str, bytes: &[u8]) -> Result<(), BenchError> {
        let sent = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        sent.await
            .map_err(BenchError::io(format!("{target}: sending")))
    }

    /// The next frame, waiting at most until `deadline`; `waiting_for`
    /// names it in errors.
    pub async fn next_frame<P: Protocol>(
        &mut self,
        proto: &P,
        deadline: Instant,
        waiting_for: &str,
    ) -> Result<OwnedFrame, BenchError> {
        loop {
            if let Some((frame, len)) = proto.parse(self.buf.data())? {
                let frame = OwnedFrame::from(frame);
                self.buf.consume(len);
                return Ok(frame);
            }
            let read = tokio::time::timeout_at(deadline, self.buf.fill(&mut self.stream))
                .await
                .map_err(|_| BenchError::Timeout {
                    what: format!("{}: waiting for {waiting_for}", P::NAME),
                    limit: HANDSHAKE_WAIT,
                })?
                .map_err(BenchError::io(format!("{}: reading", P::NAME)))?;
            if read == 0 {
                let rest = excerpt(self.buf.data());
                return Err(BenchError::protocol(
                    P::NAME,
                    format!(
                        "the server closed the connection while the client waited for {waiting_for} (unparsed: \"{rest}\")"
                    ),
                ));
            }
        }
    }

    /// Leaves politely: sends the goodbye, closes the write side and reads
    /// to the server's close, discarding what arrives, for at most
    /// [`CLOSE_WAIT`]. The server then has processed the departure, so the
    /// next scenario starts without leftovers.
    pub async fn close<P: Protocol>(mut self, proto: &P) {
        let drained = async {
            self.stream.write_all(proto.goodbye()).await?;
            self.stream.flush().await?;
            self.stream.shutdown().await?;
            let mut sink = vec![0; 64 * 1024];
            while self.stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        // Errors and timeouts only mean the server closed first or is stuck;
        // either way the socket is dropped here.
        let _ = tokio::time::timeout(CLOSE_WAIT, drained).await;
    }
}

/// A handshake's deadline from now.
pub fn handshake_deadline() -> Instant {
    Instant::now() + HANDSHAKE_WAIT
}

/// The error for a frame a handshake did not expect.
pub fn unexpected(target: &'static str, waiting_for: &str, frame: &OwnedFrame) -> BenchError {
    let got = match frame {
        OwnedFrame::Message(bytes) => format!("a message \"{}\"", excerpt(bytes)),
        OwnedFrame::Ping => "PING".to_owned(),
        OwnedFrame::Error(bytes) => format!("an error \"{}\"", excerpt(bytes)),
        OwnedFrame::Other(bytes) => format!("\"{}\"", excerpt(bytes)),
    };
    BenchError::protocol(target, format!("waiting for {waiting_for}, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_buf_keeps_partial_frames_and_grows() {
        let mut buf = FrameBuf::new(64);
        let mut input: &[u8] = &[b'a'; 100];
        assert_eq!(buf.fill_blocking(&mut input).unwrap(), 64);
        buf.consume(10);
        assert_eq!(buf.data().len(), 54);
        // Full with a partial frame at an offset: compacts.
        assert_eq!(buf.fill_blocking(&mut input).unwrap(), 10);
        assert_eq!(buf.data().len(), 64);
        // Full from the front: doubles.
        let mut more: &[u8] = &[b'b'; 8];
        assert_eq!(buf.fill_blocking(&mut more).unwrap(), 8);
        assert_eq!(buf.data().len(), 72);
        assert_eq!(buf.data()[71], b'b');
        buf.consume(72);
        assert!(buf.data().is_empty());
    }
}
