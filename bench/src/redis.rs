//! A minimal Redis pub/sub client (RESP2): `SUBSCRIBE`, `PUBLISH`, and a
//! parser for the replies these produce. A subscriber's first reply is the
//! `subscribe` confirmation, sent once the subscription exists.

use std::net::SocketAddr;

use crate::error::{BenchError, excerpt};
use crate::protocol::{
    Connection, Frame, OwnedFrame, Parsed, Protocol, handshake_deadline, unexpected,
};

/// The channel every message is published on.
const CHANNEL: &str = "chat";

/// Nesting depth accepted in replies; pub/sub replies are flat.
const MAX_DEPTH: usize = 4;

/// redis-server.
#[derive(Debug, Clone)]
pub struct Redis {
    addr: SocketAddr,
}

impl Redis {
    /// redis-server at `addr`.
    pub fn new(addr: SocketAddr) -> Redis {
        Redis { addr }
    }

    /// Connects, sends `command` and returns once a reply that satisfies
    /// `accept` arrived.
    async fn connect(
        &self,
        command: &str,
        waiting_for: &str,
        accept: impl Fn(&[u8]) -> bool + Send,
    ) -> Result<Connection, BenchError> {
        let mut conn = Connection::open(Self::NAME, self.addr).await?;
        conn.send(Self::NAME, command.as_bytes()).await?;
        match conn
            .next_frame(self, handshake_deadline(), waiting_for)
            .await?
        {
            OwnedFrame::Other(reply) if accept(&reply) => Ok(conn),
            other => Err(unexpected(Self::NAME, waiting_for, &other)),
        }
    }
}

impl Protocol for Redis {
    const NAME: &'static str = "redis";

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn parse<'a>(&self, buf: &'a [u8]) -> Parsed<'a> {
        parse_reply(buf)
    }

    fn encode_publish(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{CHANNEL}\r\n${}\r\n",
                CHANNEL.len(),
                payload.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }

    fn pong(&self) -> &'static [u8] {
        // Redis never pings its clients.
        b""
    }

    fn goodbye(&self) -> &'static [u8] {
        b"QUIT\r\n"
    }

    async fn subscriber(&self) -> Result<Connection, BenchError> {
        let confirmation = format!(
            "*3\r\n$9\r\nsubscribe\r\n${}\r\n{CHANNEL}\r\n",
            CHANNEL.len()
        );
        self.connect(
            &format!("SUBSCRIBE {CHANNEL}\r\n"),
            "the subscribe confirmation",
            move |reply| reply.starts_with(confirmation.as_bytes()),
        )
        .await
    }

    async fn publisher(&self) -> Result<Connection, BenchError> {
        self.connect("PING\r\n", "+PONG", |reply| reply == b"+PONG\r\n")
            .await
    }

    /// Each subscriber's subscription was confirmed by its own reply.
    async fn await_subscribers(&self, _: &mut Connection, _: usize) -> Result<(), BenchError> {
        Ok(())
    }
}

/// One parsed RESP value: where it ends, and the bulk string it is, if it is
/// one.
struct Value<'a> {
    end: usize,
    bulk: Option<&'a [u8]>,
}

/// Cuts one reply off `buf`: a pushed `message` array becomes
/// [`Frame::Message`], an error reply [`Frame::Error`], anything else
/// [`Frame::Other`] with all its bytes.
fn parse_reply(buf: &[u8]) -> Parsed<'_> {
    if buf.first() == Some(&b'*') {
        let Some((count, mut at)) = header(buf, 0)? else {
            return Ok(None);
        };
        // `*3 $7 message $<n> channel $<n> payload` is the hot path: parse
        // it element by element, without a second pass.
        let mut elements: [Option<&[u8]>; 3] = [None; 3];
        for index in 0..usize::try_from(count.max(0)).unwrap_or(0) {
            let Some(value) = value(buf, at, 1)? else {
                return Ok(None);
            };
            if let Some(slot) = elements.get_mut(index) {
                *slot = value.bulk;
            }
            at = value.end;
        }
        let frame = match elements {
            [Some(b"message"), Some(_), Some(payload)] if count == 3 => Frame::Message(payload),
            _ => Frame::Other(&buf[..at]),
        };
        return Ok(Some((frame, at)));
    }
    let Some(value) = value(buf, 0, 0)? else {
        return Ok(None);
    };
    let frame = if buf.first() == Some(&b'-') {
        Frame::Error(&buf[..value.end])
    } else {
        Frame::Other(&buf[..value.end])
    };
    Ok(Some((frame, value.end)))
}

