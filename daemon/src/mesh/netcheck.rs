//! `meshctl netcheck`: what the NAT in front of this device does.
//!
//! Each hub channel leaves from the mesh port, and each hub tells the
//! device, inside that authenticated channel, the address it sees the
//! channel come from (and tells it again at every heartbeat). Two servers
//! at different addresses that see the same public port mean the NAT keeps
//! one mapping for every destination (endpoint-independent mapping, RFC
//! 4787), which is what hole punching needs. A NAT that picks a new port per
//! destination defeats it, and links through it are relayed. With one
//! server, a kept mesh port is taken as the same answer; otherwise it cannot
//! be told. A hub without an open channel (down, or refused because it
//! proved the wrong key) contributes its error, never an address.

use std::net::SocketAddr;

use meshd_ipc::{NetcheckProbe, NetcheckReply};

use super::hubs::{Hub, Hubs};

/// One probe's outcome, with the server's address for comparing.
#[derive(Debug, Clone)]
struct Probe {
    hub: String,
    server: Option<SocketAddr>,
    local: Option<SocketAddr>,
    observed: Option<SocketAddr>,
    error: Option<String>,
}

/// What every hub's channel says now.
pub fn run(hubs: &Hubs, mesh: SocketAddr) -> NetcheckReply {
    let probes: Vec<Probe> = hubs.iter().map(probe).collect();
    assess(mesh.port(), &probes)
}

fn probe(hub: &Hub) -> Probe {
    let mut outcome = Probe {
        hub: hub.url().to_string(),
        server: None,
        local: None,
        observed: None,
        error: None,
    };
    match hub.connection().filter(|_| hub.is_open()) {
        Some((local, server, observed)) => {
            outcome.local = Some(local);
            outcome.server = Some(server);
            match observed.as_deref().map(str::parse::<SocketAddr>) {
                Some(Ok(observed)) => outcome.observed = Some(observed),
                Some(Err(_)) => {
                    outcome.error = Some(format!("the server answered {observed:?}"));
                }
                None => outcome.error = Some("no address from the server yet".to_owned()),
            }
        }
        None => {
            let error = hub.status().error;
            outcome.error = Some(match error {
                Some(error) => format!("no channel open: {error}"),
                None => "no channel open yet".to_owned(),
            });
        }
    }
    outcome
}

/// The verdict from the probes.
fn assess(mesh_port: u16, probes: &[Probe]) -> NetcheckReply {
    let from_mesh_port: Vec<&Probe> = probes
        .iter()
        .filter(|probe| {
            probe.observed.is_some() && probe.local.is_some_and(|local| local.port() == mesh_port)
        })
        .collect();
    let observed: Vec<SocketAddr> = from_mesh_port
        .iter()
        .filter_map(|probe| probe.observed)
        .collect();
    let port_preserved =
        (!observed.is_empty()).then(|| observed.iter().all(|seen| seen.port() == mesh_port));
    let mut servers: Vec<SocketAddr> = from_mesh_port
        .iter()
        .filter_map(|probe| probe.server)
        .collect();
    servers.sort();
    servers.dedup();
    let agreed = observed
        .first()
        .filter(|first| observed.iter().all(|seen| seen == *first));
    let same_port = if servers.len() >= 2 {
        Some(agreed.is_some())
    } else if port_preserved == Some(true) {
        Some(true)
    } else {
        None
    };
    let behind_nat = from_mesh_port
        .iter()
        .any(|probe| probe.local.map(|local| local.ip()) != probe.observed.map(|seen| seen.ip()));
    let verdict = match (observed.first(), same_port) {
        (None, _) => {
            let reasons: Vec<String> = probes
                .iter()
                .map(|probe| {
                    format!(
                        "{}: {}",
                        probe.hub,
                        probe
                            .error
                            .as_deref()
                            .unwrap_or("the probe could not leave from the mesh port")
                    )
                })
                .collect();
            if reasons.is_empty() {
                "no signaling server in [mesh] signaling to probe".to_owned()
            } else {
                format!("no answer from the mesh port: {}", reasons.join("; "))
            }
        }
        (Some(seen), Some(true)) if !behind_nat => {
            format!("no NAT: this device is reachable at {seen}")
        }
        (Some(seen), Some(true)) => format!(
            "the NAT keeps one public address ({seen}) for every destination: direct links by hole punching can work"
        ),
        (Some(_), Some(false)) => format!(
            "the NAT picks a new public port for each destination ({}): links to devices behind other NATs go through a hub's relay",
            list(&observed)
        ),
        (Some(seen), None) => format!(
            "the NAT changed the mesh port {mesh_port} to {seen}; whether it keeps that port for every destination needs a second signaling server in [mesh] signaling"
        ),
    };
    NetcheckReply {
        mesh_port,
        probes: probes
            .iter()
            .map(|probe| NetcheckProbe {
                hub: probe.hub.clone(),
                local: probe.local.map(|local| local.to_string()),
                observed: probe.observed.map(|seen| seen.to_string()),
                error: probe.error.clone(),
            })
            .collect(),
        observed: agreed.map(ToString::to_string),
        port_preserved,
        same_port_for_all_destinations: same_port,
        verdict,
    }
}

