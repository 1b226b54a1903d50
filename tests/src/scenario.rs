//! Pieces the integration tests share: the service definition for a topology, counting
//! answers per backend, and the distribution report printed on failure.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use crate::{
    lbconfig::{BackendSpec, ServiceSpec},
    topology::{Topology, VIP4, VIP6},
};

/// A service on the topology's VIP (v4 or v6) whose backends are the topology's
/// backends `1..=weights.len()` with those weights, all on `port`.
pub fn service(
    topo: &Topology,
    v6: bool,
    port: u16,
    proto: &'static str,
    weights: &[u32],
) -> ServiceSpec {
    ServiceSpec {
        vip: if v6 {
            IpAddr::V6(VIP6)
        } else {
            IpAddr::V4(VIP4)
        },
        port,
        proto,
        algorithm: "maglev",
        forwarding: topo.mode,
        backends: topo
            .backends
            .iter()
            .zip(weights)
            .map(|(b, &weight)| backend_spec(topo, b.index, v6, port, weight))
            .collect(),
    }
}

pub fn backend_spec(
    topo: &Topology,
    index: usize,
    v6: bool,
    port: u16,
    weight: u32,
) -> BackendSpec {
    let b = topo.backend(index);
    BackendSpec {
        addr: if v6 {
            IpAddr::V6(b.v6())
        } else {
            IpAddr::V4(b.v4())
        },
        port,
        weight,
        state: "active",
    }
}

/// Errors after which a traffic loop stops.
pub const MAX_ERRORS: usize = 5;

/// Answers counted by name.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub counts: BTreeMap<String, usize>,
    pub errors: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, name: &str) {
        *self.counts.entry(name.to_string()).or_default() += 1;
    }

    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors.push(e.to_string());
    }

    /// Loops stop early once this is true: a broken data path then fails in seconds
    /// instead of waiting out every timeout.
    pub fn gave_up(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn get(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }

    pub fn share(&self, name: &str) -> f64 {
        let t = self.total();
        if t == 0 {
            0.0
        } else {
            100.0 * self.get(name) as f64 / t as f64
        }
    }

    /// `backend-1: 301 (50.2%), ...` plus the first errors, for assertion messages.
    pub fn report(&self) -> String {
        let mut s: Vec<String> = self
            .counts
            .keys()
            .map(|k| format!("{k}: {} ({:.1}%)", self.get(k), self.share(k)))
            .collect();
        if !self.errors.is_empty() {
            s.push(format!(
                "{} errors, first: {}",
                self.errors.len(),
                self.errors
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        s.join(", ")
    }
}

/// A topology ready for XDP: `backends` backends and the XDP_PASS program on the lb's
/// bridge port.
pub fn xdp_topology(backends: usize, mode: crate::Forwarding) -> Topology {
    crate::TopologyBuilder::new(backends, mode)
        .xdp_pass(true)
        .build()
        .unwrap_or_else(|e| panic!("building the {mode:?} topology: {e}"))
}

/// Starts `xdp-lb run` for one service given by flags; panics with its output on failure.
pub fn start_service(topo: &Topology, svc: &ServiceSpec) -> crate::lb::XdpLbProcess {
    topo.start_lb(&svc.run_args(crate::topology::IFACE))
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"))
}

/// `start_service` with the XDP program (`--attach xdp`), for the tests of the XDP
/// data path: the default (`auto`) attaches the tc program on the topology's veths.
pub fn start_service_xdp(topo: &Topology, svc: &ServiceSpec) -> crate::lb::XdpLbProcess {
    let mut args = svc.run_args(crate::topology::IFACE);
    args.extend(["--attach".to_string(), "xdp".to_string()]);
    topo.start_lb(&args)
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"))
}

/// Deterministic, incompressible-looking test data (xorshift64).
pub fn test_data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `xdp-lb run --config FILE` in the lb namespace, ready; panics with the reason.
pub fn start_with_file(
    topo: &Topology,
    file: &crate::lbconfig::ConfigFile,
) -> crate::lb::XdpLbProcess {
    let args = [
        "run".to_string(),
        "--config".into(),
        file.path().display().to_string(),
    ];
    topo.start_lb(&args)
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"))
}

/// `n` new TCP connections from the client to the IPv4 VIP's TCP port, counted by the
/// backend that answered; stops after `MAX_ERRORS` failures.
pub fn connections(topo: &Topology, n: usize) -> Tally {
    let vip = topo.vip(false, crate::topology::TCP_PORT);
    topo.client
        .run(|| tcp_answers(vip, n))
        .expect("entering the client namespace")
}

/// `n` new TCP connections to `vip` from the calling namespace, counted by the backend
/// that answered; stops after `MAX_ERRORS` failures.
pub fn tcp_answers(vip: SocketAddr, n: usize) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        if tally.gave_up() {
            break;
        }
        match crate::client::tcp_name(vip) {
            Ok((name, _)) => tally.add(&name),
            Err(e) => tally.error(e),
        }
    }
    tally
}

/// `n` UDP requests to `vip`, each from a fresh source port, from the calling
/// namespace, counted by the backend that answered; an answer from any address but the
/// VIP is an error (the reply path's rewrite failed).
pub fn udp_answers(vip: SocketAddr, n: usize) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        if tally.gave_up() {
            break;
        }
        match crate::client::udp_ask(vip) {
            Ok((name, from, _)) if from == vip => tally.add(&name),
            Ok((name, from, port)) => tally.error(format!(
                "answer {name:?} to port {port} came from {from}, not {vip}"
            )),
            Err(e) => tally.error(e),
        }
    }
    tally
}

impl Tally {
    /// Panics with `report` unless all `n` answers came, without errors, from the
    /// topology's backends, and from at least two of them.
    pub fn assert_spread(&self, topo: &Topology, n: usize, report: &str) {
        assert!(self.errors.is_empty(), "{report}");
        assert_eq!(self.total(), n, "{report}");
        assert!(
            self.counts
                .keys()
                .all(|k| topo.backends.iter().any(|b| &b.name == k)),
            "answers from unknown backends: {report}"
        );
        assert!(
            self.counts.len() >= 2,
            "all {n} answers from one backend: {report}"
        );
    }
}
