//! Packet tests of ICMP errors about balanced flows (path-MTU discovery through the
//! balancer): the real program on frames built by etherparse, output compared byte
//! for byte with frames whose checksums etherparse computes in full, so every
//! incrementally patched checksum (outer IPv4, quoted IPv4, quoted TCP/UDP, ICMP and
//! the ICMPv6 pseudo-header) is checked independently. Each direction, family,
//! protocol and mode; then the errors that are not ours, which pass untouched.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xdp_lb::dataplane::{AyaDataplane, Dataplane as _};
use xdp_lb_common::{PROTO_TCP, PROTO_UDP, SVC_FWD_DSR};
use xdp_lb_tests::pkt::*;

/// A router on the client's side of the balancer, and one between it and the backends.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
const HOP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
const HOP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
/// Long enough that a full quote holds the L4 checksum, as real errors do.
const PAYLOAD: &[u8] = &[0x5a; 64];

struct Family {
    name: &'static str,
    client: IpAddr,
    vip: IpAddr,
    backends: [IpAddr; 3],
    router: IpAddr,
    hop: IpAddr,
}

fn families() -> [Family; 2] {
    [
        Family {
            name: "v4",
            client: CLIENT4.into(),
            vip: VIP4.into(),
            backends: BACKENDS4.map(IpAddr::from),
            router: ROUTER4.into(),
            hop: HOP4.into(),
        },
        Family {
            name: "v6",
            client: CLIENT6.into(),
            vip: VIP6.into(),
            backends: BACKENDS6.map(IpAddr::from),
            router: ROUTER6.into(),
            hop: HOP6.into(),
        },
    ]
}

/// A TCP segment of an established connection, or a UDP datagram.
#[allow(clippy::too_many_arguments)]
fn l4(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    ttl: u8,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Vec<u8> {
    l4_packet(proto, src, dst, sport, dport, ttl, smac, dmac, PAYLOAD)
}

/// The IP packet of a frame, cut to `quote` bytes (as an ICMP error quotes it).
fn ip_of(frame: &[u8], quote: usize) -> Vec<u8> {
    frame[14..].iter().copied().take(quote).collect()
}

fn count(dp: &AyaDataplane, name: &str) -> u64 {
    dp.global_counters()
        .unwrap()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn backend_of(out: &[u8]) -> usize {
    BACKEND_MACS
        .iter()
        .position(|m| m[..] == out[0..6])
        .unwrap_or_else(|| panic!("unknown dst mac {:02x?}", &out[0..6]))
}

/// Sends a client request through `dp` and returns the backend index it went to.
fn open_flow(prog: Prog, dp: &mut AyaDataplane, f: &Family, proto: u8, cport: u16) -> usize {
    let req = l4(proto, f.client, f.vip, cport, 80, 64, CLIENT_MAC, LB_MAC);
    let (action, out) = prog.run(dp, &req);
    assert_eq!(action, prog.act(XDP_TX), "{prog:?} {}: request", f.name);
    backend_of(&out)
}

#[test]
fn client_side_errors_reach_the_flows_backend_translated_in_nat_mode() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[
                svc_v4(PROTO_TCP, 0),
                svc_v4(PROTO_UDP, 0),
                svc_v6(PROTO_TCP),
                svc_v6(PROTO_UDP),
            ]);
            let mut cport = 42000;
            let mut sent = 0;
            for f in families() {
                for proto in [PROTO_TCP, PROTO_UDP] {
                    // A full quote, and the 8 L4 bytes RFC 792 asks for (no TCP checksum).
                    for quote in [usize::MAX, if f.name == "v4" { 28 } else { 48 }] {
                        cport += 1;
                        let what = format!("{prog:?} {} proto {proto} quote {quote}", f.name);
                        let b = open_flow(prog, &mut dp, &f, proto, cport);
                        // The translated reply the balancer sent, as the router quotes it.
                        let reply = l4(proto, f.vip, f.client, 80, cport, 62, LB_MAC, CLIENT_MAC);
                        let input = icmp_error(
                            f.router,
                            f.vip,
                            64,
                            (CLIENT_MAC, LB_MAC),
                            Some(1280),
                            &ip_of(&reply, quote),
                        );
                        // What the backend sent before the balancer translated it.
                        let orig = l4(
                            proto,
                            f.backends[b],
                            f.client,
                            BACKEND_PORT,
                            cport,
                            62,
                            LB_MAC,
                            CLIENT_MAC,
                        );
                        let expected = icmp_error(
                            f.router,
                            f.backends[b],
                            63,
                            (LB_MAC, BACKEND_MACS[b]),
                            Some(1280),
                            &ip_of(&orig, quote),
                        );
                        let (action, out) = prog.run(&mut dp, &input);
                        assert_eq!(action, prog.act(XDP_TX), "{what}: action");
                        assert_frame_eq(&out, &expected, &what);
                        sent += 1;
                    }
                }
            }
            assert_eq!(count(&dp, "icmp_to_backend"), sent);
        });
    }
}

