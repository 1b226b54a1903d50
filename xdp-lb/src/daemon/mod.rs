//! `xdp-lb run`: validate everything, load and program the data plane, attach, then
//! hand the state to the controller task. Signals, the admin socket and timers all
//! reach the controller through the one loop in `serve`, so changes are applied in
//! one order.
pub mod controller;
mod host;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use std::sync::{Arc, Mutex};

use crate::{
    admin::{
        proto::{ApiError, Command, ErrorKind, Reply},
        server::{AdminServer, Envelope, ServerError},
    },
    config::{self, Attach, Config, ConfigError, Sources, XdpMode},
    dataplane::{
        self, pin::PinOptions, AyaDataplane, Dataplane, DataplaneError, MapSizes, PASS_PROGRAM,
        PROGRAM,
    },
    health::{HealthChecker, HealthEvent, DEFAULT_MAX_CONCURRENT},
    monitor::{server::Exposure, Monitor, ResourceSampler, Sample as MonitorSample},
    plan::{PlanError, Planner, RestoreError},
};
use controller::{Controller, Pinned};
pub use host::{check_host, check_interfaces, local_addresses, HostReport, LocalAddr};

/// How often backends' neighbour entries are refreshed (see `prime_neighbours`).
const NEIGH_REFRESH: Duration = Duration::from_secs(5);
/// How often traffic counters are logged when they changed.
const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// How long the cache tier gets to finish requests in flight at shutdown.
const CACHE_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Health events queued for the controller; a full queue makes the checks wait (no
/// event is lost).
const HEALTH_EVENTS: usize = 256;
/// Most XDP interfaces one run attaches to: the TX_PORTS device map's size.
pub const MAX_INTERFACES: usize = xdp_lb_common::MAX_INTERFACES as usize;

/// Where `run` keeps the state that outlives it.
#[derive(Debug, Clone)]
pub struct PinArgs {
    /// Base directory on bpffs (see `dataplane::pin`).
    pub dir: PathBuf,
    /// Start from empty maps, dropping whatever is pinned.
    pub fresh: bool,
}

/// Where the admin API listens.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    pub socket: PathBuf,
    /// Optional loopback TCP listener, which needs a token.
    pub listen: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
    #[error("interface {0:?} does not exist in this network namespace (see `ip link`); fix `interfaces` or --iface")]
    NoInterface(String),
    #[error("service {service:?}: backend {backend} is an address of this balancer (on {iface}): it would send the service's traffic to itself; give the backend's own address")]
    BackendIsLocal {
        service: String,
        backend: String,
        iface: String,
    },
    #[error("this kernel is Linux {release}; xdp-lb's XDP program needs 5.17 or newer (it calls bpf_loop); run it on a newer kernel")]
    OldKernel { release: String },
    #[error("listing this host's addresses (getifaddrs)")]
    LocalAddresses(#[source] std::io::Error),
    #[error("{count} interfaces configured; one run attaches to at most {MAX_INTERFACES}")]
    TooManyInterfaces { count: usize },
    #[error("the configuration cannot be programmed")]
    Plan(#[source] PlanError),
    #[error("{0} needs root (CAP_BPF and CAP_NET_ADMIN to load and attach XDP): run it with sudo")]
    NotRoot(&'static str),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("starting the [cache] tier")]
    Cache(#[source] crate::cache::server::ServeError),
    #[error("the cache tier stopped on its own")]
    CacheStopped,
    #[error("the cache tier panicked")]
    CachePanicked(#[source] tokio::task::JoinError),
    #[error("starting the admin API")]
    Admin(#[source] ServerError),
    #[error("the data plane")]
    Dataplane(#[source] DataplaneError),
    #[error("the pinned maps cannot be read back into a plan; start with `xdp-lb run --fresh` to replace them (established connections are lost)")]
    Restore(#[source] RestoreError),
    #[error("removing the pinned state")]
    Detach(#[source] DataplaneError),
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("starting the monitor")]
    Monitor(#[source] crate::monitor::MonitorError),
    #[error("starting the /metrics endpoint")]
    Metrics(#[source] crate::monitor::server::MetricsServerError),
    #[error("starting the resource sampler")]
    Resources(#[source] crate::monitor::resources::ResourceError),
}

fn require_root(what: &'static str) -> Result<(), DaemonError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DaemonError::NotRoot(what));
    }
    Ok(())
}

pub fn run(sources: Sources, admin: AdminOptions, pin: PinArgs) -> Result<(), DaemonError> {
    // Everything that can be wrong with the input is found before the kernel is touched.
    let (cfg, text) = config::load_with_text(&sources).map_err(DaemonError::Config)?;
    check_host(&cfg)?;
    let mut planner = Planner::new(cfg.max_services, cfg.max_table_size);
    // Every backend starts healthy (the checker's initial state; the first check
    // decides), so the first tables are those of the configuration with its backups
    // held back.
    let plan = planner
        .apply(&controller::startup_config(&cfg))
        .map_err(DaemonError::Plan)?;
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
    .map_err(DaemonError::Runtime)?;
    // Bind the cache's port and the admin socket before touching the kernel, so a
    // port in use or a second daemon fails cleanly.
    let cache = match cfg.cache.clone() {
        Some(c) => Some(
            rt.block_on(crate::cache::Server::bind(c))
                .map_err(DaemonError::Cache)?,
        ),
        None => None,
    };
    let metrics = match cfg.monitor.metrics_listen {
        Some(addr) => {
            let exposure = if addr.ip().is_loopback() {
                Exposure::LoopbackOnly
            } else {
                log::warn!("[monitor] metrics_listen = {addr} is not loopback: every figure is readable from the network");
                Exposure::AllowRemote
            };
            Some((
                rt.block_on(crate::monitor::server::bind_metrics(addr, exposure))
                    .map_err(DaemonError::Metrics)?,
                exposure,
            ))
        }
        None => None,
    };
    let monitor = Monitor::new(cfg.monitor.monitor.clone()).map_err(DaemonError::Monitor)?;
    let admin_server = rt
        .block_on(AdminServer::bind(
            &admin.socket,
            admin.listen,
            admin.token_file.as_deref(),
        ))
        .map_err(DaemonError::Admin)?;

    let sizes = MapSizes {
        ring_entries: xdp_lb_common::wire::ring_entries(cfg.max_services, cfg.max_table_size),
        flow_table_size: cfg.flow_table_size,
    };
    let pin_opts = PinOptions {
        dir: pin.dir.clone(),
        fresh: pin.fresh,
        max_services: cfg.max_services,
        max_table_size: cfg.max_table_size,
    };
    let (mut dp, adopted) =
        AyaDataplane::load_pinned(sizes, &pin_opts).map_err(DaemonError::Dataplane)?;
    // Before anything attaches: the load wrote the default.
    let guard = cfg.nat_handshake_guard;
    dp.set_slot_guard(xdp_lb_common::slot_guard_units(guard.as_nanos() as u64))
        .map_err(DaemonError::Dataplane)?;
    if guard != config::DEFAULT_NAT_HANDSHAKE_GUARD {
        log::info!(
            "nat_handshake_guard {}: a new NAT flow of a hash-scheduled service keeps its slot that long for its backend's answer",
            humantime::format_duration(guard)
        );
    }
    let (planner, plan, flows) = if adopted {
        // Ids, generations and table halves come from the kernel, not from a fresh
        // allocation: the configuration is then applied as a diff on top.
        let snap = dp.snapshot().map_err(DaemonError::Dataplane)?;
        let mut restored = Planner::restore(cfg.max_services, cfg.max_table_size, &snap)
            .map_err(DaemonError::Restore)?;
        let plan = restored.apply(&cfg).map_err(DaemonError::Plan)?;
        let flows = dp
            .flow_counts(controller::DEFAULT_FLOW_SCAN_LIMIT)
            .map_err(DaemonError::Dataplane)?
            .scanned;
        log::info!(
            "adopted pinned state from {}: {} service(s), {} backend slot(s), {flows} flow(s); {} change(s) to apply",
            pin.dir.display(),
            snap.services.len(),
            snap.backends.len(),
            plan.changes.len()
        );
        (restored, plan, flows)
    } else {
        (planner, plan, 0)
    };
    // Program the maps before attaching, so the first packet already sees the services.
    dp.apply(&plan).map_err(DaemonError::Dataplane)?;
    let tcx = host::has_tcx();
    if cfg.attach == Attach::Auto && !tcx {
        log::warn!(
            "attach auto: this kernel has no TCX links (6.6+) for the tc program: XDP on every interface, veth too"
        );
    }
    let tc: Vec<bool> = cfg
        .interfaces
        .iter()
        .map(|i| uses_tc(cfg.attach, tcx, i))
        .collect();
    let keep: Vec<String> = cfg
        .interfaces
        .iter()
        .zip(&tc)
        .map(|(i, &tc)| dataplane::pin::link_name(i, tc))
        .collect();
    dataplane::pin::detach_other_links(&pin.dir, &keep).map_err(DaemonError::Dataplane)?;
    for (iface, &tc) in cfg.interfaces.iter().zip(&tc) {
        let mode = if tc {
            dp.attach_tc(iface)
        } else {
            dp.attach(PROGRAM, iface, cfg.xdp_mode)
        }
        .map_err(DaemonError::Dataplane)?;
        log::info!("attached to {iface} in {mode} mode");
        warn_if_forwarding_disabled(&cfg, iface);
    }
    let attached: Vec<String> = dp
        .attached()
        .iter()
        .map(|(i, m)| format!("{i} ({m})"))
        .collect();
    let interfaces = cfg.interfaces.clone();
    let mut ctl = Controller::new(sources, cfg, text, planner, dp, plan.changes, interfaces);
    ctl.set_pinned(Pinned {
        dir: pin.dir,
        adopted,
        flows,
    });
    println!(
        "xdp-lb state: {}",
        if adopted {
            format!("adopted ({flows} flows)")
        } else {
            "fresh".to_string()
        }
    );
    let watch = Watch {
        monitor: Arc::new(Mutex::new(monitor)),
        metrics,
        interval: ctl.config().monitor.interval,
    };
    rt.block_on(serve(ctl, cache, admin_server, attached, watch))
}

/// The monitor the daemon feeds, and where its figures are served.
struct Watch {
    monitor: Arc<Mutex<Monitor>>,
    metrics: Option<(tokio::net::TcpListener, Exposure)>,
    interval: Duration,
}

/// How often the monitor walks the flow table for per-backend flow counts (the walk
/// costs about a second at a million flows; see `cargo xtask bench status`).
const MONITOR_FLOWS_EVERY: Duration = Duration::from_secs(10);

/// Hands `[monitor.alerts]` to the monitor when a reload changed it.
fn apply_alert_config(monitor: &Mutex<Monitor>, cfg: &crate::config::Config) {
    let want = &cfg.monitor.monitor.alerts;
    let mut m = monitor.lock().unwrap_or_else(|e| e.into_inner());
    if m.alert_config() == want {
        return;
    }
    match m.set_alert_config(want.clone()) {
        Ok(()) => log::info!("monitor: alert thresholds reloaded"),
        // The configuration was validated on load, so this is a bug, not an input error.
        Err(e) => log::error!("monitor: keeping the previous alert thresholds: {e}"),
    }
}

/// Answers the monitor's admin commands; `None` for the controller's.
fn monitor_answer(monitor: &Mutex<Monitor>, cmd: &Command) -> Option<Result<Reply, ApiError>> {
    let m = monitor.lock().unwrap_or_else(|e| e.into_inner());
    Some(match cmd {
        Command::Monitor => Ok(Reply::Monitor(Box::new(m.view()))),
        Command::Alerts => Ok(Reply::Alerts { alerts: m.firing() }),
        Command::Report { window_ms } => m
            .window(Duration::from_millis(*window_ms))
            .map(|r| Reply::Report(Box::new(r)))
            .map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string())),
        _ => return None,
    })
}

async fn serve(
    mut ctl: Controller<AyaDataplane>,
    cache: Option<crate::cache::Server>,
    admin: AdminServer,
    attached: Vec<String>,
    watch: Watch,
) -> Result<(), DaemonError> {
    let cache_stats = cache.as_ref().map(|c| c.stats());
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = watch.metrics.map(|(listener, exposure)| {
        let monitor = Arc::clone(&watch.monitor);
        let source: crate::monitor::server::MetricsSource = Arc::new(move || {
            // Snapshot under the lock, render outside it.
            let input = monitor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .metrics_input();
            crate::monitor::metrics::render(input)
        });
        tokio::spawn(crate::monitor::server::serve_metrics(
            listener,
            source,
            exposure,
            async {
                let _ = metrics_stopped.await;
            },
        ))
    });
    let mut resources = ResourceSampler::new().map_err(DaemonError::Resources)?;
    let mut tick = tokio::time::interval(watch.interval);
    let (stop_cache, cache_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut cache_task = cache.map(|server| {
        log::info!("cache tier listening on {}", server.local_addr());
        tokio::spawn(server.run(async {
            let _ = cache_stopped.await;
        }))
    });
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let (tx, mut rx) = mpsc::channel::<Envelope>(64);
    log::info!("admin API on {}", admin.path().display());
    if let Some(addr) = admin.tcp_addr() {
        log::info!("admin API also on tcp {addr} (token required)");
    }
    let admin_task = tokio::spawn(admin.run(tx));
    // Health checks run on this runtime, from the balancer's own network namespace;
    // their flips come back through `health_rx` so they are applied in the same
    // order as every other change.
    let (health_tx, mut health_rx) = mpsc::channel::<HealthEvent>(HEALTH_EVENTS);
    ctl.attach_health(Box::new(HealthChecker::start(
        Vec::new(),
        DEFAULT_MAX_CONCURRENT,
        health_tx,
    )));
    // Only now, with the handlers installed, may anyone rely on signals: a SIGHUP
    // before this point would have killed the process.
    println!("{}", crate::summary::render(ctl.config()));
    println!(
        "xdp-lb ready: {} service(s) on {}",
        ctl.config().services.len(),
        attached.join(", ")
    );
    prime_neighbours(ctl.config());
    let mut neigh = tokio::time::interval(NEIGH_REFRESH);
    let mut stats = tokio::time::interval(STATS_INTERVAL);
    stats.tick().await;
    let mut conns = tokio::time::interval(crate::dataplane::conns::RECONCILE_EVERY);
    conns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let kernel_log = match ctl.dataplane().kernel_log_fd() {
        // SAFETY: `fd` is an owned descriptor moved into the AsyncFd, which keeps it
        // open and unchanged until the AsyncFd is dropped.
        Some(Ok(fd)) => Some(
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| DaemonError::Signals(e.into_parts().1))?,
        ),
        Some(Err(e)) => {
            log::warn!("cannot watch the XDP program's log: {e}");
            None
        }
        None => None,
    };
    let mut last_counters = Vec::new();
    let result = loop {
        let deadline = ctl.next_deadline();
        tokio::select! {
            Some(env) = rx.recv() => {
                let was = ctl.generation();
                let answer = match monitor_answer(&watch.monitor, &env.command) {
                    Some(a) => a,
                    None => ctl.handle(env.command),
                };
                if let Err(e) = &answer {
                    log::warn!("admin: refused: {e}");
                }
                if ctl.generation() != was {
                    prime_neighbours(ctl.config());
                }
                apply_alert_config(&watch.monitor, ctl.config());
                let _ = env.reply.send(answer);
            }
            Some(ev) = health_rx.recv() => {
                let was = ctl.generation();
                ctl.health_event(ev, Instant::now());
                if ctl.generation() != was {
                    prime_neighbours(ctl.config());
                }
            }
            _ = hup.recv() => {
                match ctl.reload() {
                    Ok(_) => {
                        prime_neighbours(ctl.config());
                        apply_alert_config(&watch.monitor, ctl.config());
                        println!(
                            "xdp-lb reloaded: generation {}, {} service(s)",
                            ctl.generation(),
                            ctl.config().services.len()
                        );
                    }
                    Err(e) => {
                        log::error!("reload failed, keeping the running configuration: {e}");
                        println!("xdp-lb reload failed: {e}");
                    }
                }
            }
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => ctl.fire_timers(Instant::now()),
            _ = conns.tick() => {
                ctl.reconcile_conns(Instant::now(), crate::dataplane::conns::RECONCILE_EVERY)
            }
            _ = int.recv() => break Ok(()),
            _ = term.recv() => break Ok(()),
            done = async {
                match &mut cache_task {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            } => {
                let e = match done {
                    Ok(Ok(())) => DaemonError::CacheStopped,
                    Ok(Err(e)) => DaemonError::Cache(e),
                    Err(e) => DaemonError::CachePanicked(e),
                };
                log::error!("{}; stopping", dataplane::error_chain(&e));
                cache_task = None;
                break Err(e);
            }
            _ = neigh.tick() => prime_neighbours(ctl.config()),
            _ = tick.tick() => {
                let now = Instant::now();
                ctl.sample(now);
                let sample = MonitorSample {
                    dataplane: Some(ctl.monitor_sample(now, MONITOR_FLOWS_EVERY)),
                    cache: cache_stats.as_ref().map(|s| s.snapshot().into()),
                    resources: Some(resources.sample()),
                };
                let events = watch
                    .monitor
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(now, sample);
                match events {
                    Ok(events) => {
                        for e in events {
                            log::warn!("{e}");
                        }
                    }
                    Err(e) => log::debug!("monitor: {e}"),
                }
            }
            ready = async {
                match &kernel_log {
                    Some(fd) => fd.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok(mut guard) = ready {
                    ctl.dataplane_mut().flush_kernel_log();
                    guard.clear_ready();
                }
            }
            _ = stats.tick() => {
                if let Ok(c) = ctl.dataplane().global_counters() {
                    if c != last_counters {
                        log::info!("counters: {}", format_counters(&c));
                        log_service_counters(ctl.planner(), ctl.dataplane());
                        last_counters = c;
                    }
                }
            }
        }
    };
    admin_task.abort();
    let _ = admin_task.await;
    if let Some(task) = metrics_task {
        let _ = stop_metrics.send(());
        let _ = tokio::time::timeout(Duration::from_secs(6), task).await;
    }
    if let Ok(c) = ctl.dataplane().global_counters() {
        log::info!("final counters: {}", format_counters(&c));
        log_service_counters(ctl.planner(), ctl.dataplane());
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
    match ctl.pinned() {
        Some(p) => log::info!(
            "leaving the program attached to {} interface(s) with its state pinned in {}: the next `xdp-lb run` adopts it, `xdp-lb detach` removes it",
            ctl.dataplane().attached().len(),
            p.dir.display()
        ),
        None => log::info!(
            "detaching from {} interface(s)",
            ctl.dataplane().attached().len()
        ),
    }
    drop(ctl);
    result
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
fn log_service_counters(planner: &Planner, dp: &impl Dataplane) {
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

/// Keeps the neighbour entries of every backend's next hop resolved (managed entries
/// the kernel probes itself): `bpf_fib_lookup`
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
            crate::dataplane::error_chain(&e)
        );
    }
}

/// `xdp-lb detach`: detaches the pinned programs and removes every pin.
pub fn detach(dir: &std::path::Path) -> Result<(), DaemonError> {
    require_root("xdp-lb detach")?;
    let done = dataplane::pin::detach(dir).map_err(DaemonError::Detach)?;
    if done.links.is_empty() && done.layouts.is_empty() {
        println!("nothing pinned in {}", dir.display());
    } else {
        println!(
            "detached from {} interface(s) ({}); removed pinned state {} in {}",
            done.links.len(),
            done.links.join(", "),
            done.layouts.join(", "),
            dir.display()
        );
    }
    Ok(())
}

/// Whether `iface` gets the tc program: always with `--attach tc`, on veth with
/// `auto` (where XDP copies every skb and costs the peer its GSO) if the kernel has
/// TCX links (`tcx`).
fn uses_tc(attach: Attach, tcx: bool, iface: &str) -> bool {
    match attach {
        Attach::Xdp => false,
        Attach::Tc => true,
        Attach::Auto => tcx && dataplane::iface::is_veth(iface),
    }
}

/// `xdp-lb xdp-pass`: attach the pass-everything program and wait for a signal.
pub fn xdp_pass(ifaces: &[String]) -> Result<(), DaemonError> {
    check_interfaces(ifaces)?;
    require_root("xdp-lb xdp-pass")?;
    let mut dp = AyaDataplane::load(MapSizes {
        ring_entries: 1,
        flow_table_size: 16,
    })
    .map_err(DaemonError::Dataplane)?;
    for i in ifaces {
        dp.attach(PASS_PROGRAM, i, XdpMode::Native)
            .map_err(DaemonError::Dataplane)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(async {
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        println!("xdp-lb ready: pass on {}", ifaces.join(", "));
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        Ok(())
    })
}
