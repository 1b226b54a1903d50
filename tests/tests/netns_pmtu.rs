//! Path-MTU discovery through the balancer. The client sits behind a router whose
//! link towards it has MTU 1280 while the client's own interface has 1500, so the
//! client announces a full-size MSS and the backend's full-size segments reach the
//! router, which answers each with fragmentation-needed / packet-too-big addressed to
//! the VIP. Only if the balancer hands that error to the flow's backend (translated
//! in NAT mode) does the backend lower its path MTU; otherwise the download stalls
//! for good (the client's read times out). Each download is checked by SHA-256.
//!
//! Towards a backend: the bridge's port to the backend has MTU 1280 (the backend's
//! own interface keeps 1500, so it announces a full-size MSS) and the balancer's
//! route to it says so (`mtu lock`). A full-size upload segment from the client is too big for
//! that link: the bridge would drop it silently, so the upload completes only if
//! the balancer answers the client with fragmentation-needed / packet-too-big from
//! the VIP and the client lowers its path MTU. Checked by the backend's SHA-256 of
//! what it received and by the balancer's counter of errors it sent.
//!
//! Each runs with the XDP program (`--attach xdp`, TX checksum offload off where
//! traffic starts, an XDP_PASS program on the bridge's port to the balancer) and
//! with the tc program (`--attach tc`, offloads at their defaults: the client's TSO
//! skbs reach the balancer whole, so its too-big answer is for a GSO packet whose
//! segments do not fit).
use sha2::{Digest, Sha256};
use xdp_lb_common::reason;
use xdp_lb_tests::{
    client::LineClient,
    lb::XdpLbProcess,
    lbconfig::ServiceSpec,
    pins, require_root, scenario,
    servers::hex,
    topology::{Topology, IFACE, TCP_PORT},
    Forwarding, TopologyBuilder,
};

/// The program `xdp-lb run` attaches (`--attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    Xdp,
    Tc,
}

impl Attach {
    fn name(self) -> &'static str {
        match self {
            Attach::Xdp => "xdp",
            Attach::Tc => "tc",
        }
    }

    /// What each program needs around it: XDP_TX out of a veth needs a program on
    /// the peer, and XDP loses partial checksums (TOOLCHAIN.md); tc needs neither.
    fn topology(self, b: TopologyBuilder) -> TopologyBuilder {
        match self {
            Attach::Xdp => b.xdp_pass(true),
            Attach::Tc => b.default_offloads(),
        }
    }

    /// `xdp-lb run` for `svc` with this program; checks it attached as asked.
    fn start(self, topo: &Topology, svc: &ServiceSpec) -> XdpLbProcess {
        let mut args = svc.run_args(IFACE);
        args.extend(["--attach".to_string(), self.name().to_string()]);
        let lb = topo
            .start_lb(&args)
            .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"));
        if self == Attach::Tc {
            assert!(
                lb.output().contains(&format!("attached to {IFACE} in tc")),
                "not attached in tc mode:\n{}",
                lb.output()
            );
        }
        lb
    }
}

/// Large enough that many full-size segments must cross the router.
const LEN: usize = 4 << 20;
/// The router's MTU towards the client.
const MTU: u32 = 1280;

fn download_through_a_smaller_mtu(attach: Attach, mode: Forwarding, v6: bool) {
    require_root();
    let topo = attach
        .topology(TopologyBuilder::new(2, mode).client_behind_router(MTU))
        .build()
        .unwrap_or_else(|e| panic!("building the routed {mode:?} topology: {e}"));
    let svc = scenario::service(&topo, v6, TCP_PORT, "tcp", &[1, 1]);
    let lb = attach.start(&topo, &svc);
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
                "{attach:?} {mode:?} v6={v6}: download through the {MTU}-byte link failed: {e}\n{}",
                lb.output()
            )
        });
    let want = hex(&Sha256::digest(scenario::test_data(LEN)));
    assert_eq!(
        hex(&Sha256::digest(&got)),
        want,
        "{attach:?} {mode:?} v6={v6}: other bytes from {backend}"
    );
    let translated = pins::reason_count(topo.lb.name(), reason::ICMP_TO_BACKEND);
    assert!(
        translated > 0,
        "the download completed without an ICMP error reaching {backend}: the path never needed PMTU discovery"
    );
    eprintln!(
        "{attach:?} {mode:?} v6={v6}: {LEN} bytes from {backend} through a {MTU}-byte hop intact; {translated} ICMP errors sent on to backends"
    );
}

#[test]
fn nat_ipv4_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Attach::Xdp, Forwarding::Nat, false);
}

#[test]
fn nat_ipv6_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Attach::Xdp, Forwarding::Nat, true);
}

