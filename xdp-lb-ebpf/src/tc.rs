//! The data path on an skb at tc ingress (`tc_lb`, attached by `xdp-lb run --attach
//! tc`): the same balancing logic as `xdp_lb`, for virtual interfaces (veth), where
//! XDP costs a copy of every skb and the loss of GSO. On the skb the balancer keeps
//! partial checksums and GSO, and a frame for a veth whose peer sits in another
//! namespace goes straight into that namespace (`bpf_redirect_peer`), skipping both
//! the veth's transmit path and the balancer namespace's stack.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_l4_csum_replace, bpf_redirect, bpf_redirect_peer, bpf_skb_pull_data},
    programs::TcContext,
};
use xdp_lb_common::{reason, PROTO_TCP, PROTO_UDP, TC_PORT_ATTACHED, TC_PORT_PEER};

use crate::{
    ctx::Ctx,
    maps::{TC_PORTS, TC_PORT_SLOTS},
    parse::{EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ETH_P_IP, ETH_P_IPV6},
    stats,
};

/// Bytes every header the data path reads lies within: Ethernet, IPv6, ICMPv6 and
/// the quoted IPv6 and TCP headers of an ICMP error (`icmp`), the deepest case.
const HEADERS: u32 = 14 + 40 + 8 + 40 + 20;
const ETH_HDR: u32 = 14;
const IPV4_HDR: u32 = 20;
const IPV6_HDR: u32 = 40;
/// The fixed TCP header: all of a TCP segment's headers the parser reads (it takes
/// no options; the checksum validation and the too-big answer linearize what more
/// they need themselves).
const TCP_HDR: u32 = 20;
const UDP_HDR: u32 = 8;

/// Makes the headers the data path reads directly readable: a TSO/GSO skb from a
/// local socket may hold only part of them in its linear head.
///
/// Only those of this packet: TCP keeps its payload in page fragments, so the
/// linear head of a data segment ends with the TCP header (66 bytes for IPv4 with
/// timestamps). Pulling the deepest case's 122 bytes into it instead copied the
/// head of every cloned data segment, and of every segment of a bulk stream
/// (`bpf_skb_pull_data` makes the head writable and grows it).
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) {
    let want = core::cmp::min(ctx.len(), headers_needed(ctx));
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // On failure the parser finds the headers short and passes the packet.
        unsafe { bpf_skb_pull_data(ctx.skb.skb, want) };
    }
}

/// The bytes from the frame's start to the end of the headers `lb::process` reads,
/// judged from the linear head: through the TCP or UDP header for those; HEADERS
/// for anything else over IP (an ICMP error quotes the flow's headers) and when the
/// IP header itself is not in the head; the Ethernet header for what is not IP
/// (the parser passes it).
#[inline(always)]
fn headers_needed(ctx: &TcContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + (ETH_HDR + IPV4_HDR) as usize > end {
        return HEADERS;
    }
    let eth = unsafe { &*(data as *const EthHdr) };
    let (ip_hdr, proto) = if eth.proto == ETH_P_IP {
        // The parser takes IPv4 without options only.
        (IPV4_HDR, unsafe {
            (*((data + ETH_HDR as usize) as *const Ipv4Hdr)).proto
        })
    } else if eth.proto == ETH_P_IPV6 {
        if data + (ETH_HDR + IPV6_HDR) as usize > end {
            return HEADERS;
        }
        // The parser passes extension headers: a next header that is not TCP or
        // UDP is either that or ICMPv6.
        (IPV6_HDR, unsafe {
            (*((data + ETH_HDR as usize) as *const Ipv6Hdr)).nexthdr
        })
    } else {
        return ETH_HDR;
    };
    match proto {
        PROTO_TCP => ETH_HDR + ip_hdr + TCP_HDR,
        PROTO_UDP => ETH_HDR + ip_hdr + UDP_HDR,
        _ => HEADERS,
    }
}

