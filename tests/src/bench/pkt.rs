//! Per-packet cost of the data plane, measured with BPF_PROG_TEST_RUN.
//!
//! The kernel's repeat loop does not restore the buffer between iterations, so every
//! case runs through `xdp_bench_wrapper`, which copies the saved frame back (and, for
//! many-flow cases, writes the iteration's flow number into it) and tail-calls the
//! program under test. The same wrapper around an empty XDP_TX target, with the same
//! frame settings, runs right after each case in the same round: the case's net
//! figure for that round is the difference. Each case's action, output frame and
//! counters are checked, so every figure is the path it names. The "tc:" cases run
//! `tc_lb` the same way on an skb (`tc_bench_wrapper`, net of its own empty target),
//! their TC_ACT_* actions read as the XDP ones the checks expect.
//!
//! Stability: one-flow cases repeat millions of times per run, a warm-up round is
//! discarded, and the rounds interleave the cases (the order of case and empty
//! target alternates between rounds). The report gives the median net figure over
//! the rounds with its min-max, the repeats, and the flow tables' map types and sizes.
use anyhow::{bail, ensure, Context as _};
use aya::util::nr_cpus;
use xdp_lb::dataplane::{AyaDataplane, Dataplane as _, PROGRAM};
use xdp_lb_common::{
    BenchFrame, BENCH_FRAME_MAX, PROTO_TCP, PROTO_UDP, SVC_FWD_DSR, SVC_SCHED_LC, SVC_SCHED_P2C,
    SVC_SCHED_RR,
};

use crate::pkt::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// Measured rounds (after one discarded warm-up round); the figure is their median.
const ROUNDS: usize = 7;
/// Iterations of one run of a one-flow case: a one-flow run takes 0.05-0.5 s, long
/// enough that the kernel's integer ns-per-iteration and timer reads do not matter.
const ONE_FLOW_REPEAT: u32 = 2_000_000;
const MANY_FLOWS: u32 = 1_000_000;
/// New keys per new-flow run; every round takes fresh ones.
const NEW_FLOW_REPEAT: u32 = 200_000;
/// Flow-table capacity: the 2M established flows (IPv4 and IPv6) and one promotion
/// run's 200k (taken out after each run, `remove_promoted`), so no FLOWS insert
/// evicts. First packets go to EMBRYOS (`embryo_table_size` of this): the new-flow
/// cases fill it within the first rounds, and from then on every one pays an LRU
/// eviction alike, as a busy balancer's do. `XDP_LB_BENCH_FLOW_TABLE=N` loads N
/// entries instead, to compare table sizes on the established cases (below 2.2M the
/// promotions evict established flows); 8M keeps the figures comparable with earlier
/// runs.
const FLOW_TABLE: u32 = 8 << 20;

fn flow_table() -> u32 {
    std::env::var("XDP_LB_BENCH_FLOW_TABLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FLOW_TABLE)
}
/// `XDP_LB_BENCH_IPV6_FLOWS=0`: populate the IPv4 million only, and leave out the
/// cases that walk an IPv6 million. With `XDP_LB_BENCH_FLOW_TABLE=4194303` (a size
/// that is not a power of two is loaded as given: 4M buckets) that is Katran's own
/// set-up, a million flows in a 4M-entry table (README: Katran on this machine).
fn ipv6_million() -> bool {
    std::env::var("XDP_LB_BENCH_IPV6_FLOWS").map_or(true, |v| v != "0")
}

/// Tables whose type and size the report prints.
const REPORTED_MAPS: [&str; 6] = [
    "FLOWS",
    "EMBRYO_SLOTS",
    "EMBRYOS",
    "NAT_REVERSE",
    "EMBRYO_REVERSE",
    "SERVICES",
];

/// Backends of the scheduler cases (the bound for least-conn's scan).
const POOL: u32 = 256;
/// Their backend slots start after the bed's six.
const POOL_FIRST: u32 = 6;
/// Maglev table of the 256-backend case: the largest prime below the bed's ring stride.
const POOL_MAGLEV: u32 = 65521;
/// Scheduler services (DSR TCP, so they share no NAT reply state with the bed's
/// port-80 services): (service id, port, flags).
const SCHED_SERVICES: [(u32, u16, u32); 5] = [
    (3, 81, SVC_FWD_DSR),
    (4, 82, SVC_FWD_DSR | SVC_SCHED_RR),
    (5, 83, SVC_FWD_DSR | SVC_SCHED_RR),
    (6, 84, SVC_FWD_DSR | SVC_SCHED_LC),
    (7, 85, SVC_FWD_DSR | SVC_SCHED_LC | SVC_SCHED_P2C),
];

/// Katran's XDP balancer (`balancer.bpf.c`) measured the same way on this machine
/// kind, net ns (README: Katran on this machine): its LRU in this bench's shape (8M
/// entries, 1M walked flows among 2M); the new flow with its flood guard raised, so
/// that every SYN writes the LRU as one of ours writes its table.
const ANCHORS: [(&str, &str); 4] = [
    ("VIP established, 1 flow", "61-63"),
    ("VIP established, 1M flows", "291-326"),
    ("non-VIP packet (XDP_PASS)", "20-21"),
    ("VIP new flow (flow-table write)", "534-553"),
];

/// Katran at a million flows in its own set-up (1M flows in a 4M-entry LRU), the
/// shape `XDP_LB_BENCH_IPV6_FLOWS=0 XDP_LB_BENCH_FLOW_TABLE=4194303` gives this bench.
const KATRAN_1M_OWN_SET_UP: &str = "203-240";

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Lb,
    Floor,
    /// The floor plus reads of the flow entry's value (xdp_floor_value).
    FloorValue,
    Empty,
    /// Parse + L4 checksum verification (xdp_bench_l4_csum).
    L4Csum,
    /// IPv4 header checksum test alone (xdp_bench_ip_csum).
    IpCsum,
    /// The service path stopped after this step (xdp_bench_step1..6).
    Step(u8),
    /// A flow's first packet stopped after this step (xdp_bench_new1..7).
    New(u8),
    /// The balancer on an skb (`tc_lb`), through `tc_bench_wrapper`.
    Tc,
    /// The empty tc target (`tc_bench_empty`).
    TcEmpty,
}

/// The steps `xdp_bench_stepN` stops after, in order (see `service_path_until`).
const STEPS: [&str; 6] = [
    "step 1: parse",
    "step 2: + SERVICES lookup",
    "step 3: + validate + flow lookup",
    "step 4: + service/backend counters",
    "step 5: + next hop (cached)",
    "step 6: + NAT rewrite, checksums",
];
const STEPS_1M: [&str; 6] = [
    "step 1: parse, 1M flows",
    "step 2: + SERVICES lookup, 1M flows",
    "step 3: + validate + flow lookup, 1M",
    "step 4: + counters, 1M flows",
    "step 5: + next hop, 1M flows",
    "step 6: + NAT rewrite, 1M flows",
];

