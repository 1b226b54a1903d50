//! Packet tests: the real XDP program, loaded into the kernel, run on crafted frames
//! through BPF_PROG_TEST_RUN; where the behaviour must be the same, the tc program
//! too (`Prog`). Each case states the input frame, the expected action
//! and the expected output frame; expected frames are built independently with
//! etherparse (full checksum computation), so a wrong incremental checksum update
//! shows as a byte mismatch. Map state (flows, counters) is checked afterwards.
//!
//! The FIB lookup needs routes and neighbours: each test runs on its own thread in a
//! fresh network namespace (unshare) with one veth and permanent neighbour entries,
//! so the MACs the program writes are known and no host state is involved.
use std::net::{IpAddr, Ipv4Addr};

use xdp_lb::dataplane::{AyaDataplane, Dataplane as _, PROGRAM};
use xdp_lb_common::{
    hash, BACKEND_DOWN, BACKEND_DRAINING, NO_BACKEND, PROTO_TCP, PROTO_UDP, SVC_FWD_DSR,
    SVC_SCHED_LC, SVC_SCHED_P2C, SVC_SCHED_RR, TC_PORT_SLOTS,
};
use xdp_lb_tests::pkt::*;

#[test]
fn ipv4_tcp_and_udp_nat_rewrite_exactly() {
    for prog in BOTH {
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
                let (action, out) = prog.run(&mut dp, &input);
                assert_eq!(action, prog.act(XDP_TX), "{what}: action");
                assert_frame_eq(&out, &expected, what);
            }
            let g = dp.global_counters().unwrap();
            assert_eq!(count(&g, "tx"), 2);
            let s = dp.service_counters(0).unwrap();
            assert_eq!((s.packets, s.new_flows), (1, 1));
        });
    }
}

/// A service on the backends' own port (VIP:8080 -> backend:8080): only addresses
/// change, both ways (tc then makes no checksum call for the port), and every
/// checksum is still exact.
#[test]
fn nat_to_the_backends_own_port_rewrites_exactly() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[
                svc_v4(PROTO_TCP, 0).on_port(BACKEND_PORT),
                svc_v4(PROTO_UDP, 0).on_port(BACKEND_PORT),
                svc_v6(PROTO_TCP).on_port(BACKEND_PORT),
                svc_v6(PROTO_UDP).on_port(BACKEND_PORT),
            ]);
            let families: [(IpAddr, IpAddr, [IpAddr; 3]); 2] = [
                (CLIENT4.into(), VIP4.into(), BACKENDS4.map(IpAddr::from)),
                (CLIENT6.into(), VIP6.into(), BACKENDS6.map(IpAddr::from)),
            ];
            let p = BACKEND_PORT;
            for (client, vip, backends) in families {
                for proto in [PROTO_TCP, PROTO_UDP] {
                    let what = format!("{vip} proto {proto}");
                    let input = l4_packet(
                        proto, client, vip, 42000, p, 64, CLIENT_MAC, LB_MAC, b"same",
                    );
                    let (action, out) = prog.run(&mut dp, &input);
                    assert_eq!(action, prog.act(XDP_TX), "{what}: request");
                    let i = backend_of(&out);
                    let expected = l4_packet(
                        proto,
                        client,
                        backends[i],
                        42000,
                        p,
                        63,
                        LB_MAC,
                        BACKEND_MACS[i],
                        b"same",
                    );
                    assert_frame_eq(&out, &expected, &what);
                    let reply = l4_packet(
                        proto,
                        backends[i],
                        client,
                        p,
                        42000,
                        64,
                        BACKEND_MACS[i],
                        LB_MAC,
                        b"back",
                    );
                    let (action, out) = prog.run(&mut dp, &reply);
                    assert_eq!(action, prog.act(XDP_TX), "{what}: reply");
                    let expected = l4_packet(
                        proto, vip, client, p, 42000, 63, LB_MAC, CLIENT_MAC, b"back",
                    );
                    assert_frame_eq(&out, &expected, &format!("{what}: reply"));
                }
            }
        });
    }
}

#[test]
fn ipv4_udp_without_checksum_stays_without() {
    for prog in BOTH {
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
            let (action, out) = prog.run(&mut dp, &input);
            assert_eq!(action, prog.act(XDP_TX));
            assert_frame_eq(&out, &expected, "udp csum 0");
        });
    }
}

#[test]
fn ipv6_tcp_and_udp_nat_rewrite_exactly() {
    for prog in BOTH {
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
                let (action, out) = prog.run(&mut dp, &input);
                assert_eq!(action, prog.act(XDP_TX), "{what}: action");
                assert_frame_eq(&out, &expected, what);
            }
        });
    }
}

#[test]
fn dsr_changes_only_the_macs() {
    for prog in BOTH {
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
            let (action, out) = prog.run(&mut dp, &input);
            assert_eq!(action, prog.act(XDP_TX));
            assert_frame_eq(&out, &expected, "dsr v4");

            let input = v6(
                PROTO_TCP, CLIENT6, VIP6, 40002, 80, 64, CLIENT_MAC, LB_MAC, b"dsr6",
            );
            let b = dp_expect_backend(&input, RING);
            let mut expected = input.clone();
            expected[0..6].copy_from_slice(&BACKEND_MACS[b]);
            expected[6..12].copy_from_slice(&LB_MAC);
            let (action, out) = prog.run(&mut dp, &input);
            assert_eq!(action, prog.act(XDP_TX));
            assert_frame_eq(&out, &expected, "dsr v6");
        });
    }
}

#[test]
fn nat_replies_are_translated_back_to_the_vip() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0), svc_v6(PROTO_TCP)]);
            let families: [(IpAddr, IpAddr, [IpAddr; 3]); 2] = [
                (CLIENT4.into(), VIP4.into(), BACKENDS4.map(IpAddr::from)),
                (CLIENT6.into(), VIP6.into(), BACKENDS6.map(IpAddr::from)),
            ];
            for (client, vip, backends) in families {
                // The request pins the flow; the backend's reply to it is translated.
                let req = tcp_ack(client, vip, 40003, 80, 64, CLIENT_MAC, LB_MAC, b"req");
                let (action, out) = prog.run(&mut dp, &req);
                assert_eq!(action, prog.act(XDP_TX));
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
                let (action, out) = prog.run(&mut dp, &reply);
                assert_eq!(action, prog.act(XDP_TX), "reply from {}", backends[b]);
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
            let (action, out) = prog.run(&mut dp, &stray);
            assert_eq!(action, prog.act(XDP_PASS));
            assert_eq!(out, stray);
        });
    }
}

/// A NAT service's first datagram is embryonic in its slot (the service schedules by
/// hash), and its backend's answer, before any second datagram, is translated from
/// there.
#[test]
fn a_first_datagrams_answer_is_translated_from_its_slot() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[svc_v4(PROTO_UDP, 0)]);
            let query = v4(
                PROTO_UDP, CLIENT4, VIP4, 40004, 80, 64, CLIENT_MAC, LB_MAC, b"query",
            );
            let (action, out) = prog.run(&mut dp, &query);
            assert_eq!(action, prog.act(XDP_TX));
            let b = backend_of(&out);
            assert!(
                has_flow(&mut dp, "EMBRYO_SLOTS", &query) && !has_flow(&mut dp, "FLOWS", &query),
                "the first datagram's flow is not in its slot alone"
            );
            let answer = v4(
                PROTO_UDP,
                BACKENDS4[b],
                CLIENT4,
                8080,
                40004,
                64,
                BACKEND_MACS[b],
                LB_MAC,
                b"answer",
            );
            let expected = v4(
                PROTO_UDP, VIP4, CLIENT4, 80, 40004, 63, LB_MAC, CLIENT_MAC, b"answer",
            );
            let (action, out) = prog.run(&mut dp, &answer);
            assert_eq!(action, prog.act(XDP_TX), "answer from {}", BACKENDS4[b]);
            assert_frame_eq(&out, &expected, "answer to a first datagram");
            assert_eq!(count(&dp.global_counters().unwrap(), "nat_reply"), 1);
        });
    }
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
    for prog in BOTH {
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
                let (action, out) = prog.run(&mut dp, input);
                assert_eq!(action, prog.act(XDP_PASS), "{what}");
                assert_eq!(&out, input, "{what}: frame changed");
            }
            let g = dp.global_counters().unwrap();
            assert_eq!(count(&g, "pass_not_service"), 5);
            assert_eq!(count(&g, "pass_not_ip"), 1);
            assert_eq!(count(&g, "tx"), 0);
        });
    }
}

