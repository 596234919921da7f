//! What travels inside the encrypted stream.
//!
//! Each frame is a `u32` big-endian length, then a kind byte and the kind's
//! fields; the length covers the kind byte and fields. Kinds a peer does not
//! know are skipped, so later versions can add some. A frame longer than
//! [`MAX_FRAME_BYTES`], a known kind with the wrong size, or a message that is
//! not UTF-8 or longer than [`MAX_MESSAGE_BYTES`], or a close reason that is
//! not UTF-8, is malformed and ends the link.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::LinkError;

/// The largest frame a peer may send, length prefix excluded.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;

/// The longest message text, in bytes: what `meshctl send` accepts, checked
/// again on receipt, so a peer that ignores it cannot fill an inbox with
/// texts twice that size.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

const MESSAGE: u8 = 1;
const ACK: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
const CLOSE: u8 = 5;

/// One unit of the link protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message for the peer's inbox; answered by [`Frame::Ack`] with the
    /// same id once stored.
    Message {
        /// Sender-chosen, unique per sender instance; lets the receiver drop
        /// a resent duplicate.
        id: u64,
        /// UTF-8 text.
        text: Bytes,
    },
    /// The message with this id is in the peer's inbox.
    Ack {
        /// The message id.
        id: u64,
    },
    /// Asks for a [`Frame::Pong`]: keepalive and round-trip time.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Answers a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The sender is closing the link, and why (for the peer's log).
    Close {
        /// A short reason.
        reason: String,
    },
}