/// The steps `xdp_bench_newN` stops after (see `first_packet_until`), for a SYN
/// and for a DSR service's first datagram, each with fresh keys.
const NEW_STEPS: [&str; 7] = [
    "new SYN step 1: parse",
    "new SYN step 2: + SERVICES",
    "new SYN step 3: + header checks",
    "new SYN step 4: + L4 checksum",
    "new SYN step 5: + FLOWS, EMBRYOS miss",
    "new SYN step 6: + scheduler pick",
    "new SYN step 7: + EMBRYOS insert",
];
const NEW_STEPS_DSR: [&str; 7] = [
    "new DSR step 1: parse",
    "new DSR step 2: + FLOWS+slot+EMBRYOS miss",
    "new DSR step 3: + header checks",
    "new DSR step 4: + L4 checksum",
    "new DSR step 5: (no stale lookup)",
    "new DSR step 6: + scheduler pick",
    "new DSR step 7: + slot write",
];

/// What a case's frames look like and how they vary.
#[derive(Clone)]
struct FrameSpec {
    frame: Vec<u8>,
    flows: u32,
    port_off: u16,
    addr_off: u16,
    /// IPv4 header checksum offset (0: IPv6), patched by the wrapper when it varies
    /// the address.
    ip_check_off: u16,
    /// L4 checksum offset, patched when it varies the port and address.
    l4_check_off: u16,
}

/// Checksum offsets of an untagged IPv4 (TCP or UDP) frame.
const V4_IP_CHECK: u16 = 14 + 10;
const V4_TCP_CHECK: u16 = 14 + 20 + 16;
const V4_UDP_CHECK: u16 = 14 + 20 + 6;
const V6_TCP_CHECK: u16 = 14 + 40 + 16;

/// Where a case's flow numbers start.
#[derive(Clone, Copy)]
enum Keys {
    /// The same flows every round (established flows made before the rounds).
    At(u32),
    /// New keys every round (the new-flow cases).
    Fresh,
    /// The keys of the previous fresh-key case of the round (its flows' next packet).
    LastFresh,
}

struct Case {
    name: &'static str,
    target: Target,
    spec: FrameSpec,
    repeat: u32,
    keys: Keys,
    check: fn(&mut AyaDataplane, &Outcome) -> anyhow::Result<()>,
}

struct Outcome {
    action: u32,
    out: Vec<u8>,
    repeat: u32,
    before: Counts,
    after: Counts,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    new_flows: u64,
    nat_reply: u64,
    promoted: u64,
}

pub fn run() -> anyhow::Result<()> {
    let mut result = None;
    with_bed(|bed| result = Some(measure(bed)));
    let (rows, setting) = result.context("bench bed did not run")??;
    print_report(&rows, &setting);
    Ok(())
}

/// The 1-, 5- and 15-minute load averages (the machine is shared: say how busy it was).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A SYN: every iteration opens a connection.
fn v4_syn_frame(flows: u32) -> FrameSpec {
    FrameSpec {
        frame: v4(
            PROTO_TCP, CLIENT4, VIP4, 40000, 80, 64, CLIENT_MAC, LB_MAC, b"",
        ),
        ..v4_frame(flows)
    }
}

/// A SYN to scheduler service port `port`: every iteration opens a connection.
fn sched_syn_frame(port: u16, flows: u32) -> FrameSpec {
    FrameSpec {
        frame: v4(
            PROTO_TCP, CLIENT4, VIP4, 40000, port, 64, CLIENT_MAC, LB_MAC, b"",
        ),
        ..v4_frame(flows)
    }
}

/// An ACK to scheduler service port `port`.
fn sched_ack_frame(port: u16, flows: u32) -> FrameSpec {
    FrameSpec {
        frame: tcp_ack(
            CLIENT4.into(),
            VIP4.into(),
            40000,
            port,
            64,
            CLIENT_MAC,
            LB_MAC,
            b"",
        ),
        ..v4_frame(flows)
    }
}

/// An ACK of an established connection.
fn v4_frame(flows: u32) -> FrameSpec {
    FrameSpec {
        frame: tcp_ack(
            CLIENT4.into(),
            VIP4.into(),
            40000,
            80,
            64,
            CLIENT_MAC,
            LB_MAC,
            b"",
        ),
        flows,
        port_off: 14 + 20,     // TCP source port
        addr_off: 14 + 12 + 2, // low half of the IPv4 source address
        ip_check_off: V4_IP_CHECK,
        l4_check_off: V4_TCP_CHECK,
    }
}

/// The DSR UDP service's port: an endpoint of its own (not the NAT VIP's :80), so
/// that its packets skip EMBRYOS as a DSR-only endpoint's do (SLOT_ENDPOINTS).
const DSR_UDP_PORT: u16 = 53;

/// UDP to the DSR service: new flows write the flow table only (no reverse entry).
fn dsr_frame(flows: u32) -> FrameSpec {
    dsr_frame_with(flows, b"")
}

/// `dsr_frame` with a payload: the checksum verification scales with it.
fn dsr_frame_with(flows: u32, payload: &[u8]) -> FrameSpec {
    FrameSpec {
        frame: v4(
            PROTO_UDP,
            CLIENT4,
            VIP4,
            40000,
            DSR_UDP_PORT,
            64,
            CLIENT_MAC,
            LB_MAC,
            payload,
        ),
        flows,
        port_off: 14 + 20,
        addr_off: 14 + 12 + 2,
        ip_check_off: V4_IP_CHECK,
        l4_check_off: V4_UDP_CHECK,
    }
}

/// A SYN whose TCP checksum is wrong: dropped before the flow table.
fn bad_syn_frame() -> FrameSpec {
    let mut spec = v4_syn_frame(0);
    spec.frame = with_bad_l4_checksum(spec.frame);
    spec
}

fn v6_frame(flows: u32) -> FrameSpec {
    FrameSpec {
        frame: tcp_ack(
            CLIENT6.into(),
            VIP6.into(),
            40000,
            80,
            64,
            CLIENT_MAC,
            LB_MAC,
            b"",
        ),
        flows,
        port_off: 14 + 40,
        addr_off: 14 + 8 + 14, // last 16 bits of the IPv6 source address
        ip_check_off: 0,
        l4_check_off: V6_TCP_CHECK,
    }
}

