//! Programs for `cargo xtask bench` and the veth peers of test topologies; none of
//! them is attached by `xdp-lb run`.
//!
//! BPF_PROG_TEST_RUN with `repeat` runs a program again and again on one buffer
//! without restoring it, so a program that rewrites the frame would measure its own
//! output from the second round on. `xdp_bench_wrapper` copies the saved frame back
//! in and tail-calls the program under test; the same wrapper around an empty
//! target gives the overhead to subtract.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::xdp,
    programs::XdpContext,
    EbpfContext,
};
use xdp_lb_common::{BenchFrame, FlowKey, BENCH_FRAME_MAX};

use crate::{
    maps::{BENCH_COUNTER, BENCH_FRAME, BENCH_TARGET, FLOWS},
    parse,
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
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.as_ptr() as *mut _,
            0,
            frame.data.as_ptr() as *mut _,
            want as u32,
        )
    };
    if rc != 0 {
        return xdp_action::XDP_ABORTED;
    }
    if frame.flows != 0 && vary(&ctx, frame).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// Writes the iteration's flow number into the frame (see `BenchFrame::flows`).
#[inline(always)]
fn vary(ctx: &XdpContext, frame: &BenchFrame) -> Option<()> {
    let c = BENCH_COUNTER.get_ptr_mut(0)?;
    let n = unsafe { *c };
    unsafe { *c = if n + 1 >= frame.flows { 0 } else { n + 1 } };
    let v = n.wrapping_add(frame.base);
    let port = (v as u16).to_be_bytes();
    let addr = ((v >> 16) as u16).to_be_bytes();
    let p = ctx.as_ptr() as *mut _;
    unsafe {
        if bpf_xdp_store_bytes(p, frame.port_off as u32, port.as_ptr() as *mut _, 2) != 0
            || bpf_xdp_store_bytes(p, frame.addr_off as u32, addr.as_ptr() as *mut _, 2) != 0
        {
            return None;
        }
    }
    Some(())
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

/// Passes everything. A veth only takes XDP_TX/XDP_REDIRECT frames when its peer
/// runs an XDP program; test topologies attach this one there.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