#[test]
fn client_side_errors_reach_the_flows_backend_unchanged_in_dsr_mode() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[
                svc_v4(PROTO_TCP, SVC_FWD_DSR),
                svc_v4(PROTO_UDP, SVC_FWD_DSR),
                svc_v6(PROTO_TCP).with_flags(SVC_FWD_DSR),
                svc_v6(PROTO_UDP).with_flags(SVC_FWD_DSR),
            ]);
            let mut cport = 43000;
            for f in families() {
                for proto in [PROTO_TCP, PROTO_UDP] {
                    cport += 1;
                    let what = format!("{prog:?} dsr {} proto {proto}", f.name);
                    let b = open_flow(prog, &mut dp, &f, proto, cport);
                    // In DSR the backend answers from the VIP itself.
                    let reply = l4(
                        proto, f.vip, f.client, 80, cport, 64, CLIENT_MAC, CLIENT_MAC,
                    );
                    let input = icmp_error(
                        f.router,
                        f.vip,
                        64,
                        (CLIENT_MAC, LB_MAC),
                        Some(1280),
                        &ip_of(&reply, usize::MAX),
                    );
                    let mut expected = input.clone();
                    expected[0..6].copy_from_slice(&BACKEND_MACS[b]);
                    expected[6..12].copy_from_slice(&LB_MAC);
                    let (action, out) = prog.run(&mut dp, &input);
                    assert_eq!(action, prog.act(XDP_TX), "{what}: action");
                    assert_frame_eq(&out, &expected, &what);
                }
            }
            assert_eq!(count(&dp, "icmp_to_backend"), 4);
        });
    }
}

#[test]
fn backend_side_errors_reach_the_client_from_the_vip() {
    for prog in BOTH {
        with_bed(|bed| {
            // Port 81 shares the TCP backends with port 80: their errors are mapped back
            // per flow (NAT_REVERSE), the others by the backend's endpoint.
            let mut dp = bed.load(&[
                svc_v4(PROTO_TCP, 0),
                svc_v4(PROTO_TCP, 0).on_port(81),
                svc_v4(PROTO_UDP, 0),
                svc_v6(PROTO_TCP),
                svc_v6(PROTO_UDP),
            ]);
            let mut cport = 44000;
            let mut sent = 0;
            for f in families() {
                for proto in [PROTO_TCP, PROTO_UDP] {
                    // From the backend itself (port unreachable), and from a hop between
                    // the balancer and the backend (fragmentation needed / too big).
                    for from_hop in [false, true] {
                        cport += 1;
                        let what = format!("{prog:?} {} proto {proto} from hop {from_hop}", f.name);
                        let b = open_flow(prog, &mut dp, &f, proto, cport);
                        let fwd = l4(
                            proto,
                            f.client,
                            f.backends[b],
                            cport,
                            BACKEND_PORT,
                            63,
                            LB_MAC,
                            BACKEND_MACS[b],
                        );
                        let (src, mtu) = if from_hop {
                            (f.hop, Some(1280))
                        } else {
                            (f.backends[b], None)
                        };
                        let input = icmp_error(
                            src,
                            f.client,
                            64,
                            (BACKEND_MACS[b], LB_MAC),
                            mtu,
                            &ip_of(&fwd, usize::MAX),
                        );
                        let req = l4(proto, f.client, f.vip, cport, 80, 63, LB_MAC, LB_MAC);
                        let expected = icmp_error(
                            f.vip,
                            f.client,
                            63,
                            (LB_MAC, CLIENT_MAC),
                            mtu,
                            &ip_of(&req, usize::MAX),
                        );
                        let (action, out) = prog.run(&mut dp, &input);
                        assert_eq!(action, prog.act(XDP_TX), "{what}: action");
                        assert_frame_eq(&out, &expected, &what);
                        sent += 1;
                    }
                }
            }
            assert_eq!(count(&dp, "icmp_to_client"), sent);
        });
    }
}

