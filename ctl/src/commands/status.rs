//! `meshctl status`

use meshd_ipc::{Request, Response};

use crate::client::Client;
use crate::error::CtlError;
use crate::output::{print_json, short_duration};
use crate::stdout::outln;

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
    outln!(
        "meshd {} on node {} (pid {}, up {})",
        status.version,
        status.node_id,
        status.pid,
        short_duration(status.uptime_secs)
    );
    outln!(
        "config:    {}",
        status.config.as_deref().unwrap_or("built-in defaults")
    );
    let roles = &status.roles;
    if let Some(signaling) = &roles.signaling {
        outln!(
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
            outln!("           hub key {key}");
            outln!(
                "           devices pin it with: signaling = [\"{}\"]",
                pin_line(&signaling.listen, key)
            );
        }
    }
    if let Some(chat) = &roles.chat {
        outln!(
            "chat:      listening on {}, {} client{} logged in, {} message{} relayed",
            chat.listen,
            chat.clients,
            if chat.clients == 1 { "" } else { "s" },
            chat.messages_relayed,
            if chat.messages_relayed == 1 { "" } else { "s" }
        );
        if let Some(fingerprint) = &chat.tls_fingerprint {
            outln!("           tls {fingerprint}");
            outln!(
                "           connect with: meshctl chat --tls --fingerprint {fingerprint} HOST:PORT"
            );
        }
    }
    if let Some(mesh) = &roles.mesh {
        outln!(
            "mesh:      listening on {}, {} link{} up",
            mesh.listen,
            mesh.links,
            if mesh.links == 1 { "" } else { "s" }
        );
        outln!("           public key {}", mesh.pubkey);
        outln!(
            "           observed {}",
            mesh.observed
                .as_deref()
                .unwrap_or("- (no signaling server answered yet)")
        );
        for hub in &mesh.signaling {
            let url = match &hub.via {
                Some(via) => format!("{} (down; moved to {via}, a hub of its cluster)", hub.url),
                None => hub.url.clone(),
            };
            match (&hub.error, hub.reachable) {
                (_, true) => {
                    let channel = match (hub.channel, hub.rtt_ms) {
                        (true, Some(rtt)) => format!("channel open, rtt {rtt:.3} ms"),
                        (true, None) => "channel open".to_owned(),
                        (false, _) => "no channel".to_owned(),
                    };
                    let key = hub
                        .hub_key
                        .as_deref()
                        .map(|key| format!(", hub key {key}"))
                        .unwrap_or_default();
                    let others = match hub.cluster_hubs.len() {
                        0 => String::new(),
                        1 => format!("; 1 other hub of its cluster: {}", hub.cluster_hubs[0]),
                        n => format!(
                            "; {n} other hubs of its cluster: {}",
                            hub.cluster_hubs.join(", ")
                        ),
                    };
                    outln!("           signaling {url}: registered, {channel}{key}{others}");
                }
                (Some(error), false) => outln!("           signaling {url}: {error}"),
                (None, false) => outln!("           signaling {url}: not contacted yet"),
            }
        }
    }
    if let Some(cluster) = &roles.cluster {
        let state = match (&cluster.error, cluster.connected) {
            (_, true) => "connected".to_owned(),
            (Some(error), false) => format!("degraded: {error}"),
            (None, false) => "degraded".to_owned(),
        };
        outln!(
            "cluster:   {} hub{} through NATS {}, {state}",
            cluster.hubs.len(),
            if cluster.hubs.len() == 1 { "" } else { "s" },
            cluster.nats.join(", ")
        );
        outln!("           this hub advertised as {}", cluster.advertise);
        for hub in &cluster.hubs {
            outln!(
                "           hub {} at {}, hub key {}",
                hub.id,
                hub.url,
                hub.hub_key
            );
        }
    }
    if let Some(web) = &roles.web {
        let access = match web.token_required {
            true => "token required",
            false => "no token: this machine only",
        };
        outln!(
            "web:       console on http://{}/ ({access}); metrics at /metrics",
            web.listen
        );
    }
    if roles.signaling.is_none()
        && roles.chat.is_none()
        && roles.mesh.is_none()
        && roles.web.is_none()
    {
        outln!("roles:     none enabled");
    }
    Ok(())
}

/// The `[mesh] signaling` entry that pins this hub: its listen address, or
/// for a wildcard listener this machine's host name, then `#KEY`.
fn pin_line(listen: &str, key: &str) -> String {
    let host = match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => host_name().unwrap_or_else(|| "HOST".to_owned()),
        Ok(std::net::SocketAddr::V6(addr)) => format!("[{}]", addr.ip()),
        Ok(addr) => addr.ip().to_string(),
        Err(_) => "HOST".to_owned(),
    };
    let port = listen.rsplit(':').next().unwrap_or("PORT");
    format!("http://{host}:{port}#{key}")
}

/// This machine's host name, as the kernel has it.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_line_names_a_host_devices_can_reach() {
        assert_eq!(
            pin_line("203.0.113.1:8080", "KEY="),
            "http://203.0.113.1:8080#KEY="
        );
        assert_eq!(
            pin_line("[2001:db8::1]:8080", "K"),
            "http://[2001:db8::1]:8080#K"
        );
        let wildcard = pin_line("0.0.0.0:8080", "K");
        assert!(wildcard.starts_with("http://") && wildcard.ends_with(":8080#K"));
        assert!(!wildcard.contains("0.0.0.0"), "{wildcard}");
    }
}
