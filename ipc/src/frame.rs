//! Line framing: one JSON document per `\n`-terminated line, at most
//! [`MAX_FRAME_BYTES`] long.
//!
//! The daemon reads with tokio and meshctl with std, so this module gives the
//! pure parts (encode, decode, the limit) and a blocking reader; the daemon's
//! async reader applies the same limit.

use std::io::{BufRead, Read};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame, newline included, either side accepts. A longer request
/// is answered with `too_large` and its connection closed.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The line exceeded [`MAX_FRAME_BYTES`].
    #[error("frame exceeds {MAX_FRAME_BYTES} bytes")]
    TooLarge,
    /// The stream ended in the middle of a line.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The line is not the JSON document expected.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The line is JSON of another shape than the protocol's.
    #[error("malformed frame: {0}")]
    Shape(#[from] crate::strict::StrictError),
    /// Reading the socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serializes `value` as one frame, newline included.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    if line.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge);
    }
    Ok(line)
}

/// Parses one frame; the trailing newline is optional.
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, FrameError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    Ok(serde_json::from_slice(line)?)
}

/// Parses one frame from an untrusted peer: as [`decode`], but the document
/// must have exactly the protocol's shape (see [`crate::strict`]).
pub fn decode_strict<T: Serialize + DeserializeOwned>(line: &[u8]) -> Result<T, FrameError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    Ok(crate::strict::from_slice(line)?)
}

/// Reads one frame into `buf` (cleared first). Returns `Ok(false)` on a clean
/// end of stream before any byte of a new frame.
pub fn read_frame(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<bool, FrameError> {
    buf.clear();
    let limit = u64::try_from(MAX_FRAME_BYTES).unwrap_or(u64::MAX);
    let read = reader.by_ref().take(limit).read_until(b'\n', buf)?;
    if read == 0 {
        return Ok(false);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if buf.len() >= MAX_FRAME_BYTES {
            FrameError::TooLarge
        } else {
            FrameError::Truncated
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_frames_one_by_one() {
        let mut input = Cursor::new(b"{\"a\":1}\n{\"a\":2}\n".to_vec());
        let mut buf = Vec::new();
        assert!(read_frame(&mut input, &mut buf).unwrap());
        let first: serde_json::Value = decode(&buf).unwrap();
        assert_eq!(first["a"], 1);
        assert!(read_frame(&mut input, &mut buf).unwrap());
        assert!(!read_frame(&mut input, &mut buf).unwrap());
    }

    #[test]
    fn half_frame_is_truncated() {
        let mut input = Cursor::new(b"{\"a\":".to_vec());
        let err = read_frame(&mut input, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut input = Cursor::new(vec![b'x'; MAX_FRAME_BYTES + 10]);
        let err = read_frame(&mut input, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge));
    }

    #[test]
    fn encode_appends_newline() {
        assert_eq!(
            encode(&serde_json::json!({"a": 1})).unwrap(),
            b"{\"a\":1}\n"
        );
    }
}
