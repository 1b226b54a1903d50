//! Rewriting and sending: NAT towards a backend, NAT back towards the client, and
//! the L2 next hop. Towards a backend the next hop comes from the kernel's FIB and
//! neighbour table (`bpf_fib_lookup`), cached per CPU and backend for a second;
//! towards a client it is the way the flow's first request came in.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::{bpf_fib_lookup, bpf_jiffies64, bpf_ktime_get_coarse_ns},
};
use xdp_lb_common::{csum::Update, reason, NextHop, FAMILY_V4, NEXTHOP_TTL_NS, PROTO_TCP};

use crate::{
    ctx::Ctx,
    maps::NEXTHOPS,
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

/// Rewrites one address/port pair (and the TTL) with incremental checksum updates:
/// the IP header's here, the L4 one by the program type (`Ctx::l4_csum`, partial
/// checksums on skbs). Returns `reason::PASS_TTL` without touching the packet if the
/// TTL would expire.
#[inline(always)]
pub fn nat<C: Ctx>(
    ctx: &C,
    pkt: &Packet,
    side: Side,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), u32> {
    let ports: *mut Ports = ptr_at(ctx, pkt.l4).ok_or(reason::PASS_MALFORMED)?;
    let is_udp = pkt.key.proto != PROTO_TCP;
    let check_off = pkt.l4 + if is_udp { UDP_CHECK_OFF } else { TCP_CHECK_OFF };
    // The checksum field must be there before anything changes.
    ptr_at::<u16>(ctx, check_off).ok_or(reason::PASS_MALFORMED)?;
    let old_port = unsafe {
        if side == Side::Dst {
            (*ports).dport
        } else {
            (*ports).sport
        }
    };
    let v4 = pkt.key.family == FAMILY_V4;
    let old: [u32; 4];
    if v4 {
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
            let o = *field;
            // Words 1-3 are not read for IPv4 (`Ctx::l4_csum`). Copies of word 0,
            // not zeros: LLVM turned the zeros into a call to a `memset` subprogram
            // on every NAT packet.
            old = [o, o, o, o];
            *field = addr[0];
            // TTL shares a 16-bit word with the protocol; patch that word too.
            let ttl_word_ptr = (&mut (*ip).ttl) as *mut u8 as *mut u16;
            let old_word = *ttl_word_ptr;
            (*ip).ttl -= 1;
            let new_word = *ttl_word_ptr;
            (*ip).check = Update::new((*ip).check)
                .u32(o, addr[0])
                .u16(old_word, new_word)
                .finish();
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
            old = *field;
            *field = *addr;
            (*ip).hop_limit -= 1;
        }
    }
    unsafe {
        if side == Side::Dst {
            (*ports).dport = port;
        } else {
            (*ports).sport = port;
        }
    }
    // Last: on an skb the helper invalidates every packet pointer above.
    ctx.l4_csum(check_off, v4, is_udp, &old, addr, old_port, port)
}

/// Where a packet for a backend goes.
#[derive(Clone, Copy)]
pub enum Hop {
    /// The cached next hop (a per-CPU map entry, valid for this program run).
    Via(*const NextHop),
    /// The packet's L3 length exceeds the egress MTU (this many bytes): sent, the
    /// redirect would drop it.
    TooBig(u16),
    /// No usable next hop: the kernel must route the packet (reason).
    Unroutable(u32),
}

