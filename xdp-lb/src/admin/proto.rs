//! The admin API's wire format: one JSON request per line, one JSON response per
//! line, over the daemon's Unix socket (or its optional loopback TCP listener).
//! A leaf module: serde types only, shared by the server, the client and the CLI.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{
    config::{Algorithm, BackendState, Forwarding, Proto},
    health::OnAllDown,
    plan::Change,
};

/// Bumped on any incompatible change; a daemon answers other versions with an error.
pub const VERSION: u32 = 1;
/// Longest request line the server reads.
pub const MAX_REQUEST: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    /// Required on the TCP listener, ignored on the Unix socket (its mode guards it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(flatten)]
    pub command: Command,
}

/// What a client can ask. Backends are named `ADDR:PORT` (or `ADDR` alone when
/// that is unambiguous within the service); services by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Status,
    ServiceList,
    ServiceAdd {
        service: NewService,
    },
    ServiceRemove {
        service: String,
    },
    BackendList {
        #[serde(default)]
        service: Option<String>,
    },
    BackendAdd {
        service: String,
        /// `ADDR:PORT[@WEIGHT]`.
        backend: String,
        #[serde(default)]
        state: Option<BackendState>,
    },
    BackendRemove {
        service: String,
        backend: String,
        #[serde(default)]
        force: bool,
    },
    BackendWeight {
        service: String,
        backend: String,
        weight: u32,
    },
    /// No new flows at once; with a timeout, the backend goes down when it expires
    /// and its remaining flows are re-dispatched.
    BackendDrain {
        service: String,
        backend: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        force: bool,
    },
    BackendUndrain {
        service: String,
        backend: String,
    },
    BackendDown {
        service: String,
        backend: String,
        #[serde(default)]
        force: bool,
    },
    BackendUp {
        service: String,
        backend: String,
    },
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
    /// The monitor's live picture (what `xdp-lb top` draws).
    Monitor,
    /// The alerts firing now.
    Alerts,
    /// Averages and peaks over the last `window_ms`.
    Report {
        window_ms: u64,
    },
}

/// A service to add at runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewService {
    pub name: String,
    /// `ADDR:PORT`, IPv6 as `[ADDR]:PORT`.
    pub vip: String,
    #[serde(default = "default_proto")]
    pub proto: Proto,
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    #[serde(default = "default_forwarding")]
    pub forwarding: Forwarding,
    #[serde(default)]
    pub table_size: Option<u32>,
    /// `ADDR:PORT[@WEIGHT]` each.
    pub backends: Vec<String>,
}

fn default_proto() -> Proto {
    Proto::Tcp
}
fn default_algorithm() -> Algorithm {
    Algorithm::Maglev
}
fn default_forwarding() -> Forwarding {
    Forwarding::Nat
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    #[serde(flatten)]
    pub result: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Ok { data: Reply },
    Error { error: ApiError },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Services { services: Vec<ServiceStatus> },
    Backends { backends: Vec<BackendRow> },
    Changed(Changed),
    Monitor(Box<crate::monitor::View>),
    Alerts { alerts: Vec<crate::monitor::Alert> },
    Report(Box<crate::monitor::Report>),
}

/// The answer to a change: what happened, and where it was saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changed {
    /// Configuration generation after the change.
    pub generation: u64,
    pub events: Vec<Event>,
    /// The file the change was written to (none for a reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_to: Option<String>,
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The configuration file, at start or on reload.
    File,
    /// An operator through the admin API.
    Admin,
    /// A health check.
    Health,
    /// A timer set earlier (a drain timeout).
    Timer,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::File => "file",
            Origin::Admin => "admin",
            Origin::Health => "health",
            Origin::Timer => "timer",
        })
    }
}

