//! Answering a packet too big for the egress towards its backend: the balancer sends
//! the client an IPv4 fragmentation-needed or ICMPv6 packet-too-big from the VIP,
//! quoting the packet as it arrived (before any NAT rewrite, so the client's stack
//! finds its socket), out of the ingress with XDP_TX. Without this the redirect
//! would drop the packet silently and the client would retransmit it forever.
//!
//! The frame is built in place: the head grows by the new IP and ICMP headers (the
//! original IP packet then sits exactly where the quote belongs), the tail is cut to
//! a fixed quote. A packet only gets here when it is longer than an MTU (at least
//! 576 bytes for IPv4, 1280 for IPv6), so the fixed quote is always there.
use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
    EbpfContext,
};
use xdp_lb_common::{reason, FAMILY_V4};

use crate::{
    parse::{ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ETH_P_IP, ETH_P_IPV6},
    stats,
};

/// Bytes of the original IP packet quoted: IPv4 header and 108 bytes of L4 (any TCP
/// header with options; RFC 792 asks for 8). Multiple of 4 (bpf_csum_diff).
pub const QUOTE_V4: usize = 128;
/// IPv6: header and 216 bytes of L4. RFC 4443 allows up to 1280 in all; this is
/// enough for the client to find its socket and stays within one bpf_csum_diff.
pub const QUOTE_V6: usize = 256;
const ICMP_HDR: usize = 8;
const ETH: usize = core::mem::size_of::<EthHdr>();
const V4_HDR: usize = 20;
const V6_HDR: usize = 40;
const IP_DF: u16 = 0x4000u16.to_be();
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// TTL / hop limit of the answer, Linux's default.
const TTL: u8 = 64;

/// Whether the sender asked to be told: IPv6 always, IPv4 only with DF. An IPv4
/// packet without DF may be fragmented, which the kernel does when forwarding.
#[inline(always)]
pub fn wants_answer(ctx: &impl crate::ctx::Ctx, pkt: &Packet) -> bool {
    if pkt.key.family != FAMILY_V4 {
        return true;
    }
    match ptr_at::<Ipv4Hdr>(ctx, pkt.l3) {
        Some(ip) => unsafe { (*ip).frag_off & IP_DF != 0 },
        None => false,
    }
}

/// Turns the frame into the error for its sender and returns XDP_TX; a frame that
/// cannot be turned (no headroom) is passed to the kernel, counted as not answered.
#[inline(always)]
pub fn answer(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> u32 {
    answer_out_of_line(ctx.ctx, pkt.key.family == FAMILY_V4, mtu)
}

/// A BPF subprogram of its own (rarely run): its locals stay out of the main
/// program's 512-byte stack frame.
#[inline(never)]
fn answer_out_of_line(raw: *mut xdp_md, v4: bool, mtu: u16) -> u32 {
    let ctx = &XdpContext::new(raw);
    let r = if v4 {
        answer_v4(ctx, mtu)
    } else {
        answer_v6(ctx, mtu)
    };
    match r {
        Some(()) => {
            stats::reason(reason::ICMP_TOO_BIG_SENT);
            xdp_action::XDP_TX
        }
        None => {
            stats::reason(reason::PASS_TOO_BIG_NO_DF);
            xdp_action::XDP_PASS
        }
    }
}

/// One's-complement sum of `len` bytes at `p` (a bounds-checked packet pointer),
/// added to `seed`, unfolded.
#[inline(always)]
unsafe fn sum(p: *mut u8, len: u32, seed: u32) -> u64 {
    let s = bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, len, seed);
    s as u32 as u64
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Grows the head by `grow` bytes, cuts the tail to `total` bytes and writes the
/// new Ethernet header, back to the sender (the MACs swapped). `None` leaves the
/// frame as it was.
#[inline(always)]
fn reshape(ctx: &XdpContext, grow: usize, total: usize, proto: u16) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let (src, dst) = unsafe { ((*eth).src, (*eth).dst) };
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(grow as i32)) } != 0 {
        return None;
    }
    let len = (ctx.data_end() - ctx.data()) as i32;
    if unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, total as i32 - len) } != 0 {
        // Undo the head so the kernel gets the packet as it came.
        unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, grow as i32) };
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    unsafe {
        (*eth).dst = src;
        (*eth).src = dst;
        (*eth).proto = proto;
    }
    Some(())
}

