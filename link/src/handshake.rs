//! The Noise_IK handshake that opens every link.
//!
//! IK because the dialler always knows whom it calls: the signaling servers
//! list every device's public key. That gives one round trip, and the
//! dialler's identity travels encrypted. The first message carries the
//! dialler's [`Hello`]; the listener reads it, learns the dialler's static key,
//! and decides (through its caller) whether that key belongs to the claimed id
//! before it answers with its own hello. A listener that says no just closes:
//! the dialler learns nothing.
//!
//! Each handshake message is `u16` length-prefixed; each step must finish
//! within [`HANDSHAKE_TIMEOUT`]. After the two messages the dialler sends one
//! empty record: IK's first message can be replayed by anyone who recorded
//! it, and only this record proves the dialler holds the session keys, so
//! the listener opens no link without it.

use std::time::Duration;

use snow::params::NoiseParams;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::identity::{KEY_LEN, StaticKey};
use crate::record::{RecordReader, RecordWriter};
use crate::{Link, LinkError};

/// The protocol name; a change here is a new, incompatible link protocol.
/// AES-GCM rather than ChaChaPoly: with ring's AES-NI code it doubled link
/// throughput in bench/mesh-link.sh (docs/benchmarks.md).
const NOISE: &str = "Noise_IK_25519_AESGCM_BLAKE2s";

/// Bound into the handshake hash, so that only meshd link version 1 peers
/// agree on keys.
const PROLOGUE: &[u8] = b"meshd link 1";

/// Time allowed for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest id a hello may carry (device ids are at most 64 bytes).
const MAX_ID_BYTES: usize = 64;

/// Largest handshake message: keys, tags and a hello with two maximal ids.
const MAX_HANDSHAKE_BYTES: usize = 512;

pub(crate) fn params() -> NoiseParams {
    // A constant that parses; a failure is a programming error caught by
    // every test that opens a link.
    NOISE
        .parse()
        .unwrap_or_else(|_| unreachable!("{NOISE} is a valid Noise protocol name"))
}

/// What each side says about itself inside the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's device id.
    pub from: String,
    /// The device id the sender expects at the other end.
    pub to: String,
    /// Random per process start: lets the peer tell a restart (a new
    /// instance, so older links are stale) from a second link of the same
    /// instance (a simultaneous dial).
    pub instance: u64,
}

