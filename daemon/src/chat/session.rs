//! One chat connection, from `HELLO` to close.
//!
//! Tasks: the connection's task reads lines (login, then messages); once the
//! client is logged in it spawns the client's writer, which alone writes to
//! the socket from then on. The writer drains the room's ring and the
//! session's private replies into batches and writes each batch with one
//! vectored write, so a burst goes out in few syscalls and no line is copied
//! per client. A writer that cannot write for [`WRITE_DEADLINE`], or that
//! falls behind the ring, ends the session as slow: the others never wait.
//!
//! On a TLS port (`tls.rs`) the TLS handshake comes first, in the same task
//! and under its own deadline; everything after it is the same code over
//! the TLS stream's halves, so the protocol cannot differ between the two.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ChatShared;
use super::auth::Admission;
use super::flood;
use super::line_reader::{Line, read_line};
use super::protocol::{self, ClientLine, ErrCode};
use super::room::{ClientId, Membership, Outgoing, Revocation};
use super::tls::{self, ChatTlsServer};
use crate::metrics::{LoginResult, Metrics, metrics};

/// Time a client has to log in after connecting.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed logins allowed on one connection.
const MAX_AUTH_ATTEMPTS: u32 = 3;
/// One write batch from the room in this many, per client, is measured for
/// the fan-out delay metric.
const FANOUT_SAMPLE: u64 = 16;
/// A writer that makes no progress for this long has a slow client.
pub const WRITE_DEADLINE: Duration = Duration::from_millis(500);
/// How often a blocked write checks how far its client is behind.
const LAG_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// Lines a client may fall behind the room while its socket is full: half the
/// ring, so it is cut off well before it would lag out of the ring.
const BLOCKED_LAG_LIMIT: usize = super::RING_CAPACITY / 2;
/// The kernel's send buffer for a chat socket (it doubles this). Loopback
/// autotuning grows it to megabytes, which takes a client that stopped
/// reading a second to fill before anything notices; a fixed 128 KiB still
/// holds tens of milliseconds of a fast client's traffic.
const SEND_BUFFER: usize = 128 * 1024;
/// Lines written per vectored write at most.
const MAX_BATCH: usize = 256;
/// Private replies (WHO, ERR, BYE) queued per client; a client that floods
/// commands without reading waits here.
const PRIVATE_QUEUE: usize = 16;
/// Batch capacity an idle writer keeps.
const IDLE_BATCH_CAPACITY: usize = 16;
/// Initial read buffer; lines longer than this grow it up to the limit.
const READ_BUFFER: usize = 1024;

/// Serves one connection to its end; on a TLS port the handshake first.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<ChatShared>,
    tls: Option<ChatTlsServer>,
) {
    let _ = stream.set_nodelay(true);
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
    let Some(tls) = tls else {
        let (read_half, write_half) = stream.into_split();
        return converse(read_half, write_half, peer, shared).await;
    };
    let handshake = tokio::select! {
        () = shared.cancel.cancelled() => return,
        handshake = tls.accept(stream, tls::HANDSHAKE_TIMEOUT) => handshake,
    };
    match handshake {
        Ok(stream) => {
            let (read_half, write_half) = tokio::io::split(stream);
            converse(read_half, write_half, peer, shared).await;
        }
        // A client that does not speak TLS, or a port scanner: worth no
        // more than a debug line (docs/chat-protocol.md#tls).
        Err(reason) => tracing::debug!(peer_addr = %peer, %reason, "chat tls handshake failed"),
    }
}

