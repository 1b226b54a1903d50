//! Packet tests: the real XDP program, loaded into the kernel, run on crafted frames
//! through BPF_PROG_TEST_RUN. Each case states the input frame, the expected action
//! and the expected output frame; expected frames are built independently with
//! etherparse (full checksum computation), so a wrong incremental checksum update
//! shows as a byte mismatch. Map state (flows, counters) is checked afterwards.
//!
//! The FIB lookup needs routes and neighbours: each test runs on its own thread in a
//! fresh network namespace (unshare) with one veth and permanent neighbour entries,
//! so the MACs the program writes are known and no host state is involved.
use std::net::{IpAddr, Ipv4Addr};

use aya::{
    maps::{HashMap, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
};
use xdp_lb::dataplane::{AyaDataplane, Dataplane as _, PROGRAM};
use xdp_lb_common::{
    hash, FlowKey, FlowValue, BACKEND_DOWN, NO_BACKEND, PROTO_TCP, PROTO_UDP, SVC_FWD_DSR,
};
use xdp_lb_tests::pkt::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

#[test]
fn ipv4_tcp_and_udp_nat_rewrite_exactly() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0), svc_v4(PROTO_UDP, 0)]);
        for (proto, what) in [(PROTO_TCP, "tcp"), (PROTO_UDP, "udp")] {
            let input = v4(
                proto, CLIENT4, VIP4, 40000, 80, 64, CLIENT_MAC, LB_MAC, b"hello",
            );
            let b = dp_expect_backend(&input, RING);
            let expected = v4(
                proto,
                CLIENT4,
                BACKENDS4[b],
                40000,
                8080,
                63,
                LB_MAC,
                BACKEND_MACS[b],
                b"hello",
            );
            let (action, out) = run(&mut dp, &input);
            assert_eq!(action, XDP_TX, "{what}: action");
            assert_frame_eq(&out, &expected, what);
        }
        let g = dp.global_counters().unwrap();
        assert_eq!(count(&g, "tx"), 2);
        let s = dp.service_counters(0).unwrap();
        assert_eq!((s.packets, s.new_flows), (1, 1));
    });
}

#[test]
fn ipv4_udp_without_checksum_stays_without() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_UDP, 0)]);
        let mut input = v4(
            PROTO_UDP, CLIENT4, VIP4, 40001, 80, 64, CLIENT_MAC, LB_MAC, b"x",
        );
        zero_udp_checksum_v4(&mut input);
        let b = dp_expect_backend(&input, RING);
        let mut expected = v4(
            PROTO_UDP,
            CLIENT4,
            BACKENDS4[b],
            40001,
            8080,
            63,
            LB_MAC,
            BACKEND_MACS[b],
            b"x",
        );
        zero_udp_checksum_v4(&mut expected);
        let (action, out) = run(&mut dp, &input);
        assert_eq!(action, XDP_TX);
        assert_frame_eq(&out, &expected, "udp csum 0");
    });
}

#[test]
fn ipv6_tcp_and_udp_nat_rewrite_exactly() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v6(PROTO_TCP), svc_v6(PROTO_UDP)]);
        for (proto, what) in [(PROTO_TCP, "tcp6"), (PROTO_UDP, "udp6")] {
            let input = v6(
                proto, CLIENT6, VIP6, 41000, 80, 64, CLIENT_MAC, LB_MAC, b"hello6",
            );
            let b = dp_expect_backend(&input, RING);
            let expected = v6(
                proto,
                CLIENT6,
                BACKENDS6[b],
                41000,
                8080,
                63,
                LB_MAC,
                BACKEND_MACS[b],
                b"hello6",
            );
            let (action, out) = run(&mut dp, &input);
            assert_eq!(action, XDP_TX, "{what}: action");
            assert_frame_eq(&out, &expected, what);
        }
    });
}