/// Parses the value at `at`, `None` while incomplete.
fn value(buf: &[u8], at: usize, depth: usize) -> Result<Option<Value<'_>>, BenchError> {
    if depth > MAX_DEPTH {
        return Err(BenchError::protocol(Redis::NAME, "reply nested too deep"));
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' | b':' => Ok(line_end(buf, at).map(|end| Value { end, bulk: None })),
        b'$' => {
            let Some((len, start)) = header(buf, at)? else {
                return Ok(None);
            };
            let Ok(len) = usize::try_from(len) else {
                // `$-1`: a nil bulk string.
                return Ok(Some(Value {
                    end: start,
                    bulk: None,
                }));
            };
            let end = start + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(BenchError::protocol(
                    Redis::NAME,
                    format!(
                        "bulk string not followed by CRLF: \"{}\"",
                        excerpt(&buf[at..])
                    ),
                ));
            }
            Ok(Some(Value {
                end: end + 2,
                bulk: Some(&buf[start..end]),
            }))
        }
        b'*' => {
            let Some((count, mut end)) = header(buf, at)? else {
                return Ok(None);
            };
            for _ in 0..count.max(0) {
                let Some(element) = value(buf, end, depth + 1)? else {
                    return Ok(None);
                };
                end = element.end;
            }
            Ok(Some(Value { end, bulk: None }))
        }
        _ => Err(BenchError::protocol(
            Redis::NAME,
            format!("not a RESP2 reply: \"{}\"", excerpt(&buf[at..])),
        )),
    }
}

/// The number after the type byte at `at` and where its line ends.
fn header(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, BenchError> {
    let Some(end) = line_end(buf, at) else {
        return Ok(None);
    };
    let digits = &buf[at + 1..end - 2];
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .map(|number| Some((number, end)))
        .ok_or_else(|| {
            BenchError::protocol(
                Redis::NAME,
                format!("bad length \"{}\"", excerpt(&buf[at..end])),
            )
        })
}

/// Just past the CRLF that ends the line starting at `at`.
fn line_end(buf: &[u8], at: usize) -> Option<usize> {
    buf[at..]
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|offset| at + offset + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(buf: &[u8]) -> (Vec<OwnedFrame>, &[u8]) {
        let mut at = 0;
        let mut frames = Vec::new();
        while let Some((frame, len)) = parse_reply(&buf[at..]).unwrap() {
            frames.push(OwnedFrame::from(frame));
            at += len;
        }
        (frames, &buf[at..])
    }

    #[test]
    fn parses_pushed_messages_and_replies() {
        let buf: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nchat\r\n:1\r\n\
            *3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$5\r\nhello\r\n\
            :42\r\n+PONG\r\n-ERR wrong\r\n$-1\r\n*2\r\n*1\r\n:1\r\n$1\r\nx\r\n\
            *3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$5\r\nhel";
        let (got, rest) = frames(buf);
        assert_eq!(
            got,
            [
                OwnedFrame::Other(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nchat\r\n:1\r\n".to_vec()),
                OwnedFrame::Message(b"hello".to_vec()),
                OwnedFrame::Other(b":42\r\n".to_vec()),
                OwnedFrame::Other(b"+PONG\r\n".to_vec()),
                OwnedFrame::Error(b"-ERR wrong\r\n".to_vec()),
                OwnedFrame::Other(b"$-1\r\n".to_vec()),
                OwnedFrame::Other(b"*2\r\n*1\r\n:1\r\n$1\r\nx\r\n".to_vec()),
            ]
        );
        assert_eq!(rest, b"*3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$5\r\nhel");
        assert!(parse_reply(b"?what\r\n").is_err());
        assert!(parse_reply(b"$2\r\nabcd\r\n").is_err());
    }

    #[test]
    fn encodes_publish() {
        let mut out = Vec::new();
        Redis::new(([127, 0, 0, 1], 1).into()).encode_publish(b"abc", &mut out);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nchat\r\n$3\r\nabc\r\n");
    }
}
