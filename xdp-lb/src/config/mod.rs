//! Configuration: the TOML file and the single-service command-line flags, merged and
//! validated into a `Config` before anything touches the kernel.
//!
//! # File format
//!
//! ```toml
//! interfaces = ["eth0"]          # required unless --iface is given; --iface replaces it
//! xdp_mode = "auto"              # auto (default) | native | generic
//! attach = "auto"                # auto (default: tc on veth, XDP elsewhere) | xdp | tc
//! flow_table_size = 262144       # optional: connections remembered per flow table
//! max_services = 32              # optional: service slots the ring map is sized for (1..=1024)
//! max_table_size = 65537         # optional: largest table_size any service may use
//! nat_handshake_guard = "10ms"   # optional: a NAT backend's answer time to a new flow (0..=60s)
//!
//! [[service]]
//! name = "web"                   # optional, default "VIP:PORT/PROTO"
//! vip = "198.18.100.1"           # IPv4 or IPv6 address (no port)
//! port = 80                      # 1..=65535
//! proto = "tcp"                  # tcp (default) | udp
//! algorithm = "maglev"           # maglev (default) | src-hash | round-robin | weighted-round-robin | least-conn | random-two-least-conn
//! forwarding = "nat"             # nat (default) | dsr
//! table_size = 65537             # optional Maglev table size, a prime (see below)
//!
//! [[service.backend]]
//! addr = "198.18.1.2"            # same address family as the VIP
//! port = 8080                    # required for nat; for dsr optional and must equal the service port
//! weight = 3                     # 1..=65535, default 1 (take a backend out with state, not weight 0)
//! state = "active"               # active (default) | draining | down
//! backup = false                 # true: gets new flows only while every primary is down
//!
//! [service.health_check]         # see `crate::health::config` for every key
//! type = "tcp"                   # tcp (default for tcp services) | http | udp | none
//! ```
//!
//! Health checks: a tcp service without a `health_check` table is checked with the
//! library's default (tcp connect every 2 s, rise 2, fall 3); a udp service without
//! one is not checked (a udp check needs a payload the backend answers, which only
//! the operator knows). A backend's `[service.backend.health_check]` overrides the
//! service's table key by key. `slow_start = "30s"` ramps a backend that came back;
//! `on_all_down = "drop" | "fail-open"` says what happens when no backend is up.
//!
//! Rules beyond the syntax: every service has at least one and at most
//! `MAX_BACKENDS_PER_SERVICE` backends; (vip, port, proto) and names are unique; a
//! backend (addr, port) appears once per service. `table_size` must be prime (Maglev's
//! permutations only cover the table when M is prime), at least 100 x the number of
//! configured backends (the paper's bound for keeping the per-backend imbalance
//! near 1%), and at most `max_table_size`. `max_services` and `max_table_size` size
//! kernel maps, so they are fixed for the life of a `run`.
//!
//! Every mistake past the TOML syntax is reported, not only the first: each check
//! records its mistake with its place and goes on (see `mistakes`).
//!
//! Command-line flags: `--vip ADDR:PORT` (IPv6 as `[2001:db8::10]:80`) with repeatable
//! `--backend ADDR:PORT[@WEIGHT]` and `--proto/--algorithm/--forwarding/--table-size`
//! adds one service to those of the file; `--iface`, `--xdp-mode` and
//! `--flow-table-size` override the file.
use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Deserialize;
use xdp_lb_common::{
    DEFAULT_FLOW_TABLE_SIZE, DEFAULT_RING_SIZE, LC_MAX_BACKENDS, MAX_BACKENDS_PER_SERVICE,
    MAX_RING_SIZE, MAX_SERVICES,
};

use crate::{
    cache::CacheConfig,
    health::{self, policy::UnknownOnAllDown, HealthCheck, HealthCheckConfig, OnAllDown},
};

pub mod edit;
mod mistakes;

pub use mistakes::Mistake;
use mistakes::Mistakes;

/// How the XDP program is attached to each interface.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Driver mode, falling back to generic (SKB) mode with a warning.
    #[default]
    Auto,
    /// Driver (native) mode only: fail if the driver lacks XDP support.
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Generic,
}

impl XdpMode {
    pub const NAMES: [&'static str; 3] = ["auto", "native", "generic"];

    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl std::str::FromStr for XdpMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        parse_xdp_mode(s)
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which program type runs the balancer on an interface.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attach {
    /// XDP (`xdp_lb`) in `xdp_mode`, on every interface.
    Xdp,
    /// tc ingress (`tc_lb`, a TCX link), on every interface: for veth, where it
    /// keeps GSO and partial checksums and delivers into the peer's namespace.
    Tc,
    /// The default: tc on veth interfaces (XDP costs a veth a copy of every skb and
    /// its peer's TSO), XDP on every other one (a NIC with native XDP sees frames
    /// before any skb exists); XDP everywhere on a kernel without TCX (before 6.6).
    #[default]
    Auto,
}

impl Attach {
    pub const NAMES: [&'static str; 3] = ["xdp", "tc", "auto"];

    pub fn as_str(self) -> &'static str {
        match self {
            Attach::Xdp => "xdp",
            Attach::Tc => "tc",
            Attach::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Attach {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        parse_attach(s)
    }
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a configuration comes from: the file named by `config`, plus what the
/// command line adds (one service from `vip`/`backends`/...) or overrides
/// (`ifaces`, `xdp_mode`, `flow_table_size`). Built by the CLI; plain data here so
/// the configuration model knows nothing of the argument parser.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config: Option<std::path::PathBuf>,
    pub ifaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub attach: Option<Attach>,
    pub flow_table_size: Option<u32>,
    /// One more service: `ADDR:PORT` (IPv6 as `[ADDR]:PORT`).
    pub vip: Option<String>,
    /// Of the `vip` service; empty means the default.
    pub proto: String,
    /// Of the `vip` service: `ADDR:PORT[@WEIGHT]`.
    pub backends: Vec<String>,
    pub algorithm: String,
    pub forwarding: String,
    pub table_size: Option<u32>,
    /// Overrides `[monitor] metrics_listen`: `ADDR:PORT` or `off`.
    pub metrics_listen: Option<String>,
}

/// Default number of service slots the ring map is sized for.
pub const DEFAULT_MAX_SERVICES: u32 = 32;
/// Default upper bound for any service's `table_size`.
pub const DEFAULT_MAX_TABLE_SIZE: u32 = DEFAULT_RING_SIZE;
/// Maglev table slots required per configured backend.
pub const SLOTS_PER_BACKEND: u32 = 100;
/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 65535;
/// Upper bound on `2 * max_services * max_table_size` ring entries (4 bytes each, so
/// 256 MiB of kernel memory): beyond it the map allocation is likely to fail.
pub const MAX_RING_ENTRIES: u64 = 1 << 26;
/// Default `nat_handshake_guard`: far longer than a backend on the balancer's network
/// takes to answer a SYN, short enough that few SYNs find a young NAT flow in their
/// slot (those pay an LRU insert).
pub const DEFAULT_NAT_HANDSHAKE_GUARD: Duration = Duration::from_millis(10);
/// Largest `nat_handshake_guard`: a TCP client retransmits its SYN after 1 s, but a
/// UDP backend may answer one datagram for longer; beyond a minute a slot would stay
/// reserved for flows long gone.
pub const MAX_NAT_HANDSHAKE_GUARD: Duration = Duration::from_secs(60);
/// Linux IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// A validated configuration: every address parsed, every limit checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub attach: Attach,
    pub flow_table_size: u32,
    /// Service slots the ring map is sized for (fixed for the life of a `run`).
    pub max_services: u32,
    /// Largest Maglev table size any service may use (fixed for the life of a `run`).
    pub max_table_size: u32,
    /// How long a new NAT flow of a hash-scheduled service keeps its embryonic slot
    /// from later flows (`xdp_lb_common::SLOT_CONF_GUARD`): the time its backend may
    /// take to answer the flow's first packet before the answer can pass
    /// untranslated. Fixed for the life of a `run`.
    pub nat_handshake_guard: Duration,
    pub services: Vec<ServiceConfig>,
    /// The HTTP cache tier to run beside the balancer, if the file has `[cache]`.
    pub cache: Option<CacheConfig>,
    /// Sampling, `/metrics` and alerts (`[monitor]`; defaults when absent).
    pub monitor: MonitorSettings,
    /// Services that came from the file: the first `file_services` of `services`;
    /// a service from the command-line flags follows them.
    pub file_services: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Operator-chosen name, or "VIP:PORT/PROTO" when none is given.
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub algorithm: Algorithm,
    pub forwarding: Forwarding,
    /// Maglev table size M (prime).
    pub table_size: u32,
    pub backends: Vec<BackendConfig>,
    /// The service's `[service.health_check]` table as written (resolved per backend
    /// by `ServiceConfig::health_check`); kept raw so a re-read file compares equal.
    pub health_check: Option<HealthCheckConfig>,
    /// Ramp time of a backend whose checks bring it back; `None`: full weight at once.
    pub slow_start: Option<Duration>,
    pub on_all_down: OnAllDown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub addr: IpAddr,
    /// Always set: for DSR services it is the service port.
    pub port: u16,
    /// 1..=MAX_WEIGHT.
    pub weight: u32,
    pub state: BackendState,
    /// Gets new flows only while every primary backend of the service is down.
    pub backup: bool,
    /// The backend's `[service.backend.health_check]` override as written.
    pub health_check: Option<HealthCheckConfig>,
}

impl BackendConfig {
    /// An active primary backend with the default check.
    pub fn new(addr: IpAddr, port: u16, weight: u32, state: BackendState) -> Self {
        BackendConfig {
            addr,
            port,
            weight,
            state,
            backup: false,
            health_check: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    Maglev,
    SrcHash,
    /// Every active backend once per cycle, weights ignored.
    RoundRobin,
    /// Smooth weighted round robin (nginx): interleaved, in proportion to weights.
    WeightedRoundRobin,
    /// Fewest open connections relative to weight, counted by the data plane.
    LeastConn,
    /// The less loaded (least-conn's measure) of two backends drawn at random in
    /// proportion to weight (nginx's `random two least_conn`, HAProxy's `random(2)`):
    /// constant work per new flow, any number of backends.
    RandomTwoLeastConn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    Nat,
    Dsr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    Active,
    Draining,
    Down,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// IP protocol number as used in packets and map keys.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => xdp_lb_common::PROTO_TCP,
            Proto::Udp => xdp_lb_common::PROTO_UDP,
        }
    }
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Maglev => "maglev",
            Algorithm::SrcHash => "src-hash",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::LeastConn => "least-conn",
            Algorithm::RandomTwoLeastConn => "random-two-least-conn",
        }
    }

    /// Every algorithm, in the order error messages and `--help` list them.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Maglev,
        Algorithm::SrcHash,
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConn,
        Algorithm::RandomTwoLeastConn,
    ];

