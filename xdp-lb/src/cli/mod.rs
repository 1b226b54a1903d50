//! Command-line interface: the clap types, one module per group of verbs, and the
//! dispatch from a parsed command line to library calls. The only module that knows
//! clap or anyhow.
mod admin;
mod cache;
#[cfg(test)]
mod help_tests;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{builder::TypedValueParser as _, Args, Parser, Subcommand};

use crate::config::{Attach, Sources, XdpMode};
pub use admin::{AdminArgs, BackendCmd, ServiceCmd};

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
    Run {
        #[command(flatten)]
        args: RunArgs,
        #[command(flatten)]
        admin: AdminServeArgs,
        #[command(flatten)]
        pin: PinDirArg,
        /// Start from empty maps: drop the pinned flow table, NAT state and counters
        /// of a previous run (its established connections are lost). Needed when
        /// the pinned state does not fit this binary or configuration.
        #[arg(long)]
        fresh: bool,
    },
    /// Detach the balancer's pinned programs from every interface and remove the
    /// pinned maps. `run` leaves both in place when it exits (so a restart keeps
    /// every connection); this is how to remove them.
    Detach {
        #[command(flatten)]
        pin: PinDirArg,
    },
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
    /// Show every service and backend of the running daemon: state, weight, share of
    /// the table, flows, packets/s, bits/s and new flows/s.
    #[command(
        after_help = "Examples:\n  xdp-lb status\n  xdp-lb status --json | jq '.services[].backends[] | {addr, flows}'"
    )]
    Status(AdminArgs),
    /// Change the backends of a service at runtime (saved into the configuration file).
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Add, remove or list services at runtime (saved into the configuration file).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Make the daemon re-read its configuration file (as SIGHUP does) and show what changed.
    Reload(AdminArgs),
    /// Live dashboard of the running daemon: services, backends, rates, CPU, memory,
    /// cache hit rate and firing alerts. `q` quits.
    Top {
        /// How often to refresh, e.g. 1s, 500ms.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        refresh: std::time::Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the alerts firing now (thresholds under [monitor.alerts]).
    Alerts(AdminArgs),
    /// Averages and peaks of every monitored figure over a window, and the machine's
    /// top processes by CPU and memory.
    #[command(
        after_help = "Examples:\n  xdp-lb report --window 5m\n  xdp-lb report --window 1h --json"
    )]
    Report {
        /// How far back, e.g. 60s, 5m (the history holds [monitor] history samples).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        window: std::time::Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// HTTP cache tier: caching reverse proxy with a Redis-backed shared cache.
    Cache(crate::cache::CacheArgs),
}

/// Where the state that outlives `run` is pinned.
#[derive(Args, Debug, Clone)]
pub struct PinDirArg {
    /// Directory on a bpf file system for the pinned maps (in a subdirectory per
    /// layout version) and links. Under /sys/fs/bpf, bpffs is mounted if it is not.
    #[arg(long, default_value = crate::dataplane::pin::DEFAULT_PIN_DIR, env = "XDP_LB_PIN_DIR")]
    pub pin_dir: PathBuf,
}