/// The chat protocol over one connection's two halves, from `HELLO` on.
async fn converse<R, W>(read_half: R, mut write_half: W, peer: SocketAddr, shared: Arc<ChatShared>)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
    if write_direct(&mut write_half, protocol::HELLO)
        .await
        .is_err()
    {
        return;
    }
    let Some((user, Membership { id, ring, revoked })) =
        login(&mut reader, &mut write_half, peer, &shared).await
    else {
        close(&mut write_half).await;
        return;
    };
    tracing::info!(user = %escape(&user), peer_addr = %peer, "chat login");
    let (private, private_rx) = mpsc::channel(PRIVATE_QUEUE);
    let session_end = shared.cancel.child_token();
    let writer = tokio::spawn(write_loop(Writer {
        socket: write_half,
        me: id,
        ring,
        private: private_rx,
        end: session_end.clone(),
        shutdown: shared.cancel.clone(),
        revoked: revoked.clone(),
        user: user.clone(),
        peer,
    }));
    let sender = shared.flood.sender(&user);
    let session = Session {
        id,
        user: &user,
        shared: &shared,
        private: &private,
        end: &session_end,
        revoked: &revoked,
        sender: &sender,
    };
    read_loop(&mut reader, &session).await;
    drop(private);
    let _ = writer.await;
    shared.room.leave(id);
    tracing::info!(user = %escape(&user), peer_addr = %peer, "chat logout");
}

/// The login phase. Returns the session's membership once `OK` was sent:
/// the session joins the room before `OK` is written, so a client that has
/// read `OK` is listed by `/who` and gets every message sent after it.
async fn login<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut BufReader<R>,
    socket: &mut W,
    peer: SocketAddr,
    shared: &ChatShared,
) -> Option<(String, Membership)> {
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    let mut failures = 0;
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            () = shared.cancel.cancelled() => {
                let _ = write_direct(socket, &shutdown_lines()).await;
                return None;
            }
            read = tokio::time::timeout_at(deadline, read_line(reader, &mut buf, shared.max_line_bytes)) => read,
        };
        let reply = match read {
            Err(_elapsed) => {
                let line = protocol::err(ErrCode::Timeout, "no login within 10s; closing");
                let _ = write_direct(socket, &line).await;
                return None;
            }
            Ok(Err(_)) | Ok(Ok(Line::Eof)) => return None,
            Ok(Ok(Line::TooLong)) => too_long(shared.max_line_bytes),
            Ok(Ok(Line::Complete)) => match protocol::parse(protocol::trim_line_end(&buf)) {
                Err(_) => protocol::err(ErrCode::Proto, "line is not UTF-8"),
                Ok(ClientLine::Quit) => {
                    let _ = write_direct(socket, protocol::BYE).await;
                    return None;
                }
                Ok(ClientLine::Auth { user, password }) => {
                    let admission = tokio::select! {
                        () = shared.cancel.cancelled() => {
                            let _ = write_direct(socket, &shutdown_lines()).await;
                            return None;
                        }
                        admission = tokio::time::timeout_at(deadline, shared.auth.admit(peer.ip())) => admission,
                    };
                    let attempt = match admission {
                        Err(_elapsed) => {
                            let line =
                                protocol::err(ErrCode::Timeout, "no login within 10s; closing");
                            let _ = write_direct(socket, &line).await;
                            return None;
                        }
                        Ok(Admission::Refused(retry)) => {
                            metrics().chat_login(LoginResult::Throttled);
                            shared.throttled_logins.log(|suppressed| {
                                tracing::warn!(peer_addr = %peer, suppressed, "chat login throttled");
                            });
                            let text = format!(
                                "too many failed logins from {}; try again in {}s",
                                peer.ip(),
                                retry.as_secs().max(1)
                            );
                            let _ =
                                write_direct(socket, &protocol::err(ErrCode::Auth, &text)).await;
                            return None;
                        }
                        Ok(Admission::Go(attempt)) => attempt,
                    };
                    let hash = shared.users.snapshot().hash_of(user).map(str::to_owned);
                    if shared.auth.verify(hash.clone(), password.to_owned()).await {
                        attempt.succeeded();
                        let membership = shared.room.join(user);
                        // A removal or new password between the check and the
                        // join would not have reached this session: check again.
                        if shared.users.snapshot().hash_of(user) != hash.as_deref() {
                            shared.room.leave(membership.id);
                            metrics().chat_login(LoginResult::Failed);
                            let _ = write_direct(socket, &protocol::auth_failed()).await;
                            return None;
                        }
                        if write_direct(socket, &protocol::ok(user)).await.is_err() {
                            shared.room.leave(membership.id);
                            return None;
                        }
                        metrics().chat_login(LoginResult::Ok);
                        return Some((user.to_owned(), membership));
                    }
                    drop(attempt);
                    metrics().chat_login(LoginResult::Failed);
                    failures += 1;
                    tracing::info!(peer_addr = %peer, user = %escape(user), failures, "chat login failed");
                    if failures >= MAX_AUTH_ATTEMPTS {
                        let _ = write_direct(socket, &protocol::auth_failed()).await;
                        return None;
                    }
                    protocol::auth_failed()
                }
                Ok(_) => protocol::err(ErrCode::Proto, "log in first: AUTH <username> <password>"),
            },
        };
        write_direct(socket, &reply).await.ok()?;
    }
}