#[inline(always)]
fn answer_v4(ctx: &XdpContext, mtu: u16) -> Option<()> {
    const GROW: usize = V4_HDR + ICMP_HDR;
    const ICMP_OFF: usize = ETH + V4_HDR;
    const TOTAL: usize = ICMP_OFF + ICMP_HDR + QUOTE_V4;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH)?;
    let (client, vip) = unsafe { ((*ip).src, (*ip).dst) };
    reshape(ctx, GROW, TOTAL, ETH_P_IP)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH)?;
    let icmp = ptr_at::<[u8; ICMP_HDR + QUOTE_V4]>(ctx, ICMP_OFF)?;
    unsafe {
        let h = &mut *ip;
        h.vihl = 0x45;
        h.tos = 0;
        h.tot_len = ((V4_HDR + ICMP_HDR + QUOTE_V4) as u16).to_be();
        h.id = 0;
        h.frag_off = 0;
        h.ttl = TTL;
        h.proto = IPPROTO_ICMP;
        h.check = 0;
        h.src = vip;
        h.dst = client;
        let c = &mut *icmp;
        c[0] = ICMP_DEST_UNREACH;
        c[1] = ICMP_FRAG_NEEDED;
        c[2..6].copy_from_slice(&[0; 4]);
        c[6..8].copy_from_slice(&mtu.to_be_bytes());
        let s = sum(icmp as *mut u8, (ICMP_HDR + QUOTE_V4) as u32, 0);
        c[2..4].copy_from_slice(&fold(s).to_ne_bytes());
        h.check = fold(sum(ip as *mut u8, V4_HDR as u32, 0));
    }
    Some(())
}

#[inline(always)]
fn answer_v6(ctx: &XdpContext, mtu: u16) -> Option<()> {
    const GROW: usize = V6_HDR + ICMP_HDR;
    const ICMP_OFF: usize = ETH + V6_HDR;
    const TOTAL: usize = ICMP_OFF + ICMP_HDR + QUOTE_V6;
    const PAYLOAD: u16 = (ICMP_HDR + QUOTE_V6) as u16;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH)?;
    let (client, vip) = unsafe { ((*ip).src, (*ip).dst) };
    reshape(ctx, GROW, TOTAL, ETH_P_IPV6)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH)?;
    let icmp = ptr_at::<[u8; ICMP_HDR + QUOTE_V6]>(ctx, ICMP_OFF)?;
    unsafe {
        let h = &mut *ip;
        h.vtcfl = 0x6000_0000u32.to_be();
        h.payload_len = PAYLOAD.to_be();
        h.nexthdr = IPPROTO_ICMPV6;
        h.hop_limit = TTL;
        h.src = vip;
        h.dst = client;
        let c = &mut *icmp;
        c[0] = ICMPV6_PKT_TOOBIG;
        c[1] = 0;
        c[2..4].copy_from_slice(&[0; 2]);
        c[4..8].copy_from_slice(&(mtu as u32).to_be_bytes());
        // Pseudo-header: both addresses (contiguous in the new header), the upper-
        // layer length and next header as 32-bit big-endian words.
        let addrs = (ip as *mut u8).add(8);
        let mut s = sum(addrs, 32, 0);
        s += (PAYLOAD as u32).to_be() as u64 + (IPPROTO_ICMPV6 as u32).to_be() as u64;
        s += sum(icmp as *mut u8, PAYLOAD as u32, 0);
        c[2..4].copy_from_slice(&fold(s).to_ne_bytes());
    }
    Some(())
}
