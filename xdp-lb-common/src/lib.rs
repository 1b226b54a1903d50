//! The kernel/userspace ABI of xdp-lb: every map key and value both sides touch, the
//! constants that size the maps, and the pure functions (flow hash, checksum update)
//! the XDP program runs and the control plane's tests re-run to predict its output.
//!
//! Layout rules: `#[repr(C)]`, explicit padding, no `bool`/`Option`/`usize`, and a
//! compile-time size check per struct, so a layout change breaks the build instead
//! of corrupting a map.
//!
//! Byte order: every address and port field holds the bytes exactly as they sit in
//! the packet (network byte order), loaded into a native integer without swapping.
//! `wire::ip_to_words`/`wire::port_to_wire` produce that representation.
#![no_std]

pub mod csum;
pub mod hash;
pub mod wire;

/// Address family tags stored in keys and backends.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Interfaces one balancer attaches to: the size of the TX_PORTS device map.
pub const MAX_INTERFACES: u32 = 64;
/// TC_PORTS value bit: the interface is a veth whose peer is in another namespace,
/// so `tc_lb` delivers with `bpf_redirect_peer` (into the peer's ingress).
pub const TC_PORT_PEER: u32 = 1;
/// TC_PORT_SLOTS value bit: the interface is one `tc_lb` may redirect to (a zeroed
/// slot is none).
pub const TC_PORT_ATTACHED: u32 = 2;
/// Interfaces with an ifindex below this have their TC_PORTS value in the
/// TC_PORT_SLOTS array too, where `tc_lb` reads it without a hash lookup.
pub const TC_PORT_SLOTS: u32 = 4096;
/// Services map capacity (hash map entries).
pub const MAX_SERVICES: u32 = 1024;
/// Backend slots across all services (array map entries).
pub const MAX_BACKENDS: u32 = 16384;
/// Per-service backend limit enforced by the control plane.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 1024;
/// Default Maglev table size: prime, ~256 slots per backend at 256 backends.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Largest table size accepted; the ring map is sized from it at load time.
pub const MAX_RING_SIZE: u32 = 1_000_003;
/// Default flow-table capacity (each of the two LRU maps).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 262_144;

/// Entries a kernel hash table is created with to hold `n`: one more when `n` is a
/// power of two. The kernel gives a hash table the next power of two of its entries as
/// buckets, so a full table of 2^k entries has one entry per bucket, and a lookup
/// walks past about one other entry (a cache miss each at scale) before it finds its
/// own or gives up; 2^k + 1 entries get 2^(k+1) buckets (16 bytes each), half an entry
/// per bucket. Measured with `cargo xtask bench pkt`'s A/B mode (README, Benchmarks):
/// 0.83-0.89 of the time for a lookup in a full flow table, 0.90-0.95 for a new flow.
pub const fn hash_table_entries(n: u32) -> u32 {
    if n.is_power_of_two() && n < u32::MAX {
        n + 1
    } else {
        n
    }
}

/// Capacity of the embryonic tables (EMBRYOS, EMBRYO_REVERSE) for a flow table of
/// `flows` entries: a quarter of it, at least 1024 (or `flows` if smaller), at most
/// `EMBRYO_TABLE_MAX`. Flows that have sent one packet (a SYN, a first datagram, an
/// ACK the tables do not know) live there until their next packet promotes them to
/// FLOWS, so a flood of one-packet spoofed flows only evicts other one-packet flows.
/// A handshake survives a flood of R spoofed SYNs per second if it completes within
/// `embryo_table_size / R` seconds (65536 entries at 1M SYN/s: 65 ms).
pub const fn embryo_table_size(flows: u32) -> u32 {
    let quarter = flows / 4;
    let floor = if flows < 1024 { flows } else { 1024 };
    let size = if quarter > floor { quarter } else { floor };
    if size > EMBRYO_TABLE_MAX {
        EMBRYO_TABLE_MAX
    } else {
        size
    }
}

