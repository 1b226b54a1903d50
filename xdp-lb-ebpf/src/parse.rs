//! Header layouts and the parser: untagged Ethernet, IPv4 without options (version,
//! IHL, total length against the frame, header checksum), IPv6 without extension
//! headers (payload length against the frame), TCP and UDP. Anything else is
//! reported with the reason it is not ours, and the caller passes it to the kernel
//! untouched. The L4 fields the validation of service packets needs (TCP data
//! offset and flags, UDP length) are read here; `validate` judges them once the
//! packet is known to be for a service.
//!
//! Every header is read only after an explicit `data + off + size <= data_end`
//! check; offsets are constants (VLAN-tagged frames are not parsed), which keeps the
//! verifier's range tracking exact.
use crate::ctx::Ctx;
use xdp_lb_common::{reason, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();
const IPV6_NH_FRAGMENT: u8 = 44;
const IPV6_NH_HOP: u8 = 0;
const IPV6_NH_ROUTING: u8 = 43;
const IPV6_NH_DSTOPTS: u8 = 60;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub proto: u16,
}

/// Fields in network byte order.
#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

/// Fields in network byte order.
#[repr(C)]
pub struct Ipv6Hdr {
    pub vtcfl: u32,
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The start of TCP and UDP headers. Network byte order.
#[repr(C)]
pub struct Ports {
    pub sport: u16,
    pub dport: u16,
}

/// Offset of the L4 checksum field.
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;
const TCP_HDR_LEN: usize = 20;
const TCP_DOFF_OFF: usize = 12;
const TCP_FLAGS_OFF: usize = 13;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
const UDP_HDR_LEN: usize = 8;
const UDP_LEN_OFF: usize = 4;
/// Shortest Ethernet frame without its FCS; shorter packets arrive padded to it.
const ETH_MIN_FRAME: u64 = 60;

/// Bounds-checked pointer to a `T` at `off` bytes into the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Ctx, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// What the data path needs to know about a packet it may own.
pub struct Packet {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    /// 5-tuple as on the wire (client -> VIP, or backend -> client for replies).
    pub key: FlowKey,
    /// Frame length, for byte counters.
    pub len: u64,
    /// IP total length in host order (MTU check in the FIB lookup).
    pub ip_len: u16,
    /// A TCP SYN without ACK: the first packet of a connection.
    pub syn: bool,
    /// Length of the L4 segment (header and payload) as the IP header states it,
    /// host order; the frame may carry Ethernet padding beyond it.
    pub l4_len: u16,
    /// TCP: the flags byte (CWR..FIN). UDP: 0.
    pub tcp_flags: u8,
    /// TCP: the data offset in 32-bit words (0..=15, unchecked). UDP: 0.
    pub tcp_doff: u8,
    /// UDP: the length field, host order. TCP: 0.
    pub udp_len: u16,
}

/// The L4 fields `Packet` carries, read from the fixed header.
struct L4 {
    sport: u16,
    dport: u16,
    flags: u8,
    doff: u8,
    udp_len: u16,
}

/// Parses the frame or returns the `reason` it is not a TCP/UDP packet we handle.
#[inline(always)]
pub fn parse<C: Ctx>(ctx: &C) -> Result<Packet, u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(reason::PASS_MALFORMED)?;
    let proto = unsafe { (*eth).proto };
    // The program sends only on the interfaces it is attached to, untagged, and
    // cannot tell which VLAN an egress carries: forwarding a tagged frame would put
    // a tag on a link that does not expect it. The kernel's VLAN devices handle it.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return Err(reason::PASS_VLAN);
    }
    let l3 = core::mem::size_of::<EthHdr>();
    let len = ctx.len();
    if proto == ETH_P_IP {
        parse_v4(ctx, l3, len)
    } else if proto == ETH_P_IPV6 {
        parse_v6(ctx, l3, len)
    } else {
        Err(reason::PASS_NOT_IP)
    }
}

#[inline(always)]
fn l4_fields<C: Ctx>(ctx: &C, l4: usize, proto: u8, l4_len: u64) -> Result<L4, u32> {
    // Require the whole fixed header, not just the ports: the checksum we patch
    // lies at its end. `l4_len` is what the IP header says follows it.
    let need = if proto == PROTO_TCP {
        TCP_HDR_LEN
    } else {
        UDP_HDR_LEN
    };
    if (need as u64) > l4_len || ctx.data() + l4 + need > ctx.data_end() {
        return Err(reason::PASS_MALFORMED);
    }
    let p: *const Ports = ptr_at(ctx, l4).ok_or(reason::PASS_MALFORMED)?;
    let (mut flags, mut doff, mut udp_len) = (0, 0, 0);
    if proto == PROTO_TCP {
        let f: *const u8 = ptr_at(ctx, l4 + TCP_FLAGS_OFF).ok_or(reason::PASS_MALFORMED)?;
        let d: *const u8 = ptr_at(ctx, l4 + TCP_DOFF_OFF).ok_or(reason::PASS_MALFORMED)?;
        flags = unsafe { *f };
        doff = unsafe { *d } >> 4;
    } else {
        let u: *const u16 = ptr_at(ctx, l4 + UDP_LEN_OFF).ok_or(reason::PASS_MALFORMED)?;
        udp_len = u16::from_be(unsafe { *u });
    }
    Ok(unsafe {
        L4 {
            sport: (*p).sport,
            dport: (*p).dport,
            flags,
            doff,
            udp_len,
        }
    })
}