/// What the chat phase of one session works with.
struct Session<'a> {
    id: ClientId,
    user: &'a str,
    shared: &'a ChatShared,
    private: &'a mpsc::Sender<Bytes>,
    end: &'a CancellationToken,
    revoked: &'a Revocation,
    sender: &'a flood::Sender<'a>,
}

/// The chat phase: every line the client sends.
async fn read_loop<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, session: &Session<'_>) {
    let shared = session.shared;
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            () = session.end.cancelled() => return,
            _ = session.revoked.revoked() => return,
            read = read_line(reader, &mut buf, shared.max_line_bytes) => read,
        };
        let reply = match read {
            Err(_) | Ok(Line::Eof) => return,
            Ok(Line::TooLong) => too_long(shared.max_line_bytes),
            Ok(Line::Complete) => match protocol::parse(protocol::trim_line_end(&buf)) {
                Ok(ClientLine::Message(text)) => {
                    if !publish(session, text).await {
                        return;
                    }
                    continue;
                }
                Ok(ClientLine::Who) => shared.room.who(),
                Ok(ClientLine::Quit) => {
                    let _ = session
                        .private
                        .send(Bytes::from_static(protocol::BYE))
                        .await;
                    return;
                }
                // After OK, every line not starting with '/' is a message,
                // even one that looks like AUTH (docs/chat-protocol.md).
                Ok(ClientLine::Auth { .. }) => {
                    if let Ok(text) = std::str::from_utf8(protocol::trim_line_end(&buf))
                        && !publish(session, text).await
                    {
                        return;
                    }
                    continue;
                }
                Ok(ClientLine::UnknownCommand(command)) => protocol::err(
                    ErrCode::Proto,
                    &format!("unknown command {command}; commands are /who and /quit"),
                ),
                Err(_) => protocol::err(ErrCode::Proto, "line is not UTF-8"),
            },
        };
        if session.private.send(reply).await.is_err() {
            return;
        }
    }
}

/// Publishes one message once the user's flood limit allows it; meanwhile
/// nothing more is read from this client. False when the session ended
/// while it waited.
async fn publish(session: &Session<'_>, text: &str) -> bool {
    let wait = session.sender.delay(std::time::Instant::now());
    if !wait.is_zero() {
        tokio::select! {
            () = session.end.cancelled() => return false,
            _ = session.revoked.revoked() => return false,
            () = tokio::time::sleep(wait) => {}
        }
    }
    session.shared.room.publish(session.id, session.user, text);
    true
}

fn too_long(max: usize) -> Bytes {
    protocol::err(
        ErrCode::TooLong,
        &format!("line longer than {max} bytes; dropped"),
    )
}

fn shutdown_lines() -> Bytes {
    let mut lines = protocol::err(ErrCode::Shutdown, "meshd is stopping").to_vec();
    lines.extend_from_slice(protocol::BYE);
    Bytes::from(lines)
}