/// Most entries an embryonic table gets. Every new flow inserts into EMBRYOS and, once
/// it is full, evicts from it: a small table keeps those lines in the CPU caches,
/// where a table sized with a large flow table (2M entries for 8M flows, ~300 MB)
/// makes every insert and eviction a run of cache misses (`cargo xtask bench pkt`,
/// new-flow cases). 262144 entries still hold 262 ms of handshakes under a flood of
/// 1M SYN/s.
pub const EMBRYO_TABLE_MAX: u32 = 1 << 18;

/// Longest L4 segment (header and payload) whose checksum the program verifies
/// before it creates a flow: a full 1500-byte IPv4 packet's payload. Longer
/// flow-creating packets (jumbo frames) are dropped (`drop_l4_csum`).
pub const CSUM_MAX_BYTES: u32 = 1480;
/// A ring slot that selects no backend (service with no active backend).
pub const NO_BACKEND: u32 = u32::MAX;

/// Service flags (`Service::flags`).
pub const SVC_FWD_DSR: u32 = 1 << 0;
/// Hash only the source address ("IP hash" persistence) instead of the 5-tuple.
pub const SVC_HASH_SRC_ONLY: u32 = 1 << 1;
/// A backend of this NAT service also serves another NAT service, so its replies
/// cannot be mapped back by address alone: new flows record a NAT_REVERSE entry.
pub const SVC_REVERSE_PER_FLOW: u32 = 1 << 2;

/// Scheduler: new flows walk the service's table in order (a smooth weighted
/// round-robin schedule built by the control plane) with a per-CPU cursor, instead
/// of hashing into it.
pub const SVC_SCHED_RR: u32 = 1 << 3;
/// Scheduler: the service's table lists its active backend ids (at most
/// `LC_MAX_BACKENDS`); a new flow goes to the one with the fewest counted
/// connections (CONNS) relative to `Backend::weight`.
pub const SVC_SCHED_LC: u32 = 1 << 4;
/// With `SVC_SCHED_LC`: `random-two-least-conn`. The service's table is a smooth
/// weighted round-robin cycle (backends in proportion to weight, any number of them),
/// and a new flow goes to the less loaded (CONNS relative to `Backend::weight`) of two
/// entries drawn at random, instead of the least loaded of all: constant work per new
/// flow where least-conn scans every backend. Counting, closes and reconciliation
/// are least-conn's.
pub const SVC_SCHED_P2C: u32 = 1 << 5;
/// Most active backends a least-conn service may have: the bound of the kernel's
/// per-new-flow scan.
pub const LC_MAX_BACKENDS: u32 = 256;

/// `FlowValue::flags`: the flow was counted in CONNS (least-conn) and has not been
/// seen to close yet; the first FIN or RST clears it and takes the count back.
pub const FLOW_COUNTED: u32 = 1 << 0;
/// `FlowValue::last_seen` unit: CLOCK_MONOTONIC ns shifted right by this (~1.07 s).
pub const LAST_SEEN_SHIFT: u32 = 30;

/// `ReplyTarget::flags`: the endpoint is shared; look the reply up in NAT_REVERSE.
pub const REPLY_PER_FLOW: u16 = 1 << 0;

/// Backend states (`Backend::state`).
pub const BACKEND_ACTIVE: u8 = 0;
/// Keeps its established flows, gets no new ones (absent from the ring).
pub const BACKEND_DRAINING: u8 = 1;
/// Established flows are re-dispatched; also the state of a freed slot.
pub const BACKEND_DOWN: u8 = 2;

/// Words (u64) of ENDPOINT_FILTER: 65536 bits, one per value of `endpoint_bit`.
pub const ENDPOINT_FILTER_WORDS: u32 = 1024;