fn list(addresses: &[SocketAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(server: &str, local: &str, observed: &str) -> Probe {
        Probe {
            hub: format!("http://{server}"),
            server: server.parse().ok(),
            local: local.parse().ok(),
            observed: observed.parse().ok(),
            error: None,
        }
    }

    #[test]
    fn two_servers_seeing_one_port_mean_endpoint_independent_mapping() {
        let reply = assess(
            8082,
            &[
                probe("203.0.113.1:7000", "10.0.1.2:8082", "203.0.113.20:40000"),
                probe("203.0.113.2:7000", "10.0.1.2:8082", "203.0.113.20:40000"),
            ],
        );
        assert_eq!(reply.same_port_for_all_destinations, Some(true));
        assert_eq!(reply.port_preserved, Some(false));
        assert_eq!(reply.observed.as_deref(), Some("203.0.113.20:40000"));
    }

    #[test]
    fn two_servers_seeing_two_ports_mean_a_port_per_destination() {
        let reply = assess(
            8082,
            &[
                probe("203.0.113.1:7000", "10.0.1.2:8082", "203.0.113.20:40000"),
                probe("203.0.113.2:7000", "10.0.1.2:8082", "203.0.113.20:51234"),
            ],
        );
        assert_eq!(reply.same_port_for_all_destinations, Some(false));
        assert!(reply.verdict.contains("relay"), "{}", reply.verdict);
        assert_eq!(reply.observed, None);
    }

    #[test]
    fn one_server_tells_only_a_kept_port() {
        let kept = assess(
            8082,
            &[probe(
                "203.0.113.1:7000",
                "10.0.1.2:8082",
                "203.0.113.20:8082",
            )],
        );
        assert_eq!(kept.same_port_for_all_destinations, Some(true));
        let changed = assess(
            8082,
            &[probe(
                "203.0.113.1:7000",
                "10.0.1.2:8082",
                "203.0.113.20:9999",
            )],
        );
        assert_eq!(changed.same_port_for_all_destinations, None);
        assert!(changed.verdict.contains("second signaling server"));
        let public = assess(
            8082,
            &[probe(
                "203.0.113.1:7000",
                "203.0.113.9:8082",
                "203.0.113.9:8082",
            )],
        );
        assert!(public.verdict.starts_with("no NAT"), "{}", public.verdict);
    }

    #[test]
    fn probes_that_did_not_leave_from_the_mesh_port_do_not_count() {
        let reply = assess(
            8082,
            &[probe(
                "203.0.113.1:7000",
                "10.0.1.2:40001",
                "203.0.113.20:40001",
            )],
        );
        assert_eq!(reply.port_preserved, None);
        assert!(reply.verdict.starts_with("no answer"), "{}", reply.verdict);
    }
}