    /// The names `ALL` accepts, for clap's `value_parser`.
    pub const NAMES: [&'static str; 6] = [
        "maglev",
        "src-hash",
        "round-robin",
        "weighted-round-robin",
        "least-conn",
        "random-two-least-conn",
    ];

    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The data plane counts this service's connections per backend (CONNS), and
    /// its backend records carry their weights: least-conn and random-two-least-conn.
    pub fn counts_connections(self) -> bool {
        matches!(self, Algorithm::LeastConn | Algorithm::RandomTwoLeastConn)
    }
}

impl Forwarding {
    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::Nat => "nat",
            Forwarding::Dsr => "dsr",
        }
    }
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width/alignment flags work in tables.
        f.pad(self.as_str())
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width/alignment flags work in tables.
        f.pad(self.as_str())
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width/alignment flags work in tables.
        f.pad(self.as_str())
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width/alignment flags work in tables.
        f.pad(self.as_str())
    }
}

impl ServiceConfig {
    /// "VIP:PORT/PROTO", e.g. "198.18.100.1:80/tcp" or "[2001:db8::10]:80/tcp".
    pub fn endpoint(&self) -> String {
        format!("{}/{}", SocketAddr::new(self.vip, self.port), self.proto)
    }

    /// The check of backend `b`, or `None` when it is not checked (type "none", or a
    /// udp service with no `health_check` table at all: see the module docs).
    pub fn health_check(
        &self,
        b: &BackendConfig,
    ) -> Result<Option<HealthCheck>, health::HealthConfigError> {
        // A udp check needs `send`, which only the operator can give: with no table
        // at all, a udp backend is not checked.
        if self.proto == Proto::Udp && self.health_check.is_none() && b.health_check.is_none() {
            return Ok(None);
        }
        let check = health::resolve(
            &self.name,
            b.socket_addr(),
            self.health_check.as_ref(),
            b.health_check.as_ref(),
        )?;
        Ok((check.kind() != health::CheckKind::None).then_some(check))
    }
}

impl BackendConfig {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Several mistakes at once; a single one is returned as its own variant.
    #[error("{origin}: {} mistakes; fix each of them:{}", .mistakes.len(), mistakes::render(.mistakes))]
    Invalid {
        origin: String,
        mistakes: Vec<Mistake>,
    },
    #[error("[cache] section: {0}")]
    Cache(crate::cache::config::ConfigError),
    #[error("no services configured: give --config FILE with [[service]] tables or --vip ADDR:PORT with --backend ADDR:PORT")]
    NoServices,
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: invalid TOML: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{origin}:{line}:{column}: {message} (check the spelling against the documented keys)"
    )]
    UnknownKey {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{context}: malformed address {value:?}: {reason}")]
    BadAddress {
        context: String,
        value: String,
        reason: String,
    },
    #[error("service {service:?}: backend {backend} is {backend_family} but the VIP {vip} is {vip_family}; use backends of the VIP's address family")]
    FamilyMismatch {
        service: String,
        vip: IpAddr,
        backend: String,
        vip_family: &'static str,
        backend_family: &'static str,
    },
    #[error("{context}: port 0 is not allowed; give a port in 1..=65535")]
    PortZero { context: String },
    #[error("{context}: port {value} out of range; give a port in 1..=65535")]
    PortOutOfRange { context: String, value: i64 },
    #[error("service {service:?}: backend {addr} needs a port (only dsr services default it to the service port)")]
    MissingBackendPort { service: String, addr: IpAddr },
    #[error("service {service:?}: dsr backend {backend} must use the service port {port} (dsr only rewrites MAC addresses); drop the port or set it to {port}")]
    DsrPortMismatch {
        service: String,
        backend: String,
        port: u16,
    },
    #[error("service {service:?}: backend {backend} listed twice")]
    DuplicateBackend { service: String, backend: String },
    #[error("service {service:?}: least-conn takes at most {max} backends ({count} configured): the data plane scans every backend on each new flow; use random-two-least-conn (two backends weighed per new flow, any number of backends), weighted-round-robin or maglev, or split the service")]
    TooManyLeastConnBackends {
        service: String,
        count: usize,
        max: u32,
    },
    #[error("service {service:?}: backend {backend} has the VIP's own address: the balancer would send the service's traffic back to itself; give the backend's real address (DSR backends hold the VIP on loopback, but are addressed by their own)")]
    BackendIsVip { service: String, backend: String },
    #[error("services {first:?} and {second:?} both use {endpoint}; each vip+port+proto may appear once")]
    DuplicateService {
        first: String,
        second: String,
        endpoint: String,
    },
    #[error("service name {name:?} used twice; give each service a distinct name")]
    DuplicateServiceName { name: String },
    #[error("service name must not be empty (leave `name` out for the default VIP:PORT/PROTO)")]
    EmptyServiceName,
    #[error("service {service:?}: backend {backend} weight {weight} out of range 1..={max} (to take a backend out, use state = \"draining\" or \"down\")")]
    WeightOutOfRange {
        service: String,
        backend: String,
        weight: i64,
        max: u32,
    },
    #[error("service {service:?}: unknown algorithm {value:?}; use one of maglev (default), src-hash, round-robin, weighted-round-robin, least-conn, random-two-least-conn")]
    UnknownAlgorithm { service: String, value: String },
    #[error("service {service:?}: unknown forwarding {value:?}; use \"nat\" or \"dsr\"")]
    UnknownForwarding { service: String, value: String },
    #[error("service {service:?}: unknown proto {value:?}; use \"tcp\" or \"udp\"")]
    UnknownProto { service: String, value: String },
    #[error("service {service:?}: backend {backend} has unknown state {value:?}; use \"active\", \"draining\" or \"down\"")]
    UnknownState {
        service: String,
        backend: String,
        value: String,
    },
    #[error("unknown xdp_mode {value:?}; use \"auto\", \"native\" or \"generic\"")]
    UnknownXdpMode { value: String },
    #[error("unknown attach {value:?}; use \"xdp\", \"tc\" or \"auto\"")]
    UnknownAttach { value: String },
    #[error("service {service:?}: table_size {size} is not prime (Maglev needs a prime); the next prime is {suggestion}")]
    TableSizeNotPrime {
        service: String,
        size: u32,
        suggestion: u32,
    },
    #[error("service {service:?}: table_size {size} too small for {backends} backends: Maglev needs at least {SLOTS_PER_BACKEND} slots per backend, e.g. table_size = {suggestion}")]
    TableSizeTooSmall {
        service: String,
        size: u32,
        backends: usize,
        suggestion: u32,
    },
    #[error("service {service:?}: table_size {size} exceeds max_table_size {max}; raise max_table_size or lower table_size")]
    TableSizeTooLarge {
        service: String,
        size: u32,
        max: u32,
    },
    #[error("service {service:?}: {count} backends, more than the limit of {max} per service")]
    TooManyBackends {
        service: String,
        count: usize,
        max: u32,
    },
    #[error("service {service:?}: no backends; add [[service.backend]] entries (or --backend)")]
    NoBackends { service: String },
    #[error("{count} services configured but max_services is {max}; raise max_services (at most {MAX_SERVICES})")]
    TooManyServices { count: usize, max: u32 },
    #[error("no interfaces configured: set interfaces = [\"eth0\"] in the file or give --iface")]
    NoInterfaces,
    #[error("interface name {name:?} is invalid: {reason}")]
    BadInterface { name: String, reason: &'static str },
    #[error("interface {name:?} listed twice")]
    DuplicateInterface { name: String },
    #[error("{key} = {value} is invalid: {reason}")]
    BadLimit {
        key: &'static str,
        value: u64,
        reason: String,
    },
    #[error("nat_handshake_guard = {value:?} is invalid: {reason}")]
    BadNatGuard { value: String, reason: String },
    #[error("[monitor] {key} {value:?}: {reason}")]
    BadMonitor {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("{flag} needs --vip ADDR:PORT (the flags describe one service)")]
    FlagWithoutVip { flag: &'static str },
    #[error("invalid health check")]
    HealthCheck(#[source] health::HealthConfigError),
    #[error("service {service:?}: slow_start = {value:?} is not a duration; write e.g. \"30s\" or \"2m\" (or leave it out for no slow start)")]
    BadSlowStart {
        service: String,
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("service {service:?}")]
    OnAllDown {
        service: String,
        #[source]
        source: UnknownOnAllDown,
    },
}

/// `nat_handshake_guard`: a duration from 0 to `MAX_NAT_HANDSHAKE_GUARD`.
fn parse_nat_guard(v: &str) -> Result<Duration, ConfigError> {
    let bad = |reason: String| ConfigError::BadNatGuard {
        value: v.to_string(),
        reason,
    };
    // humantime reads "0" as an error; zero is a valid guard (no protection).
    let d = if v.trim() == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(v)
            .map_err(|e| bad(format!("{e}; write e.g. \"10ms\" or \"200ms\"")))?
    };
    if d > MAX_NAT_HANDSHAKE_GUARD {
        return Err(bad(format!(
            "at most {}; set it just above your NAT backends' slowest answer to a new flow",
            humantime::format_duration(MAX_NAT_HANDSHAKE_GUARD)
        )));
    }
    Ok(d)
}

/// Loads the file named by `args.config` (if any), adds the flag-defined service (if
/// `--vip` is given), applies defaults and validates the result.
pub fn load(args: &Sources) -> Result<Config, ConfigError> {
    load_with_text(args).map(|(cfg, _)| cfg)
}

/// `load`, also returning the file's text as it was read (one read, so the text is
/// exactly what the configuration came from).
pub fn load_with_text(args: &Sources) -> Result<(Config, Option<String>), ConfigError> {
    match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let cfg = parse_text(&text, args)?;
            Ok((cfg, Some(text)))
        }
        None => Ok((build(RawConfig::default(), args)?, None)),
    }
}

