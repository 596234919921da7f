//! `meshctl status`

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::{print_json, short_duration};

/// Prints version, node, roles and uptime.
pub fn run(client: &mut Client, json: bool) -> Result<(), CtlError> {
    let status = match client.call(Request::Status)? {
        Response::Status(status) => status,
        other => return Err(client.unexpected(&other)),
    };
    if json {
        print_json(&status);
        return Ok(());
    }
    println!(
        "meshd {} on node {} (pid {}, up {})",
        status.version,
        status.node_id,
        status.pid,
        short_duration(status.uptime_secs)
    );
    println!(
        "config:    {}",
        status.config.as_deref().unwrap_or("built-in defaults")
    );
    let roles = &status.roles;
    if let Some(signaling) = &roles.signaling {
        println!(
            "signaling: listening on {}, {} device{}, {} channel{}, {} relay{}",
            signaling.listen,
            signaling.devices,
            if signaling.devices == 1 { "" } else { "s" },
            signaling.channels,
            if signaling.channels == 1 { "" } else { "s" },
            signaling.relays,
            if signaling.relays == 1 { "" } else { "s" }
        );
        if let Some(key) = &signaling.hub_key {
            println!("           hub key {key}");
        }
    }
    if let Some(chat) = &roles.chat {
        println!(
            "chat:      listening on {}, {} client{} logged in, {} message{} relayed",
            chat.listen,
            chat.clients,
            if chat.clients == 1 { "" } else { "s" },
            chat.messages_relayed,
            if chat.messages_relayed == 1 { "" } else { "s" }
        );
        if let Some(fingerprint) = &chat.tls_fingerprint {
            println!("           tls {fingerprint}");
            println!(
                "           connect with: meshctl chat --tls --fingerprint {fingerprint} HOST:PORT"
            );
        }
    }
    if let Some(mesh) = &roles.mesh {
        println!(
            "mesh:      listening on {}, {} link{} up",
            mesh.listen,
            mesh.links,
            if mesh.links == 1 { "" } else { "s" }
        );
        println!("           public key {}", mesh.pubkey);
        println!(
            "           observed {}",
            mesh.observed
                .as_deref()
                .unwrap_or("- (no signaling server answered yet)")
        );
        for hub in &mesh.signaling {
            match (&hub.error, hub.reachable) {
                (_, true) => {
                    let channel = match (hub.channel, hub.rtt_ms) {
                        (true, Some(rtt)) => format!("channel open, rtt {rtt:.3} ms"),
                        (true, None) => "channel open".to_owned(),
                        (false, _) => "no channel".to_owned(),
                    };
                    println!("           signaling {}: registered, {channel}", hub.url);
                }
                (Some(error), false) => println!("           signaling {}: {error}", hub.url),
                (None, false) => println!("           signaling {}: not contacted yet", hub.url),
            }
        }
    }
    if roles.signaling.is_none() && roles.chat.is_none() && roles.mesh.is_none() {
        println!("roles:     none enabled");
    }
    Ok(())
}
