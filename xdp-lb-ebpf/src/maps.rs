//! Every map of the data plane. Sizes marked "set at load" are overridden by the
//! control plane (`EbpfLoader::set_max_entries`) from its configuration.
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use xdp_lb_common::{
    reason, Backend, BenchFrame, Counters, EmbryoSlot, FlowKey, FlowValue, NatReverse, NextHop,
    ReplyTarget, Service, ServiceEntry, ServiceKey, DEFAULT_FLOW_TABLE_SIZE, ENDPOINT_FILTER_WORDS,
    MAX_BACKENDS, MAX_INTERFACES, MAX_SERVICES,
};

/// `embryo_table_size(DEFAULT_FLOW_TABLE_SIZE)`; the control plane sets the real size.
const DEFAULT_EMBRYO_TABLE_SIZE: u32 = xdp_lb_common::embryo_table_size(DEFAULT_FLOW_TABLE_SIZE);

/// VIP, port and protocol -> service record (active Maglev table, flags).
#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Service id -> its SERVICES key and record, kept by the control plane beside every
/// SERVICES write and delete: established packets find their service from the flow's
/// backend (BACKEND_OWNERS) here, with no SERVICES hash lookup. Not pinned: each load
/// fills it from the (adopted) SERVICES before anything attaches.
#[map]
pub static SERVICES_BY_ID: Array<ServiceEntry> = Array::with_max_entries(MAX_SERVICES, 0);

/// Backend id -> address, port, state and generation.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Maglev lookup tables of all services, two slots each; entries are backend ids.
/// Size set at load (max_services * 2 * max_table_size).
#[map]
pub static MAGLEV_RING: Array<u32> = Array::with_max_entries(1, 0);

/// Per service id, per CPU: position in the round-robin schedule (or the start of
/// the least-conn scan). Per CPU so no two CPUs read-modify-write one cursor.
#[map]
pub static SCHED_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per backend id: open connections of least-conn services (signed: a close counted
/// twice in a race goes below zero instead of wrapping to "very busy"). Shared, with
/// atomic adds; the control plane overwrites it from a flow-table walk periodically.
#[map]
pub static CONNS: Array<i64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Client 5-tuple -> pinned backend. A common LRU: its per-CPU free lists refill
/// in batches, so inserts rarely take the shared lock, and unlike
/// BPF_F_NO_COMMON_LRU the whole capacity serves every CPU (measured with
/// `cargo xtask bench`: no difference in insert cost here). Size set at load.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

/// Client 5-tuple -> backend, for flows that have sent one packet so far (a SYN, a
/// first datagram, or a packet of a flow neither table knew). Their next packet
/// promotes them to FLOWS. Kept apart so that spoofed one-packet flows (a SYN flood)
/// evict only each other, never an established flow. Size set at load
/// (`embryo_table_size`). A common LRU: per-CPU lists (BPF_F_NO_COMMON_LRU) cost a
/// new flow 1.15-1.21x in `cargo xtask bench pkt`'s paired A/B mode, and a 65536-entry
/// cap was not measured cheaper (README, New flows).
#[map]
pub static EMBRYOS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_EMBRYO_TABLE_SIZE, 0);

/// The embryonic table of TCP and UDP flows of services that schedule by hash (`embryo`,
/// `xdp_lb_common::slot_scheduled`): a new flow's entry is written in place into the
/// slot its flow hash (masked) picks, the line its lookup just brought in, where an
/// LRU insert takes a fresh element (a cache miss of its own) and, once the LRU is
/// full, evicts another. Mmapable only for its page-aligned values: each 128-byte slot
/// is then one aligned pair of cache lines. Size set at load (`embryo_slots`).
#[map]
pub static EMBRYO_SLOTS: Array<EmbryoSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// EMBRYO_SLOTS's mask and the NAT guard (`xdp_lb_common::SLOT_CONF_*`), written by
/// the control plane at every load before anything attaches. Not pinned.
#[map]
pub static EMBRYO_SLOT_CONF: Array<u32> = Array::with_max_entries(2, 0);

