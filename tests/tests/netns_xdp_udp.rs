//! UDP request/response through the XDP balancer, NAT and DSR, IPv4 and IPv6: fresh
//! source ports reach the backends and every answer comes back from the VIP.
use xdp_lb_tests::{require_root, scenario, topology::UDP_PORT, Forwarding};

const REQUESTS: usize = 30;

fn udp_through_vip(mode: Forwarding, v6: bool) {
    require_root();
    let topo = scenario::xdp_topology(3, mode);
    let svc = scenario::service(&topo, v6, UDP_PORT, "udp", &[1, 1, 1]);
    let lb = scenario::start_service_xdp(&topo, &svc);
    let vip = topo.vip(v6, UDP_PORT);
    let tally = topo
        .client
        .run(|| scenario::udp_answers(vip, REQUESTS))
        .expect("entering the client namespace");
    let report = format!("{mode:?} UDP to {vip}: {}\n{}", tally.report(), lb.output());
    tally.assert_spread(&topo, REQUESTS, &report);
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
