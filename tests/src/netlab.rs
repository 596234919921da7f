//! A NAT lab of network namespaces, for tests that cross networks.
//!
//! ```text
//!             "internet" namespace: bridge br0, 203.0.113.0/24
//!        ┌──────────────┬──────────────┬───────────────┐
//!   public host     public host     router (wan)     router (wan)
//!   203.0.113.1     203.0.113.10    203.0.113.20     203.0.113.30
//!                                   NAT, drops       ...
//!                                   unsolicited
//!                                   lan bridge 10.0.1.1/24
//!                                   ├─ LAN host 10.0.1.2
//!                                   └─ LAN host 10.0.1.3
//! ```
//!
//! Every namespace, veth pair and bridge is created inside namespaces the lab
//! owns (the test's own namespace is never touched), and only 203.0.113.0/24
//! and 10.0.0.0/8 are used: hosts have routes to nothing else. Dropping the
//! [`Lab`] deletes its namespaces, which removes everything in them; a lab
//! left behind by a test process that was killed is removed by the next
//! [`Lab::new`]. Needs root, iproute2 and iptables, and tcpdump for
//! [`Lab::capture`] (`.ci/run` installs them).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every lab namespace's name starts with this, then the owning pid.
const PREFIX: &str = "mlab-";

/// How a router translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// MASQUERADE: keeps the source port when it is free, as most home
    /// routers do.
    PortPreserving,
    /// MASQUERADE --random-fully: a random public port per connection, as
    /// carrier-grade and some enterprise NATs do.
    RandomPort,
}

/// A host: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace, for `ip netns exec`.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A home router: a namespace with a public address and a LAN behind NAT.
#[derive(Debug, Clone)]
pub struct Router {
    /// The router's own namespace.
    pub netns: String,
    /// Its address on the internet segment.
    pub public_ip: Ipv4Addr,
    /// The LAN is 10.0.`lan`.0/24, the router 10.0.`lan`.1.
    lan: u8,
    /// The next LAN host's last octet.
    next_host: u8,
}

