//! ICMP errors about balanced flows, so path-MTU discovery and unreachable reports
//! work through the balancer: ICMP destination unreachable (fragmentation needed
//! among its codes) and ICMPv6 destination unreachable and packet too big.
//!
//! From the client side, an error addressed to a VIP that quotes a VIP -> client
//! packet (a router on the way to the client could not forward the backend's reply)
//! goes to the backend that owns the flow: in DSR mode as it is (new MACs), in NAT
//! mode with the outer destination, the quoted source address and port and every
//! checksum they enter translated to the backend. From the backend side, an error
//! that quotes a client -> backend packet of a NAT flow (the backend or a hop before
//! it refused it) goes to the client the way the flow's requests came in, from the
//! VIP, with the quoted destination translated back to the VIP and port.
//!
//! Offsets are constants (no IPv4 options or IPv6 extension headers, outside or
//! quoted), so every read is a fixed-size bounds check. An error we cannot read
//! or that quotes no flow we own passes to the kernel untouched and is counted.
use xdp_lb_common::{
    csum::Update, reason, Backend, FlowKey, FlowValue, ServiceKey, FAMILY_V4, FAMILY_V6, PROTO_TCP,
    PROTO_UDP, REPLY_PER_FLOW, SVC_FWD_DSR,
};

use crate::{
    ctx::Ctx,
    forward::{self, Side},
    maps::{BACKENDS, BACKEND_REPLIES, EMBRYO_REVERSE, FLOWS, NAT_REVERSE, SERVICES},
    parse::{ipv4_csum_ok, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, Ports, ETH_P_IP, ETH_P_IPV6},
    stats,
};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;

const L3: usize = core::mem::size_of::<EthHdr>();
/// IPv4: the ICMP header, the quoted IP header, the quoted L4 header.
const ICMP4: usize = L3 + 20;
const INNER4: usize = ICMP4 + 8;
const INNER4_L4: usize = INNER4 + 20;
/// IPv6: the ICMPv6 header, the quoted IP header, the quoted L4 header.
const ICMP6: usize = L3 + 40;
const INNER6: usize = ICMP6 + 8;
const INNER6_L4: usize = INNER6 + 40;
/// Offset of the checksum in the ICMP and ICMPv6 headers.
const ICMP_CHECK_OFF: usize = 2;

/// The outer header of an ICMP error and the 5-tuple of the packet it quotes,
/// all in network byte order.
struct IcmpError {
    family: u8,
    src: [u32; 4],
    dst: [u32; 4],
    len: u64,
    ip_len: u16,
    /// The quoted packet as it was sent.
    quoted: FlowKey,
}

/// Handles an IP packet the parser found to be neither TCP nor UDP.
#[inline(always)]
pub fn process<C: Ctx>(ctx: &C) -> u32 {
    let err = match read(ctx) {
        Ok(e) => e,
        Err(r) => return pass::<C>(r),
    };
    let q = &err.quoted;
    // An error goes to the sender of the packet it quotes; anything else is not
    // about a packet that passed through us.
    if q.src != err.dst {
        return pass::<C>(reason::PASS_NOT_SERVICE);
    }
    // Towards a backend: the quoted packet came from a VIP (our translated reply or a
    // DSR backend's).
    let skey = ServiceKey {
        addr: q.src,
        port: q.sport,
        proto: q.proto,
        family: err.family,
    };
    if let Some(svc) = unsafe { SERVICES.get(&skey) } {
        return to_backend(ctx, &err, svc.flags);
    }
    // Towards a client: the quoted packet went from the client to a NAT backend.
    let bkey = ServiceKey {
        addr: q.dst,
        port: q.dport,
        proto: q.proto,
        family: err.family,
    };
    match unsafe { BACKEND_REPLIES.get(&bkey) } {
        Some(t) => to_client(ctx, &err, t.vip, t.vport, t.flags),
        None => pass::<C>(reason::PASS_NOT_SERVICE),
    }
}