/// `ERR auth <why>` for a revoked session.
fn revoked_line(revoked: &Revocation) -> Bytes {
    protocol::err(ErrCode::Auth, revoked.reason().unwrap_or("login revoked"))
}

/// A user name or other client-given text made safe for one log field.
fn escape(text: &str) -> String {
    text.escape_debug().to_string()
}

/// Writes during login, before the writer task exists. The flush hands what
/// TLS encrypted to the socket; on plain TCP it does nothing.
async fn write_direct<W: AsyncWrite + Unpin>(socket: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    let write = async {
        socket.write_all(bytes).await?;
        socket.flush().await
    };
    tokio::time::timeout(LOGIN_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Closes the write side: a FIN on plain TCP; on TLS a close_notify first,
/// which a client that stopped reading may never take, hence the deadline.
async fn close<W: AsyncWrite + Unpin>(socket: &mut W) {
    let _ = tokio::time::timeout(WRITE_DEADLINE, socket.shutdown()).await;
}

/// Everything the writer task owns.
struct Writer<W> {
    socket: W,
    me: ClientId,
    ring: broadcast::Receiver<Outgoing>,
    private: mpsc::Receiver<Bytes>,
    end: CancellationToken,
    shutdown: CancellationToken,
    revoked: Arc<Revocation>,
    user: String,
    peer: SocketAddr,
}

/// Why a writer stopped.
enum Stop {
    /// The reader finished (EOF, /quit): flush and close.
    Done,
    /// The client cannot keep up.
    Slow(&'static str),
    /// meshd is stopping.
    Shutdown,
    /// The user was removed or its password changed.
    Revoked,
    /// The socket failed.
    Broken,
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: Writer<W>) {
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    // Batches taken from the room, for sampling the fan-out delay.
    let mut room_batches: u64 = 0;
    let stop = loop {
        let first = tokio::select! {
            biased;
            () = writer.shutdown.cancelled() => break Stop::Shutdown,
            _ = writer.revoked.revoked() => break Stop::Revoked,
            private = writer.private.recv() => match private {
                Some(line) => Ok(line),
                None => break Stop::Done,
            },
            event = writer.ring.recv() => match event {
                Ok(out) => Err(out),
                Err(broadcast::error::RecvError::Lagged(_)) => break Stop::Slow("fell behind the room"),
                Err(broadcast::error::RecvError::Closed) => break Stop::Shutdown,
            },
        };
        match first {
            Ok(line) => batch.push_back(line),
            Err(out) if out.from != writer.me => {
                // The histogram takes a lock every writer shares: sampled,
                // the first batch of every FANOUT_SAMPLE, by its first line
                // (which waited longest).
                if room_batches.is_multiple_of(FANOUT_SAMPLE) {
                    Metrics::observe(&metrics().chat_fanout_seconds, out.at.elapsed());
                }
                room_batches += 1;
                batch.push_back(out.line);
            }
            Err(_own) => {}
        }
        if let Err(stop) = drain_ready(&mut writer, &mut batch) {
            break stop;
        }
        match write_batch(&mut writer.socket, &mut batch, Some(&writer.ring)).await {
            Ok(()) => {
                // A burst may have grown the batch; an idle client should not
                // keep that memory.
                if batch.capacity() > IDLE_BATCH_CAPACITY {
                    batch.shrink_to(IDLE_BATCH_CAPACITY);
                }
            }
            Err(WriteFailure::Slow(why)) => break Stop::Slow(why),
            Err(WriteFailure::Broken) => break Stop::Broken,
        }
    };
    match stop {
        Stop::Done => {
            let _ = write_batch(&mut writer.socket, &mut batch, None).await;
        }
        Stop::Shutdown => {
            batch.push_back(shutdown_lines());
            let _ = write_batch(&mut writer.socket, &mut batch, None).await;
        }
        Stop::Revoked => {
            tracing::info!(user = %escape(&writer.user), peer_addr = %writer.peer, "chat session revoked");
            let mut line = VecDeque::from([revoked_line(&writer.revoked)]);
            let _ = tokio::time::timeout(
                WRITE_DEADLINE,
                write_batch(&mut writer.socket, &mut line, None),
            )
            .await;
        }
        Stop::Slow(why) => {
            metrics().chat_slow_consumers.inc();
            tracing::warn!(user = %escape(&writer.user), peer_addr = %writer.peer, reason = why, "slow chat client disconnected");
            // Best effort: its buffers may be full, and it is not waited
            // for. A zero timeout still polls the write once.
            let line = protocol::err(ErrCode::Slow, "client did not read fast enough; closing");
            let attempt = async {
                writer.socket.write_all(&line).await?;
                writer.socket.flush().await
            };
            let _ = tokio::time::timeout(Duration::ZERO, attempt).await;
        }
        Stop::Broken => {}
    }
    close(&mut writer.socket).await;
    writer.end.cancel();
}

/// Moves whatever is already waiting into the batch, without blocking.
fn drain_ready<W>(writer: &mut Writer<W>, batch: &mut VecDeque<Bytes>) -> Result<(), Stop> {
    while batch.len() < MAX_BATCH {
        match writer.ring.try_recv() {
            Ok(out) if out.from != writer.me => batch.push_back(out.line),
            Ok(_own) => {}
            Err(broadcast::error::TryRecvError::Empty) => break,
            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                return Err(Stop::Slow("fell behind the room"));
            }
            Err(broadcast::error::TryRecvError::Closed) => return Err(Stop::Shutdown),
        }
    }
    while batch.len() < MAX_BATCH {
        match writer.private.try_recv() {
            Ok(line) => batch.push_back(line),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Why a batch could not be written.
enum WriteFailure {
    /// The client is not reading fast enough.
    Slow(&'static str),
    /// The socket failed.
    Broken,
}

/// Writes every line of the batch with vectored writes; the lines are the
/// room's shared buffers, never copied. A write that makes no progress for
/// [`WRITE_DEADLINE`] means a slow client; so does a write stuck on a full
/// socket while the room runs more than [`BLOCKED_LAG_LIMIT`] lines ahead
/// of this client's place in `ring`, which catches a client that stopped
/// reading within a few dozen milliseconds of its buffers filling.
async fn write_batch<W: AsyncWrite + Unpin>(
    socket: &mut W,
    batch: &mut VecDeque<Bytes>,
    ring: Option<&broadcast::Receiver<Outgoing>>,
) -> Result<(), WriteFailure> {
    while !batch.is_empty() {
        let slices: Vec<IoSlice<'_>> = batch.iter().map(|line| IoSlice::new(line)).collect();
        let mut written = progress(socket.write_vectored(&slices), ring).await?;
        if written == 0 {
            return Err(WriteFailure::Broken);
        }
        while written > 0 {
            let Some(front) = batch.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                batch.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    // TLS takes lines into its own buffer before the socket has them; the
    // flush is the write that must make progress. Plain TCP: a no-op.
    progress(socket.flush(), ring).await
}

/// Awaits one write or flush, failing it as slow when it makes no progress
/// for [`WRITE_DEADLINE`] or while the room runs too far ahead.
async fn progress<T>(
    write: impl Future<Output = std::io::Result<T>>,
    ring: Option<&broadcast::Receiver<Outgoing>>,
) -> Result<T, WriteFailure> {
    let deadline = Instant::now() + WRITE_DEADLINE;
    tokio::pin!(write);
    loop {
        tokio::select! {
            result = &mut write => return result.map_err(|_| WriteFailure::Broken),
            () = tokio::time::sleep(LAG_CHECK_INTERVAL) => {
                if Instant::now() >= deadline {
                    return Err(WriteFailure::Slow("made no progress reading"));
                }
                if ring.is_some_and(|ring| ring.len() > BLOCKED_LAG_LIMIT) {
                    return Err(WriteFailure::Slow("stopped reading while the room moved on"));
                }
            }
        }
    }
}
