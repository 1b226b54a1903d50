//! UDP request/response through the XDP balancer, NAT and DSR, IPv4 and IPv6: fresh
//! source ports reach the backends and every answer comes back from the VIP.
use xdp_lb_tests::{
    client, require_root,
    scenario::{self, Tally},
    topology::UDP_PORT,
    Forwarding,
};

const REQUESTS: usize = 30;

fn udp_through_vip(mode: Forwarding, v6: bool) {
    require_root();
    let topo = scenario::xdp_topology(3, mode);
    let svc = scenario::service(&topo, v6, UDP_PORT, "udp", &[1, 1, 1]);
    let lb = scenario::start_service_xdp(&topo, &svc);
    let vip = topo.vip(v6, UDP_PORT);
    let tally = topo
        .client
        .run(|| {
            let mut tally = Tally::default();
            for _ in 0..REQUESTS {
                if tally.gave_up() {
                    break;
                }
                match client::udp_ask(vip) {
                    Ok((name, from, _)) if from == vip => tally.add(&name),
                    Ok((name, from, port)) => tally.error(format!(
                        "answer {name:?} to port {port} came from {from}, not {vip}"
                    )),
                    Err(e) => tally.error(e),
                }
            }
            tally
        })
        .expect("entering the client namespace");
    let report = format!("{mode:?} UDP to {vip}: {}\n{}", tally.report(), lb.output());
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(tally.total(), REQUESTS, "{report}");
    assert!(
        tally
            .counts
            .keys()
            .all(|k| topo.backends.iter().any(|b| &b.name == k)),
        "answers from unknown backends: {report}"
    );
    assert!(
        tally.counts.len() >= 2,
        "{REQUESTS} source ports all went to one backend: {report}"
    );
}

#[test]
fn nat_udp_ipv4() {
    udp_through_vip(Forwarding::Nat, false);
}

#[test]
fn dsr_udp_ipv4() {
    udp_through_vip(Forwarding::Dsr, false);
}

#[test]
fn nat_udp_ipv6() {
    udp_through_vip(Forwarding::Nat, true);
}

#[test]
fn dsr_udp_ipv6() {
    udp_through_vip(Forwarding::Dsr, true);
}