/// Parses `text` as the file `args.config` names, merged with the flags in `args`.
pub fn parse_text(text: &str, args: &Sources) -> Result<Config, ConfigError> {
    let origin = args
        .config
        .as_deref()
        .map_or_else(|| "<config>".to_string(), |p| p.display().to_string());
    build(parse_raw(text, &origin)?, args)
}

/// Parses and validates a TOML document alone (no flags); errors name it `<config>`.
pub fn parse_str(toml_text: &str) -> Result<Config, ConfigError> {
    build(parse_raw(toml_text, "<config>")?, &Sources::default())
}

/// Parses a TOML document and merges `args` into it, as `load` does for a file.
pub fn parse_str_with_args(toml_text: &str, args: &Sources) -> Result<Config, ConfigError> {
    build(parse_raw(toml_text, "<config>")?, args)
}

/// The file as written: strings where the value set is ours to check, so that a bad
/// value gets a message naming the service instead of a generic serde one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    interfaces: Vec<String>,
    xdp_mode: Option<String>,
    attach: Option<String>,
    flow_table_size: Option<u32>,
    max_services: Option<u32>,
    max_table_size: Option<u32>,
    nat_handshake_guard: Option<String>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    /// The HTTP cache tier, run beside the balancer (see `crate::cache`).
    cache: Option<CacheConfig>,
    monitor: Option<RawMonitor>,
}

/// `[monitor]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    interval: Option<String>,
    metrics_listen: Option<String>,
    history: Option<usize>,
    alerts: Option<crate::monitor::AlertConfig>,
}

/// Default address of the Prometheus endpoint: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9717";

/// The daemon's monitor: how often it samples, where `/metrics` is served, and what
/// the monitor keeps and alerts on.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    pub interval: std::time::Duration,
    /// `None`: no `/metrics` endpoint (`metrics_listen = "off"`).
    pub metrics_listen: Option<SocketAddr>,
    pub monitor: crate::monitor::MonitorConfig,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            interval: std::time::Duration::from_secs(1),
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().expect("valid default")),
            monitor: crate::monitor::MonitorConfig::default(),
        }
    }
}

fn monitor_settings(
    raw: Option<RawMonitor>,
    listen_flag: Option<&str>,
) -> Result<MonitorSettings, ConfigError> {
    let mut raw = raw.unwrap_or(RawMonitor {
        interval: None,
        metrics_listen: None,
        history: None,
        alerts: None,
    });
    if let Some(l) = listen_flag {
        raw.metrics_listen = Some(l.to_string());
    }
    let mut m = MonitorSettings::default();
    let bad = |key: &'static str, value: String, reason: String| ConfigError::BadMonitor {
        key,
        value,
        reason,
    };
    if let Some(i) = raw.interval {
        let d = humantime::parse_duration(&i).map_err(|e| {
            bad(
                "interval",
                i.clone(),
                format!("{e}; e.g. \"1s\" or \"500ms\""),
            )
        })?;
        if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600) {
            return Err(bad("interval", i, "must be between 100ms and 1h".into()));
        }
        m.interval = d;
    }
    if let Some(l) = raw.metrics_listen {
        m.metrics_listen = match l.as_str() {
            "off" | "" => None,
            _ => Some(l.parse().map_err(|_| {
                bad(
                    "metrics_listen",
                    l.clone(),
                    "expected ADDR:PORT such as 127.0.0.1:9717, or \"off\"".into(),
                )
            })?),
        };
    }
    if let Some(h) = raw.history {
        m.monitor.history = h;
    }
    if let Some(a) = raw.alerts {
        m.monitor.alerts = a;
    }
    m.monitor
        .validate()
        .map_err(|e| bad("alerts", String::new(), e.to_string()))?;
    Ok(m)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    vip: String,
    port: i64,
    proto: Option<String>,
    algorithm: Option<String>,
    forwarding: Option<String>,
    table_size: Option<u32>,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
    health_check: Option<HealthCheckConfig>,
    slow_start: Option<String>,
    on_all_down: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    addr: String,
    port: Option<i64>,
    weight: Option<i64>,
    state: Option<String>,
    backup: Option<bool>,
    health_check: Option<HealthCheckConfig>,
}

fn parse_raw(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((1, 1));
        let message = e.message().trim().to_string();
        let origin = origin.to_string();
        if message.starts_with("unknown field") {
            ConfigError::UnknownKey {
                origin,
                line,
                column,
                message,
            }
        } else {
            ConfigError::Syntax {
                origin,
                line,
                column,
                message,
            }
        }
    })
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Where the configuration's mistakes are reported from: the file, or the command line.
fn origin(args: &Sources) -> String {
    args.config.as_deref().map_or_else(
        || "the configuration".to_string(),
        |p| p.display().to_string(),
    )
}

fn build(raw: RawConfig, args: &Sources) -> Result<Config, ConfigError> {
    // Nothing to balance is the most basic mistake: report it before anything else.
    if raw.services.is_empty() && args.vip.is_none() {
        service_from_flags(args)?;
        return Err(ConfigError::NoServices);
    }
    // Every check below records its mistake and goes on (with the default in place of
    // a bad value), so one run reports all of them.
    let mut m = Mistakes::default();
    let (interfaces, at) = if args.ifaces.is_empty() {
        (raw.interfaces, "interfaces")
    } else {
        (args.ifaces.clone(), "--iface")
    };
    for e in interface_mistakes(&interfaces) {
        m.add(at, e);
    }

    let xdp_mode = match (args.xdp_mode, raw.xdp_mode.as_deref()) {
        (Some(mode), _) => mode,
        (None, None) => XdpMode::default(),
        (None, Some(s)) => m.check("xdp_mode", parse_xdp_mode(s)).unwrap_or_default(),
    };
    let attach = match (args.attach, raw.attach.as_deref()) {
        (Some(a), _) => a,
        (None, None) => Attach::default(),
        (None, Some(s)) => m.check("attach", parse_attach(s)).unwrap_or_default(),
    };

    let flow_table_size = args
        .flow_table_size
        .or(raw.flow_table_size)
        .unwrap_or(DEFAULT_FLOW_TABLE_SIZE);
    if flow_table_size == 0 {
        let at = match args.flow_table_size {
            Some(_) => "--flow-table-size",
            None => "flow_table_size",
        };
        m.add(
            at,
            ConfigError::BadLimit {
                key: "flow_table_size",
                value: 0,
                reason: "must be at least 1".into(),
            },
        );
    }

    let nat_handshake_guard = match raw.nat_handshake_guard.as_deref() {
        None => DEFAULT_NAT_HANDSHAKE_GUARD,
        Some(v) => m
            .check("nat_handshake_guard", parse_nat_guard(v))
            .unwrap_or(DEFAULT_NAT_HANDSHAKE_GUARD),
    };

    let limits_before = m.len();
    let mut max_services = raw.max_services.unwrap_or(DEFAULT_MAX_SERVICES);
    if !(1..=MAX_SERVICES).contains(&max_services) {
        m.add(
            "max_services",
            ConfigError::BadLimit {
                key: "max_services",
                value: max_services.into(),
                reason: format!("must be in 1..={MAX_SERVICES}"),
            },
        );
        max_services = DEFAULT_MAX_SERVICES;
    }
    let mut max_table_size = raw.max_table_size.unwrap_or(DEFAULT_MAX_TABLE_SIZE);
    if !(SLOTS_PER_BACKEND..=MAX_RING_SIZE).contains(&max_table_size) {
        m.add(
            "max_table_size",
            ConfigError::BadLimit {
                key: "max_table_size",
                value: max_table_size.into(),
                reason: format!("must be in {SLOTS_PER_BACKEND}..={MAX_RING_SIZE}"),
            },
        );
        max_table_size = DEFAULT_MAX_TABLE_SIZE;
    }
    // Only from values as written: after a bad one was replaced by its default, the
    // product is not the operator's.
    let ring_entries = 2 * u64::from(max_services) * u64::from(max_table_size);
    if m.len() == limits_before && ring_entries > MAX_RING_ENTRIES {
        m.add(
            "max_table_size",
            ConfigError::BadLimit {
                key: "max_table_size",
                value: max_table_size.into(),
                reason: format!(
                    "with max_services = {max_services} the ring map needs {ring_entries} entries, \
                     more than {MAX_RING_ENTRIES}; lower one of them"
                ),
            },
        );
    }

    // Where each parsed service came from, for the semantic checks' messages.
    let mut places = Vec::with_capacity(raw.services.len() + 1);
    let mut services = Vec::with_capacity(raw.services.len() + 1);
    for (i, rs) in raw.services.into_iter().enumerate() {
        let at = format!("service[{i}]");
        if let Some(svc) = service_from_raw(rs, &at, &mut m) {
            services.push(svc);
            places.push(at);
        }
    }
    let file_services = services.len();
    if let Some(svc) = m.check("command line", service_from_flags(args)).flatten() {
        services.push(svc);
        places.push("command line".to_string());
    }

    if let Some(cache) = &raw.cache {
        m.check("[cache]", cache.validate().map_err(ConfigError::Cache));
    }
    let monitor = m
        .check(
            "[monitor]",
            monitor_settings(raw.monitor, args.metrics_listen.as_deref()),
        )
        .unwrap_or_default();

    let cfg = Config {
        interfaces,
        xdp_mode,
        attach,
        flow_table_size,
        max_services,
        max_table_size,
        nat_handshake_guard,
        services,
        cache: raw.cache,
        monitor,
        file_services,
    };
    service_mistakes(&cfg, &places, &mut m);
    m.into_result(&origin(args))?;
    Ok(cfg)
}

