//! The two tasks of each open link: the reader (frames in; messages are
//! stored and acknowledged right here, pings answered) and the writer
//! (frames out, batched). Both tell the peer task what it needs to know
//! through [`LinkEvent`]s.

use std::sync::Arc;
use std::time::Duration;

use meshd_link::{Frame, LinkError, LinkReader, LinkWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Local;
use super::error::{DialError, JoinRelayError, LinkDown};
use super::inbox::MessageKey;
use super::path::{Established, Stream};
use crate::device_id::DeviceId;
use crate::metrics::metrics;
use prometheus_client::metrics::counter::Counter;

/// A link in use that brought no answer (pong or ack) for this long is
/// dead: keepalives go out every [`KEEPALIVE`] while a peer is in use, so
/// three in a row were lost; the path is cut, and a relayed link (or a new
/// direct one) takes over well within 10 s. The peer state machine decides
/// it (`peer/state.rs`).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(6);

/// Keepalive pings go out this often on the links of a peer in use; they
/// also measure the round-trip time.
pub const KEEPALIVE: Duration = Duration::from_secs(2);

/// Keepalives on the links of a peer not in use, as Tailscale stops
/// pinging idle peers: often enough to keep NAT mappings and the hub's
/// relay (closed after 60 s without bytes) open, and to let a peer that
/// vanished go within a minute and a half, at a twelfth of the traffic.
pub const IDLE_KEEPALIVE: Duration = Duration::from_secs(25);

/// A peer is in use for this long after a message last went to it or came
/// from it (or a user pinged it).
pub const IN_USE_FOR: Duration = Duration::from_secs(30);

/// A link on which nothing at all was read for this long is dead, in use
/// or not: three idle keepalives and their answers lost.
pub const READ_SILENCE_LIMIT: Duration = Duration::from_secs(80);

/// A write that makes no progress for this long ends the link. Longer than
/// the silence limit: a large batch through a rate-limited relay is slow,
/// not dead.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// The reader tells the peer task that messages arrive at most this often:
/// enough to keep the peer in use ([`IN_USE_FOR`]), and no event per
/// message.
pub const RECEIVED_EVERY: Duration = Duration::from_secs(1);

/// Frames and bytes the writer puts in one write.
const WRITE_BATCH_FRAMES: usize = 64;
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// What link tasks and path attempts tell the peer task.
pub enum LinkEvent {
    /// Link `link` brought the acknowledgement of message `id`.
    Ack {
        /// The link.
        link: u64,
        /// The message.
        id: u64,
    },
    /// Link `link` brought the answer to ping `nonce`.
    Pong {
        /// The link.
        link: u64,
        /// The ping.
        nonce: u64,
    },
    /// Messages came on link `link` (said at most once a
    /// [`RECEIVED_EVERY`]).
    Received {
        /// The link.
        link: u64,
    },
    /// Link `link` ended.
    Closed {
        /// The link.
        link: u64,
        /// Why.
        reason: LinkDown,
    },
    /// Dial round `dial` finished.
    Dialled {
        /// The round, as the peer task numbered it.
        dial: u64,
        /// The link, or every attempt's error.
        outcome: Result<Established, DialError>,
    },
    /// A relay attempt finished.
    Relayed(Result<Established, JoinRelayError>),
}

pub struct ReadContext {
    /// This node.
    pub local: Arc<Local>,
    /// The device at the other end.
    pub peer: DeviceId,
    /// Its instance, from the handshake: part of each message's identity.
    pub instance: u64,
    /// The peer task's number for this link.
    pub link: u64,
    /// This link's writer queue, for acks and pongs.
    pub frames: mpsc::Sender<Frame>,
    /// The peer task's events.
    pub events: mpsc::Sender<LinkEvent>,
    /// Ends the reader.
    pub stop: CancellationToken,
    /// Counts the bytes of the frames read.
    pub bytes_in: Counter,
}

/// What a link's writer needs besides its stream and queue.
pub struct WriteContext {
    /// The peer task's number for this link.
    pub link: u64,
    /// The peer task's events.
    pub events: mpsc::Sender<LinkEvent>,
    /// meshd is stopping: say Close and end.
    pub shutdown: CancellationToken,
    /// Counts the bytes of the frames written.
    pub bytes_out: Counter,
}

/// Reads frames until the link fails, goes silent or is stopped. Messages
/// are stored and acknowledged here; pings answered here; the rest goes to
/// the peer task.
pub async fn read_link(context: ReadContext, mut reader: LinkReader<ReadHalf<Stream>>) {
    let mut told_received: Option<tokio::time::Instant> = None;
    let reason = loop {
        let frame = tokio::select! {
            () = context.stop.cancelled() => return,
            frame = tokio::time::timeout(READ_SILENCE_LIMIT, reader.next()) => frame,
        };
        let frame = match frame {
            Err(_elapsed) => break LinkDown::Quiet,
            Ok(Err(LinkError::Closed)) => break LinkDown::ClosedByPeer,
            Ok(Err(error)) => break LinkDown::Read(Arc::new(error)),
            Ok(Ok(frame)) => frame,
        };
        context.bytes_in.inc_by(frame.encoded_len() as u64);
        let reply = match frame {
            Frame::Message { id, text } => {
                let key = MessageKey {
                    instance: context.instance,
                    id,
                };
                // The frame layer checked the text is UTF-8.
                let text = String::from_utf8_lossy(&text);
                if context.local.inbox.store(&context.peer, key, &text) {
                    metrics().messages_received.inc();
                    tracing::info!(from = %context.peer, bytes = text.len(), text = %preview(&text), "message received");
                }
                let now = tokio::time::Instant::now();
                if told_received.is_none_or(|told| now.duration_since(told) >= RECEIVED_EVERY) {
                    told_received = Some(now);
                    let event = LinkEvent::Received { link: context.link };
                    if context.events.send(event).await.is_err() {
                        return;
                    }
                }
                Frame::Ack { id }
            }
            Frame::Ping { nonce } => Frame::Pong { nonce },
            Frame::Close { reason } => break LinkDown::PeerClosed(reason),
            Frame::Ack { id } => {
                let event = LinkEvent::Ack {
                    link: context.link,
                    id,
                };
                if context.events.send(event).await.is_err() {
                    return;
                }
                continue;
            }
            Frame::Pong { nonce } => {
                let event = LinkEvent::Pong {
                    link: context.link,
                    nonce,
                };
                if context.events.send(event).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if context.frames.send(reply).await.is_err() {
            return;
        }
    };
    let _ = context
        .events
        .send(LinkEvent::Closed {
            link: context.link,
            reason,
        })
        .await;
}

/// The start of a message for the log.
fn preview(text: &str) -> &str {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Writes queued frames in batches until the queue closes, a write fails or
/// stalls for [`WRITE_STALL_LIMIT`], or meshd stops.
pub async fn write_link(
    context: WriteContext,
    mut writer: LinkWriter<WriteHalf<Stream>>,
    mut queue: mpsc::Receiver<Frame>,
) {
    let WriteContext {
        link,
        events,
        shutdown,
        bytes_out,
    } = context;
    let mut batch = Vec::with_capacity(WRITE_BATCH_FRAMES);
    loop {
        let first = tokio::select! {
            biased;
            frame = queue.recv() => frame,
            () = shutdown.cancelled() => {
                writer.close("meshd is stopping").await;
                return;
            }
        };
        let Some(first) = first else {
            // The link was dropped by its peer task.
            writer.close("link closed").await;
            return;
        };
        let mut bytes = first.encoded_len();
        let mut closing = matches!(first, Frame::Close { .. });
        batch.push(first);
        while !closing && batch.len() < WRITE_BATCH_FRAMES && bytes < WRITE_BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => {
                    bytes += frame.encoded_len();
                    closing = matches!(frame, Frame::Close { .. });
                    batch.push(frame);
                }
                Err(_) => break,
            }
        }
        let written = tokio::time::timeout(WRITE_STALL_LIMIT, writer.send_all(&batch)).await;
        batch.clear();
        let reason = match written {
            Ok(Ok(())) if closing => return,
            Ok(Ok(())) => {
                bytes_out.inc_by(bytes as u64);
                continue;
            }
            Ok(Err(error)) => LinkDown::Write(Arc::new(error)),
            Err(_elapsed) => LinkDown::WriteStalled,
        };
        let _ = events.send(LinkEvent::Closed { link, reason }).await;
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_cut_at_character_boundaries() {
        let text = "é".repeat(150);
        let cut = preview(&text);
        assert!(cut.len() <= 200 && text.starts_with(cut));
    }
}
