//! `meshctl chat [--tls [--fingerprint sha256:...]] [HOST:PORT]`: the
//! interactive chat client. It speaks the plain chat protocol
//! (docs/chat-protocol.md), so it works against any server that does; with
//! `--tls` inside TLS 1.3 (`crate::tls`). A reader thread prints what arrives while the main thread sends
//! each line typed; `exit`, `/quit` or end of input sends `/quit` and ends
//! with status 0. What the server sends is shown with its control characters
//! escaped, so another user's escape sequences cannot clear the screen or
//! fake a line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::stdout::{out, outln};
use crate::tls::{self, Trust};

/// Where to connect when neither an address nor a running meshd says.
const DEFAULT_SERVER: &str = "127.0.0.1:8081";

/// What arrives from the server, plain or decrypted.
type Incoming = BufReader<Box<dyn Read + Send>>;

/// Runs the client until `exit`, end of input or the server closing. `tls`:
/// speak TLS, trusting the server as it says.
pub fn run(server: Option<String>, tls: Option<Trust>, socket: &Path) -> Result<(), CtlError> {
    let server = server.unwrap_or_else(|| local_chat_address(socket));
    let chat_error = |reason: String| CtlError::Chat {
        server: server.clone(),
        reason,
    };
    let stream = TcpStream::connect(&server).map_err(|e| {
        chat_error(format!(
            "cannot connect: {e}; is the chat role enabled? try: meshctl status"
        ))
    })?;
    let _ = stream.set_nodelay(true);
    // A clone of the socket, for the read timeout at the end.
    let control = stream.try_clone().map_err(|e| chat_error(e.to_string()))?;
    let (reader, mut writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match tls {
        None => (
            Box::new(stream.try_clone().map_err(|e| chat_error(e.to_string()))?),
            Box::new(stream),
        ),
        Some(trust) => {
            let (reader, writer) = tls::connect(stream, host_of(&server), trust)
                .map_err(|e| chat_error(e.to_string()))?;
            (Box::new(reader), Box::new(writer))
        }
    };
    let mut reader: Incoming = BufReader::new(reader);

    let hello = read_server_line(&mut reader).map_err(&chat_error)?;
    if !hello.starts_with("HELLO ") {
        let hint = if tls.is_none() && !hello.is_ascii() {
            "; if the server speaks TLS, add --tls"
        } else {
            ""
        };
        return Err(chat_error(format!("unexpected greeting {hello:?}{hint}")));
    }

    let user =
        prompt("Username: ").map_err(|e| CtlError::Input(format!("reading the user name: {e}")))?;
    let password = rpassword::prompt_password("Password: ")
        .map_err(|e| CtlError::Input(format!("cannot prompt for the password: {e}")))?;
    writer
        .write_all(format!("AUTH {user} {password}\n").as_bytes())
        .map_err(|e| chat_error(e.to_string()))?;
    let answer = read_server_line(&mut reader).map_err(&chat_error)?;
    if !answer.starts_with("OK ") {
        let reason = render(&answer).unwrap_or(answer);
        return Err(chat_error(format!("login failed: {reason}")));
    }
    outln!("logged in as {user}; type a message and press Enter, /who lists users, exit leaves");

    let printer = std::thread::spawn(move || print_incoming(reader, &QUITTING));
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if matches!(line.trim(), "exit" | "/quit") {
            break;
        }
        if writer.write_all(format!("{line}\n").as_bytes()).is_err() {
            break;
        }
    }
    QUITTING.store(true, Ordering::SeqCst);
    let _ = writer.write_all(b"/quit\n");
    // Wait briefly for BYE so the server sees a clean goodbye.
    let _ = control.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = printer.join();
    Ok(())
}

/// This node's chat address from `meshctl status`, with a wildcard address
/// replaced by loopback.
fn local_chat_address(socket: &Path) -> String {
    let status = Client::connect(socket).and_then(|mut client| client.call(Request::Status));
    match status {
        Ok(Response::Status(status)) => status
            .roles
            .chat
            .map(|chat| {
                chat.listen
                    .replace("0.0.0.0:", "127.0.0.1:")
                    .replace("[::]:", "[::1]:")
            })
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        _ => DEFAULT_SERVER.to_owned(),
    }
}