/// The ENDPOINT_FILTER bit of an (address, port) pair, as they are stored in a
/// `ServiceKey` (network byte order, IPv4 in `addr[0]`): the control plane sets the
/// bit of every SERVICES and BACKEND_REPLIES key; the program looks a packet's
/// destination up in SERVICES, and its source in BACKEND_REPLIES, only when the
/// pair's bit is set. A clear bit is a sure miss, read with one inlined array load,
/// where a hash-map miss costs about 25 ns (`cargo xtask bench pkt`). The protocol is
/// left out: a TCP and a UDP service on one pair share a bit, which only makes a
/// false positive (a hash lookup that misses). Fibonacci hashing of the XOR-folded
/// address and port: the top 16 bits of the product.
#[inline(always)]
pub const fn endpoint_bit(addr: &[u32; 4], port: u16) -> u32 {
    let x = addr[0] ^ addr[1] ^ addr[2] ^ addr[3] ^ port as u32;
    x.wrapping_mul(0x9e37_79b1) >> 16
}

/// Key of the SERVICES map: a VIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// Network byte order; IPv4 in `addr[0]`, other words zero.
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of the SERVICES map. Replaced as a whole when the control plane publishes a
/// new Maglev table: the kernel sees the old offset or the new one, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Index into SERVICE_STATS.
    pub id: u32,
    /// Start of this service's active table in MAGLEV_RING.
    pub ring_offset: u32,
    /// Table size M (a prime).
    pub ring_size: u32,
    /// `SVC_*` flags.
    pub flags: u32,
}

/// Value of SERVICES_BY_ID (indexed by `Service::id`): a copy of one SERVICES entry,
/// key and value, so that an established flow's packet reaches its service through
/// FLOWS, BACKEND_OWNERS and this array (inlined array loads) instead of a second hash
/// lookup. The program uses it only when `key` is the packet's destination; a zeroed
/// entry (family 0) matches no packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceEntry {
    pub key: ServiceKey,
    pub svc: Service,
}

/// Value of the BACKENDS array (indexed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Network byte order; IPv4 in `addr[0]`.
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    /// `BACKEND_*`.
    pub state: u8,
    /// Bumped whenever the slot is (re)assigned, so a flow pinned to an earlier
    /// occupant of the slot is re-dispatched instead of following the new one.
    pub generation: u32,
    /// Effective weight (after slow start) for least-conn services; 0 for the
    /// other schedulers, whose weights are in their tables.
    pub weight: u32,
}

/// Key of the flow tables: a connection's 5-tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Network byte order.
    pub src: [u32; 4],
    /// Network byte order.
    pub dst: [u32; 4],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key of the NAT_REVERSE / EMBRYO_REVERSE entry of this client flow once it
    /// is sent to the backend at `addr`:`port`: the backend's reply, as on the wire.
    #[inline(always)]
    pub const fn nat_reply(&self, addr: [u32; 4], port: u16) -> FlowKey {
        FlowKey {
            src: addr,
            dst: self.src,
            sport: port,
            dport: self.sport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// Value of FLOWS: which backend a client flow is pinned to, and the way back to the
/// client for NAT replies, taken from the request that created the entry (replies
/// leave through the interface the request came in on, to the MAC it came from).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_id: u32,
    /// `Backend::generation` when the flow was pinned.
    pub generation: u32,
    /// Interface the request arrived on.
    pub ifindex: u32,
    /// The request's destination MAC: the reply's source.
    pub smac: [u8; 6],
    /// The request's source MAC (client or router): the reply's destination.
    pub dmac: [u8; 6],
    /// Least-conn flows only (`FLOW_COUNTED` set): CLOCK_MONOTONIC >>
    /// `LAST_SEEN_SHIFT` of the latest packet, written at most once per unit, so the
    /// control plane can expire idle flows (UDP) when it reconciles CONNS. 0 otherwise.
    pub last_seen: u32,
    /// `FLOW_*`.
    pub flags: u32,
}

/// One slot of EMBRYO_SLOTS, the direct-mapped embryonic table of flows of services
/// that schedule by hash (`slot_scheduled`): the flow whose
/// `hash::flow_hash` lands here (masked), written in place by the program. 128 bytes
/// in a `BPF_F_MMAPABLE` array (page-aligned values), so a slot is one aligned pair of
/// cache lines.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EmbryoSlot {
    pub key: FlowKey,
    pub value: FlowValue,
    /// `embryo_check` of the key's hash and the value; 0: free. A slot whose check
    /// does not match (free, or torn by two CPUs writing at once) holds nothing.
    pub check: u32,
    /// CLOCK_MONOTONIC (coarse) >> `SLOT_TIME_SHIFT` when the slot was written.
    pub born: u32,
    /// 1: a NAT flow, whose backend's first answer (a SYN-ACK, the answer to a
    /// first datagram) needs the entry: a later flow of the slot moves it to EMBRYOS
    /// instead of overwriting it while it is younger than the guard
    /// (`SLOT_CONF_GUARD`).
    pub guard: u32,
    pub _pad0: u32,
    /// Even: nobody writes the slot; odd: one CPU does. A writer takes it with a
    /// compare-and-swap (even to odd) and gives it back with an add, so two CPUs never
    /// write one slot at once; one that finds it taken writes nothing (the program's
    /// `embryo::put_in_slot`). Never held across anything but the slot's own writes,
    /// and no reader or writer waits for it, so it cannot stay odd.
    pub lock: u64,
    pub _pad: [u32; 8],
}