impl Hello {
    fn encode(&self) -> Result<Vec<u8>, LinkError> {
        let mut out = Vec::with_capacity(10 + self.from.len() + self.to.len());
        out.extend_from_slice(&self.instance.to_be_bytes());
        for id in [&self.from, &self.to] {
            let len = u8::try_from(id.len())
                .ok()
                .filter(|len| usize::from(*len) <= MAX_ID_BYTES)
                .ok_or_else(|| LinkError::Handshake(format!("device id too long: {id:?}")))?;
            out.push(len);
            out.extend_from_slice(id.as_bytes());
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, LinkError> {
        let malformed = || LinkError::Handshake("malformed hello".to_owned());
        let (instance, mut rest) = bytes.split_first_chunk::<8>().ok_or_else(malformed)?;
        let mut ids = Vec::with_capacity(2);
        for _ in 0..2 {
            let (&len, tail) = rest.split_first().ok_or_else(malformed)?;
            let len = usize::from(len);
            if len > MAX_ID_BYTES || tail.len() < len {
                return Err(malformed());
            }
            let id = std::str::from_utf8(&tail[..len]).map_err(|_| malformed())?;
            ids.push(id.to_owned());
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return Err(malformed());
        }
        let to = ids.pop().ok_or_else(malformed)?;
        let from = ids.pop().ok_or_else(malformed)?;
        Ok(Hello {
            from,
            to,
            instance: u64::from_be_bytes(*instance),
        })
    }
}

fn noise_error(error: snow::Error) -> LinkError {
    LinkError::Handshake(error.to_string())
}

/// Length of IK's first message carrying `hello`: ephemeral key, encrypted
/// static key and tag, encrypted payload and tag.
fn first_message_len(hello_len: usize) -> usize {
    KEY_LEN + KEY_LEN + 16 + hello_len + 16
}

/// Length of IK's second message carrying a hello of `hello_len` bytes.
fn second_message_len(hello_len: usize) -> usize {
    KEY_LEN + hello_len + 16
}

/// Dials: runs the initiator's side against a peer whose static key is
/// `remote`. Returns the open link and the peer's hello, which the caller
/// should check names the device it meant to reach.
///
/// If the peer dialled at the same moment and the two dials met as one TCP
/// connection (a simultaneous open, as NAT traversal provokes), both sides
/// start as initiators and each receives a first message instead of an
/// answer; the two are told apart by length. The side with the smaller id
/// stays the initiator and waits for the answer; the other becomes the
/// listener and answers the first message it received, checking it like
/// [`accept`] would: same peer, same key.
pub async fn connect<S>(
    mut stream: S,
    local: &StaticKey,
    remote: &[u8; KEY_LEN],
    hello: &Hello,
) -> Result<(Link<S>, Hello), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let mut noise = snow::Builder::new(params())
            .local_private_key(local.private())
            .and_then(|builder| builder.remote_public_key(remote))
            .and_then(|builder| builder.prologue(PROLOGUE))
            .and_then(|builder| builder.build_initiator())
            .map_err(noise_error)?;
        let mut buffer = [0u8; MAX_HANDSHAKE_BYTES];
        let encoded = hello.encode()?;
        let len = noise
            .write_message(&encoded, &mut buffer)
            .map_err(noise_error)?;
        write_message(&mut stream, &buffer[..len]).await?;
        let mut answer = read_message(&mut stream, MAX_HANDSHAKE_BYTES).await?;
        // The peer's hello has the same length as ours: ids swapped.
        if answer.len() == first_message_len(encoded.len())
            && answer.len() != second_message_len(encoded.len())
        {
            if hello.from < hello.to {
                // Simultaneous open, and we stay the initiator: the peer
                // drops its own attempt and answers ours.
                answer = read_message(&mut stream, MAX_HANDSHAKE_BYTES).await?;
            } else {
                return Ok::<_, LinkError>(Role::Listener(answer));
            }
        }
        let mut payload = [0u8; MAX_HANDSHAKE_BYTES];
        let len = noise
            .read_message(&answer, &mut payload)
            .map_err(noise_error)?;
        let peer = Hello::decode(&payload[..len])?;
        let transport = noise.into_stateless_transport_mode().map_err(noise_error)?;
        Ok(Role::Initiator(transport, peer))
    };
    let role = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| LinkError::Timeout)??;
    let (transport, peer) = match role {
        Role::Initiator(transport, peer) => (transport, peer),
        Role::Listener(first) => {
            let inbound = accept_first(stream, local, &first)?;
            let expected = |inbound: &Inbound<S>| {
                inbound.remote_key() == remote
                    && inbound.hello().from == hello.to
                    && inbound.hello().to == hello.from
            };
            if !expected(&inbound) {
                return Err(LinkError::Handshake(
                    "simultaneous open with a peer that is not the one dialled".to_owned(),
                ));
            }
            let peer = inbound.hello().clone();
            let link = inbound.complete(hello).await?;
            return Ok((link, peer));
        }
    };
    let mut link = Link::new(stream, transport, *remote);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, link.send_confirmation())
        .await
        .map_err(|_| LinkError::Timeout)??;
    Ok((link, peer))
}

/// How a dial turned out: as dialled, or as the listener of a simultaneous
/// open, holding the peer's first message.
enum Role {
    Initiator(snow::StatelessTransportState, Hello),
    Listener(Vec<u8>),
}

/// The listener's side from an already received first message.
fn accept_first<S>(stream: S, local: &StaticKey, message: &[u8]) -> Result<Inbound<S>, LinkError> {
    let mut noise = snow::Builder::new(params())
        .local_private_key(local.private())
        .and_then(|builder| builder.prologue(PROLOGUE))
        .and_then(|builder| builder.build_responder())
        .map_err(noise_error)?;
    let mut payload = [0u8; MAX_HANDSHAKE_BYTES];
    let len = noise
        .read_message(message, &mut payload)
        .map_err(noise_error)?;
    let hello = Hello::decode(&payload[..len])?;
    let remote_key: [u8; KEY_LEN] = noise
        .get_remote_static()
        .and_then(|key| key.try_into().ok())
        .ok_or_else(|| LinkError::Handshake("no static key from the dialler".to_owned()))?;
    Ok(Inbound {
        stream,
        noise,
        hello,
        remote_key,
    })
}

