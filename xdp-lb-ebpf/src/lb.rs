//! The balancer's decision for one packet: service lookup, validation, backend
//! choice, rewrite, send; or, for a packet that is not to a service, the NAT reply
//! path.
use aya_ebpf::{bindings::BPF_ANY, maps::Array};
use xdp_lb_common::{
    reason, FlowKey, NatReverse, ReplyTarget, ServiceKey, REPLY_PER_FLOW, SVC_FWD_DSR,
    SVC_REVERSE_PER_FLOW,
};

use crate::{
    ctx::Ctx,
    forward::{self, Side},
    icmp,
    maps::{
        BACKEND_REPLIES, EMBRYO_REVERSE, ENDPOINT_FILTER, FLOWS, NAT_REVERSE, SERVICES,
        SLOT_ENDPOINTS,
    },
    parse::{self, Packet},
    select, stats, toobig, validate,
};

#[inline(always)]
pub fn process<C: Ctx>(ctx: &C) -> u32 {
    let pkt = match parse::parse(ctx) {
        Ok(p) => p,
        // IP, but neither TCP nor UDP: maybe an ICMP error about a balanced flow.
        Err(reason::PASS_NOT_SERVICE) => return icmp::process(ctx),
        Err(r) => return pass::<C>(r),
    };
    let skey = ServiceKey {
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    // An established flow's packet finds its service through the flow (one hash
    // lookup); the others look the service up.
    let mut missed = None;
    let found = if may_be_endpoint(&skey.addr, skey.port) {
        match select::established(&pkt, &skey) {
            select::Lookup::Hit(svc, est) => Some((svc, Some(est))),
            miss => {
                if let select::Lookup::Miss(m) = miss {
                    missed = Some(m);
                }
                unsafe { SERVICES.get(&skey) }.map(|s| (s, None))
            }
        }
    } else {
        None
    };
    if let Some((svc, est)) = found {
        let choice = match validate::l4_header(&pkt).and_then(|()| match est {
            Some(e) => Ok(e.choose(&pkt)),
            None => select::backend_for(ctx, &pkt, svc, missed),
        }) {
            Ok(c) => c,
            Err(r) => {
                stats::reason(r);
                return if reason::is_drop(r) { C::DROP } else { C::PASS };
            }
        };
        stats::service(svc.id, pkt.len, choice.new_flow);
        stats::backend(choice.id, pkt.len, choice.new_flow);
        let b = choice.backend;
        if svc.flags & SVC_FWD_DSR == 0
            && svc.flags & SVC_REVERSE_PER_FLOW != 0
            && (choice.new_flow || choice.promoted)
        {
            remember_reply(ctx, &pkt, b.addr, b.port, choice.promoted);
        }
        // The next hop before the rewrite: a packet too big for the egress is
        // answered quoting it as the client sent it.
        let hop = forward::next_hop(ctx, &pkt, choice.id, b.generation, &pkt.key.src, &b.addr);
        if let forward::Hop::TooBig(mtu) = hop {
            if toobig::wants_answer(ctx, &pkt) {
                return ctx.too_big(&pkt, mtu);
            }
        }
        // DSR: only the MACs change; the backend holds the VIP itself.
        if svc.flags & SVC_FWD_DSR == 0 {
            if let Err(r) = forward::nat(ctx, &pkt, Side::Dst, &b.addr, b.port) {
                return pass::<C>(r);
            }
        }
        return forward::send(ctx, &pkt, hop, choice.id, &b.addr);
    }
    // Not to a service: maybe a NAT backend answering a client.
    let ekey = ServiceKey {
        addr: pkt.key.src,
        port: pkt.key.sport,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    if !may_be_endpoint(&ekey.addr, ekey.port) {
        return pass::<C>(reason::PASS_NOT_SERVICE);
    }
    match unsafe { BACKEND_REPLIES.get(&ekey) } {
        Some(t) => reply(ctx, &pkt, *t),
        None => pass::<C>(reason::PASS_NOT_SERVICE),
    }
}

/// Translates a backend's reply back to the VIP and sends it the way the client's
/// request came in. Only packets of flows the balancer dispatched are translated:
/// the backend may also talk to clients directly (health checks, administration),
/// and those packets must pass untouched.
#[inline(always)]
fn reply<C: Ctx>(ctx: &C, pkt: &Packet, t: ReplyTarget) -> u32 {
    let k = &pkt.key;
    if t.flags & REPLY_PER_FLOW != 0 {
        // Established flows first; a SYN-ACK finds its flow in the embryonic table.
        let rev = match unsafe { NAT_REVERSE.get(k) } {
            Some(r) => *r,
            None => match unsafe { EMBRYO_REVERSE.get(k) } {
                Some(r) => *r,
                None => return pass::<C>(reason::PASS_NOT_SERVICE),
            },
        };
        if let Err(r) = forward::nat(ctx, pkt, Side::Src, &rev.vip, rev.vport) {
            return pass::<C>(r);
        }
        stats::reason(reason::NAT_REPLY);
        return forward::emit(ctx, rev.ifindex, &rev.smac, &rev.dmac);
    }
    let client_flow = FlowKey {
        src: k.dst,
        dst: t.vip,
        sport: k.dport,
        dport: t.vport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let flow = match FLOWS.get_ptr_mut(&client_flow) {
        Some(f) => {
            // The backend's FIN or RST closes a least-conn flow too (NAT sees both
            // sides; per-flow reverse entries and DSR see only the client's).
            crate::sched::track(f, pkt.tcp_flags);
            unsafe { *f }
        }
        // A SYN-ACK finds its flow in an embryonic table.
        None => match crate::embryo::get(&client_flow) {
            Some(f) => *f,
            None => return pass::<C>(reason::PASS_NOT_SERVICE),
        },
    };
    let (ifindex, smac, dmac) = (flow.ifindex, flow.smac, flow.dmac);
    if let Err(r) = forward::nat(ctx, pkt, Side::Src, &t.vip, t.vport) {
        return pass::<C>(r);
    }
    stats::reason(reason::NAT_REPLY);
    forward::emit(ctx, ifindex, &smac, &dmac)
}

/// Records how to translate the backend's replies back to the VIP, and the way back
/// to the client: the interface and MACs of this request, reversed. A new flow's
/// entry goes to EMBRYO_REVERSE, a promoted flow's to NAT_REVERSE (and leaves the
/// embryonic table), so that spoofed SYNs cannot evict established reverse entries.
#[inline(always)]
fn remember_reply<C: Ctx>(
    ctx: &C,
    pkt: &Packet,
    backend_addr: [u32; 4],
    backend_port: u16,
    promoted: bool,
) {
    let Some(eth) = parse::ptr_at::<parse::EthHdr>(ctx, 0) else {
        return;
    };
    let (smac, dmac) = unsafe { ((*eth).dst, (*eth).src) };
    let k = &pkt.key;
    let reply = k.nat_reply(backend_addr, backend_port);
    let v = NatReverse {
        vip: k.dst,
        vport: k.dport,
        _pad: [0; 2],
        ifindex: ctx.ingress_ifindex(),
        smac,
        dmac,
    };
    let table = if promoted {
        &NAT_REVERSE
    } else {
        &EMBRYO_REVERSE
    };
    if let Err(e) = table.insert(&reply, &v, BPF_ANY as u64) {
        stats::reason(reason::FLOW_INSERT_FAILED);
        crate::events::insert_failed(ctx, "NAT reverse table", e);
    } else if promoted {
        let _ = EMBRYO_REVERSE.remove(&reply);
    }
}

/// False when no SERVICES or BACKEND_REPLIES key has this address and port (see
/// `xdp_lb_common::endpoint_bit`); true may be a false positive.
#[inline(always)]
pub fn may_be_endpoint(addr: &[u32; 4], port: u16) -> bool {
    // A missing word is unreachable (the index is below the map's size): look it up.
    endpoint_bit_set(&ENDPOINT_FILTER, addr, port, true)
}

/// The (address, port) pair's SLOT_ENDPOINTS bit: every service of its bit (DSR,
/// scheduling by hash) keeps its new flows in EMBRYO_SLOTS only.
#[inline(always)]
pub fn slot_endpoint(addr: &[u32; 4], port: u16) -> bool {
    endpoint_bit_set(&SLOT_ENDPOINTS, addr, port, false)
}

/// The pair's `endpoint_bit` in a bitmap of ENDPOINT_FILTER's shape; `missing`: the
/// answer should its word be missing.
#[inline(always)]
fn endpoint_bit_set(bitmap: &Array<u64>, addr: &[u32; 4], port: u16, missing: bool) -> bool {
    let bit = xdp_lb_common::endpoint_bit(addr, port);
    match bitmap.get(bit / 64) {
        Some(w) => *w & (1u64 << (bit % 64)) != 0,
        None => missing,
    }
}

#[inline(always)]
fn pass<C: Ctx>(r: u32) -> u32 {
    stats::reason(r);
    C::PASS
}
