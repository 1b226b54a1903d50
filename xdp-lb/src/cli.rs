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
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Validate a configuration (file and/or flags) and print what `run` would program.
    ///
    /// Needs no privileges and touches nothing: exits 0 and prints a summary when the
    /// configuration is valid, prints what to fix and exits 1 otherwise.
    #[command(after_help = CHECK_EXAMPLES)]
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

const RUN_EXAMPLES: &str = "\
Examples:
  # One service from flags: TCP port 80 on a VIP, two backends weighted 3:1
  xdp-lb run --iface eth0 --vip 198.18.100.1:80 \\
      --backend 198.18.1.2:8080@3 --backend 198.18.1.3:8080

  # IPv6 VIP, direct server return (backends hold the VIP and answer clients directly)
  xdp-lb run --iface eth0 --vip '[2001:db8::10]:443' --forwarding dsr \\
      --backend '[2001:db8::2]' --backend '[2001:db8::3]'

  # Many services from a file (see the README for the format)
  xdp-lb run --config /etc/xdp-lb.toml

Check a configuration first with `xdp-lb check` (same flags).";

const CHECK_EXAMPLES: &str = "\
Examples:
  xdp-lb check --config /etc/xdp-lb.toml
  xdp-lb check --iface eth0 --vip 198.18.100.1:80 --backend 198.18.1.2:8080@3

Minimal file:
  interfaces = [\"eth0\"]
  [[service]]
  vip = \"198.18.100.1\"
  port = 80
  [[service.backend]]
  addr = \"198.18.1.2\"
  port = 8080";

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
        Command::Check(args) => check(&args),
        Command::Run(args) => crate::run::run(args),
        Command::XdpPass { ifaces } => crate::run::xdp_pass(&ifaces),
        Command::Cache(args) => crate::cache::run(args),
    }
}

/// `xdp-lb check`: everything `run` does before touching the kernel.
fn check(args: &RunArgs) -> anyhow::Result<()> {
    use anyhow::Context;

    let cfg = crate::config::load(args).context("invalid configuration")?;
    crate::plan::Planner::new(cfg.max_services, cfg.max_table_size)
        .apply(&cfg)
        .context("configuration cannot be programmed")?;
    print!("{}", crate::summary::render(&cfg));
    println!("\nconfiguration OK");
    Ok(())
}