/// The program skips the SERVICES and BACKEND_REPLIES lookups for an address and
/// port whose ENDPOINT_FILTER bit is clear: the control plane's removals clear the
/// bits (a removed VIP and a removed NAT backend pass untouched), and its inserts set
/// them again before the keys land.
#[test]
fn removed_and_readded_services_and_backends_are_seen_by_the_filter() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let reply = tcp_ack(
            BACKENDS4[0].into(),
            CLIENT4.into(),
            BACKEND_PORT,
            40001,
            64,
            BACKEND_MACS[0],
            LB_MAC,
            b"",
        );
        let (action, _) = run(&mut dp, &syn4(40001));
        assert_eq!(action, XDP_TX, "SYN to the service");
        let (action, out) = run(&mut dp, &reply);
        assert_eq!(action, XDP_TX, "the backend's reply is translated");
        assert_eq!(out[0..6], CLIENT_MAC, "reply sent to the client");

        let snap = dp.snapshot().expect("snapshot");
        let removal = xdp_lb::plan::Plan {
            service_deletes: snap.services.iter().map(|(k, _, _)| *k).collect(),
            reply_deletes: snap.replies.iter().map(|(k, _)| *k).collect(),
            ..Default::default()
        };
        assert!(!removal.service_deletes.is_empty() && !removal.reply_deletes.is_empty());
        dp.apply(&removal).expect("remove the service");
        for (what, input) in [
            ("SYN to a removed VIP", syn4(40002)),
            ("old reply", reply.clone()),
        ] {
            let (action, out) = run(&mut dp, &input);
            assert_eq!(action, XDP_PASS, "{what}");
            assert_eq!(out, input, "{what}: frame changed");
        }

        let readd = xdp_lb::plan::Plan {
            service_writes: snap.services.iter().map(|(k, v, _)| (*k, *v)).collect(),
            reply_writes: snap.replies.clone(),
            ..Default::default()
        };
        dp.apply(&readd).expect("add the service back");
        let (action, out) = run(&mut dp, &syn4(40003));
        assert_eq!(action, XDP_TX, "SYN to the re-added service");
        assert_eq!(
            out[30..34],
            BACKENDS4[dp_expect_backend(&syn4(40003), RING)].octets()
        );
        let (action, out) = run(&mut dp, &reply);
        assert_eq!(action, XDP_TX, "reply after the re-add");
        assert_eq!(out[0..6], CLIENT_MAC, "reply sent to the client");
    });
}

/// An established flow's packet finds its service through the flow (FLOWS, the
/// backend's owner, SERVICES_BY_ID) rather than SERVICES, and still follows the
/// service record as SERVICES holds it: a NAT service switched to DSR forwards the
/// next packet with only its MACs changed, and a removed service's flow passes
/// untouched even though its backends keep their slots.
#[test]
fn established_flows_follow_their_services_current_record() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let (action, out) = run(&mut dp, &syn4(40010));
        assert_eq!(action, XDP_TX, "SYN");
        let b = backend_of(&out);
        for what in ["promoting ACK", "established ACK"] {
            let (action, out) = run(&mut dp, &ack4(40010, TCP_ACK));
            assert_eq!((action, backend_of(&out)), (XDP_TX, b), "{what}");
            assert_eq!(out[30..34], BACKENDS4[b].octets(), "{what}: NAT");
        }
        let s = dp.service_counters(0).unwrap();
        assert_eq!(
            (s.packets, s.new_flows),
            (3, 1),
            "every packet on the service"
        );

        let snap = dp.snapshot().expect("snapshot");
        let to_dsr = xdp_lb::plan::Plan {
            service_writes: snap
                .services
                .iter()
                .map(|(k, v, _)| {
                    let mut v = *v;
                    v.flags |= SVC_FWD_DSR;
                    (*k, v)
                })
                .collect(),
            ..Default::default()
        };
        dp.apply(&to_dsr).expect("switch the service to DSR");
        let input = ack4(40010, TCP_ACK);
        let mut expected = input.clone();
        expected[0..6].copy_from_slice(&BACKEND_MACS[b]);
        expected[6..12].copy_from_slice(&LB_MAC);
        let (action, out) = run(&mut dp, &input);
        assert_eq!(action, XDP_TX, "established ACK after the switch");
        assert_frame_eq(&out, &expected, "established ACK after the switch to DSR");

        let removal = xdp_lb::plan::Plan {
            service_deletes: snap.services.iter().map(|(k, _, _)| *k).collect(),
            ..Default::default()
        };
        dp.apply(&removal).expect("remove the service");
        let (action, out) = run(&mut dp, &input);
        assert_eq!(action, XDP_PASS, "established ACK of a removed service");
        assert_eq!(out, input, "frame changed");
        let s = dp.service_counters(0).unwrap();
        assert_eq!(s.packets, 4, "the removed service counted nothing more");
    });
}

#[test]
fn truncated_and_malformed_packets_pass_unchanged() {
    for prog in BOTH {
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
            for (full, ip_hdr) in [(&full4, 20), (&full6, 40)] {
                // The kernel refuses test frames shorter than an Ethernet header, and
                // skb test frames shorter than the IP header too.
                let shortest = match prog {
                    Prog::Xdp => 14,
                    Prog::Tc => 14 + ip_hdr,
                };
                for len in shortest..full.len() {
                    let input = full[..len].to_vec();
                    let (action, out) = prog.run(&mut dp, &input);
                    assert_eq!(action, prog.act(XDP_PASS), "truncated to {len}");
                    assert_eq!(out, input, "truncated to {len}: frame changed");
                    n += 1;
                }
            }
            let mut cases: Vec<Row> = Vec::new();
            let mut p = full4.clone();
            p[14] = 0x44; // IHL 4
            cases.push(("ihl 4", p, prog.act(XDP_PASS), "pass_malformed"));
            let mut p = full4.clone();
            p[14] = 0x55; // version 5
            cases.push(("version 5", p, prog.act(XDP_PASS), "pass_malformed"));
            let mut p = full4.clone();
            p[16..18].copy_from_slice(&200u16.to_be_bytes()); // tot_len beyond the frame
            cases.push(("tot_len too long", p, prog.act(XDP_PASS), "pass_malformed"));
            let mut p = full4.clone();
            p[16..18].copy_from_slice(&30u16.to_be_bytes()); // tot_len shorter than IP+TCP
            refresh_checksums(&mut p); // the length is the only fault
            cases.push(("tot_len too short", p, prog.act(XDP_PASS), "pass_malformed"));
            cases.push((
                "ipv4 options",
                v4_with_options(),
                prog.act(XDP_PASS),
                "pass_ip_options",
            ));
            let mut p = full4.clone();
            p[20] = 0x20; // more fragments
            cases.push((
                "ipv4 first fragment",
                p,
                prog.act(XDP_PASS),
                "pass_fragment",
            ));
            let mut p = full4.clone();
            p[20..22].copy_from_slice(&(0x0010u16).to_be_bytes()); // offset 16*8
            cases.push((
                "ipv4 later fragment",
                p,
                prog.act(XDP_PASS),
                "pass_fragment",
            ));
            cases.push((
                "ipv6 fragment header",
                v6_fragment(),
                prog.act(XDP_PASS),
                "pass_fragment",
            ));
            let mut p = full6.clone();
            p[14] = 0x40; // version 4 in an IPv6 ethertype frame
            cases.push(("ipv6 bad version", p, prog.act(XDP_PASS), "pass_malformed"));
            let mut p = full6.clone();
            p[18..20].copy_from_slice(&1000u16.to_be_bytes()); // payload length beyond the frame
            cases.push((
                "ipv6 payload too long",
                p,
                prog.act(XDP_PASS),
                "pass_malformed",
            ));
            run_rows(prog, &mut dp, &cases);
            assert!(n > 35, "only {n} truncations tried");
        });
    }
}

#[test]
fn vlan_tagged_packets_go_to_the_kernel_untouched() {
    with_bed(|bed| {
        // The program sends only untagged, on the interfaces it is attached to, and
        // cannot tell which VLAN an egress carries: tagged frames go to the kernel.
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let input = v4_vlan(CLIENT4, VIP4, 40010, 80, 64, CLIENT_MAC, LB_MAC, 7);
        let (action, out) = run(&mut dp, &input);
        assert_eq!(action, XDP_PASS);
        assert_eq!(out, input, "tagged frame changed");
        assert_eq!(count(&dp.global_counters().unwrap(), "pass_vlan"), 1);
        assert_eq!(dp.service_counters(0).unwrap().packets, 0);
        assert_eq!(
            flow_counts(&mut dp),
            (0, 0),
            "a tagged frame created a flow"
        );
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
        // The tables hold what we expect: flows whose ACK found their backend were
        // promoted to FLOWS; those re-dispatched from the down backend, and the
        // fresh SYN, are embryonic (one packet on their current backend so far).
        let on_down = first.iter().filter(|b| **b == 1).count();
        assert_eq!(flow_counts(&mut dp), (40 - on_down, on_down + 1));
    });
}

