//! The demo behind `cargo xtask run`: a short story in namespaces, each step printed as
//! it happens and bounded in time. Three backends weighted 3:2:1 behind a NAT VIP; the
//! weighted spread of 300 HTTP requests; a backend drained at runtime through the admin
//! API while a long-lived connection on it keeps working and new connections avoid it;
//! the balancer's own `status` at the end. Ctrl-C stops it; the same Drop guards tear
//! everything down.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context};

use crate::{
    admin::AdminCli,
    client::{self, LineClient},
    lbconfig::{self, BackendSpec, ConfigFile, Forwarding, ServiceSpec},
    root,
    topology::{TopologyBuilder, HTTP_PORT, IFACE, TCP_PORT, VIP4},
    Topology,
};

const REQUESTS: usize = 300;
const WEIGHTS: [u32; 3] = [3, 2, 1];
const DRAIN_CONNECTIONS: usize = 100;

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
    let topo = TopologyBuilder::new(WEIGHTS.len(), Forwarding::Nat)
        .ports(Some(TCP_PORT), None, Some(HTTP_PORT))
        .xdp_pass(true)
        .build()
        .context("building the topology")?;
    // Two services on one VIP: HTTP for the spread, a line protocol for a connection
    // that stays open across the drain.
    let text = service(&topo, "web", HTTP_PORT)
        + &service(&topo, "chat", TCP_PORT).replacen(
            &format!("interfaces = [\"{IFACE}\"]\n"),
            "",
            1,
        );
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

    step(4, "the balancer's own view: xdp-lb status");
    for line in cli.ok(&["status"]).lines() {
        println!("  | {line}");
    }
    drop(conn);
    drop(lb);
    println!("\ncleaning up namespaces");
    drop(topo);
    println!("demo complete");
    Ok(())
}

fn pct(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}