impl Ctx for TcContext {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;
    const PARTIAL_CSUM: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        TcContext::len(self) as u64
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        unsafe { (*self.skb.skb).gso_size }
    }

    #[inline(always)]
    fn linearize(&self, len: usize) -> bool {
        if self.data() + len <= self.data_end() {
            return true;
        }
        unsafe { bpf_skb_pull_data(self.skb.skb, len as u32) == 0 }
    }

    /// With `bpf_l4_csum_replace`, which is right whatever the skb's checksum state:
    /// on a partial checksum it changes the pseudo-header part (addresses, with
    /// BPF_F_PSEUDO_HDR) and leaves the port alone (the device sums the segment
    /// later); on a complete one it patches both, as XDP does by hand.
    #[inline(always)]
    fn l4_csum(
        &self,
        check_off: usize,
        v4: bool,
        udp: bool,
        old: &[u32; 4],
        new: &[u32; 4],
        old_port: u16,
        new_port: u16,
    ) -> Result<(), u32> {
        // MARK_MANGLED_0: a zero UDP checksum stays zero, a computed zero becomes
        // 0xffff.
        let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        let skb = self.skb.skb;
        let off = check_off as u32;
        let rc = unsafe {
            if v4 {
                bpf_l4_csum_replace(
                    skb,
                    off,
                    old[0] as u64,
                    new[0] as u64,
                    BPF_F_PSEUDO_HDR as u64 | mangled | 4,
                )
            } else {
                // 16 bytes are too many for the helper's from/to: pass their
                // difference as a sum (size 0).
                bpf_l4_csum_replace(
                    skb,
                    off,
                    0,
                    csum_diff16(old, new) as u64,
                    BPF_F_PSEUDO_HDR as u64 | mangled,
                )
            }
        };
        // A service on the backends' own port (80 -> 80) changes no port: no call.
        let rc2 = if old_port == new_port {
            0
        } else {
            unsafe { bpf_l4_csum_replace(skb, off, old_port as u64, new_port as u64, mangled | 2) }
        };
        if rc != 0 || rc2 != 0 {
            return Err(reason::PASS_MALFORMED);
        }
        Ok(())
    }

    /// Only to interfaces `xdp-lb run` attached to (TC_PORTS): see `send_to`.
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Result<u32, u32> {
        let a = send_to(ifindex)?;
        stats::reason(if ifindex == Ctx::ingress_ifindex(self) {
            reason::TX
        } else {
            reason::REDIRECT
        });
        Ok(a)
    }

    /// Answered on the skb and redirected back the way it came (`toobig`), if the
    /// ingress is one the program may send on; else the kernel gets it as it came.
    #[inline(always)]
    fn too_big(&self, pkt: &Packet, mtu: u16) -> u32 {
        if port_flags(Ctx::ingress_ifindex(self)).is_none() {
            stats::reason(reason::PASS_NO_TX_PORT);
            return TC_ACT_OK as u32;
        }
        crate::toobig::answer(self, pkt, mtu)
    }
}

/// What `bpf_csum_diff(old, 16, new, 16, 0)` returns (the one's complement sum of
/// `new`'s words and of `old`'s inverted, 32 bits wide; only its value modulo
/// 0xffff matters to the checksum it goes into), computed here: a helper call costs
/// far more in place than its arithmetic (see README, The tc gap).
#[inline(always)]
fn csum_diff16(old: &[u32; 4], new: &[u32; 4]) -> u32 {
    let mut sum = 0u64;
    for i in 0..4 {
        sum += (!old[i]) as u64 + new[i] as u64;
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}

/// The redirect to `ifindex`, an interface `xdp-lb run` attached to (TC_PORTS), like
/// XDP's TX_PORTS. A veth whose peer is in another namespace gets the frame on the
/// peer's ingress directly (`bpf_redirect_peer`, valid at tc ingress only); any other
/// interface gets it on its egress (`bpf_redirect`), with the MACs the caller wrote.
/// The way back out of the ingress veth (hairpin) is its peer too.
#[inline(always)]
pub fn send_to(ifindex: u32) -> Result<u32, u32> {
    let flags = port_flags(ifindex).ok_or(reason::PASS_NO_TX_PORT)?;
    let a = unsafe {
        if flags & TC_PORT_PEER != 0 {
            bpf_redirect_peer(ifindex, 0)
        } else {
            bpf_redirect(ifindex, 0)
        }
    };
    Ok(a as u32)
}

/// TC_PORTS's flags of interface `ifindex`, if `tc_lb` may redirect to it: from the
/// TC_PORT_SLOTS array for the ifindexes it covers, else from the hash.
#[inline(always)]
fn port_flags(ifindex: u32) -> Option<u32> {
    if ifindex < xdp_lb_common::TC_PORT_SLOTS {
        let f = *TC_PORT_SLOTS.get(ifindex)?;
        return (f & TC_PORT_ATTACHED != 0).then_some(f);
    }
    unsafe { TC_PORTS.get(&ifindex) }.copied()
}
