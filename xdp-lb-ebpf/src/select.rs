//! Backend choice: the flow table first (an established connection stays on its
//! backend), then the service's Maglev table for new flows or flows whose backend
//! went down or whose slot was reassigned (generation mismatch).
use aya_ebpf::{bindings::BPF_ANY, programs::XdpContext};
use xdp_lb_common::{
    hash, reason, Backend, FlowKey, FlowValue, Service, BACKEND_DOWN, NO_BACKEND, SVC_HASH_SRC_ONLY,
};

use crate::{
    maps::{BACKENDS, FLOWS, MAGLEV_RING},
    parse::{ptr_at, EthHdr, Packet},
};

pub struct Choice {
    pub id: u32,
    pub backend: Backend,
    /// The flow was (re)dispatched by this packet.
    pub new_flow: bool,
}

#[inline(always)]
pub fn backend_for(ctx: &XdpContext, pkt: &Packet, svc: &Service) -> Result<Choice, u32> {
    let key = &pkt.key;
    // A SYN opens a connection: skip the lookup (a cache miss in a large table) and
    // go straight to the table; the insert below replaces any stale entry.
    if !pkt.syn {
        if let Some(f) = unsafe { FLOWS.get(key) } {
            let (id, generation) = (f.backend_id, f.generation);
            if let Some(b) = BACKENDS.get(id) {
                // Draining backends keep their flows; down ones and reassigned slots do not.
                if b.generation == generation && b.state != BACKEND_DOWN {
                    return Ok(Choice {
                        id,
                        backend: *b,
                        new_flow: false,
                    });
                }
            }
        }
    }
    let (id, backend) = from_ring(key, svc)?;
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(reason::PASS_MALFORMED)?;
    let value = FlowValue {
        backend_id: id,
        generation: backend.generation,
        ifindex: ctx.ingress_ifindex() as u32,
        smac: unsafe { (*eth).dst },
        dmac: unsafe { (*eth).src },
    };
    if FLOWS.insert(key, &value, BPF_ANY as u64).is_err() {
        // The packet still goes to the right backend; its next packet will hash to
        // the same slot unless the table changes meanwhile.
        crate::stats::reason(reason::FLOW_INSERT_FAILED);
    }
    Ok(Choice {
        id,
        backend,
        new_flow: true,
    })
}

#[inline(always)]
fn from_ring(key: &FlowKey, svc: &Service) -> Result<(u32, Backend), u32> {
    if svc.ring_size == 0 {
        return Err(reason::DROP_NO_BACKEND);
    }
    let h = if svc.flags & SVC_HASH_SRC_ONLY != 0 {
        hash::src_hash(&key.src)
    } else {
        hash::flow_hash(key)
    };
    let slot = svc.ring_offset.wrapping_add(h % svc.ring_size);
    let id = *MAGLEV_RING.get(slot).ok_or(reason::DROP_NO_BACKEND)?;
    if id == NO_BACKEND {
        return Err(reason::DROP_NO_BACKEND);
    }
    let b = BACKENDS.get(id).ok_or(reason::DROP_NO_BACKEND)?;
    // A table can still name a backend for the moment between the control plane
    // marking it down and publishing the table without it; draining is fine there.
    if b.state == BACKEND_DOWN {
        return Err(reason::DROP_NO_BACKEND);
    }
    Ok((id, *b))
}
