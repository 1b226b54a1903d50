//! What the monitor computes from two consecutive samples: rates over the measured
//! interval and gauges as they are. One `Figures` per tick goes into the history; the
//! dashboard, the alert engine and the window reports all read these.
use serde::{Deserialize, Serialize};

use super::sample::{BackendState, Health};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Seconds since the monitor's first sample.
    pub at_s: f64,
    /// Measured seconds since the previous sample: every rate here is over this interval.
    pub interval_s: f64,
    pub dataplane: Option<DataplaneFigures>,
    pub cache: Option<CacheFigures>,
    pub resources: Option<ResourceFigures>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataplaneFigures {
    /// Sum over services.
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    pub new_flows_per_s: f64,
    pub flows: u64,
    pub flow_table_capacity: u64,
    pub flow_table_percent: f64,
    pub services: Vec<ServiceFigures>,
    /// Packets per second by verdict reason.
    pub reasons: Vec<ReasonRate>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasonRate {
    pub reason: String,
    pub packets_per_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceFigures {
    pub name: String,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    pub new_flows_per_s: f64,
    /// Sum of its backends' flows.
    pub flows: u64,
    /// Backends that may get new flows (active and not failing checks).
    pub usable_backends: usize,
    pub backends: Vec<BackendFigures>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendFigures {
    pub addr: String,
    pub state: BackendState,
    pub health: Option<Health>,
    pub weight: u32,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    pub new_flows_per_s: f64,
    pub flows: u64,
    /// This backend's share of its service's packets over the interval, 0..=100.
    pub share_percent: f64,
    pub check_latency_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheFigures {
    pub requests_per_s: f64,
    pub lookups_per_s: f64,
    /// Served from the cache over the interval, 0..=100; `None` with no lookups in it.
    pub hit_percent: Option<f64>,
    pub stale_per_s: f64,
    pub redis_errors_per_s: f64,
    pub coalesced_waits_per_s: f64,
    pub upstream_requests_per_s: f64,
    pub redis_latency_ms: Option<f64>,
    pub redis_reachable: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceFigures {
    pub cpu_percent: f64,
    pub per_core_percent: Vec<f64>,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub swap_percent: f64,
    pub swap_used_bytes: u64,
    pub disks: Vec<DiskRates>,
    pub interfaces: Vec<InterfaceRates>,
    /// This process: share of one CPU (200 = two cores busy).
    pub process_cpu_percent: f64,
    pub process_memory_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskRates {
    pub device: String,
    pub read_bytes_per_s: f64,
    pub write_bytes_per_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceRates {
    pub name: String,
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
    pub rx_packets_per_s: f64,
    pub tx_packets_per_s: f64,
    pub link_bits_per_s: Option<u64>,
    /// Busier direction against the link speed, where the driver reports one.
    pub link_percent: Option<f64>,
}
