//! Schedulers that pick a new flow's backend from a service's published table:
//! Maglev/src-hash hash into it, round-robin walks it with a per-CPU cursor,
//! least-conn scans it for the backend with the fewest counted connections per unit
//! of weight, and random-two-least-conn weighs two entries drawn at random the same
//! way. The control plane builds every table (policy in userspace); this module
//! only indexes it and keeps the connection counts.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_loop},
};
use xdp_lb_common::{
    hash, reason, Backend, FlowKey, FlowValue, Service, BACKEND_ACTIVE, BACKEND_DOWN, FLOW_COUNTED,
    LAST_SEEN_SHIFT, LC_MAX_BACKENDS, NO_BACKEND, SVC_HASH_SRC_ONLY, SVC_SCHED_LC, SVC_SCHED_P2C,
    SVC_SCHED_RR,
};

use crate::{
    maps::{BACKENDS, CONNS, MAGLEV_RING, SCHED_CURSOR},
    parse::{TCP_FIN, TCP_RST},
};

/// The backend for a flow no table knows (or whose backend went away). `key_hash`:
/// the key's `flow_hash` when the caller computed it already (for its slot), which
/// Maglev's position then reuses.
#[inline(always)]
pub fn pick(
    key: &FlowKey,
    svc: &Service,
    key_hash: Option<u32>,
) -> Result<(u32, &'static Backend), u32> {
    if svc.ring_size == 0 {
        return Err(reason::DROP_NO_BACKEND);
    }
    if svc.flags & SVC_SCHED_LC != 0 {
        return least_conn(svc);
    }
    let pos = if svc.flags & SVC_SCHED_RR != 0 {
        next_pos(svc)
    } else if svc.flags & SVC_HASH_SRC_ONLY != 0 {
        hash::src_hash(&key.src) % svc.ring_size
    } else {
        key_hash.unwrap_or_else(|| hash::flow_hash(key)) % svc.ring_size
    };
    let id = *MAGLEV_RING
        .get(svc.ring_offset.wrapping_add(pos))
        .ok_or(reason::DROP_NO_BACKEND)?;
    if id == NO_BACKEND {
        return Err(reason::DROP_NO_BACKEND);
    }
    let b = BACKENDS.get(id).ok_or(reason::DROP_NO_BACKEND)?;
    // A table can still name a backend for the moment between the control plane
    // marking it down and publishing the table without it; draining is fine there.
    if b.state == BACKEND_DOWN {
        return Err(reason::DROP_NO_BACKEND);
    }
    Ok((id, b))
}

/// This CPU's position in the service's schedule, advanced by one. The cursor is
/// per CPU, so the read-increment-write races with nobody (an XDP program is not
/// migrated while it runs); each CPU walks the whole interleaved schedule on its own.
/// A shorter table published meanwhile just wraps the cursor to its start.
#[inline(always)]
fn next_pos(svc: &Service) -> u32 {
    let Some(c) = SCHED_CURSOR.get_ptr_mut(svc.id) else {
        return 0;
    };
    unsafe {
        let pos = if *c >= svc.ring_size { 0 } else { *c };
        *c = pos + 1;
        pos
    }
}

/// The state of one least-conn scan, on the caller's stack, handed to each step.
#[repr(C)]
struct LcScan {
    /// The service's table (backend ids) and its length (at most LC_MAX_BACKENDS).
    offset: u32,
    n: u32,
    /// Where this CPU's scan starts (rotates, so ties take turns).
    start: u32,
    best_id: u32,
    best_c: u64,
    best_w: u64,
}

