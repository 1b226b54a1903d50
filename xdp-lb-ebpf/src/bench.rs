//! Programs for `cargo xtask bench` and the veth peers of test topologies; none of
//! them is attached by `xdp-lb run`.
//!
//! BPF_PROG_TEST_RUN with `repeat` runs a program again and again on one buffer
//! without restoring it, so a program that rewrites the frame would measure its own
//! output from the second round on. `xdp_bench_wrapper` copies the saved frame back
//! in and tail-calls the program under test; the same wrapper around an empty
//! target gives the overhead to subtract. `tc_bench_wrapper` does the same on an skb
//! for `tc_lb`.
use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY, TC_ACT_REDIRECT},
    helpers::generated::{bpf_skb_store_bytes, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use xdp_lb_common::{csum::Update, BenchFrame, FlowKey, FlowValue, BENCH_FRAME_MAX};

use crate::{
    forward::{self, Side},
    maps::{BENCH_COUNTER, BENCH_FRAME, BENCH_TARGET, BENCH_TARGET_TC, EMBRYOS, FLOWS, SERVICES},
    parse, select, stats, validate,
};

#[xdp]
pub fn xdp_bench_wrapper(ctx: XdpContext) -> u32 {
    let Some(frame) = BENCH_FRAME.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let want = frame.len as usize;
    // Bounded so the verifier accepts it as the helper's size argument.
    if want == 0 || want > BENCH_FRAME_MAX {
        return xdp_action::XDP_ABORTED;
    }
    let have = ctx.data_end() - ctx.data();
    if have != want {
        let delta = want as i32 - have as i32;
        if unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, delta) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    if !ctx.put(0, frame.data.as_ptr(), want as u32) {
        return xdp_action::XDP_ABORTED;
    }
    if frame.flows != 0 && vary(&ctx, frame).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// What `tc_bench_wrapper` answers when it cannot restore the frame or the tail
/// call fails: no action `tc_lb` returns (TC_ACT_UNSPEC).
const TC_WRAPPER_FAILED: i32 = -1;

/// `xdp_bench_wrapper` for tc programs (`BENCH_TARGET_TC`): restores the saved frame
/// into the skb and numbers the flow the same way. The test run's skb is linear and
/// as long as the frame; a case whose program changed its length cannot be
/// restored and fails the run.
#[classifier]
pub fn tc_bench_wrapper(ctx: TcContext) -> i32 {
    let Some(frame) = BENCH_FRAME.get(0) else {
        return TC_WRAPPER_FAILED;
    };
    let want = frame.len as usize;
    if want == 0 || want > BENCH_FRAME_MAX || want != ctx.len() as usize {
        return TC_WRAPPER_FAILED;
    }
    if !ctx.put(0, frame.data.as_ptr(), want as u32) {
        return TC_WRAPPER_FAILED;
    }
    if frame.flows != 0 && vary(&ctx, frame).is_none() {
        return TC_WRAPPER_FAILED;
    }
    unsafe { BENCH_TARGET_TC.tail_call(&ctx, 0) };
    TC_WRAPPER_FAILED
}

/// The empty tc target: what `tc_bench_wrapper` alone costs.
#[classifier]
pub fn tc_bench_empty(_ctx: TcContext) -> i32 {
    TC_ACT_REDIRECT
}

/// Writing into the packet through the helper, for both wrappers.
trait Store {
    fn put(&self, off: u32, from: *const u8, len: u32) -> bool;
}

impl Store for XdpContext {
    #[inline(always)]
    fn put(&self, off: u32, from: *const u8, len: u32) -> bool {
        unsafe { bpf_xdp_store_bytes(self.as_ptr() as *mut _, off, from as *mut _, len) == 0 }
    }
}

impl Store for TcContext {
    #[inline(always)]
    fn put(&self, off: u32, from: *const u8, len: u32) -> bool {
        unsafe { bpf_skb_store_bytes(self.as_ptr() as *mut _, off, from as *mut _, len, 0) == 0 }
    }
}

/// Writes the iteration's flow number into the frame (see `BenchFrame::flows`).
#[inline(always)]
fn vary(ctx: &impl Store, frame: &BenchFrame) -> Option<()> {
    let c = BENCH_COUNTER.get_ptr_mut(0)?;
    let n = unsafe { *c };
    unsafe { *c = if n + 1 >= frame.flows { 0 } else { n + 1 } };
    let v = n.wrapping_add(frame.base);
    let port = (v as u16).to_be_bytes();
    let addr = ((v >> 16) as u16).to_be_bytes();
    if !ctx.put(frame.port_off as u32, port.as_ptr(), 2)
        || !ctx.put(frame.addr_off as u32, addr.as_ptr(), 2)
    {
        return None;
    }
    // The program verifies the IPv4 header checksum of every packet and the L4
    // checksum of flow-creating ones: patch both for the two changed words, as
    // loaded from memory (see `xdp_lb_common::csum`).
    let old_port = saved_word(frame, frame.port_off)?;
    let old_addr = saved_word(frame, frame.addr_off)?;
    let (new_port, new_addr) = (u16::from_ne_bytes(port), u16::from_ne_bytes(addr));
    if frame.ip_check_off != 0 {
        let c = Update::new(saved_word(frame, frame.ip_check_off)?)
            .u16(old_addr, new_addr)
            .finish();
        store_word(ctx, frame.ip_check_off, c)?;
    }
    if frame.l4_check_off != 0 {
        let c = Update::new(saved_word(frame, frame.l4_check_off)?)
            .u16(old_port, new_port)
            .u16(old_addr, new_addr)
            .finish();
        store_word(ctx, frame.l4_check_off, c)?;
    }
    Some(())
}

/// The 16-bit word at `off` of the saved frame, as loaded from memory.
#[inline(always)]
fn saved_word(frame: &BenchFrame, off: u16) -> Option<u16> {
    // Bounded so the verifier accepts the variable offset into the map value.
    let off = off as usize;
    if off + 2 > BENCH_FRAME_MAX {
        return None;
    }
    Some(u16::from_ne_bytes([frame.data[off], frame.data[off + 1]]))
}

#[inline(always)]
fn store_word(ctx: &impl Store, off: u16, w: u16) -> Option<()> {
    let b = w.to_ne_bytes();
    ctx.put(off as u32, b.as_ptr(), 2).then_some(())
}

/// The empty target: what the wrapper alone costs.
#[xdp]
pub fn xdp_bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// The floor: parse Ethernet/IP/TCP, one hash lookup, XDP_TX. Any balancer pays at
/// least this.
#[xdp]
pub fn xdp_floor(ctx: XdpContext) -> u32 {
    let Ok(pkt) = parse::parse(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let key: FlowKey = pkt.key;
    if unsafe { FLOWS.get(&key) }.is_some() {
        return xdp_action::XDP_TX;
    }
    xdp_action::XDP_TX
}

/// The floor, then a read of the entry's first and last value words (what the
/// established path reads: backend id, flags): with the floor, whether the value
/// costs a cache line the key lookup did not already bring in.
#[xdp]
pub fn xdp_floor_value(ctx: XdpContext) -> u32 {
    let Ok(pkt) = parse::parse(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let key: FlowKey = pkt.key;
    let Some(p) = FLOWS.get_ptr(&key) else {
        return xdp_action::XDP_PASS;
    };
    // Volatile: the reads must happen although nothing but the verdict uses them.
    let (id, flags) = unsafe {
        (
            core::ptr::read_volatile(&(*p).backend_id),
            core::ptr::read_volatile(&(*p).flags),
        )
    };
    if id == u32::MAX && flags == u32::MAX {
        return xdp_action::XDP_PASS;
    }
    xdp_action::XDP_TX
}

/// The L4 checksum verification alone, on top of the floor's parse: what a
/// flow-creating packet pays for it (this minus the floor).
#[xdp]
pub fn xdp_bench_l4_csum(ctx: XdpContext) -> u32 {
    let Ok(pkt) = parse::parse(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    if validate::l4_csum_ok(&ctx, &pkt) {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_DROP
    }
}

/// The IPv4 header checksum test alone (every IPv4 packet pays it): bounds check,
/// five loads, fold, XDP_TX.
#[xdp]
pub fn xdp_bench_ip_csum(ctx: XdpContext) -> u32 {
    let Some(ip) = parse::ptr_at::<parse::Ipv4Hdr>(&ctx, 14) else {
        return xdp_action::XDP_PASS;
    };
    if parse::ipv4_csum_ok(unsafe { &*ip }) {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_DROP
    }
}

/// The service path of `lb::process` (the established-flow and non-VIP packets the
/// bench sends), stopped after step `STEP` with XDP_TX: the per-step breakdown of
/// `cargo xtask bench pkt`. 1: parse; 2: + ENDPOINT_FILTER and SERVICES lookup; 3: + header validation
/// and the flow lookup (`select`); 4: + service and backend counters; 5: + next hop;
/// 6: + NAT rewrite with checksums. The rest (MACs, TX counter, XDP_TX) is the full
/// program. A miss or error anywhere answers XDP_PASS, which the bench rejects, so
/// each figure is the path it names. Kept in step with `lb::process` by hand.
#[inline(always)]
fn service_path_until<const STEP: u32>(ctx: &XdpContext) -> u32 {
    let Ok(pkt) = parse::parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    if STEP == 1 {
        return xdp_action::XDP_TX;
    }
    let skey = xdp_lb_common::ServiceKey {
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    let svc = if crate::lb::may_be_endpoint(&skey.addr, skey.port) {
        unsafe { SERVICES.get(&skey) }
    } else {
        None
    };
    let Some(svc) = svc else {
        // The non-VIP packet's first step: parse and a SERVICES miss.
        return xdp_action::XDP_TX;
    };
    let svc = *svc;
    if STEP == 2 {
        return xdp_action::XDP_TX;
    }
    let Ok(choice) =
        validate::l4_header(&pkt).and_then(|()| select::backend_for(ctx, &pkt, &svc, None))
    else {
        return xdp_action::XDP_PASS;
    };
    if STEP == 3 {
        return xdp_action::XDP_TX;
    }
    stats::service(svc.id, pkt.len, choice.new_flow);
    stats::backend(choice.id, pkt.len, choice.new_flow);
    if STEP == 4 {
        return xdp_action::XDP_TX;
    }
    let b = choice.backend;
    let hop = forward::next_hop(ctx, &pkt, choice.id, b.generation, &pkt.key.src, &b.addr);
    if !matches!(hop, forward::Hop::Via(_)) {
        return xdp_action::XDP_PASS;
    }
    if STEP == 5 {
        return xdp_action::XDP_TX;
    }
    if forward::nat(ctx, &pkt, Side::Dst, &b.addr, b.port).is_err() {
        return xdp_action::XDP_PASS;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn xdp_bench_step1(ctx: XdpContext) -> u32 {
    service_path_until::<1>(&ctx)
}

#[xdp]
pub fn xdp_bench_step2(ctx: XdpContext) -> u32 {
    service_path_until::<2>(&ctx)
}

#[xdp]
pub fn xdp_bench_step3(ctx: XdpContext) -> u32 {
    service_path_until::<3>(&ctx)
}

#[xdp]
pub fn xdp_bench_step4(ctx: XdpContext) -> u32 {
    service_path_until::<4>(&ctx)
}

#[xdp]
pub fn xdp_bench_step5(ctx: XdpContext) -> u32 {
    service_path_until::<5>(&ctx)
}

#[xdp]
pub fn xdp_bench_step6(ctx: XdpContext) -> u32 {
    service_path_until::<6>(&ctx)
}

/// A flow's first packet (a SYN, a first datagram) through `lb::process` stopped
/// after step `STEP` with XDP_TX: where a new flow's time goes. 1: parse; 2: + the
/// established fast path's `FLOWS` miss and the `EMBRYOS` miss next to it (a
/// datagram: and its slot's; not for a SYN), `ENDPOINT_FILTER` and `SERVICES`;
/// 3: + header checks; 4: + L4 checksum; 5: + the stale-entry `FLOWS` lookup and the
/// embryonic lookup beside it (a SYN), or a TCP flow's slot (`slot_scheduled`, not a
/// SYN; a datagram's slot is read in step 2, beside its `FLOWS` miss); 6: + the
/// scheduler's pick; 7: + the embryonic insert (`EMBRYOS`, or the slot of a
/// `slot_scheduled` flow). The full program adds counters, next hop, rewrite and
/// send. Kept in step with `lb::process` and `select::backend_for` by hand; anything
/// off the new-flow path answers XDP_PASS, which the bench rejects.
#[inline(always)]
fn first_packet_until<const STEP: u32>(ctx: &XdpContext) -> u32 {
    let Ok(pkt) = parse::parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    if STEP == 1 {
        return xdp_action::XDP_TX;
    }
    let key = &pkt.key;
    // As `select::established`: a packet that misses FLOWS reads its slot beside that
    // miss if it is a datagram or goes to a SLOT_ENDPOINTS endpoint (which then skips
    // EMBRYOS); the hash serves every later slot access.
    let slot_only = !pkt.syn && crate::lb::slot_endpoint(&key.dst, key.dport);
    // Plain values, not an Option<u32>: with one, LLVM spilled an undefined register
    // on the `None` path, which the verifier rejects.
    let early = !pkt.syn && (key.proto == xdp_lb_common::PROTO_UDP || slot_only);
    let early_hash = if early {
        xdp_lb_common::hash::flow_hash(key)
    } else {
        0
    };
    if !pkt.syn
        && (unsafe { FLOWS.get(key) }.is_some()
            || (early && crate::embryo::in_slot(key, early_hash).is_some())
            || (!slot_only && unsafe { EMBRYOS.get(key) }.is_some()))
    {
        return xdp_action::XDP_PASS;
    }
    let skey = xdp_lb_common::ServiceKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    if !crate::lb::may_be_endpoint(&skey.addr, skey.port) {
        return xdp_action::XDP_PASS;
    }
    let Some(svc) = (unsafe { SERVICES.get(&skey) }) else {
        return xdp_action::XDP_PASS;
    };
    if STEP == 2 {
        return xdp_action::XDP_TX;
    }
    if validate::l4_header(&pkt).is_err() {
        return xdp_action::XDP_PASS;
    }
    if STEP == 3 {
        return xdp_action::XDP_TX;
    }
    if !validate::l4_csum_ok(ctx, &pkt) {
        return xdp_action::XDP_PASS;
    }
    if STEP == 4 {
        return xdp_action::XDP_TX;
    }
    let slotted = xdp_lb_common::slot_scheduled(svc.flags, key.proto);
    let h = if early {
        early_hash
    } else if slotted {
        xdp_lb_common::hash::flow_hash(key)
    } else {
        0
    };
    if pkt.syn {
        let embryo = if slotted {
            crate::embryo::in_slot(key, h)
        } else {
            unsafe { EMBRYOS.get(key) }
        };
        if unsafe { FLOWS.get(key) }.is_some() || embryo.is_some() {
            return xdp_action::XDP_PASS;
        }
    } else if slotted && !early && crate::embryo::in_slot(key, h).is_some() {
        return xdp_action::XDP_PASS;
    }
    if STEP == 5 {
        return xdp_action::XDP_TX;
    }
    let Ok((id, backend)) = crate::sched::pick(key, svc, slotted.then_some(h)) else {
        return xdp_action::XDP_PASS;
    };
    if STEP == 6 {
        return xdp_action::XDP_TX;
    }
    let value = FlowValue {
        backend_id: id,
        generation: backend.generation,
        ifindex: 0,
        smac: [0; 6],
        dmac: [0; 6],
        last_seen: 0,
        flags: 0,
    };
    let stored = if slotted {
        crate::embryo::put_in_slot(key, h, &value, svc.flags & xdp_lb_common::SVC_FWD_DSR == 0)
    } else {
        EMBRYOS.insert(key, &value, BPF_ANY as u64)
    };
    if stored.is_err() {
        return xdp_action::XDP_PASS;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn xdp_bench_new1(ctx: XdpContext) -> u32 {
    first_packet_until::<1>(&ctx)
}

#[xdp]
pub fn xdp_bench_new2(ctx: XdpContext) -> u32 {
    first_packet_until::<2>(&ctx)
}

#[xdp]
pub fn xdp_bench_new3(ctx: XdpContext) -> u32 {
    first_packet_until::<3>(&ctx)
}

#[xdp]
pub fn xdp_bench_new4(ctx: XdpContext) -> u32 {
    first_packet_until::<4>(&ctx)
}

#[xdp]
pub fn xdp_bench_new5(ctx: XdpContext) -> u32 {
    first_packet_until::<5>(&ctx)
}

#[xdp]
pub fn xdp_bench_new6(ctx: XdpContext) -> u32 {
    first_packet_until::<6>(&ctx)
}

#[xdp]
pub fn xdp_bench_new7(ctx: XdpContext) -> u32 {
    first_packet_until::<7>(&ctx)
}

/// Passes everything. A veth only takes XDP_TX/XDP_REDIRECT frames when its peer
/// runs an XDP program; test topologies attach this one there.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
