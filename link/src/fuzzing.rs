//! Entry points for the fuzz targets in `fuzz/` (see the repository's
//! docs/testing.md, "Fuzzing"): the frame decoder, the record layer, and
//! both handshakes fed by a peer that sends arbitrary bytes. Each must
//! never panic; the decoders also round-trip.

// A fuzz entry point reports a broken property by panicking: that is
// what libFuzzer catches and the replay test reports.
#![allow(clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use snow::StatelessTransportState;

use crate::handshake::params;
use crate::record::{RecordReader, RecordWriter};
use crate::{Frame, StaticKey};

/// Frames: every frame decoded re-encodes to exactly the bytes it took
/// (after any unknown kinds skipped before it), and decoding stops cleanly
/// at an incomplete frame.
pub fn frames(data: &[u8]) {
    let mut buffer = BytesMut::from(data);
    loop {
        let before = buffer.clone();
        match Frame::decode(&mut buffer) {
            Ok(Some(frame)) => {
                let consumed = before.len() - buffer.len();
                let mut encoded = BytesMut::new();
                frame.encode(&mut encoded).expect("a decoded frame encodes");
                assert!(encoded.len() <= consumed);
                assert_eq!(&encoded[..], &before[consumed - encoded.len()..consumed]);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// A transport pair from one real handshake, made once: records sealed by
/// the first open with the second.
pub(crate) fn transports() -> &'static (Arc<StatelessTransportState>, Arc<StatelessTransportState>)
{
    static PAIR: OnceLock<(Arc<StatelessTransportState>, Arc<StatelessTransportState>)> =
        OnceLock::new();
    PAIR.get_or_init(|| {
        let responder_key = StaticKey::generate().expect("a key");
        let initiator_key = StaticKey::generate().expect("a key");
        let mut initiator = snow::Builder::new(params())
            .local_private_key(initiator_key.private())
            .and_then(|b| b.remote_public_key(responder_key.public()))
            .and_then(|b| b.build_initiator())
            .expect("initiator");
        let mut responder = snow::Builder::new(params())
            .local_private_key(responder_key.private())
            .and_then(|b| b.build_responder())
            .expect("responder");
        let (mut first, mut second, mut scratch) = ([0u8; 1024], [0u8; 1024], [0u8; 1024]);
        let len = initiator.write_message(&[], &mut first).expect("message 1");
        responder
            .read_message(&first[..len], &mut scratch)
            .expect("read 1");
        let len = responder
            .write_message(&[], &mut second)
            .expect("message 2");
        initiator
            .read_message(&second[..len], &mut scratch)
            .expect("read 2");
        (
            Arc::new(
                initiator
                    .into_stateless_transport_mode()
                    .expect("transport"),
            ),
            Arc::new(
                responder
                    .into_stateless_transport_mode()
                    .expect("transport"),
            ),
        )
    })
}

/// Records: arbitrary bytes never open (they carry no valid tag), and any
/// plaintext sealed opens to itself, across records.
pub fn records(data: &[u8]) {
    let (sealing, opening) = transports();
    let mut reader = RecordReader::new(opening.clone());
    let mut plaintext = BytesMut::new();
    assert!(
        reader.open(data, &mut plaintext).is_err(),
        "forged record opened"
    );
    assert!(plaintext.is_empty(), "a failed open left bytes behind");
    let mut writer = RecordWriter::new(sealing.clone());
    let mut reader = RecordReader::new(opening.clone());
    let mut sealed = Vec::new();
    writer.seal(data, &mut sealed).expect("seals");
    let mut rest = &sealed[..];
    while let Some((len, body)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        reader.open(&body[..len], &mut plaintext).expect("opens");
        rest = &body[len..];
    }
    assert_eq!(&plaintext[..], data);
}

/// A stream that reads `data` and then its end, and swallows what is
/// written.
fn peer_sending(data: &[u8]) -> impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {
    let (ours, mut theirs) = tokio::io::duplex(1 << 20);
    let data = data.to_vec();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = theirs.write_all(&data).await;
        let _ = theirs.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(theirs.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    ours
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The link's responder facing a dialler that sends `data`: it ends with an
/// error (or a link), never a panic.
pub fn link_handshake(data: &[u8]) {
    let key = StaticKey::generate().expect("a key");
    runtime().block_on(async {
        let stream = peer_sending(data);
        let _ = tokio::time::timeout(Duration::from_secs(10), crate::accept(stream, &key)).await;
    });
}

/// The hub's side of a relay join facing a device that sends `data`.
pub fn relay_join_handshake(data: &[u8]) {
    let key = StaticKey::generate().expect("a key");
    runtime().block_on(async {
        let stream = peer_sending(data);
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            crate::relay_join::accept(stream, &key),
        )
        .await;
    });
}

/// The hub's side of a channel facing a device that sends `data`.
pub fn channel_handshake(data: &[u8]) {
    let key = StaticKey::generate().expect("a key");
    runtime().block_on(async {
        let stream = peer_sending(data);
        let _ = tokio::time::timeout(Duration::from_secs(10), crate::channel::serve(stream, &key))
            .await;
    });
}
