//! The demo behind `cargo xtask run`: three HTTP backends weighted 3:2:1 behind a NAT
//! VIP, a bounded batch of requests from the client (one connection each), and a table
//! of where they went. Then what health checks buy: one backend's server is stopped,
//! the demo shows when the balancer marked it down and why (and the requests that
//! failed until then), the spread without it, and its return when the server is back.
//! Ctrl-C stops the batch; the same Drop guards tear everything down.
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
    client,
    lb::XdpLbProcess,
    lbconfig::{self, BackendSpec, ConfigFile, Forwarding, ServiceSpec},
    root,
    topology::{Topology, TopologyBuilder, HTTP_PORT, IFACE, VIP4},
};

const REQUESTS: usize = 300;
const WEIGHTS: [u32; 3] = [3, 2, 1];
/// The backend whose server the demo stops (1-based).
const VICTIM: usize = 2;
/// Bound for the balancer to notice (the checks below take about a second).
const PATIENCE: Duration = Duration::from_secs(15);
/// The demo's checks: fast enough to watch, HAProxy-style counts.
const HEALTH_CHECK: &str = "\n[service.health_check]\ntype = \"http\"\npath = \"/\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 3\n";

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

    println!("building the namespace topology (client, lb, bridge, 3 backends)...");
    let topo = TopologyBuilder::new(WEIGHTS.len(), Forwarding::Nat)
        .ports(None, None, Some(HTTP_PORT))
        .xdp_pass(true)
        .build()
        .context("building the topology")?;
    let svc = ServiceSpec {
        vip: IpAddr::V4(VIP4),
        port: HTTP_PORT,
        proto: "tcp",
        algorithm: "maglev",
        forwarding: Forwarding::Nat,
        backends: topo
            .backends
            .iter()
            .zip(WEIGHTS)
            .map(|(b, weight)| BackendSpec {
                addr: IpAddr::V4(b.v4()),
                port: HTTP_PORT,
                weight,
                state: "active",
            })
            .collect(),
    };
    // The health_check table follows the backends, so it belongs to the service.
    let file = ConfigFile::new(&format!(
        "{}{HEALTH_CHECK}",
        lbconfig::render(&[IFACE], &[svc])
    ))
    .context("writing the configuration file")?;
    let args = vec![
        "run".to_string(),
        "--config".into(),
        file.path().display().to_string(),
    ];
    println!(
        "starting: xdp-lb {} (in namespace {}), http checks every 300 ms (fall 3, rise 2)",
        args.join(" "),
        topo.lb.name()
    );
    let mut topo = topo;
    let lb = topo.start_lb(&args).context("starting xdp-lb")?;
    if stop.load(Ordering::Relaxed) {
        return Ok(());
    }

    let vip = topo.vip(false, HTTP_PORT);
    println!("sending {REQUESTS} HTTP requests to http://{vip}/ from the client namespace...");
    let before = batch(&topo, REQUESTS, &stop)?;
    print_spread(&topo, &before, &[]);
    if stop.load(Ordering::Relaxed) {
        return Ok(());
    }

    let victim = topo.backend(VICTIM).name.clone();
    let victim_addr = SocketAddr::new(IpAddr::V4(topo.backend(VICTIM).v4()), HTTP_PORT);
    println!(
        "\nstopping {victim}'s server ({victim_addr}) and sending requests until xdp-lb notices..."
    );
    topo.stop_servers(VICTIM);
    let stopped = Instant::now();
    let (failed, served, down) = until_marked_down(&topo, &lb, victim_addr, &stop)?;
    match down {
        Some(h) => println!(
            "xdp-lb marked {victim} down {} ms after its server stopped: {} ({} requests failed meanwhile, {served} answered)",
            stopped.elapsed().as_millis(),
            h.reason.as_deref().unwrap_or("no reason given"),
            failed
        ),
        None if stop.load(Ordering::Relaxed) => return Ok(()),
        None => bail!("xdp-lb did not mark {victim} down within {PATIENCE:?}\n{}", lb.output()),
    }
    println!("sending {REQUESTS} more requests with {victim} down...");
    let during = batch(&topo, REQUESTS, &stop)?;
    print_spread(&topo, &during, &[VICTIM]);

    println!("\nstarting {victim}'s server again...");
    topo.start_servers(VICTIM)
        .context("restarting the stopped server")?;
    let started = Instant::now();
    let up = wait_health(&lb, victim_addr, true, &stop)?;
    match up {
        Some(h) => println!(
            "xdp-lb marked {victim} up {} ms after its server started: {}",
            started.elapsed().as_millis(),
            h.reason.as_deref().unwrap_or("")
        ),
        None if stop.load(Ordering::Relaxed) => return Ok(()),
        None => bail!(
            "xdp-lb did not bring {victim} back within {PATIENCE:?}\n{}",
            lb.output()
        ),
    }
    println!("sending {REQUESTS} more requests...");
    let after = batch(&topo, REQUESTS, &stop)?;
    print_spread(&topo, &after, &[]);

    drop(lb);
    println!("cleaning up namespaces");
    drop(topo);
    if before.total() == 0 || after.total() == 0 {
        bail!("no request got an answer");
    }
    if !during.errors.is_empty() {
        bail!(
            "{} requests failed after {victim} was marked down",
            during.errors.len()
        );
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
