//! `meshctl messages [--follow]`

use meshd_ipc::{InboxMessage, Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;
use crate::stdout::outln;

/// Prints the inbox; with `follow`, keeps printing as messages arrive.
pub fn run(client: &mut Client, follow: bool, json: bool) -> Result<(), CtlError> {
    if !follow {
        // A long inbox comes in several frames.
        let mut messages = Vec::new();
        let mut unexpected = None;
        client.call_streaming(Request::Messages { follow: false }, |response| {
            match response {
                Response::Messages(page) => messages.extend(page),
                other => unexpected = Some(other),
            }
            Ok(())
        })?;
        if let Some(other) = unexpected {
            return Err(client.unexpected(&other));
        }
        if json {
            print_json(&messages);
        } else if messages.is_empty() {
            outln!("no messages received");
        } else {
            messages.iter().for_each(print_line);
        }
        return Ok(());
    }
    // One line per message, flushed at once, so a pipe sees each as it comes.
    let mut unexpected = None;
    client.call_streaming(Request::Messages { follow: true }, |response| {
        match response {
            Response::Message(message) if json => {
                let line = serde_json::to_string(&message)
                    .map_err(|error| CtlError::Input(error.to_string()))?;
                outln!("{line}");
            }
            Response::Message(message) => print_line(&message),
            other => unexpected = Some(other),
        }
        crate::stdout::flush();
        Ok(())
    })?;
    match unexpected {
        Some(other) => Err(client.unexpected(&other)),
        None => Ok(()),
    }
}

fn print_line(message: &InboxMessage) {
    outln!(
        "{}  {}: {}",
        message.received_at,
        message.from,
        message.text
    );
}
