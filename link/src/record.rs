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
    scratch: Vec<u8>,
}

impl RecordReader {
    pub(crate) fn new(transport: Arc<StatelessTransportState>) -> Self {
        RecordReader {
            transport,
            nonce: 0,
            scratch: vec![0; MAX_RECORD_BYTES],
        }
    }

    /// Decrypts one record (without its length prefix) onto the end of
    /// `plaintext`.
    pub fn open(&mut self, record: &[u8], plaintext: &mut BytesMut) -> Result<(), LinkError> {
        if record.len() < TAG_BYTES {
            return Err(LinkError::Decrypt);
        }
        let len = self
            .transport
            .read_message(self.nonce, record, &mut self.scratch)
            .map_err(|_| LinkError::Decrypt)?;
        self.nonce += 1;
        plaintext.extend_from_slice(&self.scratch[..len]);
        Ok(())
    }
}

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
    read_size: usize,
}

impl<R: AsyncRead + Unpin> Incoming<R> {
    /// Reads from `stream` up to `read_size` bytes a call.
    pub(crate) fn new(stream: R, records: RecordReader, read_size: usize) -> Self {
        Incoming {
            stream,
            records,
            input: BytesMut::with_capacity(read_size),
            plaintext: BytesMut::new(),
            read_size,
        }
    }

    /// Opens one more record onto `plaintext`, reading while none is whole.
    /// At the end of the stream: [`LinkError::Closed`] if nothing was left
    /// half read, otherwise malformed, inside a `unit`.
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
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(if self.plaintext.is_empty() && self.input.is_empty() {
                    LinkError::Closed
                } else {
                    LinkError::Malformed(format!("stream ended inside a {unit}"))
                });
            }
        }
    }
}
