//! The demo behind `cargo xtask run`: three HTTP backends weighted 3:2:1 behind a NAT
//! VIP, a bounded batch of requests from the client (one connection each), and a table
//! of where they went. Ctrl-C stops the batch; the same Drop guards tear everything down.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context};

use crate::{
    client,
    lbconfig::{BackendSpec, Forwarding, ServiceSpec},
    root,
    topology::{TopologyBuilder, HTTP_PORT, IFACE, VIP4},
};

const REQUESTS: usize = 300;
const WEIGHTS: [u32; 3] = [3, 2, 1];

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
    let args = svc.run_args(IFACE);
    println!(
        "starting: xdp-lb {} (in namespace {})",
        args.join(" "),
        topo.lb.name()
    );
    let lb = topo.start_lb(&args).context("starting xdp-lb")?;
    if stop.load(Ordering::Relaxed) {
        return Ok(());
    }

    let vip = topo.vip(false, HTTP_PORT);
    println!("sending {REQUESTS} HTTP requests to http://{vip}/ from the client namespace...");
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
    println!();
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
    println!("{:<12} {:>9}", "total", total);
    if !errors.is_empty() {
        println!("{} requests failed; first: {}", errors.len(), errors[0]);
    }
    drop(lb);
    println!("cleaning up namespaces");
    drop(topo);
    if total == 0 {
        bail!("no request got an answer");
    }
    Ok(())
}

fn pct(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}