/// Reads and checks an ICMP error of a kind we translate, or says why not.
#[inline(always)]
fn read<C: Ctx>(ctx: &C) -> Result<IcmpError, u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(reason::PASS_MALFORMED)?;
    let proto = unsafe { (*eth).proto };
    let len = ctx.len();
    if proto == ETH_P_IP {
        read_v4(ctx, len)
    } else if proto == ETH_P_IPV6 {
        read_v6(ctx, len)
    } else {
        Err(reason::PASS_NOT_SERVICE)
    }
}

#[inline(always)]
fn read_v4<C: Ctx>(ctx: &C, len: u64) -> Result<IcmpError, u32> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, L3).ok_or(reason::PASS_MALFORMED)?;
    let ip = unsafe { &*ip };
    // The parser has already passed options and fragments on; this is not ICMP or
    // not an error we translate (echo and the rest are the kernel's).
    if ip.proto != PROTO_ICMP || ip.vihl != 0x45 || ip.frag_off & 0x3fffu16.to_be() != 0 {
        return Err(reason::PASS_NOT_SERVICE);
    }
    let ty: *const u8 = ptr_at(ctx, ICMP4).ok_or(reason::PASS_NOT_SERVICE)?;
    if unsafe { *ty } != ICMP_DEST_UNREACH {
        return Err(reason::PASS_NOT_SERVICE);
    }
    // An error quoting an IP header is longer than the Ethernet minimum, so the frame
    // carries no padding: the IP length must be the frame's.
    let ip_len = u16::from_be(ip.tot_len);
    if L3 as u64 + ip_len as u64 != len {
        return Err(reason::PASS_MALFORMED);
    }
    if !ipv4_csum_ok(ip) {
        return Err(reason::PASS_BAD_IP_CSUM);
    }
    let inner: *const Ipv4Hdr = ptr_at(ctx, INNER4).ok_or(reason::PASS_ICMP_UNHANDLED)?;
    let inner = unsafe { &*inner };
    // A quoted header with options or a later fragment (no ports) is not ours to read.
    if inner.vihl != 0x45 || inner.frag_off & 0x1fffu16.to_be() != 0 {
        return Err(reason::PASS_ICMP_UNHANDLED);
    }
    let ports: *const Ports = ptr_at(ctx, INNER4_L4).ok_or(reason::PASS_ICMP_UNHANDLED)?;
    let proto = inner.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(reason::PASS_ICMP_UNHANDLED);
    }
    Ok(IcmpError {
        family: FAMILY_V4,
        src: [ip.src, 0, 0, 0],
        dst: [ip.dst, 0, 0, 0],
        len,
        ip_len,
        quoted: FlowKey {
            src: [inner.src, 0, 0, 0],
            dst: [inner.dst, 0, 0, 0],
            sport: unsafe { (*ports).sport },
            dport: unsafe { (*ports).dport },
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
    })
}

#[inline(always)]
fn read_v6<C: Ctx>(ctx: &C, len: u64) -> Result<IcmpError, u32> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, L3).ok_or(reason::PASS_MALFORMED)?;
    let ip = unsafe { &*ip };
    if ip.nexthdr != PROTO_ICMPV6 {
        return Err(reason::PASS_NOT_SERVICE);
    }
    let ty: *const u8 = ptr_at(ctx, ICMP6).ok_or(reason::PASS_NOT_SERVICE)?;
    let ty = unsafe { *ty };
    if ty != ICMPV6_DEST_UNREACH && ty != ICMPV6_PKT_TOOBIG {
        return Err(reason::PASS_NOT_SERVICE);
    }
    let payload = u16::from_be(ip.payload_len);
    if (L3 + 40) as u64 + payload as u64 != len {
        return Err(reason::PASS_MALFORMED);
    }
    let inner: *const Ipv6Hdr = ptr_at(ctx, INNER6).ok_or(reason::PASS_ICMP_UNHANDLED)?;
    let inner = unsafe { &*inner };
    let ports: *const Ports = ptr_at(ctx, INNER6_L4).ok_or(reason::PASS_ICMP_UNHANDLED)?;
    // A quoted packet with extension headers before its L4 header is not ours to read.
    let proto = inner.nexthdr;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(reason::PASS_ICMP_UNHANDLED);
    }
    Ok(IcmpError {
        family: FAMILY_V6,
        src: ip.src,
        dst: ip.dst,
        len,
        ip_len: payload.wrapping_add(40),
        quoted: FlowKey {
            src: inner.src,
            dst: inner.dst,
            sport: unsafe { (*ports).sport },
            dport: unsafe { (*ports).dport },
            proto,
            family: FAMILY_V6,
            _pad: [0; 2],
        },
    })
}

