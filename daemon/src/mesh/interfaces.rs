//! This host's own addresses, for a device whose route to its hub is
//! loopback.
//!
//! A node that is its own hub registers over 127.0.0.1, so the address it
//! learns on that route, and the one the hub observes, are loopback: useless
//! to every device on another machine, which would then reach it only
//! through the relay. When the mesh listens on every interface, such a node
//! advertises its interfaces' addresses instead (as Tailscale and Nebula
//! report every local address), loopback last for devices on the same host.

use std::net::{IpAddr, SocketAddr};

/// The addresses of the host's interfaces that are up, that another machine
/// could reach: no loopback, no unspecified, no IPv6 link-local (which
/// would need a scope).
pub fn reachable_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut addresses = Vec::new();
    for interface in interfaces {
        if !interface
            .flags
            .contains(nix::net::if_::InterfaceFlags::IFF_UP)
        {
            continue;
        }
        let Some(address) = interface.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if usable(ip) && !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    addresses
}

/// Whether a device elsewhere could dial `ip`.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified() && !v4.is_link_local(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// The endpoints of the mesh port on every reachable address.
pub fn reachable_endpoints(port: u16) -> Vec<SocketAddr> {
    reachable_addresses()
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_another_machine_could_dial() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "169.254.1.1",
        ] {
            assert!(!usable(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.1.2", "203.0.113.1", "2001:db8::1"] {
            assert!(usable(ip.parse().unwrap()), "{ip}");
        }
        assert!(
            reachable_addresses().iter().all(|ip| !ip.is_loopback()),
            "loopback is never reported"
        );
    }
}
