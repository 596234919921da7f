//! `meshctl netcheck`

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::print_json;

/// Prints each signaling server's view of this device and the verdict;
/// exit 1 when no server could be probed from the mesh port.
pub fn run(client: &mut Client, json: bool) -> Result<(), CtlError> {
    let reply = match client.call(Request::Netcheck)? {
        Response::Netcheck(reply) => reply,
        other => return Err(client.unexpected(&other)),
    };
    if json {
        print_json(&reply);
    } else {
        println!("mesh port: {}", reply.mesh_port);
        for probe in &reply.probes {
            match (&probe.observed, &probe.error) {
                (Some(observed), _) => println!(
                    "{}: seen as {observed} (from {})",
                    probe.hub,
                    probe.local.as_deref().unwrap_or("-")
                ),
                (None, Some(error)) => println!("{}: {error}", probe.hub),
                (None, None) => println!("{}: no answer", probe.hub),
            }
        }
        let yes_no = |value: Option<bool>| match value {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        println!("mesh port kept: {}", yes_no(reply.port_preserved));
        println!(
            "same public port for every destination: {}",
            yes_no(reply.same_port_for_all_destinations)
        );
        println!("{}", reply.verdict);
    }
    if reply.observed.is_none() && reply.port_preserved.is_none() {
        return Err(CtlError::Failed(reply.verdict));
    }
    Ok(())
}