/// The backend a flow is pinned to, under the data path's rule: draining backends
/// keep their flows, down ones and reassigned slots do not.
#[inline(always)]
fn flow_backend(f: &FlowValue) -> Option<Backend> {
    let b = BACKENDS.get(f.backend_id)?;
    (b.generation == f.generation && b.state != xdp_lb_common::BACKEND_DOWN).then_some(*b)
}

/// A client-side error about a VIP -> client packet: to the flow's backend.
#[inline(always)]
fn to_backend<C: Ctx>(ctx: &C, err: &IcmpError, svc_flags: u32) -> u32 {
    let q = &err.quoted;
    // The client's flow, as its requests carry it.
    let key = FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family: err.family,
        _pad: [0; 2],
    };
    let flow = match unsafe { FLOWS.get(&key) } {
        Some(f) => *f,
        None => match crate::embryo::get(&key) {
            Some(f) => *f,
            None => return pass::<C>(reason::PASS_ICMP_NO_FLOW),
        },
    };
    let Some(b) = flow_backend(&flow) else {
        return pass::<C>(reason::PASS_ICMP_NO_FLOW);
    };
    if svc_flags & SVC_FWD_DSR == 0 {
        if let Err(r) = translate(ctx, err, Side::Dst, &b.addr, b.port) {
            return pass::<C>(r);
        }
    }
    stats::reason(reason::ICMP_TO_BACKEND);
    let pkt = Packet {
        l3: L3,
        l4: if err.family == FAMILY_V4 {
            ICMP4
        } else {
            ICMP6
        },
        key: FlowKey {
            src: err.src,
            dst: b.addr,
            sport: 0,
            dport: 0,
            proto: if err.family == FAMILY_V4 {
                PROTO_ICMP
            } else {
                PROTO_ICMPV6
            },
            family: err.family,
            _pad: [0; 2],
        },
        len: err.len,
        ip_len: err.ip_len,
        syn: false,
        l4_len: 0,
        tcp_flags: 0,
        tcp_doff: 0,
        udp_len: 0,
    };
    forward::to_backend(ctx, &pkt, flow.backend_id, b.generation, &err.src, &b.addr)
}