#[test]
fn a_syn_on_a_flows_5_tuple_keeps_its_active_backend_and_a_drained_one_is_left() {
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
        // A SYN on the same 5-tuple (a reused port, or one forged with a live
        // connection's addresses) stays on the entry's backend while that one is
        // active, though the table now names another: moving a live connection
        // would have the other backend reset it.
        let syns = count(&dp.global_counters().unwrap(), "syn");
        assert_eq!(backend_of(&run(&mut dp, &syn).1), first);
        assert_eq!(count(&dp.global_counters().unwrap(), "syn"), syns + 1);
        assert_eq!(count(&dp.global_counters().unwrap(), "flow_taken_over"), 0);
        assert!(has_flow(&mut dp, "FLOWS", &ack), "the entry left FLOWS");
        assert!(
            !has_flow(&mut dp, "EMBRYOS", &ack),
            "the SYN made the flow embryonic as well"
        );
        assert_eq!(backend_of(&run(&mut dp, &ack).1), first);
        assert_eq!(dp.service_counters(0).unwrap().new_flows, 2);

        // Its backend draining, the next SYN is dispatched by the current table and
        // takes the entry over in place: nothing embryonic, and its second packet
        // has nothing to promote.
        bed.set_backend_state(&mut dp, first as u32, BACKEND_DRAINING);
        assert_eq!(
            backend_of(&run(&mut dp, &ack).1),
            first,
            "a draining backend keeps its flows"
        );
        assert_eq!(backend_of(&run(&mut dp, &syn).1), other as usize);
        assert!(has_flow(&mut dp, "FLOWS", &ack), "the entry left FLOWS");
        assert!(
            !has_flow(&mut dp, "EMBRYOS", &ack),
            "the new connection is embryonic as well"
        );
        let promoted = count(&dp.global_counters().unwrap(), "flow_promoted");
        assert_eq!(
            backend_of(&run(&mut dp, &ack).1),
            other as usize,
            "the new connection is pinned"
        );
        assert_eq!(
            count(&dp.global_counters().unwrap(), "flow_promoted"),
            promoted
        );
        assert_eq!(count(&dp.global_counters().unwrap(), "flow_taken_over"), 1);
        assert_eq!(dp.service_counters(0).unwrap().new_flows, 3);
    });
}

#[test]
fn a_backend_behind_another_interface_is_reached_by_redirect() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
            bed.publish_ring(&mut dp, 0, &[0; RING as usize], 1);
            let port2 = bed.route_backend_via_second_port(0);
            let input = v4(
                PROTO_TCP, CLIENT4, VIP4, 40050, 80, 64, CLIENT_MAC, LB_MAC, b"r",
            );
            // Not a port xdp-lb may send through: the kernel gets the packet.
            let (action, _) = prog.run(&mut dp, &input);
            assert_eq!(action, prog.act(XDP_PASS));
            assert_eq!(count(&dp.global_counters().unwrap(), "pass_no_tx_port"), 1);
            // Once it is (as every attached interface is), the frame is redirected there.
            prog.add_port(&mut dp, LB_IF2, port2);
            let input = v4(
                PROTO_TCP, CLIENT4, VIP4, 40051, 80, 64, CLIENT_MAC, LB_MAC, b"r",
            );
            let (action, out) = prog.run(&mut dp, &input);
            assert_eq!(action, prog.act(XDP_REDIRECT));
            assert_eq!(out[0..6], BACKEND_MACS[0]);
            assert_eq!(count(&dp.global_counters().unwrap(), "redirect"), 1);
        });
    }
}

/// `tc_lb` sends only through interfaces `run` registered: those with an ifindex
/// below `TC_PORT_SLOTS` are read from that array, the others from the TC_PORTS hash.
/// A NAT reply goes out the interface its request came in on, here one of each
/// kind: passed to the kernel (and counted) until the interface is registered,
/// translated and redirected after.
#[test]
fn tc_sends_only_through_registered_interfaces_of_low_and_high_ifindex() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let lb = xdp_lb::dataplane::ifindex(LB_IF).expect("bed interface");
        dp.add_tc_port(LB_IF, lb).unwrap();
        let tc = Prog::Tc;
        for (iface, index, cport) in [
            ("in-low", 300, 40100),
            ("in-high", TC_PORT_SLOTS + 904, 40101),
        ] {
            let idx = index.to_string();
            let peer = format!("{iface}-p");
            sh(&[
                "ip", "link", "add", iface, "index", &idx, "type", "veth", "peer", "name", &peer,
            ]);
            sh(&["ip", "link", "set", iface, "up"]);
            let req = tcp_ack(
                CLIENT4.into(),
                VIP4.into(),
                cport,
                80,
                64,
                CLIENT_MAC,
                LB_MAC,
                b"req",
            );
            let r = dp.test_run_tc(&req, index).expect("BPF_PROG_TEST_RUN (tc)");
            assert_eq!(
                r.action,
                tc.act(XDP_TX),
                "{iface}: the request goes to a backend"
            );
            let b = backend_of(&r.frame);
            let reply = tcp_ack(
                BACKENDS4[b].into(),
                CLIENT4.into(),
                8080,
                cport,
                64,
                BACKEND_MACS[b],
                LB_MAC,
                b"resp",
            );
            let expected = tcp_ack(
                VIP4.into(),
                CLIENT4.into(),
                80,
                cport,
                63,
                LB_MAC,
                CLIENT_MAC,
                b"resp",
            );
            let refused = count(&dp.global_counters().unwrap(), "pass_no_tx_port");
            let r = dp.test_run_tc(&reply, lb).expect("BPF_PROG_TEST_RUN (tc)");
            // Translated already (the IP packet; the MACs are the kernel's to write):
            // the kernel routes it to the client instead.
            assert_eq!(r.action, tc.act(XDP_PASS), "{iface}: not registered yet");
            assert_frame_eq(&r.frame[12..], &expected[12..], iface);
            let g = dp.global_counters().unwrap();
            assert_eq!(count(&g, "pass_no_tx_port"), refused + 1, "{iface}");
            dp.add_tc_port(iface, index).unwrap();
            let r = dp.test_run_tc(&reply, lb).expect("BPF_PROG_TEST_RUN (tc)");
            assert_eq!(r.action, tc.act(XDP_REDIRECT), "{iface}: registered");
            assert_frame_eq(&r.frame, &expected, iface);
            let g = dp.global_counters().unwrap();
            assert_eq!(count(&g, "pass_no_tx_port"), refused + 1, "{iface}");
        }
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

/// The scheduler cursors are per CPU and BPF_PROG_TEST_RUN runs on the caller's CPU:
/// a test that follows one cursor keeps its thread on one CPU.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity(0) affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn syn4(sport: u16) -> Vec<u8> {
    v4(
        PROTO_TCP, CLIENT4, VIP4, sport, 80, 64, CLIENT_MAC, LB_MAC, b"",
    )
}

fn ack4(sport: u16, flags: u8) -> Vec<u8> {
    let f = tcp_ack(
        CLIENT4.into(),
        VIP4.into(),
        sport,
        80,
        64,
        CLIENT_MAC,
        LB_MAC,
        b"",
    );
    with_tcp_flags(f, flags)
}

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[test]
fn round_robin_walks_its_schedule_and_flows_stay_put() {
    with_bed(|bed| {
        pin_to_one_cpu();
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, SVC_SCHED_RR)]);
        // Smooth WRR of weights 3:2:1, as the control plane builds it.
        let schedule = [0u32, 1, 0, 2, 1, 0];
        bed.publish_ring(&mut dp, 0, &schedule, 1);
        let got: Vec<usize> = (0..12)
            .map(|i| {
                let (action, out) = run(&mut dp, &syn4(46000 + i));
                assert_eq!(action, XDP_TX);
                backend_of(&out)
            })
            .collect();
        let want: Vec<usize> = schedule
            .iter()
            .chain(&schedule)
            .map(|&b| b as usize)
            .collect();
        assert_eq!(got, want, "new flows follow the schedule in order");
        // Later packets of each flow stay on its backend and do not move the cursor.
        for (i, &b) in got.iter().enumerate() {
            let (_, out) = run(&mut dp, &ack4(46000 + i as u16, TCP_ACK));
            assert_eq!(backend_of(&out), b, "flow {i} moved");
        }
        assert_eq!(
            backend_of(&run(&mut dp, &syn4(46100)).1),
            schedule[0] as usize
        );
        // A new schedule (a backend left) takes over from the next new flow.
        bed.publish_ring(&mut dp, 0, &[1, 2], 0);
        let next: Vec<usize> = (0..4)
            .map(|i| backend_of(&run(&mut dp, &syn4(46200 + i)).1))
            .collect();
        assert!(next.iter().all(|&b| b != 0), "{next:?}");
        assert!(next.contains(&1) && next.contains(&2), "{next:?}");
    });
}

