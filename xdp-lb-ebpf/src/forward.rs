//! Rewriting and sending: NAT towards a backend, NAT back towards the client, and
//! the L2 next hop from the kernel's FIB and neighbour table.
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use xdp_lb_common::{csum::Update, reason, FAMILY_V4, PROTO_TCP};

use crate::{
    maps::TX_PORTS,
    parse::{ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, Ports, TCP_CHECK_OFF, UDP_CHECK_OFF},
    stats,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Which address/port pair of the packet a NAT rewrite replaces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client -> VIP becomes client -> backend.
    Dst,
    /// Backend -> client becomes VIP -> client.
    Src,
}

#[inline(always)]
fn l4_check_ptr(ctx: &XdpContext, pkt: &Packet) -> Option<*mut u16> {
    let off = if pkt.key.proto == PROTO_TCP { TCP_CHECK_OFF } else { UDP_CHECK_OFF };
    ptr_at::<u16>(ctx, pkt.l4 + off)
}

/// Rewrites one address/port pair (and the TTL) with incremental checksum updates.
/// Returns `reason::PASS_TTL` without touching the packet if the TTL would expire.
#[inline(always)]
pub fn nat(ctx: &XdpContext, pkt: &Packet, side: Side, addr: &[u32; 4], port: u16) -> Result<(), u32> {
    let ports: *mut Ports = ptr_at(ctx, pkt.l4).ok_or(reason::PASS_MALFORMED)?;
    let check = l4_check_ptr(ctx, pkt).ok_or(reason::PASS_MALFORMED)?;
    let is_udp = pkt.key.proto != PROTO_TCP;
    let old_port = unsafe { if side == Side::Dst { (*ports).dport } else { (*ports).sport } };
    if pkt.key.family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.l3).ok_or(reason::PASS_MALFORMED)?;
        unsafe {
            if (*ip).ttl <= 1 {
                return Err(reason::PASS_TTL);
            }
            let field = if side == Side::Dst { &mut (*ip).dst } else { &mut (*ip).src };
            let old = *field;
            *field = addr[0];
            // TTL shares a 16-bit word with the protocol; patch that word too.
            let ttl_word_ptr = (&mut (*ip).ttl) as *mut u8 as *mut u16;
            let old_word = *ttl_word_ptr;
            (*ip).ttl -= 1;
            let new_word = *ttl_word_ptr;
            (*ip).check = Update::new((*ip).check).u32(old, addr[0]).u16(old_word, new_word).finish();
            // A zero UDP checksum over IPv4 means "none": leave it so.
            if !(is_udp && *check == 0) {
                let mut c = Update::new(*check).u32(old, addr[0]).u16(old_port, port).finish();
                if is_udp && c == 0 {
                    c = 0xffff;
                }
                *check = c;
            }
        }
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, pkt.l3).ok_or(reason::PASS_MALFORMED)?;
        unsafe {
            if (*ip).hop_limit <= 1 {
                return Err(reason::PASS_TTL);
            }
            let field = if side == Side::Dst { &mut (*ip).dst } else { &mut (*ip).src };
            let old = *field;
            *field = *addr;
            (*ip).hop_limit -= 1;
            let mut c = Update::new(*check)
                .u32(old[0], addr[0])
                .u32(old[1], addr[1])
                .u32(old[2], addr[2])
                .u32(old[3], addr[3])
                .u16(old_port, port)
                .finish();
            if is_udp && c == 0 {
                c = 0xffff;
            }
            *check = c;
        }
    }
    unsafe {
        if side == Side::Dst {
            (*ports).dport = port;
        } else {
            (*ports).sport = port;
        }
    }
    Ok(())
}

/// Looks up the next hop towards `dst` and sends the frame there: XDP_TX out of the
/// ingress interface, XDP_REDIRECT through TX_PORTS otherwise. Failures hand the
/// (possibly rewritten) packet to the kernel, which routes it and resolves the
/// neighbour; nothing is dropped silently.
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &Packet, src: &[u32; 4], dst: &[u32; 4]) -> u32 {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.l4_protocol = pkt.key.proto;
    p.__bindgen_anon_1.tot_len = pkt.ip_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if pkt.key.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        stats::reason(if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            reason::PASS_NO_NEIGH
        } else {
            reason::PASS_FIB_FAILED
        });
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        stats::reason(reason::PASS_MALFORMED);
        return xdp_action::XDP_PASS;
    };
    unsafe {
        (*eth).dst = p.dmac;
        (*eth).src = p.smac;
    }
    if p.ifindex == ctx.ingress_ifindex() as u32 {
        stats::reason(reason::TX);
        return xdp_action::XDP_TX;
    }
    match TX_PORTS.redirect(p.ifindex, 0) {
        Ok(action) => {
            stats::reason(reason::REDIRECT);
            action
        }
        Err(_) => {
            stats::reason(reason::PASS_NO_TX_PORT);
            xdp_action::XDP_PASS
        }
    }
}