#[test]
fn dsr_changes_only_the_macs() {
    with_bed(|bed| {
        let mut dp = bed.load(&[
            svc_v4(PROTO_TCP, SVC_FWD_DSR),
            svc_v6(PROTO_TCP).with_flags(SVC_FWD_DSR),
        ]);
        let input = v4(
            PROTO_TCP, CLIENT4, VIP4, 40002, 80, 64, CLIENT_MAC, LB_MAC, b"dsr",
        );
        let b = dp_expect_backend(&input, RING);
        let mut expected = input.clone();
        expected[0..6].copy_from_slice(&BACKEND_MACS[b]);
        expected[6..12].copy_from_slice(&LB_MAC);
        let (action, out) = run(&mut dp, &input);
        assert_eq!(action, XDP_TX);
        assert_frame_eq(&out, &expected, "dsr v4");

        let input = v6(
            PROTO_TCP, CLIENT6, VIP6, 40002, 80, 64, CLIENT_MAC, LB_MAC, b"dsr6",
        );
        let b = dp_expect_backend(&input, RING);
        let mut expected = input.clone();
        expected[0..6].copy_from_slice(&BACKEND_MACS[b]);
        expected[6..12].copy_from_slice(&LB_MAC);
        let (action, out) = run(&mut dp, &input);
        assert_eq!(action, XDP_TX);
        assert_frame_eq(&out, &expected, "dsr v6");
    });
}

#[test]
fn nat_replies_are_translated_back_to_the_vip() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0), svc_v6(PROTO_TCP)]);
        let families: [(IpAddr, IpAddr, [IpAddr; 3]); 2] = [
            (CLIENT4.into(), VIP4.into(), BACKENDS4.map(IpAddr::from)),
            (CLIENT6.into(), VIP6.into(), BACKENDS6.map(IpAddr::from)),
        ];
        for (client, vip, backends) in families {
            // The request pins the flow; the backend's reply to it is translated.
            let req = tcp_ack(client, vip, 40003, 80, 64, CLIENT_MAC, LB_MAC, b"req");
            let (action, out) = run(&mut dp, &req);
            assert_eq!(action, XDP_TX);
            let b = backend_of(&out);
            let reply = tcp_ack(
                backends[b],
                client,
                8080,
                40003,
                64,
                BACKEND_MACS[b],
                LB_MAC,
                b"resp",
            );
            let expected = tcp_ack(vip, client, 80, 40003, 63, LB_MAC, CLIENT_MAC, b"resp");
            let (action, out) = run(&mut dp, &reply);
            assert_eq!(action, XDP_TX, "reply from {}", backends[b]);
            assert_frame_eq(&out, &expected, &format!("reply from {}", backends[b]));
        }
        assert_eq!(count(&dp.global_counters().unwrap(), "nat_reply"), 2);
        // A packet from a backend's address but another port is not a reply.
        let stray = v4(
            PROTO_TCP,
            BACKENDS4[0],
            CLIENT4,
            8081,
            40003,
            64,
            BACKEND_MACS[0],
            LB_MAC,
            b"x",
        );
        let (action, out) = run(&mut dp, &stray);
        assert_eq!(action, XDP_PASS);
        assert_eq!(out, stray);
    });
}

#[test]
fn backend_traffic_outside_balanced_flows_is_not_translated() {
    with_bed(|bed| {
        // A flow through one balancer instance, then a fresh instance with an empty
        // flow table: the reply is not one of its flows, and neither is the answer
        // of a backend to a client that connected to it directly.
        let mut before = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let req = v4(
            PROTO_TCP, CLIENT4, VIP4, 40030, 80, 64, CLIENT_MAC, LB_MAC, b"req",
        );
        let b = dp_expect_backend(&req, RING);
        assert_eq!(run(&mut before, &req).0, XDP_TX);
        drop(before);
        let mut after = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        for cport in [40030, 50000] {
            let direct = tcp_ack(
                BACKENDS4[b].into(),
                CLIENT4.into(),
                8080,
                cport,
                64,
                BACKEND_MACS[b],
                LB_MAC,
                b"resp",
            );
            let (action, out) = run(&mut after, &direct);
            assert_eq!(action, XDP_PASS, "client port {cport}");
            assert_eq!(out, direct, "client port {cport}: frame changed");
        }
        assert_eq!(count(&after.global_counters().unwrap(), "nat_reply"), 0);
    });
}

