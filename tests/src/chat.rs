//! A raw chat protocol client for tests: it sends exactly the bytes given and
//! reads server lines one by one, each read with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test waits for one server line.
pub const LINE_WAIT: Duration = Duration::from_secs(10);

/// One connection to the chat server.
pub struct ChatClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl ChatClient {
    /// Connects and reads the `HELLO` line.
    pub fn connect(addr: SocketAddr) -> ChatClient {
        let mut client = ChatClient::connect_raw(addr);
        assert_eq!(client.line(), "HELLO meshd-chat 1");
        client
    }

    /// Connects without reading anything.
    pub fn connect_raw(addr: SocketAddr) -> ChatClient {
        let stream = TcpStream::connect(addr).expect("connecting to the chat server");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(LINE_WAIT))
            .expect("read timeout");
        ChatClient {
            reader: BufReader::new(stream.try_clone().expect("cloning the stream")),
            writer: stream,
        }
    }

    /// Connects and logs in, asserting `OK`.
    pub fn login(addr: SocketAddr, user: &str, password: &str) -> ChatClient {
        let mut client = ChatClient::connect(addr);
        client.send(&format!("AUTH {user} {password}"));
        assert_eq!(client.line(), format!("OK {user}"));
        client
    }

    /// Sends one line (a `\n` is appended).
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .expect("sending to the chat server");
    }

    /// The next server line without its `\n`; panics on timeout or close.
    pub fn line(&mut self) -> String {
        self.try_line()
            .unwrap_or_else(|| panic!("the chat server closed the connection"))
    }

    /// The next server line, or `None` once the server closed.
    pub fn try_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches('\n').to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("no chat line within {LINE_WAIT:?}: {e}"),
        }
    }

    /// Reads lines until one starts with `prefix`, skipping JOIN and LEAVE
    /// lines of other users; panics on anything else.
    pub fn expect(&mut self, expected: &str) {
        loop {
            let line = self.line();
            if line == expected {
                return;
            }
            assert!(
                line.starts_with("JOIN ") || line.starts_with("LEAVE "),
                "expected {expected:?}, got {line:?}"
            );
        }
    }

    /// The next line that is not another user's `JOIN` or `LEAVE`.
    pub fn line_skipping_presence(&mut self) -> String {
        loop {
            let line = self.line();
            if !(line.starts_with("JOIN ") || line.starts_with("LEAVE ")) {
                return line;
            }
        }
    }

    /// Asserts the server closes the connection next (after any lines
    /// `allowed` lets through).
    pub fn expect_closed(&mut self) {
        if let Some(line) = self.try_line() {
            panic!("expected the connection to close, got {line:?}");
        }
    }

    /// Changes the read timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.writer
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
    }

    /// The underlying stream, for tests that must stop reading.
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }
}