/// A backend-side error about a client -> backend packet of a NAT flow: to the
/// client, from the VIP, the way the flow's requests came in.
#[inline(always)]
fn to_client<C: Ctx>(ctx: &C, err: &IcmpError, vip: [u32; 4], vport: u16, flags: u16) -> u32 {
    let q = &err.quoted;
    let (vip, vport, ifindex, smac, dmac) = if flags & REPLY_PER_FLOW != 0 {
        // The backend serves several VIPs: the reply 5-tuple says which.
        let rkey = FlowKey {
            src: q.dst,
            dst: q.src,
            sport: q.dport,
            dport: q.sport,
            proto: q.proto,
            family: err.family,
            _pad: [0; 2],
        };
        let rev = match unsafe { NAT_REVERSE.get(&rkey) } {
            Some(r) => *r,
            None => match unsafe { EMBRYO_REVERSE.get(&rkey) } {
                Some(r) => *r,
                None => return pass::<C>(reason::PASS_ICMP_NO_FLOW),
            },
        };
        (rev.vip, rev.vport, rev.ifindex, rev.smac, rev.dmac)
    } else {
        let key = FlowKey {
            src: q.src,
            dst: vip,
            sport: q.sport,
            dport: vport,
            proto: q.proto,
            family: err.family,
            _pad: [0; 2],
        };
        let flow = match unsafe { FLOWS.get(&key) } {
            Some(f) => *f,
            None => match crate::embryo::get(&key) {
                Some(f) => *f,
                None => return pass::<C>(reason::PASS_ICMP_NO_FLOW),
            },
        };
        (vip, vport, flow.ifindex, flow.smac, flow.dmac)
    };
    if let Err(r) = translate(ctx, err, Side::Src, &vip, vport) {
        return pass::<C>(r);
    }
    stats::reason(reason::ICMP_TO_CLIENT);
    forward::emit(ctx, ifindex, &smac, &dmac)
}

/// Rewrites the outer address on `outer` (destination towards a backend, source
/// towards a client) and the quoted packet's opposite address and port, with the
/// TTL, and patches every checksum they enter: the outer IPv4 header, the quoted
/// IPv4 header, the quoted L4 checksum if it was quoted, and the ICMP checksum,
/// which covers the quoted bytes (and, for ICMPv6, the outer addresses).
/// Returns `reason::PASS_TTL` without touching the packet if the TTL would expire.
#[inline(always)]
fn translate<C: Ctx>(
    ctx: &C,
    err: &IcmpError,
    outer: Side,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), u32> {
    if err.family == FAMILY_V4 {
        translate_v4(ctx, err.quoted.proto, outer, addr[0], port)
    } else {
        translate_v6(ctx, err.quoted.proto, outer, addr, port)
    }
}

/// Offset of the quoted L4 checksum from the quoted L4 header.
#[inline(always)]
fn l4_check_off(proto: u8) -> usize {
    if proto == PROTO_TCP {
        crate::parse::TCP_CHECK_OFF
    } else {
        crate::parse::UDP_CHECK_OFF
    }
}

/// Rewrites the quoted port (source towards a backend, destination towards a
/// client) and returns the old one.
#[inline(always)]
unsafe fn swap_port(ports: *mut Ports, outer: Side, port: u16) -> u16 {
    let field = if outer == Side::Dst {
        &mut (*ports).sport
    } else {
        &mut (*ports).dport
    };
    let old = *field;
    *field = port;
    old
}

/// Updates the quoted L4 checksum for an address and port change if the error
/// quoted it (RFC 792 asks for 8 bytes only, which holds UDP's but not TCP's), and
/// returns (old, new) for the ICMP checksum. A zero UDP checksum stays zero.
#[inline(always)]
unsafe fn patch_quoted_l4(
    check: Option<*mut u16>,
    udp: bool,
    addr_update: impl Fn(Update) -> Update,
    old_port: u16,
    port: u16,
) -> (u16, u16) {
    let Some(c) = check else {
        return (0, 0);
    };
    let old = *c;
    if udp && old == 0 {
        return (0, 0);
    }
    let mut new = addr_update(Update::new(old)).u16(old_port, port).finish();
    if udp && new == 0 {
        new = 0xffff;
    }
    *c = new;
    (old, new)
}

