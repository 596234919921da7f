//! `meshctl reload`: waits until meshd has applied or rejected the config, so
//! `systemctl reload meshd` (whose ExecReload runs this) is synchronous.

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;
use crate::stdout::outln;

/// Asks meshd to re-read its config and prints what changed.
pub fn run(client: &mut Client, json: bool) -> Result<(), CtlError> {
    let reloaded = match client.call(Request::Reload)? {
        Response::Reloaded(reloaded) => reloaded,
        other => return Err(client.unexpected(&other)),
    };
    if json {
        print_json(&reloaded);
        return Ok(());
    }
    let source = reloaded.config.as_deref().unwrap_or("built-in defaults");
    if reloaded.applied.is_empty() && reloaded.restart_required.is_empty() {
        outln!("reloaded {source}: nothing changed");
    } else {
        outln!("reloaded {source}");
    }
    if !reloaded.applied.is_empty() {
        outln!("applied: {}", reloaded.applied.join(", "));
    }
    for warning in &reloaded.warnings {
        eprintln!("meshctl: warning: {warning}");
    }
    if !reloaded.restart_required.is_empty() {
        outln!(
            "changed but needs a restart (systemctl restart meshd): {}",
            reloaded.restart_required.join(", ")
        );
    }
    Ok(())
}