/// New flows (TCP or UDP) of a service with these flags keep their embryonic entry
/// in EMBRYO_SLOTS, where a later flow of the same slot overwrites it, instead of the
/// EMBRYOS LRU: services that pick by hash (Maglev, src-hash). Losing such an entry
/// costs the flow's second packet nothing: the same hash picks the same backend
/// unless the service's table changed meanwhile. A NAT flow's entry is also what
/// translates the backend's first answer (a SYN-ACK, the answer to a first
/// datagram), so it is moved to EMBRYOS rather than overwritten while younger than
/// the guard. Round-robin and least-conn would pick another backend, so their flows
/// stay in the LRU.
#[inline(always)]
pub const fn slot_scheduled(svc_flags: u32, proto: u8) -> bool {
    (proto == PROTO_TCP || proto == PROTO_UDP) && svc_flags & (SVC_SCHED_RR | SVC_SCHED_LC) == 0
}

/// `EmbryoSlot::born` and the guard count CLOCK_MONOTONIC in units of 2^20 ns
/// (1.05 ms).
pub const SLOT_TIME_SHIFT: u32 = 20;
/// EMBRYO_SLOT_CONF[SLOT_CONF_MASK]: the slot count - 1 (a power of two).
pub const SLOT_CONF_MASK: u32 = 0;
/// EMBRYO_SLOT_CONF[SLOT_CONF_GUARD]: how long a NAT flow's slot is kept from other
/// flows, in `SLOT_TIME_SHIFT` units.
pub const SLOT_CONF_GUARD: u32 = 1;
/// The guard a load sets: 10 units, 10.5 ms, far longer than a backend on the same
/// network takes to answer a SYN (`run` then sets `nat_handshake_guard`'s).
pub const SLOT_GUARD_UNITS: u32 = 10;

/// A guard of `ns` nanoseconds in `SLOT_TIME_SHIFT` units, rounded up so that the
/// guard is never shorter than asked.
pub const fn slot_guard_units(ns: u64) -> u32 {
    let units = ns.div_ceil(1 << SLOT_TIME_SHIFT);
    if units > u32::MAX as u64 {
        u32::MAX
    } else {
        units as u32
    }
}

/// The check word of a slot holding a key of `hash::flow_hash` `key_hash` and
/// `value`: never 0 (0 marks a free slot). Not cryptographic: it tells a slot half
/// written by one CPU and half by another from a whole one.
#[inline(always)]
pub fn embryo_check(key_hash: u32, value: &FlowValue) -> u32 {
    let mut h = key_hash;
    for w in [
        value.backend_id,
        value.generation,
        value.ifindex,
        u32::from_ne_bytes([value.smac[0], value.smac[1], value.smac[2], value.smac[3]]),
        u32::from_ne_bytes([value.smac[4], value.smac[5], value.dmac[0], value.dmac[1]]),
        u32::from_ne_bytes([value.dmac[2], value.dmac[3], value.dmac[4], value.dmac[5]]),
        value.last_seen,
        value.flags,
    ] {
        h = (h ^ w).wrapping_mul(0x9e37_79b1).rotate_left(13);
    }
    h | 1
}