/// The host part of `HOST:PORT` (`[::1]:8081` gives `::1`), for the
/// certificate's name check.
fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(host, _port)| host);
    host.strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host)
}

fn prompt(text: &str) -> std::io::Result<String> {
    out!("{text}");
    crate::stdout::flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn read_server_line(reader: &mut Incoming) -> Result<String, String> {
    let mut bytes = Vec::new();
    match reader.read_until(b'\n', &mut bytes) {
        Ok(0) => Err("the server closed the connection".to_owned()),
        Ok(_) => Ok(String::from_utf8_lossy(&bytes)
            .trim_end_matches(['\n', '\r'])
            .to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Set once the user asked to leave, so the end of the connection is
/// expected.
static QUITTING: AtomicBool = AtomicBool::new(false);

/// Prints server lines until the connection ends. If the server ends it
/// first (`ERR slow`, `ERR shutdown`), the whole client exits with status 1
/// rather than waiting for more input.
fn print_incoming(mut reader: Incoming, quitting: &AtomicBool) {
    loop {
        let line = match read_server_line(&mut reader) {
            Ok(line) if line == "BYE" => {
                outln!("* bye");
                if quitting.load(Ordering::SeqCst) {
                    return;
                }
                exit_closed_by_server("the server said goodbye");
            }
            Ok(line) => line,
            Err(reason) => {
                if quitting.load(Ordering::SeqCst) {
                    return;
                }
                exit_closed_by_server(&reason);
            }
        };
        if let Some(text) = render(&line) {
            outln!("{text}");
        }
    }
}

fn exit_closed_by_server(reason: &str) -> ! {
    let _ = std::io::stdout().flush();
    eprintln!("meshctl: chat ended: {reason}");
    std::process::exit(1);
}

/// A server line as a person reads it; `None` for verbs this client does not
/// know, which the protocol says to ignore. Control characters (escape
/// sequences, carriage returns, backspaces) are shown escaped, never obeyed.
pub fn render(line: &str) -> Option<String> {
    let line = &harmless(line);
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    Some(match verb {
        "MSG" => {
            let (from, text) = rest.split_once(' ').unwrap_or((rest, ""));
            format!("{from}: {text}")
        }
        "JOIN" => format!("* {rest} joined"),
        "LEAVE" => format!("* {rest} left"),
        "SYS" => format!("[system] {rest}"),
        "WHO" => format!(
            "* online: {}",
            rest.split(' ').collect::<Vec<_>>().join(", ")
        ),
        "ERR" => {
            let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
            format!("! {text} ({code})")
        }
        "OK" | "HELLO" | "BYE" => return None,
        _ => return None,
    })
}

/// `text` with every control character written as an escape (`\u{1b}`).
fn harmless(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{host_of, render};

    #[test]
    fn the_host_is_cut_from_host_and_port() {
        assert_eq!(host_of("chat.example.org:8081"), "chat.example.org");
        assert_eq!(host_of("192.0.2.7:8081"), "192.0.2.7");
        assert_eq!(host_of("[2001:db8::1]:8081"), "2001:db8::1");
        assert_eq!(host_of("hub"), "hub");
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let clear_and_fake =
            "MSG mallory \u{1b}[2J\u{1b}[H\ralice: send me your password\u{8}\u{9b}31m";
        let shown = render(clear_and_fake).unwrap();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            "mallory: \\u{1b}[2J\\u{1b}[H\\ralice: send me your password\\u{8}\\u{9b}31m"
        );
        assert_eq!(render("JOIN a\u{7}b").unwrap(), "* a\\u{7}b joined");
    }

    #[test]
    fn renders_server_lines_readably() {
        assert_eq!(render("MSG bob hi there").unwrap(), "bob: hi there");
        assert_eq!(render("JOIN bob").unwrap(), "* bob joined");
        assert_eq!(render("LEAVE bob").unwrap(), "* bob left");
        assert_eq!(render("SYS back soon").unwrap(), "[system] back soon");
        assert_eq!(render("WHO a b").unwrap(), "* online: a, b");
        assert_eq!(
            render("ERR auth invalid credentials").unwrap(),
            "! invalid credentials (auth)"
        );
        assert_eq!(render("NEWVERB x"), None, "unknown verbs are ignored");
    }
}
