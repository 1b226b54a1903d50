//! Keeps the kernel's neighbour entries for the backends' next hops resolved, so
//! `bpf_fib_lookup` in the XDP program finds their MACs, without sending the backends
//! any traffic: each next hop gets a managed entry (`NTF_EXT_MANAGED`, Linux 5.16+),
//! which the kernel itself probes and keeps reachable, as Cilium does. `run` refuses
//! kernels older than 5.17 (see `daemon::host`), so every kernel it runs on has them.
//!
//! Netlink messages are built and parsed with `netlink-packet-route`; the socket is a
//! plain blocking `AF_NETLINK` socket (three request/acknowledge exchanges per
//! backend, on the control plane's timer).
use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
        NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("opening a netlink socket")]
    Socket(#[source] io::Error),
    #[error("netlink exchange ({what})")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("undecodable netlink answer ({what}): {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("no route to backend {0} (see `ip route get {0}`)")]
    NoRoute(IpAddr),
    #[error("the kernel refused a managed neighbour entry for {addr} on interface {ifindex}")]
    Refused {
        addr: IpAddr,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

/// Makes sure the next hop towards every address in `backends` has a managed
/// neighbour entry. Entries an operator configured (`permanent`, `noarp`) are left
/// alone. Idempotent: cheap to call on every reload and timer tick. Every backend is
/// tried; the first error is returned.
pub fn keep_resolved(backends: &[IpAddr]) -> Result<(), NeighError> {
    let addrs: BTreeSet<IpAddr> = backends.iter().copied().collect();
    let mut nl = Netlink::open()?;
    let mut first_err = None;
    for addr in addrs {
        if let Err(e) = nl.manage_next_hop(addr) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// What the kernel answered a request with.
enum Answer {
    Message(RouteNetlinkMessage),
    Ack,
    Error(io::Error),
}

impl Netlink {
    fn open() -> Result<Self, NeighError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NeighError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A dead kernel answer must not hang the control plane's loop.
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: tv lives across the call and has the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends one request with NLM_F_ACK and returns the kernel's answer: the reply
    /// message if there is one (the ACK that follows it is read too), else the ACK or
    /// the error.
    fn request(
        &mut self,
        what: &'static str,
        flags: u16,
        msg: RouteNetlinkMessage,
    ) -> Result<Answer, NeighError> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0u8; req.header.length as usize];
        req.serialize(&mut buf);
        // SAFETY: a zeroed sockaddr_nl is the kernel's address (pid 0, no groups).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buf and to outlive the call; lengths match.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(NeighError::Io {
                what,
                source: io::Error::last_os_error(),
            });
        }
        let mut reply = None;
        let mut rbuf = vec![0u8; 16384];
        loop {
            // SAFETY: rbuf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    rbuf.as_mut_ptr() as *mut libc::c_void,
                    rbuf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(NeighError::Io {
                    what,
                    source: io::Error::last_os_error(),
                });
            }
            let mut off = 0usize;
            while off < n as usize {
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[off..n as usize])
                        .map_err(|e| NeighError::Decode {
                            what,
                            detail: e.to_string(),
                        })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::InnerMessage(m) => reply = Some(m),
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Ok(Answer::Error(e.to_io()))
                        }
                        NetlinkPayload::Error(_) => {
                            return Ok(reply.map_or(Answer::Ack, Answer::Message))
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// The interface and next hop (gateway, or the address itself when on-link)
    /// the kernel routes `addr` through.
    fn route(&mut self, addr: IpAddr) -> Result<(u32, IpAddr), NeighError> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(addr);
        m.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(addr)));
        let answer = self.request("route lookup", 0, RouteNetlinkMessage::GetRoute(m))?;
        let Answer::Message(RouteNetlinkMessage::NewRoute(r)) = answer else {
            return Err(NeighError::NoRoute(addr));
        };
        let mut oif = None;
        let mut hop = addr;
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => hop = IpAddr::V4(*g),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => hop = IpAddr::V6(*g),
                _ => {}
            }
        }
        Ok((oif.ok_or(NeighError::NoRoute(addr))?, hop))
    }

    fn manage_next_hop(&mut self, addr: IpAddr) -> Result<(), NeighError> {
        let (ifindex, hop) = self.route(addr)?;
        if let Some(existing) = self.neighbour(ifindex, hop)? {
            let st = existing.header.state;
            let managed = existing.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed))
            });
            // Configured by the operator (static), or already ours.
            if managed || matches!(st, NeighbourState::Permanent | NeighbourState::Noarp) {
                return Ok(());
            }
        }
        let mut m = neigh_msg(ifindex, hop);
        // NUD_NONE without a link-layer address: the kernel resolves it and keeps it
        // resolved. EXT_LEARNED exempts it from garbage collection (see the kernel's
        // "net, neigh: Add NTF_MANAGED flag for managed neighbor entries").
        m.header.flags = NeighbourFlags::ExtLearned;
        m.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        match self.request(
            "managed neighbour entry",
            NLM_F_CREATE | NLM_F_REPLACE,
            RouteNetlinkMessage::NewNeighbour(m),
        )? {
            Answer::Error(source) => Err(NeighError::Refused {
                addr: hop,
                ifindex,
                source,
            }),
            _ => Ok(()),
        }
    }

    /// The neighbour entry for `hop` on `ifindex`, if there is one.
    fn neighbour(
        &mut self,
        ifindex: u32,
        hop: IpAddr,
    ) -> Result<Option<NeighbourMessage>, NeighError> {
        let m = neigh_msg(ifindex, hop);
        match self.request("neighbour lookup", 0, RouteNetlinkMessage::GetNeighbour(m))? {
            Answer::Message(RouteNetlinkMessage::NewNeighbour(n)) => Ok(Some(n)),
            Answer::Error(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Answer::Error(source) => Err(NeighError::Io {
                what: "neighbour lookup",
                source,
            }),
            _ => Ok(None),
        }
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn neigh_msg(ifindex: u32, hop: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(hop);
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::None;
    m.attributes
        .push(NeighbourAttribute::Destination(match hop {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    m
}
