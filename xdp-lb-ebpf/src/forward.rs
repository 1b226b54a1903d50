//! Rewriting and sending: NAT towards a backend, NAT back towards the client, and
//! the L2 next hop. Towards a backend the next hop comes from the kernel's FIB and
//! neighbour table (`bpf_fib_lookup`), cached per CPU and backend for a second;
//! towards a client it is the way the flow's first request came in.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
    EbpfContext,
};
use xdp_lb_common::{csum::Update, reason, NextHop, FAMILY_V4, NEXTHOP_TTL_NS, PROTO_TCP};

use crate::{
    maps::{NEXTHOPS, TX_PORTS},
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
    let off = if pkt.key.proto == PROTO_TCP {
        TCP_CHECK_OFF
    } else {
        UDP_CHECK_OFF
    };
    ptr_at::<u16>(ctx, pkt.l4 + off)
}

/// Rewrites one address/port pair (and the TTL) with incremental checksum updates.
/// Returns `reason::PASS_TTL` without touching the packet if the TTL would expire.
#[inline(always)]
pub fn nat(
    ctx: &XdpContext,
    pkt: &Packet,
    side: Side,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), u32> {
    let ports: *mut Ports = ptr_at(ctx, pkt.l4).ok_or(reason::PASS_MALFORMED)?;
    let check = l4_check_ptr(ctx, pkt).ok_or(reason::PASS_MALFORMED)?;
    let is_udp = pkt.key.proto != PROTO_TCP;
    let old_port = unsafe {
        if side == Side::Dst {
            (*ports).dport
        } else {
            (*ports).sport
        }
    };
    if pkt.key.family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.l3).ok_or(reason::PASS_MALFORMED)?;
        unsafe {
            if (*ip).ttl <= 1 {
                return Err(reason::PASS_TTL);
            }
            let field = if side == Side::Dst {
                &mut (*ip).dst
            } else {
                &mut (*ip).src
            };
            let old = *field;
            *field = addr[0];
            // TTL shares a 16-bit word with the protocol; patch that word too.
            let ttl_word_ptr = (&mut (*ip).ttl) as *mut u8 as *mut u16;
            let old_word = *ttl_word_ptr;
            (*ip).ttl -= 1;
            let new_word = *ttl_word_ptr;
            (*ip).check = Update::new((*ip).check)
                .u32(old, addr[0])
                .u16(old_word, new_word)
                .finish();
            // A zero UDP checksum over IPv4 means "none": leave it so.
            if !(is_udp && *check == 0) {
                let mut c = Update::new(*check)
                    .u32(old, addr[0])
                    .u16(old_port, port)
                    .finish();
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
            let field = if side == Side::Dst {
                &mut (*ip).dst
            } else {
                &mut (*ip).src
            };
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

/// Sends the frame to backend `id` at `dst`: the cached next hop while it is fresh,
/// else a FIB lookup whose answer is cached. A failed lookup hands the (possibly
/// rewritten) packet to the kernel, which routes it and resolves the neighbour;
/// nothing is dropped silently.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    id: u32,
    generation: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> u32 {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let Some(cache) = NEXTHOPS.get_ptr_mut(id) else {
        stats::reason(reason::PASS_FIB_FAILED);
        return xdp_action::XDP_PASS;
    };
    let cache = unsafe { &mut *cache };
    if cache.expires < now || cache.generation != generation {
        match fib(ctx, pkt, src, dst) {
            Ok(mut nh) => {
                nh.expires = now + NEXTHOP_TTL_NS;
                nh.generation = generation;
                *cache = nh;
            }
            Err(r) => {
                stats::reason(r);
                return xdp_action::XDP_PASS;
            }
        }
    }
    emit(ctx, cache.ifindex, &cache.smac, &cache.dmac)
}

/// Sends a reply to a client whose flow is unknown (evicted, or from before a
/// restart) through a FIB lookup; not cached, as this is the rare path.
#[inline(always)]
pub fn to_client(ctx: &XdpContext, pkt: &Packet, src: &[u32; 4], dst: &[u32; 4]) -> u32 {
    match fib(ctx, pkt, src, dst) {
        Ok(nh) => emit(ctx, nh.ifindex, &nh.smac, &nh.dmac),
        Err(r) => {
            stats::reason(r);
            xdp_action::XDP_PASS
        }
    }
}

/// Rewrites the MACs and sends the frame out of `ifindex`: XDP_TX when that is the
/// ingress interface, XDP_REDIRECT through TX_PORTS otherwise.
#[inline(always)]
pub fn emit(ctx: &XdpContext, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        stats::reason(reason::PASS_MALFORMED);
        return xdp_action::XDP_PASS;
    };
    unsafe {
        (*eth).dst = *dmac;
        (*eth).src = *smac;
    }
    if ifindex == ctx.ingress_ifindex() as u32 {
        stats::reason(reason::TX);
        return xdp_action::XDP_TX;
    }
    match TX_PORTS.redirect(ifindex, 0) {
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

/// The kernel's next hop towards `dst`, or the reason there is none.
#[inline(always)]
fn fib(ctx: &XdpContext, pkt: &Packet, src: &[u32; 4], dst: &[u32; 4]) -> Result<NextHop, u32> {
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
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        Ok(NextHop {
            expires: 0,
            ifindex: p.ifindex,
            generation: 0,
            smac: p.smac,
            dmac: p.dmac,
            _pad: [0; 4],
        })
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Err(reason::PASS_NO_NEIGH)
    } else {
        Err(reason::PASS_FIB_FAILED)
    }
}
