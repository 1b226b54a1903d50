//! Traffic that is not for a VIP crosses the balancer untouched: with a NAT service
//! attached, the client still reaches backends' real addresses routed by the lb's
//! kernel, including a backend's service port (its replies must not be mistaken for
//! NAT replies and rewritten to the VIP).
use std::net::{IpAddr, SocketAddr};

use xdp_lb_tests::{client, require_root, scenario, topology::TCP_PORT, Forwarding};

#[test]
fn nat_direct_traffic_to_backends_passes_through() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    // Backends 1 and 2 serve the VIP; backend 3 is not part of the service.
    let svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[1, 1]);
    let lb = scenario::start_service_xdp(&topo, &svc);
    let failures = topo
        .client
        .run(|| {
            let mut failures = Vec::new();
            for b in &topo.backends {
                for ip in [IpAddr::V4(b.v4()), IpAddr::V6(b.v6())] {
                    let target = SocketAddr::new(ip, TCP_PORT);
                    match client::tcp_name(target) {
                        Ok((name, _)) if name == b.name => {}
                        other => failures.push(format!("{target}: {other:?}")),
                    }
                }
            }
            failures
        })
        .expect("entering the client namespace");
    assert!(
        failures.is_empty(),
        "direct connections through the balancer failed:\n{}\n{}",
        failures.join("\n"),
        lb.output()
    );
}
