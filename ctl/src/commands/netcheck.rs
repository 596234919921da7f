//! `meshctl netcheck`

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;
use crate::stdout::{self, outln};

/// Prints each signaling server's view of this device and the verdict;
/// exit 1 when no server could be probed from the mesh port.
pub fn run(client: &mut Client, json: bool) -> Result<(), CtlError> {
    let reply = match client.call(Request::Netcheck)? {
        Response::Netcheck(reply) => reply,
        other => return Err(client.unexpected(&other)),
    };
    // The outcome is known before anything is printed; a reader that stops
    // early must not turn a failure into status 0.
    let failed = reply.observed.is_none() && reply.port_preserved.is_none();
    if failed {
        stdout::fail_if_closed(&CtlError::Failed(reply.verdict.clone()));
    }
    if json {
        print_json(&reply);
    } else {
        outln!("mesh port: {}", reply.mesh_port);
        for probe in &reply.probes {
            match (&probe.observed, &probe.error) {
                (Some(observed), _) => outln!(
                    "{}: seen as {observed} (from {})",
                    probe.hub,
                    probe.local.as_deref().unwrap_or("-")
                ),
                (None, Some(error)) => outln!("{}: {error}", probe.hub),
                (None, None) => outln!("{}: no answer", probe.hub),
            }
        }
        let yes_no = |value: Option<bool>| match value {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        outln!("mesh port kept: {}", yes_no(reply.port_preserved));
        outln!(
            "same public port for every destination: {}",
            yes_no(reply.same_port_for_all_destinations)
        );
        outln!("{}", reply.verdict);
    }
    if failed {
        return Err(CtlError::Failed(reply.verdict));
    }
    Ok(())
}