/// The rules between services and within each: run on every configuration, whether
/// it came from the file or from a runtime change.
pub fn validate_services(cfg: &Config) -> Result<(), ConfigError> {
    let places: Vec<String> = (0..cfg.services.len())
        .map(|i| format!("service[{i}]"))
        .collect();
    let mut m = Mistakes::default();
    service_mistakes(cfg, &places, &mut m);
    m.into_result("the configuration")
}

/// Records the mistakes of `cfg.services`; `places[i]` says where service `i` is.
fn service_mistakes(cfg: &Config, places: &[String], m: &mut Mistakes) {
    let services = &cfg.services;
    if services.is_empty() {
        // Only when every service failed to parse; those mistakes are already listed.
        if m.len() == 0 {
            m.add("", ConfigError::NoServices);
        }
        return;
    }
    if services.len() > cfg.max_services as usize {
        m.add(
            "max_services",
            ConfigError::TooManyServices {
                count: services.len(),
                max: cfg.max_services,
            },
        );
    }
    let mut names = HashSet::new();
    let mut endpoints: Vec<((IpAddr, u16, Proto), &str)> = Vec::new();
    for (svc, at) in services.iter().zip(places) {
        validate_service(svc, cfg.max_table_size, at, m);
        if !names.insert(svc.name.as_str()) {
            m.add(
                at.as_str(),
                ConfigError::DuplicateServiceName {
                    name: svc.name.clone(),
                },
            );
        }
        let key = (svc.vip, svc.port, svc.proto);
        if let Some((_, first)) = endpoints.iter().find(|(k, _)| *k == key) {
            m.add(
                at.as_str(),
                ConfigError::DuplicateService {
                    first: first.to_string(),
                    second: svc.name.clone(),
                    endpoint: svc.endpoint(),
                },
            );
        }
        endpoints.push((key, &svc.name));
    }
}

/// Every mistake in the interface list.
fn interface_mistakes(interfaces: &[String]) -> Vec<ConfigError> {
    if interfaces.is_empty() {
        return vec![ConfigError::NoInterfaces];
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for name in interfaces {
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > MAX_IFNAME_LEN {
            Some("longer than 15 bytes")
        } else if name.contains('/') {
            Some("contains '/'")
        } else if name.chars().any(char::is_whitespace) {
            Some("contains whitespace")
        } else if name == "." || name == ".." {
            Some("reserved name")
        } else {
            None
        };
        if let Some(reason) = reason {
            out.push(ConfigError::BadInterface {
                name: name.clone(),
                reason,
            });
        } else if !seen.insert(name.as_str()) {
            out.push(ConfigError::DuplicateInterface { name: name.clone() });
        }
    }
    out
}

fn parse_xdp_mode(s: &str) -> Result<XdpMode, ConfigError> {
    match s {
        "auto" => Ok(XdpMode::Auto),
        "native" => Ok(XdpMode::Native),
        "generic" => Ok(XdpMode::Generic),
        _ => Err(ConfigError::UnknownXdpMode { value: s.into() }),
    }
}

fn parse_attach(s: &str) -> Result<Attach, ConfigError> {
    match s {
        "xdp" => Ok(Attach::Xdp),
        "tc" => Ok(Attach::Tc),
        "auto" => Ok(Attach::Auto),
        _ => Err(ConfigError::UnknownAttach { value: s.into() }),
    }
}

fn parse_proto(service: &str, s: &str) -> Result<Proto, ConfigError> {
    match s {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(ConfigError::UnknownProto {
            service: service.into(),
            value: s.into(),
        }),
    }
}

fn parse_algorithm(service: &str, s: &str) -> Result<Algorithm, ConfigError> {
    Algorithm::parse(s).ok_or_else(|| ConfigError::UnknownAlgorithm {
        service: service.into(),
        value: s.into(),
    })
}

fn parse_forwarding(service: &str, s: &str) -> Result<Forwarding, ConfigError> {
    match s {
        "nat" => Ok(Forwarding::Nat),
        "dsr" => Ok(Forwarding::Dsr),
        _ => Err(ConfigError::UnknownForwarding {
            service: service.into(),
            value: s.into(),
        }),
    }
}

fn parse_state(service: &str, backend: &str, s: &str) -> Result<BackendState, ConfigError> {
    match s {
        "active" => Ok(BackendState::Active),
        "draining" => Ok(BackendState::Draining),
        "down" => Ok(BackendState::Down),
        _ => Err(ConfigError::UnknownState {
            service: service.into(),
            backend: backend.into(),
            value: s.into(),
        }),
    }
}

fn parse_ip(context: &str, value: &str) -> Result<IpAddr, ConfigError> {
    let addr: IpAddr = value.parse().map_err(|_| ConfigError::BadAddress {
        context: context.into(),
        value: value.into(),
        reason: "expected an IPv4 address like 198.18.0.1 or an IPv6 address like 2001:db8::1 \
                 (no port, no brackets)"
            .into(),
    })?;
    if addr.is_unspecified() || addr.is_multicast() || addr == IpAddr::from([255, 255, 255, 255]) {
        return Err(ConfigError::BadAddress {
            context: context.into(),
            value: value.into(),
            reason: "not a unicast address".into(),
        });
    }
    Ok(addr)
}

fn check_port(context: &str, port: i64) -> Result<u16, ConfigError> {
    match port {
        0 => Err(ConfigError::PortZero {
            context: context.into(),
        }),
        1..=65535 => Ok(port as u16),
        _ => Err(ConfigError::PortOutOfRange {
            context: context.into(),
            value: port,
        }),
    }
}

/// Default name: the endpoint, so an unnamed service is still recognisable in logs.
fn default_name(vip: IpAddr, port: u16, proto: Proto) -> String {
    format!("{}/{}", SocketAddr::new(vip, port), proto)
}

/// A name for error messages before the real one is known.
fn provisional_name(name: &Option<String>, vip: &str, port: i64) -> String {
    match name {
        Some(n) => n.clone(),
        None => format!("{vip}:{port}"),
    }
}

/// The service of one `[[service]]` table, or `None` with its mistakes recorded in
/// `m` (all of them: each key is checked even after another failed).
fn service_from_raw(raw: RawService, at: &str, m: &mut Mistakes) -> Option<ServiceConfig> {
    let before = m.len();
    let label = provisional_name(&raw.name, &raw.vip, raw.port);
    let vip = m.check(at, parse_ip(&format!("service {label:?}: vip"), &raw.vip));
    let port = m.check(
        at,
        check_port(&format!("service {label:?}: port"), raw.port),
    );
    let proto = m.check(
        at,
        parse_proto(&label, raw.proto.as_deref().unwrap_or("tcp")),
    );
    let name = match (raw.name, vip, port, proto) {
        (Some(n), ..) if n.trim().is_empty() => {
            m.add(at, ConfigError::EmptyServiceName);
            label
        }
        (Some(n), ..) => n,
        (None, Some(vip), Some(port), Some(proto)) => default_name(vip, port, proto),
        (None, ..) => label,
    };
    let algorithm = m.check(
        at,
        parse_algorithm(&name, raw.algorithm.as_deref().unwrap_or("maglev")),
    );
    let forwarding = m.check(
        at,
        parse_forwarding(&name, raw.forwarding.as_deref().unwrap_or("nat")),
    );
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (j, b) in raw.backends.into_iter().enumerate() {
        let at = format!("{at}.backend[{j}]");
        if let Some(backend) = backend_from_raw(b, &name, forwarding, port, &at, m) {
            backends.push(backend);
        }
    }
    let slow_start = match raw.slow_start {
        None => None,
        Some(value) => {
            let d = humantime::parse_duration(&value).map_err(|source| ConfigError::BadSlowStart {
                service: name.clone(),
                value: value.clone(),
                source,
            });
            // "0s" says "no slow start" as plainly as leaving the key out.
            m.check(at, d).filter(|d| !d.is_zero())
        }
    };
    let on_all_down = match raw.on_all_down.as_deref() {
        None => OnAllDown::default(),
        Some(value) => m
            .check(
                at,
                value.parse().map_err(|source| ConfigError::OnAllDown {
                    service: name.clone(),
                    source,
                }),
            )
            .unwrap_or_default(),
    };
    let (Some(vip), Some(port), Some(proto), Some(algorithm), Some(forwarding)) =
        (vip, port, proto, algorithm, forwarding)
    else {
        return None;
    };
    if m.len() > before {
        return None;
    }
    Some(ServiceConfig {
        name,
        vip,
        port,
        proto,
        algorithm,
        forwarding,
        table_size: raw.table_size.unwrap_or(DEFAULT_RING_SIZE),
        backends,
        health_check: raw.health_check,
        slow_start,
        on_all_down,
    })
}

/// One `[[service.backend]]` table of service `name`; `forwarding` and
/// `service_port` are `None` when the service's own value was a mistake (the port
/// rules that need them are then skipped).
fn backend_from_raw(
    b: RawBackend,
    name: &str,
    forwarding: Option<Forwarding>,
    service_port: Option<u16>,
    at: &str,
    m: &mut Mistakes,
) -> Option<BackendConfig> {
    let before = m.len();
    let addr = m.check(at, parse_ip(&format!("service {name:?}: backend"), &b.addr));
    let shown = addr.map_or_else(|| b.addr.clone(), |a| a.to_string());
    // `Some(None)`: a port was written but is a mistake.
    let bport = b.port.map(|p| {
        m.check(
            at,
            check_port(&format!("service {name:?}: backend {shown}"), p),
        )
    });
    let port = match (addr, forwarding, service_port, bport) {
        (Some(addr), Some(f), Some(sp), None | Some(Some(_))) => {
            m.check(at, resolve_backend_port(name, f, sp, addr, bport.flatten()))
        }
        _ => None,
    };
    let label = match (addr, port) {
        (Some(a), Some(p)) => SocketAddr::new(a, p).to_string(),
        _ => shown,
    };
    let weight = m.check(at, check_weight(name, &label, b.weight.unwrap_or(1)));
    let state = m.check(
        at,
        parse_state(name, &label, b.state.as_deref().unwrap_or("active")),
    );
    if m.len() > before {
        return None;
    }
    Some(BackendConfig {
        addr: addr?,
        port: port?,
        weight: weight?,
        state: state?,
        backup: b.backup.unwrap_or(false),
        health_check: b.health_check,
    })
}

fn resolve_backend_port(
    service: &str,
    forwarding: Forwarding,
    service_port: u16,
    addr: IpAddr,
    port: Option<u16>,
) -> Result<u16, ConfigError> {
    match (forwarding, port) {
        (Forwarding::Nat, Some(p)) => Ok(p),
        (Forwarding::Nat, None) => Err(ConfigError::MissingBackendPort {
            service: service.into(),
            addr,
        }),
        (Forwarding::Dsr, None) => Ok(service_port),
        (Forwarding::Dsr, Some(p)) if p == service_port => Ok(p),
        (Forwarding::Dsr, Some(p)) => Err(ConfigError::DsrPortMismatch {
            service: service.into(),
            backend: SocketAddr::new(addr, p).to_string(),
            port: service_port,
        }),
    }
}

fn check_weight(service: &str, backend: &str, weight: i64) -> Result<u32, ConfigError> {
    if (1..=i64::from(MAX_WEIGHT)).contains(&weight) {
        Ok(weight as u32)
    } else {
        Err(ConfigError::WeightOutOfRange {
            service: service.into(),
            backend: backend.into(),
            weight,
            max: MAX_WEIGHT,
        })
    }
}

/// Splits "ADDR:PORT", "[V6]:PORT", "ADDR" or "[V6]" into address and optional port.
fn split_addr_port(context: &str, s: &str) -> Result<(IpAddr, Option<i64>), ConfigError> {
    let bad = |reason: &str| ConfigError::BadAddress {
        context: context.into(),
        value: s.into(),
        reason: reason.into(),
    };
    let syntax = "expected ADDR:PORT such as 198.18.0.1:80 or [2001:db8::1]:80";
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad(syntax))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or_else(|| bad(syntax))?),
            ),
        }
    } else if s.matches(':').count() == 1 {
        let (host, port) = s.split_once(':').expect("one colon");
        (host, Some(port))
    } else if s.contains(':') {
        return Err(bad(
            "IPv6 addresses with a port need brackets, e.g. [2001:db8::1]:80",
        ));
    } else {
        (s, None)
    };
    let addr = parse_ip(context, host)?;
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<i64>().map_err(|_| bad(syntax))?),
    };
    Ok((addr, port))
}

