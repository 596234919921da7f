//! A minimal NATS client (the text protocol of nats-server): `CONNECT` with
//! verbose and pedantic off, `SUB`, `PUB`, and `PING`/`PONG` both ways.
//! A `PING` after the setup commands makes the server confirm it processed
//! them, since it answers in order.

use std::net::SocketAddr;

use crate::error::{BenchError, excerpt};
use crate::protocol::{
    Connection, Frame, OwnedFrame, Parsed, Protocol, handshake_deadline, unexpected,
};

/// The subject every message is published on.
const SUBJECT: &str = "chat";

/// nats-server.
#[derive(Debug, Clone)]
pub struct Nats {
    addr: SocketAddr,
}

impl Nats {
    /// nats-server at `addr`.
    pub fn new(addr: SocketAddr) -> Nats {
        Nats { addr }
    }

    /// Connects, sends `setup` after `CONNECT`, and returns once the server
    /// answered the `PING` that follows it.
    async fn connect(&self, setup: &str) -> Result<Connection, BenchError> {
        let mut conn = Connection::open(Self::NAME, self.addr).await?;
        let deadline = handshake_deadline();
        match conn.next_frame(self, deadline, "INFO").await? {
            OwnedFrame::Other(line) if line.starts_with(b"INFO ") => {}
            other => return Err(unexpected(Self::NAME, "INFO", &other)),
        }
        let hello = format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\n{setup}PING\r\n");
        conn.send(Self::NAME, hello.as_bytes()).await?;
        loop {
            match conn.next_frame(self, deadline, "PONG").await? {
                OwnedFrame::Other(line) if line == b"PONG" => return Ok(conn),
                OwnedFrame::Ping => conn.send(Self::NAME, self.pong()).await?,
                OwnedFrame::Other(_) => {}
                other => return Err(unexpected(Self::NAME, "PONG", &other)),
            }
        }
    }
}

impl Protocol for Nats {
    const NAME: &'static str = "nats";

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn parse<'a>(&self, buf: &'a [u8]) -> Parsed<'a> {
        parse_frame(buf)
    }

    fn encode_publish(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(format!("PUB {SUBJECT} {}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }

    fn pong(&self) -> &'static [u8] {
        b"PONG\r\n"
    }

    fn goodbye(&self) -> &'static [u8] {
        // NATS has no quit command; closing the socket is the way out.
        b""
    }

    async fn subscriber(&self) -> Result<Connection, BenchError> {
        self.connect(&format!("SUB {SUBJECT} 1\r\n")).await
    }

    async fn publisher(&self) -> Result<Connection, BenchError> {
        self.connect("").await
    }

    /// Each subscriber's `SUB` was confirmed by its own `PONG`.
    async fn await_subscribers(&self, _: &mut Connection, _: usize) -> Result<(), BenchError> {
        Ok(())
    }
}

/// Cuts one NATS frame off `buf`: a control line, or `MSG` with its payload.
fn parse_frame(buf: &[u8]) -> Parsed<'_> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.starts_with(b"MSG ") {
        // `MSG <subject> <sid> [reply-to] <#bytes>`
        let size = line
            .rsplit(|&b| b == b' ')
            .next()
            .and_then(|field| std::str::from_utf8(field).ok())
            .and_then(|field| field.parse::<usize>().ok())
            .ok_or_else(|| {
                BenchError::protocol(
                    Nats::NAME,
                    format!("MSG line without a size: \"{}\"", excerpt(line)),
                )
            })?;
        let start = newline + 1;
        let end = start + size;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(BenchError::protocol(
                Nats::NAME,
                format!("MSG payload not followed by CRLF: \"{}\"", excerpt(line)),
            ));
        }
        return Ok(Some((Frame::Message(&buf[start..end]), end + 2)));
    }
    let frame = if line == b"PING" {
        Frame::Ping
    } else if line.starts_with(b"-ERR") {
        Frame::Error(line)
    } else {
        Frame::Other(line)
    };
    Ok(Some((frame, newline + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_and_control_lines() {
        let buf = b"INFO {}\r\nPING\r\nMSG chat 1 5\r\nhello\r\nMSG chat 1 r 2\r\nhi\r\n-ERR 'x'\r\nMSG chat 1 5\r\nhel";
        let mut at = 0;
        let mut frames = Vec::new();
        while let Some((frame, len)) = parse_frame(&buf[at..]).unwrap() {
            frames.push(OwnedFrame::from(frame));
            at += len;
        }
        assert_eq!(
            frames,
            [
                OwnedFrame::Other(b"INFO {}".to_vec()),
                OwnedFrame::Ping,
                OwnedFrame::Message(b"hello".to_vec()),
                OwnedFrame::Message(b"hi".to_vec()),
                OwnedFrame::Error(b"-ERR 'x'".to_vec()),
            ]
        );
        assert_eq!(&buf[at..], b"MSG chat 1 5\r\nhel");
        assert!(parse_frame(b"MSG chat 1 x\r\n").is_err());
        assert!(parse_frame(b"MSG chat 1 2\r\nhiXX").is_err());
    }

    #[test]
    fn encodes_pub() {
        let mut out = Vec::new();
        Nats::new(([127, 0, 0, 1], 1).into()).encode_publish(b"abc", &mut out);
        assert_eq!(out, b"PUB chat 3\r\nabc\r\n");
    }
}