/// Slots of EMBRYO_SLOTS for a flow table of `flows` entries: the embryonic size
/// rounded up to a power of two (the program masks the flow hash with it).
pub const fn embryo_slots(flows: u32) -> u32 {
    embryo_table_size(flows).next_power_of_two()
}

/// Value of BACKEND_REPLIES, keyed by a NAT backend's endpoint (a `ServiceKey` holding
/// the backend's address, port and protocol): the VIP and port its replies are
/// translated back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReplyTarget {
    /// Network byte order.
    pub vip: [u32; 4],
    /// Network byte order.
    pub vport: u16,
    /// `REPLY_*`.
    pub flags: u16,
}

/// Value of NAT_REVERSE, keyed by the reply 5-tuple (backend -> client), used only for
/// backends shared by several NAT services: the VIP and port to put back as the
/// reply's source, and the way back to the client (as in `FlowValue`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatReverse {
    /// Network byte order.
    pub vip: [u32; 4],
    /// Network byte order.
    pub vport: u16,
    pub _pad: [u8; 2],
    /// Interface the request arrived on.
    pub ifindex: u32,
    /// The request's destination MAC: the reply's source.
    pub smac: [u8; 6],
    /// The request's source MAC (client or router): the reply's destination.
    pub dmac: [u8; 6],
}

/// Per-CPU cache of the FIB answer towards a backend (NEXTHOPS, by backend id), so
/// established flows skip `bpf_fib_lookup`. Kernel-only state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// CLOCK_MONOTONIC (coarse) ns after which the entry is looked up again.
    pub expires: u64,
    pub ifindex: u32,
    /// `Backend::generation` the entry was looked up for: a reassigned slot misses.
    pub generation: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The MTU the kernel forwards with (L3 bytes; the egress device's, or a route's
    /// locked MTU)
    /// when the entry was filled; 0: unknown,
    /// not checked. Packets longer than it are answered with fragmentation-needed /
    /// packet-too-big instead of being sent (the redirect would drop them).
    pub mtu: u16,
    pub _pad: [u8; 2],
    /// jiffies (`bpf_jiffies64`) when `expires` was last compared with the clock. The
    /// coarse clock moves only with the tick, so within one jiffy the answer stands
    /// and the clock need not be read again (a helper call per packet otherwise).
    pub checked_jiffies: u64,
}

/// How long a cached next hop is trusted before the FIB is asked again.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

