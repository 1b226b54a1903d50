//! Rare events worth a log line (aya-log, read by `xdp-lb run`): a backend the FIB
//! cannot route to, an egress interface xdp-lb is not attached to, a failed flow
//! insert. They can repeat for every packet while the cause lasts, so each kind is
//! logged at most once a second per CPU; the counters keep the exact numbers.
use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, macros::map, maps::PerCpuArray};
use aya_log_ebpf::warn;
use xdp_lb_common::{reason, FAMILY_V4};

use crate::ctx::Ctx;

/// Per CPU, per reason: when that reason was last logged (coarse ns).
#[map]
static LAST_LOGGED: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);

const INTERVAL_NS: u64 = 1_000_000_000;

#[inline(always)]
fn due(r: u32) -> bool {
    let Some(last) = LAST_LOGGED.get_ptr_mut(r) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < INTERVAL_NS {
            return false;
        }
        *last = now;
    }
    true
}

/// The next hop towards backend `id` at `addr` could not be used for reason `r`.
#[inline(never)]
pub fn unroutable<C: Ctx>(ctx: &C, r: u32, id: u32, family: u8, addr: &[u32; 4]) {
    if !due(r) {
        return;
    }
    let what = if r == reason::PASS_NO_NEIGH {
        "neighbour not resolved yet"
    } else if r == reason::PASS_NO_TX_PORT {
        "route leaves through an interface xdp-lb is not attached to"
    } else {
        "no route (bpf_fib_lookup failed)"
    };
    if family == FAMILY_V4 {
        warn!(
            ctx,
            "backend {} at {:i}: {}; passing packets to the kernel",
            id,
            u32::from_be(addr[0]),
            what
        );
    } else {
        // The words hold the address bytes in wire order.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(*addr) };
        warn!(
            ctx,
            "backend {} at {:i}: {}; passing packets to the kernel", id, bytes, what
        );
    }
}

/// A flow-table insert failed (`err` from the helper).
#[inline(never)]
pub fn insert_failed<C: Ctx>(ctx: &C, table: &str, err: i32) {
    if due(reason::FLOW_INSERT_FAILED) {
        warn!(
            ctx,
            "{} insert failed (error {}); flows may move if tables change", table, err
        );
    }
}