/// New flows (TCP or UDP) of a DSR service that schedules by hash live in
/// EMBRYO_SLOTS, one per slot, the latest flow of a slot overwriting the one before;
/// round-robin flows go to the EMBRYOS LRU. A flow that lost its slot is dispatched afresh by
/// its next packet, by the same hash to the same backend, and promoted by the packet
/// after.
#[test]
fn hash_flows_share_slots_and_the_rest_use_the_lru() {
    with_bed(|bed| {
        let mut dp = bed.load(&[
            svc_v4(PROTO_TCP, SVC_FWD_DSR),
            svc_v4(PROTO_TCP, SVC_FWD_DSR | SVC_SCHED_RR).on_port(82),
            svc_v4(PROTO_UDP, SVC_FWD_DSR),
            svc_v4(PROTO_UDP, SVC_FWD_DSR | SVC_SCHED_RR).on_port(83),
        ]);
        // bed.load's flow table is 4096 entries.
        let mask = xdp_lb_common::embryo_slots(4096) - 1;
        let slot_of = |port: u16| hash::flow_hash(&flow_key_of(&syn4(port))) & mask;
        let a = 40000u16;
        let b = (a + 1..a + 20000)
            .find(|&p| slot_of(p) == slot_of(a))
            .expect("a port sharing the slot");
        let want_a = dp_expect_backend(&syn4(a), RING);
        let want_b = dp_expect_backend(&syn4(b), RING);

        assert_eq!(backend_of(&run(&mut dp, &syn4(a)).1), want_a);
        assert!(
            has_flow(&mut dp, "EMBRYO_SLOTS", &syn4(a)),
            "a: not in its slot"
        );
        assert_eq!(flow_counts(&mut dp), (0, 1));
        // b takes the slot over: a's handshake entry is gone.
        assert_eq!(backend_of(&run(&mut dp, &syn4(b)).1), want_b);
        assert!(
            has_flow(&mut dp, "EMBRYO_SLOTS", &syn4(b)),
            "b: not in its slot"
        );
        assert!(
            !has_flow(&mut dp, "EMBRYOS", &syn4(a)),
            "a: still embryonic"
        );
        assert_eq!(flow_counts(&mut dp), (0, 1));
        // b's ACK promotes it and frees the slot.
        assert_eq!(backend_of(&run(&mut dp, &ack4(b, TCP_ACK)).1), want_b);
        assert_eq!(flow_counts(&mut dp), (1, 0));
        // a's ACK finds no entry: the same hash, the same backend, embryonic again;
        // its next packet promotes it.
        assert_eq!(backend_of(&run(&mut dp, &ack4(a, TCP_ACK)).1), want_a);
        assert!(
            has_flow(&mut dp, "EMBRYO_SLOTS", &syn4(a)),
            "a: not back in its slot"
        );
        assert_eq!(backend_of(&run(&mut dp, &ack4(a, TCP_ACK)).1), want_a);
        assert_eq!(flow_counts(&mut dp), (2, 0));
        let g = dp.global_counters().unwrap();
        assert_eq!(count(&g, "syn"), 2);
        assert_eq!(count(&g, "embryo_new"), 3);
        assert_eq!(count(&g, "flow_promoted"), 2);

        // Round-robin, TCP or UDP (another pick would be another backend): the LRU.
        for (proto, port) in [(PROTO_TCP, 82u16), (PROTO_UDP, 83)] {
            let first = v4(proto, CLIENT4, VIP4, a, port, 64, CLIENT_MAC, LB_MAC, b"");
            assert_eq!(run(&mut dp, &first).0, XDP_TX, "port {port}");
            assert!(
                has_flow(&mut dp, "EMBRYOS", &first) && !has_flow(&mut dp, "EMBRYO_SLOTS", &first),
                "proto {proto} port {port}: not in the LRU alone"
            );
        }
        assert_eq!(flow_counts(&mut dp), (2, 2));

        // Datagrams of a service that schedules by hash: the slots, as TCP flows. A
        // flow whose slot another took is dispatched afresh by its next datagram, to
        // the same backend, and promoted by the one after.
        let dgram = |port: u16| {
            v4(
                PROTO_UDP, CLIENT4, VIP4, port, 80, 64, CLIENT_MAC, LB_MAC, b"q",
            )
        };
        let udp_slot = |port: u16| hash::flow_hash(&flow_key_of(&dgram(port))) & mask;
        let u = 42000u16;
        let v = (u + 1..u + 20000)
            .find(|&p| udp_slot(p) == udp_slot(u))
            .expect("a UDP port sharing the slot");
        let (want_u, want_v) = (
            dp_expect_backend(&dgram(u), RING),
            dp_expect_backend(&dgram(v), RING),
        );
        assert_eq!(backend_of(&run(&mut dp, &dgram(u)).1), want_u);
        assert!(
            has_flow(&mut dp, "EMBRYO_SLOTS", &dgram(u)),
            "u: not in its slot"
        );
        assert!(
            !has_flow(&mut dp, "FLOWS", &dgram(u)),
            "u: established by one datagram"
        );
        assert_eq!(backend_of(&run(&mut dp, &dgram(v)).1), want_v);
        assert!(
            has_flow(&mut dp, "EMBRYO_SLOTS", &dgram(v)),
            "v: not in its slot"
        );
        assert!(
            !has_flow(&mut dp, "EMBRYOS", &dgram(u)),
            "u: still embryonic"
        );
        assert_eq!(flow_counts(&mut dp), (2, 3));
        // v's second datagram promotes it from the slot.
        assert_eq!(backend_of(&run(&mut dp, &dgram(v)).1), want_v);
        assert!(has_flow(&mut dp, "FLOWS", &dgram(v)), "v: not promoted");
        assert!(
            !has_flow(&mut dp, "EMBRYOS", &dgram(v)),
            "v: promoted and still embryonic"
        );
        // u's finds nothing: embryonic again, then promoted.
        assert_eq!(backend_of(&run(&mut dp, &dgram(u)).1), want_u);
        assert!(
            has_flow(&mut dp, "EMBRYO_SLOTS", &dgram(u)),
            "u: not back in its slot"
        );
        assert_eq!(backend_of(&run(&mut dp, &dgram(u)).1), want_u);
        assert!(has_flow(&mut dp, "FLOWS", &dgram(u)), "u: not promoted");
        assert_eq!(flow_counts(&mut dp), (4, 2));
        let g = dp.global_counters().unwrap();
        assert_eq!(count(&g, "embryo_new"), 3 + 2 + 3);
        assert_eq!(count(&g, "flow_promoted"), 2 + 2);
    });
}