impl Frame {
    /// The bytes [`Frame::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        4 + 1
            + match self {
                Frame::Message { text, .. } => 8 + text.len(),
                Frame::Ack { .. } | Frame::Ping { .. } | Frame::Pong { .. } => 8,
                Frame::Close { reason } => reason.len(),
            }
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut impl BufMut) -> Result<(), LinkError> {
        let body = self.encoded_len() - 4;
        if body > MAX_FRAME_BYTES {
            return Err(LinkError::TooLarge { size: body });
        }
        if let Frame::Message { text, .. } = self
            && text.len() > MAX_MESSAGE_BYTES
        {
            return Err(LinkError::TooLarge { size: text.len() });
        }
        out.put_u32(body as u32);
        match self {
            Frame::Message { id, text } => {
                out.put_u8(MESSAGE);
                out.put_u64(*id);
                out.put_slice(text);
            }
            Frame::Ack { id } => {
                out.put_u8(ACK);
                out.put_u64(*id);
            }
            Frame::Ping { nonce } => {
                out.put_u8(PING);
                out.put_u64(*nonce);
            }
            Frame::Pong { nonce } => {
                out.put_u8(PONG);
                out.put_u64(*nonce);
            }
            Frame::Close { reason } => {
                out.put_u8(CLOSE);
                out.put_slice(reason.as_bytes());
            }
        }
        Ok(())
    }

    /// Takes the next whole frame off the front of `buffer`, if there is one.
    /// Unknown kinds are consumed and skipped.
    pub fn decode(buffer: &mut BytesMut) -> Result<Option<Frame>, LinkError> {
        loop {
            let Some(header) = buffer.first_chunk::<4>() else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(*header) as usize;
            if len == 0 || len > MAX_FRAME_BYTES {
                return Err(LinkError::Malformed(format!(
                    "frame length {len}, expected 1 to {MAX_FRAME_BYTES}"
                )));
            }
            if buffer.len() < 4 + len {
                buffer.reserve(4 + len - buffer.len());
                return Ok(None);
            }
            buffer.advance(4);
            let mut body = buffer.split_to(len).freeze();
            let kind = body.get_u8();
            let fixed = |body: &mut Bytes, name: &str| {
                if body.len() == 8 {
                    Ok(body.get_u64())
                } else {
                    Err(LinkError::Malformed(format!(
                        "{name} frame of {} bytes, expected 8",
                        body.len()
                    )))
                }
            };
            let frame = match kind {
                MESSAGE => {
                    if body.len() < 8 {
                        return Err(LinkError::Malformed("message frame too short".to_owned()));
                    }
                    let id = body.get_u64();
                    if body.len() > MAX_MESSAGE_BYTES {
                        return Err(LinkError::Malformed(format!(
                            "message text of {} bytes, at most {MAX_MESSAGE_BYTES} allowed",
                            body.len()
                        )));
                    }
                    if std::str::from_utf8(&body).is_err() {
                        return Err(LinkError::Malformed("message text is not UTF-8".to_owned()));
                    }
                    Frame::Message { id, text: body }
                }
                ACK => Frame::Ack {
                    id: fixed(&mut body, "ack")?,
                },
                PING => Frame::Ping {
                    nonce: fixed(&mut body, "ping")?,
                },
                PONG => Frame::Pong {
                    nonce: fixed(&mut body, "pong")?,
                },
                CLOSE => Frame::Close {
                    reason: String::from_utf8(body.to_vec()).map_err(|_| {
                        LinkError::Malformed("close reason is not UTF-8".to_owned())
                    })?,
                },
                _unknown => continue,
            };
            return Ok(Some(frame));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut buffer = BytesMut::new();
        frame.encode(&mut buffer).unwrap();
        assert_eq!(buffer.len(), frame.encoded_len());
        assert_eq!(Frame::decode(&mut buffer).unwrap(), Some(frame));
        assert!(buffer.is_empty());
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Frame::Message {
            id: 7,
            text: Bytes::from_static("héllo".as_bytes()),
        });
        round_trip(Frame::Ack { id: u64::MAX });
        round_trip(Frame::Ping { nonce: 1 });
        round_trip(Frame::Pong { nonce: 2 });
        round_trip(Frame::Close {
            reason: "bye".into(),
        });
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut whole = BytesMut::new();
        Frame::Ping { nonce: 9 }.encode(&mut whole).unwrap();
        let mut buffer = BytesMut::from(&whole[..6]);
        assert_eq!(Frame::decode(&mut buffer).unwrap(), None);
        buffer.extend_from_slice(&whole[6..]);
        assert_eq!(
            Frame::decode(&mut buffer).unwrap(),
            Some(Frame::Ping { nonce: 9 })
        );
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let mut buffer = BytesMut::new();
        buffer.put_u32(3);
        buffer.put_slice(&[200, 1, 2]);
        Frame::Ack { id: 5 }.encode(&mut buffer).unwrap();
        assert_eq!(
            Frame::decode(&mut buffer).unwrap(),
            Some(Frame::Ack { id: 5 })
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        for bytes in [
            &[0, 0, 0, 0][..],                                     // empty
            &[0xff, 0xff, 0xff, 0xff],                             // oversized
            &[0, 0, 0, 3, ACK, 1, 2],                              // short ack
            &[0, 0, 0, 10, MESSAGE, 0, 0, 0, 0, 0, 0, 0, 1, 0xff], // not UTF-8
            &[0, 0, 0, 4, CLOSE, b'b', 0xff, 0xff],                // found by fuzzing
        ] {
            let mut buffer = BytesMut::from(bytes);
            assert!(Frame::decode(&mut buffer).is_err(), "{bytes:?}");
        }
        let huge = Frame::Message {
            id: 1,
            text: Bytes::from(vec![b'a'; MAX_FRAME_BYTES]),
        };
        assert!(huge.encode(&mut BytesMut::new()).is_err());
        // A text over the message limit, though the frame would fit.
        let mut buffer = BytesMut::new();
        let text = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        buffer.put_u32((1 + 8 + text.len()) as u32);
        buffer.put_u8(MESSAGE);
        buffer.put_u64(1);
        buffer.put_slice(&text);
        let error = Frame::decode(&mut buffer).unwrap_err().to_string();
        assert!(error.contains("at most 65536"), "{error}");
        let exact = Frame::Message {
            id: 1,
            text: Bytes::from(vec![b'a'; MAX_MESSAGE_BYTES]),
        };
        let mut buffer = BytesMut::new();
        exact.encode(&mut buffer).unwrap();
        assert_eq!(Frame::decode(&mut buffer).unwrap(), Some(exact));
    }
}