/// Listens: reads the dialler's first message. The caller checks
/// [`Inbound::hello`] and [`Inbound::remote_key`] against what the signaling
/// servers say, then calls [`Inbound::complete`] or drops it.
pub async fn accept<S>(mut stream: S, local: &StaticKey) -> Result<Inbound<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let message = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_message(&mut stream, MAX_HANDSHAKE_BYTES),
    )
    .await
    .map_err(|_| LinkError::Timeout)??;
    accept_first(stream, local, &message)
}

/// A dialler that has proved its static key but has not been answered yet.
pub struct Inbound<S> {
    stream: S,
    noise: snow::HandshakeState,
    hello: Hello,
    remote_key: [u8; KEY_LEN],
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inbound<S> {
    /// What the dialler says about itself.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The static key the dialler proved it holds.
    pub fn remote_key(&self) -> &[u8; KEY_LEN] {
        &self.remote_key
    }

    /// The stream, e.g. to read the peer's address.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Accepts the dialler: sends our hello, waits for its key
    /// confirmation and opens the link.
    pub async fn complete(mut self, hello: &Hello) -> Result<Link<S>, LinkError> {
        let mut buffer = [0u8; MAX_HANDSHAKE_BYTES];
        let len = self
            .noise
            .write_message(&hello.encode()?, &mut buffer)
            .map_err(noise_error)?;
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            write_message(&mut self.stream, &buffer[..len]),
        )
        .await
        .map_err(|_| LinkError::Timeout)??;
        let transport = self
            .noise
            .into_stateless_transport_mode()
            .map_err(noise_error)?;
        let mut link = Link::new(self.stream, transport, self.remote_key);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, link.read_confirmation())
            .await
            .map_err(|_| LinkError::Timeout)??;
        Ok(link)
    }
}

