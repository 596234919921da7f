//! Reading client lines with a hard size limit: an overlong line is skipped
//! to its end without being buffered, so a client cannot grow meshd's memory.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line is in the buffer (line end included).
    Complete,
    /// The line exceeded the limit; it was dropped.
    TooLong,
    /// The client closed its side (a partial last line is dropped).
    Eof,
}

/// Reads the next line into `buf` (cleared first). `max` bounds the line
/// without its `\r\n`.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let take = newline.map_or(available.len(), |at| at + 1);
        if !too_long {
            // Room for the line, a '\r' and the '\n'.
            if buf.len() + take > max + 2 {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&available[..take]);
            }
        }
        reader.consume(take);
        if newline.is_some() {
            let content = super::protocol::trim_line_end(buf).len();
            return Ok(if too_long || content > max {
                buf.clear();
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, &mut buf, max).await.unwrap();
            let eof = line == Line::Eof;
            out.push((line, buf.clone()));
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_drops_overlong_ones() {
        let got = lines(b"short\nthis one is too long\nok\r\nexact\npartial", 5).await;
        assert_eq!(got[0], (Line::Complete, b"short\n".to_vec()));
        assert_eq!(got[1], (Line::TooLong, Vec::new()));
        assert_eq!(got[2], (Line::Complete, b"ok\r\n".to_vec()));
        assert_eq!(got[3], (Line::Complete, b"exact\n".to_vec()));
        assert_eq!(got[4].0, Line::Eof);
    }

    #[tokio::test]
    async fn the_limit_excludes_the_line_end() {
        let got = lines(b"12345\r\n123456\n", 5).await;
        assert_eq!(got[0].0, Line::Complete);
        assert_eq!(got[1].0, Line::TooLong);
    }
}