/// The next hop towards backend `id` at `dst`: the cached one while it is fresh,
/// else a FIB lookup whose answer is cached, with the egress MTU. Looked up before
/// any rewrite, so a packet too big for the egress can still be quoted as it came.
#[inline(always)]
pub fn next_hop<C: Ctx>(
    ctx: &C,
    pkt: &Packet,
    id: u32,
    generation: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> Hop {
    let Some(cache) = NEXTHOPS.get_ptr_mut(id) else {
        return Hop::Unroutable(reason::PASS_FIB_FAILED);
    };
    let c = unsafe { &mut *cache };
    // The verifier inlines bpf_jiffies64 into one load, where the clock is a helper
    // call (measured with `cargo xtask bench pkt`, the next-hop step). The coarse
    // clock advances with the tick, so the expiry is read once per jiffy per entry.
    let jiffies = unsafe { bpf_jiffies64() };
    if c.checked_jiffies != jiffies || c.generation != generation {
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if c.expires < now || c.generation != generation {
            match fib(ctx, pkt, src, dst, c) {
                Ok(()) => {
                    c.expires = now + NEXTHOP_TTL_NS;
                    c.generation = generation;
                }
                // The FIB checked this packet against the route's MTU (tot_len): too
                // big. Nothing is cached; the next packet that fits fills the entry.
                Err(Fib::TooBig(mtu)) => return Hop::TooBig(mtu),
                Err(Fib::Fail(r)) => return Hop::Unroutable(r),
            }
        }
        c.checked_jiffies = jiffies;
    }
    // One compare on the fast path. 0: MTU unknown (not checked, as before).
    let len = wire_len(ctx, pkt);
    if len > c.mtu && c.mtu != 0 {
        return Hop::TooBig(c.mtu);
    }
    Hop::Via(cache)
}

/// The longest IP packet this one puts on the wire, to check against an MTU: its own
/// length, or for a GSO skb (cut into segments later, by the stack or the device,
/// each with the IP and L4 headers and `gso_size` bytes of payload) one segment's, as
/// the kernel checks a GSO packet it forwards (skb_gso_validate_network_len). So a
/// GSO packet whose segments fit goes on whole, and one whose segments do not is
/// answered like a single packet too big.
#[inline(always)]
fn wire_len<C: Ctx>(ctx: &C, pkt: &Packet) -> u16 {
    let gso = ctx.gso_size();
    if gso == 0 {
        return pkt.ip_len;
    }
    let l4_hdr = if pkt.key.proto == PROTO_TCP {
        pkt.tcp_doff as u32 * 4
    } else {
        8
    };
    let seg = (pkt.l4 - pkt.l3) as u32 + l4_hdr + gso;
    // A GSO skb may hold a single short segment.
    if seg < pkt.ip_len as u32 {
        seg as u16
    } else {
        pkt.ip_len
    }
}

/// Sends the (rewritten) frame through `hop`. A packet without a usable next hop is
/// handed to the kernel, which routes it and resolves the neighbour (or fragments
/// it); nothing is dropped silently.
#[inline(always)]
pub fn send<C: Ctx>(ctx: &C, pkt: &Packet, hop: Hop, id: u32, dst: &[u32; 4]) -> u32 {
    let r = match hop {
        Hop::Via(nh) => {
            let nh = unsafe { &*nh };
            match emit_or(ctx, nh.ifindex, &nh.smac, &nh.dmac) {
                Ok(a) => return a,
                Err(r) => r,
            }
        }
        // Callers answer too-big packets themselves; one that still gets here (an
        // IPv4 packet without DF, an oversized ICMP error) is the kernel's to
        // fragment or answer.
        Hop::TooBig(_) => {
            stats::reason(reason::PASS_TOO_BIG_NO_DF);
            return C::PASS;
        }
        Hop::Unroutable(r) => r,
    };
    stats::reason(r);
    crate::events::unroutable(ctx, r, id, pkt.key.family, dst);
    C::PASS
}

/// `next_hop` and `send` for a frame that is ready as it is.
#[inline(always)]
pub fn to_backend<C: Ctx>(
    ctx: &C,
    pkt: &Packet,
    id: u32,
    generation: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> u32 {
    let hop = next_hop(ctx, pkt, id, generation, src, dst);
    send(ctx, pkt, hop, id, dst)
}

/// Rewrites the MACs and sends the frame out of `ifindex` (`Ctx::redirect`).
#[inline(always)]
pub fn emit<C: Ctx>(ctx: &C, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> u32 {
    emit_or(ctx, ifindex, smac, dmac).unwrap_or_else(|r| {
        stats::reason(r);
        C::PASS
    })
}

/// `emit`, with the reason the frame cannot be sent (it is then left untouched).
#[inline(always)]
fn emit_or<C: Ctx>(ctx: &C, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<u32, u32> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(reason::PASS_MALFORMED)?;
    let action = ctx.redirect(ifindex)?;
    unsafe {
        (*eth).dst = *dmac;
        (*eth).src = *smac;
    }
    Ok(action)
}

/// Why the FIB gave no next hop.
enum Fib {
    /// The packet exceeds the route's MTU (the FIB's `mtu_result`).
    TooBig(u16),
    Fail(u32),
}

/// The kernel's next hop towards `dst` with the route's MTU, or why
/// there is none.
/// Written into `out` (the cache entry) directly, which keeps it off the stack.
#[inline(always)]
fn fib<C: Ctx>(
    ctx: &C,
    pkt: &Packet,
    src: &[u32; 4],
    dst: &[u32; 4],
    out: &mut NextHop,
) -> Result<(), Fib> {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.l4_protocol = pkt.key.proto;
    p.__bindgen_anon_1.tot_len = wire_len(ctx, pkt);
    p.ifindex = ctx.ingress_ifindex();
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
        out.ifindex = p.ifindex;
        out.smac = p.smac;
        out.dmac = p.dmac;
        // The FIB checked only this packet against the route's MTU; later packets
        // use the cache without a lookup, so learn that MTU now (once per entry):
        // asked about the longest packet there is, the FIB answers FRAG_NEEDED with
        // it, before any neighbour lookup. No answer (an MTU of 64 KiB): 0, unchecked.
        p.ifindex = ctx.ingress_ifindex();
        p.__bindgen_anon_1.tot_len = u16::MAX;
        let rc = unsafe {
            bpf_fib_lookup(
                ctx.as_ptr(),
                &mut p,
                core::mem::size_of::<FibParams>() as i32,
                0,
            )
        };
        out.mtu = if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
            unsafe { p.__bindgen_anon_1.mtu_result }
        } else {
            0
        };
        Ok(())
    } else if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        Err(Fib::TooBig(unsafe { p.__bindgen_anon_1.mtu_result }))
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Err(Fib::Fail(reason::PASS_NO_NEIGH))
    } else {
        Err(Fib::Fail(reason::PASS_FIB_FAILED))
    }
}