/// True if the 20-byte IPv4 header at `l3` sums to 0xffff (its checksum is right).
/// Five 32-bit loads: a ones' complement sum is the same over 16- or 32-bit words
/// once folded, and byte-order independent for this all-ones test.
#[inline(always)]
pub fn ipv4_csum_ok(ip: &Ipv4Hdr) -> bool {
    let w = ip as *const Ipv4Hdr as *const u32;
    let mut s: u64 = 0;
    for i in 0..5 {
        s += unsafe { *w.add(i) } as u64;
    }
    xdp_lb_common::csum::fold(s) == 0xffff
}

#[inline(always)]
fn parse_v4<C: Ctx>(ctx: &C, l3: usize, len: u64) -> Result<Packet, u32> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(reason::PASS_MALFORMED)?;
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(reason::PASS_MALFORMED);
    }
    if ip.vihl & 0xf != 5 {
        return Err(if ip.vihl & 0xf < 5 {
            reason::PASS_MALFORMED
        } else {
            reason::PASS_IP_OPTIONS
        });
    }
    // More-fragments flag or a non-zero offset.
    if ip.frag_off & 0x3fffu16.to_be() != 0 {
        return Err(reason::PASS_FRAGMENT);
    }
    let proto = ip.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(reason::PASS_NOT_SERVICE);
    }
    let ip_len = u16::from_be(ip.tot_len);
    let l4 = l3 + 20;
    // The IP length must cover the L4 header and fit in the frame. Only a frame
    // padded to the Ethernet minimum may be longer.
    let end = l3 as u64 + ip_len as u64;
    if (ip_len as u64) < 20 + 8 || end > len || (end < len && len > ETH_MIN_FRAME) {
        return Err(reason::PASS_MALFORMED);
    }
    // Last of the header checks, so a header broken in two ways is counted under
    // its structural fault.
    if !ipv4_csum_ok(ip) {
        return Err(reason::PASS_BAD_IP_CSUM);
    }
    let l4_len = ip_len - 20;
    let f = l4_fields(ctx, l4, proto, l4_len as u64)?;
    Ok(Packet {
        l3,
        l4,
        key: FlowKey {
            src: [ip.src, 0, 0, 0],
            dst: [ip.dst, 0, 0, 0],
            sport: f.sport,
            dport: f.dport,
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        len,
        ip_len,
        syn: f.flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        l4_len,
        tcp_flags: f.flags,
        tcp_doff: f.doff,
        udp_len: f.udp_len,
    })
}

#[inline(always)]
fn parse_v6<C: Ctx>(ctx: &C, l3: usize, len: u64) -> Result<Packet, u32> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(reason::PASS_MALFORMED)?;
    let ip = unsafe { &*ip };
    if (u32::from_be(ip.vtcfl) >> 28) != 6 {
        return Err(reason::PASS_MALFORMED);
    }
    let proto = ip.nexthdr;
    if proto == IPV6_NH_FRAGMENT {
        return Err(reason::PASS_FRAGMENT);
    }
    if proto == IPV6_NH_HOP || proto == IPV6_NH_ROUTING || proto == IPV6_NH_DSTOPTS {
        return Err(reason::PASS_IP_OPTIONS);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(reason::PASS_NOT_SERVICE);
    }
    let payload = u16::from_be(ip.payload_len);
    let l4 = l3 + 40;
    // The payload length must match the frame: an IPv6 packet with a TCP or UDP
    // header is never short enough to need Ethernet padding.
    if (payload as u64) < 8 || l4 as u64 + payload as u64 != len {
        return Err(reason::PASS_MALFORMED);
    }
    let f = l4_fields(ctx, l4, proto, payload as u64)?;
    Ok(Packet {
        l3,
        l4,
        key: FlowKey {
            src: ip.src,
            dst: ip.dst,
            sport: f.sport,
            dport: f.dport,
            proto,
            family: FAMILY_V6,
            _pad: [0; 2],
        },
        len,
        ip_len: payload.wrapping_add(40),
        syn: f.flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        l4_len: payload,
        tcp_flags: f.flags,
        tcp_doff: f.doff,
        udp_len: f.udp_len,
    })
}