/// Where `run` serves the admin API.
#[derive(Args, Debug, Clone)]
pub struct AdminServeArgs {
    /// Unix socket of the admin API (created root-only, mode 0600).
    #[arg(long, default_value = crate::admin::DEFAULT_SOCKET, env = "XDP_LB_ADMIN_SOCKET")]
    pub admin_socket: PathBuf,
    /// Also serve the admin API on this loopback TCP address (e.g. 127.0.0.1:9901);
    /// needs --admin-token-file. Other addresses are refused.
    #[arg(long)]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// File holding the token TCP clients must send.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
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

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// TOML configuration file (many services). Flags below add one more service.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Interface to attach to (repeatable). Overrides `interfaces` in the file.
    #[arg(short, long = "iface")]
    pub ifaces: Vec<String>,
    /// How to attach the XDP program: auto (native, falling back to generic with a
    /// warning), native, or generic. [default: auto, or `xdp_mode` in the file]
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(XdpMode::NAMES)
        .map(|s| s.parse::<XdpMode>().expect("listed value")))]
    pub xdp_mode: Option<XdpMode>,
    /// Program type per interface: auto (tc on veth interfaces, where it keeps GSO
    /// and partial checksums and delivers into the peer's namespace, and XDP in
    /// --xdp-mode on the others, which is where a NIC with native XDP is fastest;
    /// XDP everywhere before kernel 6.6, which has no TCX), xdp (XDP everywhere), or
    /// tc (tc ingress everywhere). [default: auto, or `attach` in the file]
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Attach::NAMES)
        .map(|s| s.parse::<Attach>().expect("listed value")))]
    pub attach: Option<Attach>,
    /// Flow-table capacity (connections remembered per table).
    /// [default: 262144, or `flow_table_size` in the file]
    #[arg(long)]
    pub flow_table_size: Option<u32>,
    /// Quick single service: the virtual IP and port, e.g. 203.0.113.10:80 or [2001:db8::10]:80.
    #[arg(long)]
    pub vip: Option<String>,
    /// Protocol of the --vip service.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"], ignore_case = true)]
    pub proto: String,
    /// Backend of the --vip service as ADDR:PORT[@WEIGHT] (repeatable), e.g. 10.0.0.2:8080@3.
    #[arg(short, long = "backend")]
    pub backends: Vec<String>,
    /// Backend choice for new flows of the --vip service.
    #[arg(long, default_value = "maglev", value_parser = clap::builder::PossibleValuesParser::new(crate::config::Algorithm::NAMES), ignore_case = true)]
    pub algorithm: String,
    /// Forwarding of the --vip service.
    #[arg(long, default_value = "nat", value_parser = ["nat", "dsr"], ignore_case = true)]
    pub forwarding: String,
    /// Prometheus endpoint, ADDR:PORT or `off`. Overrides `[monitor] metrics_listen`.
    /// [default: 127.0.0.1:9717, or `[monitor] metrics_listen` in the file]
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Maglev table size of the --vip service (a prime). [default: 65537]
    #[arg(long)]
    pub table_size: Option<u32>,
}

impl RunArgs {
    /// The configuration sources these flags describe.
    pub fn sources(&self) -> Sources {
        Sources {
            config: self.config.clone(),
            ifaces: self.ifaces.clone(),
            xdp_mode: self.xdp_mode,
            attach: self.attach,
            flow_table_size: self.flow_table_size,
            vip: self.vip.clone(),
            proto: self.proto.to_ascii_lowercase(),
            backends: self.backends.clone(),
            algorithm: self.algorithm.to_ascii_lowercase(),
            forwarding: self.forwarding.to_ascii_lowercase(),
            table_size: self.table_size,
            metrics_listen: self.metrics_listen.clone(),
        }
    }
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
        Command::Run {
            args,
            admin,
            pin,
            fresh,
        } => crate::daemon::run(
            args.sources(),
            crate::daemon::AdminOptions {
                socket: admin.admin_socket,
                listen: admin.admin_listen,
                token_file: admin.admin_token_file,
            },
            crate::daemon::PinArgs {
                dir: pin.pin_dir,
                fresh,
            },
        )
        .map_err(anyhow::Error::new),
        Command::Detach { pin } => crate::daemon::detach(&pin.pin_dir).map_err(anyhow::Error::new),
        Command::XdpPass { ifaces } => crate::daemon::xdp_pass(&ifaces).map_err(anyhow::Error::new),
        Command::Status(args) => admin::status(&args),
        Command::Backend(cmd) => admin::backend(cmd),
        Command::Service(cmd) => admin::service(cmd),
        Command::Reload(args) => admin::reload(&args),
        Command::Top { refresh, admin } => admin::top(&admin, refresh),
        Command::Alerts(args) => admin::alerts(&args),
        Command::Report { window, admin } => admin::report(&admin, window),
        Command::Cache(args) => cache::run(args),
    }
}

/// `xdp-lb check`: everything `run` does before touching the kernel.
fn check(args: &RunArgs) -> anyhow::Result<()> {
    let cfg = crate::config::load(&args.sources()).context("invalid configuration")?;
    let host = crate::daemon::check_host(&cfg)?;
    crate::plan::Planner::new(cfg.max_services, cfg.max_table_size)
        .apply(&cfg)
        .context("configuration cannot be programmed")?;
    print!("{}", crate::summary::render(&cfg));
    // What was verified beyond the file, so "OK" is not read as more than it is.
    println!(
        "\nhost: Linux {} (5.17 or newer needed); {} interface(s) exist in this network \
         namespace; none of the {} backend(s) is one of its {} local addresses",
        host.kernel, host.interfaces, host.backends, host.local_addrs
    );
    println!("configuration OK");
    Ok(())
}