/// NAT_REVERSE's counterpart for embryonic flows (the backend's SYN-ACK comes before
/// the client's ACK promotes the flow). Size set at load, as EMBRYOS.
#[map]
pub static EMBRYO_REVERSE: LruHashMap<FlowKey, NatReverse> =
    LruHashMap::with_max_entries(DEFAULT_EMBRYO_TABLE_SIZE, 0);

/// Bitmap over `endpoint_bit` of every SERVICES and BACKEND_REPLIES key, kept by the
/// control plane (bits set before a key is inserted, rebuilt after removals and at
/// every load): a clear bit spares a packet the hash lookup that would miss. Not
/// pinned: each load rebuilds it from the (adopted) tables before anything attaches.
#[map]
pub static ENDPOINT_FILTER: Array<u64> = Array::with_max_entries(ENDPOINT_FILTER_WORDS, 0);

/// Bitmap over `endpoint_bit`, as ENDPOINT_FILTER: a set bit says every SERVICES key
/// of that bit is a DSR service that schedules by hash, whose new flows are only ever
/// in EMBRYO_SLOTS (`xdp_lb_common::slot_scheduled`; no NAT guard moves them), so a
/// packet to it that misses FLOWS reads its slot beside that miss and never looks in
/// EMBRYOS. Kept by the control plane: a bit is cleared before a key of it turns into
/// another kind of service, and set only at a load or for a bit no service had, so
/// that no handshake of another kind is in EMBRYOS unseen. Not pinned.
#[map]
pub static SLOT_ENDPOINTS: Array<u64> = Array::with_max_entries(ENDPOINT_FILTER_WORDS, 0);

/// NAT backend endpoint -> VIP and port its replies are translated back to.
#[map]
pub static BACKEND_REPLIES: HashMap<ServiceKey, ReplyTarget> =
    HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Reply 5-tuple (backend -> client) -> VIP, port and way back, only for backends
/// shared by several NAT services (`SVC_REVERSE_PER_FLOW`), written when the flow
/// is promoted to FLOWS. Size set at load.
#[map]
pub static NAT_REVERSE: LruHashMap<FlowKey, NatReverse> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

/// Per backend id, per CPU: cached next hop (MACs, egress interface).
#[map]
pub static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per service id: packets, bytes, new flows.
#[map]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per backend id: packets, bytes, new flows.
#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Packets per verdict reason (`xdp_lb_common::reason`).
#[map]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);

/// Interfaces we may XDP_REDIRECT to, keyed by ifindex.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

/// `tc_lb`'s TX_PORTS: ifindex -> flags (`TC_PORT_PEER`) of the interfaces it may
/// redirect to.
#[map]
pub static TC_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_INTERFACES, 0);

/// TC_PORTS's values of the interfaces whose ifindex is below `TC_PORT_SLOTS`, with
/// `TC_PORT_ATTACHED` set, indexed by ifindex: a packet's redirect reads one array
/// line here where the hash lookup cost a hash and two or three lines (one lookup on
/// every forwarded packet). ifindexes count up per network namespace, so nearly every
/// interface has a slot; the others are found in TC_PORTS. Not pinned, as TC_PORTS.
#[map]
pub static TC_PORT_SLOTS: Array<u32> = Array::with_max_entries(xdp_lb_common::TC_PORT_SLOTS, 0);

/// Benchmark only: the frame the wrapper restores before each tail call.
#[map]
pub static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

/// Benchmark only: which of `BenchFrame::flows` the next iteration sends.
#[map]
pub static BENCH_COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Benchmark only: slot 0 holds the program under test.
#[map]
pub static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Benchmark only: `BENCH_TARGET` for tc programs (a program array holds programs
/// of one type).
#[map]
pub static BENCH_TARGET_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Control plane only (pinned state): the layout the pinned maps were made with.
#[map]
pub static LAYOUT: Array<xdp_lb_common::Layout> = Array::with_max_entries(1, 0);

/// Backend id -> owning service id + 1 (0: free): a restarted daemon tells which
/// service a draining or down backend belongs to, and the program finds an
/// established flow's service (SERVICES_BY_ID). Pinned.
#[map]
pub static BACKEND_OWNERS: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);
