//! Path-MTU discovery through the balancer. The client sits behind a router whose
//! link towards it has MTU 1280 while the client's own interface has 1500, so the
//! client announces a full-size MSS and the backend's full-size segments reach the
//! router, which answers each with fragmentation-needed / packet-too-big addressed to
//! the VIP. Only if the balancer hands that error to the flow's backend (translated
//! in NAT mode) does the backend lower its path MTU; otherwise the download stalls
//! for good (the client's read times out). Each download is checked by SHA-256.
use sha2::{Digest, Sha256};
use xdp_lb_common::reason;
use xdp_lb_tests::{
    client::LineClient, pins, require_root, scenario, servers::hex, topology::TCP_PORT, Forwarding,
    TopologyBuilder,
};

/// Large enough that many full-size segments must cross the router.
const LEN: usize = 4 << 20;
/// The router's MTU towards the client.
const MTU: u32 = 1280;

fn download_through_a_smaller_mtu(mode: Forwarding, v6: bool) {
    require_root();
    let topo = TopologyBuilder::new(2, mode)
        .xdp_pass(true)
        .client_behind_router(MTU)
        .build()
        .unwrap_or_else(|e| panic!("building the routed {mode:?} topology: {e}"));
    let svc = scenario::service(&topo, v6, TCP_PORT, "tcp", &[1, 1]);
    let lb = scenario::start_service(&topo, &svc);
    let vip = topo.vip(v6, TCP_PORT);
    let (backend, got) = topo
        .client
        .run(move || -> xdp_lb_tests::Result<(String, Vec<u8>)> {
            let mut c = LineClient::connect(vip)?;
            let backend = c.greeting().to_string();
            Ok((backend, c.download(LEN)?))
        })
        .expect("client namespace")
        .unwrap_or_else(|e| {
            panic!(
                "{mode:?} v6={v6}: download through the {MTU}-byte link failed: {e}\n{}",
                lb.output()
            )
        });
    let want = hex(&Sha256::digest(scenario::test_data(LEN)));
    assert_eq!(
        hex(&Sha256::digest(&got)),
        want,
        "{mode:?} v6={v6}: other bytes from {backend}"
    );
    let translated = pins::reason_count(topo.lb.name(), reason::ICMP_TO_BACKEND);
    assert!(
        translated > 0,
        "the download completed without an ICMP error reaching {backend}: the path never needed PMTU discovery"
    );
    eprintln!(
        "{mode:?} v6={v6}: {LEN} bytes from {backend} through a {MTU}-byte hop intact; {translated} ICMP errors sent on to backends"
    );
}

#[test]
fn nat_ipv4_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Forwarding::Nat, false);
}

#[test]
fn nat_ipv6_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Forwarding::Nat, true);
}

#[test]
fn dsr_ipv4_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Forwarding::Dsr, false);
}

#[test]
fn dsr_ipv6_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Forwarding::Dsr, true);
}
