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

/// A link that carried nothing for this long is dead. Keepalives go out
/// every [`KEEPALIVE`], so three in a row were lost: the path is cut, and a
/// relayed link (or a new direct one) takes over well within 10 s.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(6);

/// Keepalive pings go out this often on every link; they also measure the
/// round-trip time.
pub const KEEPALIVE: Duration = Duration::from_secs(2);

/// A write that makes no progress for this long ends the link. Longer than
/// the silence limit: a large batch through a rate-limited relay is slow,
/// not dead.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

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
}

/// Reads frames until the link fails, goes silent or is stopped. Messages
/// are stored and acknowledged here; pings answered here; the rest goes to
/// the peer task.
pub async fn read_link(context: ReadContext, mut reader: LinkReader<ReadHalf<Stream>>) {
    let reason = loop {
        let frame = tokio::select! {
            () = context.stop.cancelled() => return,
            frame = tokio::time::timeout(SILENCE_LIMIT, reader.next()) => frame,
        };
        let frame = match frame {
            Err(_elapsed) => break LinkDown::Silent,
            Ok(Err(LinkError::Closed)) => break LinkDown::ClosedByPeer,
            Ok(Err(error)) => break LinkDown::Read(Arc::new(error)),
            Ok(Ok(frame)) => frame,
        };
        let reply = match frame {
            Frame::Message { id, text } => {
                let key = MessageKey {
                    instance: context.instance,
                    id,
                };
                // The frame layer checked the text is UTF-8.
                let text = String::from_utf8_lossy(&text);
                if context.local.inbox.store(&context.peer, key, &text) {
                    tracing::info!(from = %context.peer, bytes = text.len(), text = %preview(&text), "message received");
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
    mut writer: LinkWriter<WriteHalf<Stream>>,
    mut queue: mpsc::Receiver<Frame>,
    link: u64,
    events: mpsc::Sender<LinkEvent>,
    shutdown: CancellationToken,
) {
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
            Ok(Ok(())) => continue,
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
