//! `meshctl hubs forget URL`

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;
use crate::stdout::outln;

/// Forgets the key pinned for a hub on first contact.
pub fn forget(client: &mut Client, url: String, json: bool) -> Result<(), CtlError> {
    let forgotten = match client.call(Request::HubsForget { url })? {
        Response::HubForgotten(forgotten) => forgotten,
        other => return Err(client.unexpected(&other)),
    };
    if json {
        print_json(&forgotten);
        return Ok(());
    }
    match forgotten.forgotten_key {
        Some(key) => outln!(
            "forgot key {key} of {}; the key it proves next is pinned",
            forgotten.url
        ),
        None => outln!(
            "no key was pinned for {}; the key it proves next is pinned",
            forgotten.url
        ),
    }
    Ok(())
}
