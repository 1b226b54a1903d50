//! TCP through the XDP balancer, NAT and DSR: weighted spread of new connections,
//! a 10 MB transfer that arrives intact, and an IPv6 VIP.
use std::collections::HashSet;

use sha2::{Digest, Sha256};
use xdp_lb_tests::{
    client::{self, LineClient},
    require_root,
    scenario::{self, Tally},
    servers::hex,
    topology::TCP_PORT,
    Forwarding,
};

/// The issue asks for ~600; at 600 the +-5 pp band is only ~2.5 sigma of binomial noise
/// for the 50% backend (seen: 56.3% on a correct balancer, about 1 run in 10 failing).
/// 1200 makes it ~3.5 sigma at a few more seconds.
const CONNECTIONS: usize = 1200;
const WEIGHTS: [u32; 3] = [3, 2, 1];
const TOLERANCE_PP: f64 = 5.0;

fn weighted_spread(mode: Forwarding) {
    require_root();
    let topo = scenario::xdp_topology(3, mode);
    let svc = scenario::service(&topo, false, TCP_PORT, "tcp", &WEIGHTS);
    let lb = scenario::start_service_xdp(&topo, &svc);
    let vip = topo.vip(false, TCP_PORT);
    let (tally, ports) = topo
        .client
        .run(|| {
            let mut tally = Tally::default();
            let mut ports = HashSet::new();
            for _ in 0..CONNECTIONS {
                if tally.gave_up() {
                    break;
                }
                match client::tcp_name(vip) {
                    Ok((name, port)) => {
                        tally.add(&name);
                        ports.insert(port);
                    }
                    Err(e) => tally.error(e),
                }
            }
            (tally, ports)
        })
        .expect("entering the client namespace");
    let report = format!(
        "{mode:?} distribution over {CONNECTIONS}: {}\n{}",
        tally.report(),
        lb.output()
    );
    assert!(tally.errors.is_empty(), "connections failed: {report}");
    assert_eq!(tally.total(), CONNECTIONS, "{report}");
    assert_eq!(
        ports.len(),
        CONNECTIONS,
        "source ports were reused: {report}"
    );
    let sum: u32 = WEIGHTS.iter().sum();
    for (b, w) in topo.backends.iter().zip(WEIGHTS) {
        let want = 100.0 * f64::from(w) / f64::from(sum);
        let got = tally.share(&b.name);
        assert!(
            (got - want).abs() <= TOLERANCE_PP,
            "{} got {got:.1}%, configured {want:.1}% (+-{TOLERANCE_PP} pp): {report}",
            b.name
        );
    }
}

#[test]
fn nat_weights_3_2_1_spread_new_connections() {
    weighted_spread(Forwarding::Nat);
}

#[test]
fn dsr_weights_3_2_1_spread_new_connections() {
    weighted_spread(Forwarding::Dsr);
}

fn transfer_10mb(mode: Forwarding) {
    require_root();
    let topo = scenario::xdp_topology(2, mode);
    let svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[1, 1]);
    let lb = scenario::start_service_xdp(&topo, &svc);
    let vip = topo.vip(false, TCP_PORT);
    let data = scenario::test_data(10 * 1024 * 1024);
    let want = hex(&Sha256::digest(&data));
    let result = topo
        .client
        .run(|| -> xdp_lb_tests::Result<(String, String)> {
            let mut c = LineClient::connect(vip)?;
            let digest = c.sha(&data)?;
            Ok((c.greeting().to_string(), digest))
        })
        .expect("entering the client namespace");
    let (greeting, got) =
        result.unwrap_or_else(|e| panic!("{mode:?} transfer failed: {e}\n{}", lb.output()));
    assert!(
        topo.backends.iter().any(|b| b.name == greeting),
        "unexpected greeting {greeting:?}"
    );
    assert_eq!(
        got, want,
        "{mode:?}: {greeting} received different bytes than sent"
    );
}

#[test]
fn nat_10mb_transfer_arrives_intact() {
    transfer_10mb(Forwarding::Nat);
}

#[test]
fn dsr_10mb_transfer_arrives_intact() {
    transfer_10mb(Forwarding::Dsr);
}