/// The active backend with the fewest counted connections relative to its weight:
/// c/w < best_c/best_w, compared as c*best_w < best_c*w (counts stay far below 2^40
/// and weights at most 65535, so the products fit u64; the start value 2^40/1 loses to
/// any real backend). The scan starts at this CPU's rotating cursor so that ties (an
/// idle service) take turns instead of always going to the first listed backend.
///
/// The scan runs under `bpf_loop` (kernel 5.17+): the verifier checks one step once,
/// whereas a plain bounded loop of 256 steps is walked step by step, and inside the
/// program (before the scan was a function of its own) exceeded its 1M-instruction
/// budget.
#[inline(always)]
fn least_conn(svc: &Service) -> Result<(u32, &'static Backend), u32> {
    // One call for both schedulers, the choice made inside: a branch here, around two
    // calls, took `xdp_lb` past the verifier's 1M instructions.
    let best_id = xdp_lb_least_conn(
        svc.ring_offset,
        svc.ring_size,
        next_pos(svc),
        svc.flags & SVC_SCHED_P2C,
    );
    if best_id == NO_BACKEND {
        return Err(reason::DROP_NO_BACKEND);
    }
    let b = BACKENDS.get(best_id).ok_or(reason::DROP_NO_BACKEND)?;
    Ok((best_id, b))
}

/// `least_conn`'s scan, a global BPF function (BTF linkage global, integer arguments
/// and result): the verifier checks it once, on its own, for any arguments, where a
/// scan inlined into the program had its `bpf_loop` callback walked again for every
/// state the program reaches the call with (7k instructions of each program's count).
///
/// The cost is in the step's body, not in the loop: the scan as a plain loop here
/// (which the verifier can afford in a global function, at 50k instructions) took a
/// new flow at 256 backends only 3% less, and leaving out the BACKENDS read 11% less
/// (`cargo xtask bench pkt`, paired); what remains is about 3 ns an entry for the
/// table entry, the count and the compare.
///
/// `two`: nonzero for random-two-least-conn (`SVC_SCHED_P2C`), whose two draws
/// `two_choices` makes instead of the scan. `n`: the table's length (the scan reads
/// at most `LC_MAX_BACKENDS`); `start`: this CPU's cursor.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdp_lb_least_conn(offset: u32, n: u32, start: u32, two: u32) -> u32 {
    // One LcScan for both: the call chain's stack (the program's frame, this one and
    // the loop's step) has 512 bytes in all, and the program takes 432.
    let mut scan = LcScan {
        offset,
        n,
        start,
        best_id: NO_BACKEND,
        best_c: 1 << 40,
        best_w: 1,
    };
    if two != 0 {
        two_choices(&mut scan);
        return scan.best_id;
    }
    scan.n = n.min(LC_MAX_BACKENDS);
    if scan.start >= scan.n {
        scan.start = 0;
    }
    let count = scan.n;
    steps(&mut scan, count);
    scan.best_id
}

/// `random-two-least-conn`'s choice (`SVC_SCHED_P2C`), made in
/// `xdp_lb_least_conn` over the whole table (`s.n` entries): two distinct positions of
/// the service's table (a weighted round-robin cycle, so a backend is drawn in
/// proportion to its weight) drawn at random, and the less loaded of their backends
/// relative to weight, as least-conn compares them (a tie goes to the first draw).
/// Should neither be active (the moment between a backend marked down and its table
/// published without it), the next `TWO_CHOICES_FALLBACK` entries from the first draw
/// decide.
#[inline(always)]
fn two_choices(s: &mut LcScan) {
    let n = s.n;
    if n == 0 {
        return;
    }
    let r = unsafe { bpf_get_prandom_u32() };
    let a = (r & 0xffff) % n;
    // The second draw, 1..n-1 positions after the first: never the same entry.
    let b = if n > 1 {
        let b = a + 1 + (r >> 16) % (n - 1);
        if b >= n {
            b - n
        } else {
            b
        }
    } else {
        a
    };
    // Each entry is weighed by the scan's own step (one `bpf_loop` round), not
    // inline: inlined, the draws' code took this function's frame from 56 to 88
    // bytes, past the 512 of the call chain.
    s.start = a;
    steps(s, 1);
    if b != a {
        s.start = b;
        steps(s, 1);
    }
    if s.best_id == NO_BACKEND {
        s.start = a;
        steps(s, n.min(TWO_CHOICES_FALLBACK));
    }
}

/// `count` steps of the scan from `s.start`.
#[inline(always)]
fn steps(s: &mut LcScan, count: u32) {
    unsafe {
        bpf_loop(
            count,
            lc_step as *const () as *mut c_void,
            s as *mut LcScan as *mut c_void,
            0,
        )
    };
}

