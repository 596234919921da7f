//! Entry points for the fuzz targets in `fuzz/` (docs/testing.md,
//! "Fuzzing"), one per parser fed from outside. Each takes arbitrary bytes,
//! must never panic, and asserts the parser's own properties where it has
//! some: what parses, printed again, parses to the same thing. The replay
//! test (`tests/fuzz_corpora.rs`) runs every stored input through the same
//! functions on stable Rust.

// A fuzz entry point reports a broken property by panicking: that is
// what libFuzzer catches and the replay test reports.
#![allow(clippy::expect_used)]

use std::path::Path;

use meshd_ipc::RequestFrame;

use crate::chat::protocol::{self, ClientLine};
use crate::chat::users::UserSet;
use crate::config::{Config, ConfigError};
use crate::hub_wire::{FromHub, RegisterRequest, ToHub};
use crate::signaling::api::validate;
use crate::signaling::bindings;

/// The config file: a config that parses prints (`--check-config`) to a
/// text that parses to the same config, never shows a join token, and one
/// that does not parse names a line or a key for each problem.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, None) {
        Ok(config) => {
            let printed = config.to_toml();
            for token in [&config.signaling.join_token, &config.mesh.join_token] {
                if !token.is_empty() {
                    assert!(!printed.contains(token.as_str()), "a token was printed");
                }
            }
            let has_secret =
                !config.signaling.join_token.is_empty() || !config.mesh.join_token.is_empty();
            if !has_secret {
                let again = Config::from_toml(&printed, None);
                assert!(
                    again.as_ref().is_ok_and(|again| *again == config),
                    "printed config does not parse back: {printed}\n{again:?}"
                );
            }
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            for problem in problems {
                assert!(
                    problem.line.is_some() || !problem.key.is_empty(),
                    "a problem with no place: {problem:?}"
                );
            }
        }
        Err(ConfigError::Read { .. }) => unreachable!("no file was read"),
    }
}

/// A control request line: what decodes strictly encodes to a line that
/// decodes to the same request.
pub fn control_request(data: &[u8]) {
    if let Ok(frame) = meshd_ipc::decode_strict::<RequestFrame>(data) {
        let line = meshd_ipc::encode(&frame).expect("a decoded request encodes");
        let again: RequestFrame = meshd_ipc::decode_strict(&line).expect("and decodes again");
        assert_eq!(again, frame);
    }
}

/// A `POST /register` body: strict decoding, then validation; the same body
/// encoded again decodes and validates the same way.
pub fn register_body(data: &[u8]) {
    let Ok(body) = meshd_ipc::strict::from_slice::<RegisterRequest>(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&body).expect("a decoded body encodes");
    let again: RegisterRequest =
        meshd_ipc::strict::from_slice(&encoded).expect("its encoding decodes");
    assert_eq!(validate(body), validate(again));
}

/// A chat client line: a message is exactly the line, line end removed.
pub fn chat_line(data: &[u8]) {
    let line = protocol::trim_line_end(data);
    match protocol::parse(line) {
        Ok(ClientLine::Message(text)) => assert_eq!(text.as_bytes(), line),
        Ok(ClientLine::Auth { user, password }) => {
            assert!(line.starts_with(b"AUTH "));
            assert!(user.len() + password.len() < line.len());
        }
        Ok(_) | Err(_) => {}
    }
}

/// A hub channel message from a device: decodes strictly, and round-trips.
pub fn to_hub(data: &[u8]) {
    if let Ok(message) = meshd_ipc::strict::from_slice::<ToHub>(data) {
        let encoded = serde_json::to_vec(&message).expect("encodes");
        let again: ToHub = meshd_ipc::strict::from_slice(&encoded).expect("decodes again");
        assert_eq!(again, message);
    }
}

/// A hub channel message from a hub: decodes strictly, and round-trips.
pub fn from_hub(data: &[u8]) {
    if let Ok(message) = meshd_ipc::strict::from_slice::<FromHub>(data) {
        let encoded = serde_json::to_value(&message).expect("encodes");
        let bytes = serde_json::to_vec(&encoded).expect("encodes");
        let again: FromHub = meshd_ipc::strict::from_slice(&bytes).expect("decodes again");
        assert_eq!(serde_json::to_value(&again).expect("encodes"), encoded);
    }
}

/// The chat users file: what parses renders to a file that parses the same.
pub fn users_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("chat-users");
    if let Ok(users) = UserSet::parse(text, path) {
        let again = UserSet::parse(&users.render(), path).expect("a rendered file parses");
        assert_eq!(again, users);
    }
}

/// The hub's key bindings file: what parses renders to a file that parses
/// the same; an error names its line.
pub fn bindings_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("signaling-keys");
    match bindings::parse(text, path) {
        Ok(parsed) => {
            let again =
                bindings::parse(&bindings::render(&parsed), path).expect("a rendered file parses");
            assert_eq!(again, parsed);
        }
        Err(error) => assert!(error.to_string().starts_with("signaling-keys:")),
    }
}

/// A device's known-hubs file: what parses renders to a file that parses
/// the same; an error names its line.
pub fn known_hubs_file(data: &[u8]) {
    use crate::mesh::known_hubs;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("known-hubs");
    match known_hubs::parse(text, path) {
        Ok(parsed) => {
            let again = known_hubs::parse(&known_hubs::render(&parsed), path)
                .expect("a rendered file parses");
            assert_eq!(again, parsed);
        }
        Err(error) => assert!(error.to_string().starts_with("known-hubs:")),
    }
}

/// The device key file: a key that parses is written back as the same key.
pub fn device_key_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = crate::key_file::parse(text) {
        let again =
            crate::key_file::parse(&crate::key_file::render(crate::key_file::DEVICE_KEY, &key))
                .expect("parses");
        assert_eq!(again.private(), key.private());
    }
}