fn ipv6_vip(mode: Forwarding) {
    require_root();
    let topo = scenario::xdp_topology(3, mode);
    let svc = scenario::service(&topo, true, TCP_PORT, "tcp", &[1, 1, 1]);
    let lb = scenario::start_service_xdp(&topo, &svc);
    let vip = topo.vip(true, TCP_PORT);
    let tally = topo
        .client
        .run(|| {
            let mut tally = Tally::default();
            for _ in 0..30 {
                if tally.gave_up() {
                    break;
                }
                let r = LineClient::connect(vip).and_then(|mut c| {
                    let pong = c.ping()?;
                    if pong == c.greeting() && c.peer() == Some(vip) {
                        Ok(pong)
                    } else {
                        Err(xdp_lb_tests::BedError::Protocol(format!(
                            "greeting {:?}, pong {pong:?}, peer {:?}",
                            c.greeting(),
                            c.peer()
                        )))
                    }
                });
                match r {
                    Ok(name) => tally.add(&name),
                    Err(e) => tally.error(e),
                }
            }
            tally
        })
        .expect("entering the client namespace");
    let report = format!("{mode:?} IPv6: {}\n{}", tally.report(), lb.output());
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(tally.total(), 30, "{report}");
    assert!(
        tally
            .counts
            .keys()
            .all(|k| topo.backends.iter().any(|b| &b.name == k)),
        "answers from unknown backends: {report}"
    );
    assert!(
        tally.counts.len() >= 2,
        "30 connections all went to one backend: {report}"
    );
}

#[test]
fn nat_ipv6_vip_serves_tcp() {
    ipv6_vip(Forwarding::Nat);
}

#[test]
fn dsr_ipv6_vip_serves_tcp() {
    ipv6_vip(Forwarding::Dsr);
}

/// The same data path attached in generic (SKB) mode, the fallback on drivers without
/// native XDP.
#[test]
fn nat_generic_mode_serves_tcp() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[1, 1]);
    let mut args = svc.run_args(xdp_lb_tests::topology::IFACE);
    args.extend(["--attach", "xdp", "--xdp-mode", "generic"].map(String::from));
    let lb = topo
        .start_lb(&args)
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"));
    let vip = topo.vip(false, TCP_PORT);
    let tally = topo
        .client
        .run(|| {
            let mut tally = Tally::default();
            for _ in 0..30 {
                if tally.gave_up() {
                    break;
                }
                match LineClient::connect(vip).and_then(|mut c| c.ping()) {
                    Ok(name) => tally.add(&name),
                    Err(e) => tally.error(e),
                }
            }
            tally
        })
        .expect("entering the client namespace");
    let report = format!("generic mode: {}\n{}", tally.report(), lb.output());
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(
        tally.get("backend-1") + tally.get("backend-2"),
        30,
        "{report}"
    );
    assert!(
        tally.counts.len() == 2,
        "30 connections all went to one backend: {report}"
    );
    let link = topo
        .lb
        .ip(&["link", "show", "dev", "eth0"])
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("xdpgeneric"),
        "not attached in generic mode: {link}"
    );
}

/// The counters `run` reports at exit match the traffic: one new flow per connection,
/// split over the backends as the connections were.
#[test]
fn nat_exit_report_counts_every_connection() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[1, 1]);
    let mut lb = scenario::start_service_xdp(&topo, &svc);
    let vip = topo.vip(false, TCP_PORT);
    const N: usize = 40;
    let tally = topo
        .client
        .run(|| scenario::tcp_answers(vip, N))
        .expect("entering the client namespace");
    assert!(tally.errors.is_empty(), "{}", tally.report());
    let status = lb.stop();
    let out = lb.output();
    assert!(
        status.is_some_and(|s| s.success()),
        "xdp-lb did not exit cleanly: {out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("service ") && l.contains("new_flows="))
        .unwrap_or_else(|| panic!("no per-service counters at exit: {out}"));
    assert!(
        line.contains(&format!("new_flows={N} ")),
        "{line}\n{}",
        tally.report()
    );
    for b in &topo.backends {
        let flows = tally.get(&b.name);
        // "[198.18.1.11:80 84p/20f, 198.18.1.12:80 ...]": this backend's entry.
        let entry = line
            .split(['[', ',', ']'])
            .map(str::trim)
            .find(|e| e.starts_with(&format!("{}:{TCP_PORT} ", b.v4())))
            .unwrap_or_else(|| panic!("backend {} missing: {line}", b.name));
        assert!(
            entry.ends_with(&format!("/{flows}f")),
            "backend {} served {flows} connections, counters say {entry:?}",
            b.name
        );
    }
    // The program stays attached from its pinned state (see netns_restart.rs).
    assert!(
        out.contains("leaving the program attached to 1 interface(s)"),
        "{out}"
    );
}