#[test]
fn backends_shared_by_two_nat_services_reply_per_flow() {
    with_bed(|bed| {
        // Same backends (same address, port, protocol) behind VIP:80 and VIP:81.
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0), svc_v4(PROTO_TCP, 0).on_port(81)]);
        for (vport, cport) in [(80u16, 40040u16), (81, 40041)] {
            let req = v4(
                PROTO_TCP, CLIENT4, VIP4, cport, vport, 64, CLIENT_MAC, LB_MAC, b"req",
            );
            let (action, out) = run(&mut dp, &req);
            assert_eq!(action, XDP_TX);
            let b = backend_of(&out);
            let reply = tcp_ack(
                BACKENDS4[b].into(),
                CLIENT4.into(),
                8080,
                cport,
                64,
                BACKEND_MACS[b],
                LB_MAC,
                b"r",
            );
            let expected = tcp_ack(
                VIP4.into(),
                CLIENT4.into(),
                vport,
                cport,
                63,
                LB_MAC,
                CLIENT_MAC,
                b"r",
            );
            let (action, out) = run(&mut dp, &reply);
            assert_eq!(action, XDP_TX, "reply for port {vport}");
            assert_frame_eq(&out, &expected, &format!("reply for VIP port {vport}"));
        }
        // A shared endpoint's reply for a flow nobody knows is not guessed.
        let stray = tcp_ack(
            BACKENDS4[0].into(),
            CLIENT4.into(),
            8080,
            49998,
            64,
            BACKEND_MACS[0],
            LB_MAC,
            b"x",
        );
        let (action, out) = run(&mut dp, &stray);
        assert_eq!(action, XDP_PASS);
        assert_eq!(out, stray);
    });
}

#[test]
fn packets_not_for_a_service_pass_unchanged() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "other address",
                v4(
                    PROTO_TCP,
                    CLIENT4,
                    Ipv4Addr::new(198, 18, 100, 2),
                    40000,
                    80,
                    64,
                    CLIENT_MAC,
                    LB_MAC,
                    b"",
                ),
            ),
            (
                "other port",
                v4(
                    PROTO_TCP, CLIENT4, VIP4, 40000, 81, 64, CLIENT_MAC, LB_MAC, b"",
                ),
            ),
            (
                "other proto",
                v4(
                    PROTO_UDP, CLIENT4, VIP4, 40000, 80, 64, CLIENT_MAC, LB_MAC, b"",
                ),
            ),
            (
                "ipv6 not a vip",
                v6(
                    PROTO_TCP, CLIENT6, VIP6, 40000, 80, 64, CLIENT_MAC, LB_MAC, b"",
                ),
            ),
            ("icmp", icmp4_echo(CLIENT4, VIP4)),
            ("arp", arp_request()),
        ];
        for (what, input) in &cases {
            let (action, out) = run(&mut dp, input);
            assert_eq!(action, XDP_PASS, "{what}");
            assert_eq!(&out, input, "{what}: frame changed");
        }
        let g = dp.global_counters().unwrap();
        assert_eq!(count(&g, "pass_not_service"), 5);
        assert_eq!(count(&g, "pass_not_ip"), 1);
        assert_eq!(count(&g, "tx"), 0);
    });
}

#[test]
fn truncated_and_malformed_packets_pass_unchanged() {
    with_bed(|bed| {
        let mut dp = bed.load(&[
            svc_v4(PROTO_TCP, 0),
            svc_v6(PROTO_TCP),
            svc_v4(PROTO_UDP, 0),
        ]);
        let full4 = v4(
            PROTO_TCP, CLIENT4, VIP4, 40000, 80, 64, CLIENT_MAC, LB_MAC, b"",
        );
        let full6 = v6(
            PROTO_TCP, CLIENT6, VIP6, 40000, 80, 64, CLIENT_MAC, LB_MAC, b"",
        );
        let mut n = 0;
        // Every truncation of a VIP packet short of its full headers.
        for full in [&full4, &full6] {
            for len in 0..full.len() {
                let input = full[..len].to_vec();
                if input.len() < 14 {
                    continue; // the kernel refuses test frames shorter than an Ethernet header
                }
                let (action, out) = run(&mut dp, &input);
                assert_eq!(action, XDP_PASS, "truncated to {len}");
                assert_eq!(out, input, "truncated to {len}: frame changed");
                n += 1;
            }
        }
        let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
        let mut p = full4.clone();
        p[14] = 0x44; // IHL 4
        cases.push(("ihl 4", p, "pass_malformed"));
        let mut p = full4.clone();
        p[14] = 0x55; // version 5
        cases.push(("version 5", p, "pass_malformed"));
        let mut p = full4.clone();
        p[16..18].copy_from_slice(&200u16.to_be_bytes()); // tot_len beyond the frame
        cases.push(("tot_len too long", p, "pass_malformed"));
        let mut p = full4.clone();
        p[16..18].copy_from_slice(&30u16.to_be_bytes()); // tot_len shorter than IP+TCP
        cases.push(("tot_len too short", p, "pass_malformed"));
        cases.push(("ipv4 options", v4_with_options(), "pass_ip_options"));
        let mut p = full4.clone();
        p[20] = 0x20; // more fragments
        cases.push(("ipv4 first fragment", p, "pass_fragment"));
        let mut p = full4.clone();
        p[20..22].copy_from_slice(&(0x0010u16).to_be_bytes()); // offset 16*8
        cases.push(("ipv4 later fragment", p, "pass_fragment"));
        cases.push(("ipv6 fragment header", v6_fragment(), "pass_fragment"));
        let mut p = full6.clone();
        p[14] = 0x40; // version 4 in an IPv6 ethertype frame
        cases.push(("ipv6 bad version", p, "pass_malformed"));
        let mut p = full6.clone();
        p[18..20].copy_from_slice(&1000u16.to_be_bytes()); // payload length beyond the frame
        cases.push(("ipv6 payload too long", p, "pass_malformed"));
        for (what, input, why) in &cases {
            let before = count(&dp.global_counters().unwrap(), why);
            let (action, out) = run(&mut dp, input);
            assert_eq!(action, XDP_PASS, "{what}");
            assert_eq!(&out, input, "{what}: frame changed");
            assert_eq!(
                count(&dp.global_counters().unwrap(), why),
                before + 1,
                "{what}: counted as {why}"
            );
        }
        assert!(n > 50, "only {n} truncations tried");
        let s = dp.service_counters(0).unwrap();
        assert_eq!(s.packets, 0, "no malformed packet may reach a backend");
    });
}