fn reply_frame(flows: u32) -> FrameSpec {
    FrameSpec {
        frame: tcp_ack(
            BACKENDS4[0].into(),
            CLIENT4.into(),
            BACKEND_PORT,
            40000,
            64,
            BACKEND_MACS[0],
            LB_MAC,
            b"",
        ),
        flows,
        port_off: 14 + 20 + 2, // TCP destination port (the client's)
        addr_off: 14 + 16 + 2, // low half of the IPv4 destination (the client)
        ip_check_off: V4_IP_CHECK,
        l4_check_off: V4_TCP_CHECK,
    }
}

/// A router's fragmentation-needed about the VIP -> client packet of the
/// established flow of `v4_frame(0)`: translated and sent to the flow's backend.
fn icmp_frame() -> FrameSpec {
    let reply = tcp_ack(
        VIP4.into(),
        CLIENT4.into(),
        80,
        40000,
        63,
        LB_MAC,
        CLIENT_MAC,
        &[0; 64],
    );
    FrameSpec {
        frame: icmp_error(
            "198.18.0.254".parse().expect("an address"),
            VIP4.into(),
            64,
            (CLIENT_MAC, LB_MAC),
            Some(1280),
            &reply[14..],
        ),
        flows: 0,
        port_off: 0,
        addr_off: 0,
        ip_check_off: 0,
        l4_check_off: 0,
    }
}

fn non_vip_frame() -> FrameSpec {
    FrameSpec {
        frame: v4(
            PROTO_TCP,
            CLIENT4,
            std::net::Ipv4Addr::new(198, 18, 100, 2),
            40000,
            80,
            64,
            CLIENT_MAC,
            LB_MAC,
            b"",
        ),
        flows: 0,
        port_off: 0,
        addr_off: 0,
        ip_check_off: 0,
        l4_check_off: 0,
    }
}

fn expect_tx(_: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    ensure!(o.action == XDP_TX, "action {} instead of XDP_TX", o.action);
    Ok(())
}

fn expect_established(dp: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    expect_tx(dp, o)?;
    ensure!(o.out[0..6] == BACKEND_MACS[0], "not sent to backend 0");
    ensure!(
        o.after.new_flows == o.before.new_flows,
        "{} new flows during an established-flow run",
        o.after.new_flows - o.before.new_flows
    );
    Ok(())
}

fn expect_new_flows(dp: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    expect_tx(dp, o)?;
    let n = o.after.new_flows - o.before.new_flows;
    ensure!(
        n == o.repeat as u64,
        "{n} new flows in {} packets",
        o.repeat
    );
    Ok(())
}

/// Second packets of flows whose entry may have been overwritten in its slot: each
/// one promoted, or dispatched afresh (by the same hash) and embryonic again.
fn expect_promoted_or_dispatched(dp: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    expect_tx(dp, o)?;
    let promoted = o.after.promoted - o.before.promoted;
    let dispatched = o.after.new_flows - o.before.new_flows;
    ensure!(
        promoted > 0 && promoted + dispatched == o.repeat as u64,
        "{promoted} promotions and {dispatched} new dispatches in {} packets",
        o.repeat
    );
    Ok(())
}

fn expect_replies(dp: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    expect_tx(dp, o)?;
    ensure!(o.out[0..6] == CLIENT_MAC, "reply not sent to the client");
    let n = o.after.nat_reply - o.before.nat_reply;
    ensure!(
        n == o.repeat as u64,
        "{n} NAT replies in {} packets",
        o.repeat
    );
    Ok(())
}

fn expect_icmp_to_backend(dp: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    expect_tx(dp, o)?;
    ensure!(o.out[0..6] == BACKEND_MACS[0], "not sent to backend 0");
    ensure!(
        o.out[30..34] == BACKENDS4[0].octets(),
        "destination not translated"
    );
    Ok(())
}

fn expect_pass(_: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    ensure!(
        o.action == XDP_PASS,
        "action {} instead of XDP_PASS",
        o.action
    );
    ensure!(o.out == non_vip_frame().frame, "pass-through frame changed");
    Ok(())
}

fn expect_floor(_: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    ensure!(o.action == XDP_TX, "floor returned {}", o.action);
    Ok(())
}

/// The checksum programs answer XDP_TX only for a frame whose checksum is right.
fn expect_csum_ok(_: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    ensure!(o.action == XDP_TX, "checksum rejected ({})", o.action);
    Ok(())
}

/// A step program answers XDP_TX only when every step up to its own succeeded.
fn expect_step(_: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    ensure!(o.action == XDP_TX, "step program returned {}", o.action);
    ensure!(
        o.after.new_flows == o.before.new_flows,
        "a step run created flows"
    );
    Ok(())
}

fn expect_dropped(_: &mut AyaDataplane, o: &Outcome) -> anyhow::Result<()> {
    ensure!(
        o.action == XDP_DROP,
        "action {} instead of XDP_DROP",
        o.action
    );
    ensure!(
        o.after.new_flows == o.before.new_flows,
        "a dropped packet created a flow"
    );
    Ok(())
}

