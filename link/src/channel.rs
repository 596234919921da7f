//! The hub channel: a device's authenticated, encrypted connection to a
//! signaling server, over which the hub pushes registry changes and passes
//! hole-punching and relay messages between devices.
//!
//! The handshake is `Noise_XN`: the device (initiator) proves its static key
//! and names its id in the third message; the hub has no static key, because
//! devices have no way to know one in advance (they find hubs by URL). What
//! the device gets is privacy from passive observers; what the hub gets is
//! proof that the other end holds the key registered for the id it claims.
//!
//! After the handshake both directions carry messages: a `u32` length, then
//! that many bytes, inside the same record layer as links. The content is
//! the caller's (meshd uses JSON).

use std::sync::Arc;

use bytes::{Buf, Bytes};
use snow::params::NoiseParams;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::LinkError;
use crate::handshake::{HANDSHAKE_TIMEOUT, read_message, write_message};
use crate::identity::{KEY_LEN, StaticKey};
use crate::record::{Incoming, RecordReader, RecordWriter};

/// The protocol name; a change here is a new, incompatible channel protocol.
const NOISE: &str = "Noise_XN_25519_AESGCM_BLAKE2s";

/// Bound into the handshake hash: only channel version 1 peers agree on
/// keys, and a link handshake can never be mistaken for a channel one.
const PROLOGUE: &[u8] = b"meshd channel 1";

/// Largest handshake message: keys, tags and a maximal id.
const MAX_HANDSHAKE_BYTES: usize = 256;

/// The longest id the device may name (device ids are at most 64 bytes).
const MAX_ID_BYTES: usize = 64;

/// Read buffer size.
const READ_BUFFER_BYTES: usize = 64 * 1024;

fn params() -> NoiseParams {
    NOISE
        .parse()
        .unwrap_or_else(|_| unreachable!("{NOISE} is a valid Noise protocol name"))
}

fn noise_error(error: snow::Error) -> LinkError {
    LinkError::Handshake(error.to_string())
}

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

/// The device's side: runs the handshake as `id` with `local`'s key.
pub async fn open<S>(mut stream: S, local: &StaticKey, id: &str) -> Result<Channel<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if id.len() > MAX_ID_BYTES {
        return Err(LinkError::Handshake(format!("device id too long: {id:?}")));
    }
    let exchange = async {
        let mut noise = snow::Builder::new(params())
            .local_private_key(local.private())
            .and_then(|builder| builder.prologue(PROLOGUE))
            .and_then(|builder| builder.build_initiator())
            .map_err(noise_error)?;
        let mut buffer = [0u8; MAX_HANDSHAKE_BYTES];
        let len = noise.write_message(&[], &mut buffer).map_err(noise_error)?;
        write_message(&mut stream, &buffer[..len]).await?;
        let answer = read_message(&mut stream, MAX_HANDSHAKE_BYTES).await?;
        let mut payload = [0u8; MAX_HANDSHAKE_BYTES];
        noise
            .read_message(&answer, &mut payload)
            .map_err(noise_error)?;
        let len = noise
            .write_message(id.as_bytes(), &mut buffer)
            .map_err(noise_error)?;
        write_message(&mut stream, &buffer[..len]).await?;
        let transport = noise.into_stateless_transport_mode().map_err(noise_error)?;
        Ok::<_, LinkError>(transport)
    };
    let transport = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| LinkError::Timeout)??;
    Ok(Channel::new(stream, transport))
}

/// The hub's side: runs the handshake and returns who the device says it
/// is and which key it proved.
pub async fn serve<S>(mut stream: S) -> Result<(Channel<S>, ChannelPeer), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let mut noise = snow::Builder::new(params())
            .prologue(PROLOGUE)
            .and_then(|builder| builder.build_responder())
            .map_err(noise_error)?;
        let mut payload = [0u8; MAX_HANDSHAKE_BYTES];
        let first = read_message(&mut stream, MAX_HANDSHAKE_BYTES).await?;
        noise
            .read_message(&first, &mut payload)
            .map_err(noise_error)?;
        let mut buffer = [0u8; MAX_HANDSHAKE_BYTES];
        let len = noise.write_message(&[], &mut buffer).map_err(noise_error)?;
        write_message(&mut stream, &buffer[..len]).await?;
        let third = read_message(&mut stream, MAX_HANDSHAKE_BYTES).await?;
        let len = noise
            .read_message(&third, &mut payload)
            .map_err(noise_error)?;
        let id = std::str::from_utf8(&payload[..len])
            .ok()
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES)
            .ok_or_else(|| LinkError::Handshake("malformed device id".to_owned()))?
            .to_owned();
        let key: [u8; KEY_LEN] = noise
            .get_remote_static()
            .and_then(|key| key.try_into().ok())
            .ok_or_else(|| LinkError::Handshake("no static key from the device".to_owned()))?;
        let transport = noise.into_stateless_transport_mode().map_err(noise_error)?;
        Ok::<_, LinkError>((transport, ChannelPeer { id, key }))
    };
    let (transport, peer) = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| LinkError::Timeout)??;
    Ok((Channel::new(stream, transport), peer))
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
    /// Sends one message.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), LinkError> {
        let len = u32::try_from(message.len()).map_err(|_| LinkError::TooLarge {
            size: message.len(),
        })?;
        let mut plaintext = Vec::with_capacity(4 + message.len());
        plaintext.extend_from_slice(&len.to_be_bytes());
        plaintext.extend_from_slice(message);
        self.ciphertext.clear();
        self.records.seal(&plaintext, &mut self.ciphertext)?;
        self.stream.write_all(&self.ciphertext).await?;
        self.stream.flush().await?;
        if self.ciphertext.capacity() > 1 << 20 {
            self.ciphertext = Vec::new();
        }
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
        let opened = tokio::spawn(async move { open(a, &device, "alpha").await });
        let (hub_side, peer) = serve(b).await.unwrap();
        assert_eq!(
            peer,
            ChannelPeer {
                id: "alpha".into(),
                key: public
            }
        );
        let device_side = opened.await.unwrap().unwrap();
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
        let opened = tokio::spawn(async move { open(a, &device, "alpha").await });
        let (hub_side, _) = serve(b).await.unwrap();
        let (_, mut device_write) = opened.await.unwrap().unwrap().split(1024);
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
        assert!(serve(b).await.is_err());
    }
}
