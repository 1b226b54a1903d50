//! The demo behind `cargo xtask run`: a short story in namespaces, each step printed as
//! it happens and bounded in time. Three backends weighted 3:2:1 behind a NAT VIP; the
//! weighted spread of 300 HTTP requests; a backend drained at runtime through the admin
//! API while a long-lived connection on it keeps working and new connections avoid it;
//! a backend's server stopped: when the balancer marked it down and why, the spread
//! without it (no failed request), its return once the server is back; the balancer's
//! own `status`; the cache tier in the same process answering MISS from a backend, then
//! HIT from Redis; and an excerpt of its monitor's figures (`report`, `/metrics`) at
//! the end. Ctrl-C stops it; the same Drop guards tear everything down.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use xdp_lb::admin::{
    client::{self as admin, Endpoint},
    proto::{Command, HealthStatus, Reply},
};

use crate::{
    admin::AdminCli,
    cache_support::{free_port, RedisServer},
    client::{self, LineClient},
    lb::XdpLbProcess,
    lbconfig::{self, BackendSpec, ConfigFile, Forwarding, ServiceSpec},
    root,
    topology::{TopologyBuilder, HTTP_PORT, IFACE, TCP_PORT, VIP4},
    Topology,
};

const REQUESTS: usize = 300;
const WEIGHTS: [u32; 3] = [3, 2, 1];
const DRAIN_CONNECTIONS: usize = 100;
/// The backend whose server the demo stops (1-based).
const VICTIM: usize = 2;
/// Bound for the balancer to notice (the checks below take about a second).
const PATIENCE: Duration = Duration::from_secs(15);
/// The demo's checks: fast enough to watch, HAProxy-style counts. Each table follows
/// its service's backends, so it belongs to that service.
const WEB_CHECK: &str = "\n[service.health_check]\ntype = \"http\"\npath = \"/\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 3\n";
const CHAT_CHECK: &str = "\n[service.health_check]\ntype = \"tcp\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 3\n";

pub fn run() -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let result = demo(stop.clone());
    if stop.load(Ordering::Relaxed) {
        // Ctrl-C also reached our children (same process group), so whatever failed
        // after it is a consequence of the interruption, not a finding.
        println!("interrupted; namespaces and processes removed");
        return Ok(());
    }
    result
}

fn service(topo: &Topology, name: &str, port: u16) -> String {
    let svc = ServiceSpec {
        vip: IpAddr::V4(VIP4),
        port,
        proto: "tcp",
        algorithm: "maglev",
        forwarding: Forwarding::Nat,
        backends: topo
            .backends
            .iter()
            .zip(WEIGHTS)
            .map(|(b, weight)| BackendSpec {
                addr: IpAddr::V4(b.v4()),
                port,
                weight,
                state: "active",
            })
            .collect(),
    };
    lbconfig::render(&[IFACE], &[svc]).replacen(
        "[[service]]\n",
        &format!("[[service]]\nname = \"{name}\"\n"),
        1,
    )
}

fn step(n: usize, what: &str) {
    println!("\n== step {n}: {what}");
}

