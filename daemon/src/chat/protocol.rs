//! The chat protocol's lines (docs/chat-protocol.md): parsing what clients send
//! and formatting what the server sends. Pure; no I/O.

use bytes::Bytes;

/// The protocol greeting, sent on connect.
pub const HELLO: &[u8] = b"HELLO meshd-chat 1\n";

/// What a client line means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientLine<'a> {
    /// `AUTH <username> <password>`; the password is the rest of the line.
    Auth {
        /// The user name.
        user: &'a str,
        /// The password, spaces included.
        password: &'a str,
    },
    /// `/who`
    Who,
    /// `/quit`
    Quit,
    /// A line starting with `/` that is no known command.
    UnknownCommand(&'a str),
    /// Any other line: a message once logged in.
    Message(&'a str),
}

/// Why a line could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// Not UTF-8.
    NotUtf8,
}

/// Strips the newline and an optional `\r` before it.
pub fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses one line (without its line end).
pub fn parse(line: &[u8]) -> Result<ClientLine<'_>, LineError> {
    let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    if let Some(rest) = text.strip_prefix("AUTH ") {
        let (user, password) = rest.split_once(' ').unwrap_or((rest, ""));
        return Ok(ClientLine::Auth { user, password });
    }
    Ok(match text {
        "/who" => ClientLine::Who,
        "/quit" => ClientLine::Quit,
        command if command.starts_with('/') => ClientLine::UnknownCommand(command),
        message => ClientLine::Message(message),
    })
}

/// `MSG <from> <text>\n`, built once and shared by every receiver.
pub fn msg(from: &str, text: &str) -> Bytes {
    line(&["MSG ", from, " ", text])
}

/// `JOIN <user>\n`
pub fn join(user: &str) -> Bytes {
    line(&["JOIN ", user])
}

/// `LEAVE <user>\n`
pub fn leave(user: &str) -> Bytes {
    line(&["LEAVE ", user])
}

/// `SYS <text>\n`
pub fn sys(text: &str) -> Bytes {
    line(&["SYS ", text])
}

/// `OK <user>\n`
pub fn ok(user: &str) -> Bytes {
    line(&["OK ", user])
}

/// `WHO <user> <user> ...\n`
pub fn who<'a>(users: impl IntoIterator<Item = &'a str>) -> Bytes {
    let mut out = String::from("WHO");
    for user in users {
        out.push(' ');
        out.push_str(user);
    }
    out.push('\n');
    Bytes::from(out)
}

/// `BYE\n`
pub const BYE: &[u8] = b"BYE\n";

/// The `ERR` codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    /// Failed login.
    Auth,
    /// Protocol misuse.
    Proto,
    /// Line over `max_line_bytes`.
    TooLong,
    /// `max_clients` reached.
    Full,
    /// The client did not read fast enough.
    Slow,
    /// No login in time.
    Timeout,
    /// meshd is stopping.
    Shutdown,
}

impl ErrCode {
    fn as_str(self) -> &'static str {
        match self {
            ErrCode::Auth => "auth",
            ErrCode::Proto => "proto",
            ErrCode::TooLong => "toolong",
            ErrCode::Full => "full",
            ErrCode::Slow => "slow",
            ErrCode::Timeout => "timeout",
            ErrCode::Shutdown => "shutdown",
        }
    }
}

/// `ERR <code> <text>\n`
pub fn err(code: ErrCode, text: &str) -> Bytes {
    line(&["ERR ", code.as_str(), " ", text])
}

/// The one reply to every failed login, whatever failed (docs/chat-protocol.md).
pub fn auth_failed() -> Bytes {
    err(ErrCode::Auth, "invalid credentials")
}

fn line(parts: &[&str]) -> Bytes {
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(len);
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_lines() {
        assert_eq!(
            parse(b"AUTH alice open sesame").unwrap(),
            ClientLine::Auth {
                user: "alice",
                password: "open sesame"
            }
        );
        assert_eq!(
            parse(b"AUTH alice").unwrap(),
            ClientLine::Auth {
                user: "alice",
                password: ""
            }
        );
        assert_eq!(parse(b"/who").unwrap(), ClientLine::Who);
        assert_eq!(parse(b"/quit").unwrap(), ClientLine::Quit);
        assert_eq!(
            parse(b"/nope x").unwrap(),
            ClientLine::UnknownCommand("/nope x")
        );
        assert_eq!(
            parse(b"hello /who").unwrap(),
            ClientLine::Message("hello /who")
        );
        assert_eq!(parse(b"").unwrap(), ClientLine::Message(""));
        assert_eq!(parse(&[0xff, 0xfe]), Err(LineError::NotUtf8));
    }

    #[test]
    fn trims_crlf_and_lf() {
        assert_eq!(trim_line_end(b"hi\r\n"), b"hi");
        assert_eq!(trim_line_end(b"hi\n"), b"hi");
        assert_eq!(trim_line_end(b"hi"), b"hi");
        assert_eq!(trim_line_end(b"a\rb\n"), b"a\rb");
    }

    #[test]
    fn formats_server_lines() {
        assert_eq!(&msg("bob", "hi there")[..], b"MSG bob hi there\n");
        assert_eq!(&join("bob")[..], b"JOIN bob\n");
        assert_eq!(&leave("bob")[..], b"LEAVE bob\n");
        assert_eq!(&sys("maintenance")[..], b"SYS maintenance\n");
        assert_eq!(&who(["a", "b"])[..], b"WHO a b\n");
        assert_eq!(&auth_failed()[..], b"ERR auth invalid credentials\n");
        assert_eq!(&err(ErrCode::TooLong, "x")[..], b"ERR toolong x\n");
    }
}