/// Table entries `two_choices` weighs after its first draw when neither draw
/// is active.
const TWO_CHOICES_FALLBACK: u32 = 16;

/// One step of `least_conn`: table entry `i` positions after the scan's start.
/// Returns 0 to go on, 1 to stop (a table entry out of the map's range).
#[inline(never)]
extern "C" fn lc_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `least_conn` gave it, to its LcScan.
    let s = unsafe { &mut *(ctx as *mut LcScan) };
    let mut j = s.start.wrapping_add(i as u32);
    if j >= s.n {
        j -= s.n;
    }
    let Some(&id) = MAGLEV_RING.get(s.offset.wrapping_add(j)) else {
        return 1;
    };
    let Some(b) = BACKENDS.get(id) else {
        return 0;
    };
    if b.state != BACKEND_ACTIVE {
        return 0;
    }
    let c = match CONNS.get(id) {
        Some(&c) if c > 0 => c as u64,
        _ => 0,
    };
    let w = b.weight as u64;
    if c * s.best_w < s.best_c * w {
        s.best_id = id;
        s.best_c = c;
        s.best_w = w;
    }
    0
}

/// Adds `delta` to backend `id`'s connection count. CONNS is one shared array with
/// atomic adds rather than per-CPU counters: least-conn reads every backend's count
/// on each new flow, and summing per-CPU slots there would cost ncpus times the scan.
/// The add's result is not used, so it compiles to BPF's plain atomic add (XADD),
/// which the v1 instruction set has.
#[inline(always)]
fn conns_add(id: u32, delta: i64) {
    if let Some(c) = CONNS.get_ptr_mut(id) {
        // SAFETY: an array value is 8-byte aligned and lives as long as the map.
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(c, delta) };
    }
}

/// A new least-conn flow whose entry was stored: count it, and mark the entry so
/// the close that ends it (or the control plane's reconciliation) can find it.
#[inline(always)]
pub fn count_new(svc: &Service, v: &mut FlowValue) {
    if svc.flags & SVC_SCHED_LC != 0 {
        v.flags |= FLOW_COUNTED;
        v.last_seen = now_units();
    }
}

#[inline(always)]
pub fn counted(id: u32) {
    conns_add(id, 1);
}

/// A SYN keeps an earlier connection's entry on this 5-tuple (`select::backend_for`):
/// counted again if that connection's close was seen, as one connection if not (a
/// reused port whose close went unseen, or a forged SYN on a live connection).
#[inline(always)]
pub fn reopen(svc: &Service, v: *mut FlowValue) {
    unsafe {
        if (*v).flags & FLOW_COUNTED == 0 && svc.flags & SVC_SCHED_LC != 0 {
            count_new(svc, &mut *v);
            conns_add((*v).backend_id, 1);
        }
    }
}

/// An entry that is going away (overwritten by a new SYN on its 5-tuple, or by a
/// retransmitted first packet): give its count back.
#[inline(always)]
pub fn forget(v: &FlowValue) {
    if v.flags & FLOW_COUNTED != 0 {
        conns_add(v.backend_id, -1);
    }
}

/// A packet of a counted flow: the first FIN or RST (from either side) ends the
/// connection for least-conn, once; any other packet refreshes `last_seen`, written
/// only when it changes so an established flow's entry is not dirtied per packet.
/// Not atomic across CPUs: two closing packets of one flow on two CPUs at once may
/// both take the count back; the control plane's reconciliation repairs that.
#[inline(always)]
pub fn track(v: *mut FlowValue, tcp_flags: u8) {
    unsafe {
        if (*v).flags & FLOW_COUNTED == 0 {
            return;
        }
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            (*v).flags &= !FLOW_COUNTED;
            conns_add((*v).backend_id, -1);
            return;
        }
        let now = now_units();
        if (*v).last_seen != now {
            (*v).last_seen = now;
        }
    }
}

#[inline(always)]
fn now_units() -> u32 {
    (unsafe { bpf_ktime_get_coarse_ns() } >> LAST_SEEN_SHIFT) as u32
}
