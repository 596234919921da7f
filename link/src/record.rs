//! The encrypted byte stream under the frames.
//!
//! A record is a `u16` big-endian length and that many bytes of Noise
//! transport message: at most 65,519 bytes of plaintext plus a 16-byte tag.
//! Each direction counts its own nonces from zero; the stream is reliable and
//! ordered, so the reader's counter always matches the writer's, and any
//! altered, dropped or replayed record fails to decrypt.

use std::sync::Arc;

use bytes::BytesMut;
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::LinkError;

/// Noise's limit on one transport message.
pub const MAX_RECORD_BYTES: usize = 65_535;

/// The authentication tag each record carries.
const TAG_BYTES: usize = 16;

/// Plaintext bytes one record can hold.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_BYTES - TAG_BYTES;

/// Seals plaintext into records for one direction of a link.
pub struct RecordWriter {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
}

impl RecordWriter {
    pub(crate) fn new(transport: Arc<StatelessTransportState>) -> Self {
        RecordWriter {
            transport,
            nonce: 0,
        }
    }

    /// Appends `plaintext` to `out` as one or more length-prefixed records
    /// (one empty record for empty plaintext).
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), LinkError> {
        if plaintext.is_empty() {
            return self.seal_one(&[], out);
        }
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            self.seal_one(chunk, out)?;
        }
        Ok(())
    }

    fn seal_one(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), LinkError> {
        let start = out.len();
        let sealed_len = chunk.len() + TAG_BYTES;
        out.resize(start + 2 + sealed_len, 0);
        let written = self
            .transport
            .write_message(self.nonce, chunk, &mut out[start + 2..])
            .map_err(|error| LinkError::Handshake(format!("sealing a record: {error}")))?;
        debug_assert_eq!(written, sealed_len);
        let len = u16::try_from(written).map_err(|_| LinkError::TooLarge { size: written })?;
        out[start..start + 2].copy_from_slice(&len.to_be_bytes());
        self.nonce += 1;
        Ok(())
    }
}

/// Opens records from the other direction of a link.
pub struct RecordReader {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
}

impl RecordReader {
    pub(crate) fn new(transport: Arc<StatelessTransportState>) -> Self {
        RecordReader {
            transport,
            nonce: 0,
        }
    }

    /// Decrypts one record (without its length prefix) onto the end of
    /// `plaintext`; on failure `plaintext` is left as it was.
    ///
    /// Decrypts in place at the end of `plaintext` rather than through a
    /// scratch buffer: no record-sized buffer per link, and one copy less.
    pub fn open(&mut self, record: &[u8], plaintext: &mut BytesMut) -> Result<(), LinkError> {
        if record.len() < TAG_BYTES {
            return Err(LinkError::Decrypt);
        }
        let start = plaintext.len();
        plaintext.resize(start + record.len(), 0);
        match self
            .transport
            .read_message(self.nonce, record, &mut plaintext[start..])
        {
            Ok(len) => {
                plaintext.truncate(start + len);
                self.nonce += 1;
                Ok(())
            }
            Err(_) => {
                plaintext.truncate(start);
                Err(LinkError::Decrypt)
            }
        }
    }
}

/// What a record stream reads per call at first. Most links and channels
/// carry small messages and stay at this size; see [`Incoming::fill`].
const FIRST_READ_BYTES: usize = 4 * 1024;

/// The receiving side of a record stream: ciphertext read from a stream
/// and opened, one whole record at a time, onto `plaintext`, where the layer
/// above (frames, channel messages) takes its units from.
pub(crate) struct Incoming<R> {
    stream: R,
    records: RecordReader,
    /// Ciphertext read but not yet opened: whole records are opened straight
    /// from here, so each byte is copied once on its way in.
    input: BytesMut,
    /// Opened bytes not yet taken.
    pub(crate) plaintext: BytesMut,
    /// What the next read asks for: grows while reads fill it.
    read_size: usize,
    max_read_size: usize,
}

impl<R: AsyncRead + Unpin> Incoming<R> {
    /// Reads from `stream` up to `max_read_size` bytes a call once the
    /// stream is busy, and much less while it is not.
    pub(crate) fn new(stream: R, records: RecordReader, max_read_size: usize) -> Self {
        Incoming {
            stream,
            records,
            input: BytesMut::new(),
            plaintext: BytesMut::new(),
            read_size: FIRST_READ_BYTES.min(max_read_size),
            max_read_size,
        }
    }