#[test]
fn errors_that_are_not_ours_pass_untouched_and_are_counted() {
    for prog in BOTH {
        with_bed(|bed| {
            let mut dp = bed.load(&[svc_v4(PROTO_TCP, 0), svc_v6(PROTO_TCP)]);
            let [f4, f6] = families();
            let b4 = open_flow(prog, &mut dp, &f4, PROTO_TCP, 45000);
            open_flow(prog, &mut dp, &f6, PROTO_TCP, 45000);
            let reply4 = l4(
                PROTO_TCP, f4.vip, f4.client, 80, 45000, 62, LB_MAC, CLIENT_MAC,
            );
            let reply6 = l4(
                PROTO_TCP, f6.vip, f6.client, 80, 45000, 62, LB_MAC, CLIENT_MAC,
            );
            let to_vip4 = |quoted: &[u8]| {
                icmp_error(
                    f4.router,
                    f4.vip,
                    64,
                    (CLIENT_MAC, LB_MAC),
                    Some(1280),
                    quoted,
                )
            };
            let to_vip6 = |quoted: &[u8]| {
                icmp_error(
                    f6.router,
                    f6.vip,
                    64,
                    (CLIENT_MAC, LB_MAC),
                    Some(1280),
                    quoted,
                )
            };
            let unknown4 = l4(
                PROTO_TCP, f4.vip, f4.client, 80, 45999, 62, LB_MAC, CLIENT_MAC,
            );
            let unknown6 = l4(
                PROTO_TCP, f6.vip, f6.client, 80, 45999, 62, LB_MAC, CLIENT_MAC,
            );
            let mut quoted_icmp = ip_of(&reply4, usize::MAX);
            quoted_icmp[9] = 1;
            let mut bad_csum = to_vip4(&ip_of(&reply4, usize::MAX));
            bad_csum[24] ^= 0x40;
            let mut ttl_one = to_vip4(&ip_of(&reply4, usize::MAX));
            ttl_one[22] = 1;
            refresh_ip_checksum(&mut ttl_one);
            // The balancer host's own connection, not a balanced flow.
            let own = l4(
                PROTO_TCP,
                "198.18.0.1".parse().unwrap(),
                f4.client,
                22,
                45000,
                64,
                LB_MAC,
                CLIENT_MAC,
            );
            let own_error = icmp_error(
                f4.router,
                "198.18.0.1".parse().unwrap(),
                64,
                (CLIENT_MAC, LB_MAC),
                Some(1280),
                &ip_of(&own, usize::MAX),
            );
            // An error from backend b4's side about a flow it does not have.
            let stray = l4(
                PROTO_TCP,
                f4.client,
                f4.backends[b4],
                45999,
                BACKEND_PORT,
                63,
                LB_MAC,
                BACKEND_MACS[b4],
            );
            let stray_error = icmp_error(
                f4.backends[b4],
                f4.client,
                64,
                (BACKEND_MACS[b4], LB_MAC),
                None,
                &ip_of(&stray, usize::MAX),
            );
            let rows: Vec<(&str, Vec<u8>, &str)> = vec![
                (
                    "v4 no flow",
                    to_vip4(&ip_of(&unknown4, usize::MAX)),
                    "pass_icmp_no_flow",
                ),
                (
                    "v6 no flow",
                    to_vip6(&ip_of(&unknown6, usize::MAX)),
                    "pass_icmp_no_flow",
                ),
                ("backend side, no flow", stray_error, "pass_icmp_no_flow"),
                (
                    "v4 ports cut off",
                    to_vip4(&ip_of(&reply4, 22)),
                    "pass_icmp_unhandled",
                ),
                (
                    "v6 ports cut off",
                    to_vip6(&ip_of(&reply6, 42)),
                    "pass_icmp_unhandled",
                ),
                (
                    "v4 quotes icmp",
                    to_vip4(&quoted_icmp),
                    "pass_icmp_unhandled",
                ),
                ("v4 bad ip checksum", bad_csum, "pass_bad_ip_csum"),
                ("v4 ttl 1", ttl_one, "pass_ttl"),
                ("host's own traffic", own_error, "pass_not_service"),
                (
                    "echo to the vip",
                    icmp4_echo(CLIENT4, VIP4),
                    "pass_not_service",
                ),
            ];
            for (what, input, why) in &rows {
                let before = count(&dp, why);
                let (action, out) = prog.run(&mut dp, input);
                assert_eq!(action, prog.act(XDP_PASS), "{prog:?} {what}: action");
                assert_eq!(&out, input, "{prog:?} {what}: frame changed");
                assert_eq!(
                    count(&dp, why),
                    before + 1,
                    "{prog:?} {what}: not counted as {why}"
                );
            }
            assert_eq!(count(&dp, "icmp_to_backend"), 0);
            assert_eq!(count(&dp, "icmp_to_client"), 0);
            // Every truncation of a translatable error passes or is translated, and
            // never changes a byte it does not own.
            let full = to_vip4(&ip_of(&reply4, usize::MAX));
            // The kernel refuses skb test frames shorter than the IP header.
            let shortest = match prog {
                Prog::Xdp => 14,
                Prog::Tc => 14 + 20,
            };
            for cut in shortest..full.len() {
                let input = &full[..cut];
                let (action, out) = prog.run(&mut dp, input);
                assert_eq!(action, prog.act(XDP_PASS), "{prog:?} cut at {cut}");
                assert_eq!(out, input, "{prog:?} cut at {cut}: frame changed");
            }
        });
    }
}

