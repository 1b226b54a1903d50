//! Validation of packets addressed to a service, before they are balanced: TCP data
//! offset and flags, UDP length (every packet, a few compares), and the L4 checksum
//! of packets that create a flow (`l4_csum_ok`, called before a flow-table insert;
//! on an skb, a partial checksum counts as right).
//!
//! A service owns these packets, so an invalid one is dropped and counted by reason:
//! passed to the kernel, it would be routed on towards the VIP's route without any L4
//! check. Packets of established flows keep the incremental checksum update: a wrong
//! checksum stays wrong and the backend drops it.
use xdp_lb_common::{csum::fold, reason, CSUM_MAX_BYTES, FAMILY_V4, PROTO_TCP, PROTO_UDP};

use crate::ctx::Ctx;
use crate::parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Header checks every packet to a service passes, or the drop reason.
#[inline(always)]
pub fn l4_header(pkt: &Packet) -> Result<(), u32> {
    if pkt.key.proto == PROTO_TCP {
        if pkt.tcp_doff < 5 {
            return Err(reason::DROP_TCP_DOFF);
        }
        // The parser made sure the IP payload lies inside the frame; the header
        // with its options must lie inside the IP payload.
        if (pkt.tcp_doff as u16) * 4 > pkt.l4_len {
            return Err(reason::DROP_TCP_TRUNCATED);
        }
        let f = pkt.tcp_flags;
        // After the SYN every segment carries ACK (RFC 9293 3.10.7.4); a RST may
        // come without. So a segment with none of SYN/ACK/RST (null, FIN-only,
        // xmas FIN+PSH+URG) is a scan, and so are SYN+FIN and SYN+RST.
        if f & (TCP_SYN | TCP_ACK | TCP_RST) == 0
            || f & (TCP_SYN | TCP_FIN) == (TCP_SYN | TCP_FIN)
            || f & (TCP_SYN | TCP_RST) == (TCP_SYN | TCP_RST)
        {
            return Err(reason::DROP_TCP_FLAGS);
        }
    } else if pkt.key.proto == PROTO_UDP && pkt.udp_len != pkt.l4_len {
        return Err(reason::DROP_UDP_LEN);
    }
    Ok(())
}

/// The checksum of the packet's L4 segment is right (or an IPv4 UDP datagram says it
/// has none). Called only for packets that are about to create a flow.
#[inline(always)]
pub fn l4_csum_ok<C: Ctx>(ctx: &C, pkt: &Packet) -> bool {
    let k = &pkt.key;
    if k.proto == PROTO_UDP && k.family == FAMILY_V4 && udp_check_is_zero(ctx, pkt) {
        return true;
    }
    // Pseudo-header as native loads of its 16-bit groups (see `segment_sum_ok`):
    // addresses as stored, [0, proto] and the big-endian length.
    let mut seed: u64 = 0;
    for i in 0..4 {
        seed += k.src[i] as u64 + k.dst[i] as u64;
    }
    seed += u16::from_ne_bytes([0, k.proto]) as u64;
    seed += u16::from_ne_bytes(pkt.l4_len.to_be_bytes()) as u64;
    if C::PARTIAL_CSUM && partial_ok(ctx, pkt, seed) {
        return true;
    }
    // An skb's segment may lie partly beyond its linear head.
    if !ctx.linearize(pkt.l4 + pkt.l4_len as usize) {
        return false;
    }
    segment_sum_ok(ctx, pkt.l4 as u32, pkt.l4_len as u32, seed)
}

/// The checksum field holds the pseudo-header sum alone: a CHECKSUM_PARTIAL skb
/// from a local socket, whose segment the device (or the stack, for a veth peer)
/// sums later. The program cannot read the skb's checksum state, so a packet from
/// the wire carrying this value passes too; its wrong checksum then fails at the
/// backend, which drops it, and the flow entry it cost ages out of EMBRYOS.
#[inline(always)]
fn partial_ok<C: Ctx>(ctx: &C, pkt: &Packet, seed: u64) -> bool {
    let off = pkt.l4
        + if pkt.key.proto == PROTO_TCP {
            crate::parse::TCP_CHECK_OFF
        } else {
            crate::parse::UDP_CHECK_OFF
        };
    match crate::parse::ptr_at::<u16>(ctx, off) {
        // seed - field == 0 in ones' complement (either zero).
        Some(c) => fold(seed + (!unsafe { *c }) as u64) == 0xffff,
        None => false,
    }
}

#[inline(always)]
fn udp_check_is_zero<C: Ctx>(ctx: &C, pkt: &Packet) -> bool {
    match crate::parse::ptr_at::<u16>(ctx, pkt.l4 + crate::parse::UDP_CHECK_OFF) {
        Some(c) => unsafe { *c == 0 },
        None => false,
    }
}

/// Largest L4 offset: Ethernet + IPv6 header.
const MAX_L4_OFF: u32 = 14 + 40;

/// Sums `len` bytes of the packet from `l4` on top of `seed` and tells whether the
/// result is 0xffff. Loads are native-endian 8-byte words (then 2-byte words and a
/// last odd byte, which is the high byte of a zero-padded big-endian word, i.e. the
/// low byte of a native one): the all-ones test does not care about byte order.
///
/// Not inlined, and returning only a bool: the verifier walks the bounded loop once
/// per iteration count, and a BPF-to-BPF call leaves the caller with r0 in {0, 1}
/// whatever the exit, so the rest of the program is explored twice rather than once
/// per packet length. `l4` and `len` are clamped so every packet pointer has a bounded
/// offset ("invalid access to packet" / "unbounded min value" otherwise).
#[inline(never)]
fn segment_sum_ok<C: Ctx>(ctx: &C, l4: u32, len: u32, seed: u64) -> bool {
    if l4 > MAX_L4_OFF || len > CSUM_MAX_BYTES {
        return false;
    }
    let start = ctx.data() + l4 as usize;
    let end = ctx.data_end();
    let len = len as usize;
    let mut sum = seed;
    let mut off = 0usize;
    for _ in 0..CSUM_MAX_BYTES / 8 {
        if off + 8 > len {
            break;
        }
        if start + off + 8 > end {
            return false;
        }
        // Packet loads need no alignment here (x86 and arm64 JITs; the verifier
        // checks alignment only with strict alignment on), as for every header field.
        let w = unsafe { *((start + off) as *const u64) };
        sum += (w & 0xffff_ffff) + (w >> 32);
        off += 8;
    }
    for _ in 0..3 {
        if off + 2 > len {
            break;
        }
        if start + off + 2 > end {
            return false;
        }
        sum += unsafe { *((start + off) as *const u16) } as u64;
        off += 2;
    }
    if off < len {
        if start + off + 1 > end {
            return false;
        }
        sum += unsafe { *((start + off) as *const u8) } as u64;
    }
    fold(sum) == 0xffff
}
