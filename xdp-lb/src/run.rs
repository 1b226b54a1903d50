//! `xdp-lb run`: validate everything, load and program the data plane, attach, then
//! serve signals (SIGHUP reloads the configuration file, SIGINT/SIGTERM detach).
use std::{net::IpAddr, time::Duration};

use anyhow::{bail, Context as _};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    cli::RunArgs,
    config::{self, Config},
    dataplane::{self, Dataplane, MapSizes, PASS_PROGRAM, PROGRAM},
    plan::Planner,
};

/// How often backends' neighbour entries are refreshed (see `prime_neighbours`).
const NEIGH_REFRESH: Duration = Duration::from_secs(5);
/// How often traffic counters are logged when they changed.
const STATS_INTERVAL: Duration = Duration::from_secs(60);

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (CAP_BPF and CAP_NET_ADMIN to load and attach XDP): run it with sudo");
    }
    Ok(())
}

fn check_interfaces(ifaces: &[String]) -> anyhow::Result<()> {
    for i in ifaces {
        if dataplane::ifindex(i).is_none() {
            bail!("interface {i:?} does not exist in this network namespace (see `ip link`); fix `interfaces` or --iface");
        }
    }
    Ok(())
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    // Everything that can be wrong with the input is found before the kernel is touched.
    let cfg = config::load(&args)?;
    check_interfaces(&cfg.interfaces)?;
    let mut planner = Planner::new(cfg.max_services, cfg.max_table_size);
    let plan = planner
        .apply(&cfg)
        .context("planning the data plane for this configuration")?;
    require_root("xdp-lb run")?;

    // The cache tier serves HTTP on its own threads; the balancer's loop alone needs
    // only one.
    let rt = if cfg.cache.is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .context("starting the async runtime")?;
    // Bind the cache's port before touching the kernel, so a port in use fails cleanly.
    let cache = match cfg.cache.clone() {
        Some(c) => Some(
            rt.block_on(crate::cache::Server::bind(c))
                .context("starting the [cache] tier")?,
        ),
        None => None,
    };

    let sizes = MapSizes {
        ring_entries: cfg.max_services * 2 * cfg.max_table_size,
        flow_table_size: cfg.flow_table_size,
    };
    let mut dp = Dataplane::load(sizes).context("loading the XDP program")?;
    // Program the maps before attaching, so the first packet already sees the services.
    dp.apply(&plan).context("programming the data plane maps")?;
    for iface in &cfg.interfaces {
        let mode = dp
            .attach(PROGRAM, iface, cfg.xdp_mode)
            .context("attaching XDP")?;
        log::info!("attached to {iface} in {mode} mode");
        warn_if_forwarding_disabled(&cfg, iface);
    }
    rt.block_on(serve(args, cfg, planner, dp, cache))
}

/// How long the cache tier gets to finish requests in flight at shutdown.
const CACHE_STOP_TIMEOUT: Duration = Duration::from_secs(15);

