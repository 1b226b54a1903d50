//! What the daemon hands the monitor on every tick: plain cumulative counters and current
//! states, with no aya, tokio or clock inside, so any producer (the aya adapter, the fake
//! data plane, a test) can build one. The monitor turns consecutive samples into rates.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::resources::ResourceSample;
/// The operator's intent for a backend (configuration or admin command): the
/// configuration's own type, so the daemon hands it over as it is.
pub use crate::config::BackendState;

/// Everything observed at one instant. Each part is optional: the cache tier run alone has
/// no data plane, and a daemon without a `[cache]` section has no cache figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub dataplane: Option<DataplaneSample>,
    pub cache: Option<CacheSample>,
    pub resources: Option<ResourceSample>,
}

/// The data plane's counters, cumulative since the program was loaded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataplaneSample {
    pub services: Vec<ServiceSample>,
    /// Packets per verdict reason (`xdp_lb_common::reason` names), cumulative.
    pub reasons: Vec<ReasonCount>,
    /// Entries in the flow table now.
    pub flows_total: u64,
    /// Entries the flow table can hold (`flow_table_size`).
    pub flow_table_capacity: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSample {
    /// Unique among services: rates are matched across ticks by this name.
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendSample>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendSample {
    /// `ADDR:PORT` as the configuration names it; unique within its service.
    pub addr: String,
    pub state: BackendState,
    /// `None` when the backend has no health check.
    pub health: Option<Health>,
    pub weight: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Entries in the flow table pointing at this backend now.
    pub flows: u64,
    pub last_check_latency: Option<Duration>,
    /// Health state changes since the daemon started, cumulative.
    #[serde(default)]
    pub health_transitions: u64,
}

/// What the health checks concluded. A backend without checks is assumed usable, as the
/// data plane does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

impl Health {
    /// From the health checker's `up` flag.
    pub fn from_up(up: bool) -> Self {
        if up {
            Self::Up
        } else {
            Self::Down
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

impl BackendSample {
    /// Whether the data plane may send it new flows: active and not failing its checks.
    pub fn usable(&self) -> bool {
        self.state == BackendState::Active && self.health != Some(Health::Down)
    }
}

/// The cache tier's counters, cumulative since it started; the field names follow
/// `cache::stats::Snapshot`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheSample {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub updating: u64,
    pub expired: u64,
    pub bypass: u64,
    /// Redis failures and timeouts.
    pub redis_errors: u64,
    /// Requests that waited for another instance's fetch (request coalescing).
    pub coalesced_waits: u64,
    pub bytes_from_cache: u64,
    pub upstream_requests: u64,
    /// Latency of the last Redis round trip, if one was measured.
    pub redis_latency: Option<Duration>,
    /// Whether the last Redis call succeeded; `None` before the first call.
    pub redis_reachable: Option<bool>,
}

impl CacheSample {
    /// Lookups answered from the cache (stale copies included), the numerator of the hit
    /// rate, as `cache::stats::Snapshot::hit_rate` counts them.
    pub fn served(&self) -> u64 {
        self.hits + self.stale + self.updating
    }

    /// Cacheable lookups: the hit rate's denominator.
    pub fn lookups(&self) -> u64 {
        self.served() + self.misses + self.expired
    }

    /// All requests the tier saw, bypassed ones included.
    pub fn requests(&self) -> u64 {
        self.lookups() + self.bypass
    }
}

impl From<crate::cache::stats::Snapshot> for CacheSample {
    /// Redis latency is the mean over every call so far (the tier keeps a sum and a count).
    fn from(s: crate::cache::stats::Snapshot) -> Self {
        Self {
            hits: s.hits,
            misses: s.misses,
            stale: s.stale,
            updating: s.updating,
            expired: s.expired,
            bypass: s.bypass,
            redis_errors: s.errors,
            coalesced_waits: s.coalesced_waits,
            bytes_from_cache: s.bytes_from_cache,
            upstream_requests: s.upstream_requests,
            redis_latency: s
                .redis_latency_us
                .checked_div(s.redis_calls)
                .map(std::time::Duration::from_micros),
            redis_reachable: s.redis_reachable,
        }
    }
}