#[inline(always)]
fn translate_v4<C: Ctx>(ctx: &C, proto: u8, outer: Side, addr: u32, port: u16) -> Result<(), u32> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, L3).ok_or(reason::PASS_MALFORMED)?;
    let inner: *mut Ipv4Hdr = ptr_at(ctx, INNER4).ok_or(reason::PASS_MALFORMED)?;
    let ports: *mut Ports = ptr_at(ctx, INNER4_L4).ok_or(reason::PASS_MALFORMED)?;
    let icmp_check: *mut u16 = ptr_at(ctx, ICMP4 + ICMP_CHECK_OFF).ok_or(reason::PASS_MALFORMED)?;
    let l4_check: Option<*mut u16> = ptr_at(ctx, INNER4_L4 + l4_check_off(proto));
    unsafe {
        if (*ip).ttl <= 1 {
            return Err(reason::PASS_TTL);
        }
        let field = if outer == Side::Dst {
            &mut (*ip).dst
        } else {
            &mut (*ip).src
        };
        let old = *field;
        *field = addr;
        // TTL shares a 16-bit word with the protocol; patch that word too.
        let ttl_word = (&mut (*ip).ttl) as *mut u8 as *mut u16;
        let old_word = *ttl_word;
        (*ip).ttl -= 1;
        (*ip).check = Update::new((*ip).check)
            .u32(old, addr)
            .u16(old_word, *ttl_word)
            .finish();

        // The quoted packet: its source was the VIP (towards a backend), its
        // destination the backend (towards a client).
        let qfield = if outer == Side::Dst {
            &mut (*inner).src
        } else {
            &mut (*inner).dst
        };
        let qold = *qfield;
        *qfield = addr;
        let old_qcheck = (*inner).check;
        (*inner).check = Update::new(old_qcheck).u32(qold, addr).finish();
        let old_port = swap_port(ports, outer, port);
        let (old_l4, new_l4) = patch_quoted_l4(
            l4_check,
            proto == PROTO_UDP,
            |u| u.u32(qold, addr),
            old_port,
            port,
        );
        *icmp_check = Update::new(*icmp_check)
            .u32(qold, addr)
            .u16(old_qcheck, (*inner).check)
            .u16(old_port, port)
            .u16(old_l4, new_l4)
            .finish();
    }
    Ok(())
}

#[inline(always)]
fn translate_v6<C: Ctx>(
    ctx: &C,
    proto: u8,
    outer: Side,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), u32> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, L3).ok_or(reason::PASS_MALFORMED)?;
    let inner: *mut Ipv6Hdr = ptr_at(ctx, INNER6).ok_or(reason::PASS_MALFORMED)?;
    let ports: *mut Ports = ptr_at(ctx, INNER6_L4).ok_or(reason::PASS_MALFORMED)?;
    let icmp_check: *mut u16 = ptr_at(ctx, ICMP6 + ICMP_CHECK_OFF).ok_or(reason::PASS_MALFORMED)?;
    let l4_check: Option<*mut u16> = ptr_at(ctx, INNER6_L4 + l4_check_off(proto));
    unsafe {
        if (*ip).hop_limit <= 1 {
            return Err(reason::PASS_TTL);
        }
        let field = if outer == Side::Dst {
            &mut (*ip).dst
        } else {
            &mut (*ip).src
        };
        let old = *field;
        *field = *addr;
        (*ip).hop_limit -= 1;
        let qfield = if outer == Side::Dst {
            &mut (*inner).src
        } else {
            &mut (*inner).dst
        };
        let qold = *qfield;
        *qfield = *addr;
        let old_port = swap_port(ports, outer, port);
        let words = |u: Update, from: &[u32; 4]| {
            u.u32(from[0], addr[0])
                .u32(from[1], addr[1])
                .u32(from[2], addr[2])
                .u32(from[3], addr[3])
        };
        let (old_l4, new_l4) = patch_quoted_l4(
            l4_check,
            proto == PROTO_UDP,
            |u| words(u, &qold),
            old_port,
            port,
        );
        // ICMPv6's checksum covers a pseudo-header with the outer addresses.
        let u = words(Update::new(*icmp_check), &old);
        *icmp_check = words(u, &qold)
            .u16(old_port, port)
            .u16(old_l4, new_l4)
            .finish();
    }
    Ok(())
}

#[inline(always)]
fn pass<C: Ctx>(r: u32) -> u32 {
    stats::reason(r);
    C::PASS
}
