//! Least-conn reconciliation: the connection count of each backend recomputed from
//! the flow tables, which the control plane writes over the kernel's running counts
//! (CONNS) now and then. The kernel adds one per new flow and takes one back on the
//! first FIN or RST it sees; LRU eviction is silent, UDP has no close, and a DSR
//! balancer never sees the backend's side, so without this the counts would drift.

use std::collections::HashMap;

use xdp_lb_common::{FlowKey, FlowValue, FLOW_COUNTED, LAST_SEEN_SHIFT, PROTO_UDP};

/// A UDP "connection" of a least-conn service ends when its flow has been idle this
/// long (it has no close of its own); seconds.
pub const UDP_IDLE_SECS: u64 = 30;
/// A TCP connection whose FIN/RST the balancer never saw (the backend reset it in
/// DSR mode, the client vanished) stops counting after this much silence; seconds.
pub const TCP_IDLE_SECS: u64 = 900;
/// How often the counts are reconciled (at most: the walk is paced by its own cost).
pub const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// `FlowValue::last_seen` units of CLOCK_MONOTONIC_COARSE now, as the kernel writes them.
pub fn now_units() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC_COARSE is bpf_ktime_get_coarse_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    (ns >> LAST_SEEN_SHIFT) as u32
}

fn secs_to_units(secs: u64) -> u32 {
    ((secs * 1_000_000_000) >> LAST_SEEN_SHIFT) as u32
}

/// Open connections per backend id among `entries`, for the backends in `current`
/// (id -> generation of its current occupant): entries still marked counted, of that
/// occupant, not idle past their protocol's limit. Every id of `current` is present
/// in the result, 0 if it has none.
pub fn count<'a>(
    entries: impl IntoIterator<Item = (&'a FlowKey, &'a FlowValue)>,
    current: &HashMap<u32, u32>,
    now: u32,
) -> HashMap<u32, i64> {
    let mut out: HashMap<u32, i64> = current.keys().map(|&id| (id, 0)).collect();
    let (udp_idle, tcp_idle) = (secs_to_units(UDP_IDLE_SECS), secs_to_units(TCP_IDLE_SECS));
    for (k, v) in entries {
        if v.flags & FLOW_COUNTED == 0 || current.get(&v.backend_id) != Some(&v.generation) {
            continue;
        }
        let idle = now.wrapping_sub(v.last_seen);
        let limit = if k.proto == PROTO_UDP {
            udp_idle
        } else {
            tcp_idle
        };
        // A last_seen a little ahead of `now` (the two clocks read at different
        // moments) wraps to a huge idle time: allow one unit of skew.
        if idle > limit && idle != u32::MAX {
            continue;
        }
        *out.entry(v.backend_id).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdp_lb_common::PROTO_TCP;

    fn entry(
        proto: u8,
        id: u32,
        generation: u32,
        flags: u32,
        last_seen: u32,
    ) -> (FlowKey, FlowValue) {
        (
            FlowKey {
                proto,
                ..Default::default()
            },
            FlowValue {
                backend_id: id,
                generation,
                flags,
                last_seen,
                ..Default::default()
            },
        )
    }

    #[test]
    fn counts_open_current_fresh_flows_only() {
        let now = 10_000;
        let udp_limit = secs_to_units(UDP_IDLE_SECS);
        let tcp_limit = secs_to_units(TCP_IDLE_SECS);
        let entries = [
            entry(PROTO_TCP, 1, 5, FLOW_COUNTED, now),
            entry(PROTO_TCP, 1, 5, FLOW_COUNTED, now - tcp_limit),
            // Closed (FIN seen), a former occupant, another algorithm's flow.
            entry(PROTO_TCP, 1, 5, 0, now),
            entry(PROTO_TCP, 1, 4, FLOW_COUNTED, now),
            entry(PROTO_TCP, 9, 1, FLOW_COUNTED, now),
            // Idle TCP past its limit.
            entry(PROTO_TCP, 2, 7, FLOW_COUNTED, now - tcp_limit - 1),
            // UDP: fresh counts, idle past 30 s does not.
            entry(PROTO_UDP, 2, 7, FLOW_COUNTED, now - udp_limit),
            entry(PROTO_UDP, 2, 7, FLOW_COUNTED, now - udp_limit - 1),
            // Written by the kernel just after `now` was read.
            entry(PROTO_UDP, 2, 7, FLOW_COUNTED, now + 1),
        ];
        let current = HashMap::from([(1, 5), (2, 7), (3, 1)]);
        let got = count(entries.iter().map(|(k, v)| (k, v)), &current, now);
        assert_eq!(got, HashMap::from([(1, 2), (2, 2), (3, 0)]));
    }
}
