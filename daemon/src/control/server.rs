//! Control connections: framing, limits and access checks around the
//! dispatcher.
//!
//! Tasks: one accept loop, and one task per connection (at most
//! [`MAX_CONNECTIONS`] at once, shared as `slots.rs` decides; a connection
//! over its caller's share gets a `busy` error and is closed). A connection may
//! send several requests, one line each. A line of more than
//! [`MAX_FRAME_BYTES`] (newline included) is
//! answered with `too_large` and the connection closed; a malformed line gets
//! a `bad_request` reply and the connection stays; a request not completed
//! within [`REQUEST_TIMEOUT`] is cut off. None of this can reach other
//! connections.

use crate::accept;
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::os::unix::uds_local_socket::tokio::{Listener, Stream};
use meshd_ipc::{
    ErrorCode, ErrorReply, InboxMessage, MAX_FRAME_BYTES, PROTOCOL_VERSION, Reply, ReplyFrame,
    RequestFrame, RequestHeader, Response,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dispatch::{Answer, Dispatcher};
use super::peer::Caller;
use super::slots::{MAX_CONNECTIONS, Slots};

/// Time a client has to send a whole request line once it is connected or
/// has had its previous answer, and to take each reply frame.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(
    listener: Listener,
    dispatcher: Arc<Dispatcher>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Slots::default());
    // Connections being refused at once; past this many, further ones wait
    // in the backlog rather than each costing a task.
    let refusing = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let daemon_uid = nix::unistd::geteuid();
    loop {
        let Some(stream) = accept::next("control", &cancel, || listener.accept()).await else {
            break;
        };
        let caller = match Caller::of(stream.inner()) {
            Ok(caller) => caller,
            Err(error) => {
                tracing::warn!(%error, "cannot read control peer credentials; closing");
                continue;
            }
        };
        let writer = caller.may(meshd_ipc::Access::Write, daemon_uid);
        match slots.take(caller.uid, writer) {
            Ok(slot) => {
                let dispatcher = dispatcher.clone();
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    serve(stream, caller, &dispatcher, &cancel).await;
                    drop(slot);
                });
            }
            Err(refusal) => {
                tracing::debug!(uid = caller.uid, pid = caller.pid, %refusal, "control connection refused");
                let Ok(permit) = refusing.clone().acquire_owned().await else {
                    break;
                };
                tracker.spawn(async move {
                    refuse(stream, refusal.to_string()).await;
                    drop(permit);
                });
            }
        }
    }
    // Dropping the listener removes the socket file.
    drop(listener);
    tracing::debug!("control socket closed");
}

/// How long a refused connection has to send its request line.
const REFUSAL_READ_TIME: Duration = Duration::from_secs(1);

/// Answers a connection over its caller's share with one `busy` error.
/// The request line is read first (briefly): the client writes it right
/// after connecting, and closing before that would give it a broken pipe
/// instead of the reason.
async fn refuse(stream: Stream, message: String) {
    let mut reader = BufReader::new(&stream);
    let mut line = Vec::new();
    let mut limited = (&mut reader).take(MAX_FRAME_BYTES as u64);
    let _ = tokio::time::timeout(REFUSAL_READ_TIME, limited.read_until(b'\n', &mut line)).await;
    let id = meshd_ipc::decode::<RequestHeader>(&line).map_or(0, |header| header.id);
    let error = ErrorReply {
        code: ErrorCode::Busy,
        message,
    };
    let mut writer = &stream;
    let _ = send(&mut writer, id, false, Reply::Error(error)).await;
}

