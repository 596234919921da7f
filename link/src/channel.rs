//! The hub channel: a device's authenticated, encrypted connection to a
//! signaling server. Over it the device registers and heartbeats; the hub
//! pushes registry changes and passes hole-punching and relay messages
//! between devices.
//!
//! It opens with the hub handshake (`Noise_XX`, in the crate's `hub_handshake` module):
//! the hub proves its key first and the device checks it against the key
//! it pinned before naming itself; then the device proves its key and names
//! its id. So each side knows whom it talks to before anything else is said.
//!
//! After the handshake both directions carry messages: a `u32` length, then
//! that many bytes, inside the same record layer as links. The content is
//! the caller's (meshd uses JSON).

use std::sync::Arc;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::LinkError;
use crate::hub_handshake::{self, Purpose};
use crate::identity::{KEY_LEN, StaticKey};
use crate::record::{Incoming, MAX_RECORD_PLAINTEXT, RecordReader, RecordWriter};

/// The longest id the device may name (device ids are at most 64 bytes).
const MAX_ID_BYTES: usize = 64;

/// Read buffer size.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Ciphertext buffer a writer keeps between messages.
const KEPT_CIPHERTEXT_BYTES: usize = 16 * 1024;

/// An open channel, before it is split for a reading and a writing task.
pub struct Channel<S> {
    stream: S,
    reader: RecordReader,
    writer: RecordWriter,
}

/// Who opened a channel, as the hub learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPeer {
    /// The id the device claims; the caller checks it against `key`.
    pub id: String,
    /// The static key the device proved it holds.
    pub key: [u8; KEY_LEN],
}

/// The device's side: runs the handshake as `id` with `local`'s key, and
/// returns the channel with the key the hub proved. With `expected_hub`, a
/// hub that proves another key gets nothing ([`LinkError::UnexpectedHubKey`]).
pub async fn open<S>(
    mut stream: S,
    local: &StaticKey,
    id: &str,
    expected_hub: Option<&[u8; KEY_LEN]>,
) -> Result<(Channel<S>, [u8; KEY_LEN]), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if id.len() > MAX_ID_BYTES {
        return Err(LinkError::Handshake(format!("device id too long: {id:?}")));
    }
    let side = hub_handshake::initiate(
        &mut stream,
        local,
        Purpose::Channel,
        id.as_bytes(),
        expected_hub,
    )
    .await?;
    Ok((Channel::new(stream, side.transport), side.hub_key))
}

/// The hub's side, proving `hub_key`: returns who the device says it is
/// and which key it proved.
pub async fn serve<S>(
    mut stream: S,
    hub_key: &StaticKey,
) -> Result<(Channel<S>, ChannelPeer), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let side = hub_handshake::respond(&mut stream, hub_key, Purpose::Channel).await?;
    let id = String::from_utf8(side.payload)
        .ok()
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES)
        .ok_or_else(|| LinkError::Handshake("malformed device id".to_owned()))?;
    Ok((
        Channel::new(stream, side.transport),
        ChannelPeer {
            id,
            key: side.device_key,
        },
    ))
}

impl<S> Channel<S> {
    fn new(stream: S, transport: snow::StatelessTransportState) -> Self {
        let transport = Arc::new(transport);
        Channel {
            stream,
            reader: RecordReader::new(transport.clone()),
            writer: RecordWriter::new(transport),
        }
    }
}

impl<S: AsyncRead + AsyncWrite> Channel<S> {
    /// Splits into halves; the reader refuses messages over `max_incoming`
    /// bytes, so each side bounds what the other can make it buffer.
    pub fn split(
        self,
        max_incoming: usize,
    ) -> (ChannelReader<ReadHalf<S>>, ChannelWriter<WriteHalf<S>>) {
        let (read, write) = tokio::io::split(self.stream);
        (
            ChannelReader {
                incoming: Incoming::new(read, self.reader, READ_BUFFER_BYTES),
                max_incoming,
            },
            ChannelWriter {
                stream: write,
                records: self.writer,
                ciphertext: Vec::new(),
            },
        )
    }
}

/// The receiving half of a channel.
pub struct ChannelReader<R> {
    incoming: Incoming<R>,
    max_incoming: usize,
}

impl<R: AsyncRead + Unpin> ChannelReader<R> {
    /// The next message. [`LinkError::Closed`] when the other side closed
    /// between messages; any other error means the channel is broken.
    pub async fn next(&mut self) -> Result<Bytes, LinkError> {
        loop {
            let plaintext = &mut self.incoming.plaintext;
            if let Some(len) = plaintext
                .first_chunk::<4>()
                .map(|len| usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX))
            {
                if len > self.max_incoming {
                    return Err(LinkError::Malformed(format!(
                        "channel message of {len} bytes, at most {}",
                        self.max_incoming
                    )));
                }
                if plaintext.len() >= 4 + len {
                    plaintext.advance(4);
                    return Ok(plaintext.split_to(len).freeze());
                }
            }
            self.incoming.fill("message").await?;
        }
    }
}