    /// Opens one more record onto `plaintext`, reading while none is whole.
    /// At the end of the stream: [`LinkError::Closed`] if nothing was left
    /// half read, otherwise malformed, inside a `unit`.
    ///
    /// The read size starts small and doubles each time a read fills all
    /// the room it was given, up to the maximum: a busy link soon reads
    /// several records per system call, while an idle one (most of a mesh's
    /// links) holds kilobytes, not a record-sized buffer that the
    /// allocator would keep after the link is gone.
    pub(crate) async fn fill(&mut self, unit: &str) -> Result<(), LinkError> {
        loop {
            if let Some(len) = self
                .input
                .first_chunk::<2>()
                .map(|len| usize::from(u16::from_be_bytes(*len)))
                && self.input.len() >= 2 + len
            {
                let record = self.input.split_to(2 + len);
                return self.records.open(&record[2..], &mut self.plaintext);
            }
            self.input.reserve(self.read_size);
            let room = self.input.capacity() - self.input.len();
            let read = self.stream.read_buf(&mut self.input).await?;
            if read == 0 {
                return Err(if self.plaintext.is_empty() && self.input.is_empty() {
                    LinkError::Closed
                } else {
                    LinkError::Malformed(format!("stream ended inside a {unit}"))
                });
            }
            if read == room {
                self.read_size = (self.read_size * 2).min(self.max_read_size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::transports;

    fn sealed(records: &[&[u8]]) -> Vec<u8> {
        let mut writer = RecordWriter::new(transports().0.clone());
        let mut out = Vec::new();
        for record in records {
            writer.seal(record, &mut out).expect("seals");
        }
        out
    }

    #[test]
    fn records_open_in_place_after_what_is_there() {
        let stream = sealed(&[b"hello", b" world"]);
        let mut reader = RecordReader::new(transports().1.clone());
        let mut plaintext = BytesMut::from(&b">"[..]);
        let first = 2 + usize::from(u16::from_be_bytes([stream[0], stream[1]]));
        reader
            .open(&stream[2..first], &mut plaintext)
            .expect("opens");
        reader
            .open(&stream[first + 2..], &mut plaintext)
            .expect("opens");
        assert_eq!(&plaintext[..], b">hello world");
    }

    #[test]
    fn a_record_that_fails_leaves_the_plaintext_as_it_was() {
        let stream = sealed(&[b"secret"]);
        let mut reader = RecordReader::new(transports().1.clone());
        let mut plaintext = BytesMut::from(&b"kept"[..]);
        let mut forged = stream[2..].to_vec();
        forged[0] ^= 1;
        assert!(matches!(
            reader.open(&forged, &mut plaintext),
            Err(LinkError::Decrypt)
        ));
        assert_eq!(&plaintext[..], b"kept");
        // The nonce did not move: the genuine record still opens.
        reader.open(&stream[2..], &mut plaintext).expect("opens");
        assert_eq!(&plaintext[..], b"keptsecret");
    }

    #[tokio::test]
    async fn an_idle_stream_keeps_its_first_read_size() {
        let stream = sealed(&[b"ping", b"pong"]);
        let reader = RecordReader::new(transports().1.clone());
        let mut incoming = Incoming::new(&stream[..], reader, 128 * 1024);
        incoming.fill("frame").await.expect("first record");
        incoming.fill("frame").await.expect("second record");
        assert_eq!(&incoming.plaintext[..], b"pingpong");
        assert_eq!(incoming.read_size, FIRST_READ_BYTES);
        assert!(incoming.input.capacity() < 2 * FIRST_READ_BYTES);
    }

    #[tokio::test]
    async fn a_busy_stream_grows_its_reads_to_the_maximum() {
        let chunk = vec![b'x'; 1000];
        let records: Vec<&[u8]> = std::iter::repeat_n(&chunk[..], 400).collect();
        let stream = sealed(&records);
        let reader = RecordReader::new(transports().1.clone());
        let mut incoming = Incoming::new(&stream[..], reader, 64 * 1024);
        for _ in 0..400 {
            incoming.fill("frame").await.expect("a record");
        }
        assert_eq!(incoming.plaintext.len(), 400 * 1000);
        assert_eq!(incoming.read_size, 64 * 1024);
        assert!(matches!(
            incoming.fill("frame").await,
            Err(LinkError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_record_larger_than_the_first_read_still_arrives_whole() {
        let big = vec![b'y'; MAX_RECORD_PLAINTEXT];
        let stream = sealed(&[&big]);
        let reader = RecordReader::new(transports().1.clone());
        let mut incoming = Incoming::new(&stream[..], reader, 128 * 1024);
        incoming.fill("frame").await.expect("the record");
        assert_eq!(&incoming.plaintext[..], &big[..]);
    }
}
