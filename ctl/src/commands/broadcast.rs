//! `meshctl broadcast TEXT...`

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;
use crate::stdout::outln;

/// Sends `SYS TEXT` to every chat client.
pub fn run(client: &mut Client, text: String, json: bool) -> Result<(), CtlError> {
    match client.call(Request::Broadcast { text })? {
        Response::Broadcasted(sent) if json => print_json(&sent),
        Response::Broadcasted(sent) => outln!(
            "sent to {} chat client{}",
            sent.clients,
            if sent.clients == 1 { "" } else { "s" }
        ),
        other => return Err(client.unexpected(&other)),
    }
    Ok(())
}
