//! The packet context the data path is written against, so one source serves both
//! program types: `xdp_lb` (an XDP buffer) and `tc_lb` (an skb at tc ingress, see
//! `tc`). Parsing, selection, validation and most rewrites read and write packet
//! memory the same way in both; what differs is here: the verdicts, the packet
//! length (an skb may carry more than its linear head), the L4 checksum update
//! (an skb's may be partial, CHECKSUM_PARTIAL), and how a frame leaves.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext, EbpfContext};
use xdp_lb_common::{csum::Update, reason};

use crate::{
    maps::TX_PORTS,
    parse::{ptr_at, Packet},
    stats,
};

pub trait Ctx: EbpfContext {
    /// The verdict that hands the packet to the kernel's stack unchanged.
    const PASS: u32;
    /// The verdict that drops the packet.
    const DROP: u32;
    /// Packets may arrive with a partial L4 checksum (CHECKSUM_PARTIAL: only the
    /// pseudo-header sum is in the field, the device or the stack fills in the
    /// rest). True for skbs from local sockets over veth; an XDP buffer never is.
    const PARTIAL_CSUM: bool;

    /// Start of the directly accessible packet bytes.
    fn data(&self) -> usize;
    /// End of the directly accessible packet bytes.
    fn data_end(&self) -> usize;
    /// The whole packet's length: for an skb, also the bytes beyond its linear head.
    fn len(&self) -> u64;
    /// The interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// The payload bytes per segment of a GSO packet (an skb the stack or the egress
    /// device segments later, whose IP length is no wire length), 0 for any other.
    fn gso_size(&self) -> u32;
    /// Makes the first `len` bytes directly accessible. Invalidates packet pointers.
    fn linearize(&self, len: usize) -> bool;
    /// Updates the L4 checksum at `check_off` for a changed address (IPv4: word 0
    /// only) and port, all as loaded from packet memory. The fields themselves are
    /// already rewritten. A zero UDP checksum over IPv4 ("none") stays zero; a
    /// computed zero is stored as 0xffff. Invalidates packet pointers.
    #[allow(clippy::too_many_arguments)]
    fn l4_csum(
        &self,
        check_off: usize,
        v4: bool,
        udp: bool,
        old: &[u32; 4],
        new: &[u32; 4],
        old_port: u16,
        new_port: u16,
    ) -> Result<(), u32>;
    /// Sends the frame (MACs already rewritten by the caller after this returns Ok)
    /// out of `ifindex`, or the reason it cannot.
    fn redirect(&self, ifindex: u32) -> Result<u32, u32>;
    /// Answers a packet too big for its egress towards the backend (see `toobig`).
    fn too_big(&self, pkt: &Packet, mtu: u16) -> u32;
}

impl Ctx for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    const PARTIAL_CSUM: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u64
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn linearize(&self, _len: usize) -> bool {
        true
    }

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
        let check = ptr_at::<u16>(self, check_off).ok_or(reason::PASS_MALFORMED)?;
        unsafe {
            // A zero UDP checksum over IPv4 means "none": leave it so.
            if v4 && udp && *check == 0 {
                return Ok(());
            }
            let mut u = Update::new(*check).u32(old[0], new[0]);
            if !v4 {
                u = u
                    .u32(old[1], new[1])
                    .u32(old[2], new[2])
                    .u32(old[3], new[3]);
            }
            let mut c = u.u16(old_port, new_port).finish();
            if udp && c == 0 {
                c = 0xffff;
            }
            *check = c;
        }
        Ok(())
    }

    /// XDP_TX when `ifindex` is the ingress interface, XDP_REDIRECT through
    /// TX_PORTS otherwise.
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Result<u32, u32> {
        if ifindex == Ctx::ingress_ifindex(self) {
            stats::reason(reason::TX);
            Ok(xdp_action::XDP_TX)
        } else {
            let a = TX_PORTS
                .redirect(ifindex, 0)
                .map_err(|_| reason::PASS_NO_TX_PORT)?;
            stats::reason(reason::REDIRECT);
            Ok(a)
        }
    }

    #[inline(always)]
    fn too_big(&self, pkt: &Packet, mtu: u16) -> u32 {
        crate::toobig::answer(self, pkt, mtu)
    }
}