/// SLOT_ENDPOINTS marks the endpoints whose services are all DSR and schedule by hash
/// (their packets that miss FLOWS skip EMBRYOS); a service that turns into another
/// kind clears its bit before its first handshake can be in EMBRYOS, and the bit stays
/// clear when it turns back, so a handshake it left there is still promoted.
#[test]
fn slot_endpoints_never_hide_a_handshake_in_the_lru() {
    with_bed(|bed| {
        let specs = [
            svc_v4(PROTO_TCP, SVC_FWD_DSR),
            svc_v4(PROTO_TCP, SVC_FWD_DSR | SVC_SCHED_RR).on_port(82),
            svc_v4(PROTO_TCP, 0).on_port(86),
        ];
        // The bed publishes its services after the load, each on a bit no service
        // had: the DSR maglev one is marked at once.
        let mut dp = bed.load(&specs);
        let marked = |dp: &AyaDataplane, s: &SvcSpec| {
            let k = s.key();
            dp.slot_endpoint(k.addr, k.port).expect("SLOT_ENDPOINTS")
        };
        assert!(marked(&dp, &specs[0]), "DSR maglev: not marked");
        assert!(!marked(&dp, &specs[1]), "DSR round-robin: marked");
        assert!(!marked(&dp, &specs[2]), "NAT maglev: marked");
        let syn = |port: u16| {
            v4(
                PROTO_TCP, CLIENT4, VIP4, port, 80, 64, CLIENT_MAC, LB_MAC, b"",
            )
        };
        let ack = |port: u16| ack4(port, TCP_ACK);
        let promoted = |dp: &AyaDataplane| count(&dp.global_counters().unwrap(), "flow_promoted");

        // Marked: a handshake lives in its slot and its ACK promotes it from there.
        let to = backend_of(&run(&mut dp, &syn(43000)).1);
        assert_eq!(backend_of(&run(&mut dp, &ack(43000)).1), to);
        assert_eq!(promoted(&dp), 1);

        // Round-robin now: the bit goes, and a handshake in EMBRYOS is found.
        bed.set_service_flags(&mut dp, 0, SVC_FWD_DSR | SVC_SCHED_RR);
        assert!(!marked(&dp, &specs[0]), "round-robin now: still marked");
        let to = backend_of(&run(&mut dp, &syn(43001)).1);
        assert!(
            has_flow(&mut dp, "EMBRYOS", &syn(43001))
                && !has_flow(&mut dp, "EMBRYO_SLOTS", &syn(43001))
        );
        assert_eq!(
            backend_of(&run(&mut dp, &ack(43001)).1),
            to,
            "round-robin ACK re-dispatched"
        );
        assert_eq!(promoted(&dp), 2);

        // Back to maglev with a round-robin handshake outstanding: the bit stays clear
        // (until a restart), so the ACK still finds it in EMBRYOS.
        let to = backend_of(&run(&mut dp, &syn(43002)).1);
        bed.set_service_flags(&mut dp, 0, SVC_FWD_DSR);
        assert!(
            !marked(&dp, &specs[0]),
            "marked again with a handshake in EMBRYOS"
        );
        assert_eq!(backend_of(&run(&mut dp, &ack(43002)).1), to);
        assert_eq!(
            promoted(&dp),
            3,
            "the round-robin handshake was not promoted"
        );
    });
}

/// A NAT flow's slot entry also translates its backend's SYN-ACK: a later flow of the
/// slot moves it to EMBRYOS while it is younger than the guard, and overwrites it
/// once it is older (the SYN-ACK then passes untranslated; the ACK still reaches the
/// same backend by the hash).
#[test]
fn a_young_nat_handshake_is_moved_out_of_its_slot_not_overwritten() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let mask = xdp_lb_common::embryo_slots(4096) - 1;
        let slot_of = |port: u16| hash::flow_hash(&flow_key_of(&syn4(port))) & mask;
        let a = 41000u16;
        let sharing: Vec<u16> = (a + 1..a + 24000)
            .filter(|&p| slot_of(p) == slot_of(a))
            .take(2)
            .collect();
        assert_eq!(sharing.len(), 2, "no ports sharing slot {}", slot_of(a));
        let (b, c) = (sharing[0], sharing[1]);
        let to = |port: u16| dp_expect_backend(&syn4(port), RING);
        let synack = |port: u16| {
            let be = to(port);
            tcp_ack(
                BACKENDS4[be].into(),
                CLIENT4.into(),
                8080,
                port,
                64,
                BACKEND_MACS[be],
                LB_MAC,
                b"synack",
            )
        };
        let translated = |port: u16| {
            tcp_ack(
                VIP4.into(),
                CLIENT4.into(),
                80,
                port,
                63,
                LB_MAC,
                CLIENT_MAC,
                b"synack",
            )
        };

        // A guard no test outlasts: b's SYN moves a's entry to EMBRYOS.
        dp.set_slot_guard(u32::MAX / 2).unwrap();
        assert_eq!(backend_of(&run(&mut dp, &syn4(a)).1), to(a));
        assert_eq!(backend_of(&run(&mut dp, &syn4(b)).1), to(b));
        assert!(
            has_flow(&mut dp, "EMBRYO_SLOTS", &syn4(b)),
            "b: not in its slot"
        );
        assert!(
            has_flow(&mut dp, "EMBRYOS", &syn4(a)) && !has_flow(&mut dp, "EMBRYO_SLOTS", &syn4(a)),
            "a: not moved to the LRU"
        );
        for p in [a, b] {
            let (action, out) = run(&mut dp, &synack(p));
            assert_eq!(action, XDP_TX, "port {p}: SYN-ACK not translated");
            assert_frame_eq(&out, &translated(p), "SYN-ACK of an embryonic NAT flow");
        }

        // No guard: c's SYN overwrites b's entry.
        dp.set_slot_guard(0).unwrap();
        assert_eq!(backend_of(&run(&mut dp, &syn4(c)).1), to(c));
        assert!(
            !has_flow(&mut dp, "EMBRYOS", &syn4(b)),
            "b: still embryonic"
        );
        assert_eq!(
            run(&mut dp, &synack(b)).0,
            XDP_PASS,
            "b's SYN-ACK translated"
        );

        // a is promoted from the LRU, c from its slot; b's ACK goes to b's backend
        // by the hash and is embryonic again.
        for p in [a, c, b] {
            assert_eq!(
                backend_of(&run(&mut dp, &ack4(p, TCP_ACK)).1),
                to(p),
                "port {p}"
            );
        }
        assert_eq!(flow_counts(&mut dp), (2, 1));
        assert!(
            has_flow(&mut dp, "EMBRYO_SLOTS", &syn4(b)),
            "b: not back in its slot"
        );
        let g = dp.global_counters().unwrap();
        assert_eq!(count(&g, "flow_promoted"), 2);
        assert_eq!(count(&g, "embryo_new"), 4);
        assert_eq!(count(&g, "nat_reply"), 2);
    });
}

/// The slot index of `frame`'s flow in the bed's EMBRYO_SLOTS (4096-entry flow table).
fn slot_index(frame: &[u8]) -> u32 {
    hash::flow_hash(&flow_key_of(frame)) & (xdp_lb_common::embryo_slots(4096) - 1)
}

/// A CPU writing a slot holds its lock (`EmbryoSlot::lock`, odd). A new flow of that
/// slot on another CPU meanwhile leaves the slot alone and is not stored: its next
/// packet is dispatched again by the same hash, to the same backend. Here the test
/// holds the lock, as a writing CPU would.
#[test]
fn a_slot_another_cpu_is_writing_is_left_alone() {
    with_bed(|bed| {
        let mut dp = bed.load(&[
            svc_v4(PROTO_TCP, SVC_FWD_DSR).on_port(81),
            svc_v4(PROTO_TCP, 0).on_port(86),
        ]);
        let to_port = |sport: u16, dport: u16| {
            v4(
                PROTO_TCP, CLIENT4, VIP4, sport, dport, 64, CLIENT_MAC, LB_MAC, b"",
            )
        };
        let ack_to = |sport: u16, dport: u16| with_tcp_flags(to_port(sport, dport), TCP_ACK);
        let dsr = 45000u16;
        let i = slot_index(&to_port(dsr, 81));
        let nat = (1000u16..60000)
            .find(|&p| slot_index(&to_port(p, 86)) == i)
            .expect("a NAT port sharing the slot");
        let want_dsr = dp_expect_backend(&to_port(dsr, 81), RING);
        let want_nat = dp_expect_backend(&to_port(nat, 86), RING);

        let mut s = dp.embryo_slot_at(i).unwrap();
        s.lock |= 1;
        dp.set_embryo_slot_at(i, &s).unwrap();

        // Forwarded to their backends, stored nowhere; a DSR flow's ACK goes to the
        // same backend by the hash, and is not stored either while the lock is held.
        assert_eq!(backend_of(&run(&mut dp, &to_port(nat, 86)).1), want_nat);
        assert_eq!(backend_of(&run(&mut dp, &to_port(dsr, 81)).1), want_dsr);
        assert_eq!(backend_of(&run(&mut dp, &ack_to(dsr, 81)).1), want_dsr);
        for f in [to_port(nat, 86), to_port(dsr, 81)] {
            assert!(!has_flow(&mut dp, "EMBRYOS", &f), "stored under the lock");
            assert!(!has_flow(&mut dp, "FLOWS", &f), "promoted under the lock");
        }
        assert_eq!(
            dp.embryo_slot_at(i).unwrap(),
            s,
            "the slot changed under its lock"
        );

        // The lock given back: the next packet writes the slot (taking and giving
        // back the lock), the one after promotes the flow and empties the slot (the
        // same again).
        s.lock += 1;
        dp.set_embryo_slot_at(i, &s).unwrap();
        assert_eq!(backend_of(&run(&mut dp, &ack_to(dsr, 81)).1), want_dsr);
        assert!(has_flow(&mut dp, "EMBRYO_SLOTS", &to_port(dsr, 81)));
        assert_eq!(dp.embryo_slot_at(i).unwrap().lock, s.lock + 2);
        assert_eq!(backend_of(&run(&mut dp, &ack_to(dsr, 81)).1), want_dsr);
        assert!(has_flow(&mut dp, "FLOWS", &to_port(dsr, 81)));
        assert!(!has_flow(&mut dp, "EMBRYO_SLOTS", &to_port(dsr, 81)));
        assert_eq!(dp.embryo_slot_at(i).unwrap().lock, s.lock + 4);
    });
}

