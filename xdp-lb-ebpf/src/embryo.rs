//! The embryonic tables: flows that have sent one packet, until their second one
//! promotes them to FLOWS. Two of them: EMBRYO_SLOTS, a direct-mapped array indexed
//! by the flow hash and written in place, for TCP and UDP flows of services that
//! schedule by hash (`xdp_lb_common::slot_scheduled`), and the EMBRYOS LRU for every
//! other flow.
//!
//! A slot holds the latest flow that hashed to it: a new flow overwrites an older
//! one's handshake in progress. That flow's second packet (an ACK, a datagram),
//! finding no entry, is dispatched afresh by the same hash, to the same backend
//! unless the service's table changed meanwhile, as after an LRU eviction. A NAT
//! flow's entry also translates its backend's first answer (a SYN-ACK, the answer to
//! a first datagram), so while it is younger than the guard (`SLOT_CONF_GUARD`) the
//! newcomer moves it to EMBRYOS instead. In exchange a new flow costs one write to the
//! line its lookup brought in, where the LRU takes a cold element and, once full,
//! evicts another flow's (README, New flows).
//!
//! Writers take the slot's lock (`EmbryoSlot::lock`, a compare-and-swap), so two new
//! flows of one slot on two CPUs at the same moment do not tear it (both entries
//! would then read as gone): one is written whole and the other is not stored. A
//! promotion's `clear` takes it too, so it never empties a slot that a new flow was
//! just written into. Readers take no lock; the check word tells a torn read. A
//! promotion copies the value after the check, so a write landing between the two
//! could hand it another flow's backend: a window of a few instructions, for two
//! flows of one slot on two CPUs at that moment.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_ANY, helpers::generated::bpf_ktime_get_coarse_ns};
use xdp_lb_common::{
    embryo_check, hash::flow_hash, EmbryoSlot, FlowKey, FlowValue, SLOT_CONF_GUARD, SLOT_CONF_MASK,
    SLOT_TIME_SHIFT,
};

use crate::maps::{EMBRYOS, EMBRYO_SLOTS, EMBRYO_SLOT_CONF};

/// The slot of a key of flow hash `h`.
#[inline(always)]
fn slot_at(h: u32) -> Option<&'static mut EmbryoSlot> {
    let mask = *EMBRYO_SLOT_CONF.get(SLOT_CONF_MASK)?;
    let p = EMBRYO_SLOTS.get_ptr_mut(h & mask)?;
    Some(unsafe { &mut *p })
}

/// The slot holds `key` (of hash `h`), whole.
#[inline(always)]
fn holds(s: &EmbryoSlot, key: &FlowKey, h: u32) -> bool {
    s.check != 0 && s.key == *key && s.check == embryo_check(h, &s.value)
}

/// The flow's embryonic entry in its slot, if it is there. `h`: the key's
/// `flow_hash`, computed once by the caller for every slot access of a packet.
#[inline(always)]
pub fn in_slot(key: &FlowKey, h: u32) -> Option<&'static FlowValue> {
    let s = slot_at(h)?;
    holds(s, key, h).then_some(&s.value)
}

/// The flow's embryonic entry, wherever it is (for a packet whose service is not
/// known: an ICMP error).
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<&'static FlowValue> {
    match in_slot(key, flow_hash(key)) {
        Some(v) => Some(v),
        None => unsafe { EMBRYOS.get(key) },
    }
}

/// Writes a new flow's entry into its slot, over whatever the slot held, except that
/// a NAT flow's entry younger than the guard is moved to EMBRYOS first. `guard`: the
/// new flow is a NAT flow.
///
/// When another CPU is writing the slot right now, the entry is not stored: its next
/// packet hashes to the same backend, as if the other flow had overwritten it, and a
/// NAT flow's SYN-ACK passes untranslated until the client sends its SYN again. Not
/// counted and not moved to EMBRYOS: any work on that branch (a counter increment
/// will do) makes the compiler duplicate the code after it, and tc_lb's verified
/// instructions grew from 767k to 994k of the verifier's 1M.
#[inline(always)]
pub fn put_in_slot(key: &FlowKey, h: u32, value: &FlowValue, guard: bool) -> Result<(), i32> {
    let Some(s) = slot_at(h) else {
        // Unreachable (the index is masked below the array's size): the LRU.
        return EMBRYOS.insert(key, value, BPF_ANY as u64);
    };
    if claim(s) {
        let now = (unsafe { bpf_ktime_get_coarse_ns() } >> SLOT_TIME_SHIFT) as u32;
        if s.guard != 0 && s.check != 0 && s.key != *key {
            let young = EMBRYO_SLOT_CONF
                .get(SLOT_CONF_GUARD)
                .is_some_and(|&g| now.wrapping_sub(s.born) < g);
            // Only a whole entry: a torn one would pair a key with another's backend.
            if young && s.check == embryo_check(flow_hash(&s.key), &s.value) {
                let _ = EMBRYOS.insert(&s.key, &s.value, BPF_ANY as u64);
            }
        }
        s.check = 0;
        s.key = *key;
        s.value = *value;
        s.born = now;
        s.guard = guard as u32;
        s.check = embryo_check(h, value);
        release(s);
    }
    Ok(())
}

/// Takes the slot's lock (`EmbryoSlot::lock`) if nobody holds it.
#[inline(always)]
fn claim(s: &mut EmbryoSlot) -> bool {
    let p = &mut s.lock as *mut u64;
    // SAFETY: `p` points into a map value, 8-byte aligned, for the map's lifetime.
    let seen = unsafe { core::ptr::read_volatile(p) };
    seen & 1 == 0 && unsafe { cas(p, seen, seen + 1) } == seen
}

#[inline(always)]
fn release(s: &mut EmbryoSlot) {
    // An atomic add, not a store: a locked instruction also orders the slot's writes
    // before it on every architecture the JIT targets.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Release }>(&mut s.lock, 1) };
}

/// BPF's 64-bit compare-and-swap: `*p = new` if `*p == old`; returns what `*p` was.
/// Written out because the target, built for instruction set v1 (v3 grew the program
/// past the verifier's budget), has no compare-and-swap for LLVM to emit, while
/// every kernel since 5.12 runs the instruction (BPF_ATOMIC | BPF_CMPXCHG).
#[inline(always)]
unsafe fn cas(p: *mut u64, old: u64, new: u64) -> u64 {
    let mut r0 = old;
    core::arch::asm!(
        "r0 = cmpxchg_64({p} + 0, r0, {new})",
        p = in(reg) p,
        new = in(reg) new,
        inout("r0") r0,
        options(nostack),
    );
    r0
}

/// Empties the flow's slot if it holds the flow (it was promoted to FLOWS).
#[inline(always)]
pub fn clear(key: &FlowKey, h: u32) {
    if let Some(s) = slot_at(h) {
        // Under the lock: a new flow written into the slot meanwhile stays.
        if holds(s, key, h) && claim(s) {
            if holds(s, key, h) {
                s.check = 0;
            }
            release(s);
        }
    }
}
