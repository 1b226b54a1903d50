//! Backend choice: the flow tables first (an established connection stays on its
//! backend), then the service's scheduler (`sched`) for new flows or flows whose
//! backend went down or whose slot was reassigned (generation mismatch).
//!
//! Two tables: a new flow's entry goes to an embryonic table (`embryo`: the EMBRYOS
//! LRU, or EMBRYO_SLOTS for flows of services that schedule by hash), and moves to
//! FLOWS with the flow's second packet (the client's ACK of the handshake, a second
//! datagram). A flood of spoofed SYNs, each one packet, churns the embryonic tables
//! only.
use aya_ebpf::bindings::BPF_ANY;
use xdp_lb_common::{
    hash::flow_hash, reason, slot_scheduled, Backend, FlowValue, Service, ServiceKey,
    BACKEND_ACTIVE, BACKEND_DOWN, PROTO_UDP, SVC_FWD_DSR, SVC_SCHED_LC,
};

use crate::{
    ctx::Ctx,
    embryo,
    maps::{BACKENDS, BACKEND_OWNERS, EMBRYOS, FLOWS, SERVICES_BY_ID},
    parse::{ptr_at, EthHdr, Packet},
    sched, stats, validate,
};

pub struct Choice {
    pub id: u32,
    /// A reference into BACKENDS, not a copy: the program's stack (512 bytes over
    /// the call chain) has no room for one more.
    pub backend: &'static Backend,
    /// The flow was (re)dispatched by this packet (it is now embryonic, or, for a
    /// SYN on the 5-tuple of an earlier connection, in that one's FLOWS entry).
    pub new_flow: bool,
    /// The flow's entry is now in FLOWS, moved there from its embryonic table by
    /// its second packet (or written there by such a SYN).
    pub promoted: bool,
}

/// The flow entry still names a usable backend: draining backends keep their flows;
/// down ones and reassigned slots (generation mismatch) do not.
#[inline(always)]
fn usable(f: &FlowValue) -> Option<&'static Backend> {
    let b = BACKENDS.get(f.backend_id)?;
    (b.generation == f.generation && b.state != BACKEND_DOWN).then_some(b)
}

/// An established flow found before its service (`established`): its entry, not yet
/// touched, so that nothing changes unless the packet is valid (`choose`).
pub struct Established {
    flow: *mut FlowValue,
    backend: &'static Backend,
}

impl Established {
    /// The packet is valid: it goes to the flow's backend (and a least-conn flow's
    /// close is counted), as `backend_for` would do with the same entry.
    #[inline(always)]
    pub fn choose(self, pkt: &Packet) -> Choice {
        sched::track(self.flow, pkt.tcp_flags);
        Choice {
            id: unsafe { (*self.flow).backend_id },
            backend: self.backend,
            new_flow: false,
            promoted: false,
        }
    }
}

/// What `established` found besides the FLOWS miss, so that `backend_for` need not
/// look again.
#[derive(Clone, Copy)]
pub struct Missed {
    /// The flow's embryonic entry, if any, looked up right after the FLOWS miss.
    embryo: Option<&'static FlowValue>,
    /// The key's `flow_hash` when its slot was read too (a datagram, or any packet to
    /// a SLOT_ENDPOINTS endpoint); `embryo` is then the slot's when `from_slot`.
    slot_hash: Option<u32>,
    from_slot: bool,
}

