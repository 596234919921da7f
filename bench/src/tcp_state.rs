//! The state of one TCP socket, asked of the kernel by its addresses.
//!
//! Both ends of every connection live on this machine, so the server's side
//! of a connection can be looked up too. That is how a stalled subscriber
//! learns that the server cut it off without reading a byte: the server's
//! socket leaves `ESTABLISHED` (to `FIN_WAIT1` while its unsent data waits
//! behind a closed window, or it is gone after a reset).
//!
//! The lookup is one NETLINK_SOCK_DIAG request for an exact socket (what
//! `ss` sends for a single socket), which the kernel answers from its hash
//! table. Reading /proc/net/tcp or a filtered `ss` dump instead walks every
//! socket and cost ~8 ms of kernel time per read on the benchmark machine:
//! polled every 10 ms, that took most of a core from the servers under test.

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

use crate::error::BenchError;

/// `SOCK_DIAG_BY_FAMILY` from linux/sock_diag.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` from linux/netlink.h.
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST`: a request, without `NLM_F_DUMP`, so an exact lookup.
const NLM_F_REQUEST: u16 = 1;
/// Length of `struct nlmsghdr`.
const HEADER: usize = 16;
/// Length of the request: `nlmsghdr` and `struct inet_diag_req_v2`.
const REQUEST: usize = HEADER + 56;
/// `TCP_ESTABLISHED` from linux/tcp_states.h.
pub const ESTABLISHED: u8 = 1;
/// `ENOENT`: the kernel has no such socket.
const ENOENT: i32 = 2;

/// A netlink socket for socket-state queries.
#[derive(Debug)]
pub struct TcpStateProbe {
    socket: OwnedFd,
    sequence: u32,
}

impl TcpStateProbe {
    /// Opens the netlink socket.
    pub fn new() -> Result<TcpStateProbe, BenchError> {
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(|errno| BenchError::io("opening a NETLINK_SOCK_DIAG socket")(errno.into()))?;
        Ok(TcpStateProbe {
            socket,
            sequence: 0,
        })
    }

    /// The state of the TCP socket bound to `local` and connected to
    /// `remote` (linux/tcp_states.h numbering), `None` if there is none.
    pub fn state(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<Option<u8>, BenchError> {
        self.sequence = self.sequence.wrapping_add(1);
        let fd = self.socket.as_raw_fd();
        sendto(
            fd,
            &request(self.sequence, local, remote),
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|errno| BenchError::io("sending a sock_diag request")(errno.into()))?;
        let mut reply = [0u8; 1024];
        let len = recv(fd, &mut reply, MsgFlags::empty())
            .map_err(|errno| BenchError::io("reading a sock_diag reply")(errno.into()))?;
        parse_reply(&reply[..len])
    }
}

/// A `SOCK_DIAG_BY_FAMILY` request for one IPv4 TCP socket in any state.
fn request(sequence: u32, local: SocketAddrV4, remote: SocketAddrV4) -> Vec<u8> {
    let mut msg = Vec::with_capacity(REQUEST);
    // struct nlmsghdr: length, type, flags, sequence, port id (0: kernel).
    msg.extend_from_slice(&u32::try_from(REQUEST).unwrap_or(u32::MAX).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&sequence.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, extensions, pad, states.
    msg.extend_from_slice(&[2 /* AF_INET */, 6 /* IPPROTO_TCP */, 0, 0]);
    msg.extend_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: ports and addresses in network order, the
    // interface, and the cookie (all ones: "no cookie").
    msg.extend_from_slice(&local.port().to_be_bytes());
    msg.extend_from_slice(&remote.port().to_be_bytes());
    for ip in [local.ip(), remote.ip()] {
        msg.extend_from_slice(&ip.octets());
        msg.extend_from_slice(&[0; 12]);
    }
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[0xff; 8]);
    msg
}

/// The state byte of an `inet_diag_msg` reply, or `None` for `ENOENT`.
fn parse_reply(reply: &[u8]) -> Result<Option<u8>, BenchError> {
    let bad = || {
        BenchError::Usage(format!(
            "unexpected sock_diag reply of {} bytes",
            reply.len()
        ))
    };
    let kind = reply
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(bad)?;
    match kind {
        SOCK_DIAG_BY_FAMILY => reply.get(HEADER + 1).copied().map(Some).ok_or_else(bad),
        NLMSG_ERROR => {
            let errno = reply
                .get(HEADER..HEADER + 4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(bad)?;
            if errno == -ENOENT {
                Ok(None)
            } else {
                Err(BenchError::io("looking up a TCP socket with sock_diag")(
                    std::io::Error::from_raw_os_error(-errno),
                ))
            }
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_sides_of_a_loopback_connection_and_their_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let v4 = |addr| match addr {
            std::net::SocketAddr::V4(v4) => v4,
            std::net::SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        };
        let server_addr = v4(server.local_addr().unwrap());
        let client_addr = v4(client.local_addr().unwrap());
        let mut probe = TcpStateProbe::new().unwrap();
        assert_eq!(
            probe.state(server_addr, client_addr).unwrap(),
            Some(ESTABLISHED)
        );
        assert_eq!(
            probe.state(client_addr, server_addr).unwrap(),
            Some(ESTABLISHED)
        );
        drop(server);
        assert_ne!(
            probe.state(server_addr, client_addr).unwrap(),
            Some(ESTABLISHED)
        );
        let nobody = SocketAddrV4::new([127, 0, 0, 1].into(), 9);
        assert_eq!(probe.state(nobody, client_addr).unwrap(), None);
    }
}
