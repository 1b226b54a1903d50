//! The verbs that talk to a running daemon: `status`, `backend ...`, `service ...`,
//! `reload`. Each sends one admin command and prints the answer as a table, or as
//! JSON with `--json`.
use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::{
    admin::{
        client::{self, Endpoint},
        proto::{BackendStatus, Changed, Command, NewService, Reply, ServiceStatus, Status},
    },
    config::{Algorithm, BackendState, Forwarding, Proto},
};

/// How to reach the daemon, and how to print its answer.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The daemon's admin socket.
    #[arg(long, default_value = crate::admin::DEFAULT_SOCKET, env = "XDP_LB_ADMIN_SOCKET")]
    pub admin_socket: PathBuf,
    /// Talk to the daemon's loopback TCP listener instead of the socket (needs
    /// --admin-token-file).
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// File holding the TCP listener's token.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Print the daemon's answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

const BACKEND_EXAMPLES: &str = "\
Examples:
  xdp-lb backend list web
  xdp-lb backend add web 198.18.1.4:8080@2
  xdp-lb backend weight web 198.18.1.2:8080 3
  xdp-lb backend drain web 198.18.1.3:8080 --timeout 5m
  xdp-lb backend undrain web 198.18.1.3:8080
  xdp-lb backend down web 198.18.1.3        # ADDR alone when it is unambiguous
  xdp-lb backend remove web 198.18.1.3:8080

Every change is checked first, applied at once (a new table is published in one
switch) and saved into the configuration file, so it survives a restart.";