/// A backend as written on a command line: `ADDR[:PORT][@WEIGHT]`, IPv6 with
/// brackets (`[2001:db8::2]:8080@3`). The one parser for `--backend` and the admin
/// verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub weight: Option<u32>,
}

impl BackendSpec {
    pub fn parse(context: &str, spec: &str) -> Result<Self, ConfigError> {
        let (addr_part, weight) = match spec.rsplit_once('@') {
            Some((a, w)) => {
                let weight = w.parse::<i64>().map_err(|_| ConfigError::BadAddress {
                    context: context.into(),
                    value: spec.into(),
                    reason: "weight after '@' must be a number, e.g. 198.18.1.2:8080@3".into(),
                })?;
                if !(1..=i64::from(MAX_WEIGHT)).contains(&weight) {
                    return Err(ConfigError::WeightOutOfRange {
                        service: context.into(),
                        backend: a.into(),
                        weight,
                        max: MAX_WEIGHT,
                    });
                }
                (a, Some(weight as u32))
            }
            None => (spec, None),
        };
        let (addr, port) = split_addr_port(context, addr_part)?;
        let port = match port {
            Some(p) => Some(check_port(&format!("{context} {spec}"), p)?),
            None => None,
        };
        Ok(BackendSpec { addr, port, weight })
    }
}

/// An unset (empty) flag value means the default.
fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

fn service_from_flags(args: &Sources) -> Result<Option<ServiceConfig>, ConfigError> {
    let Some(vip_arg) = &args.vip else {
        if !args.backends.is_empty() {
            return Err(ConfigError::FlagWithoutVip { flag: "--backend" });
        }
        if args.table_size.is_some() {
            return Err(ConfigError::FlagWithoutVip {
                flag: "--table-size",
            });
        }
        // These have defaults, so only a non-default value shows the operator meant
        // to describe a service (`Sources::default()` leaves them empty).
        for (flag, value, default) in [
            ("--proto", &args.proto, "tcp"),
            ("--algorithm", &args.algorithm, "maglev"),
            ("--forwarding", &args.forwarding, "nat"),
        ] {
            if !value.is_empty() && value != default {
                return Err(ConfigError::FlagWithoutVip { flag });
            }
        }
        return Ok(None);
    };
    let (vip, port) = split_addr_port("--vip", vip_arg)?;
    let Some(port) = port else {
        return Err(ConfigError::BadAddress {
            context: "--vip".into(),
            value: vip_arg.clone(),
            reason: "missing port: expected ADDR:PORT such as 198.18.0.1:80".into(),
        });
    };
    let port = check_port("--vip", port)?;
    let provisional = format!("{}", SocketAddr::new(vip, port));
    let proto = parse_proto(&provisional, or_default(&args.proto, "tcp"))?;
    let name = default_name(vip, port, proto);
    let algorithm = parse_algorithm(&name, or_default(&args.algorithm, "maglev"))?;
    let forwarding = parse_forwarding(&name, or_default(&args.forwarding, "nat"))?;
    let mut backends = Vec::with_capacity(args.backends.len());
    for spec in &args.backends {
        let b = BackendSpec::parse("--backend", spec)?;
        let port = resolve_backend_port(&name, forwarding, port, b.addr, b.port)?;
        let weight = check_weight(&name, spec, b.weight.map_or(1, i64::from))?;
        backends.push(BackendConfig::new(
            b.addr,
            port,
            weight,
            BackendState::Active,
        ));
    }
    Ok(Some(ServiceConfig {
        name,
        vip,
        port,
        proto,
        algorithm,
        forwarding,
        table_size: args.table_size.unwrap_or(DEFAULT_RING_SIZE),
        backends,
        health_check: None,
        slow_start: None,
        on_all_down: OnAllDown::default(),
    }))
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Records the rules one service breaks; backends' mistakes at `at.backend[i]`.
fn validate_service(svc: &ServiceConfig, max_table_size: u32, at: &str, m: &mut Mistakes) {
    let service = || svc.name.clone();
    if svc.backends.is_empty() {
        m.add(at, ConfigError::NoBackends { service: service() });
    }
    if svc.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
        m.add(
            at,
            ConfigError::TooManyBackends {
                service: service(),
                count: svc.backends.len(),
                max: MAX_BACKENDS_PER_SERVICE,
            },
        );
    }
    if svc.algorithm == Algorithm::LeastConn && svc.backends.len() > LC_MAX_BACKENDS as usize {
        m.add(
            at,
            ConfigError::TooManyLeastConnBackends {
                service: service(),
                count: svc.backends.len(),
                max: LC_MAX_BACKENDS,
            },
        );
    }
    let mut seen = HashSet::new();
    for (i, b) in svc.backends.iter().enumerate() {
        let at = format!("{at}.backend[{i}]");
        let backend = b.socket_addr().to_string();
        // Both NAT (rewrites the destination address) and DSR (the backend answers
        // from the VIP it holds) need one address family end to end.
        if b.addr == svc.vip {
            m.add(
                at.as_str(),
                ConfigError::BackendIsVip {
                    service: service(),
                    backend: backend.clone(),
                },
            );
        } else if b.addr.is_ipv4() != svc.vip.is_ipv4() {
            m.add(
                at.as_str(),
                ConfigError::FamilyMismatch {
                    service: service(),
                    vip: svc.vip,
                    backend: backend.clone(),
                    vip_family: family(svc.vip),
                    backend_family: family(b.addr),
                },
            );
        }
        if !seen.insert(b.socket_addr()) {
            m.add(
                at.as_str(),
                ConfigError::DuplicateBackend {
                    service: service(),
                    backend,
                },
            );
        }
        // Resolved here so a bad check fails `check`, `run` and runtime changes
        // before anything is programmed.
        m.check(&at, svc.health_check(b).map_err(ConfigError::HealthCheck));
    }
    let size = svc.table_size;
    if !is_prime(size) {
        m.add(
            at,
            ConfigError::TableSizeNotPrime {
                service: service(),
                size,
                suggestion: next_prime(size),
            },
        );
    }
    let min = svc.backends.len() as u64 * u64::from(SLOTS_PER_BACKEND);
    if u64::from(size) < min {
        m.add(
            at,
            ConfigError::TableSizeTooSmall {
                service: service(),
                size,
                backends: svc.backends.len(),
                suggestion: next_prime(min as u32),
            },
        );
    }
    if size > max_table_size {
        m.add(
            at,
            ConfigError::TableSizeTooLarge {
                service: service(),
                size,
                max: max_table_size,
            },
        );
    }
}