pub enum Lookup {
    /// FLOWS pins the packet to a usable backend of the service at `skey`.
    Hit(&'static Service, Established),
    /// FLOWS has no entry (`backend_for` need not look again); the flow's embryonic
    /// entry, if any, looked up right after that miss (see `established`).
    Miss(Missed),
    /// Anything else (a SYN, an unusable backend, a service record that does not
    /// match): the service lookup and `backend_for` decide, as without this path.
    Other,
}

/// The established path with one hash lookup: the flow first, then its service by
/// backend id -> owner (BACKEND_OWNERS) -> SERVICES_BY_ID, two inlined array loads
/// where a SERVICES lookup costs a kernel call (~25 ns in `cargo xtask bench pkt`).
/// The record is used only when its key is the packet's destination, so a removed
/// or re-keyed service, a reassigned owner or a not yet written entry falls back to
/// SERVICES; flags and counters come from the same record SERVICES holds.
#[inline(always)]
pub fn established(pkt: &Packet, skey: &ServiceKey) -> Lookup {
    if pkt.syn {
        return Lookup::Other;
    }
    let Some(p) = FLOWS.get_ptr_mut(&pkt.key) else {
        // Looked up here, next to the FLOWS miss, not after the SERVICES lookup: the
        // CPU runs on past the predicted miss, so both tables' cache misses overlap
        // (a DSR flow's first datagram: 200-580 ns less in `cargo xtask bench pkt`).
        // A packet to an endpoint that is no service (a filter collision, a backend's
        // own address) pays this miss for nothing.
        //
        // A datagram reads its slot here too, before its service is known: read after
        // the SERVICES lookup, the slot's miss cost as much as the LRU insert it saves
        // (README, New flows). So does a TCP packet to an endpoint whose services keep
        // new flows in the slots alone (SLOT_ENDPOINTS: DSR, by hash), which then skips
        // EMBRYOS; elsewhere a TCP packet's slot is read only once its service is known
        // to use slots, so that the flows of other services pay nothing more.
        let slot_only = crate::lb::slot_endpoint(&skey.addr, skey.port);
        if pkt.key.proto == PROTO_UDP || slot_only {
            let h = flow_hash(&pkt.key);
            if let Some(v) = embryo::in_slot(&pkt.key, h) {
                return Lookup::Miss(Missed {
                    embryo: Some(v),
                    slot_hash: Some(h),
                    from_slot: true,
                });
            }
            return Lookup::Miss(Missed {
                embryo: if slot_only {
                    None
                } else {
                    unsafe { EMBRYOS.get(&pkt.key) }
                },
                slot_hash: Some(h),
                from_slot: false,
            });
        }
        return Lookup::Miss(Missed {
            embryo: unsafe { EMBRYOS.get(&pkt.key) },
            slot_hash: None,
            from_slot: false,
        });
    };
    let f = unsafe { &*p };
    let Some(backend) = usable(f) else {
        return Lookup::Other;
    };
    let id = f.backend_id;
    let Some(&owner) = BACKEND_OWNERS.get(id) else {
        return Lookup::Other;
    };
    let Some(e) = SERVICES_BY_ID.get(owner.wrapping_sub(1)) else {
        return Lookup::Other;
    };
    let k = &e.key;
    if k.addr != skey.addr
        || k.port != skey.port
        || k.proto != skey.proto
        || k.family != skey.family
    {
        return Lookup::Other;
    }
    Lookup::Hit(&e.svc, Established { flow: p, backend })
}

/// `missed`: `established` found no FLOWS entry, and this embryonic entry (if any).
#[inline(always)]
pub fn backend_for<C: Ctx>(
    ctx: &C,
    pkt: &Packet,
    svc: &Service,
    missed: Option<Missed>,
) -> Result<Choice, u32> {
    let key = &pkt.key;
    let slotted = slot_scheduled(svc.flags, key.proto);
    // The key's slot, for every slot access below (0 unused when not slotted).
    let h = match (slotted, missed) {
        (false, _) => 0,
        (
            true,
            Some(Missed {
                slot_hash: Some(h), ..
            }),
        ) => h,
        (true, _) => flow_hash(key),
    };
    // The flow's embryonic entry, if any: a retransmitted first packet replaces its
    // own (least-conn gives its count back below).
    let mut embryo = None;
    if !pkt.syn {
        if let Some(p) = if missed.is_some() {
            None
        } else {
            FLOWS.get_ptr_mut(key)
        } {
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
        embryo = match missed {
            Some(m) => m.embryo,
            None => unsafe { EMBRYOS.get(key) },
        };
        let mut from_slot = missed.is_some_and(|m| m.from_slot);
        // A TCP flow's slot is read only now that its service is known: a slot costs
        // a cache miss, which the flows of other services (looked up in EMBRYOS
        // above, beside the FLOWS miss) need not pay. A datagram's, or a packet's to a
        // SLOT_ENDPOINTS endpoint, was read there.
        if slotted && !missed.is_some_and(|m| m.slot_hash.is_some()) {
            if let Some(v) = embryo::in_slot(key, h) {
                embryo = Some(v);
                from_slot = true;
            }
        }
        if let Some(f) = embryo {
            let mut f = *f;
            if let Some(backend) = usable(&f) {
                sched::track(&mut f, pkt.tcp_flags);
                // The second packet: the flow is real enough to hold a FLOWS entry.
                // A failed insert leaves it embryonic, still on its backend.
                if FLOWS.insert(key, &f, BPF_ANY as u64).is_ok() {
                    if from_slot {
                        embryo::clear(key, h);
                    } else {
                        let _ = EMBRYOS.remove(key);
                    }
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
    // An entry an earlier connection on this 5-tuple left in FLOWS (see below).
    let mut stale = None;
    if pkt.syn {
        // A SYN opens a connection, so an entry an earlier connection on this
        // 5-tuple left is kept (below) or replaced, or its next packet would find
        // the old one first. Only after the checksum: a forged SYN must not change
        // an established flow's entry.
        stale = FLOWS.get_ptr_mut(key);
        // Next to the FLOWS lookup, so that their two cache misses overlap, and the
        // insert at the end finds the EMBRYOS bucket in cache instead of paying its
        // miss alone (a first datagram looks it up early for the same reason, see
        // `established`).
        // A slot-scheduled flow's slot: the line the write at the end goes to.
        embryo = if slotted {
            embryo::in_slot(key, h)
        } else {
            unsafe { EMBRYOS.get(key) }
        };
        stats::reason(reason::SYN);
        // The new connection stays on the entry's backend while that one is active,
        // and the entry stays as it is (its MACs and interface too). A reused port
        // then meets the backend its earlier connection had (any is as good for a
        // new connection); a SYN forged with a live connection's addresses and a
        // valid checksum reaches that connection's own backend, whose stack answers
        // it with a challenge ACK (RFC 5961), instead of moving the connection to
        // another backend that would reset it (round-robin and least-conn pick
        // another; a hash does once its table changed). A draining or down backend,
        // or a reassigned slot, has the connection dispatched afresh, below. Returned
        // as a takeover is, so that a per-flow service's reverse entry is written
        // again (`lb::remember_reply`); an embryonic entry of this 5-tuple, should
        // there be one, is left to age out. Counting the kept SYN under
        // `flow_taken_over` as well cost the XDP program's verification 225k more
        // instructions (922k of the 1M limit), so it counts under `syn` alone.
        if let Some(old) = stale {
            if let Some(backend) = usable(unsafe { &*old }) {
                if backend.state == BACKEND_ACTIVE {
                    sched::reopen(svc, old);
                    return Ok(Choice {
                        id: unsafe { (*old).backend_id },
                        backend,
                        new_flow: true,
                        promoted: true,
                    });
                }
            }
            // Its count goes before the pick, as a retransmitted SYN's embryonic
            // entry's does below: least-conn then sees the connection as gone. Should
            // the pick fail (no usable backend), the entry stays marked as counted,
            // and a later SYN or close on it gives the count back once more
            // (reconciliation repairs that). Undoing it on the failure path cost the
            // verifier 56k-120k more instructions per program.
            sched::forget(unsafe { &*old });
        }
    }
    let (id, backend) = sched::pick(key, svc, slotted.then_some(h))?;
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
        if let Some(old) = embryo {
            sched::forget(old);
        }
    }
    if let Some(p) = stale {
        // The new connection takes the old one's FLOWS entry over in place, where it
        // would be embryonic elsewhere: the entry costs no table room that was not
        // taken already, and a reused port (a proxy or NAT in front, a client with
        // many short connections) then pays neither the delete (a bucket lock and an
        // LRU free-list lock) nor its second packet's promotion (a FLOWS insert,
        // the slot or EMBRYOS cleared). `bench e2e`'s single client reuses its ports
        // every two seconds, so nearly every SYN there took this branch. A reader on
        // another CPU may see the copy half done: an id/generation pair that does not
        // match fails `usable` and is dispatched again, by the same table. And, as
        // with every pointer into an LRU map, should the entry be evicted and reused
        // for another flow between the lookup and this write (a few hundred ns, just
        // after the lookup marked it referenced), that flow would get this value.
        unsafe { *p = value };
        if value.flags != 0 {
            sched::counted(id);
        }
        stats::reason(reason::FLOW_TAKEN_OVER);
        // An embryonic entry of this 5-tuple too (a SYN sent before the old entry was
        // restored, say): it goes, or it would outlive the count taken back above.
        if embryo.is_some() {
            if slotted {
                embryo::clear(key, h);
            } else {
                let _ = EMBRYOS.remove(key);
            }
        }
        // A FLOWS entry already: its reverse entry (per-flow services) goes to
        // NAT_REVERSE, where SYN floods cannot evict it (`lb::remember_reply`).
        return Ok(Choice {
            id,
            backend,
            new_flow: true,
            promoted: true,
        });
    }
    let stored = if slotted {
        embryo::put_in_slot(key, h, &value, svc.flags & SVC_FWD_DSR == 0)
    } else {
        EMBRYOS.insert(key, &value, BPF_ANY as u64)
    };
    if let Err(e) = stored {
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
