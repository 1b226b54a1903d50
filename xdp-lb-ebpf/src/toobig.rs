//! Answering a packet too big for the egress towards its backend: the balancer sends
//! the client an IPv4 fragmentation-needed or ICMPv6 packet-too-big from the VIP,
//! quoting the packet as it arrived (before any NAT rewrite, so the client's stack
//! finds its socket), back out of the interface it came in on. Without this the
//! redirect would drop the packet silently and the client would retransmit it forever.
//! One source for both program types (`Answer`): XDP sends with XDP_TX, tc redirects
//! the skb back the way it came (`tc::send_to`).
//!
//! The frame is built in place: room for the new IP and ICMP headers goes in front of
//! the original IP packet (which then sits exactly where the quote belongs), and the
//! tail is cut to a fixed quote, as long as RFC 1812 (IPv4, 576-byte error, as Linux
//! sends) and RFC 4443 (IPv6, "as much as possible" within the 1280-byte minimum MTU)
//! ask for. A packet only gets here when it is longer than an MTU; the one shorter
//! than the quote (an IPv4 route MTU below 548 bytes) is left to the kernel.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, xdp_md, TC_ACT_SHOT},
    helpers::generated::{
        bpf_csum_diff, bpf_skb_adjust_room, bpf_skb_change_tail, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use xdp_lb_common::{reason, FAMILY_V4};

use crate::{
    ctx::Ctx,
    parse::{ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ETH_P_IP, ETH_P_IPV6},
    stats,
};

/// Bytes of the original IP packet an IPv4 answer quotes: a 576-byte error (RFC 1812
/// 4.3.2.3, what Linux sends), far more than RFC 792's header and 8 bytes, so the
/// quoted L4 header is whole.
pub const QUOTE_V4: usize = 576 - V4_HDR - ICMP_HDR;
/// IPv6: a 1280-byte error, the most RFC 4443 (2.4 c) allows and asks for.
pub const QUOTE_V6: usize = 1280 - V6_HDR - ICMP_HDR;
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
/// Most bytes one bpf_csum_diff call sums.
const CSUM_DIFF_MAX: usize = 512;

/// Whether the sender asked to be told: IPv6 always, IPv4 only with DF. An IPv4
/// packet without DF may be fragmented, which the kernel does when forwarding.
#[inline(always)]
pub fn wants_answer(ctx: &impl Ctx, pkt: &Packet) -> bool {
    if pkt.key.family != FAMILY_V4 {
        return true;
    }
    match ptr_at::<Ipv4Hdr>(ctx, pkt.l3) {
        Some(ip) => unsafe { (*ip).frag_off & IP_DF != 0 },
        None => false,
    }
}

/// What answering needs of a program type beyond `Ctx`.
pub trait Answer: Ctx + Sized {
    /// The context again from its raw pointer, inside the out-of-line subprogram.
    fn from_raw(raw: *mut c_void) -> Self;
    /// Makes the frame `total` bytes long with `grow` new bytes in front of the
    /// original IP packet (which then starts at ETH + grow); the Ethernet header is
    /// rewritten by the caller.
    fn reshape(&self, grow: usize, total: usize) -> Reshaped;
    /// The verdict that sends the finished answer back out of the ingress.
    fn back(&self) -> u32;
}

/// How a `reshape` ended.
pub enum Reshaped {
    Done,
    /// The frame is as it came: the kernel may have it.
    AsItCame,
    /// The frame is neither the packet nor an answer: it can only be dropped.
    Lost,
}

/// Turns the frame into the error for its sender and sends it back; a frame that
/// cannot be turned is passed to the kernel as it came (or dropped if it was already
/// cut), counted as not answered.
#[inline(always)]
pub fn answer<C: Answer>(ctx: &C, pkt: &Packet, mtu: u16) -> u32 {
    let v4 = pkt.key.family == FAMILY_V4;
    let quote = if v4 { QUOTE_V4 } else { QUOTE_V6 };
    if (pkt.ip_len as usize) < quote {
        stats::reason(reason::PASS_TOO_BIG_NO_DF);
        return C::PASS;
    }
    answer_out_of_line::<C>(ctx.as_ptr(), v4, mtu)
}

/// A BPF subprogram of its own (rarely run), so its code is not inlined into the hot
/// path of the main program.
#[inline(never)]
fn answer_out_of_line<C: Answer>(raw: *mut c_void, v4: bool, mtu: u16) -> u32 {
    let ctx = &C::from_raw(raw);
    let r = if v4 {
        answer_v4(ctx, mtu)
    } else {
        answer_v6(ctx, mtu)
    };
    match r {
        Reshaped::Done => {
            stats::reason(reason::ICMP_TOO_BIG_SENT);
            ctx.back()
        }
        Reshaped::AsItCame => {
            stats::reason(reason::PASS_TOO_BIG_NO_DF);
            C::PASS
        }
        Reshaped::Lost => {
            stats::reason(reason::PASS_TOO_BIG_NO_DF);
            C::DROP
        }
    }
}

/// One's-complement sum of the `N` bytes at `p` (a bounds-checked packet pointer),
/// added to `seed`, unfolded; in pieces bpf_csum_diff takes (at most 512 bytes, a
/// multiple of 4 each: `N` must be one).
#[inline(always)]
unsafe fn sum<const N: usize>(p: *mut u8, seed: u32) -> u32 {
    let mut s = seed;
    let mut off = 0;
    while off < N {
        let n = if N - off > CSUM_DIFF_MAX {
            CSUM_DIFF_MAX
        } else {
            N - off
        };
        s = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            p.add(off) as *mut u32,
            n as u32,
            s,
        ) as u32;
        off += n;
    }
    s
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Reshapes the frame and writes the new Ethernet header, back to the sender (the
/// MACs swapped).
#[inline(always)]
fn reshape<C: Answer>(ctx: &C, grow: usize, total: usize, proto: u16) -> Reshaped {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Reshaped::AsItCame;
    };
    let (src, dst) = unsafe { ((*eth).src, (*eth).dst) };
    match ctx.reshape(grow, total) {
        Reshaped::Done => {}
        r => return r,
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Reshaped::Lost;
    };
    unsafe {
        (*eth).dst = src;
        (*eth).src = dst;
        (*eth).proto = proto;
    }
    Reshaped::Done
}

#[inline(always)]
fn answer_v4<C: Answer>(ctx: &C, mtu: u16) -> Reshaped {
    const GROW: usize = V4_HDR + ICMP_HDR;
    const ICMP_OFF: usize = ETH + V4_HDR;
    const TOTAL: usize = ICMP_OFF + ICMP_HDR + QUOTE_V4;
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH) else {
        return Reshaped::AsItCame;
    };
    let (client, vip) = unsafe { ((*ip).src, (*ip).dst) };
    match reshape(ctx, GROW, TOTAL, ETH_P_IP) {
        Reshaped::Done => {}
        r => return r,
    }
    let (Some(ip), Some(icmp)) = (
        ptr_at::<Ipv4Hdr>(ctx, ETH),
        ptr_at::<[u8; ICMP_HDR + QUOTE_V4]>(ctx, ICMP_OFF),
    ) else {
        return Reshaped::Lost;
    };
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
        let s = sum::<{ ICMP_HDR + QUOTE_V4 }>(icmp as *mut u8, 0);
        c[2..4].copy_from_slice(&fold(s as u64).to_ne_bytes());
        h.check = fold(sum::<V4_HDR>(ip as *mut u8, 0) as u64);
    }
    Reshaped::Done
}