/// Trial division: table sizes are at most ~1e6, so this is a few hundred steps.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Smallest prime >= n.
pub fn next_prime(n: u32) -> u32 {
    let mut c = n.max(2);
    while !is_prime(c) {
        c += 1;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interfaces = ["veth0", "veth1"]
xdp_mode = "generic"
flow_table_size = 1024
max_services = 4
max_table_size = 65537

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
proto = "tcp"
algorithm = "maglev"
forwarding = "nat"
table_size = 65537

[[service.backend]]
addr = "198.18.1.2"
port = 8080
weight = 3

[[service.backend]]
addr = "198.18.1.3"
port = 8080
state = "draining"

[[service]]
vip = "2001:db8::10"
port = 53
proto = "udp"
algorithm = "src-hash"
forwarding = "dsr"
table_size = 1009

[[service.backend]]
addr = "2001:db8::2"
state = "down"
"#;

    /// A one-service file with `svc` spliced into the service table and `backend`
    /// into its single backend table.
    fn one(svc: &str, backend: &str) -> String {
        format!(
            "interfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nvip = \"198.18.100.1\"\n\
             port = 80\n{svc}\n[[service.backend]]\naddr = \"198.18.1.2\"\nport = 8080\n{backend}\n"
        )
    }

    fn err(text: &str) -> ConfigError {
        parse_str(text).expect_err("config should be rejected")
    }

    #[test]
    fn cache_section_is_parsed_and_validated() {
        assert_eq!(parse_str(GOOD).unwrap().cache, None);
        let with_cache = format!(
            "{GOOD}\n[cache]\nlisten = \"127.0.0.1:8081\"\nupstreams = [{{ addr = \"198.18.1.2:8080\", weight = 2 }}]\n"
        );
        let cache = parse_str(&with_cache).unwrap().cache.expect("[cache] kept");
        assert_eq!(cache.listen.port(), 8081);
        assert_eq!(cache.upstreams[0].weight, 2);
        let no_upstream = format!("{GOOD}\n[cache]\nlisten = \"127.0.0.1:8081\"\n");
        let err = parse_str(&no_upstream).unwrap_err();
        assert!(matches!(err, ConfigError::Cache(_)), "{err}");
        assert!(err.to_string().starts_with("[cache] section: "), "{err}");
        let typo = format!("{GOOD}\n[cache]\nlisten = \"127.0.0.1:8081\"\nupstream = []\n");
        assert!(matches!(
            parse_str(&typo).unwrap_err(),
            ConfigError::UnknownKey { .. }
        ));
    }

    #[test]
    fn nat_handshake_guard_is_a_bounded_duration() {
        let guard = |v: &str| parse_str(&format!("nat_handshake_guard = {v:?}\n{}", one("", "")));
        assert_eq!(
            parse_str(&one("", "")).unwrap().nat_handshake_guard,
            DEFAULT_NAT_HANDSHAKE_GUARD
        );
        assert_eq!(
            guard("250ms").unwrap().nat_handshake_guard,
            Duration::from_millis(250)
        );
        assert_eq!(guard("0").unwrap().nat_handshake_guard, Duration::ZERO);
        assert_eq!(
            guard("60s").unwrap().nat_handshake_guard,
            MAX_NAT_HANDSHAKE_GUARD
        );
        for (bad, says) in [("2m", "at most 1m"), ("soon", "10ms"), ("-1s", "10ms")] {
            let e = guard(bad).expect_err(bad);
            assert!(matches!(e, ConfigError::BadNatGuard { .. }), "{bad}: {e:?}");
            let text = e.to_string();
            assert!(
                text.contains("nat_handshake_guard") && text.contains(says),
                "{bad}: {text}"
            );
        }
        // The kernel's units round up: never shorter than asked.
        assert_eq!(xdp_lb_common::slot_guard_units(10_000_000), 10);
        assert_eq!(xdp_lb_common::slot_guard_units(1 << 20), 1);
        assert_eq!(xdp_lb_common::slot_guard_units((1 << 20) + 1), 2);
        assert_eq!(xdp_lb_common::slot_guard_units(0), 0);
    }

    #[test]
    fn full_valid_file() {
        let cfg = parse_str(GOOD).unwrap();
        assert_eq!(cfg.interfaces, ["veth0", "veth1"]);
        assert_eq!(cfg.xdp_mode, XdpMode::Generic);
        assert_eq!(cfg.flow_table_size, 1024);
        assert_eq!(cfg.max_services, 4);
        assert_eq!(cfg.max_table_size, 65537);
        assert_eq!(cfg.services.len(), 2);
        let web = &cfg.services[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.vip, "198.18.100.1".parse::<IpAddr>().unwrap());
        assert_eq!((web.port, web.proto), (80, Proto::Tcp));
        assert_eq!(
            (web.algorithm, web.forwarding, web.table_size),
            (Algorithm::Maglev, Forwarding::Nat, 65537)
        );
        assert_eq!(
            web.backends,
            vec![
                BackendConfig::new("198.18.1.2".parse().unwrap(), 8080, 3, BackendState::Active),
                BackendConfig::new(
                    "198.18.1.3".parse().unwrap(),
                    8080,
                    1,
                    BackendState::Draining
                ),
            ]
        );
        let dns = &cfg.services[1];
        assert_eq!(dns.name, "[2001:db8::10]:53/udp");
        assert_eq!(
            (dns.algorithm, dns.forwarding, dns.table_size),
            (Algorithm::SrcHash, Forwarding::Dsr, 1009)
        );
        // DSR backends default to the service port.
        assert_eq!(dns.backends[0].port, 53);
        assert_eq!(dns.backends[0].state, BackendState::Down);
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse_str(&one("", "")).unwrap();
        assert_eq!(cfg.xdp_mode, XdpMode::Auto);
        assert_eq!(cfg.flow_table_size, DEFAULT_FLOW_TABLE_SIZE);
        assert_eq!(cfg.max_services, DEFAULT_MAX_SERVICES);
        assert_eq!(cfg.max_table_size, 65537);
        let s = &cfg.services[0];
        assert_eq!(
            (s.proto, s.algorithm, s.forwarding, s.table_size),
            (Proto::Tcp, Algorithm::Maglev, Forwarding::Nat, 65537)
        );
        assert_eq!(
            (s.backends[0].weight, s.backends[0].state),
            (1, BackendState::Active)
        );
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let args = Sources {
            config: Some("/nonexistent/xdp-lb.toml".into()),
            ..Default::default()
        };
        let e = load(&args).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/xdp-lb.toml"), "{e}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = err("interfaces = [\"eth0\"]\n[[service]]\nvip = \"198.18.0.1\nport = 80\n");
        match &e {
            ConfigError::Syntax { line, column, .. } => assert_eq!((*line, *column), (3, 18)),
            other => panic!("expected Syntax, got {other:?}"),
        }
        assert!(
            e.to_string().starts_with("<config>:3:18: invalid TOML"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_rejected_at_every_level() {
        for text in [
            "interfaces = [\"eth0\"]\ninterface = \"eth1\"\n".to_string(),
            one("colour = \"blue\"", ""),
            one("", "wieght = 2"),
        ] {
            let e = err(&text);
            assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e:?}");
            assert!(e.to_string().contains("unknown field"), "{e}");
        }
        let e = err(&one("", "wieght = 2"));
        assert!(e.to_string().contains("<config>:10:1"), "{e}");
    }

    #[test]
    fn malformed_addresses() {
        let e = err(&one("", "").replace("198.18.100.1", "198.18.100"));
        assert!(matches!(e, ConfigError::BadAddress { .. }), "{e:?}");
        assert!(e.to_string().contains("\"198.18.100\""), "{e}");
        assert!(e.to_string().contains("service \"web\": vip"), "{e}");
        let e = err(&one("", "").replace("198.18.1.2", "198.18.1.2:80"));
        assert!(matches!(e, ConfigError::BadAddress { .. }), "{e:?}");
        let e = err(&one("", "").replace("198.18.100.1", "0.0.0.0"));
        assert!(e.to_string().contains("not a unicast address"), "{e}");
    }

    #[test]
    fn family_mismatch_in_nat_and_dsr() {
        let e = err(&one("", "").replace("198.18.1.2", "2001:db8::2"));
        assert!(matches!(e, ConfigError::FamilyMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains("[2001:db8::2]:8080 is IPv6"), "{e}");
        let text = one("forwarding = \"dsr\"", "")
            .replace("198.18.1.2", "2001:db8::2")
            .replace("port = 8080\n", "");
        assert!(matches!(err(&text), ConfigError::FamilyMismatch { .. }));
        let text = one("", "")
            .replace("198.18.100.1", "2001:db8::1")
            .replace("name = \"web\"\n", "");
        assert!(matches!(err(&text), ConfigError::FamilyMismatch { .. }));
    }

    #[test]
    fn port_zero_and_out_of_range() {
        let e = err(&one("", "").replace("port = 80\n", "port = 0\n"));
        assert!(matches!(e, ConfigError::PortZero { .. }), "{e:?}");
        let e = err(&one("", "").replace("port = 8080", "port = 0"));
        assert!(matches!(e, ConfigError::PortZero { .. }), "{e:?}");
        assert!(e.to_string().contains("backend 198.18.1.2"), "{e}");
        let e = err(&one("", "").replace("port = 8080", "port = 70000"));
        assert!(matches!(
            e,
            ConfigError::PortOutOfRange { value: 70000, .. }
        ));
    }

    #[test]
    fn nat_backend_needs_port_and_dsr_port_must_match() {
        let e = err(&one("", "").replace("port = 8080\n", ""));
        assert!(matches!(e, ConfigError::MissingBackendPort { .. }), "{e:?}");
        let e = err(&one("forwarding = \"dsr\"", ""));
        assert!(
            matches!(e, ConfigError::DsrPortMismatch { port: 80, .. }),
            "{e:?}"
        );
        let ok = parse_str(&one("forwarding = \"dsr\"", "").replace("port = 8080", "port = 80"));
        assert_eq!(ok.unwrap().services[0].backends[0].port, 80);
    }

    #[test]
    fn duplicate_backend() {
        let text = format!(
            "{}[[service.backend]]\naddr = \"198.18.1.2\"\nport = 8080\n",
            one("", "")
        );
        let e = err(&text);
        assert!(matches!(e, ConfigError::DuplicateBackend { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "service \"web\": backend 198.18.1.2:8080 listed twice"
        );
        // Same address, other port: a different backend.
        let text = format!(
            "{}[[service.backend]]\naddr = \"198.18.1.2\"\nport = 8081\n",
            one("", "")
        );
        assert_eq!(parse_str(&text).unwrap().services[0].backends.len(), 2);
    }

    #[test]
    fn duplicate_service_and_name() {
        let second = "[[service]]\nname = \"web2\"\nvip = \"198.18.100.1\"\nport = 80\n\
                      [[service.backend]]\naddr = \"198.18.1.9\"\nport = 80\n";
        let e = err(&format!("{}{second}", one("", "")));
        assert!(matches!(e, ConfigError::DuplicateService { .. }), "{e:?}");
        assert!(e.to_string().contains("198.18.100.1:80/tcp"), "{e}");
        // Same vip+port on the other protocol is a different service.
        let udp = second.replace("port = 80\n[[", "port = 80\nproto = \"udp\"\n[[");
        assert_eq!(
            parse_str(&format!("{}{udp}", one("", "")))
                .unwrap()
                .services
                .len(),
            2
        );
        let renamed = udp.replace("web2", "web");
        let e = err(&format!("{}{renamed}", one("", "")));
        assert!(
            matches!(e, ConfigError::DuplicateServiceName { .. }),
            "{e:?}"
        );
        let e = err(&one("", "").replace("name = \"web\"", "name = \" \""));
        assert!(matches!(e, ConfigError::EmptyServiceName), "{e:?}");
    }

    #[test]
    fn every_scheduler_parses() {
        for a in Algorithm::ALL {
            let cfg = parse_str(&one(&format!("algorithm = \"{a}\""), "")).unwrap();
            assert_eq!(cfg.services[0].algorithm, a);
        }
    }

    #[test]
    fn least_conn_backend_limit() {
        let backends: String = (0..=LC_MAX_BACKENDS)
            .map(|i| {
                format!(
                    "[[service.backend]]\naddr = \"198.18.{}.{}\"\nport = 8080\n",
                    2 + i / 200,
                    1 + i % 200
                )
            })
            .collect();
        let text = |alg: &str| {
            format!(
                "interfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nvip = \"198.18.100.1\"\n\
                 port = 80\nalgorithm = \"{alg}\"\nhealth_check = {{ type = \"none\" }}\n{backends}"
            )
        };
        let e = err(&text("least-conn"));
        assert!(
            matches!(e, ConfigError::TooManyLeastConnBackends { count: 257, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("weighted-round-robin"), "{e}");
        assert!(e.to_string().contains("random-two-least-conn"), "{e}");
        parse_str(&text("weighted-round-robin")).unwrap();
        // Two draws per new flow: no bound from a scan.
        let cfg = parse_str(&text("random-two-least-conn")).unwrap();
        assert_eq!(cfg.services[0].algorithm, Algorithm::RandomTwoLeastConn);
    }

    #[test]
    fn weight_range() {
        for w in ["0", "-1", "65536"] {
            let e = err(&one("", &format!("weight = {w}")));
            assert!(matches!(e, ConfigError::WeightOutOfRange { .. }), "{e:?}");
            assert!(e.to_string().contains(r#"state = "draining""#), "{e}");
        }
        let cfg = parse_str(&one("", "weight = 65535")).unwrap();
        assert_eq!(cfg.services[0].backends[0].weight, 65535);
    }

    #[test]
    fn unknown_enum_values() {
        let e = err(&one("algorithm = \"rr\"", ""));
        assert!(matches!(e, ConfigError::UnknownAlgorithm { .. }), "{e:?}");
        // The error names the bad value and every choice.
        let text = e.to_string();
        assert!(text.contains("\"rr\""), "{e}");
        for name in Algorithm::NAMES {
            assert!(text.contains(name), "{name} missing from: {e}");
        }
        let e = err(&one("forwarding = \"tunnel\"", ""));
        assert!(matches!(e, ConfigError::UnknownForwarding { .. }), "{e:?}");
        let e = err(&one("proto = \"sctp\"", ""));
        assert!(matches!(e, ConfigError::UnknownProto { .. }), "{e:?}");
        let e = err(&one("", "state = \"up\""));
        assert!(matches!(e, ConfigError::UnknownState { .. }), "{e:?}");
        assert!(e.to_string().contains("backend 198.18.1.2:8080"), "{e}");
        let e = err(&format!("xdp_mode = \"offload\"\n{}", one("", "")));
        assert!(matches!(e, ConfigError::UnknownXdpMode { .. }), "{e:?}");
        let e = err(&format!("attach = \"tcx\"\n{}", one("", "")));
        assert!(matches!(e, ConfigError::UnknownAttach { .. }), "{e:?}");
        assert!(e.to_string().contains("\"xdp\", \"tc\" or \"auto\""), "{e}");
    }

    #[test]
    fn attach_defaults_to_auto_comes_from_the_file_and_the_flag_wins() {
        assert_eq!(parse_str(GOOD).unwrap().attach, Attach::Auto);
        let text = format!("attach = \"xdp\"\n{GOOD}");
        assert_eq!(parse_str(&text).unwrap().attach, Attach::Xdp);
        let args = Sources {
            attach: Some(Attach::Tc),
            ..Sources::default()
        };
        assert_eq!(
            parse_str_with_args(&text, &args).unwrap().attach,
            Attach::Tc
        );
    }

    #[test]
    fn table_size_rules() {
        let e = err(&one("table_size = 65536", ""));
        assert!(
            matches!(
                e,
                ConfigError::TableSizeNotPrime {
                    suggestion: 65537,
                    ..
                }
            ),
            "{e:?}"
        );
        // One backend needs 100 slots: 97 is prime but too small, 101 is fine.
        let e = err(&one("table_size = 97", ""));
        assert!(
            matches!(
                e,
                ConfigError::TableSizeTooSmall {
                    suggestion: 101,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(parse_str(&one("table_size = 101", "")).is_ok());
        let e = err(&one("table_size = 131071", ""));
        assert!(
            matches!(e, ConfigError::TableSizeTooLarge { max: 65537, .. }),
            "{e:?}"
        );
        let raised = format!(
            "max_table_size = 131071\n{}",
            one("table_size = 131071", "")
        );
        assert_eq!(parse_str(&raised).unwrap().services[0].table_size, 131071);
    }

    #[test]
    fn backend_count_limits() {
        let e = err(&one("", "").replace(
            "[[service.backend]]\naddr = \"198.18.1.2\"\nport = 8080\n",
            "",
        ));
        assert!(matches!(e, ConfigError::NoBackends { .. }), "{e:?}");
        let n = MAX_BACKENDS_PER_SERVICE as usize + 1;
        let mut text = "interfaces = [\"eth0\"]\nmax_table_size = 131071\n[[service]]\n\
                        name = \"big\"\nvip = \"198.18.100.1\"\nport = 80\ntable_size = 131071\n"
            .to_string();
        for i in 0..n {
            text += &format!(
                "[[service.backend]]\naddr = \"198.18.{}.{}\"\nport = 80\n",
                1 + i / 250,
                1 + i % 250
            );
        }
        let e = err(&text);
        assert!(
            matches!(e, ConfigError::TooManyBackends { count: 1025, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn service_count_limits() {
        let e = err("interfaces = [\"eth0\"]\n");
        assert!(matches!(e, ConfigError::NoServices), "{e:?}");
        let mut text = "interfaces = [\"eth0\"]\nmax_services = 2\n".to_string();
        for port in 1..=3 {
            text += &format!(
                "[[service]]\nvip = \"198.18.100.1\"\nport = {port}\n\
                 [[service.backend]]\naddr = \"198.18.1.2\"\nport = 80\n"
            );
        }
        let e = err(&text);
        assert!(
            matches!(e, ConfigError::TooManyServices { count: 3, max: 2 }),
            "{e:?}"
        );
        let e = err(&format!("max_services = 0\n{}", one("", "")));
        assert!(
            matches!(
                e,
                ConfigError::BadLimit {
                    key: "max_services",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = err(&format!(
            "max_services = 1024\nmax_table_size = 1000003\n{}",
            one("", "")
        ));
        assert!(
            matches!(
                e,
                ConfigError::BadLimit {
                    key: "max_table_size",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = err(&format!("flow_table_size = 0\n{}", one("", "")));
        assert!(
            matches!(
                e,
                ConfigError::BadLimit {
                    key: "flow_table_size",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn interface_rules() {
        let body = one("", "").replace("interfaces = [\"eth0\"]\n", "");
        assert!(matches!(err(&body), ConfigError::NoInterfaces));
        for bad in ["", "a-very-long-interface", "eth/0", "eth 0", ".."] {
            let e = err(&format!("interfaces = [{bad:?}]\n{body}"));
            assert!(
                matches!(e, ConfigError::BadInterface { .. }),
                "{bad:?}: {e:?}"
            );
        }
        let e = err(&format!("interfaces = [\"eth0\", \"eth0\"]\n{body}"));
        assert!(matches!(e, ConfigError::DuplicateInterface { .. }), "{e:?}");
        // Exactly 15 bytes is the kernel's limit and still fine.
        assert!(parse_str(&format!("interfaces = [\"abcdefghijklmno\"]\n{body}")).is_ok());
    }

    fn flags(vip: &str, backends: &[&str]) -> Sources {
        Sources {
            ifaces: vec!["veth0".into()],
            vip: Some(vip.into()),
            backends: backends.iter().map(|s| s.to_string()).collect(),
            proto: "tcp".into(),
            algorithm: "maglev".into(),
            forwarding: "nat".into(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_only() {
        let args = flags("198.18.100.1:80", &["198.18.1.2:8080@3", "198.18.1.3:8080"]);
        let cfg = build(RawConfig::default(), &args).unwrap();
        assert_eq!(cfg.interfaces, ["veth0"]);
        let s = &cfg.services[0];
        assert_eq!(s.name, "198.18.100.1:80/tcp");
        assert_eq!((s.port, s.table_size), (80, DEFAULT_RING_SIZE));
        assert_eq!(
            s.backends
                .iter()
                .map(|b| (b.socket_addr().to_string(), b.weight))
                .collect::<Vec<_>>(),
            [
                ("198.18.1.2:8080".to_string(), 3),
                ("198.18.1.3:8080".to_string(), 1)
            ]
        );

        let mut args = flags(
            "[2001:db8::10]:443",
            &["[2001:db8::2]:8443@2", "[2001:db8::3]"],
        );
        args.forwarding = "dsr".into();
        args.proto = "udp".into();
        args.table_size = Some(1009);
        let e = build(RawConfig::default(), &args).unwrap_err();
        assert!(
            matches!(e, ConfigError::DsrPortMismatch { port: 443, .. }),
            "{e:?}"
        );
        args.backends[0] = "[2001:db8::2]:443@2".into();
        let cfg = build(RawConfig::default(), &args).unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.name, "[2001:db8::10]:443/udp");
        assert_eq!((s.forwarding, s.table_size), (Forwarding::Dsr, 1009));
        assert_eq!(s.backends[1].port, 443);
        assert_eq!(s.backends[0].weight, 2);
    }

    #[test]
    fn flag_errors() {
        let raw = RawConfig::default;
        let e = build(raw(), &flags("198.18.100.1", &["198.18.1.2:80"])).unwrap_err();
        assert!(e.to_string().contains("missing port"), "{e}");
        let e = build(raw(), &flags("2001:db8::1:80", &[])).unwrap_err();
        assert!(e.to_string().contains("need brackets"), "{e}");
        let e = build(raw(), &flags("198.18.100.1:80", &["198.18.1.2:80@x"])).unwrap_err();
        assert!(matches!(e, ConfigError::BadAddress { .. }), "{e:?}");
        let e = build(raw(), &flags("198.18.100.1:80", &["198.18.1.2:80@0"])).unwrap_err();
        assert!(matches!(e, ConfigError::WeightOutOfRange { .. }), "{e:?}");
        let e = build(raw(), &flags("198.18.100.1:80", &["198.18.1.2"])).unwrap_err();
        assert!(matches!(e, ConfigError::MissingBackendPort { .. }), "{e:?}");
        let e = build(raw(), &flags("198.18.100.1:80", &[])).unwrap_err();
        assert!(matches!(e, ConfigError::NoBackends { .. }), "{e:?}");
        let mut args = flags("198.18.100.1:80", &["198.18.1.2:80"]);
        args.algorithm = "rr".into();
        assert!(matches!(
            build(raw(), &args).unwrap_err(),
            ConfigError::UnknownAlgorithm { .. }
        ));
        let mut args = flags("x", &["198.18.1.2:80"]);
        args.vip = None;
        assert!(matches!(
            build(raw(), &args).unwrap_err(),
            ConfigError::FlagWithoutVip { flag: "--backend" }
        ));
        // A non-default service flag next to a file but without --vip is a mistake.
        let mut args = flags("x", &[]);
        args.vip = None;
        args.forwarding = "dsr".into();
        assert!(matches!(
            parse_str_with_args(GOOD, &args).unwrap_err(),
            ConfigError::FlagWithoutVip {
                flag: "--forwarding"
            }
        ));
        // No file and no --vip: say so, not that interfaces are missing.
        assert!(matches!(
            build(raw(), &Sources::default()).unwrap_err(),
            ConfigError::NoServices
        ));
    }

    #[test]
    fn file_plus_flags() {
        let mut args = flags("198.18.100.2:443", &["198.18.1.7:8443"]);
        args.ifaces = vec!["lb0".into()];
        args.xdp_mode = Some(XdpMode::Native);
        args.flow_table_size = Some(4096);
        let cfg = parse_str_with_args(GOOD, &args).unwrap();
        assert_eq!(cfg.interfaces, ["lb0"]);
        assert_eq!(cfg.xdp_mode, XdpMode::Native);
        assert_eq!(cfg.flow_table_size, 4096);
        assert_eq!(cfg.services.len(), 3);
        assert_eq!(cfg.services[2].name, "198.18.100.2:443/tcp");
        // The flag service collides with the file's "web".
        let args = flags("198.18.100.1:80", &["198.18.1.7:8443"]);
        let e = parse_str_with_args(GOOD, &args).unwrap_err();
        assert!(matches!(e, ConfigError::DuplicateService { .. }), "{e:?}");
        // Through a real file.
        let path = std::env::temp_dir().join(format!("xdp-lb-config-{}.toml", std::process::id()));
        std::fs::write(&path, GOOD).unwrap();
        let args = Sources {
            config: Some(path.clone()),
            ..flags("198.18.100.2:443", &["198.18.1.7:8443"])
        };
        let loaded = load(&args);
        std::fs::remove_file(&path).unwrap();
        let cfg = loaded.unwrap();
        assert_eq!(cfg.interfaces, ["veth0"]);
        assert_eq!(cfg.services.len(), 3);
    }

    #[test]
    fn primes() {
        assert!(is_prime(2) && is_prime(101) && is_prime(65537) && is_prime(1_000_003));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(65535) && !is_prime(1_000_001));
        assert_eq!(next_prime(100), 101);
        assert_eq!(next_prime(65536), 65537);
    }

    #[test]
    fn health_keys_parse_and_resolve() {
        let text = one(
            "slow_start = \"30s\"\non_all_down = \"fail-open\"\n\
             [service.health_check]\ntype = \"http\"\ninterval = \"500ms\"\npath = \"/healthz\"",
            "backup = true\n[service.backend.health_check]\nport = 9000\nfall = 1",
        );
        let cfg = parse_str(&text).unwrap();
        let web = &cfg.services[0];
        assert_eq!(web.slow_start, Some(Duration::from_secs(30)));
        assert_eq!(web.on_all_down, OnAllDown::FailOpen);
        let b = &web.backends[0];
        assert!(b.backup);
        let check = web.health_check(b).unwrap().expect("checked");
        assert_eq!(check.kind(), health::CheckKind::Http);
        assert_eq!(check.target, "198.18.1.2:9000".parse().unwrap());
        assert_eq!(
            (check.interval, check.fall),
            (Duration::from_millis(500), 1)
        );
        // The same text read twice is the same configuration (the controller compares).
        assert_eq!(parse_str(&text).unwrap(), cfg);
    }

    #[test]
    fn without_a_table_tcp_services_get_the_default_check_udp_services_none() {
        let cfg = parse_str(GOOD).unwrap();
        let web = &cfg.services[0];
        assert_eq!(web.on_all_down, OnAllDown::Drop);
        assert_eq!(web.slow_start, None);
        assert!(!web.backends[0].backup);
        let check = web
            .health_check(&web.backends[0])
            .unwrap()
            .expect("tcp default");
        assert_eq!(check.kind(), health::CheckKind::Tcp);
        assert_eq!(check.target, web.backends[0].socket_addr());
        assert_eq!((check.rise, check.fall), (2, 3));
        let dns = &cfg.services[1];
        assert_eq!(dns.health_check(&dns.backends[0]).unwrap(), None);
        // type = "none" turns checks off for a tcp service.
        let off = parse_str(&one("[service.health_check]\ntype = \"none\"", "")).unwrap();
        assert_eq!(
            off.services[0]
                .health_check(&off.services[0].backends[0])
                .unwrap(),
            None
        );
        // A udp check on a udp service.
        let udp = parse_str(
            "interfaces = [\"eth0\"]\n[[service]]\nvip = \"198.18.100.1\"\nport = 53\nproto = \"udp\"\n\
             [[service.backend]]\naddr = \"198.18.1.2\"\nport = 53\n\
             [service.health_check]\ntype = \"udp\"\nsend = \"ping\"",
        )
        .unwrap();
        let svc = &udp.services[0];
        assert_eq!(
            svc.health_check(&svc.backends[0]).unwrap().unwrap().kind(),
            health::CheckKind::Udp
        );
    }

    #[test]
    fn bad_health_keys_fail_with_the_key_named() {
        let cases = [
            (
                one("[service.health_check]\ninterval = \"soon\"", ""),
                "service \"web\", backend 198.18.1.2:8080: health_check: interval = \"soon\" is not a duration",
            ),
            (
                one("", "[service.backend.health_check]\ntype = \"icmp\""),
                "type = \"icmp\" is unknown",
            ),
            (
                one("[service.health_check]\ntype = \"udp\"", ""),
                "needs send",
            ),
            (
                one("slow_start = \"fast\"", ""),
                "service \"web\": slow_start = \"fast\" is not a duration",
            ),
            (
                one("on_all_down = \"open\"", ""),
                "on_all_down = \"open\" is unknown; use \"drop\" or \"fail-open\"",
            ),
            (one("", "backup = \"yes\""), "invalid type"),
            (
                one("[service.health_check]\nintervall = \"1s\"", ""),
                "unknown field `intervall`",
            ),
        ];
        for (text, needle) in cases {
            let e = err(&text);
            let chain = crate::dataplane::error_chain(&e);
            assert!(chain.contains(needle), "{needle:?} not in {chain:?}");
        }
    }
}

#[cfg(test)]
mod vip_tests {
    use super::*;

    #[test]
    fn a_backend_at_the_vip_is_refused() {
        let e = parse_str(
            "interfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nvip = \"198.18.100.1\"\nport = 80\n[[service.backend]]\naddr = \"198.18.100.1\"\nport = 8080\n",
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::BackendIsVip { .. }), "{e}");
        assert!(e.to_string().contains("VIP's own address"), "{e}");
    }
}
