//! `cargo xtask setup|run|test|bench`: the project's one entry point for preparing a
//! machine, running the demo or the real binary, running every test and benchmarking.
mod install;
mod setup;
mod workspace;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "xtask", about = "xdp-lb project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Without arguments: the namespace demo. With arguments: build and run `xdp-lb ARGS`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run every test of the workspace (needs root).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the release binary and install it with a systemd unit and an example config.
    Install(InstallArgs),
    /// Remove what `install` put in place (a changed configuration is kept).
    Uninstall(InstallArgs),
    /// Build release and run the benchmarks.
    Bench {
        #[arg(value_enum, default_value_t = BenchKind::All)]
        what: BenchKind,
    },
}

#[derive(clap::Args)]
struct InstallArgs {
    /// Where the binary goes (PREFIX/bin/xdp-lb).
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Where the systemd unit goes.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// Where the configuration goes (never overwritten).
    #[arg(long, default_value = "/etc/xdp-lb")]
    config_dir: PathBuf,
    /// Install this binary instead of building the release one.
    #[arg(long)]
    binary: Option<PathBuf>,
}

impl InstallArgs {
    fn layout(&self) -> install::Layout {
        install::Layout {
            prefix: self.prefix.clone(),
            unit_dir: self.unit_dir.clone(),
            config_dir: self.config_dir.clone(),
        }
    }
}

#[derive(Copy, Clone, ValueEnum)]
enum BenchKind {
    Pkt,
    /// What a `status` call costs at 10k, 100k and 1M flows.
    Status,
    /// Keep-alive requests/s, new connections/s and a bulk stream through the VIP vs
    /// plain routing, in namespaces.
    E2e,
    /// The veth investigation: generic vs native XDP, segmentation offloads on and off.
    Veth,
    Cache,
    /// Instructions per hot-tier hit against the bare upstream's answer, under callgrind.
    CacheCost,
    All,
}

impl BenchKind {
    fn as_str(self) -> &'static str {
        match self {
            BenchKind::Pkt => "pkt",
            BenchKind::Status => "status",
            BenchKind::E2e => "e2e",
            BenchKind::Veth => "veth",
            BenchKind::Cache => "cache",
            BenchKind::CacheCost => "cache-cost",
            BenchKind::All => "all",
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ws = workspace::Workspace::locate()?;
    match cli.task {
        Task::Setup => {
            setup::run(setup::Need::Test)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Test { args } => {
            require_root("test")?;
            setup::run(setup::Need::Test)?;
            let variant = ws.build_upgrade_variant()?;
            let bin = ws.build_xdp_lb(false)?;
            let mut cmd = ws.cargo();
            // The eBPF crate only builds for the BPF target (through xdp-lb's build.rs);
            // --no-fail-fast so one failing test binary does not hide the others.
            cmd.args([
                "test",
                "--workspace",
                "--exclude",
                "xdp-lb-ebpf",
                "--no-fail-fast",
            ])
            .args(&args);
            cmd.env("XDP_LB_BIN", &bin);
            cmd.env("XDP_LB_UPGRADE_BIN", &variant);
            println!(
                "xtask: running `cargo test --workspace` with XDP_LB_BIN={}",
                bin.display()
            );
            // Cargo's own summary lines are the last thing printed.
            status_code(&mut cmd)
        }
        Task::Run { args } if args.is_empty() => {
            require_root("run (demo)")?;
            setup::run(setup::Need::Test)?;
            let bin = ws.build_xdp_lb(false)?;
            let mut cmd = ws.cargo();
            cmd.args([
                "run",
                "--quiet",
                "-p",
                "xdp-lb-tests",
                "--bin",
                "xdp-lb-demo",
            ]);
            cmd.env("XDP_LB_BIN", &bin);
            forward_interrupts();
            status_code(&mut cmd)
        }
        Task::Run { args } => {
            setup::run(setup::Need::Build)?;
            let bin = ws.build_xdp_lb(false)?;
            let mut cmd = Command::new(&bin);
            cmd.args(&args);
            forward_interrupts();
            status_code(&mut cmd)
        }
        Task::Install(args) => {
            let bin = match &args.binary {
                Some(b) => b.clone(),
                None => {
                    setup::run(setup::Need::Build)?;
                    ws.build_xdp_lb(true)?
                }
            };
            install::install(&bin, &args.layout())?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Uninstall(args) => {
            install::uninstall(&args.layout())?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench { what } => {
            if !matches!(what, BenchKind::Cache | BenchKind::CacheCost) {
                require_root("bench")?;
            }
            setup::run(setup::Need::Test)?;
            let bin = ws.build_xdp_lb(true)?;
            let mut cmd = ws.cargo();
            cmd.args([
                "run",
                "--release",
                "-p",
                "xdp-lb-tests",
                "--bin",
                "xdp-lb-bench",
                "--",
            ]);
            cmd.arg(what.as_str());
            cmd.env("XDP_LB_BIN", &bin);
            forward_interrupts();
            status_code(&mut cmd)
        }
    }
}

fn require_root(task: &str) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("`cargo xtask {task}` needs root (network namespaces, XDP): run `sudo cargo xtask {task}`");
    }
    Ok(())
}

/// Ctrl-C reaches the whole foreground process group; xtask must outlive its child so
/// the child's own clean-up (namespaces, processes) finishes before the prompt returns.
fn forward_interrupts() {
    if let Err(e) = ctrlc::set_handler(|| {}) {
        eprintln!("xtask: warning: cannot install the Ctrl-C handler: {e}");
    }
}

fn status_code(cmd: &mut Command) -> anyhow::Result<ExitCode> {
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
