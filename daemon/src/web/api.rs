//! `GET /api/v1/mesh` (docs/web.md, "The JSON"): what the live page shows,
//! from the roles at the moment of the request, and the counts the metrics
//! take from them.
//!
//! On a hub the view is the hub's: every device it lists or listed within
//! the hour, and every pair its devices reported. On a device that is not a
//! hub it is the device's own: the devices its hubs list, and its links.

use std::time::{Duration, SystemTime};

use meshd_ipc::LinkState;
use serde::Serialize;

use crate::control::Roles;
use crate::hub_wire::ReportedPath;
use crate::mesh::MeshConsole;
use crate::metrics::Snapshot;
use crate::signaling::ConsoleView;

/// Pairs served at most: every pair of a full mesh of about 450 devices,
/// a few MB of JSON.
pub const MAX_PAIRS: usize = 100_000;

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct MeshView {
    /// This node's id.
    node: String,
    /// meshd's version.
    version: &'static str,
    /// `hub`: the hub's view of every device; `device`: this device's own.
    view: &'static str,
    /// When this was put together, RFC 3339.
    generated_at: String,
    devices: Vec<DeviceView>,
    links: Vec<LinkView>,
    /// More pairs were reported than [`MAX_PAIRS`].
    links_truncated: bool,
}

#[derive(Debug, Serialize)]
struct DeviceView {
    id: String,
    online: bool,
    is_self: bool,
    addr: String,
    endpoints: Vec<String>,
    observed: String,
    last_seen: String,
    hubs: Vec<String>,
    direct: u32,
    relayed: u32,
    down: u32,
}

#[derive(Debug, Serialize)]
struct LinkView {
    a: String,
    b: String,
    path: &'static str,
    rtt_ms: Option<f64>,
    since: Option<String>,
}

/// The answer for this node's roles.
pub fn mesh(node: &str, roles: &Roles) -> MeshView {
    let generated_at = rfc3339(SystemTime::now());
    let (view, devices, links, links_truncated) = match (&roles.signaling, &roles.mesh) {
        (Some(signaling), mesh) => {
            let advertised = roles
                .cluster
                .as_ref()
                .map(|cluster| cluster.status().advertise);
            let hub_url = hub_url(advertised, signaling.listen());
            let (devices, links, truncated) = hub_view(
                signaling.console(MAX_PAIRS, &hub_url),
                node,
                mesh.as_ref().map(|mesh| mesh.console()),
            );
            ("hub", devices, links, truncated)
        }
        (None, Some(mesh)) => {
            let (devices, links) = device_view(mesh.console());
            ("device", devices, links, false)
        }
        (None, None) => ("device", Vec::new(), Vec::new(), false),
    };
    MeshView {
        node: node.to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        view,
        generated_at,
        devices,
        links,
        links_truncated,
    }
}

/// The hub's view. When this node is also a device, its own links and
/// counts are taken from the node itself, live: its report to itself is up
/// to a few seconds old, and would show a link to a device just killed as
/// still up.
fn hub_view(
    console: ConsoleView,
    node: &str,
    own: Option<MeshConsole>,
) -> (Vec<DeviceView>, Vec<LinkView>, bool) {
    let (own_counts, own_links) = match own.map(device_view) {
        Some((own_devices, own_links)) => {
            let counts = own_devices
                .iter()
                .find(|device| device.is_self)
                .map(|me| (me.direct, me.relayed, me.down));
            (counts, own_links)
        }
        None => (None, Vec::new()),
    };
    let devices = console
        .devices
        .into_iter()
        .map(|device| {
            let is_self = device.listed.id == node;
            let reported = device.counts.unwrap_or_default();
            let (direct, relayed, down) = own_counts.filter(|_| is_self).unwrap_or((
                reported.direct,
                reported.relayed,
                reported.down,
            ));
            DeviceView {
                is_self,
                id: device.listed.id,
                online: device.online,
                addr: device.listed.addr,
                endpoints: device.listed.endpoints,
                observed: device.listed.observed,
                last_seen: device.listed.last_seen,
                hubs: device.hubs,
                direct,
                relayed,
                down,
            }
        })
        .collect();
    // The peers of this node's own links: a reported pair with one of them
    // is replaced by the live one.
    let own_peers: std::collections::HashSet<&str> = own_links
        .iter()
        .map(|link| {
            if link.a == node {
                link.b.as_str()
            } else {
                link.a.as_str()
            }
        })
        .collect();
    let mine = |pair: &crate::signaling::Pair| {
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        (a == node && own_peers.contains(b)) || (b == node && own_peers.contains(a))
    };
    let mut links: Vec<LinkView> = console
        .pairs
        .into_iter()
        .filter(|pair| own_peers.is_empty() || !mine(pair))
        .map(|pair| LinkView {
            a: pair.a.to_string(),
            b: pair.b.to_string(),
            path: reported_path(pair.path),
            rtt_ms: pair.rtt.map(millis),
            since: pair.since.map(rfc3339),
        })
        .collect();
    let mut truncated = console.pairs_truncated;
    if !own_links.is_empty() {
        links.extend(own_links);
        links.sort_by(|x, y| (&x.a, &x.b).cmp(&(&y.a, &y.b)));
        if links.len() > MAX_PAIRS {
            links.truncate(MAX_PAIRS);
            truncated = true;
        }
    }
    (devices, links, truncated)
}

