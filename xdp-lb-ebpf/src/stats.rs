//! Counter updates. All counters are per-CPU, so plain adds need no atomics.
use xdp_lb_common::Counters;

use crate::maps::{BACKEND_STATS, GLOBAL_STATS, SERVICE_STATS};

#[inline(always)]
pub fn reason(r: u32) {
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(r) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add(c: Option<*mut Counters>, bytes: u64, new_flow: bool) {
    if let Some(c) = c {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            if new_flow {
                (*c).new_flows += 1;
            }
        }
    }
}

#[inline(always)]
pub fn service(id: u32, bytes: u64, new_flow: bool) {
    add(SERVICE_STATS.get_ptr_mut(id), bytes, new_flow);
}

#[inline(always)]
pub fn backend(id: u32, bytes: u64, new_flow: bool) {
    add(BACKEND_STATS.get_ptr_mut(id), bytes, new_flow);
}