/// A set of namespaces that is deleted when dropped.
pub struct Lab {
    id: String,
    internet: String,
    namespaces: Vec<String>,
    next_link: usize,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Builds the internet segment. Fails with what is missing (not root,
    /// no `ip` or `iptables`, no namespace support).
    pub fn new() -> Result<Lab, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the NAT lab needs root (network namespaces, iptables)".to_owned());
        }
        for tool in ["ip", "iptables"] {
            let found = Command::new(tool).arg("-V").output().is_ok();
            if !found {
                return Err(format!(
                    "the NAT lab needs `{tool}`: apt-get install iproute2 iptables"
                ));
            }
        }
        remove_stale_labs();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            internet: format!("{id}-inet"),
            id,
            namespaces: Vec::new(),
            next_link: 0,
        };
        let internet = lab.internet.clone();
        lab.add_namespace(&internet)?;
        lab.ip(&internet, &["link", "add", "br0", "type", "bridge"])?;
        lab.ip(&internet, &["link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// The prefix of every namespace of this lab.
    pub fn name(&self) -> &str {
        &self.id
    }

    /// A host on the internet segment at 203.0.113.`octet`.
    pub fn public_host(&mut self, name: &str, octet: u8) -> Result<Host, String> {
        let netns = format!("{}-{name}", self.id);
        self.add_namespace(&netns)?;
        let ip = Ipv4Addr::new(203, 0, 113, octet);
        let internet = self.internet.clone();
        self.plug(&netns, "eth0", &internet, "br0", ip, 24)?;
        Ok(Host { netns, ip })
    }

    /// A home router at 203.0.113.`octet` with LAN 10.0.`lan`.0/24 behind
    /// `nat`. Like a home router it drops unsolicited packets from the
    /// internet, to itself (INPUT) as well as to the LAN (FORWARD): without
    /// the INPUT rule its own kernel would answer an early SYN of a
    /// simultaneous open with a RST.
    pub fn router(&mut self, name: &str, octet: u8, lan: u8, nat: Nat) -> Result<Router, String> {
        let netns = format!("{}-{name}", self.id);
        self.add_namespace(&netns)?;
        let public_ip = Ipv4Addr::new(203, 0, 113, octet);
        let internet = self.internet.clone();
        self.plug(&netns, "wan", &internet, "br0", public_ip, 24)?;
        self.ip(&netns, &["link", "add", "lan0", "type", "bridge"])?;
        self.ip(
            &netns,
            &["addr", "add", &format!("10.0.{lan}.1/24"), "dev", "lan0"],
        )?;
        self.ip(&netns, &["link", "set", "lan0", "up"])?;
        self.exec(&netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let mut masquerade = vec![
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ];
        if nat == Nat::RandomPort {
            masquerade.push("--random-fully");
        }
        self.exec(&netns, &masquerade)?;
        for chain in ["FORWARD", "INPUT"] {
            self.exec(
                &netns,
                &[
                    "iptables",
                    "-A",
                    chain,
                    "-i",
                    "wan",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            self.exec(
                &netns,
                &["iptables", "-A", chain, "-i", "wan", "-j", "DROP"],
            )?;
        }
        Ok(Router {
            netns,
            public_ip,
            lan,
            next_host: 2,
        })
    }

    /// A host on `router`'s LAN, with the router as its default route.
    pub fn lan_host(&mut self, router: &mut Router, name: &str) -> Result<Host, String> {
        let netns = format!("{}-{name}", self.id);
        self.add_namespace(&netns)?;
        let ip = Ipv4Addr::new(10, 0, router.lan, router.next_host);
        router.next_host += 1;
        let router_ns = router.netns.clone();
        self.plug(&netns, "eth0", &router_ns, "lan0", ip, 24)?;
        self.ip(
            &netns,
            &[
                "route",
                "add",
                "default",
                "via",
                &format!("10.0.{}.1", router.lan),
            ],
        )?;
        Ok(Host { netns, ip })
    }

    /// Runs a command inside `netns` and returns its stdout.
    pub fn exec(&self, netns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", netns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Connects `netns` to the bridge `bridge` in `bridge_ns` with a veth
    /// pair, and gives the namespace's end `ip/prefix`.
    fn plug(
        &mut self,
        netns: &str,
        name: &str,
        bridge_ns: &str,
        bridge: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), String> {
        let port = format!("p{}", self.next_link);
        self.next_link += 1;
        run(
            "ip",
            &[
                "link", "add", name, "netns", netns, "type", "veth", "peer", "name", &port,
                "netns", bridge_ns,
            ],
        )?;
        self.ip(bridge_ns, &["link", "set", &port, "master", bridge])?;
        self.ip(bridge_ns, &["link", "set", &port, "up"])?;
        self.ip(
            netns,
            &["addr", "add", &format!("{ip}/{prefix}"), "dev", name],
        )?;
        self.ip(netns, &["link", "set", name, "up"])?;
        Ok(())
    }

    fn add_namespace(&mut self, netns: &str) -> Result<(), String> {
        run("ip", &["netns", "add", netns])?;
        self.namespaces.push(netns.to_owned());
        self.ip(netns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn ip(&self, netns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", netns];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

/// The lab most cases use: a hub at 203.0.113.1, and devices `a` and `b`
/// at 10.0.1.2 and 10.0.2.2, each behind its own home router (at
/// 203.0.113.20 with `a`'s NAT, and at 203.0.113.30, port-preserving).
pub struct TwoHomes {
    /// The hub's host on the internet segment.
    pub hub: Host,
    /// Device a's host.
    pub a: Host,
    /// Device b's host.
    pub b: Host,
    /// a's router.
    pub router_a: Router,
    /// b's router.
    pub router_b: Router,
}

impl Lab {
    /// Builds [`TwoHomes`], `a`'s router translating with `nat_a`.
    pub fn two_homes(&mut self, nat_a: Nat) -> Result<TwoHomes, String> {
        let hub = self.public_host("hub", 1)?;
        let mut router_a = self.router("homea", 20, 1, nat_a)?;
        let mut router_b = self.router("homeb", 30, 2, Nat::PortPreserving)?;
        let a = self.lan_host(&mut router_a, "a")?;
        let b = self.lan_host(&mut router_b, "b")?;
        Ok(TwoHomes {
            hub,
            a,
            b,
            router_a,
            router_b,
        })
    }
}

/// A packet capture (tcpdump) running in one of the lab's namespaces.
pub struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Lab {
    /// Starts capturing every TCP packet on every interface of `netns`
    /// into `file`; returns once tcpdump listens.
    pub fn capture(&self, netns: &str, file: &std::path::Path) -> Result<Capture, String> {
        let path = file.display().to_string();
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", netns, "tcpdump", "-i", "any", "-U", "-n", "-s", "0", "-w", &path,
                "tcp",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|error| format!("tcpdump: {error}"))?;
        // tcpdump says "listening on ..." on stderr once it captures.
        let stderr = child.stderr.take().ok_or("tcpdump has no stderr")?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let mut said = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening") => break,
                Some(Ok(line)) if said.len() < 10 => said.push(line),
                _ => {
                    let _ = child.kill();
                    return Err(format!("tcpdump did not start: {}", said.join("; ")));
                }
            }
        }
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Capture {
            child,
            file: file.to_owned(),
        })
    }
}

impl Capture {
    /// Stops the capture and returns the pcap file's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for netns in self.namespaces.iter().rev() {
            let _ = run("ip", &["netns", "del", netns]);
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes namespaces of labs whose test process no longer runs.
fn remove_stale_labs() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// A lab, or `None` (with the reason on stderr) where one cannot be built
/// and the test may be skipped. Under CI (`CI=true`) a lab that cannot be
/// built fails the test instead: CI must never skip these.
pub fn lab_or_skip() -> Option<Lab> {
    match Lab::new() {
        Ok(lab) => Some(lab),
        Err(reason) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("the NAT lab cannot be built under CI: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}