fn demo(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    if !root::is_root() {
        bail!("the demo needs root (network namespaces, XDP): run `sudo cargo xtask run`");
    }
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            eprintln!("\ninterrupted: cleaning up");
            stop.store(true, Ordering::Relaxed);
        })
        .context("installing the Ctrl-C handler")?;
    }
    let stopped = || stop.load(Ordering::Relaxed);

    step(
        1,
        "a client, the balancer, a bridge and 3 backends, each in its own namespace",
    );
    let mut topo = TopologyBuilder::new(WEIGHTS.len(), Forwarding::Nat)
        .ports(Some(TCP_PORT), None, Some(HTTP_PORT))
        .xdp_pass(true)
        .build()
        .context("building the topology")?;
    // Two services on one VIP: HTTP for the spread, a line protocol for a connection
    // that stays open across the drain.
    let text = service(&topo, "web", HTTP_PORT)
        + WEB_CHECK
        + &service(&topo, "chat", TCP_PORT).replacen(
            &format!("interfaces = [\"{IFACE}\"]\n"),
            "",
            1,
        )
        + CHAT_CHECK;
    // The cache tier runs in the balancer's process, in front of the same backends,
    // with its store in a Redis of the balancer's namespace.
    let redis = topo
        .lb
        .run(RedisServer::start)
        .context("entering the balancer's namespace")?;
    let cache_at = SocketAddr::from((
        [127, 0, 0, 1],
        topo.lb
            .run(free_port)
            .context("entering the balancer's namespace")?,
    ));
    let text = text + &cache_section(&topo, cache_at, &redis.url());
    let file = ConfigFile::new(&text).context("writing the configuration")?;
    let args = vec![
        "run".to_string(),
        "--config".into(),
        file.path().display().to_string(),
    ];
    println!(
        "starting: xdp-lb {} (in namespace {})",
        args.join(" "),
        topo.lb.name()
    );
    let lb = topo.start_lb(&args).context("starting xdp-lb")?;
    for line in lb.stdout_lines() {
        println!("  | {line}");
    }
    if stopped() {
        return Ok(());
    }

    step(
        2,
        &format!("{REQUESTS} HTTP requests, one connection each, weights 3:2:1"),
    );
    let vip = topo.vip(false, HTTP_PORT);
    let stop2 = stop.clone();
    let (counts, errors) = topo.client.run(move || {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut errors = Vec::new();
        for _ in 0..REQUESTS {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            match client::http_get(vip) {
                Ok(body) => *counts.entry(body).or_default() += 1,
                Err(e) => errors.push(e.to_string()),
            }
        }
        (counts, errors)
    })?;
    let total: usize = counts.values().sum();
    let weight_sum: u32 = WEIGHTS.iter().sum();
    println!(
        "{:<12} {:>9} {:>8} {:>11}",
        "backend", "requests", "share", "configured"
    );
    for (b, w) in topo.backends.iter().zip(WEIGHTS) {
        let n = counts.get(&b.name).copied().unwrap_or(0);
        println!(
            "{:<12} {:>9} {:>7.1}% {:>10.1}%",
            b.name,
            n,
            pct(n, total),
            100.0 * f64::from(w) / f64::from(weight_sum)
        );
    }
    for (name, n) in counts
        .iter()
        .filter(|(k, _)| !topo.backends.iter().any(|b| &b.name == *k))
    {
        println!("{name:<12} {n:>9} (unexpected answer)");
    }
    println!(
        "result: {total} of {REQUESTS} requests answered, {} failed",
        errors.len()
    );
    if let Some(e) = errors.first() {
        println!("first failure: {e}");
    }
    if total == 0 {
        bail!("no request got an answer");
    }
    if stopped() {
        return Ok(());
    }

    step(
        3,
        "drain a backend at runtime: its open connection stays, new ones avoid it",
    );
    let cli = AdminCli::new(&lb);
    let chat = topo.vip(false, TCP_PORT);
    let mut conn = topo
        .client
        .run(|| LineClient::connect(chat))?
        .context("opening a long-lived connection")?;
    let home = conn.greeting().to_string();
    let b = topo
        .backends
        .iter()
        .find(|b| b.name == home)
        .context("greeting from an unknown backend")?;
    let home_addr = SocketAddr::new(b.v4().into(), TCP_PORT).to_string();
    println!("a long-lived connection is on {home} ({home_addr})");
    println!("$ xdp-lb backend drain chat {home_addr}");
    for line in cli.ok(&["backend", "drain", "chat", &home_addr]).lines() {
        println!("  | {line}");
    }
    let stop3 = stop.clone();
    let after = topo.client.run(move || {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..DRAIN_CONNECTIONS {
            if stop3.load(Ordering::Relaxed) {
                break;
            }
            if let Ok((name, _)) = client::tcp_name(chat) {
                *counts.entry(name).or_default() += 1;
            }
        }
        counts
    })?;
    let still = conn.ping().map_err(|e| e.to_string());
    println!(
        "result: {DRAIN_CONNECTIONS} new connections went to {after:?} ({} to {home}); the open connection still answers from {}",
        after.get(&home).copied().unwrap_or(0),
        still.as_deref().unwrap_or("nowhere")
    );
    println!("$ xdp-lb backend undrain chat {home_addr}");
    cli.ok(&["backend", "undrain", "chat", &home_addr]);
    if stopped() {
        return Ok(());
    }

    step(
        4,
        "a backend's server stops: health checks take it out, and bring it back",
    );
    let victim = topo.backend(VICTIM).name.clone();
    let victim_addr = SocketAddr::new(IpAddr::V4(topo.backend(VICTIM).v4()), HTTP_PORT);
    println!(
        "stopping {victim}'s servers; requests to http://{vip}/ go on until xdp-lb notices (http checks every 300 ms, fall 3)"
    );
    topo.stop_servers(VICTIM);
    let gone = Instant::now();
    let (failed, served, down) = until_marked_down(&topo, &lb, victim_addr, &stop)?;
    match down {
        Some(h) => println!(
            "xdp-lb marked {victim} down {} ms after its server stopped: {} ({failed} requests failed meanwhile, {served} answered)",
            gone.elapsed().as_millis(),
            h.reason.as_deref().unwrap_or("no reason given"),
        ),
        None if stopped() => return Ok(()),
        None => bail!(
            "xdp-lb did not mark {victim} down within {PATIENCE:?}\n{}",
            lb.output()
        ),
    }
    println!("{REQUESTS} more requests with {victim} down:");
    let during = batch(&topo, REQUESTS, &stop)?;
    print_spread(&topo, &during, &[VICTIM]);
    if stopped() {
        return Ok(());
    }
    println!("starting {victim}'s servers again...");
    topo.start_servers(VICTIM)
        .context("restarting the stopped servers")?;
    let started = Instant::now();
    match wait_health(&lb, victim_addr, true, &stop)? {
        Some(h) => println!(
            "xdp-lb marked {victim} up {} ms after its server started: {} (rise 2)",
            started.elapsed().as_millis(),
            h.reason.as_deref().unwrap_or("")
        ),
        None if stopped() => return Ok(()),
        None => bail!(
            "xdp-lb did not bring {victim} back within {PATIENCE:?}\n{}",
            lb.output()
        ),
    }
    println!("{REQUESTS} more requests:");
    let back = batch(&topo, REQUESTS, &stop)?;
    print_spread(&topo, &back, &[]);
    if !during.errors.is_empty() {
        bail!(
            "{} requests failed after {victim} was marked down",
            during.errors.len()
        );
    }
    if stopped() {
        return Ok(());
    }

    step(5, "the balancer's own view: xdp-lb status");
    for line in cli.ok(&["status"]).lines() {
        println!("  | {line}");
    }
    step(
        6,
        "the cache tier (the [cache] section, same process): a MISS, then a HIT from Redis",
    );
    show_cache(&topo, cache_at, &redis)?;
    step(
        7,
        "the monitor's figures over the demo: xdp-lb report, and /metrics",
    );
    print_monitor(&topo, &cli)?;
    drop(conn);
    drop(lb);
    println!("\ncleaning up namespaces");
    drop(topo);
    println!("demo complete");
    Ok(())
}

