//! `meshctl send DEVICE TEXT...` and `meshctl send --all TEXT...`

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;
use crate::stdout::{self, outln};

/// What `send DEVICE` without text is told.
pub const NO_TEXT: &str =
    "nothing to send: write meshctl send DEVICE TEXT... or meshctl send --all TEXT...";

/// Sends and reports the acknowledgement; exit 1 unless every device
/// acknowledged.
pub fn run(client: &mut Client, all: bool, words: Vec<String>, json: bool) -> Result<(), CtlError> {
    if all {
        return send_all(client, words.join(" "), json);
    }
    let mut words = words.into_iter();
    let device = words.next().unwrap_or_default();
    let text: Vec<String> = words.collect();
    if text.is_empty() {
        // main checks this before connecting; kept for other callers.
        return Err(CtlError::Input(NO_TEXT.to_owned()));
    }
    match client.call(Request::Send {
        device,
        text: text.join(" "),
    })? {
        Response::Sent(sent) if json => print_json(&sent),
        Response::Sent(sent) => outln!(
            "delivered to {} ({})",
            sent.device,
            sent.rtt_ms
                .map_or("acknowledged".to_owned(), |rtt| format!("{rtt:.1}ms"))
        ),
        other => return Err(client.unexpected(&other)),
    }
    Ok(())
}

fn send_all(client: &mut Client, text: String, json: bool) -> Result<(), CtlError> {
    let results = match client.call(Request::SendAll { text })? {
        Response::SentAll(results) => results,
        other => return Err(client.unexpected(&other)),
    };
    // The outcome is known before anything is printed; a reader that stops
    // early must not turn a failure into status 0.
    let failed = results.iter().filter(|result| !result.delivered).count();
    let outcome = if results.is_empty() {
        Err(CtlError::Failed(
            "nothing delivered: this node knows no other device; `meshctl devices` shows what the signaling servers list".to_owned(),
        ))
    } else if failed > 0 {
        Err(CtlError::Failed(format!(
            "{failed} of {} devices did not acknowledge the message",
            results.len()
        )))
    } else {
        Ok(())
    };
    if let Err(error) = &outcome {
        stdout::fail_if_closed(error);
    }
    if json {
        print_json(&results);
    } else {
        for result in &results {
            match (&result.error, result.rtt_ms) {
                (None, Some(rtt)) => outln!("{}: delivered ({rtt:.1}ms)", result.device),
                (None, None) => outln!("{}: delivered", result.device),
                (Some(error), _) => outln!("{}: failed: {error}", result.device),
            }
        }
    }
    outcome
}