#[test]
fn least_conn_takes_the_fewest_per_weight_and_counts_opens_and_closes() {
    with_bed(|bed| {
        pin_to_one_cpu();
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, SVC_SCHED_LC)]);
        bed.publish_ring(&mut dp, 0, &[0, 1, 2], 1);
        set_conns(&mut dp, 0, 5);
        set_conns(&mut dp, 2, 3);
        let (action, out) = run(&mut dp, &syn4(47000));
        assert_eq!(action, XDP_TX);
        assert_eq!(backend_of(&out), 1, "the idle backend");
        assert_eq!(conns(&mut dp, 1), 1, "a new flow adds one");
        // A retransmitted SYN replaces its own embryonic entry: still one.
        assert_eq!(backend_of(&run(&mut dp, &syn4(47000)).1), 1);
        assert_eq!(
            conns(&mut dp, 1),
            1,
            "a retransmitted SYN is not a second connection"
        );
        // The handshake's ACK promotes the flow; data flows; nothing changes.
        for _ in 0..3 {
            assert_eq!(backend_of(&run(&mut dp, &ack4(47000, TCP_ACK)).1), 1);
        }
        assert_eq!(conns(&mut dp, 1), 1);
        // The client's FIN closes it once; its retransmission and the last ACK
        // still reach the backend and take nothing more.
        for _ in 0..2 {
            assert_eq!(
                backend_of(&run(&mut dp, &ack4(47000, TCP_FIN | TCP_ACK)).1),
                1
            );
            assert_eq!(conns(&mut dp, 1), 0);
        }
        assert_eq!(backend_of(&run(&mut dp, &ack4(47000, TCP_ACK)).1), 1);
        assert_eq!(conns(&mut dp, 1), 0);

        // Relative to weight: backend 1 at weight 4 with 3 connections (0.75 each)
        // beats backends 0 and 2 at weight 1 with 2 each, and again at 4/4.
        bed.add_pool(&mut dp, 0, &[1, 4, 1]);
        set_conns(&mut dp, 0, 2);
        set_conns(&mut dp, 1, 3);
        set_conns(&mut dp, 2, 2);
        assert_eq!(backend_of(&run(&mut dp, &syn4(47001)).1), 1);
        assert_eq!(backend_of(&run(&mut dp, &syn4(47002)).1), 1);
        assert_eq!(conns(&mut dp, 1), 5);

        // A RST (here the backend's, translated on the NAT reply path) closes too.
        assert_eq!(backend_of(&run(&mut dp, &ack4(47001, TCP_ACK)).1), 1);
        let rst = with_tcp_flags(
            tcp_ack(
                BACKENDS4[1].into(),
                CLIENT4.into(),
                BACKEND_PORT,
                47001,
                64,
                BACKEND_MACS[1],
                LB_MAC,
                b"",
            ),
            TCP_RST | TCP_ACK,
        );
        let (action, out) = run(&mut dp, &rst);
        assert_eq!(action, XDP_TX, "the reply is translated");
        assert_eq!(out[0..6], CLIENT_MAC);
        assert_eq!(
            conns(&mut dp, 1),
            4,
            "the backend's RST took the count back"
        );

        // A down backend is skipped even while the table still names it.
        set_conns(&mut dp, 0, 0);
        bed.set_backend_state(&mut dp, 0, BACKEND_DOWN);
        for i in 0..4 {
            assert_ne!(backend_of(&run(&mut dp, &syn4(47100 + i)).1), 0);
        }

        // A SYN on the 5-tuple of a counted connection whose close was never seen
        // (a reused port, or a forged SYN): it stays on that connection's backend,
        // counted once.
        for b in 0..3 {
            set_conns(&mut dp, b, 0);
        }
        let first = backend_of(&run(&mut dp, &syn4(47200)).1);
        assert_eq!(backend_of(&run(&mut dp, &ack4(47200, TCP_ACK)).1), first);
        assert!(has_flow(&mut dp, "FLOWS", &ack4(47200, TCP_ACK)));
        assert_eq!(conns(&mut dp, first as u32), 1);
        let again = backend_of(&run(&mut dp, &syn4(47200)).1);
        assert_eq!(again, first, "the SYN moved a live connection");
        assert_eq!(
            (0..3).map(|b| conns(&mut dp, b)).sum::<i64>(),
            1,
            "one connection on the 5-tuple, counted once"
        );
        assert_eq!(conns(&mut dp, again as u32), 1);
        assert_eq!(backend_of(&run(&mut dp, &ack4(47200, TCP_ACK)).1), again);
        assert_eq!(backend_of(&run(&mut dp, &ack4(47200, TCP_RST)).1), again);
        assert_eq!(
            (0..3).map(|b| conns(&mut dp, b)).sum::<i64>(),
            0,
            "its RST took the count back"
        );
        // The port reused after that close: the next connection is counted again,
        // on the same backend, and its close gives the count back once more.
        assert_eq!(backend_of(&run(&mut dp, &syn4(47200)).1), first);
        assert_eq!(
            conns(&mut dp, first as u32),
            1,
            "the reopened flow is counted"
        );
        assert_eq!(
            backend_of(&run(&mut dp, &ack4(47200, TCP_FIN | TCP_ACK)).1),
            first
        );
        assert_eq!(
            (0..3).map(|b| conns(&mut dp, b)).sum::<i64>(),
            0,
            "its FIN took the count back"
        );
    });
}

#[test]
fn least_conn_ties_take_turns() {
    with_bed(|bed| {
        pin_to_one_cpu();
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, SVC_SCHED_LC)]);
        bed.publish_ring(&mut dp, 0, &[0, 1, 2], 1);
        // Short connections, each closed before the next opens: every backend is
        // always at zero, and the rotating scan start spreads them.
        let mut seen = [0; 3];
        for i in 0..30u16 {
            let b = backend_of(&run(&mut dp, &syn4(48000 + i)).1);
            run(&mut dp, &ack4(48000 + i, TCP_RST));
            seen[b] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
        assert_eq!((0..3).map(|b| conns(&mut dp, b)).sum::<i64>(), 0);
    });
}

#[test]
fn random_two_least_conn_takes_the_less_loaded_of_two_draws_drawn_by_weight() {
    with_bed(|bed| {
        pin_to_one_cpu();
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, SVC_SCHED_LC | SVC_SCHED_P2C)]);
        // Two table entries: both are drawn every time, so the less loaded one
        // relative to weight always wins, and its new flow is counted.
        bed.publish_ring(&mut dp, 0, &[0, 2], 1);
        set_conns(&mut dp, 0, 5);
        set_conns(&mut dp, 2, 3);
        for i in 0..20u16 {
            assert_eq!(backend_of(&run(&mut dp, &syn4(49000 + i)).1), 2, "SYN {i}");
            assert_eq!(conns(&mut dp, 2), 4, "a new flow adds one");
            run(&mut dp, &ack4(49000 + i, TCP_RST));
            assert_eq!(conns(&mut dp, 2), 3, "its RST takes it back");
        }
        // Three: the busiest loses to whichever other is drawn with it, and the
        // other two share the new flows.
        bed.publish_ring(&mut dp, 0, &[0, 1, 2], 0);
        set_conns(&mut dp, 0, 100);
        set_conns(&mut dp, 2, 0);
        let mut seen = [0; 3];
        for i in 0..60u16 {
            seen[backend_of(&run(&mut dp, &syn4(49100 + i)).1)] += 1;
            run(&mut dp, &ack4(49100 + i, TCP_RST));
        }
        assert_eq!(seen[0], 0, "the busiest backend got new flows: {seen:?}");
        assert!(
            seen[1] >= 10 && seen[2] >= 10,
            "the two idle backends did not share (each is drawn first half the time): {seen:?}"
        );
        // Draws follow the table, which repeats a backend in proportion to its
        // weight: at equal load (every flow closed at once, so every comparison is a
        // tie and the first draw wins), backend 0 at 8 of 10 entries takes about 80%.
        bed.publish_ring(&mut dp, 0, &[0, 0, 0, 0, 1, 0, 0, 0, 0, 2], 1);
        set_conns(&mut dp, 0, 0);
        let mut seen = [0; 3];
        for i in 0..100u16 {
            seen[backend_of(&run(&mut dp, &syn4(49200 + i)).1)] += 1;
            run(&mut dp, &ack4(49200 + i, TCP_RST));
        }
        assert!(
            seen[0] >= 60 && seen[1] > 0 && seen[2] > 0,
            "draws did not follow the table (expected about 80/10/10): {seen:?}"
        );
        assert_eq!((0..3).map(|b| conns(&mut dp, b)).sum::<i64>(), 0);
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
    let r = dp
        .test_run(PROGRAM, input, ifindex, 1)
        .expect("BPF_PROG_TEST_RUN");
    (r.action, r.frame)
}