fn cases() -> Vec<Case> {
    let established_base = 1 << 20;
    let c = |name, target, spec, repeat, check| Case {
        name,
        target,
        spec,
        repeat,
        keys: Keys::At(established_base),
        check,
    };
    let mut v = vec![
        c(
            "floor: parse + lookup + XDP_TX",
            Target::Floor,
            v4_frame(0),
            ONE_FLOW_REPEAT,
            expect_floor as fn(&mut AyaDataplane, &Outcome) -> anyhow::Result<()>,
        ),
        c(
            "non-VIP packet (XDP_PASS)",
            Target::Lb,
            non_vip_frame(),
            ONE_FLOW_REPEAT,
            expect_pass,
        ),
        c(
            "VIP established, 1 flow",
            Target::Lb,
            v4_frame(0),
            ONE_FLOW_REPEAT,
            expect_established,
        ),
        c(
            "tc: non-VIP packet (TC_ACT_OK)",
            Target::Tc,
            non_vip_frame(),
            ONE_FLOW_REPEAT,
            expect_pass,
        ),
        c(
            "tc: VIP established, 1 flow",
            Target::Tc,
            v4_frame(0),
            ONE_FLOW_REPEAT,
            expect_established,
        ),
        c(
            "tc: IPv6 established, 1 flow",
            Target::Tc,
            v6_frame(0),
            ONE_FLOW_REPEAT,
            expect_established,
        ),
        c(
            "tc: NAT reply, 1 flow",
            Target::Tc,
            reply_frame(0),
            ONE_FLOW_REPEAT,
            expect_replies,
        ),
        c(
            "IPv6 established, 1 flow",
            Target::Lb,
            v6_frame(0),
            ONE_FLOW_REPEAT,
            expect_established,
        ),
        c(
            "NAT reply, 1 flow",
            Target::Lb,
            reply_frame(0),
            ONE_FLOW_REPEAT,
            expect_replies,
        ),
        // After "VIP established, 1 flow" in every round, which made its flow.
        c(
            "ICMP frag-needed to a NAT backend",
            Target::Lb,
            icmp_frame(),
            ONE_FLOW_REPEAT,
            expect_icmp_to_backend,
        ),
        Case {
            name: "VIP new flow (flow-table write)",
            target: Target::Lb,
            spec: v4_syn_frame(NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        // The same flows' ACKs, right after their SYNs: each moves from its slot (or
        // EMBRYOS) to FLOWS, the insert into the large table a new flow pays on its
        // second packet, or, where a later SYN of the slot overwrote the entry once
        // it was older than the guard, is dispatched again by the hash.
        Case {
            name: "VIP flow's 2nd packet (promotion)",
            target: Target::Lb,
            spec: v4_frame(NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::LastFresh,
            check: expect_promoted_or_dispatched,
        },
        Case {
            name: "tc: VIP new flow (flow-table write)",
            target: Target::Tc,
            spec: v4_syn_frame(NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        Case {
            name: "tc: VIP flow's 2nd packet (promotion)",
            target: Target::Tc,
            spec: v4_frame(NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::LastFresh,
            check: expect_promoted_or_dispatched,
        },
        Case {
            name: "DSR new flow (flow-table write)",
            target: Target::Lb,
            spec: dsr_frame(NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        // The same flows' second datagrams: promoted from their slots, or dispatched
        // again where a later flow of the slot overwrote the entry.
        Case {
            name: "DSR flow's 2nd datagram",
            target: Target::Lb,
            spec: dsr_frame(NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::LastFresh,
            check: expect_promoted_or_dispatched,
        },
        Case {
            name: "new flow, Maglev, 256 backends (DSR)",
            target: Target::Lb,
            spec: sched_syn_frame(81, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        // The same flows' ACKs: promoted from their slots (EMBRYO_SLOTS), or, where a
        // later SYN of the slot overwrote the entry, dispatched again by the hash.
        Case {
            name: "Maglev flow's 2nd packet (DSR)",
            target: Target::Lb,
            spec: sched_ack_frame(81, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::LastFresh,
            check: expect_promoted_or_dispatched,
        },
        Case {
            name: "new flow, round-robin, 256 backends",
            target: Target::Lb,
            spec: sched_syn_frame(82, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        // The same flows' ACKs, promoted from EMBRYOS (here and for least-conn
        // below). Without them each round left 600k handshakes in the 262k-entry
        // EMBRYOS, so that later inserts there evicted one (as under a SYN flood): the
        // round-robin rows read 785-811 ns in full runs then, 626-725 with them.
        Case {
            name: "round-robin flow's 2nd packet",
            target: Target::Lb,
            spec: sched_ack_frame(82, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::LastFresh,
            check: expect_promoted_or_dispatched,
        },
        Case {
            name: "new flow, weighted RR, 256 backends",
            target: Target::Lb,
            spec: sched_syn_frame(83, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        Case {
            name: "weighted RR flow's 2nd packet",
            target: Target::Lb,
            spec: sched_ack_frame(83, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::LastFresh,
            check: expect_promoted_or_dispatched,
        },
        Case {
            name: "new flow, least-conn, 256 backends",
            target: Target::Lb,
            spec: sched_syn_frame(84, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        Case {
            name: "least-conn flow's 2nd packet",
            target: Target::Lb,
            spec: sched_ack_frame(84, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::LastFresh,
            check: expect_promoted_or_dispatched,
        },
        Case {
            name: "new flow, random-two-least-conn, 256",
            target: Target::Lb,
            spec: sched_syn_frame(85, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        Case {
            name: "random-two-least-conn 2nd packet",
            target: Target::Lb,
            spec: sched_ack_frame(85, NEW_FLOW_REPEAT),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::LastFresh,
            check: expect_promoted_or_dispatched,
        },
        Case {
            name: "DSR new flow, 1400-byte datagram",
            target: Target::Lb,
            spec: dsr_frame_with(NEW_FLOW_REPEAT, &[0xa5; 1400]),
            repeat: NEW_FLOW_REPEAT,
            keys: Keys::Fresh,
            check: expect_new_flows,
        },
        c(
            "SYN with a bad checksum (dropped)",
            Target::Lb,
            bad_syn_frame(),
            ONE_FLOW_REPEAT,
            expect_dropped,
        ),
        c(
            "check: IPv4 header checksum",
            Target::IpCsum,
            v4_frame(0),
            ONE_FLOW_REPEAT,
            expect_csum_ok,
        ),
        c(
            "check: parse + L4 csum, SYN (20 B)",
            Target::L4Csum,
            v4_syn_frame(0),
            ONE_FLOW_REPEAT,
            expect_csum_ok,
        ),
        c(
            "check: parse + L4 csum, UDP 1408 B",
            Target::L4Csum,
            dsr_frame_with(0, &[0xa5; 1400]),
            ONE_FLOW_REPEAT,
            expect_csum_ok,
        ),
        c(
            "floor, 1M flows",
            Target::Floor,
            v4_frame(MANY_FLOWS),
            MANY_FLOWS,
            expect_floor,
        ),
        c(
            "floor, IPv6, 1M flows",
            Target::Floor,
            v6_frame(MANY_FLOWS),
            MANY_FLOWS,
            expect_floor,
        ),
        c(
            "floor + value read, 1M flows",
            Target::FloorValue,
            v4_frame(MANY_FLOWS),
            MANY_FLOWS,
            expect_floor,
        ),
        c(
            "floor + value read, IPv6, 1M flows",
            Target::FloorValue,
            v6_frame(MANY_FLOWS),
            MANY_FLOWS,
            expect_floor,
        ),
        c(
            "non-VIP: parse + endpoint filter",
            Target::Step(2),
            non_vip_frame(),
            ONE_FLOW_REPEAT,
            expect_step,
        ),
        c(
            "VIP established, 1M flows",
            Target::Lb,
            v4_frame(MANY_FLOWS),
            MANY_FLOWS,
            expect_established,
        ),
        c(
            "IPv6 established, 1M flows",
            Target::Lb,
            v6_frame(MANY_FLOWS),
            MANY_FLOWS,
            expect_established,
        ),
        c(
            "NAT reply, 1M flows",
            Target::Lb,
            reply_frame(MANY_FLOWS),
            MANY_FLOWS,
            expect_replies,
        ),
        c(
            "tc: VIP established, 1M flows",
            Target::Tc,
            v4_frame(MANY_FLOWS),
            MANY_FLOWS,
            expect_established,
        ),
    ];
    // The established path step by step, one flow and a million.
    for (i, (one, many)) in STEPS.into_iter().zip(STEPS_1M).enumerate() {
        let step = Target::Step(i as u8 + 1);
        v.push(c(one, step, v4_frame(0), ONE_FLOW_REPEAT, expect_step));
        v.push(c(many, step, v4_frame(MANY_FLOWS), MANY_FLOWS, expect_step));
    }
    // A new flow step by step: a SYN and a DSR service's first datagram, fresh keys.
    for (i, (syn, dsr)) in NEW_STEPS.into_iter().zip(NEW_STEPS_DSR).enumerate() {
        let step = Target::New(i as u8 + 1);
        for (name, spec) in [
            (syn, v4_syn_frame(NEW_FLOW_REPEAT)),
            (dsr, dsr_frame(NEW_FLOW_REPEAT)),
        ] {
            v.push(Case {
                name,
                target: step,
                spec,
                repeat: NEW_FLOW_REPEAT,
                keys: Keys::Fresh,
                check: expect_step,
            });
        }
    }
    // SYNs on the 5-tuples of the established flows (port reuse): each keeps its
    // flow's FLOWS entry and backend (active), so the established cases of later
    // rounds meet the same table. Last in the round all the same. An object from
    // before the in-place takeover would delete those entries and make the flows
    // embryonic instead: its established rows are then promotions, not comparable.
    v.push(c(
        "VIP SYN on a reused 5-tuple, 1 flow",
        Target::Lb,
        v4_syn_frame(0),
        ONE_FLOW_REPEAT,
        expect_new_flows,
    ));
    v.push(c(
        "VIP SYN on a reused 5-tuple, 1M",
        Target::Lb,
        v4_syn_frame(MANY_FLOWS),
        MANY_FLOWS,
        expect_new_flows,
    ));
    // `XDP_LB_BENCH_CASES=a,b` runs only the cases whose names contain a or b.
    if let Ok(filter) = std::env::var("XDP_LB_BENCH_CASES") {
        let words: Vec<&str> = filter.split(',').filter(|w| !w.is_empty()).collect();
        v.retain(|c| words.iter().any(|w| c.name.contains(w)));
    }
    if !ipv6_million() {
        v.retain(|c| !(c.name.contains("IPv6") && c.name.contains("1M")));
    }
    v
}

struct Row {
    name: &'static str,
    repeat: u32,
    /// Median over the rounds of the case's own ns per iteration.
    gross: f64,
    /// Net ns per iteration (case minus the empty target, same round): median, min, max.
    net: Spread,
    /// A/B runs: B's net figure, and the per-round ratio of B's net to A's.
    b: Option<(Spread, Spread)>,
}

/// Median and range of one figure over the rounds.
#[derive(Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Self {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: if s.is_empty() {
                f64::NAN
            } else if s.len() % 2 == 1 {
                s[s.len() / 2]
            } else {
                (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
            },
            min: s.first().copied().unwrap_or(f64::NAN),
            max: s.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// What the report says about the run besides the rows.
struct Setting {
    cpu: usize,
    tables: Vec<String>,
    load_before: String,
    load_after: String,
    seconds: f64,
}

impl Target {
    fn program(self) -> &'static str {
        match self {
            Target::Lb => PROGRAM,
            Target::Floor => "xdp_floor",
            Target::FloorValue => "xdp_floor_value",
            Target::Empty => "xdp_bench_empty",
            Target::L4Csum => "xdp_bench_l4_csum",
            Target::IpCsum => "xdp_bench_ip_csum",
            Target::Step(1) => "xdp_bench_step1",
            Target::Step(2) => "xdp_bench_step2",
            Target::Step(3) => "xdp_bench_step3",
            Target::Step(4) => "xdp_bench_step4",
            Target::Step(5) => "xdp_bench_step5",
            Target::Step(_) => "xdp_bench_step6",
            Target::New(1) => "xdp_bench_new1",
            Target::New(2) => "xdp_bench_new2",
            Target::New(3) => "xdp_bench_new3",
            Target::New(4) => "xdp_bench_new4",
            Target::New(5) => "xdp_bench_new5",
            Target::New(6) => "xdp_bench_new6",
            Target::New(_) => "xdp_bench_new7",
            Target::Tc => xdp_lb::dataplane::TC_PROGRAM,
            Target::TcEmpty => "tc_bench_empty",
        }
    }

    /// Runs on an skb through `tc_bench_wrapper`.
    fn is_tc(self) -> bool {
        matches!(self, Target::Tc | Target::TcEmpty)
    }

    /// The wrapper around nothing that is subtracted from this target's figures.
    fn empty(self) -> Target {
        if self.is_tc() {
            Target::TcEmpty
        } else {
            Target::Empty
        }
    }
}

struct Harness {
    dp: AyaDataplane,
    ifindex: u32,
}

fn pin_to_last_cpu() -> usize {
    let cpu = nr_cpus().map(|n| n - 1).unwrap_or(0);
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity(0) affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    cpu
}

/// `XDP_LB_BENCH_AB=MAP=N[,MAP=N]`: a second copy of the program ("B") is loaded
/// with those maps' capacities, and every case runs on both copies in each round
/// (order alternating), so both see the same machine; the report adds B's figure and
/// the per-round ratio B/A. For table-size questions, where runs of their own differ
/// by more than the effect. `XDP_LB_BENCH_AB_OBJECT=FILE` makes B another build's
/// object (see `ab_object`).
fn ab_resize() -> anyhow::Result<Vec<(String, u32)>> {
    let Ok(spec) = std::env::var("XDP_LB_BENCH_AB") else {
        return Ok(Vec::new());
    };
    spec.split(',')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let (name, n) = w
                .split_once('=')
                .with_context(|| format!("XDP_LB_BENCH_AB: {w:?} is not MAP=ENTRIES"))?;
            let n = n
                .parse()
                .with_context(|| format!("XDP_LB_BENCH_AB: {n:?} is not a number of entries"))?;
            Ok((name.to_string(), n))
        })
        .collect()
}

/// `XDP_LB_BENCH_AB_OBJECT=FILE`: B runs this object, another build of
/// xdp-lb-ebpf (e.g. a copy of `target/release/build/xdp-lb-*/out/xdp-lb-ebpf` made
/// before a change), so that a change to the program is measured against its
/// predecessor in the same run. Its cases must pass the same checks.
fn ab_object() -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = std::env::var_os("XDP_LB_BENCH_AB_OBJECT") else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path)
        .with_context(|| format!("XDP_LB_BENCH_AB_OBJECT: reading {}", path.to_string_lossy()))?;
    Ok(Some(bytes))
}

/// One copy of the program, loaded and programmed as every case expects, with its
/// established flows made.
fn prepare(
    bed: &Bed,
    services: &[SvcSpec],
    flow_table: u32,
    resize: &[(String, u32)],
    object: Option<&[u8]>,
) -> anyhow::Result<(Harness, Vec<String>)> {
    let resize_ref: Vec<(&str, u32)> = resize.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let mut dp = bed.load_variant(services, flow_table, &resize_ref, object);
    for (name, n) in resize {
        let got = dp
            .map_info(map_name(name)?)
            .with_context(|| format!("XDP_LB_BENCH_AB: map {name}"))?
            .max_entries();
        ensure!(
            got == *n,
            "XDP_LB_BENCH_AB: {name} loaded with {got} entries, not {n}"
        );
    }
    // One backend, so every reply of every flow comes from the same address.
    for id in 0..3 {
        bed.publish_ring(&mut dp, id, &[0; RING as usize], 1);
    }
    publish_pool(bed, &mut dp);
    let mut tables = Vec::new();
    for name in REPORTED_MAPS {
        // An earlier build's object (A/B) may lack a map.
        let Ok(i) = dp.map_info(name) else {
            tables.push(format!("{name}: not in this object"));
            continue;
        };
        tables.push(format!(
            "{name}: {:?}, {} entries, key {} B, value {} B, flags {:#x}",
            i.map_type()?,
            i.max_entries(),
            i.key_size(),
            i.value_size(),
            i.map_flags()
        ));
    }
    // Which services' packets skip EMBRYOS (an earlier build's object lacks the map).
    if let Ok(specs) = services
        .iter()
        .map(|s| {
            let k = s.key();
            dp.slot_endpoint(k.addr, k.port)
                .map(|m| (m, u16::from_be(k.port)))
        })
        .collect::<Result<Vec<_>, _>>()
    {
        let marked: Vec<String> = specs
            .iter()
            .filter(|(m, _)| *m)
            .map(|(_, p)| format!(":{p}"))
            .collect();
        tables.push(format!(
            "SLOT_ENDPOINTS: set for {} (DSR, by hash: no EMBRYOS lookup)",
            marked.join(" ")
        ));
    }
    let ifindex = xdp_lb::dataplane::ifindex(LB_IF).context("bed interface")?;
    // The tc cases' way back out of the ingress is a redirect (`Prog::run`).
    dp.add_tc_port(LB_IF, ifindex).context("TC_PORTS")?;
    let mut h = Harness { dp, ifindex };

    // Establish the flows the "established" and "reply" cases hit. ACKs of unknown
    // flows create them too (a flow-table miss re-dispatches): the first pass puts
    // them in the embryonic table, the second promotes them to FLOWS. A flow whose
    // entry a later one of its chunk overwrote in its slot (EMBRYO_SLOTS; a NAT entry
    // is moved to EMBRYOS instead while younger than the guard) is dispatched again
    // by the second pass, so a chunk is run until a pass dispatches nothing. Chunks of
    // 8192 keep those few (and BPF_PROG_TEST_RUN calls, ~18 ms each here, fewer than
    // with smaller ones), and fit EMBRYOS many times over.
    // The two families' chunks alternate: a lookup walks past every entry inserted
    // later into its bucket (each a cache miss), so a family inserted whole before
    // the other paid for the other's million as well (+30-55 ns at 1M flows, the
    // "IPv4 slower than IPv6" of earlier runs, which swapped with the order).
    let chunk = (xdp_lb_common::embryo_table_size(flow_table) / 2).clamp(1, 8192);
    let mut parts = vec![(v4_frame(0), 0, 1), (v6_frame(0), 0, 1)];
    let mut done = 0;
    while done < MANY_FLOWS {
        let len = chunk.min(MANY_FLOWS - done);
        parts.push((v4_frame(len), done, len));
        if ipv6_million() {
            parts.push((v6_frame(len), done, len));
        }
        done += len;
    }
    for (part, done, len) in parts {
        // Every run walks its `flows` keys exactly once, so the wrapper's flow
        // counter ends where it started (see `vary`).
        let mut passes = 0;
        loop {
            let before = h.counts()?.new_flows;
            let r = h.run(Target::Lb, &part, (1 << 20) + done, len)?;
            ensure!(r.0 == XDP_TX, "populating flows: action {}", r.0);
            passes += 1;
            if passes >= 2 && h.counts()?.new_flows == before {
                break;
            }
            ensure!(
                passes < 8,
                "populating flows {done}..{}: still dispatching after {passes} passes",
                done + len
            );
        }
    }
    Ok((h, tables))
}

/// The object's name for a map the A/B spec names (map_info wants a static name).
fn map_name(name: &str) -> anyhow::Result<&'static str> {
    const RESIZABLE: [&str; 6] = [
        "FLOWS",
        "EMBRYO_SLOTS",
        "EMBRYOS",
        "NAT_REVERSE",
        "EMBRYO_REVERSE",
        "MAGLEV_RING",
    ];
    RESIZABLE
        .into_iter()
        .find(|m| *m == name)
        .with_context(|| format!("XDP_LB_BENCH_AB: {name} is not one of {RESIZABLE:?}"))
}

fn measure(bed: &Bed) -> anyhow::Result<(Vec<Row>, Setting)> {
    let started = std::time::Instant::now();
    let load_before = loadavg();
    let cpu = pin_to_last_cpu();
    let flow_table = flow_table();
    let resize = ab_resize()?;
    let object = ab_object()?;
    eprintln!(
        "bench: pinned to CPU {cpu}; loading with a {flow_table}-entry flow table{}",
        if ipv6_million() {
            ""
        } else {
            " (IPv4 million only)"
        }
    );
    let mut services = vec![
        svc_v4(PROTO_TCP, 0),
        svc_v6(PROTO_TCP),
        svc_v4(PROTO_UDP, SVC_FWD_DSR).on_port(DSR_UDP_PORT),
    ];
    for (id, port, flags) in SCHED_SERVICES {
        ensure!(
            id as usize == services.len(),
            "scheduler service ids out of order"
        );
        services.push(svc_v4(PROTO_TCP, flags).on_port(port));
    }
    // Many-flow replies go to clients 198.18.0.16-31 (flow number's high bits).
    for i in 0..=255 {
        bed.add_client_neighbour(&format!("198.18.0.{i}"));
    }
    let mut variants = vec![(Vec::new(), None)];
    if !resize.is_empty() || object.is_some() {
        eprintln!(
            "bench: A/B, B with {resize:?}{}",
            if object.is_some() {
                " and the object of XDP_LB_BENCH_AB_OBJECT"
            } else {
                ""
            }
        );
        variants.push((resize, object.as_deref()));
    }
    let mut hs = Vec::new();
    let mut tables = Vec::new();
    for (v, (resize, object)) in variants.iter().enumerate() {
        let (h, t) = prepare(bed, &services, flow_table, resize, *object)?;
        let tag = if variants.len() > 1 {
            ["A: ", "B: "][v]
        } else {
            ""
        };
        tables.extend(t.into_iter().map(|t| format!("{tag}{t}")));
        hs.push(h);
    }

    let cases = cases();
    // Per variant, per case: the rounds' gross and net figures.
    let mut gross = vec![vec![Vec::new(); cases.len()]; hs.len()];
    let mut net = vec![vec![Vec::new(); cases.len()]; hs.len()];
    let mut fresh = 1u32 << 24;
    // Round 0 warms caches, the JIT'd code and the tables' free lists; not counted.
    for round in 0..=ROUNDS {
        eprintln!("bench: round {round}/{ROUNDS} (load {})", loadavg());
        for (i, case) in cases.iter().enumerate() {
            let base = match case.keys {
                Keys::At(base) => base,
                Keys::Fresh => {
                    fresh = fresh.wrapping_add(case.repeat);
                    fresh
                }
                Keys::LastFresh => fresh,
            };
            let order: Vec<usize> = if round % 2 == 1 {
                (0..hs.len()).rev().collect()
            } else {
                (0..hs.len()).collect()
            };
            for v in order {
                let (g, n) = run_case(&mut hs[v], case, base, round)?;
                if round > 0 {
                    gross[v][i].push(g);
                    net[v][i].push(n);
                }
                if matches!(case.keys, Keys::LastFresh) {
                    hs[v].remove_promoted(case, base)?;
                }
            }
        }
    }
    let rows = cases
        .iter()
        .enumerate()
        .map(|(i, c)| Row {
            name: c.name,
            repeat: c.repeat,
            gross: Spread::of(&gross[0][i]).median,
            net: Spread::of(&net[0][i]),
            b: (hs.len() > 1).then(|| {
                let ratios: Vec<f64> = net[1][i]
                    .iter()
                    .zip(&net[0][i])
                    .map(|(b, a)| b / a)
                    .collect();
                (Spread::of(&net[1][i]), Spread::of(&ratios))
            }),
        })
        .collect();
    // What the "1M flows" rows ran against (see `remove_promoted`).
    let ab = hs.len() > 1;
    for (v, h) in hs.iter_mut().enumerate() {
        let n = h.dp.flow_table_len("FLOWS")?;
        let tag = if ab { ["A: ", "B: "][v] } else { "" };
        tables.push(format!("{tag}FLOWS held {n} flows after the last round"));
    }
    let setting = Setting {
        cpu,
        tables,
        load_before,
        load_after: loadavg(),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((rows, setting))
}

/// One case's run on one copy of the program, and the empty target's beside it:
/// (gross, net) ns per packet. The case's checks must pass.
fn run_case(h: &mut Harness, case: &Case, base: u32, round: usize) -> anyhow::Result<(f64, f64)> {
    // Alternate which of the pair runs first, so a drift within the round
    // does not always favour one side.
    let empty_first = round % 2 == 1;
    let run_empty = |h: &mut Harness| -> anyhow::Result<f64> {
        let (a, _, e) = h.run(case.target.empty(), &case.spec, base, case.repeat)?;
        ensure!(a == XDP_TX, "empty target returned {a}");
        Ok(e)
    };
    let mut e = if empty_first { run_empty(h)? } else { 0.0 };
    let before = h.counts()?;
    let (action, out, ns) = h.run(case.target, &case.spec, base, case.repeat)?;
    let after = h.counts()?;
    let outcome = Outcome {
        action,
        out,
        repeat: case.repeat,
        before,
        after,
    };
    (case.check)(&mut h.dp, &outcome)
        .with_context(|| format!("case {:?}, round {round}", case.name))?;
    if !empty_first {
        e = run_empty(h)?;
    }
    Ok((ns, ns - e))
}

/// The 256-backend pool (weights 1..=7) and the scheduler services' tables: Maglev
/// over it, each backend once (round-robin), one smooth WRR cycle (1024 entries), the
/// id list least-conn scans, and the WRR cycle random-two-least-conn draws from.
fn publish_pool(bed: &Bed, dp: &mut AyaDataplane) {
    let weights: Vec<u32> = (0..POOL).map(|i| 1 + i % 7).collect();
    bed.add_pool(dp, POOL_FIRST, &weights);
    let ids: Vec<u32> = (POOL_FIRST..POOL_FIRST + POOL).collect();
    let input: Vec<xdp_lb::maglev::MaglevBackend> = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| xdp_lb::maglev::MaglevBackend {
            key: format!("pool-{i}"),
            weight,
        })
        .collect();
    let maglev: Vec<u32> = xdp_lb::maglev::build(&input, POOL_MAGLEV)
        .into_iter()
        .map(|i| POOL_FIRST + i)
        .collect();
    let wrr: Vec<u32> = xdp_lb::sched::smooth_wrr(&weights, 65537)
        .into_iter()
        .map(|i| POOL_FIRST + i)
        .collect();
    for ((id, _, _), table) in SCHED_SERVICES.iter().zip([&maglev, &ids, &wrr, &ids, &wrr]) {
        bed.publish_ids(dp, *id, table, 0);
    }
}

impl Harness {
    /// Takes the flows a promotion case moved to FLOWS out again (with their NAT
    /// reverse entries), outside the timed runs: every case then meets the flow table
    /// the established cases made, two million flows. Left in, the rounds' 4.8M
    /// promotions, younger and so ahead in their buckets' chains, made the later
    /// "1M flows" rows measure a table of up to 6.8M entries (VIP established at 1M:
    /// 288-331 ns in quiet full runs with them, 263-265 without).
    fn remove_promoted(&mut self, case: &Case, base: u32) -> anyhow::Result<()> {
        let spec = &case.spec;
        let mut frame = spec.frame.clone();
        let keys: Vec<_> = (0..case.repeat)
            .map(|n| {
                let v = base.wrapping_add(n);
                let (p, a) = (usize::from(spec.port_off), usize::from(spec.addr_off));
                frame[p..p + 2].copy_from_slice(&(v as u16).to_be_bytes());
                frame[a..a + 2].copy_from_slice(&((v >> 16) as u16).to_be_bytes());
                flow_key_of(&frame)
            })
            .collect();
        let removed = self.dp.remove_flows(keys)?;
        ensure!(
            removed > 0,
            "case {:?}: none of its {} flows was in FLOWS to remove (wrong keys?)",
            case.name,
            case.repeat
        );
        Ok(())
    }

    fn counts(&mut self) -> anyhow::Result<Counts> {
        let g = self.dp.global_counters()?;
        let count = |name: &str| g.iter().find(|(n, _)| *n == name).map(|x| x.1).unwrap_or(0);
        let (nat_reply, promoted) = (count("nat_reply"), count("flow_promoted"));
        let mut new_flows = 0;
        for id in 0..3 + SCHED_SERVICES.len() as u32 {
            new_flows += self.dp.service_counters(id)?.new_flows;
        }
        Ok(Counts {
            new_flows,
            nat_reply,
            promoted,
        })
    }

    /// One BPF_PROG_TEST_RUN of the wrapper around `target`: action, final frame,
    /// and nanoseconds per iteration (integer mean, as the kernel reports it).
    fn run(
        &mut self,
        target: Target,
        spec: &FrameSpec,
        base: u32,
        repeat: u32,
    ) -> anyhow::Result<(u32, Vec<u8>, f64)> {
        ensure!(spec.frame.len() <= BENCH_FRAME_MAX, "frame too long");
        let mut data = [0u8; BENCH_FRAME_MAX];
        data[..spec.frame.len()].copy_from_slice(&spec.frame);
        let frame = BenchFrame {
            len: spec.frame.len() as u32,
            flows: spec.flows,
            base,
            port_off: spec.port_off,
            addr_off: spec.addr_off,
            ip_check_off: spec.ip_check_off,
            l4_check_off: spec.l4_check_off,
            data,
        };
        self.dp
            .set_bench_case(target.program(), target.is_tc(), frame)?;
        let (r, action) = if target.is_tc() {
            let r = self.dp.test_run_classifier(
                "tc_bench_wrapper",
                &spec.frame,
                self.ifindex,
                0,
                0,
                repeat,
            )?;
            // The cases' checks speak XDP: a redirect (to the ingress or elsewhere)
            // stands for XDP_TX, as in the packet tests (`Prog::act`).
            let action = match r.action {
                TC_ACT_OK => XDP_PASS,
                TC_ACT_SHOT => XDP_DROP,
                TC_ACT_REDIRECT => XDP_TX,
                a => {
                    bail!("tc wrapper or program answered {a} (frame restore or tail call failed?)")
                }
            };
            (r, action)
        } else {
            let r = self
                .dp
                .test_run("xdp_bench_wrapper", &spec.frame, self.ifindex, repeat)?;
            if r.action == 0 {
                bail!("wrapper aborted (frame restore or tail call failed)");
            }
            let action = r.action;
            (r, action)
        };
        // The kernel reports the mean time per iteration.
        Ok((action, r.frame, r.per_run.as_nanos() as f64))
    }
}

fn print_report(rows: &[Row], st: &Setting) {
    println!();
    println!("Per-packet cost, BPF_PROG_TEST_RUN through the restore-and-tail-call wrapper,");
    println!(
        "pinned to CPU {}; net = case - the same wrapper around an empty XDP_TX target in the",
        st.cpu
    );
    println!(
        "same round; median and min-max of {ROUNDS} interleaved rounds (after a warm-up round)."
    );
    println!(
        "Load average {} at the start, {} at the end; {:.0} s in all.",
        st.load_before, st.load_after, st.seconds
    );
    println!("Tables as loaded:");
    for t in &st.tables {
        println!("  {t}");
    }
    println!();
    let ab = rows.iter().any(|r| r.b.is_some());
    if ab {
        println!(
            "{:<36} {:>9} {:>8} {:>15} {:>8} {:>15} {:>6} {:>11}",
            "case", "repeats", "A net", "A min-max", "B net", "B min-max", "B/A", "B/A min-max"
        );
    } else {
        println!(
            "{:<36} {:>9} {:>9} {:>8} {:>15}  Katran (net ns)",
            "case", "repeats", "gross ns", "net ns", "net min-max"
        );
    }
    let range = |s: &Spread| format!("{:.0}-{:.0}", s.min, s.max);
    for r in rows {
        if let Some((b, ratio)) = &r.b {
            println!(
                "{:<36} {:>9} {:>8.1} {:>15} {:>8.1} {:>15} {:>6.2} {:>11}",
                r.name,
                r.repeat,
                r.net.median,
                range(&r.net),
                b.median,
                range(b),
                ratio.median,
                format!("{:.2}-{:.2}", ratio.min, ratio.max)
            );
            continue;
        }
        let anchor = if r.name == "VIP established, 1M flows" && !ipv6_million() {
            KATRAN_1M_OWN_SET_UP
        } else {
            ANCHORS
                .iter()
                .find(|(n, _)| *n == r.name)
                .map(|(_, a)| *a)
                .unwrap_or("")
        };
        println!(
            "{:<36} {:>9} {:>9.1} {:>8.1} {:>15}  {}",
            r.name,
            r.repeat,
            r.gross,
            r.net.median,
            range(&r.net),
            anchor
        );
    }
    println!();
    println!("The floor rows are `xdp_floor`: parse Ethernet/IPv4/TCP, one FLOWS lookup (a hit),");
    println!("XDP_TX. No rewrite, no checksum, no counters: the least any balancer that looks up");
    println!("a flow table pays on this machine, with the same table type and size. It is not a");
    println!("target and not Katran's figure. The Katran column is Katran's balancer.bpf.c");
    println!("timed by this method on this machine kind in the same table shape (README:");
    println!("Katran on this machine), its new flow with the flood guard raised: by default it");
    println!("skips the LRU write above 125k new flows/s per CPU (77 ns a SYN then). With");
    println!("XDP_LB_BENCH_IPV6_FLOWS=0 its 1M row is Katran's own set-up: a million flows");
    println!("in a 4M-entry LRU (this bench: XDP_LB_BENCH_FLOW_TABLE=4194303).");
    println!("The \"tc:\" rows run `tc_lb` (`--attach tc`) on an skb through `tc_bench_wrapper`,");
    println!("net of that wrapper around an empty tc target: a linear, uncloned skb whose");
    println!("checksum is complete, so they leave out what a veth's TCP segments add (an");
    println!("unclone, a header pull); bench e2e's program time sees those.");
    println!("Figures are the kernel's mean ns per iteration (an integer) and move with the");
    println!("machine's load: compare rows of one run, and read the min-max before a difference.");
    println!();
}
