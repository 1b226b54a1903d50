//! The data plane behind a small trait: the only module that touches aya (in `aya`),
//! and an in-memory fake (in `fake`) that keeps what was written, so the controller
//! and everything above it are tested as plain Rust without root.
mod bpf;
mod fake;

use std::collections::HashMap;

pub use bpf::{error_chain, ifindex, AyaDataplane, EBPF_OBJECT, PASS_PROGRAM, PROGRAM};
pub use fake::FakeDataplane;
use xdp_lb_common::Counters;

use crate::plan::Plan;

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
    #[error("the fake data plane was told to fail this write")]
    Injected,
}