/// Writes one `u16` length-prefixed handshake message (links and channels).
pub(crate) async fn write_message<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &[u8],
) -> Result<(), LinkError> {
    let len = u16::try_from(message.len())
        .map_err(|_| LinkError::Handshake("handshake message too long".to_owned()))?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one `u16` length-prefixed handshake message of at most `max` bytes.
pub(crate) async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Vec<u8>, LinkError> {
    let len = usize::from(stream.read_u16().await?);
    if len > max {
        return Err(LinkError::Handshake(format!(
            "handshake message of {len} bytes, at most {max}"
        )));
    }
    let mut message = vec![0; len];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

// Records need the transport; keep the constructors next to each other.
impl<S> Link<S> {
    fn new(stream: S, transport: snow::StatelessTransportState, remote_key: [u8; KEY_LEN]) -> Self {
        let transport = std::sync::Arc::new(transport);
        Link::from_parts(
            stream,
            RecordReader::new(transport.clone()),
            RecordWriter::new(transport),
            remote_key,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(from: &str, to: &str) -> Hello {
        Hello {
            from: from.into(),
            to: to.into(),
            instance: 42,
        }
    }

    #[test]
    fn hello_round_trips_and_rejects_garbage() {
        let original = hello("alpha", "beta");
        assert_eq!(
            Hello::decode(&original.encode().unwrap()).unwrap(),
            original
        );
        assert!(Hello::decode(b"short").is_err());
        let mut trailing = original.encode().unwrap();
        trailing.push(0);
        assert!(Hello::decode(&trailing).is_err());
        assert!(hello(&"x".repeat(65), "b").encode().is_err());
    }

    #[tokio::test]
    async fn both_sides_learn_each_other() {
        let (a, b) = tokio::io::duplex(4096);
        let alice = StaticKey::generate().unwrap();
        let bob = StaticKey::generate().unwrap();
        let bob_public = *bob.public();
        let dial = tokio::spawn({
            let alice = alice.clone();
            async move { connect(a, &alice, &bob_public, &hello("alice", "bob")).await }
        });
        let inbound = accept(b, &bob).await.unwrap();
        assert_eq!(inbound.hello(), &hello("alice", "bob"));
        assert_eq!(inbound.remote_key(), alice.public());
        let _link = inbound.complete(&hello("bob", "alice")).await.unwrap();
        let (_link, peer) = dial.await.unwrap().unwrap();
        assert_eq!(peer, hello("bob", "alice"));
    }

    #[tokio::test]
    async fn dialling_the_wrong_key_fails() {
        let (a, b) = tokio::io::duplex(4096);
        let alice = StaticKey::generate().unwrap();
        let bob = StaticKey::generate().unwrap();
        let impostor = StaticKey::generate().unwrap();
        let expected = *bob.public();
        let dial =
            tokio::spawn(
                async move { connect(a, &alice, &expected, &hello("alice", "bob")).await },
            );
        // The impostor cannot even read the dialler's hello.
        assert!(accept(b, &impostor).await.is_err());
        assert!(dial.await.unwrap().is_err());
    }
}

#[cfg(test)]
mod replay_tests {
    use super::*;

    /// Records what a dialler writes.
    struct Recorder {
        inner: tokio::io::DuplexStream,
        written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.written.lock().unwrap().extend_from_slice(data);
            std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_replayed_first_message_never_becomes_a_link() {
        let alice = StaticKey::generate().unwrap();
        let bob = StaticKey::generate().unwrap();
        let hello = |from: &str, to: &str| Hello {
            from: from.into(),
            to: to.into(),
            instance: 1,
        };
        // A real exchange, recorded.
        let (a, b) = tokio::io::duplex(4096);
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = Recorder {
            inner: a,
            written: written.clone(),
        };
        let bob_public = *bob.public();
        let alice_dials = alice.clone();
        let dial = tokio::spawn(async move {
            connect(recorder, &alice_dials, &bob_public, &hello("alice", "bob")).await
        });
        let inbound = accept(b, &bob).await.unwrap();
        inbound.complete(&hello("bob", "alice")).await.unwrap();
        dial.await.unwrap().unwrap();
        let first_message = {
            let written = written.lock().unwrap();
            let len = usize::from(u16::from_be_bytes([written[0], written[1]]));
            written[..2 + len].to_vec()
        };

        // The same first message replayed: the listener checks the
        // dialler's key (valid: it is alice's) and answers, but without the
        // confirmation no link opens.
        let (mut attacker, b) = tokio::io::duplex(4096);
        attacker.write_all(&first_message).await.unwrap();
        let inbound = accept(b, &bob).await.unwrap();
        assert_eq!(inbound.remote_key(), alice.public());
        let answered = tokio::spawn(async move { inbound.complete(&hello("bob", "alice")).await });
        // The attacker cannot produce the confirmation; it sends garbage.
        attacker.write_all(&[0, 16]).await.unwrap();
        attacker.write_all(&[0; 16]).await.unwrap();
        assert!(answered.await.unwrap().is_err());
    }
}

#[cfg(test)]
mod simultaneous_tests {
    use super::*;

    #[tokio::test]
    async fn two_dials_that_meet_as_one_connection_make_one_link() {
        // One stream, both ends dialling: what a TCP simultaneous open gives.
        let (a, b) = tokio::io::duplex(4096);
        let alice = StaticKey::generate().unwrap();
        let bob = StaticKey::generate().unwrap();
        let (alice_public, bob_public) = (*alice.public(), *bob.public());
        let a_hello = Hello {
            from: "alice".into(),
            to: "bob".into(),
            instance: 1,
        };
        let b_hello = Hello {
            from: "bob".into(),
            to: "alice".into(),
            instance: 2,
        };
        let (from_a, from_b) = tokio::join!(
            connect(a, &alice, &bob_public, &a_hello),
            connect(b, &bob, &alice_public, &b_hello)
        );
        let (a_link, a_peer) = from_a.unwrap();
        let (b_link, b_peer) = from_b.unwrap();
        assert_eq!(a_peer, b_hello);
        assert_eq!(b_peer, a_hello);
        let (mut a_read, mut a_write) = a_link.split();
        let (mut b_read, mut b_write) = b_link.split();
        a_write
            .send(&crate::Frame::Ping { nonce: 1 })
            .await
            .unwrap();
        assert_eq!(
            b_read.next().await.unwrap(),
            crate::Frame::Ping { nonce: 1 }
        );
        b_write
            .send(&crate::Frame::Pong { nonce: 1 })
            .await
            .unwrap();
        assert_eq!(
            a_read.next().await.unwrap(),
            crate::Frame::Pong { nonce: 1 }
        );
    }
}
