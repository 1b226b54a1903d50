//! The tc attach mode (`xdp-lb run --attach tc`) with real traffic through the VIP:
//! veth offloads at their defaults (TX checksum offload, TSO/GSO on), so clients and
//! backends send partial checksums and large GSO segments, which the tc program must
//! rewrite correctly (XDP cannot: its namespace tests turn TX checksum offload off).
//! Each test checks that the data path was the tc program's: the log line of the
//! attachment, and the service's byte counter, which only the program moves.
//! Also: with no `--attach`, the default (`auto`) puts tc on the veth and XDP on an
//! interface of another driver. (Too-big answers over tc: `netns_pmtu.rs`.)
use sha2::{Digest, Sha256};
use xdp_lb_tests::{
    admin::AdminCli,
    client::LineClient,
    lbconfig::{render, ConfigFile},
    require_root, scenario,
    servers::hex,
    topology::{Topology, TopologyBuilder, IFACE, TCP_PORT, UDP_PORT},
    Forwarding,
};

const CONNECTIONS: usize = 60;
const REQUESTS: usize = 30;
const TRANSFER: usize = 10 * 1024 * 1024;

fn tc_topology(backends: usize, mode: Forwarding) -> Topology {
    TopologyBuilder::new(backends, mode)
        .default_offloads()
        .build()
        .unwrap_or_else(|e| panic!("building the {mode:?} topology: {e}"))
}

/// Starts `xdp-lb run --attach tc` for `svc`; checks it attached in tc mode.
fn start_tc(
    topo: &Topology,
    svc: &xdp_lb_tests::lbconfig::ServiceSpec,
) -> xdp_lb_tests::lb::XdpLbProcess {
    let mut args = svc.run_args(IFACE);
    args.extend(["--attach".to_string(), "tc".to_string()]);
    let lb = topo
        .start_lb(&args)
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"));
    assert!(
        lb.output().contains(&format!("attached to {IFACE} in tc")),
        "not attached in tc mode:\n{}",
        lb.output()
    );
    lb
}

/// The offloads the test is about are on where traffic starts.
fn assert_offloads_on(topo: &Topology) {
    let out = topo
        .client
        .exec(&["ethtool", "-k", IFACE])
        .expect("ethtool -k in the client namespace");
    let text = String::from_utf8_lossy(&out.stdout);
    for feature in ["tx-checksumming: on", "tcp-segmentation-offload: on"] {
        assert!(
            text.contains(feature),
            "client {IFACE}: want {feature}:\n{text}"
        );
    }
}