async fn serve(
    stream: Stream,
    caller: Caller,
    dispatcher: &Dispatcher,
    cancel: &CancellationToken,
) {
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = MAX_FRAME_BYTES as u64;
        let mut limited = (&mut reader).take(limit);
        let read = tokio::select! {
            () = cancel.cancelled() => return,
            read = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)) => read,
        };
        match read {
            Err(_elapsed) => {
                tracing::debug!(
                    uid = caller.uid,
                    "control request not completed in time; closing"
                );
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(uid = caller.uid, %error, "control read failed");
                return;
            }
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
        }
        if line.last() != Some(&b'\n') {
            if line.len() >= MAX_FRAME_BYTES {
                let error = ErrorReply {
                    code: ErrorCode::TooLarge,
                    message: format!("request exceeds {MAX_FRAME_BYTES} bytes; closing"),
                };
                tracing::warn!(
                    uid = caller.uid,
                    pid = caller.pid,
                    "oversized control request"
                );
                let _ = send(&mut writer, 0, false, Reply::Error(error)).await;
            }
            // Otherwise the peer closed half-way through a line.
            return;
        }
        let (id, answer) = answer(&line, caller, dispatcher).await;
        match answer {
            Answer::Replies(replies) => {
                let last = replies.len().saturating_sub(1);
                for (index, reply) in replies.into_iter().enumerate() {
                    if send(&mut writer, id, index < last, reply).await.is_err() {
                        return;
                    }
                }
            }
            Answer::Follow { backlog, feed } => {
                follow(&mut reader, &mut writer, id, backlog, feed, cancel).await;
                return;
            }
        }
    }
}

/// Streams a backlog and then a feed as `more:true` frames until the client
/// hangs up or meshd stops. A follower that falls behind the feed skips what
/// it missed (those messages are still in `meshctl messages`).
async fn follow(
    reader: &mut BufReader<&Stream>,
    writer: &mut &Stream,
    id: u64,
    backlog: Vec<Reply>,
    mut feed: broadcast::Receiver<InboxMessage>,
    cancel: &CancellationToken,
) {
    for reply in backlog {
        if send(writer, id, true, reply).await.is_err() {
            return;
        }
    }
    let mut ignored = [0u8; 256];
    loop {
        let reply = tokio::select! {
            () = cancel.cancelled() => return,
            // Anything the client sends, or its hanging up, ends the stream.
            _ = reader.read(&mut ignored) => return,
            message = feed.recv() => match message {
                Ok(message) => Reply::Ok(Response::Message(message)),
                // An error frame would end the stream; the skipped
                // messages are still in the inbox.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "messages follower fell behind; skipped some");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if send(writer, id, true, reply).await.is_err() {
            return;
        }
    }
}

/// Decodes one request line, checks access and dispatches it.
async fn answer(line: &[u8], caller: Caller, dispatcher: &Dispatcher) -> (u64, Answer) {
    let bad_request = |message: String| {
        Answer::Replies(vec![Reply::Error(ErrorReply {
            code: ErrorCode::BadRequest,
            message,
        })])
    };
    let header: RequestHeader = match meshd_ipc::decode(line) {
        Ok(header) => header,
        Err(error) => {
            return (
                0,
                bad_request(format!("{error}; expected one JSON request per line")),
            );
        }
    };
    let frame: RequestFrame = match meshd_ipc::decode_strict(line) {
        Ok(frame) => frame,
        Err(error) => {
            return (
                header.id,
                bad_request(format!("unknown command or bad arguments: {error}")),
            );
        }
    };
    let request = frame.request;
    let daemon_uid = nix::unistd::geteuid();
    if !caller.may(request.access(), daemon_uid) {
        tracing::info!(
            uid = caller.uid,
            pid = caller.pid,
            command = request.name(),
            "control request refused"
        );
        let message = format!(
            "permission denied: `meshctl {}` changes meshd and needs root or the user meshd runs as (uid {daemon_uid}); you are uid {}",
            request.name(),
            caller.uid
        );
        return (
            header.id,
            Answer::Replies(vec![Reply::Error(ErrorReply {
                code: ErrorCode::Permission,
                message,
            })]),
        );
    }
    tracing::debug!(
        uid = caller.uid,
        command = request.name(),
        "control request"
    );
    (header.id, dispatcher.answer(request).await)
}

async fn send(writer: &mut &Stream, id: u64, more: bool, reply: Reply) -> std::io::Result<()> {
    let frame = ReplyFrame {
        v: PROTOCOL_VERSION,
        id,
        more,
        reply,
    };
    let bytes = meshd_ipc::encode(&frame).map_err(|error| {
        tracing::error!(%error, "reply does not fit in a control frame; closing the connection");
        std::io::Error::other(error)
    })?;
    // A client that stops reading must not hold its task and slot for ever.
    let write = async {
        writer.write_all(&bytes).await?;
        writer.flush().await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, write)
        .await
        .unwrap_or_else(|_elapsed| {
            tracing::debug!("control client stopped reading; closing");
            Err(std::io::ErrorKind::TimedOut.into())
        })
}