/// Recomputes the IPv4 header checksum of an untagged frame.
fn refresh_ip_checksum(f: &mut [u8]) {
    f[24] = 0;
    f[25] = 0;
    let mut s: u32 = f[14..34]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    f[24..26].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

/// Bytes of the original IP packet the balancer's own too-big errors quote (the
/// program's `toobig::QUOTE_V4` / `QUOTE_V6`).
const TOO_BIG_QUOTE_V4: usize = 548;
const TOO_BIG_QUOTE_V6: usize = 1232;
/// The bed interface's MTU in the too-big tests, and a payload that exceeds it.
const EGRESS_MTU: u16 = 1280;
const BIG: &[u8] = &[0xa5; 1300];

/// Lowers the bed interface's MTU: every backend route leaves through it.
fn set_bed_mtu(mtu: u16) {
    let st = std::process::Command::new("ip")
        .args(["link", "set", LB_IF, "mtu", &mtu.to_string()])
        .status()
        .expect("running ip");
    assert!(st.success(), "ip link set {LB_IF} mtu {mtu}");
}

/// `l4` with a payload of the caller's.
fn l4_payload(proto: u8, src: IpAddr, dst: IpAddr, sport: u16, payload: &[u8]) -> Vec<u8> {
    match (proto, src, dst) {
        (PROTO_TCP, ..) => tcp_ack(src, dst, sport, 80, 64, CLIENT_MAC, LB_MAC, payload),
        (_, IpAddr::V4(s), IpAddr::V4(d)) => {
            v4(proto, s, d, sport, 80, 64, CLIENT_MAC, LB_MAC, payload)
        }
        (_, IpAddr::V6(s), IpAddr::V6(d)) => {
            v6(proto, s, d, sport, 80, 64, CLIENT_MAC, LB_MAC, payload)
        }
        _ => panic!("mixed address families"),
    }
}

/// The error the balancer must send for `input`: from the VIP to the client, back
/// out of the ingress, quoting `input` as it arrived. The ICMP checksum (and the
/// ICMPv6 pseudo-header) computed by etherparse; IPv4 without DF (as Linux sends
/// its errors), its header checksum recomputed here.
fn too_big_answer(f: &Family, input: &[u8]) -> Vec<u8> {
    let quote = if f.name == "v4" {
        TOO_BIG_QUOTE_V4
    } else {
        TOO_BIG_QUOTE_V6
    };
    let mut want = icmp_error(
        f.vip,
        f.client,
        64,
        (LB_MAC, CLIENT_MAC),
        Some(EGRESS_MTU),
        &ip_of(input, quote),
    );
    if f.name == "v4" {
        want[20] &= !0x40;
        refresh_ip_checksum(&mut want);
    }
    want
}

#[test]
fn packets_too_big_for_the_egress_are_answered_from_the_vip() {
    for prog in BOTH {
        with_bed(|bed| {
            set_bed_mtu(EGRESS_MTU);
            let mut dp = bed.load(&[
                svc_v4(PROTO_TCP, 0),
                svc_v4(PROTO_UDP, 0),
                svc_v6(PROTO_TCP),
                svc_v6(PROTO_UDP),
                svc_v4(PROTO_TCP, SVC_FWD_DSR).on_port(81),
            ]);
            let mut cport = 45000;
            let mut sent = 0;
            for f in families() {
                for proto in [PROTO_TCP, PROTO_UDP] {
                    cport += 1;
                    let what = format!("{prog:?} {} proto {proto}", f.name);
                    // A packet that fits goes to the backend (and fills the next-hop cache
                    // with the egress MTU); a larger one of the same flow is answered.
                    let b = open_flow(prog, &mut dp, &f, proto, cport);
                    let input = l4_payload(proto, f.client, f.vip, cport, BIG);
                    let (action, out) = prog.run(&mut dp, &input);
                    assert_eq!(action, prog.act(XDP_TX), "{what}: action");
                    assert_frame_eq(&out, &too_big_answer(&f, &input), &what);
                    sent += 1;
                    // The flow still goes to its backend with packets that fit.
                    let again = l4(proto, f.client, f.vip, cport, 80, 64, CLIENT_MAC, LB_MAC);
                    let (action, out) = prog.run(&mut dp, &again);
                    assert_eq!(
                        (action, backend_of(&out)),
                        (prog.act(XDP_TX), b),
                        "{what}: after"
                    );
                }
            }
            // DSR: the same answer (nothing is rewritten before it).
            let f = &families()[0];
            let small = tcp_ack(f.client, f.vip, 45100, 81, 64, CLIENT_MAC, LB_MAC, PAYLOAD);
            assert_eq!(
                prog.run(&mut dp, &small).0,
                prog.act(XDP_TX),
                "{prog:?} dsr: small"
            );
            let input = tcp_ack(f.client, f.vip, 45100, 81, 64, CLIENT_MAC, LB_MAC, BIG);
            let (action, out) = prog.run(&mut dp, &input);
            assert_eq!(action, prog.act(XDP_TX), "{prog:?} dsr: action");
            assert_frame_eq(&out, &too_big_answer(f, &input), &format!("{prog:?} dsr"));
            sent += 1;
            assert_eq!(count(&dp, "icmp_too_big_sent"), sent);
            assert_eq!(count(&dp, "pass_too_big_no_df"), 0);
        });
    }
}

#[test]
fn a_first_packet_too_big_is_answered_from_the_fib_lookup() {
    // No next hop cached yet: the FIB lookup itself reports the MTU.
    for prog in BOTH {
        with_bed(|bed| {
            set_bed_mtu(EGRESS_MTU);
            let mut dp = bed.load(&[svc_v4(PROTO_UDP, 0), svc_v6(PROTO_UDP)]);
            for (i, f) in families().iter().enumerate() {
                let input = l4_payload(PROTO_UDP, f.client, f.vip, 46000, BIG);
                let (action, out) = prog.run(&mut dp, &input);
                assert_eq!(action, prog.act(XDP_TX), "{prog:?} {}: action", f.name);
                let what = format!("{prog:?} {}", f.name);
                assert_frame_eq(&out, &too_big_answer(f, &input), &what);
                assert_eq!(count(&dp, "icmp_too_big_sent"), i as u64 + 1, "{what}");
            }
        });
    }
}

#[test]
fn ipv4_too_big_without_df_is_rewritten_and_left_to_the_kernel() {
    for prog in BOTH {
        with_bed(|bed| {
            set_bed_mtu(EGRESS_MTU);
            let mut dp = bed.load(&[svc_v4(PROTO_UDP, 0)]);
            let f = &families()[0];
            let b = open_flow(prog, &mut dp, f, PROTO_UDP, 47000);
            let mut input = l4_payload(PROTO_UDP, f.client, f.vip, 47000, BIG);
            input[20] &= !0x40;
            refresh_ip_checksum(&mut input);
            let (action, out) = prog.run(&mut dp, &input);
            // The kernel forwards it to the backend, fragmenting it.
            assert_eq!(action, prog.act(XDP_PASS), "{prog:?}");
            assert_eq!(out.len(), input.len());
            let IpAddr::V4(backend) = f.backends[b] else {
                unreachable!()
            };
            assert_eq!(
                out[30..34],
                backend.octets(),
                "rewritten towards the backend"
            );
            assert_eq!(count(&dp, "pass_too_big_no_df"), 1);
            assert_eq!(count(&dp, "icmp_too_big_sent"), 0);
        });
    }
}

/// A GSO skb (tc only: the stack cuts it into segments after the balancer) is judged
/// by its segments, as the kernel's forwarding judges one: if they fit the egress it
/// goes to the backend whole, however long; if not it is answered like a single
/// packet too big, quoting its headers as they came.
#[test]
fn gso_packets_are_judged_by_their_segments() {
    with_bed(|bed| {
        set_bed_mtu(EGRESS_MTU);
        let prog = Prog::Tc;
        let mut dp = bed.load(&[
            svc_v4(PROTO_TCP, 0),
            svc_v4(PROTO_UDP, 0),
            svc_v6(PROTO_TCP),
        ]);
        let long = [0x3c; 3000];
        let mut sent = 0;
        let [f4, f6] = families();
        // (family, protocol, segment payload that fits, one that does not): IP and
        // L4 headers (TCP 20, UDP 8) plus the payload against the 1280-byte egress.
        for (f, proto, fits, too_big) in [
            (&f4, PROTO_TCP, 1240, 1448),
            (&f6, PROTO_TCP, 1220, 1440),
            (&f4, PROTO_UDP, 1252, 1253),
        ] {
            let cport = 48000 + sent as u16;
            let what = format!("gso {} proto {proto}", f.name);
            let b = open_flow(prog, &mut dp, f, proto, cport);
            let input = l4_payload(proto, f.client, f.vip, cport, &long);
            let (action, out) = prog.run_gso(&mut dp, &input, fits);
            assert_eq!(action, prog.act(XDP_TX), "{what}: fits: action");
            let expected = match (proto, f.client, f.backends[b]) {
                (PROTO_TCP, c, be) => tcp_ack(
                    c,
                    be,
                    cport,
                    BACKEND_PORT,
                    63,
                    LB_MAC,
                    BACKEND_MACS[b],
                    &long,
                ),
                (_, IpAddr::V4(c), IpAddr::V4(be)) => v4(
                    proto,
                    c,
                    be,
                    cport,
                    BACKEND_PORT,
                    63,
                    LB_MAC,
                    BACKEND_MACS[b],
                    &long,
                ),
                _ => unreachable!("no IPv6 UDP row"),
            };
            assert_frame_eq(&out, &expected, &format!("{what}: fits"));
            let (action, out) = prog.run_gso(&mut dp, &input, too_big);
            assert_eq!(action, prog.act(XDP_TX), "{what}: too big: action");
            assert_frame_eq(
                &out,
                &too_big_answer(f, &input),
                &format!("{what}: too big"),
            );
            sent += 1;
            assert_eq!(count(&dp, "icmp_too_big_sent"), sent, "{what}");
        }
        assert_eq!(count(&dp, "pass_too_big_no_df"), 0);
    });
}
