//! End-to-end benchmark in the namespace topology (NAT): HTTP requests/s over keep-alive
//! connections and new connections/s (connect, one request, close), from the client to
//! the VIP through the balancer (XDP) vs. to a twin backend's real address (the same
//! server code, routed by the lb's kernel: the XDP program passes it), measured with wrk
//! inside the client namespace. The cases are interleaved and each runs a bounded time.
//!
//! The direct path uses a second backend that is not part of the service: the balancer
//! translates replies from a service backend's address and port back to the VIP
//! statelessly, so direct connections to a service backend's port do not work.
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context};

use crate::{
    lbconfig::{BackendSpec, Forwarding, ServiceSpec},
    root,
    topology::{Topology, TopologyBuilder, HTTP_PORT, IFACE, VIP4},
};

const SECONDS: u32 = 5;
const ROUNDS: usize = 2;
const CONNECTIONS: u32 = 16;
const THREADS: u32 = 2;

pub fn run() -> anyhow::Result<()> {
    if !root::is_root() {
        bail!("the e2e benchmark needs root (network namespaces, XDP): run `sudo cargo xtask bench e2e`");
    }
    let topo = TopologyBuilder::new(2, Forwarding::Nat)
        .ports(None, None, Some(HTTP_PORT))
        .xdp_pass(true)
        .build()
        .context("building the topology")?;
    let backend = topo.backend(1);
    let svc = ServiceSpec {
        vip: IpAddr::V4(VIP4),
        port: HTTP_PORT,
        proto: "tcp",
        algorithm: "maglev",
        forwarding: Forwarding::Nat,
        backends: vec![BackendSpec {
            addr: IpAddr::V4(backend.v4()),
            port: HTTP_PORT,
            weight: 1,
            state: "active",
        }],
    };
    let _lb = topo
        .start_lb(&svc.run_args(IFACE))
        .context("starting xdp-lb")?;

    let vip = topo.vip(false, HTTP_PORT);
    let direct = SocketAddr::new(IpAddr::V4(topo.backend(2).v4()), HTTP_PORT);
    let cases = [
        ("requests/s (keep-alive)", false),
        ("new connections/s", true),
    ];
    // results[case][path] = one figure per round
    let mut results = vec![[Vec::new(), Vec::new()]; cases.len()];
    for round in 1..=ROUNDS {
        for (ci, (label, close)) in cases.iter().enumerate() {
            for (pi, target) in [vip, direct].iter().enumerate() {
                let rate = wrk(&topo, *target, *close)?;
                println!("round {round}: {label:<24} {target:<22} {rate:>10.0}");
                results[ci][pi].push(rate);
            }
        }
    }

    println!();
    println!(
        "{:<24} {:>14} {:>14} {:>8}   ({ROUNDS} rounds x {SECONDS} s, wrk -t{THREADS} -c{CONNECTIONS})",
        "case", "via VIP (XDP)", "routed", "ratio"
    );
    for (ci, (label, _)) in cases.iter().enumerate() {
        let via = mean(&results[ci][0]);
        let dir = mean(&results[ci][1]);
        let ratio = if dir > 0.0 { via / dir } else { 0.0 };
        println!("{label:<24} {via:>14.0} {dir:>14.0} {ratio:>8.2}");
    }
    Ok(())
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// One bounded wrk run from the client namespace; returns requests per second.
fn wrk(topo: &Topology, target: SocketAddr, close: bool) -> anyhow::Result<f64> {
    let url = format!("http://{target}/");
    let mut cmd = topo.client.command("wrk");
    cmd.args([
        &format!("-t{THREADS}"),
        &format!("-c{CONNECTIONS}"),
        &format!("-d{SECONDS}s"),
        "--timeout",
        "2s",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&url);
    let out =
        crate::cmd::run(&mut cmd).context("running wrk (installed by `cargo xtask setup`)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    if let Some(errs) = text
        .lines()
        .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
    {
        eprintln!("wrk {url}: {}", errs.trim());
    }
    Ok(rate)
}