/// Entries in FLOWS and in EMBRYOS.
fn flow_counts(dp: &mut AyaDataplane) -> (usize, usize) {
    let mut n = |name| dp.flow_table_len(name).expect("flow table walk");
    (n("FLOWS"), n("EMBRYOS"))
}

fn has_flow(dp: &mut AyaDataplane, table: &'static str, frame: &[u8]) -> bool {
    dp.has_flow(table, &flow_key_of(frame))
        .expect("flow table lookup")
}

fn count(g: &[(&'static str, u64)], name: &str) -> u64 {
    g.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// Input frame, expected action, the reason counter that must rise by one.
type Row = (&'static str, Vec<u8>, u32, &'static str);

/// Runs fixture rows: each gets its action, leaves its frame unchanged, counts its
/// reason once, and creates no flow and no service traffic.
fn run_rows(p: Prog, dp: &mut AyaDataplane, rows: &[Row]) {
    for (what, input, want, why) in rows {
        let before = count(&dp.global_counters().unwrap(), why);
        let (action, out) = p.run(dp, input);
        assert_eq!(action, *want, "{what}: action");
        assert_eq!(&out, input, "{what}: frame changed");
        assert_eq!(
            count(&dp.global_counters().unwrap(), why),
            before + 1,
            "{what}: not counted as {why}"
        );
        assert_eq!(flow_counts(dp), (0, 0), "{what}: created a flow");
    }
    for id in 0..3 {
        assert_eq!(
            dp.service_counters(id).unwrap().packets,
            0,
            "service {id} balanced an invalid packet"
        );
    }
}

#[test]
fn invalid_packets_to_a_service_are_dropped_and_create_no_flow() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[
                svc_v4(PROTO_TCP, 0),
                svc_v6(PROTO_TCP),
                svc_v4(PROTO_UDP, 0),
            ]);
            let syn4 = v4(
                PROTO_TCP, CLIENT4, VIP4, 46000, 80, 64, CLIENT_MAC, LB_MAC, b"",
            );
            let syn6 = v6(
                PROTO_TCP, CLIENT6, VIP6, 46000, 80, 64, CLIENT_MAC, LB_MAC, b"",
            );
            let udp4 = v4(
                PROTO_UDP, CLIENT4, VIP4, 46000, 80, 64, CLIENT_MAC, LB_MAC, b"query",
            );
            let mut rows: Vec<Row> = Vec::new();
            let mut p = syn4.clone();
            p[24] ^= 0x11;
            rows.push((
                "bad ipv4 header checksum",
                p,
                prog.act(XDP_PASS),
                "pass_bad_ip_csum",
            ));
            rows.push((
                "bad tcp checksum on a syn",
                with_bad_l4_checksum(syn4.clone()),
                prog.act(XDP_DROP),
                "drop_l4_csum",
            ));
            rows.push((
                "bad tcp checksum on an ipv6 syn",
                with_bad_l4_checksum(syn6.clone()),
                prog.act(XDP_DROP),
                "drop_l4_csum",
            ));
            rows.push((
                "bad udp checksum on a first datagram",
                with_bad_l4_checksum(udp4.clone()),
                prog.act(XDP_DROP),
                "drop_l4_csum",
            ));
            let ack = tcp_ack(
                CLIENT4.into(),
                VIP4.into(),
                46001,
                80,
                64,
                CLIENT_MAC,
                LB_MAC,
                b"data",
            );
            rows.push((
                "bad tcp checksum on an ack of an unknown flow",
                with_bad_l4_checksum(ack),
                prog.act(XDP_DROP),
                "drop_l4_csum",
            ));
            for (what, flags) in [
                ("syn+fin", 0x03u8),
                ("syn+rst", 0x06),
                ("syn+ack+fin", 0x13),
                ("no flags (null)", 0x00),
                ("fin only", 0x01),
                ("xmas (fin+psh+urg)", 0x29),
                ("all flags", 0xff),
            ] {
                rows.push((
                    what,
                    with_tcp_flags(syn4.clone(), flags),
                    prog.act(XDP_DROP),
                    "drop_tcp_flags",
                ));
            }
            for doff in 0..5u8 {
                let what = [
                    "data offset 0",
                    "data offset 1",
                    "data offset 2",
                    "data offset 3",
                    "data offset 4",
                ];
                rows.push((
                    what[doff as usize],
                    with_tcp_doff(syn4.clone(), doff),
                    prog.act(XDP_DROP),
                    "drop_tcp_doff",
                ));
            }
            rows.push((
                "data offset 15 beyond the packet",
                with_tcp_doff(syn4.clone(), 15),
                prog.act(XDP_DROP),
                "drop_tcp_truncated",
            ));
            rows.push((
                "ipv6 data offset 6 beyond the packet",
                with_tcp_doff(syn6.clone(), 6),
                prog.act(XDP_DROP),
                "drop_tcp_truncated",
            ));
            // 8 bytes of options present, the data offset claims 12.
            let mut p = v4_syn_with_options(46002, &[2, 4, 5, 0xb4, 1, 1, 4, 2]);
            p[14 + 20 + 12] = 8 << 4;
            refresh_checksums(&mut p);
            rows.push((
                "truncated options",
                p,
                prog.act(XDP_DROP),
                "drop_tcp_truncated",
            ));
            for (what, delta) in [("udp length too long", 4i32), ("udp length too short", -4)] {
                let mut p = udp4.clone();
                let l = (u16::from_be_bytes([p[38], p[39]]) as i32 + delta) as u16;
                p[38..40].copy_from_slice(&l.to_be_bytes());
                refresh_checksums(&mut p);
                rows.push((what, p, prog.act(XDP_DROP), "drop_udp_len"));
            }
            let mut p = syn6.clone();
            p[18..20].copy_from_slice(&21u16.to_be_bytes()); // one byte more than the frame has
            rows.push((
                "ipv6 payload length beyond the frame",
                p,
                prog.act(XDP_PASS),
                "pass_malformed",
            ));
            let mut p = syn6.clone();
            p.extend_from_slice(&[0; 8]); // payload length 20, frame 8 bytes longer
            rows.push((
                "ipv6 payload length short of the frame",
                p,
                prog.act(XDP_PASS),
                "pass_malformed",
            ));
            rows.push((
                "tagged frame (untagged egress)",
                v4_vlan(CLIENT4, VIP4, 46003, 80, 64, CLIENT_MAC, LB_MAC, 7),
                prog.act(XDP_PASS),
                "pass_vlan",
            ));
            run_rows(prog, &mut dp, &rows);
            assert_eq!(count(&dp.global_counters().unwrap(), "syn"), 0);
        });
    }
}