/// The sending half of a channel.
pub struct ChannelWriter<W> {
    stream: W,
    records: RecordWriter,
    ciphertext: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> ChannelWriter<W> {
    /// Sends one message, sealing and writing a record at a time: a hub
    /// sending its whole list to thousands of channels holds one record's
    /// ciphertext per channel, not a copy of the list.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), LinkError> {
        let len = u32::try_from(message.len()).map_err(|_| LinkError::TooLarge {
            size: message.len(),
        })?;
        // The length prefix travels in the first record with the start of
        // the message; records are a segmentation the reader undoes.
        let first_len = message.len().min(MAX_RECORD_PLAINTEXT - 4);
        let (first, rest) = message.split_at(first_len);
        let mut plaintext = Vec::with_capacity(4 + first.len());
        plaintext.extend_from_slice(&len.to_be_bytes());
        plaintext.extend_from_slice(first);
        self.write_records(&plaintext).await?;
        for chunk in rest.chunks(MAX_RECORD_PLAINTEXT) {
            self.write_records(chunk).await?;
        }
        self.stream.flush().await?;
        // An idle channel keeps a small buffer, not its largest message's.
        if self.ciphertext.capacity() > KEPT_CIPHERTEXT_BYTES {
            self.ciphertext = Vec::new();
        }
        Ok(())
    }

    async fn write_records(&mut self, plaintext: &[u8]) -> Result<(), LinkError> {
        self.ciphertext.clear();
        self.records.seal(plaintext, &mut self.ciphertext)?;
        self.stream.write_all(&self.ciphertext).await?;
        Ok(())
    }

    /// Shuts the write side down.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_hub_learns_the_device_key_and_messages_cross_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let device = StaticKey::generate().unwrap();
        let public = *device.public();
        let hub = StaticKey::generate().unwrap();
        let hub_public = *hub.public();
        let opened =
            tokio::spawn(async move { open(a, &device, "alpha", Some(&hub_public)).await });
        let (hub_side, peer) = serve(b, &hub).await.unwrap();
        assert_eq!(
            peer,
            ChannelPeer {
                id: "alpha".into(),
                key: public
            }
        );
        let (device_side, proved) = opened.await.unwrap().unwrap();
        assert_eq!(proved, hub_public);
        let (mut device_read, mut device_write) = device_side.split(1 << 20);
        let (mut hub_read, mut hub_write) = hub_side.split(1024);
        device_write.send(b"hello hub").await.unwrap();
        assert_eq!(&hub_read.next().await.unwrap()[..], b"hello hub");
        let big = vec![7u8; 200_000];
        hub_write.send(&big).await.unwrap();
        assert_eq!(device_read.next().await.unwrap(), big);
        hub_write.close().await;
        assert!(matches!(device_read.next().await, Err(LinkError::Closed)));
    }

    #[tokio::test]
    async fn a_message_over_the_readers_limit_breaks_the_channel() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let device = StaticKey::generate().unwrap();
        let hub = StaticKey::generate().unwrap();
        let opened = tokio::spawn(async move { open(a, &device, "alpha", None).await });
        let (hub_side, _) = serve(b, &hub).await.unwrap();
        let (_, mut device_write) = opened.await.unwrap().unwrap().0.split(1024);
        let (mut hub_read, _) = hub_side.split(1024);
        device_write.send(&[1u8; 2000]).await.unwrap();
        assert!(matches!(
            hub_read.next().await,
            Err(LinkError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_link_handshake_is_not_a_channel() {
        let (a, b) = tokio::io::duplex(4096);
        let alice = StaticKey::generate().unwrap();
        let bob = StaticKey::generate().unwrap();
        let bob_public = *bob.public();
        let hello = crate::Hello {
            from: "alice".into(),
            to: "bob".into(),
            instance: 1,
        };
        tokio::spawn(async move { crate::connect(a, &alice, &bob_public, &hello).await });
        assert!(serve(b, &bob).await.is_err());
    }

    #[tokio::test]
    async fn a_hub_with_another_key_learns_nothing_of_the_device() {
        let (a, mut b) = tokio::io::duplex(4096);
        let device = StaticKey::generate().unwrap();
        let pinned = *StaticKey::generate().unwrap().public();
        let impostor = StaticKey::generate().unwrap();
        let impostor_public = *impostor.public();
        let opened = tokio::spawn(async move { open(a, &device, "alpha", Some(&pinned)).await });
        // The impostor runs the hub's side by hand, to see what it gets.
        let mut noise = snow::Builder::new("Noise_XX_25519_AESGCM_BLAKE2s".parse().unwrap())
            .local_private_key(impostor.private())
            .unwrap()
            .prologue(b"meshd channel 2")
            .unwrap()
            .build_responder()
            .unwrap();
        let mut scratch = [0u8; 256];
        let first = crate::handshake::read_message(&mut b, 256).await.unwrap();
        noise.read_message(&first, &mut scratch).unwrap();
        let len = noise.write_message(&[], &mut scratch).unwrap();
        crate::handshake::write_message(&mut b, &scratch[..len])
            .await
            .unwrap();
        match opened.await.unwrap() {
            Err(LinkError::UnexpectedHubKey { proved }) => assert_eq!(*proved, impostor_public),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        // The device closed without a third message: no key, no id.
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut rest)
            .await
            .unwrap();
        assert!(rest.is_empty(), "{} bytes after the refusal", rest.len());
        assert!(noise.get_remote_static().is_none());
    }

    #[tokio::test]
    async fn a_relay_join_is_not_a_channel() {
        let (a, b) = tokio::io::duplex(4096);
        let device = StaticKey::generate().unwrap();
        let hub = StaticKey::generate().unwrap();
        tokio::spawn(async move { crate::relay_join::join(a, &device, "t0k3n", None).await });
        assert!(serve(b, &hub).await.is_err());
    }
}
