//! The data plane behind a small trait: the only module that touches aya (in `aya`),
//! and an in-memory fake (in `fake`) that keeps what was written, so the controller
//! and everything above it are tested as plain Rust without root.
mod bpf;
pub mod conns;
mod fake;
pub mod iface;
pub mod pin;

use std::collections::HashMap;

pub use bpf::{
    error_chain, ifindex, AyaDataplane, TestRunOutcome, EBPF_OBJECT, PASS_PROGRAM, PROGRAM,
    TC_PROGRAM,
};
pub use fake::FakeDataplane;
use xdp_lb_common::Counters;

use crate::plan::{Plan, Snapshot};

/// What the control plane needs from a data plane once it is loaded and attached.
/// Reads take `&self`: status and metrics never need exclusive access.
pub trait Dataplane: Send {
    /// Performs a plan's writes in the order that keeps every intermediate state
    /// consistent for the kernel (see `plan`'s ordering contract).
    fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError>;
    /// Global verdict counters, summed over CPUs, by `reason` index.
    fn global_counters(&self) -> Result<Vec<(&'static str, u64)>, DataplaneError>;
    /// Counters of one service id, summed over CPUs.
    fn service_counters(&self, id: u32) -> Result<Counters, DataplaneError>;
    /// Counters of one backend id, summed over CPUs.
    fn backend_counters(&self, id: u32) -> Result<Counters, DataplaneError>;
    /// Entries of the flow table per (backend id, generation), walking at most
    /// `limit` entries.
    fn flow_counts(&self, limit: u64) -> Result<FlowCounts, DataplaneError>;
    /// Least-conn: recounts the open connections of the backends in `current`
    /// (id -> generation) from the flow tables (`conns::count`), walking at most
    /// `limit` entries, and writes them over the kernel's running counts. A walk cut
    /// at its limit writes nothing (its counts would be too low). Returns the counts
    /// written.
    fn reconcile_conns(
        &mut self,
        current: &HashMap<u32, u32>,
        limit: u64,
    ) -> Result<Option<HashMap<u32, i64>>, DataplaneError>;
    /// What the maps hold now (services with their live tables, backend records
    /// with their owners, NAT reply targets): what `Planner::restore` rebuilds from.
    fn snapshot(&self) -> Result<Snapshot, DataplaneError>;
}

/// The flow table's entries counted per backend slot occupant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// (backend id, generation) -> entries. An entry whose generation is not the
    /// slot's current one belongs to a former occupant and is re-dispatched.
    pub by_backend: HashMap<(u32, u32), u64>,
    /// Entries walked.
    pub scanned: u64,
    /// The walk stopped at its limit: counts are a lower bound.
    pub truncated: bool,
}

/// Map capacities decided by the configuration at start.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub ring_entries: u32,
    pub flow_table_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the embedded XDP object is empty: this binary was built with AYA_BUILD_SKIP=1; rebuild without it")]
    StubObject,
    #[error("loading the XDP object into the kernel failed (are you root, and does the kernel support BPF?)")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program or map named {0}")]
    Missing(&'static str),
    #[error("program {name} was rejected by the kernel (verifier or missing XDP support)")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching XDP to interface {iface} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {0} already has an XDP program attached (another xdp-lb? see `ip link show {0}`; detach it with `ip link set dev {0} xdp off`)")]
    Busy(String),
    #[error("interface {0} does not exist (see `ip link`)")]
    NoInterface(String),
    #[error("updating map {map} failed")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF_PROG_TEST_RUN of program {name} failed")]
    TestRun {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot size a per-CPU map value to the possible CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("the fake data plane was told to fail this write")]
    Injected,
    #[error("the embedded XDP object cannot be parsed")]
    Parse(#[source] aya_obj::ParseError),
    #[error("pinned state in {dir} cannot be adopted: {diff}. Start with `xdp-lb run --fresh` to replace it with empty maps (established connections are lost), or run with the settings it was made with")]
    Incompatible {
        dir: std::path::PathBuf,
        diff: pin::LayoutDiff,
    },
    #[error("pin directory {0} is not on a bpf file system: mount one (`mount -t bpf bpf DIR`) or choose --pin-dir under /sys/fs/bpf")]
    NotBpffs(std::path::PathBuf),
    #[error("cannot mount a bpf file system on {dir} for the pinned state (needs CAP_SYS_ADMIN; or mount one yourself with `mount -t bpf bpf {dir}`)")]
    BpffsMount {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another xdp-lb run uses the pin directory {0}: stop it first, or give this one another --pin-dir")]
    PinDirInUse(std::path::PathBuf),
    #[error("pinned state at {path}")]
    PinIo {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning the XDP link at {path}")]
    PinLink {
        path: std::path::PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(
        "the pinned XDP link of {iface} cannot be used (remove everything with `xdp-lb detach`)"
    )]
    Link {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinned map {map} holds {what} that this binary does not understand")]
    Inconsistent {
        map: &'static str,
        what: &'static str,
    },
}