#[test]
fn valid_unusual_packets_are_balanced() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0), svc_v4(PROTO_UDP, 0)]);
            let cases: Vec<(&str, Vec<u8>)> = vec![
                (
                    "syn with mss, sack-permitted, timestamps, window scale",
                    v4_syn_with_options(
                        47000,
                        &[
                            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
                        ],
                    ),
                ),
                (
                    "syn with ece+cwr (ecn setup)",
                    with_tcp_flags(
                        v4(
                            PROTO_TCP, CLIENT4, VIP4, 47001, 80, 64, CLIENT_MAC, LB_MAC, b"",
                        ),
                        0xc2,
                    ),
                ),
                (
                    "rst without ack",
                    with_tcp_flags(
                        tcp_ack(
                            CLIENT4.into(),
                            VIP4.into(),
                            47002,
                            80,
                            64,
                            CLIENT_MAC,
                            LB_MAC,
                            b"",
                        ),
                        0x04,
                    ),
                ),
                (
                    "syn with an odd-length payload",
                    v4(
                        PROTO_TCP, CLIENT4, VIP4, 47003, 80, 64, CLIENT_MAC, LB_MAC, b"odd",
                    ),
                ),
                (
                    "udp with a 1400-byte payload",
                    v4(
                        PROTO_UDP,
                        CLIENT4,
                        VIP4,
                        47004,
                        80,
                        64,
                        CLIENT_MAC,
                        LB_MAC,
                        &[0xa5; 1400],
                    ),
                ),
            ];
            for (what, input) in &cases {
                let (action, out) = prog.run(&mut dp, input);
                assert_eq!(action, prog.act(XDP_TX), "{what}");
                assert!(has_flow(&mut dp, "EMBRYOS", input), "{what}: no flow");
                // Only the balancer's own rewrite: the port and address moved.
                assert_eq!(out.len(), input.len(), "{what}");
            }
            let g = dp.global_counters().unwrap();
            assert_eq!(count(&g, "tx"), cases.len() as u64);
            assert_eq!(count(&g, "embryo_new"), cases.len() as u64);
            assert_eq!(count(&g, "syn"), 3);
        });
    }
}

#[test]
fn a_flow_is_promoted_by_its_second_packet_and_nat_replies_work_throughout() {
    with_bed(|bed| {
        // Port 81 shares the backends, so both services keep per-flow reverse entries.
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0), svc_v4(PROTO_TCP, 0).on_port(81)]);
        let syn = v4(
            PROTO_TCP, CLIENT4, VIP4, 48000, 81, 64, CLIENT_MAC, LB_MAC, b"",
        );
        let (action, out) = run(&mut dp, &syn);
        assert_eq!(action, XDP_TX);
        let b = backend_of(&out);
        assert!(has_flow(&mut dp, "EMBRYOS", &syn) && !has_flow(&mut dp, "FLOWS", &syn));
        let reply = |payload: &'static [u8]| {
            tcp_ack(
                BACKENDS4[b].into(),
                CLIENT4.into(),
                8080,
                48000,
                64,
                BACKEND_MACS[b],
                LB_MAC,
                payload,
            )
        };
        let expected = |payload: &'static [u8]| {
            tcp_ack(
                VIP4.into(),
                CLIENT4.into(),
                81,
                48000,
                63,
                LB_MAC,
                CLIENT_MAC,
                payload,
            )
        };
        // The SYN-ACK stand-in: translated from the embryonic reverse entry.
        let (action, out) = run(&mut dp, &reply(b"synack"));
        assert_eq!(action, XDP_TX, "reply to an embryonic flow");
        assert_frame_eq(&out, &expected(b"synack"), "reply to an embryonic flow");
        let ack = tcp_ack(
            CLIENT4.into(),
            VIP4.into(),
            48000,
            81,
            64,
            CLIENT_MAC,
            LB_MAC,
            b"",
        );
        let (action, out) = run(&mut dp, &ack);
        assert_eq!((action, backend_of(&out)), (XDP_TX, b));
        assert!(has_flow(&mut dp, "FLOWS", &syn) && !has_flow(&mut dp, "EMBRYOS", &syn));
        let (action, out) = run(&mut dp, &reply(b"data"));
        assert_eq!(action, XDP_TX, "reply to a promoted flow");
        assert_frame_eq(&out, &expected(b"data"), "reply to a promoted flow");
        let g = dp.global_counters().unwrap();
        assert_eq!(count(&g, "syn"), 1);
        assert_eq!(count(&g, "flow_promoted"), 1);
        assert_eq!(count(&g, "nat_reply"), 2);
        let s = dp.service_counters(1).unwrap();
        assert_eq!((s.packets, s.new_flows), (2, 1));
    });
}

#[test]
fn spoofed_syns_do_not_evict_established_flows() {
    // NAT and DSR: both keep their embryonic entries in EMBRYO_SLOTS, NAT moving young
    // ones to the EMBRYOS LRU.
    for flags in [0, SVC_FWD_DSR] {
        spoofed_syns_do_not_evict_established_flows_of(flags);
    }
}

fn spoofed_syns_do_not_evict_established_flows_of(flags: u32) {
    with_bed(|bed| {
        // A flow table of 256 (embryonic table 256, created with 257 entries): 20
        // established connections, then 16 times the table's size in spoofed SYNs,
        // then a new Maglev table that sends every new flow elsewhere.
        let mut dp = bed.load_sized(&[svc_v4(PROTO_TCP, flags)], 256);
        let conns: Vec<(Vec<u8>, usize)> = (0..20u16)
            .map(|i| {
                let syn = v4(
                    PROTO_TCP,
                    CLIENT4,
                    VIP4,
                    49000 + i,
                    80,
                    64,
                    CLIENT_MAC,
                    LB_MAC,
                    b"",
                );
                let b = backend_of(&run(&mut dp, &syn).1);
                let ack = tcp_ack(
                    CLIENT4.into(),
                    VIP4.into(),
                    49000 + i,
                    80,
                    64,
                    CLIENT_MAC,
                    LB_MAC,
                    b"",
                );
                assert_eq!(backend_of(&run(&mut dp, &ack).1), b);
                (ack, b)
            })
            .collect();
        assert_eq!(flow_counts(&mut dp).0, 20);
        let flood = 16 * 256u32;
        for n in 0..flood {
            let src = Ipv4Addr::new(198, 18, 200 + (n >> 16) as u8, (n >> 8) as u8);
            let syn = v4(
                PROTO_TCP,
                src,
                VIP4,
                1024 + (n & 0xff) as u16,
                80,
                64,
                CLIENT_MAC,
                LB_MAC,
                b"",
            );
            assert_eq!(run(&mut dp, &syn).0, XDP_TX);
        }
        let (flows, embryos) = flow_counts(&mut dp);
        assert_eq!(
            flows, 20,
            "flags {flags:#x}: spoofed SYNs evicted established flows"
        );
        // The slots (EMBRYO_SLOTS, 256), and the LRU (257: `hash_table_entries` gives
        // it one more than its power of two), where a NAT flow's SYN moves a young
        // handshake it finds in its slot.
        let cap =
            (xdp_lb_common::embryo_slots(256) + xdp_lb_common::hash_table_entries(256)) as usize;
        assert!(
            embryos <= cap,
            "{embryos} embryonic entries, more than {cap}"
        );
        let g = dp.global_counters().unwrap();
        assert_eq!(count(&g, "syn"), 20 + flood as u64);
        assert_eq!(count(&g, "flow_promoted"), 20);
        for (i, (ack, b)) in conns.iter().enumerate() {
            let other = (*b as u32 + 1) % 3;
            bed.publish_ring(&mut dp, 0, &[other; RING as usize], (i % 2) as u32);
            assert_eq!(
                backend_of(&run(&mut dp, ack).1),
                *b,
                "connection {i} moved after the flood"
            );
        }
    });
}

#[test]
fn a_forged_syn_on_an_established_tuple_changes_nothing() {
    with_bed(|bed| {
        let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0)]);
        let syn = v4(
            PROTO_TCP, CLIENT4, VIP4, 49500, 80, 64, CLIENT_MAC, LB_MAC, b"",
        );
        let ack = tcp_ack(
            CLIENT4.into(),
            VIP4.into(),
            49500,
            80,
            64,
            CLIENT_MAC,
            LB_MAC,
            b"",
        );
        let b = backend_of(&run(&mut dp, &syn).1);
        assert_eq!(backend_of(&run(&mut dp, &ack).1), b);
        // A SYN with a wrong checksum on the same 5-tuple: dropped before it can
        // replace the connection's entry.
        let (action, _) = run(&mut dp, &with_bad_l4_checksum(syn.clone()));
        assert_eq!(action, XDP_DROP);
        assert!(
            has_flow(&mut dp, "FLOWS", &ack),
            "the forged SYN removed the flow"
        );
        let other = (b as u32 + 1) % 3;
        bed.publish_ring(&mut dp, 0, &[other; RING as usize], 1);
        assert_eq!(backend_of(&run(&mut dp, &ack).1), b, "the connection moved");
        assert_eq!(count(&dp.global_counters().unwrap(), "drop_l4_csum"), 1);
    });
}