/// The `[cache]` section: every backend's HTTP server as an upstream, 200 answers kept
/// a minute (the demo's servers send no Cache-Control).
fn cache_section(topo: &Topology, listen: SocketAddr, redis: &str) -> String {
    let upstreams: Vec<String> = topo
        .backends
        .iter()
        .map(|b| format!("{{ addr = \"{}:{HTTP_PORT}\" }}", b.v4()))
        .collect();
    format!(
        "\n[cache]\nlisten = \"{listen}\"\nupstreams = [{}]\nstatus_ttl = {{ \"200\" = 60 }}\n\n[cache.redis]\nnodes = [\"{redis}\"]\n",
        upstreams.join(", ")
    )
}

/// Two GETs of the same URL through the cache tier: the first is fetched from a backend
/// and stored, the second is answered from Redis with the same body.
fn show_cache(topo: &Topology, at: SocketAddr, redis: &RedisServer) -> anyhow::Result<()> {
    let x_cache = |head: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-cache")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "(no X-Cache header)".into())
    };
    let mut seen = Vec::new();
    for n in 1..=2 {
        let (head, body) = topo
            .lb
            .run(|| client::http_get_response(at, "/demo"))
            .context("entering the balancer's namespace")?
            .context("asking the cache tier")?;
        let status = head.lines().next().unwrap_or("").to_string();
        let cache = x_cache(&head);
        println!("GET http://{at}/demo #{n}: {status}, X-Cache: {cache}, body {body:?}");
        seen.push((cache, body));
    }
    let keys = topo
        .lb
        .run(|| redis.dbsize())
        .context("entering the balancer's namespace")?;
    println!("Redis now holds {keys} key(s)");
    if seen[0].0 != "MISS" || seen[1].0 != "HIT" || seen[0].1 != seen[1].1 {
        bail!("the cache tier did not answer MISS then HIT with the same body: {seen:?}");
    }
    Ok(())
}

