//! The test bed itself, without XDP: the lb namespace routes with its kernel, and the
//! client reaches every backend's real address (TCP, UDP, HTTP; IPv4 and IPv6) in both
//! topology modes; namespaces disappear when the topology is dropped.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use xdp_lb_tests::{
    client, require_root,
    scenario::Tally,
    topology::{HTTP_PORT, TCP_PORT, UDP_PORT},
    Forwarding, TopologyBuilder,
};

fn reaches_every_backend(mode: Forwarding) {
    require_root();
    let topo = TopologyBuilder::new(3, mode)
        .build()
        .expect("building the topology");
    let targets: Vec<(String, IpAddr)> = topo
        .backends
        .iter()
        .flat_map(|b| {
            [
                (b.name.clone(), IpAddr::V4(b.v4())),
                (b.name.clone(), IpAddr::V6(b.v6())),
            ]
        })
        .collect();
    let failures = topo
        .client
        .run(|| {
            let mut failures = Vec::new();
            for (name, ip) in &targets {
                let tcp = SocketAddr::new(*ip, TCP_PORT);
                match client::LineClient::connect(tcp) {
                    Ok(mut c) => {
                        if c.greeting() != name {
                            failures.push(format!(
                                "{tcp}: greeting {:?}, expected {name:?}",
                                c.greeting()
                            ));
                        }
                        match c.ping() {
                            Ok(pong) if &pong == name => {}
                            other => failures.push(format!("{tcp}: PING gave {other:?}")),
                        }
                    }
                    Err(e) => failures.push(format!("{tcp}: {e}")),
                }
                let udp = SocketAddr::new(*ip, UDP_PORT);
                match client::udp_ask(udp) {
                    Ok((answer, from, _)) if &answer == name && from == udp => {}
                    other => failures.push(format!("{udp} (udp): {other:?}")),
                }
                let http = SocketAddr::new(*ip, HTTP_PORT);
                match client::http_get(http) {
                    Ok(body) if &body == name => {}
                    other => failures.push(format!("http://{http}/: {other:?}")),
                }
            }
            failures
        })
        .expect("entering the client namespace");
    assert!(
        failures.is_empty(),
        "plain routing failures ({mode:?}):\n{}",
        failures.join("\n")
    );
}

#[test]
fn plain_routing_nat_topology() {
    reaches_every_backend(Forwarding::Nat);
}

#[test]
fn plain_routing_dsr_topology() {
    reaches_every_backend(Forwarding::Dsr);
}

#[test]
fn plain_routing_new_connections_spread_over_source_ports() {
    require_root();
    let topo = TopologyBuilder::new(1, Forwarding::Nat)
        .build()
        .expect("building the topology");
    let target = SocketAddr::new(IpAddr::V4(topo.backend(1).v4()), TCP_PORT);
    let (tally, ports) = topo
        .client
        .run(|| {
            let mut tally = Tally::default();
            let mut ports = std::collections::HashSet::new();
            for _ in 0..50 {
                if tally.gave_up() {
                    break;
                }
                match client::tcp_name(target) {
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
    assert_eq!(tally.get("backend-1"), 50, "answers: {}", tally.report());
    assert_eq!(
        ports.len(),
        50,
        "each connection should use a new source port"
    );
}

#[test]
fn topology_removes_its_namespaces_on_drop() {
    require_root();
    let names: Vec<String> = {
        let topo = TopologyBuilder::new(2, Forwarding::Dsr)
            .build()
            .expect("building the topology");
        let mut names = vec![
            topo.client.name().to_string(),
            topo.lb.name().to_string(),
            topo.bridge.name().to_string(),
        ];
        names.extend(topo.backends.iter().map(|b| b.ns.name().to_string()));
        for n in &names {
            assert!(
                Path::new("/run/netns").join(n).exists(),
                "namespace {n} should exist while the topology lives"
            );
        }
        names
    };
    let left: Vec<&String> = names
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