#[derive(Subcommand, Debug)]
#[command(after_help = BACKEND_EXAMPLES)]
pub enum BackendCmd {
    /// List the backends of one service, or of all.
    List {
        service: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add a backend: ADDR:PORT[@WEIGHT] (the port may be left out for dsr services).
    Add {
        service: String,
        backend: String,
        /// Start it as draining or down instead of active. [default: active]
        #[arg(long, value_parser = ["active", "draining", "down"])]
        state: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a backend; its established flows are re-dispatched.
    Remove {
        service: String,
        backend: String,
        /// Allow leaving the service with no active backend.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set a backend's weight (1..=65535).
    Weight {
        service: String,
        backend: String,
        weight: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// No new flows to this backend; its established flows stay. With --timeout the
    /// backend goes down when the time is up and its remaining flows move.
    Drain {
        service: String,
        backend: String,
        /// e.g. 30s, 5m, 1h30m. Without it the backend drains until `undrain` or `down`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Allow leaving the service with no active backend.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put a draining backend back into service.
    Undrain {
        service: String,
        backend: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Take a backend out at once: its established flows are re-dispatched.
    Down {
        service: String,
        backend: String,
        /// Allow leaving the service with no active backend.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put a down backend back into service.
    Up {
        service: String,
        backend: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

const SERVICE_EXAMPLES: &str = "\
Examples:
  xdp-lb service list
  xdp-lb service add api --vip 198.18.100.2:443 --backend 198.18.2.2:8443 --backend 198.18.2.3:8443@2
  xdp-lb service remove api";

#[derive(Subcommand, Debug)]
#[command(after_help = SERVICE_EXAMPLES)]
pub enum ServiceCmd {
    /// List the services with their traffic.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add a service.
    Add {
        name: String,
        /// ADDR:PORT, IPv6 as [ADDR]:PORT.
        #[arg(long)]
        vip: String,
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"], ignore_case = true)]
        proto: String,
        #[arg(long, default_value = "maglev", value_parser = clap::builder::PossibleValuesParser::new(crate::config::Algorithm::NAMES), ignore_case = true)]
        algorithm: String,
        #[arg(long, default_value = "nat", value_parser = ["nat", "dsr"], ignore_case = true)]
        forwarding: String,
        /// Maglev table size (a prime). [default: 65537]
        #[arg(long)]
        table_size: Option<u32>,
        /// ADDR:PORT[@WEIGHT] (repeatable, at least one).
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a service; its flows end.
    Remove {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn endpoint(a: &AdminArgs) -> anyhow::Result<Endpoint> {
    Ok(match a.admin_addr {
        None => Endpoint::Unix(a.admin_socket.clone()),
        Some(addr) => {
            let file = a
                .admin_token_file
                .as_ref()
                .context("--admin-addr needs --admin-token-file")?;
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("reading the token file {}", file.display()))?;
            Endpoint::Tcp {
                addr,
                token: token.trim().to_string(),
            }
        }
    })
}

fn call(a: &AdminArgs, cmd: Command) -> anyhow::Result<Reply> {
    Ok(client::call(&endpoint(a)?, cmd)?)
}

fn print_json(reply: &Reply) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(reply)?);
    Ok(())
}

pub fn status(a: &AdminArgs) -> anyhow::Result<()> {
    let reply = call(a, Command::Status)?;
    if a.json {
        return print_json(&reply);
    }
    match reply {
        Reply::Status(s) => print!("{}", render_status(&s)),
        other => anyhow::bail!("unexpected answer to status: {other:?}"),
    }
    Ok(())
}

pub fn reload(a: &AdminArgs) -> anyhow::Result<()> {
    let reply = call(a, Command::Reload)?;
    changed(a, reply)
}

fn changed(a: &AdminArgs, reply: Reply) -> anyhow::Result<()> {
    if a.json {
        return print_json(&reply);
    }
    match reply {
        Reply::Changed(c) => print!("{}", render_changed(&c)),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
    Ok(())
}

fn parse_state(s: &Option<String>) -> Option<BackendState> {
    s.as_deref().map(|s| match s {
        "draining" => BackendState::Draining,
        "down" => BackendState::Down,
        _ => BackendState::Active,
    })
}

pub fn backend(cmd: BackendCmd) -> anyhow::Result<()> {
    let (admin, command) = match cmd {
        BackendCmd::List { service, admin } => {
            let reply = call(&admin, Command::BackendList { service })?;
            if admin.json {
                return print_json(&reply);
            }
            if let Reply::Backends { backends } = reply {
                let mut rows = vec![header()];
                rows.extend(backends.iter().map(|r| backend_row(&r.service, &r.backend)));
                print!("{}", table(&rows));
            }
            return Ok(());
        }
        BackendCmd::Add {
            service,
            backend,
            state,
            admin,
        } => (
            admin,
            Command::BackendAdd {
                service,
                backend,
                state: parse_state(&state),
            },
        ),
        BackendCmd::Remove {
            service,
            backend,
            force,
            admin,
        } => (
            admin,
            Command::BackendRemove {
                service,
                backend,
                force,
            },
        ),
        BackendCmd::Weight {
            service,
            backend,
            weight,
            admin,
        } => (
            admin,
            Command::BackendWeight {
                service,
                backend,
                weight,
            },
        ),
        BackendCmd::Drain {
            service,
            backend,
            timeout,
            force,
            admin,
        } => (
            admin,
            Command::BackendDrain {
                service,
                backend,
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
                force,
            },
        ),
        BackendCmd::Undrain {
            service,
            backend,
            admin,
        } => (admin, Command::BackendUndrain { service, backend }),
        BackendCmd::Down {
            service,
            backend,
            force,
            admin,
        } => (
            admin,
            Command::BackendDown {
                service,
                backend,
                force,
            },
        ),
        BackendCmd::Up {
            service,
            backend,
            admin,
        } => (admin, Command::BackendUp { service, backend }),
    };
    let reply = call(&admin, command)?;
    changed(&admin, reply)
}

pub fn service(cmd: ServiceCmd) -> anyhow::Result<()> {
    let (admin, command) = match cmd {
        ServiceCmd::List { admin } => {
            let reply = call(&admin, Command::ServiceList)?;
            if admin.json {
                return print_json(&reply);
            }
            if let Reply::Services { services } = reply {
                let mut rows = vec![vec![
                    "SERVICE".to_string(),
                    "ENDPOINT".into(),
                    "ALGORITHM".into(),
                    "FORWARDING".into(),
                    "BACKENDS".into(),
                    "PKT/S".into(),
                    "BIT/S".into(),
                    "NEW/S".into(),
                ]];
                rows.extend(services.iter().map(service_row));
                print!("{}", table(&rows));
            }
            return Ok(());
        }
        ServiceCmd::Add {
            name,
            vip,
            proto,
            algorithm,
            forwarding,
            table_size,
            backends,
            admin,
        } => {
            let service = NewService {
                name,
                vip,
                proto: if proto.eq_ignore_ascii_case("udp") {
                    Proto::Udp
                } else {
                    Proto::Tcp
                },
                // clap accepted only `Algorithm::NAMES` (any case).
                algorithm: Algorithm::parse(&algorithm.to_ascii_lowercase())
                    .unwrap_or(Algorithm::Maglev),
                forwarding: if forwarding.eq_ignore_ascii_case("dsr") {
                    Forwarding::Dsr
                } else {
                    Forwarding::Nat
                },
                table_size,
                backends,
            };
            (admin, Command::ServiceAdd { service })
        }
        ServiceCmd::Remove { name, admin } => (admin, Command::ServiceRemove { service: name }),
    };
    let reply = call(&admin, command)?;
    changed(&admin, reply)
}

fn render_changed(c: &Changed) -> String {
    let mut out = String::new();
    if c.events.is_empty() {
        let _ = writeln!(out, "no change (generation {})", c.generation);
    }
    for e in &c.events {
        let _ = writeln!(out, "{}", e.change);
    }
    if let Some(path) = &c.saved_to {
        let _ = writeln!(out, "saved to {path}; generation {}", c.generation);
    } else if !c.events.is_empty() {
        let _ = writeln!(out, "generation {}", c.generation);
    }
    out
}

/// "1.2k", "3.4M": rates fit a column.
fn si(v: f64) -> String {
    let (d, unit) = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(d, _)| v >= *d)
        .unwrap_or((1.0, ""));
    if unit.is_empty() {
        format!("{v:.0}")
    } else {
        format!("{:.1}{unit}", v / d)
    }
}

fn header() -> Vec<String> {
    [
        "SERVICE", "BACKEND", "STATE", "HEALTH", "CHECK", "WEIGHT", "SHARE", "FLOWS", "PKT/S",
        "BIT/S", "NEW/S",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn backend_row(service: &str, b: &BackendStatus) -> Vec<String> {
    let mut state = match b.drain_remaining_secs {
        Some(s) => format!("{} ({:.0}s left)", b.state, s),
        None => b.state.to_string(),
    };
    // Admin state first; what the data plane does when health changes it.
    if b.effective_state != b.state {
        let _ = write!(state, " -> {}", b.effective_state);
    }
    if b.backup {
        state.push_str(" (backup)");
    }
    let (health, check) = match &b.health {
        None => ("unchecked".to_string(), "-".to_string()),
        Some(h) => (
            if h.up { "up" } else { "down" }.to_string(),
            match (&h.last_result, h.last_latency_ms) {
                (None, _) => format!("{} (not yet)", h.check),
                (Some(r), Some(ms)) if r == "ok" => format!("{} ok {ms:.1}ms", h.check),
                (Some(r), _) => format!("{} {r}", h.check),
            },
        ),
    };
    let weight = if b.effective_weight != b.weight && b.effective_state == BackendState::Active {
        format!("{}/{}", b.effective_weight, b.weight)
    } else {
        b.weight.to_string()
    };
    vec![
        service.to_string(),
        b.addr.to_string(),
        state,
        health,
        check,
        weight,
        format!("{:.1}%", b.table_share),
        b.flows.to_string(),
        si(b.packets_per_sec),
        si(b.bits_per_sec),
        si(b.new_flows_per_sec),
    ]
}

fn service_row(s: &ServiceStatus) -> Vec<String> {
    vec![
        s.name.clone(),
        s.endpoint.clone(),
        s.algorithm.to_string(),
        s.forwarding.to_string(),
        s.backends.len().to_string(),
        si(s.packets_per_sec),
        si(s.bits_per_sec),
        si(s.new_flows_per_sec),
    ]
}

fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "xdp-lb {} up {}, generation {}, config {}, interfaces {}",
        s.version,
        humantime::format_duration(Duration::from_secs(s.uptime_secs as u64)),
        s.generation,
        s.config_file.as_deref().unwrap_or("(flags only)"),
        s.interfaces.join(", ")
    );
    match (&s.pin_dir, s.adopted) {
        (Some(dir), true) => {
            let _ = writeln!(
                out,
                "state: adopted from {dir} at start ({} flows found)",
                s.adopted_flows
            );
        }
        (Some(dir), false) => {
            let _ = writeln!(out, "state: started empty, pinned in {dir}");
        }
        (None, _) => {
            let _ = writeln!(out, "state: not pinned");
        }
    }
    let mut rows = vec![header()];
    for svc in &s.services {
        let _ = writeln!(
            out,
            "service {} {} ({}, {}): {} pkt/s, {} bit/s, {} new flows/s, serving {}{}",
            svc.name,
            svc.endpoint,
            svc.algorithm,
            svc.forwarding,
            si(svc.packets_per_sec),
            si(svc.bits_per_sec),
            si(svc.new_flows_per_sec),
            svc.serving,
            if svc.from_flags {
                " [from flags: read-only]"
            } else {
                ""
            }
        );
        rows.extend(svc.backends.iter().map(|b| backend_row(&svc.name, b)));
    }
    out.push('\n');
    out.push_str(&table(&rows));
    let _ = writeln!(
        out,
        "\nflows counted over {} flow-table entries{}; rates over the last {:.1}s",
        s.flows_scanned,
        if s.flows_truncated {
            " (walk limit reached: counts are lower bounds)"
        } else {
            ""
        },
        s.rate_window_secs
    );
    out
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

pub fn top(a: &AdminArgs, refresh: Duration) -> anyhow::Result<()> {
    let endpoint = endpoint(a)?;
    crate::tui::run_dashboard(
        || match client::call(&endpoint, Command::Monitor) {
            Ok(Reply::Monitor(v)) => Ok(*v),
            Ok(other) => Err(format!("unexpected answer: {other:?}")),
            Err(e) => Err(e.to_string()),
        },
        refresh,
    )
    .context("running the dashboard")
}

pub fn alerts(a: &AdminArgs) -> anyhow::Result<()> {
    let reply = call(a, Command::Alerts)?;
    if a.json {
        return print_json(&reply);
    }
    let Reply::Alerts { alerts } = reply else {
        anyhow::bail!("unexpected answer to alerts: {reply:?}");
    };
    if alerts.is_empty() {
        println!("no alert firing");
    }
    for al in alerts {
        println!(
            "{}{}: {} (value {:.1}, threshold {:.1})",
            al.kind.as_str(),
            if al.target.is_empty() {
                String::new()
            } else {
                format!(" {}", al.target)
            },
            al.message,
            al.value,
            al.threshold
        );
    }
    Ok(())
}

pub fn report(a: &AdminArgs, window: Duration) -> anyhow::Result<()> {
    let reply = call(
        a,
        Command::Report {
            window_ms: window.as_millis() as u64,
        },
    )?;
    if a.json {
        return print_json(&reply);
    }
    let Reply::Report(r) = reply else {
        anyhow::bail!("unexpected answer to report: {reply:?}");
    };
    println!("report over {:.0}s ({} samples)", r.window_s, r.samples);
    let mut rows = vec![["FIGURE", "AVG", "PEAK", "LAST"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()];
    for (name, st) in &r.figures {
        rows.push(vec![name.clone(), si(st.avg), si(st.peak), si(st.last)]);
    }
    print!("{}", table(&rows));
    println!("\ntop processes by CPU:");
    for p in &r.top_cpu {
        println!("  {:>7}  {:<20} {:>6.1}% cpu", p.pid, p.name, p.cpu_percent);
    }
    println!("top processes by memory:");
    for p in &r.top_memory {
        println!(
            "  {:>7}  {:<20} {:>8} KiB",
            p.pid,
            p.name,
            p.memory_bytes / 1024
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::proto::HealthStatus;

    fn row(health: Option<HealthStatus>, effective: BackendState, weights: (u32, u32)) -> String {
        let b = BackendStatus {
            addr: "198.18.1.2:8080".parse().unwrap(),
            weight: weights.0,
            state: BackendState::Active,
            table_share: 50.0,
            flows: 3,
            packets: 0,
            bytes: 0,
            new_flows: 0,
            packets_per_sec: 0.0,
            bits_per_sec: 0.0,
            new_flows_per_sec: 0.0,
            drain_remaining_secs: None,
            backup: true,
            effective_state: effective,
            effective_weight: weights.1,
            health,
        };
        backend_row("web", &b).join(" | ")
    }

    fn health(up: bool, last: &str, latency: Option<f64>) -> HealthStatus {
        HealthStatus {
            up,
            check: "tcp".into(),
            target: "198.18.1.2:8080".parse().unwrap(),
            last_result: Some(last.into()),
            last_latency_ms: latency,
            last_check_secs_ago: Some(0.1),
            checks: 7,
            streak: 0,
            transitions: 1,
            reason: None,
            since_secs: None,
        }
    }

    #[test]
    fn backend_rows_show_admin_and_health_state() {
        let down = row(
            Some(health(false, "connection refused", None)),
            BackendState::Down,
            (3, 3),
        );
        assert!(
            down.starts_with("web | 198.18.1.2:8080 | active -> down (backup) | down | tcp connection refused | 3 |"),
            "{down}"
        );
        let ramp = row(
            Some(health(true, "ok", Some(0.25))),
            BackendState::Active,
            (4, 1),
        );
        assert!(
            ramp.contains("| active (backup) | up | tcp ok 0.2ms | 1/4 |"),
            "{ramp}"
        );
        let unchecked = row(None, BackendState::Draining, (1, 1));
        assert!(
            unchecked.contains("| active -> draining (backup) | unchecked | - | 1 |"),
            "{unchecked}"
        );
    }
}