/// A short view of the monitor: `report` rows for new flows per second and the
/// machine's CPU and memory, then the per-backend new-flow counters from `/metrics`
/// (served on the balancer's loopback, so fetched inside its namespace). One call
/// each: bounded by the client timeouts, whatever the history holds.
fn print_monitor(topo: &Topology, cli: &AdminCli) -> anyhow::Result<()> {
    // Rates need two of the monitor's samples (one a second): on a fast machine the
    // demo gets here sooner. Wait for them within a bound; past it, `ok` fails with
    // the daemon's own message.
    let args = ["report", "--window", "5m"];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli.output(&args).status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = cli.ok(&args);
    let mut lines = report.lines();
    for line in lines.by_ref().take(2) {
        println!("  | {line}");
    }
    for line in lines.filter(|l| {
        let figure = l.split_whitespace().next().unwrap_or("");
        figure.ends_with("/new_flows_per_s")
            || figure == "cpu_percent"
            || figure == "memory_percent"
    }) {
        println!("  | {line}");
    }
    let at: SocketAddr = xdp_lb::config::DEFAULT_METRICS_LISTEN
        .parse()
        .context("the daemon's default /metrics address")?;
    // The cache tier's counters reach /metrics with the monitor's next sample (every
    // second): wait for the hit of step 6, within a bound.
    let scrape = || -> anyhow::Result<String> {
        topo.lb
            .run(|| client::http_get_path(at, "/metrics"))
            .context("entering the balancer's namespace")?
            .context("scraping /metrics")
    };
    let hit_counted = |m: &str| {
        m.lines().any(|l| {
            l.strip_prefix("xdp_lb_cache_requests_total{result=\"hit\"} ")
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 1.0)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut metrics = scrape()?;
    while !hit_counted(&metrics) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        metrics = scrape()?;
    }
    println!("curl http://{at}/metrics (in the balancer's namespace), new flows per backend and cache hits/misses:");
    for line in metrics.lines().filter(|l| {
        l.starts_with("xdp_lb_backend_new_flows_total{")
            || l.starts_with("xdp_lb_cache_requests_total{result=\"hit\"")
            || l.starts_with("xdp_lb_cache_requests_total{result=\"miss\"")
    }) {
        println!("  | {line}");
    }
    Ok(())
}

/// Answers by backend name, and the failures.
#[derive(Default)]
struct Batch {
    counts: BTreeMap<String, usize>,
    errors: Vec<String>,
}

impl Batch {
    fn total(&self) -> usize {
        self.counts.values().sum()
    }
}

fn batch(topo: &Topology, n: usize, stop: &Arc<AtomicBool>) -> anyhow::Result<Batch> {
    let vip = topo.vip(false, HTTP_PORT);
    let stop = stop.clone();
    Ok(topo.client.run(move || {
        let mut b = Batch::default();
        for _ in 0..n {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match client::http_get(vip) {
                Ok(body) => *b.counts.entry(body).or_default() += 1,
                Err(e) => b.errors.push(e.to_string()),
            }
        }
        b
    })?)
}

/// The health the daemon reports for `backend`.
fn health_of(lb: &XdpLbProcess, backend: SocketAddr) -> anyhow::Result<Option<HealthStatus>> {
    let reply = admin::call(
        &Endpoint::Unix(lb.admin_socket().to_path_buf()),
        Command::Status,
    )
    .context("asking xdp-lb for its status")?;
    let Reply::Status(s) = reply else {
        bail!("xdp-lb answered status with {reply:?}");
    };
    Ok(s.services
        .iter()
        .flat_map(|svc| &svc.backends)
        .find(|b| b.addr == backend)
        .and_then(|b| b.health.clone()))
}

/// Sends requests one by one until the daemon reports `backend` down (bounded):
/// (failed, answered, its health once down).
fn until_marked_down(
    topo: &Topology,
    lb: &XdpLbProcess,
    backend: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(usize, usize, Option<HealthStatus>)> {
    let vip = topo.vip(false, HTTP_PORT);
    let deadline = Instant::now() + PATIENCE;
    let (mut failed, mut served) = (0, 0);
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if let Some(h) = health_of(lb, backend)?.filter(|h| !h.up) {
            return Ok((failed, served, Some(h)));
        }
        match topo.client.run(|| client::http_get(vip))? {
            Ok(_) => served += 1,
            Err(_) => failed += 1,
        }
    }
    Ok((failed, served, None))
}

fn wait_health(
    lb: &XdpLbProcess,
    backend: SocketAddr,
    up: bool,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Option<HealthStatus>> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if let Some(h) = health_of(lb, backend)?.filter(|h| h.up == up && h.transitions > 0) {
            return Ok(Some(h));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(None)
}

/// The spread of a batch against the weights of the backends that are in (`out`
/// lists the 1-based backends that are down).
fn print_spread(topo: &Topology, b: &Batch, out: &[usize]) {
    let total = b.total();
    let weight_sum: u32 = WEIGHTS
        .iter()
        .enumerate()
        .filter(|(i, _)| !out.contains(&(i + 1)))
        .map(|(_, w)| w)
        .sum();
    println!();
    println!(
        "{:<12} {:>9} {:>8} {:>11}",
        "backend", "requests", "share", "configured"
    );
    for (i, (be, w)) in topo.backends.iter().zip(WEIGHTS).enumerate() {
        let n = b.counts.get(&be.name).copied().unwrap_or(0);
        let expected = if out.contains(&(i + 1)) {
            "down".to_string()
        } else {
            format!("{:.1}%", 100.0 * f64::from(w) / f64::from(weight_sum))
        };
        println!(
            "{:<12} {:>9} {:>7.1}% {:>11}",
            be.name,
            n,
            pct(n, total),
            expected
        );
    }
    for (name, n) in b
        .counts
        .iter()
        .filter(|(k, _)| !topo.backends.iter().any(|be| &be.name == *k))
    {
        println!("{name:<12} {n:>9} (unexpected answer)");
    }
    println!("{:<12} {:>9}", "total", total);
    println!(
        "{:<12} {:>9}{}",
        "failed",
        b.errors.len(),
        b.errors
            .first()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
}

fn pct(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}