/// Per-CPU traffic counters, per service and per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Indexes into GLOBAL_STATS: why a packet got the verdict it got.
pub mod reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    pub const PASS_NOT_IP: u32 = 0;
    /// IP, but not TCP/UDP to a service and not a NAT reply.
    pub const PASS_NOT_SERVICE: u32 = 1;
    /// Truncated or inconsistent headers.
    pub const PASS_MALFORMED: u32 = 2;
    /// IPv4 fragment or IPv6 fragment header.
    pub const PASS_FRAGMENT: u32 = 3;
    /// IPv4 options or IPv6 extension headers before L4.
    pub const PASS_IP_OPTIONS: u32 = 4;
    /// Next hop not resolved in the neighbour table yet: the kernel resolves it.
    pub const PASS_NO_NEIGH: u32 = 5;
    /// FIB lookup failed otherwise (no route, forwarding disabled, ...).
    pub const PASS_FIB_FAILED: u32 = 6;
    /// TTL/hop limit would expire: the kernel sends the ICMP error.
    pub const PASS_TTL: u32 = 7;
    /// Service has no usable backend.
    pub const DROP_NO_BACKEND: u32 = 8;
    /// Forwarded back out of the ingress interface.
    pub const TX: u32 = 9;
    /// Forwarded out of another interface through TX_PORTS.
    pub const REDIRECT: u32 = 10;
    /// Backend reply translated back to the VIP.
    pub const NAT_REPLY: u32 = 11;
    /// Flow-table insert failed; the packet was still forwarded.
    pub const FLOW_INSERT_FAILED: u32 = 12;
    /// Egress interface missing from TX_PORTS; handed to the kernel.
    pub const PASS_NO_TX_PORT: u32 = 13;
    /// IPv4 header checksum wrong: the kernel drops it (and counts InCsumErrors).
    pub const PASS_BAD_IP_CSUM: u32 = 14;
    /// TCP to a service with a data offset below 5 (0..=4 words).
    pub const DROP_TCP_DOFF: u32 = 15;
    /// TCP to a service whose header (options) reaches past the IP payload.
    pub const DROP_TCP_TRUNCATED: u32 = 16;
    /// TCP to a service with flags no stack sends: SYN+FIN, SYN+RST, none of
    /// SYN/ACK/RST (null, FIN-only, xmas).
    pub const DROP_TCP_FLAGS: u32 = 17;
    /// Flow-creating packet (SYN, first datagram, unknown flow) whose L4 checksum is
    /// wrong, or too long to verify (`CSUM_MAX_BYTES`).
    pub const DROP_L4_CSUM: u32 = 18;
    /// UDP to a service whose length field disagrees with the IP payload length.
    pub const DROP_UDP_LEN: u32 = 19;
    /// 802.1Q/802.1ad-tagged frame: xdp-lb cannot tell which VLAN an egress
    /// carries, so the kernel (its VLAN devices) handles it.
    pub const PASS_VLAN: u32 = 20;
    /// Event, not a verdict: a valid SYN to a service (also counted under its verdict).
    pub const SYN: u32 = 21;
    /// Event: a flow entered the embryonic table (its first packet was balanced).
    pub const EMBRYO_NEW: u32 = 22;
    /// Event: an embryonic flow sent its second packet and moved to FLOWS.
    pub const FLOW_PROMOTED: u32 = 23;
    /// ICMP error from the client side about a flow's VIP -> client packet, sent on to
    /// the flow's backend (translated in NAT mode).
    pub const ICMP_TO_BACKEND: u32 = 24;
    /// ICMP error from the backend side about a NAT flow's client -> backend packet,
    /// translated back to the VIP and sent to the client.
    pub const ICMP_TO_CLIENT: u32 = 25;
    /// ICMP error whose quoted packet cannot be read: truncated, IPv4 options or a
    /// later fragment, IPv6 extension headers, not TCP/UDP.
    pub const PASS_ICMP_UNHANDLED: u32 = 26;
    /// ICMP error that quotes a service's or NAT backend's packet of no flow in the
    /// flow tables.
    pub const PASS_ICMP_NO_FLOW: u32 = 27;
    /// Packet for a backend longer than the egress MTU (a GSO skb: whose segments
    /// are), with DF (always, for IPv6): the balancer answered the client with
    /// fragmentation-needed / packet-too-big from the VIP, quoting the packet as it
    /// arrived, out of the ingress (XDP_TX; tc: a redirect back the way it came).
    pub const ICMP_TOO_BIG_SENT: u32 = 28;
    /// IPv4 packet for a backend longer than the egress MTU without DF: rewritten as
    /// usual and passed to the kernel, which fragments it when it forwards it. Also a
    /// too-big packet whose answer could not be built (no room, no memory): passed
    /// as it came, or dropped if tc had already cut it.
    pub const PASS_TOO_BIG_NO_DF: u32 = 29;
    /// Event: a valid SYN on the 5-tuple of a flow still in FLOWS (a reused port)
    /// whose backend was draining, down or reassigned took that entry over in place
    /// for the backend the scheduler picked, instead of becoming embryonic (also
    /// counted under `syn`). While the backend is active, such a SYN keeps it and
    /// counts under `syn` only.
    pub const FLOW_TAKEN_OVER: u32 = 30;
    pub const COUNT: u32 = 31;

    /// The data plane drops packets counted under these reasons (a service owns them
    /// and they are invalid); every other verdict reason passes or forwards.
    pub const fn is_drop(r: u32) -> bool {
        r == DROP_NO_BACKEND || (r >= DROP_TCP_DOFF && r <= DROP_UDP_LEN)
    }

    /// Names for logs and metrics, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ip",
        "pass_not_service",
        "pass_malformed",
        "pass_fragment",
        "pass_ip_options",
        "pass_no_neigh",
        "pass_fib_failed",
        "pass_ttl",
        "drop_no_backend",
        "tx",
        "redirect",
        "nat_reply",
        "flow_insert_failed",
        "pass_no_tx_port",
        "pass_bad_ip_csum",
        "drop_tcp_doff",
        "drop_tcp_truncated",
        "drop_tcp_flags",
        "drop_l4_csum",
        "drop_udp_len",
        "pass_vlan",
        "syn",
        "embryo_new",
        "flow_promoted",
        "icmp_to_backend",
        "icmp_to_client",
        "pass_icmp_unhandled",
        "pass_icmp_no_flow",
        "icmp_too_big_sent",
        "pass_too_big_no_df",
        "flow_taken_over",
    ];
}