async fn serve(
    args: RunArgs,
    mut cfg: Config,
    mut planner: Planner,
    mut dp: Dataplane,
    cache: Option<crate::cache::Server>,
) -> anyhow::Result<()> {
    let (stop_cache, cache_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut cache_task = cache.map(|server| {
        log::info!("cache tier listening on {}", server.local_addr());
        tokio::spawn(server.run(async {
            let _ = cache_stopped.await;
        }))
    });
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    // Only now, with the handlers installed, may anyone rely on signals: a SIGHUP
    // before this point would have killed the process.
    println!("{}", crate::summary::render(&cfg));
    let attached: Vec<String> = dp
        .attached()
        .iter()
        .map(|(i, m)| format!("{i} ({m})"))
        .collect();
    println!(
        "xdp-lb ready: {} service(s) on {}",
        cfg.services.len(),
        attached.join(", ")
    );
    let mut neigh = tokio::time::interval(NEIGH_REFRESH);
    let mut stats = tokio::time::interval(STATS_INTERVAL);
    stats.tick().await;
    let kernel_log = match dp.kernel_log_fd() {
        // SAFETY: `fd` is an owned descriptor moved into the AsyncFd, which keeps it
        // open and unchanged until the AsyncFd is dropped.
        Some(Ok(fd)) => Some(
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?,
        ),
        Some(Err(e)) => {
            log::warn!("cannot watch the XDP program's log: {e}");
            None
        }
        None => None,
    };
    let mut generation = 1u64;
    let mut last_counters = Vec::new();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match reload(&args, &cfg, &mut planner, &mut dp) {
                    Ok(new_cfg) => {
                        generation += 1;
                        cfg = new_cfg;
                        prime_neighbours(&cfg);
                        println!("xdp-lb reloaded: generation {generation}, {} service(s)", cfg.services.len());
                    }
                    Err(e) => {
                        log::error!("reload failed, keeping the running configuration: {e:#}");
                        println!("xdp-lb reload failed: {e:#}");
                    }
                }
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
            done = async {
                match &mut cache_task {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            } => {
                let e = match done {
                    Ok(Ok(())) => anyhow::anyhow!("the cache tier stopped on its own"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("the cache tier failed"),
                    Err(e) => anyhow::Error::new(e).context("the cache tier panicked"),
                };
                log::error!("{e:#}; stopping");
                return Err(e);
            }
            _ = neigh.tick() => prime_neighbours(&cfg),
            ready = async {
                match &kernel_log {
                    Some(fd) => fd.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok(mut guard) = ready {
                    dp.flush_kernel_log();
                    guard.clear_ready();
                }
            }
            _ = stats.tick() => {
                if let Ok(c) = dp.global_counters() {
                    if c != last_counters {
                        log::info!("counters: {}", format_counters(&c));
                        log_service_counters(&planner, &mut dp);
                        last_counters = c;
                    }
                }
            }
        }
    }
    if let Ok(c) = dp.global_counters() {
        log::info!("final counters: {}", format_counters(&c));
        log_service_counters(&planner, &mut dp);
    }
    if let Some(task) = cache_task {
        let _ = stop_cache.send(());
        match tokio::time::timeout(CACHE_STOP_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => log::info!("cache tier stopped"),
            Ok(Ok(Err(e))) => log::error!("cache tier: {e}"),
            Ok(Err(e)) => log::error!("cache tier panicked: {e}"),
            Err(_) => log::warn!("cache tier did not stop within {CACHE_STOP_TIMEOUT:?}"),
        }
    }
    log::info!("detaching from {} interface(s)", dp.attached().len());
    drop(dp);
    Ok(())
}

/// `bpf_fib_lookup` refuses to find next hops on an interface with forwarding off,
/// which would hand every packet to the kernel (counted as pass_fib_failed).
fn warn_if_forwarding_disabled(cfg: &Config, iface: &str) {
    let families = [(false, "ipv4"), (true, "ipv6")];
    for (v6, fam) in families {
        if !cfg.services.iter().any(|s| s.vip.is_ipv6() == v6) {
            continue;
        }
        let path = format!("/proc/sys/net/{fam}/conf/{iface}/forwarding");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            log::warn!(
                "{fam} forwarding is off on {iface}: the XDP program cannot look up next hops and hands packets to the kernel; enable it with `sysctl -w net.{fam}.conf.{iface}.forwarding=1` (or .all.)"
            );
        }
    }
}

/// One line per service and per backend with traffic: packets, bytes, new flows.
fn log_service_counters(planner: &Planner, dp: &mut Dataplane) {
    for svc in planner.assignments() {
        let Ok(c) = dp.service_counters(svc.id) else {
            continue;
        };
        if c.packets == 0 {
            continue;
        }
        let backends: Vec<String> = svc
            .backends
            .iter()
            .filter_map(|(addr, id)| {
                let b = dp.backend_counters(*id).ok()?;
                (b.packets > 0).then(|| format!("{addr} {}p/{}f", b.packets, b.new_flows))
            })
            .collect();
        log::info!(
            "service {}: packets={} bytes={} new_flows={} [{}]",
            svc.name,
            c.packets,
            c.bytes,
            c.new_flows,
            backends.join(", ")
        );
    }
}

fn format_counters(c: &[(&'static str, u64)]) -> String {
    c.iter()
        .filter(|(_, v)| *v > 0)
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Re-reads the configuration and applies the difference. Settings that size kernel
/// maps or choose interfaces cannot change without a restart; a change to them
/// fails the reload rather than being silently ignored.
fn reload(
    args: &RunArgs,
    old: &Config,
    planner: &mut Planner,
    dp: &mut Dataplane,
) -> anyhow::Result<Config> {
    let new = config::load(args)?;
    let fixed = |c: &Config| {
        (
            c.interfaces.clone(),
            c.xdp_mode,
            c.flow_table_size,
            c.max_services,
            c.max_table_size,
        )
    };
    if fixed(&new) != fixed(old) {
        bail!("interfaces, xdp_mode, flow_table_size, max_services and max_table_size only change on restart");
    }
    if new.cache != old.cache {
        bail!("the [cache] section only changes on restart");
    }
    let plan = planner.apply(&new)?;
    dp.apply(&plan)?;
    if plan.log.is_empty() {
        log::info!("reload: configuration unchanged");
    }
    for line in &plan.log {
        log::info!("reload: {line}");
    }
    Ok(new)
}

/// Keeps the neighbour entries of every backend's next hop resolved (managed entries
/// the kernel probes itself; a UDP probe on kernels before 5.16): `bpf_fib_lookup`
/// only succeeds for resolved next hops, and in DSR mode nothing else would ever
/// make the balancer talk to a backend's own address.
fn prime_neighbours(cfg: &Config) {
    let addrs: Vec<IpAddr> = cfg
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr))
        .collect();
    if let Err(e) = crate::neigh::keep_resolved(&addrs) {
        log::warn!(
            "keeping backend neighbour entries resolved: {}",
            dataplane::error_chain(&e)
        );
    }
}

/// `xdp-lb xdp-pass`: attach the pass-everything program and wait for a signal.
pub fn xdp_pass(ifaces: &[String]) -> anyhow::Result<()> {
    check_interfaces(ifaces)?;
    require_root("xdp-lb xdp-pass")?;
    let mut dp = Dataplane::load(MapSizes {
        ring_entries: 1,
        flow_table_size: 16,
    })?;
    for i in ifaces {
        dp.attach(PASS_PROGRAM, i, crate::cli::XdpMode::Native)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        println!("xdp-lb ready: pass on {}", ifaces.join(", "));
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        anyhow::Ok(())
    })
}
