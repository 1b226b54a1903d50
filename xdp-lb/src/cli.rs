//! Command-line interface: subcommands and their flags.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "xdp-lb", version, about = "Layer-4 load balancer in XDP", long_about = None)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the balancer to interfaces and serve the configured services.
    Run(RunArgs),
    /// Validate a configuration (file and/or flags) and print what `run` would program.
    Check(RunArgs),
    /// Attach a program that passes every packet (XDP_PASS) and wait for SIGINT/SIGTERM.
    ///
    /// A veth only accepts XDP_TX/XDP_REDIRECT frames when its peer has an XDP program;
    /// test topologies and the demo attach this on the peers.
    #[command(hide = true)]
    XdpPass {
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
    },
    /// HTTP cache tier: caching reverse proxy with a Redis-backed shared cache.
    Cache(crate::cache::CacheArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default, serde::Deserialize)]
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

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// TOML configuration file (many services). Flags below add one more service.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Interface to attach to (repeatable). Overrides `interfaces` in the file.
    #[arg(short, long = "iface")]
    pub ifaces: Vec<String>,
    /// How to attach the XDP program.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// Flow-table capacity (connections remembered per table).
    #[arg(long)]
    pub flow_table_size: Option<u32>,
    /// Quick single service: the virtual IP and port, e.g. 203.0.113.10:80 or [2001:db8::10]:80.
    #[arg(long)]
    pub vip: Option<String>,
    /// Protocol of the --vip service.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    /// Backend of the --vip service as ADDR:PORT[@WEIGHT] (repeatable), e.g. 10.0.0.2:8080@3.
    #[arg(short, long = "backend")]
    pub backends: Vec<String>,
    /// Backend choice for new flows of the --vip service: maglev or src-hash.
    #[arg(long, default_value = "maglev")]
    pub algorithm: String,
    /// Forwarding of the --vip service: nat or dsr.
    #[arg(long, default_value = "nat")]
    pub forwarding: String,
    /// Maglev table size of the --vip service (a prime).
    #[arg(long)]
    pub table_size: Option<u32>,
}

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Cache(args) => crate::cache::run(args),
        Command::Run(_) | Command::Check(_) | Command::XdpPass { .. } => {
            anyhow::bail!("not implemented yet")
        }
    }
}