/// Bytes the service's counter shows (counted by the program per packet) once it
/// reaches `at_least`, or its last value. `status` reports the monitor's latest
/// sample, taken every interval: asked a bounded number of times.
fn service_bytes(lb: &xdp_lb_tests::lb::XdpLbProcess, at_least: u64) -> u64 {
    let admin = AdminCli::new(lb);
    let mut bytes = 0;
    for _ in 0..60 {
        let s = admin.status();
        bytes = s["services"][0]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no service bytes in {s}"));
        if bytes >= at_least {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    bytes
}

fn tcp_through_tc(mode: Forwarding, v6: bool) {
    require_root();
    let topo = tc_topology(3, mode);
    assert_offloads_on(&topo);
    let svc = scenario::service(&topo, v6, TCP_PORT, "tcp", &[1, 1, 1]);
    let lb = start_tc(&topo, &svc);
    let vip = topo.vip(v6, TCP_PORT);
    let data = scenario::test_data(TRANSFER);
    let want = hex(&Sha256::digest(&data));
    let (tally, transfer) = topo
        .client
        .run(|| {
            let tally = scenario::tcp_answers(vip, CONNECTIONS);
            let transfer = LineClient::connect(vip).and_then(|mut c| {
                let digest = c.sha(&data)?;
                Ok((c.greeting().to_string(), digest))
            });
            (tally, transfer)
        })
        .expect("entering the client namespace");
    let report = format!("{mode:?} TCP to {vip}: {}\n{}", tally.report(), lb.output());
    tally.assert_spread(&topo, CONNECTIONS, &report);
    let (greeting, got) = transfer.unwrap_or_else(|e| panic!("transfer failed: {e}\n{report}"));
    assert!(
        topo.backends.iter().any(|b| b.name == greeting),
        "unexpected greeting {greeting:?}"
    );
    assert_eq!(got, want, "{greeting} received different bytes than sent");
    // Every byte to the VIP crossed the program (GSO segments counted whole).
    let bytes = service_bytes(&lb, TRANSFER as u64);
    assert!(
        bytes >= TRANSFER as u64,
        "service counted {bytes} bytes, less than the {TRANSFER} sent: {report}"
    );
}

#[test]
fn nat_tcp_ipv4_through_tc_with_offloads_on() {
    tcp_through_tc(Forwarding::Nat, false);
}

#[test]
fn nat_tcp_ipv6_through_tc_with_offloads_on() {
    tcp_through_tc(Forwarding::Nat, true);
}

#[test]
fn dsr_tcp_ipv4_through_tc_with_offloads_on() {
    tcp_through_tc(Forwarding::Dsr, false);
}

#[test]
fn nat_udp_through_tc_with_offloads_on() {
    require_root();
    let topo = tc_topology(3, Forwarding::Nat);
    assert_offloads_on(&topo);
    for v6 in [false, true] {
        let svc = scenario::service(&topo, v6, UDP_PORT, "udp", &[1, 1, 1]);
        let mut lb = start_tc(&topo, &svc);
        let vip = topo.vip(v6, UDP_PORT);
        let tally = topo
            .client
            .run(|| scenario::udp_answers(vip, REQUESTS))
            .expect("entering the client namespace");
        let report = format!("UDP to {vip}: {}\n{}", tally.report(), lb.output());
        tally.assert_spread(&topo, REQUESTS, &report);
        assert!(
            service_bytes(&lb, 1) > 0,
            "the service counted nothing: {report}"
        );
        let _ = lb.stop();
    }
}

/// With no `--attach`, `run` picks per interface: tc on the veth, XDP on an
/// interface of another driver (a bridge without ports here, the one other device
/// type this kernel builds in, in generic mode since it has no native XDP); traffic
/// through the veth then crosses the tc program.
#[test]
fn the_default_attaches_tc_on_veth_and_xdp_elsewhere() {
    require_root();
    let topo = tc_topology(2, Forwarding::Nat);
    topo.lb
        .ip(&["link", "add", "d0", "type", "bridge"])
        .expect("a bridge in the lb namespace");
    topo.lb.ip(&["link", "set", "d0", "up"]).expect("d0 up");
    let svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[1, 1]);
    let mut args = svc.run_args(IFACE);
    args.extend(["--iface".to_string(), "d0".to_string()]);
    let lb = topo
        .start_lb(&args)
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"));
    let out = lb.output();
    assert!(
        out.contains(&format!("attached to {IFACE} in tc")),
        "the veth did not get the tc program:\n{out}"
    );
    assert!(
        out.contains("attached to d0 in generic"),
        "the bridge did not get XDP:\n{out}"
    );
    let vip = topo.vip(false, TCP_PORT);
    let tally = topo
        .client
        .run(|| scenario::tcp_answers(vip, REQUESTS))
        .expect("entering the client namespace");
    let report = format!("TCP to {vip}: {}\n{out}", tally.report());
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(tally.total(), REQUESTS, "{report}");
    assert!(
        service_bytes(&lb, 1) > 0,
        "the service counted nothing: {report}"
    );
}

/// A client that reuses its source port (a proxy or NAT in front of the balancer
/// does): the second connection's SYN meets the first one's flow entry. While that
/// entry's backend is active the SYN keeps it; here the backend is drained in
/// between, so the SYN takes the entry over for the backend the current table picks:
/// the second connection must reach the other one, its SYN-ACK translated through
/// the entry the SYN rewrote, and carry data both ways.
#[test]
fn a_reused_client_port_reaches_the_current_backend_after_a_drain() {
    require_root();
    let topo = tc_topology(2, Forwarding::Nat);
    let svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[1, 1]);
    // From a file (runtime changes are saved there); `auto` puts tc on the veth.
    let file = ConfigFile::new(&render(&[IFACE], &[svc])).expect("config file");
    let lb = scenario::start_with_file(&topo, &file);
    assert!(
        lb.output().contains(&format!("attached to {IFACE} in tc")),
        "not attached in tc mode:\n{}",
        lb.output()
    );
    let vip = topo.vip(false, TCP_PORT);
    const PORT: u16 = 45123;
    let first = topo
        .client
        .run(|| {
            let mut c = LineClient::connect_from(vip, PORT)?;
            let who = c.ping()?;
            c.abort()?;
            Ok::<_, xdp_lb_tests::error::BedError>(who)
        })
        .expect("client namespace")
        .unwrap_or_else(|e| panic!("first connection from port {PORT}: {e}\n{}", lb.output()));
    let (drained, other) = match topo.backends.iter().position(|b| b.name == first) {
        Some(i) => (&topo.backends[i], &topo.backends[1 - i]),
        None => panic!("unexpected backend {first:?}"),
    };
    let admin = AdminCli::new(&lb);
    let name = admin.status()["services"][0]["name"]
        .as_str()
        .expect("service name in status")
        .to_string();
    let addr = std::net::SocketAddr::new(drained.v4().into(), TCP_PORT).to_string();
    admin.ok(&["backend", "drain", &name, &addr]);
    let data = scenario::test_data(64 * 1024);
    let want = hex(&Sha256::digest(&data));
    let (greeting, got) = topo
        .client
        .run(|| {
            let mut c = LineClient::connect_from(vip, PORT)?;
            let digest = c.sha(&data)?;
            let who = c.greeting().to_string();
            c.abort()?;
            Ok::<_, xdp_lb_tests::error::BedError>((who, digest))
        })
        .expect("client namespace")
        .unwrap_or_else(|e| panic!("second connection from port {PORT}: {e}\n{}", lb.output()));
    assert_eq!(
        greeting, other.name,
        "the reused port went to {greeting}, not to the one active backend"
    );
    assert_eq!(got, want, "{greeting} received different bytes than sent");
}