#[inline(always)]
fn answer_v6<C: Answer>(ctx: &C, mtu: u16) -> Reshaped {
    const GROW: usize = V6_HDR + ICMP_HDR;
    const ICMP_OFF: usize = ETH + V6_HDR;
    const TOTAL: usize = ICMP_OFF + ICMP_HDR + QUOTE_V6;
    const PAYLOAD: u16 = (ICMP_HDR + QUOTE_V6) as u16;
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH) else {
        return Reshaped::AsItCame;
    };
    let (client, vip) = unsafe { ((*ip).src, (*ip).dst) };
    match reshape(ctx, GROW, TOTAL, ETH_P_IPV6) {
        Reshaped::Done => {}
        r => return r,
    }
    let (Some(ip), Some(icmp)) = (
        ptr_at::<Ipv6Hdr>(ctx, ETH),
        ptr_at::<[u8; ICMP_HDR + QUOTE_V6]>(ctx, ICMP_OFF),
    ) else {
        return Reshaped::Lost;
    };
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
        let mut s = sum::<32>(addrs, 0) as u64;
        s += (PAYLOAD as u32).to_be() as u64 + (IPPROTO_ICMPV6 as u32).to_be() as u64;
        s += sum::<{ ICMP_HDR + QUOTE_V6 }>(icmp as *mut u8, 0) as u64;
        c[2..4].copy_from_slice(&fold(s).to_ne_bytes());
    }
    Reshaped::Done
}

