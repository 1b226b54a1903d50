//! Backend choice: the flow tables first (an established connection stays on its
//! backend), then the service's scheduler (`sched`) for new flows or flows whose
//! backend went down or whose slot was reassigned (generation mismatch).
//!
//! Two tables: a new flow's entry goes to the small EMBRYOS LRU, and moves to FLOWS
//! with the flow's second packet (the client's ACK of the handshake, a second
//! datagram). A flood of spoofed SYNs, each one packet, churns EMBRYOS only.
use aya_ebpf::bindings::BPF_ANY;
use xdp_lb_common::{reason, Backend, FlowValue, Service, BACKEND_DOWN, SVC_SCHED_LC};

use crate::{
    ctx::Ctx,
    maps::{BACKENDS, EMBRYOS, FLOWS},
    parse::{ptr_at, EthHdr, Packet},
    sched, stats, validate,
};

pub struct Choice {
    pub id: u32,
    pub backend: Backend,
    /// The flow was (re)dispatched by this packet (it is now embryonic).
    pub new_flow: bool,
    /// The flow's second packet: it moved from EMBRYOS to FLOWS.
    pub promoted: bool,
}

/// The flow entry still names a usable backend: draining backends keep their flows;
/// down ones and reassigned slots (generation mismatch) do not.
#[inline(always)]
fn usable(f: &FlowValue) -> Option<Backend> {
    let b = BACKENDS.get(f.backend_id)?;
    (b.generation == f.generation && b.state != BACKEND_DOWN).then_some(*b)
}

#[inline(always)]
pub fn backend_for<C: Ctx>(ctx: &C, pkt: &Packet, svc: &Service) -> Result<Choice, u32> {
    let key = &pkt.key;
    if !pkt.syn {
        if let Some(p) = FLOWS.get_ptr_mut(key) {
            let f = unsafe { &*p };
            if let Some(backend) = usable(f) {
                let id = f.backend_id;
                sched::track(p, pkt.tcp_flags);
                return Ok(Choice {
                    id,
                    backend,
                    new_flow: false,
                    promoted: false,
                });
            }
        }
        if let Some(f) = unsafe { EMBRYOS.get(key) } {
            let mut f = *f;
            if let Some(backend) = usable(&f) {
                sched::track(&mut f, pkt.tcp_flags);
                // The second packet: the flow is real enough to hold a FLOWS entry.
                // A failed insert leaves it embryonic, still on its backend.
                if FLOWS.insert(key, &f, BPF_ANY as u64).is_ok() {
                    let _ = EMBRYOS.remove(key);
                    stats::reason(reason::FLOW_PROMOTED);
                } else {
                    stats::reason(reason::FLOW_INSERT_FAILED);
                }
                return Ok(Choice {
                    id: f.backend_id,
                    backend,
                    new_flow: false,
                    promoted: true,
                });
            }
        }
    }
    // This packet creates a flow: its checksum must be right before it costs a
    // table entry (a spoofed packet with a wrong one would never reach a socket).
    if !validate::l4_csum_ok(ctx, pkt) {
        return Err(reason::DROP_L4_CSUM);
    }
    if pkt.syn {
        // A SYN opens a connection: it is dispatched by the current table (a reused
        // port starts afresh), so any entry of an earlier connection on this 5-tuple
        // goes, or its next packet would find that one first. Only after the checksum:
        // a forged SYN must not remove an established flow's entry. Looked up first:
        // the usual miss is a lockless lookup, a delete takes the bucket lock (measured
        // with `cargo xtask bench pkt`: ~650 ns more per SYN in an 8M-entry table).
        if let Some(old) = unsafe { FLOWS.get(key) } {
            sched::forget(old);
            let _ = FLOWS.remove(key);
        }
        stats::reason(reason::SYN);
    }
    let (id, backend) = sched::pick(key, svc)?;
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(reason::PASS_MALFORMED)?;
    let mut value = FlowValue {
        backend_id: id,
        generation: backend.generation,
        ifindex: ctx.ingress_ifindex(),
        smac: unsafe { (*eth).dst },
        dmac: unsafe { (*eth).src },
        last_seen: 0,
        flags: 0,
    };
    sched::count_new(svc, &mut value);
    if svc.flags & SVC_SCHED_LC != 0 {
        // A retransmitted first packet replaces its own embryonic entry, which was
        // counted already.
        if let Some(old) = unsafe { EMBRYOS.get(key) } {
            sched::forget(old);
        }
    }
    if let Err(e) = EMBRYOS.insert(key, &value, BPF_ANY as u64) {
        // The packet still goes to the chosen backend. With Maglev its next packet
        // hashes to the same slot unless the table changes meanwhile; the other
        // schedulers may choose another backend for it (and least-conn did not
        // count it).
        stats::reason(reason::FLOW_INSERT_FAILED);
        crate::events::insert_failed(ctx, "embryonic flow table", e);
    } else {
        // Counted only once stored: an entry that was never stored cannot be closed.
        if value.flags != 0 {
            sched::counted(id);
        }
        stats::reason(reason::EMBRYO_NEW);
    }
    Ok(Choice {
        id,
        backend,
        new_flow: true,
        promoted: false,
    })
}