#[test]
fn vlan_tagged_packets_are_balanced_and_keep_their_tag() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let input = v4_vlan(CLIENT4, VIP4, 40010, 80, 64, CLIENT_MAC, LB_MAC, 7);
        let plain = v4(
            PROTO_TCP, CLIENT4, VIP4, 40010, 80, 64, CLIENT_MAC, LB_MAC, b"v",
        );
        let b = dp_expect_backend(&plain, RING);
        let expected = v4_vlan(
            CLIENT4,
            BACKENDS4[b],
            40010,
            8080,
            63,
            LB_MAC,
            BACKEND_MACS[b],
            7,
        );
        let (action, out) = run(&mut dp, &input);
        // The FIB answers for the interface the frame came in on; the tag is kept.
        assert_eq!(action, XDP_TX);
        assert_frame_eq(&out, &expected, "vlan");
        assert_eq!(dp.service_counters(0).unwrap().packets, 1);
    });
}

#[test]
fn flows_keep_their_backend_when_the_backend_set_changes() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        // Pin 40 flows.
        let flows: Vec<Vec<u8>> = (0..40)
            .map(|i| {
                v4(
                    PROTO_TCP,
                    CLIENT4,
                    VIP4,
                    42000 + i,
                    80,
                    64,
                    CLIENT_MAC,
                    LB_MAC,
                    b"",
                )
            })
            .collect();
        let first: Vec<usize> = flows
            .iter()
            .map(|f| backend_of(&run(&mut dp, f).1))
            .collect();
        // From now on the connections are established: ACKs, not SYNs.
        let flows: Vec<Vec<u8>> = (0..40)
            .map(|i| {
                tcp_ack(
                    CLIENT4.into(),
                    VIP4.into(),
                    42000 + i,
                    80,
                    64,
                    CLIENT_MAC,
                    LB_MAC,
                    b"",
                )
            })
            .collect();
        // New table: every slot now points at backend 2, backend 1 goes down.
        bed.publish_ring(&mut dp, 0, &[2; 13], 1);
        bed.set_backend_state(&mut dp, 1, BACKEND_DOWN);
        for (i, f) in flows.iter().enumerate() {
            let (action, out) = run(&mut dp, f);
            assert_eq!(action, XDP_TX);
            let now = backend_of(&out);
            if first[i] == 1 {
                assert_eq!(now, 2, "flow {i} on a down backend must be re-dispatched");
            } else {
                assert_eq!(
                    now, first[i],
                    "flow {i} moved from backend {} to {now}",
                    first[i]
                );
            }
        }
        assert!(
            first.contains(&0) && first.contains(&1),
            "test needs flows on backends 0 and 1: {first:?}"
        );
        // A new flow follows the new table.
        let fresh = v4(
            PROTO_TCP, CLIENT4, VIP4, 43000, 80, 64, CLIENT_MAC, LB_MAC, b"",
        );
        assert_eq!(backend_of(&run(&mut dp, &fresh).1), 2);
        // The flow table holds what we expect.
        let flows_map: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(dp.ebpf_mut().map("FLOWS").unwrap()).unwrap();
        assert_eq!(flows_map.keys().count(), 41);
    });
}