/// One applied change with its origin: the log line, the API's answer and the event
/// history are all this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub origin: Origin,
    /// Why, in words (e.g. "drain timeout of 30s expired").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub change: Change,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.origin, self.change)?;
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: f64,
    /// Bumped by every applied change (file or runtime).
    pub generation: u64,
    #[serde(default)]
    pub config_file: Option<String>,
    pub interfaces: Vec<String>,
    pub services: Vec<ServiceStatus>,
    /// Flow-table entries walked to count flows per backend.
    pub flows_scanned: u64,
    /// The walk hit its limit: flow counts are lower bounds.
    pub flows_truncated: bool,
    /// Seconds between the two counter samples the rates come from (0: no rates yet).
    pub rate_window_secs: f64,
    /// The latest changes, oldest first.
    pub recent_events: Vec<Event>,
    /// Where this run's maps and links are pinned (None: not pinned).
    #[serde(default)]
    pub pin_dir: Option<String>,
    /// This run adopted pinned state a previous run left behind.
    #[serde(default)]
    pub adopted: bool,
    /// Flow-table entries found when the state was adopted.
    #[serde(default)]
    pub adopted_flows: u64,
    /// Health flips (up or down) the balancer applied since it started.
    #[serde(default)]
    pub health_transitions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub endpoint: String,
    pub algorithm: Algorithm,
    pub forwarding: Forwarding,
    pub table_size: u32,
    /// Defined by command-line flags: not changeable at runtime.
    pub from_flags: bool,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub packets_per_sec: f64,
    pub bits_per_sec: f64,
    pub new_flows_per_sec: f64,
    /// What new connections get when no backend is up (`on_all_down`).
    #[serde(default)]
    pub on_all_down: OnAllDown,
    /// Which backends take new connections now, by health.
    #[serde(default)]
    pub serving: Serving,
    pub backends: Vec<BackendStatus>,
}

/// Which backends of a service take new connections, by the health checks, the
/// backup rule and `on_all_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Serving {
    /// The healthy primary backends (the normal case).
    #[default]
    Primaries,
    /// Every primary is down: the healthy backups.
    Backups,
    /// No backend is up and `on_all_down = "drop"`: new connections are dropped.
    AllDownDrop,
    /// No backend is up and `on_all_down = "fail-open"`: every configured backend.
    AllDownFailOpen,
    /// An operator took every backend out (no active backend configured).
    NoActive,
}

impl std::fmt::Display for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Serving::Primaries => "primaries",
            Serving::Backups => "backups",
            Serving::AllDownDrop => "all down: drop",
            Serving::AllDownFailOpen => "all down: fail-open",
            Serving::NoActive => "no active backend",
        })
    }
}

/// What the health checks say about one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// The health state: up or down by its checks.
    pub up: bool,
    /// tcp, http or udp.
    pub check: String,
    /// Where the probes go.
    pub target: SocketAddr,
    /// The last check's outcome: "ok" or why it failed; none before the first check.
    #[serde(default)]
    pub last_result: Option<String>,
    /// Latency of the last passing check, in milliseconds.
    #[serde(default)]
    pub last_latency_ms: Option<f64>,
    /// Seconds since the last check finished.
    #[serde(default)]
    pub last_check_secs_ago: Option<f64>,
    pub checks: u64,
    /// Consecutive results against the current state (toward rise or fall).
    pub streak: u32,
    /// Up/down flips the balancer applied for this backend.
    pub transitions: u64,
    /// Why the last flip happened ("health check failed: connection refused").
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds since the last flip.
    #[serde(default)]
    pub since_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
    /// Share of the service's table, in percent: its share of new flows.
    pub table_share: f64,
    /// Entries in the flow table pinned to this backend.
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub packets_per_sec: f64,
    pub bits_per_sec: f64,
    pub new_flows_per_sec: f64,
    /// Seconds left before a drain with a timeout takes the backend down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_remaining_secs: Option<f64>,
    /// A backup backend: new connections only while every primary is down.
    #[serde(default)]
    pub backup: bool,
    /// What the data plane uses: the admin `state` combined with health (a backend
    /// the checks call down is down; a healthy backup not in use is draining).
    pub effective_state: BackendState,
    /// The weight in the table: `weight`, or less during a slow start.
    pub effective_weight: u32,
    /// The health checks' view; none when the backend is not checked.
    #[serde(default)]
    pub health: Option<HealthStatus>,
}

/// A backend with its service's name, for `backend list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendRow {
    pub service: String,
    #[serde(flatten)]
    pub backend: BackendStatus,
}

/// Why a request was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    UnknownService,
    UnknownBackend,
    /// The change breaks a configuration rule (weight range, duplicate, ...).
    Invalid,
    /// The change would leave a service without an active backend.
    WouldEmpty,
    /// The change cannot be saved (no file, a flag-defined service, the file
    /// changed on disk since it was loaded, a write error).
    NotPersistable,
    /// The kernel refused the writes.
    Dataplane,
    /// The daemon is stopping.
    Unavailable,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}