/// Version of the pinned-state layout: every map key and value above, and how the
/// control plane uses them. Bump it whenever any of them changes; the pin directory
/// (`<pin-dir>/v<N>`) and the LAYOUT record carry it, so a binary never misreads
/// maps pinned by an incompatible one.
pub const LAYOUT_VERSION: u32 = 2;
/// `Layout::magic`: "xlbL" as a native integer, so a zeroed record never matches.
pub const LAYOUT_MAGIC: u32 = u32::from_ne_bytes(*b"xlbL");

/// The one entry of the LAYOUT map: which layout the pinned maps were created with,
/// and the configuration values that sized them (a restart must match them).
/// Written by userspace only; the XDP program never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Layout {
    pub magic: u32,
    pub version: u32,
    pub flow_table_size: u32,
    pub max_services: u32,
    pub max_table_size: u32,
    pub _pad: u32,
}

/// Largest frame the benchmark wrapper can restore.
/// (A full 1500-byte packet and its Ethernet header: the checksum cases.)
pub const BENCH_FRAME_MAX: usize = 1536;

/// The frame the benchmark wrapper restores before every tail call, and how it
/// varies the flow from one iteration to the next.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BenchFrame {
    pub len: u32,
    /// Distinct flows to cycle through (0: always the frame as saved). Flow n
    /// carries n + `base` in the 16-bit port at `port_off` (low bits) and the
    /// 16-bit address word at `addr_off` (high bits), both big endian.
    pub flows: u32,
    pub base: u32,
    pub port_off: u16,
    pub addr_off: u16,
    /// Offsets of the IPv4 header checksum and of the L4 checksum (0: none), patched
    /// incrementally after the port and address change so the varied frames stay
    /// valid (the program verifies both).
    pub ip_check_off: u16,
    pub l4_check_off: u16,
    pub data: [u8; BENCH_FRAME_MAX],
}

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
assert_size!(ServiceKey, 20);
assert_size!(Service, 16);
assert_size!(ServiceEntry, 36);
assert_size!(Backend, 28);
assert_size!(FlowKey, 40);
assert_size!(FlowValue, 32);
assert_size!(ReplyTarget, 20);
assert_size!(NatReverse, 36);
assert_size!(NextHop, 40);
assert_size!(Counters, 24);
assert_size!(BenchFrame, 1556);
assert_size!(Layout, 24);
assert_size!(EmbryoSlot, 128);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all fields are integers or arrays of integers, padding is explicit.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for ReplyTarget {}
    unsafe impl aya::Pod for NatReverse {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for BenchFrame {}
    unsafe impl aya::Pod for Layout {}
    unsafe impl aya::Pod for EmbryoSlot {}
}
