//! An open link, and its two halves.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::LinkError;
use crate::frame::{Frame, MAX_FRAME_BYTES};
use crate::identity::KEY_LEN;
use crate::record::{Incoming, MAX_RECORD_BYTES, RecordReader, RecordWriter};

/// Read buffer: several records per system call when the peer is busy.
const READ_BUFFER_BYTES: usize = 128 * 1024;

/// An authenticated, encrypted link over a byte stream.
pub struct Link<S> {
    stream: S,
    reader: RecordReader,
    writer: RecordWriter,
    remote_key: [u8; KEY_LEN],
}

impl<S> Link<S> {
    pub(crate) fn from_parts(
        stream: S,
        reader: RecordReader,
        writer: RecordWriter,
        remote_key: [u8; KEY_LEN],
    ) -> Self {
        Link {
            stream,
            reader,
            writer,
            remote_key,
        }
    }

    /// The peer's static key, proved by the handshake.
    pub fn remote_key(&self) -> &[u8; KEY_LEN] {
        &self.remote_key
    }

    /// The underlying stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// The dialler's first record: empty, it proves to the listener that
    /// the dialler holds the session keys, so a recorded first handshake
    /// message replayed by someone else never becomes a link.
    pub(crate) async fn send_confirmation(&mut self) -> Result<(), LinkError> {
        let mut record = Vec::new();
        self.writer.seal(&[], &mut record)?;
        self.stream.write_all(&record).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The listener's side of [`Link::send_confirmation`].
    pub(crate) async fn read_confirmation(&mut self) -> Result<(), LinkError> {
        let len = usize::from(self.stream.read_u16().await?);
        let mut record = vec![0; len];
        self.stream.read_exact(&mut record).await?;
        let mut plaintext = BytesMut::new();
        self.reader.open(&record, &mut plaintext)?;
        if !plaintext.is_empty() {
            return Err(LinkError::Handshake(
                "the dialler's confirmation record is not empty".to_owned(),
            ));
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite> Link<S> {
    /// Splits into halves for a reading task and a writing task.
    pub fn split(self) -> (LinkReader<ReadHalf<S>>, LinkWriter<WriteHalf<S>>) {
        let (read, write) = tokio::io::split(self.stream);
        (
            LinkReader {
                incoming: Incoming::new(read, self.reader, READ_BUFFER_BYTES),
            },
            LinkWriter {
                stream: write,
                records: self.writer,
                plaintext: BytesMut::new(),
                ciphertext: Vec::new(),
            },
        )
    }
}

/// The receiving half.
pub struct LinkReader<R> {
    incoming: Incoming<R>,
}

impl<R: AsyncRead + Unpin> LinkReader<R> {
    /// The next frame. [`LinkError::Closed`] when the peer closed between
    /// frames; any other error means the link is broken and must be dropped.
    pub async fn next(&mut self) -> Result<Frame, LinkError> {
        loop {
            if let Some(frame) = Frame::decode(&mut self.incoming.plaintext)? {
                return Ok(frame);
            }
            // Bounded: a partial frame never exceeds MAX_FRAME_BYTES, and
            // one record adds at most MAX_RECORD_BYTES.
            debug_assert!(self.incoming.plaintext.len() <= 4 + MAX_FRAME_BYTES + MAX_RECORD_BYTES);
            self.incoming.fill("frame").await?;
        }
    }
}

/// The sending half.
pub struct LinkWriter<W> {
    stream: W,
    records: RecordWriter,
    plaintext: BytesMut,
    ciphertext: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> LinkWriter<W> {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), LinkError> {
        self.send_all(std::slice::from_ref(frame)).await
    }

    /// Sends several frames with as few records and system calls as the
    /// sizes allow.
    pub async fn send_all(&mut self, frames: &[Frame]) -> Result<(), LinkError> {
        self.plaintext.clear();
        for frame in frames {
            frame.encode(&mut self.plaintext)?;
        }
        self.ciphertext.clear();
        self.records.seal(&self.plaintext, &mut self.ciphertext)?;
        self.stream.write_all(&self.ciphertext).await?;
        self.stream.flush().await?;
        if self.plaintext.capacity() > 4 * MAX_FRAME_BYTES {
            // One burst must not pin a large buffer for the link's lifetime.
            self.plaintext = BytesMut::new();
            self.ciphertext = Vec::new();
        }
        Ok(())
    }

    /// Shuts the write side down after a last frame.
    pub async fn close(mut self, reason: &str) {
        let _ = self
            .send(&Frame::Close {
                reason: reason.to_owned(),
            })
            .await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    use crate::handshake::{Hello, accept, connect};
    use crate::identity::StaticKey;

    use super::*;

    async fn pair() -> (Link<tokio::io::DuplexStream>, Link<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let alice = StaticKey::generate().unwrap();
        let bob = StaticKey::generate().unwrap();
        let bob_public = *bob.public();
        let hello = |from: &str, to: &str| Hello {
            from: from.into(),
            to: to.into(),
            instance: 1,
        };
        let dial =
            tokio::spawn(async move { connect(a, &alice, &bob_public, &hello("a", "b")).await });
        let inbound = accept(b, &bob).await.unwrap();
        let b_link = inbound.complete(&hello("b", "a")).await.unwrap();
        let (a_link, _) = dial.await.unwrap().unwrap();
        (a_link, b_link)
    }

    #[tokio::test]
    async fn frames_cross_in_both_directions_including_multi_record_ones() {
        let (a, b) = pair().await;
        let (mut a_read, mut a_write) = a.split();
        let (mut b_read, mut b_write) = b.split();
        let big = Bytes::from(vec![b'x'; crate::MAX_MESSAGE_BYTES]);
        a_write
            .send_all(&[
                Frame::Message {
                    id: 1,
                    text: big.clone(),
                },
                Frame::Ping { nonce: 3 },
            ])
            .await
            .unwrap();
        assert_eq!(
            b_read.next().await.unwrap(),
            Frame::Message { id: 1, text: big }
        );
        assert_eq!(b_read.next().await.unwrap(), Frame::Ping { nonce: 3 });
        b_write.send(&Frame::Pong { nonce: 3 }).await.unwrap();
        assert_eq!(a_read.next().await.unwrap(), Frame::Pong { nonce: 3 });
        b_write.close("done").await;
        assert_eq!(
            a_read.next().await.unwrap(),
            Frame::Close {
                reason: "done".into()
            }
        );
        assert!(matches!(a_read.next().await, Err(LinkError::Closed)));
    }

    #[tokio::test]
    async fn a_forged_record_ends_the_link() {
        let (a, b) = pair().await;
        let mut raw = a.stream;
        raw.write_all(&[0, 20]).await.unwrap();
        raw.write_all(&[7; 20]).await.unwrap();
        let (mut b_read, _) = b.split();
        assert!(matches!(b_read.next().await, Err(LinkError::Decrypt)));
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_mid_frame_is_malformed() {
        let (a, b) = pair().await;
        let (_a_read, mut a_write) = a.split();
        // A frame header promising more than is sent, then end of stream.
        let mut records = Vec::new();
        a_write
            .records
            .seal(&[0, 0, 0, 9, 1], &mut records)
            .unwrap();
        a_write.stream.write_all(&records).await.unwrap();
        a_write.stream.shutdown().await.unwrap();
        let (mut b_read, _) = b.split();
        assert!(matches!(b_read.next().await, Err(LinkError::Malformed(_))));
    }
}