/// This hub's URL as the page shows it: the one it advertises to its
/// cluster, else its listen address, with this machine's host name for a
/// wildcard listener (as `meshctl status` prints the pin line).
fn hub_url(advertised: Option<String>, listen: std::net::SocketAddr) -> String {
    if let Some(url) = advertised.filter(|url| !url.is_empty()) {
        return url;
    }
    let host_name = || {
        nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .filter(|name| !name.is_empty())
    };
    match listen.ip().is_unspecified().then(host_name).flatten() {
        Some(name) => format!("http://{name}:{}", listen.port()),
        None => format!("http://{listen}"),
    }
}

/// A device's own view: its roster, and its links.
fn device_view(console: MeshConsole) -> (Vec<DeviceView>, Vec<LinkView>) {
    let me = console.local.to_string();
    let mut counts = (0u32, 0u32, 0u32);
    let links: Vec<LinkView> = console
        .links
        .iter()
        .map(|link| {
            let path = match link.state {
                LinkState::Direct => {
                    counts.0 += 1;
                    "direct"
                }
                LinkState::Relayed => {
                    counts.1 += 1;
                    "relayed"
                }
                _ => {
                    counts.2 += 1;
                    "down"
                }
            };
            let peer = link.peer.to_string();
            let (a, b) = if me < peer {
                (me.clone(), peer)
            } else {
                (peer, me.clone())
            };
            let up = path != "down";
            LinkView {
                a,
                b,
                path,
                rtt_ms: link.rtt.filter(|_| up).map(millis),
                since: link.since.filter(|_| up).map(rfc3339),
            }
        })
        .collect();
    let devices = console
        .devices
        .into_iter()
        .map(|(entry, hubs)| {
            let is_self = entry.id == me;
            let (direct, relayed, down) = if is_self { counts } else { (0, 0, 0) };
            DeviceView {
                online: true,
                is_self,
                id: entry.id,
                addr: entry.addr,
                endpoints: entry.endpoints,
                observed: entry.observed,
                last_seen: entry.last_seen,
                hubs,
                direct,
                relayed,
                down,
            }
        })
        .collect();
    let mut links = links;
    links.sort_by(|x, y| (&x.a, &x.b).cmp(&(&y.a, &y.b)));
    (devices, links)
}

/// The counts `/metrics` takes from the roles.
pub fn snapshot(roles: &Roles) -> Snapshot {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let mut snapshot = Snapshot::default();
    if let Some(mesh) = &roles.mesh {
        let (direct, relayed) = mesh.links_by_path();
        snapshot.direct_links = count(direct);
        snapshot.relayed_links = count(relayed);
    }
    if let Some(signaling) = &roles.signaling {
        let status = signaling.status();
        snapshot.hub_devices = count(status.devices);
        snapshot.hub_channels = count(status.channels);
        snapshot.hub_relays = count(status.relays);
    }
    if let Some(chat) = &roles.chat {
        snapshot.chat_clients = count(chat.status().clients);
    }
    snapshot
}

fn reported_path(path: ReportedPath) -> &'static str {
    match path {
        ReportedPath::Direct => "direct",
        ReportedPath::Relayed => "relayed",
        ReportedPath::Down => "down",
    }
}

fn millis(rtt: Duration) -> f64 {
    (rtt.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_is_named_by_its_advertised_url_or_its_listen_address() {
        let listen: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(hub_url(None, listen), "http://127.0.0.1:8080");
        assert_eq!(
            hub_url(Some("http://hub-a.example:8080".into()), listen),
            "http://hub-a.example:8080"
        );
        assert_eq!(
            hub_url(Some(String::new()), listen),
            "http://127.0.0.1:8080"
        );
        let v6: std::net::SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(hub_url(None, v6), "http://[::1]:8080");
        // A wildcard is no address to reach: this machine's name instead.
        let wildcard: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let named = hub_url(None, wildcard);
        assert!(
            !named.contains("0.0.0.0") && named.ends_with(":8080"),
            "{named}"
        );
    }
}