impl Answer for XdpContext {
    #[inline(always)]
    fn from_raw(raw: *mut c_void) -> Self {
        XdpContext::new(raw as *mut xdp_md)
    }

    /// The head grows in front of the Ethernet header, which the caller rewrites at
    /// the new start; the tail is cut.
    #[inline(always)]
    fn reshape(&self, grow: usize, total: usize) -> Reshaped {
        let raw = self.ctx;
        if unsafe { bpf_xdp_adjust_head(raw, -(grow as i32)) } != 0 {
            return Reshaped::AsItCame;
        }
        let len = (self.data_end() - self.data()) as i32;
        if unsafe { bpf_xdp_adjust_tail(raw, total as i32 - len) } != 0 {
            // Undo the head so the kernel gets the packet as it came.
            if unsafe { bpf_xdp_adjust_head(raw, grow as i32) } != 0 {
                return Reshaped::Lost;
            }
            return Reshaped::AsItCame;
        }
        Reshaped::Done
    }

    #[inline(always)]
    fn back(&self) -> u32 {
        xdp_action::XDP_TX
    }
}

impl Answer for TcContext {
    #[inline(always)]
    fn from_raw(raw: *mut c_void) -> Self {
        TcContext::new(raw as *mut __sk_buff)
    }

    /// The tail is cut first: bpf_skb_change_tail makes the skb linear and ends GSO
    /// (the answer is one small packet), whatever the GSO type, which room-making
    /// at the head would refuse for some. Room then goes in after the MAC header
    /// (BPF_ADJ_ROOM_MAC), which moves the skb's network header to the new IP
    /// header, as the peer's stack reads it after `bpf_redirect_peer`. That also
    /// resets a CHECKSUM_UNNECESSARY state, and the cut a CHECKSUM_COMPLETE one, so
    /// the receiver checks the checksums written here. A partial checksum
    /// (CHECKSUM_PARTIAL, from a local socket over veth) stays partial, pointing
    /// into the quote: the receiving stack trusts it as it does for every packet
    /// from that socket; it would be filled in only by a device without checksum
    /// offload on the way back, which a veth never is.
    #[inline(always)]
    fn reshape(&self, grow: usize, total: usize) -> Reshaped {
        let skb = self.skb.skb;
        if unsafe { bpf_skb_change_tail(skb, (total - grow) as u32, 0) } != 0 {
            return Reshaped::AsItCame;
        }
        if unsafe { bpf_skb_adjust_room(skb, grow as i32, BPF_ADJ_ROOM_MAC, 0) } != 0 {
            return Reshaped::Lost;
        }
        // After both the frame is linear; this only makes sure of it.
        if !self.linearize(total) {
            return Reshaped::Lost;
        }
        Reshaped::Done
    }

    /// The ingress is in TC_PORTS (`Ctx::too_big` checked it before anything changed).
    #[inline(always)]
    fn back(&self) -> u32 {
        crate::tc::send_to(Ctx::ingress_ifindex(self)).unwrap_or(TC_ACT_SHOT as u32)
    }
}