#[test]
fn a_syn_is_dispatched_by_the_current_table_even_if_a_flow_exists() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let syn = v4(
            PROTO_TCP, CLIENT4, VIP4, 45000, 80, 64, CLIENT_MAC, LB_MAC, b"",
        );
        let first = backend_of(&run(&mut dp, &syn).1);
        let other = (first as u32 + 1) % 3;
        bed.publish_ring(&mut dp, 0, &[other; RING as usize], 1);
        let ack = tcp_ack(
            CLIENT4.into(),
            VIP4.into(),
            45000,
            80,
            64,
            CLIENT_MAC,
            LB_MAC,
            b"",
        );
        assert_eq!(
            backend_of(&run(&mut dp, &ack).1),
            first,
            "established flow must stay"
        );
        // A new SYN on the same 5-tuple (port reuse) starts a new connection.
        assert_eq!(backend_of(&run(&mut dp, &syn).1), other as usize);
        assert_eq!(
            backend_of(&run(&mut dp, &ack).1),
            other as usize,
            "the new connection is pinned"
        );
        assert_eq!(dp.service_counters(0).unwrap().new_flows, 2);
    });
}

#[test]
fn a_backend_behind_another_interface_is_reached_by_redirect() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        bed.publish_ring(&mut dp, 0, &[0; RING as usize], 1);
        let port2 = bed.route_backend_via_second_port(0);
        let input = v4(
            PROTO_TCP, CLIENT4, VIP4, 40050, 80, 64, CLIENT_MAC, LB_MAC, b"r",
        );
        // Not a port xdp-lb may send through: the kernel gets the packet.
        let (action, _) = run(&mut dp, &input);
        assert_eq!(action, XDP_PASS);
        assert_eq!(count(&dp.global_counters().unwrap(), "pass_no_tx_port"), 1);
        // Once it is (as every attached interface is), the frame is redirected there.
        dp.add_tx_port(port2).unwrap();
        let input = v4(
            PROTO_TCP, CLIENT4, VIP4, 40051, 80, 64, CLIENT_MAC, LB_MAC, b"r",
        );
        let (action, out) = run(&mut dp, &input);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out[0..6], BACKEND_MACS[0]);
        assert_eq!(count(&dp.global_counters().unwrap(), "redirect"), 1);
    });
}

#[test]
fn service_without_backends_drops_and_counts() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        bed.publish_ring(&mut dp, 0, &[NO_BACKEND; 13], 1);
        let input = v4(
            PROTO_TCP, CLIENT4, VIP4, 40020, 80, 64, CLIENT_MAC, LB_MAC, b"",
        );
        let (action, _) = run(&mut dp, &input);
        assert_eq!(action, XDP_DROP);
        assert_eq!(count(&dp.global_counters().unwrap(), "drop_no_backend"), 1);
    });
}

#[test]
fn same_flow_same_backend_on_two_balancers() {
    // Two independent loads of the program with the same configuration.
    with_bed(|bed| {
        let mut a = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let mut b = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        for i in 0..50u16 {
            let f = v4(
                PROTO_TCP,
                CLIENT4,
                VIP4,
                44000 + i,
                80,
                64,
                CLIENT_MAC,
                LB_MAC,
                b"",
            );
            assert_eq!(run(&mut a, &f).1, run(&mut b, &f).1);
        }
    });
}

/// Which of the bed's backends a NAT output frame goes to (by destination MAC).
fn backend_of(out: &[u8]) -> usize {
    BACKEND_MACS
        .iter()
        .position(|m| m[..] == out[0..6])
        .unwrap_or_else(|| panic!("unknown dst mac {:02x?}", &out[0..6]))
}

/// The backend index the bed's ring sends this frame to (the ring holds backend ids
/// 0,1,2 in the pattern of `bed::ring_pattern`).
fn dp_expect_backend(frame: &[u8], ring_size: u32) -> usize {
    let key = flow_key_of(frame);
    ring_pattern(ring_size)[(hash::flow_hash(&key) % ring_size) as usize] as usize
}

fn run(dp: &mut AyaDataplane, input: &[u8]) -> (u32, Vec<u8>) {
    let ifindex = xdp_lb::dataplane::ifindex(LB_IF).expect("bed interface");
    let prog: &mut Xdp = dp
        .ebpf_mut()
        .program_mut(PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    let mut out = vec![0u8; input.len() + 256];
    let ctx = xdp_md(ifindex, input.len());
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

fn count(g: &[(&'static str, u64)], name: &str) -> u64 {
    g.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}
