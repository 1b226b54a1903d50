//! The data plane of xdp-lb. `xdp_lb` (XDP) and `tc_lb` (tc ingress) are the programs
//! `xdp-lb run` attaches, one source for both (`ctx::Ctx`); the modules split the
//! packet path by concern (parse, select, forward, stats).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no compare-and-swap, so core's atomic types lack fetch_add; the
// intrinsic gives BPF's atomic add (least-conn counts, `sched::conns_add`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// The compare-and-swap of EMBRYO_SLOTS's lock is written in assembly (`embryo::cas`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Map keys are passed by reference on purpose: by value they would be copied onto
// the 512-byte BPF stack once more before the helper call.
#![allow(clippy::needless_borrows_for_generic_args)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod ctx;
#[cfg(target_arch = "bpf")]
mod embryo;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod sched;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod toobig;
#[cfg(target_arch = "bpf")]
mod validate;

// `inline(always)` on both entry points: the macro wraps each in the program's
// section and calls it, and LLVM may leave the call (a BPF-to-BPF call on every
// packet) once the body is large, as it did when `toobig` became generic.
#[cfg(target_arch = "bpf")]
#[aya_ebpf::macros::xdp]
#[inline(always)]
pub fn xdp_lb(ctx: aya_ebpf::programs::XdpContext) -> u32 {
    #[cfg(feature = "upgrade-variant")]
    upgrade_variant(&ctx);
    lb::process(&ctx)
}

/// The same data path on an skb at tc ingress (`xdp-lb run --attach tc`), for
/// virtual interfaces: see `tc`.
#[cfg(target_arch = "bpf")]
#[aya_ebpf::macros::classifier]
#[inline(always)]
pub fn tc_lb(ctx: aya_ebpf::programs::TcContext) -> i32 {
    tc::pull_headers(&ctx);
    lb::process(&ctx) as i32
}

/// The upgrade test's second build: a few more instructions, so the program's tag
/// differs, and no effect, since no frame is this long.
#[cfg(all(target_arch = "bpf", feature = "upgrade-variant"))]
#[inline(always)]
fn upgrade_variant(ctx: &aya_ebpf::programs::XdpContext) {
    const IMPOSSIBLE_LEN: usize = 0x7fff_0001;
    if ctx.data_end() - ctx.data() == IMPOSSIBLE_LEN {
        stats::reason(xdp_lb_common::reason::PASS_NOT_IP);
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
