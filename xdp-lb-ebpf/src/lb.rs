//! The balancer's decision for one packet: service lookup, backend choice, rewrite,
//! send; or, for a packet that is not to a service, the NAT reply path.
use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY},
    programs::XdpContext,
};
use xdp_lb_common::{
    reason, FlowKey, NatReverse, ReplyTarget, ServiceKey, REPLY_PER_FLOW, SVC_FWD_DSR,
    SVC_REVERSE_PER_FLOW,
};

use crate::{
    forward::{self, Side},
    maps::{BACKEND_REPLIES, FLOWS, NAT_REVERSE, SERVICES},
    parse::{self, Packet},
    select, stats,
};

#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    let pkt = match parse::parse(ctx) {
        Ok(p) => p,
        Err(r) => return pass(r),
    };
    let skey = ServiceKey {
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    if let Some(svc) = unsafe { SERVICES.get(&skey) } {
        let svc = *svc;
        let choice = match select::backend_for(ctx, &pkt, &svc) {
            Ok(c) => c,
            Err(r) => {
                stats::reason(r);
                return if r == reason::DROP_NO_BACKEND {
                    xdp_action::XDP_DROP
                } else {
                    xdp_action::XDP_PASS
                };
            }
        };
        stats::service(svc.id, pkt.len, choice.new_flow);
        stats::backend(choice.id, pkt.len, choice.new_flow);
        let b = &choice.backend;
        if svc.flags & SVC_FWD_DSR != 0 {
            // Only the MACs change; the backend holds the VIP itself.
            return forward::to_backend(ctx, &pkt, choice.id, b.generation, &pkt.key.src, &b.addr);
        }
        if choice.new_flow && svc.flags & SVC_REVERSE_PER_FLOW != 0 {
            remember_reply(ctx, &pkt, b.addr, b.port);
        }
        if let Err(r) = forward::nat(ctx, &pkt, Side::Dst, &b.addr, b.port) {
            return pass(r);
        }
        return forward::to_backend(ctx, &pkt, choice.id, b.generation, &pkt.key.src, &b.addr);
    }
    // Not to a service: maybe a NAT backend answering a client.
    let ekey = ServiceKey {
        addr: pkt.key.src,
        port: pkt.key.sport,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    match unsafe { BACKEND_REPLIES.get(&ekey) } {
        Some(t) => reply(ctx, &pkt, *t),
        None => pass(reason::PASS_NOT_SERVICE),
    }
}

/// Translates a backend's reply back to the VIP and sends it the way the client's
/// request came in. The translation needs no flow state (the endpoint names the
/// VIP), so replies survive a flow-table eviction or a restart; only the way back
/// comes from the flow, with a FIB lookup when the flow is unknown.
#[inline(always)]
fn reply(ctx: &XdpContext, pkt: &Packet, t: ReplyTarget) -> u32 {
    let k = &pkt.key;
    if t.flags & REPLY_PER_FLOW != 0 {
        if let Some(rev) = unsafe { NAT_REVERSE.get(k) } {
            let rev = *rev;
            if let Err(r) = forward::nat(ctx, pkt, Side::Src, &rev.vip, rev.vport) {
                return pass(r);
            }
            stats::reason(reason::NAT_REPLY);
            return forward::emit(ctx, rev.ifindex, &rev.smac, &rev.dmac);
        }
        // No per-flow entry (the flow predates the sharing): translate to the VIP
        // named by the endpoint only if that VIP really has this flow.
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
    let way_back = unsafe { FLOWS.get(&client_flow) }.map(|f| (f.ifindex, f.smac, f.dmac));
    if way_back.is_none() && t.flags & REPLY_PER_FLOW != 0 {
        return pass(reason::PASS_NOT_SERVICE);
    }
    if let Err(r) = forward::nat(ctx, pkt, Side::Src, &t.vip, t.vport) {
        return pass(r);
    }
    stats::reason(reason::NAT_REPLY);
    match way_back {
        Some((ifindex, smac, dmac)) => forward::emit(ctx, ifindex, &smac, &dmac),
        None => forward::to_client(ctx, pkt, &t.vip, &k.dst),
    }
}

/// Records how to translate the backend's replies back to the VIP, and the way back
/// to the client: the interface and MACs of this request, reversed.
#[inline(always)]
fn remember_reply(ctx: &XdpContext, pkt: &Packet, backend_addr: [u32; 4], backend_port: u16) {
    let Some(eth) = parse::ptr_at::<parse::EthHdr>(ctx, 0) else {
        return;
    };
    let (smac, dmac) = unsafe { ((*eth).dst, (*eth).src) };
    let k = &pkt.key;
    let reply = FlowKey {
        src: backend_addr,
        dst: k.src,
        sport: backend_port,
        dport: k.sport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let v = NatReverse {
        vip: k.dst,
        vport: k.dport,
        _pad: [0; 2],
        ifindex: ctx.ingress_ifindex() as u32,
        smac,
        dmac,
    };
    if NAT_REVERSE.insert(&reply, &v, BPF_ANY as u64).is_err() {
        stats::reason(reason::FLOW_INSERT_FAILED);
    }
}

#[inline(always)]
fn pass(r: u32) -> u32 {
    stats::reason(r);
    xdp_action::XDP_PASS
}
