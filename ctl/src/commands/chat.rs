//! `meshctl chat [HOST:PORT]`: the interactive chat client. It speaks the
//! plain chat protocol (docs/chat-protocol.md), so it works against any server
//! that does. A reader thread prints what arrives while the main thread sends
//! each line typed; `exit`, `/quit` or end of input sends `/quit` and ends
//! with status 0. What the server sends is shown with its control characters
//! escaped, so another user's escape sequences cannot clear the screen or
//! fake a line.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;

/// Where to connect when neither an address nor a running meshd says.
const DEFAULT_SERVER: &str = "127.0.0.1:8081";

/// Runs the client until `exit`, end of input or the server closing.
pub fn run(server: Option<String>, socket: &Path) -> Result<(), CtlError> {
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
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| chat_error(e.to_string()))?);
    let mut writer = stream;

    let hello = read_server_line(&mut reader).map_err(&chat_error)?;
    if !hello.starts_with("HELLO ") {
        return Err(chat_error(format!("unexpected greeting {hello:?}")));
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
    println!("logged in as {user}; type a message and press Enter, /who lists users, exit leaves");

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
    let _ = writer.set_read_timeout(Some(Duration::from_secs(2)));
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

fn prompt(text: &str) -> std::io::Result<String> {
    print!("{text}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn read_server_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("the server closed the connection".to_owned()),
        Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Set once the user asked to leave, so the end of the connection is
/// expected.
static QUITTING: AtomicBool = AtomicBool::new(false);

/// Prints server lines until the connection ends. If the server ends it
/// first (`ERR slow`, `ERR shutdown`), the whole client exits with status 1
/// rather than waiting for more input.
fn print_incoming(mut reader: BufReader<TcpStream>, quitting: &AtomicBool) {
    loop {
        let line = match read_server_line(&mut reader) {
            Ok(line) if line == "BYE" => {
                println!("* bye");
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
            println!("{text}");
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
    use super::render;

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