#[test]
fn dsr_ipv4_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Attach::Xdp, Forwarding::Dsr, false);
}

#[test]
fn dsr_ipv6_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Attach::Xdp, Forwarding::Dsr, true);
}

/// Large enough for hundreds of full-size segments.
const UPLOAD: usize = 1 << 20;

fn upload_through_a_smaller_backend_link(attach: Attach, mode: Forwarding, v6: bool) {
    require_root();
    let topo = attach
        .topology(TopologyBuilder::new(1, mode))
        .build()
        .unwrap_or_else(|e| panic!("building the {mode:?} topology: {e}"));
    let b = topo.backend(1);
    let mtu = MTU.to_string();
    topo.bridge
        .ip(&["link", "set", &format!("vs{}", b.index), "mtu", &mtu])
        .expect("bridge port MTU");
    let (fam, host) = if v6 {
        ("-6", format!("{}/128", b.v6()))
    } else {
        ("-4", format!("{}/32", b.v4()))
    };
    // Locked: for forwarded packets the kernel (and so bpf_fib_lookup) honours a
    // route's MTU only then; otherwise it goes by the device.
    topo.lb
        .ip(&[
            fam, "route", "add", &host, "dev", IFACE, "mtu", "lock", &mtu,
        ])
        .expect("the balancer's route to the backend");
    let svc = scenario::service(&topo, v6, TCP_PORT, "tcp", &[1]);
    let lb = attach.start(&topo, &svc);
    let vip = topo.vip(v6, TCP_PORT);
    let data = scenario::test_data(UPLOAD);
    let want = hex(&Sha256::digest(&data));
    let got = topo
        .client
        .run(move || -> xdp_lb_tests::Result<String> {
            let mut c = LineClient::connect(vip)?;
            c.sha(&data)
        })
        .expect("client namespace")
        .unwrap_or_else(|e| {
            let counters: Vec<String> = [
                ("icmp_too_big_sent", reason::ICMP_TOO_BIG_SENT),
                ("pass_too_big_no_df", reason::PASS_TOO_BIG_NO_DF),
                ("tx", reason::TX),
                ("pass_fib_failed", reason::PASS_FIB_FAILED),
            ]
            .iter()
            .map(|(n, r)| format!("{n}={}", pins::reason_count(topo.lb.name(), *r)))
            .collect();
            panic!(
                "{attach:?} {mode:?} v6={v6}: upload through the {MTU}-byte backend link failed: {e}; balancer counters: {}\n{}",
                counters.join(" "),
                lb.output()
            )
        });
    assert_eq!(
        got, want,
        "{attach:?} {mode:?} v6={v6}: the backend received other bytes"
    );
    let sent = pins::reason_count(topo.lb.name(), reason::ICMP_TOO_BIG_SENT);
    assert!(
        sent > 0,
        "the upload completed without a too-big answer: the client never sent a segment over {MTU} bytes"
    );
    eprintln!(
        "{attach:?} {mode:?} v6={v6}: {UPLOAD} bytes uploaded through a {MTU}-byte backend link intact; {sent} too-big errors sent to the client"
    );
}

#[test]
fn nat_ipv4_upload_through_a_smaller_backend_link_completes() {
    upload_through_a_smaller_backend_link(Attach::Xdp, Forwarding::Nat, false);
}

#[test]
fn nat_ipv6_upload_through_a_smaller_backend_link_completes() {
    upload_through_a_smaller_backend_link(Attach::Xdp, Forwarding::Nat, true);
}

#[test]
fn dsr_ipv4_upload_through_a_smaller_backend_link_completes() {
    upload_through_a_smaller_backend_link(Attach::Xdp, Forwarding::Dsr, false);
}

#[test]
fn dsr_ipv6_upload_through_a_smaller_backend_link_completes() {
    upload_through_a_smaller_backend_link(Attach::Xdp, Forwarding::Dsr, true);
}

#[test]
fn tc_nat_ipv4_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Attach::Tc, Forwarding::Nat, false);
}

#[test]
fn tc_nat_ipv6_download_through_a_smaller_mtu_completes() {
    download_through_a_smaller_mtu(Attach::Tc, Forwarding::Nat, true);
}

#[test]
fn tc_nat_ipv4_upload_through_a_smaller_backend_link_completes() {
    upload_through_a_smaller_backend_link(Attach::Tc, Forwarding::Nat, false);
}

#[test]
fn tc_nat_ipv6_upload_through_a_smaller_backend_link_completes() {
    upload_through_a_smaller_backend_link(Attach::Tc, Forwarding::Nat, true);
}

#[test]
fn tc_dsr_ipv4_upload_through_a_smaller_backend_link_completes() {
    upload_through_a_smaller_backend_link(Attach::Tc, Forwarding::Dsr, false);
}
