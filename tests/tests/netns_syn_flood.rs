//! Hostile traffic through the real attached program, NAT mode:
//! - idle keep-alive connections survive a spoofed SYN flood far larger than the flow
//!   table followed by a weight change (their entries must not have been evicted,
//!   or the new table would send their next packet elsewhere and the backend there
//!   would reset it);
//! - backends receive nothing from the balancer but balanced, valid flows (no probe
//!   datagrams, no malformed frames), and the balancer keeps their neighbour entries
//!   resolved with managed entries instead.
//!
//! Spoofed and malformed frames are sent from the client namespace through an
//! AF_PACKET socket; backends capture with one.
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use xdp_lb_common::PROTO_TCP;
use xdp_lb_tests::{
    client::LineClient,
    lb::XdpLbProcess,
    lbconfig::{self, ConfigFile},
    pkt::{v4, with_bad_l4_checksum, with_tcp_doff, with_tcp_flags},
    raw::{self, RawSocket, PACKET_HOST},
    require_root, scenario,
    topology::{CLIENT4, IFACE, LB_BACK4, TCP_PORT, VIP4},
    Forwarding, Topology,
};

/// Small, so the flood is many times larger than the table.
const FLOW_TABLE: u32 = 1024;
const CONNECTIONS: usize = 20;
/// Spoofed SYNs sent: 16 times the flow table.
const FLOOD: u32 = 16 * FLOW_TABLE;
/// At least this many must reach the program for the test to mean anything.
const FLOOD_SEEN_MIN: u64 = 4 * FLOW_TABLE as u64;

fn config(topo: &Topology, weights: &[u32]) -> String {
    let svc = scenario::service(topo, false, TCP_PORT, "tcp", weights);
    format!(
        "flow_table_size = {FLOW_TABLE}\n{}",
        lbconfig::render(&[IFACE], &[svc])
    )
}

/// The value of `name=N` in the balancer's exit counters line.
fn final_counter(out: &str, name: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.contains("final counters:"))
        .unwrap_or_else(|| panic!("no final counters in the output:\n{out}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .map(|v| v.parse().expect("a counter value"))
        .unwrap_or(0)
}

/// Sends `frames` from the client's interface, paced in small batches so the veth
/// rings (256 frames) are not simply overrun. Bounded by the frame count.
fn send_from_client(topo: &Topology, frames: Vec<Vec<u8>>) {
    topo.client
        .run(move || {
            let s = RawSocket::open(IFACE)?;
            for (i, f) in frames.iter().enumerate() {
                s.send(f)?;
                if i % 64 == 63 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            xdp_lb_tests::Result::<()>::Ok(())
        })
        .expect("entering the client namespace")
        .expect("sending raw frames");
}

/// `n` connections from the client to the service's VIP, each with the backend that
/// greeted it, and each answering a ping from that backend.
fn open_answering(topo: &Topology, lb: &XdpLbProcess, n: usize) -> Vec<(LineClient, String)> {
    let vip = topo.vip(false, TCP_PORT);
    let mut conns = topo
        .client
        .run(|| {
            (0..n)
                .map(|_| {
                    let c = LineClient::connect(vip)?;
                    let home = c.greeting().to_string();
                    Ok((c, home))
                })
                .collect::<xdp_lb_tests::Result<Vec<_>>>()
        })
        .expect("entering the client namespace")
        .unwrap_or_else(|e| panic!("opening the connections: {e}\n{}", lb.output()));
    for (i, (c, home)) in conns.iter_mut().enumerate() {
        let pong = c.ping().unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&pong, home, "connection {i} answered from elsewhere");
    }
    conns
}

/// The connections that no longer answer a ping from the backend they started on.
fn not_at_home(conns: &mut [(LineClient, String)]) -> Vec<String> {
    conns
        .iter_mut()
        .enumerate()
        .filter_map(|(i, (c, home))| match c.ping() {
            Ok(name) if &name == home => None,
            Ok(name) => Some(format!("{i}: {home} -> {name}")),
            Err(e) => Some(format!("{i} on {home}: {e}")),
        })
        .collect()
}

#[test]
fn nat_spoofed_syn_flood_breaks_no_idle_connection() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo, &[1, 1, 1])).expect("writing the config file");
    let mut lb = scenario::start_with_file(&topo, &file);

    let mut conns = open_answering(&topo, &lb, CONNECTIONS);
    // Idle for a while: the connections send nothing from here on until the end.
    thread::sleep(Duration::from_secs(2));

    let lb_mac = raw::mac_of(&topo.lb, IFACE).expect("lb MAC");
    let client_mac = raw::mac_of(&topo.client, IFACE).expect("client MAC");
    let flood: Vec<Vec<u8>> = (0..FLOOD)
        .map(|n| {
            // Sources the client subnet does not use (the client is .10).
            let src = Ipv4Addr::new(198, 18, 0, 100 + (n % 100) as u8);
            let sport = 20000 + (n / 100) as u16;
            v4(
                PROTO_TCP, src, VIP4, sport, TCP_PORT, 64, client_mac, lb_mac, b"",
            )
        })
        .collect();
    send_from_client(&topo, flood);

    // A weight change: flows that lost their entry would now be re-dispatched by a
    // table that sends most of them elsewhere.
    file.write(&config(&topo, &[12, 1, 1]))
        .expect("rewriting the config file");
    lb.reload()
        .unwrap_or_else(|e| panic!("reload failed: {e}\n{}", lb.output()));

    let broken = not_at_home(&mut conns);
    let status = lb.stop();
    let out = lb.output();
    assert!(status.is_some_and(|s| s.success()), "xdp-lb exit: {out}");
    let syns = final_counter(&out, "syn");
    assert!(
        broken.is_empty(),
        "{} of {CONNECTIONS} idle connections broken by a flood of {syns} SYNs: {broken:?}\n{out}",
        broken.len()
    );
    // The counters show the flood, and that it never reached FLOWS.
    assert!(
        syns >= FLOOD_SEEN_MIN,
        "only {syns} SYNs reached the program: the flood did not overrun the table\n{out}"
    );
    assert_eq!(
        final_counter(&out, "flow_promoted"),
        CONNECTIONS as u64,
        "promotions other than the real connections' handshakes\n{out}"
    );
}

/// Frames of the barrage: invalid in every way the program checks, to the
/// VIP from the client's own address.
fn barrage(smac: [u8; 6], dmac: [u8; 6]) -> Vec<Vec<u8>> {
    let client = xdp_lb_tests::topology::CLIENT4;
    let syn = |sport| {
        v4(
            PROTO_TCP, client, VIP4, sport, TCP_PORT, 64, smac, dmac, b"",
        )
    };
    let mut frames = Vec::new();
    for i in 0..20u16 {
        let base = 30000 + i * 20;
        let mut bad_ip = syn(base);
        bad_ip[24] ^= 0x11;
        frames.push(bad_ip);
        frames.push(with_bad_l4_checksum(syn(base + 1)));
        for (k, flags) in [0x03u8, 0x06, 0x00, 0x01, 0x29, 0xff].iter().enumerate() {
            frames.push(with_tcp_flags(syn(base + 2 + k as u16), *flags));
        }
        for doff in [0u8, 4, 15] {
            frames.push(with_tcp_doff(syn(base + 10 + doff as u16), doff));
        }
    }
    frames
}

/// Whether a frame a backend received from the balancer is balanced, valid TCP to
/// the service port, or neighbour resolution (ARP, IPv6 neighbour discovery).
fn acceptable(f: &[u8]) -> Result<(), String> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(f).map_err(|e| format!("unparseable: {e}"))?;
    let net = match &p.net {
        // ARP (the backends resolve the balancer, their gateway) and other non-IP.
        None | Some(NetSlice::Arp(_)) => return Ok(()),
        Some(net) => net,
    };
    if let NetSlice::Ipv4(ip) = net {
        let h = ip.header().to_header();
        if h.calc_header_checksum() != h.header_checksum {
            return Err("bad IPv4 header checksum".into());
        }
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            if t.destination_port() != TCP_PORT {
                return Err(format!("TCP to port {}", t.destination_port()));
            }
            let f = t.to_header();
            let valid_flags = (f.syn || f.ack || f.rst) && !(f.syn && (f.fin || f.rst));
            if !valid_flags {
                return Err(format!("TCP with flags {:?}", t.slice()[13]));
            }
            let ok = match net {
                NetSlice::Ipv4(ip) => f
                    .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .map(|c| c == f.checksum),
                NetSlice::Ipv6(ip) => f
                    .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                    .map(|c| c == f.checksum),
                _ => Ok(true),
            };
            if ok != Ok(true) {
                return Err("bad TCP checksum".into());
            }
            Ok(())
        }
        Some(TransportSlice::Icmpv6(i)) if (133..=137).contains(&i.type_u8()) => Ok(()),
        Some(TransportSlice::Udp(u)) => Err(format!("UDP to port {}", u.destination_port())),
        other => Err(format!(
            "unexpected {:?}: {:02x?}",
            other.as_ref().map(|_| "transport"),
            &f[..f.len().min(64)]
        )),
    }
}

#[test]
fn nat_backends_receive_only_balanced_valid_flows() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    // A built-in br_netfilter checks IPv4 header checksums on the bridge and would
    // drop the barrage's bad-checksum frames before they reach the balancer.
    if topo
        .bridge
        .run(|| std::path::Path::new("/proc/sys/net/bridge").exists())
        .expect("entering the bridge namespace")
    {
        for t in ["iptables", "ip6tables", "arptables"] {
            topo.bridge
                .sysctl(&format!("net/bridge/bridge-nf-call-{t}"), "0")
                .expect("turning bridge netfilter off");
        }
    }
    let lb_mac = raw::mac_of(&topo.lb, IFACE).expect("lb MAC");
    let client_mac = raw::mac_of(&topo.client, IFACE).expect("client MAC");
    let stop = Arc::new(AtomicBool::new(false));
    let captures: Vec<_> = topo
        .backends
        .iter()
        .map(|b| {
            let stop = stop.clone();
            b.ns.spawn(move || {
                let s = RawSocket::open(IFACE)?;
                s.set_read_timeout(Duration::from_millis(200))?;
                let mut got = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some((f, kind)) = s.recv()? {
                        // Unicast from the balancer to this backend; the bridge also
                        // floods everyone's multicast housekeeping (IGMP, MLD).
                        if kind == PACKET_HOST && f.len() >= 12 && f[6..12] == lb_mac {
                            got.push(f);
                        }
                    }
                }
                xdp_lb_tests::Result::<Vec<Vec<u8>>>::Ok(got)
            })
        })
        .collect();

    let file = ConfigFile::new(&config(&topo, &[1, 1, 1])).expect("writing the config file");
    let mut lb = scenario::start_with_file(&topo, &file);
    let vip = topo.vip(false, TCP_PORT);
    send_from_client(&topo, barrage(client_mac, lb_mac));
    let answered = topo
        .client
        .run(|| {
            (0..10)
                .map(|_| LineClient::connect(vip).and_then(|mut c| c.ping()))
                .collect::<xdp_lb_tests::Result<Vec<_>>>()
        })
        .expect("entering the client namespace");
    // Past the control plane's 5-second neighbour timer, which used to send probes.
    thread::sleep(Duration::from_secs(6));
    let neigh = topo
        .lb
        .ip(&["neigh", "show", "dev", IFACE])
        .expect("ip neigh");
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    stop.store(true, Ordering::Relaxed);
    let status = lb.stop();
    let out = lb.output();
    assert!(status.is_some_and(|s| s.success()), "xdp-lb exit: {out}");
    answered.unwrap_or_else(|e| panic!("balanced connections failed: {e}\n{out}"));

    let mut bad = Vec::new();
    let mut syns = 0;
    let mut checks = 0;
    for (b, h) in topo.backends.iter().zip(captures) {
        let frames = h
            .join()
            .expect("capture thread")
            .expect("entering the backend namespace")
            .unwrap_or_else(|e| panic!("capturing on {}: {e}", b.name));
        for f in &frames {
            // The balancer's own health checks come from its own address through its
            // kernel stack (with offloaded, partial checksums on veth): allowed, and
            // not balanced traffic.
            if f.len() >= 34 && f[12..14] == [8, 0] && f[26..30] == LB_BACK4.octets() {
                checks += 1;
                continue;
            }
            if let Err(why) = acceptable(f) {
                bad.push(format!("{}: {why}", b.name));
            }
            // A SYN without ACK: byte 47 is the TCP flags of an untagged IPv4 frame.
            if f.len() > 47 && f[12..14] == [8, 0] && f[47] & 0x12 == 0x02 {
                syns += 1;
            }
        }
    }
    assert!(
        bad.is_empty(),
        "backends received {} frames that are not balanced, valid flows: {:?}\n{out}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
    assert_eq!(
        syns, 10,
        "SYNs at the backends: only the 10 real connections' ({checks} health-check frames set aside)"
    );
    let dropped: u64 = [
        "drop_l4_csum",
        "drop_tcp_flags",
        "drop_tcp_doff",
        "drop_tcp_truncated",
    ]
    .iter()
    .map(|n| final_counter(&out, n))
    .sum();
    assert_eq!(dropped, 20 * 10, "barrage frames dropped by reason\n{out}");
    assert_eq!(final_counter(&out, "pass_bad_ip_csum"), 20, "{out}");
    for b in &topo.backends {
        let line = neigh
            .lines()
            .find(|l| l.starts_with(&format!("{} ", IpAddr::V4(b.v4()))))
            .unwrap_or_else(|| panic!("no neighbour entry for {}: {neigh}", b.name));
        assert!(
            line.contains("managed"),
            "{}'s entry is not managed: {line}",
            b.name
        );
    }
}

/// A SYN forged with a live connection's own addresses and ports, checksum valid,
/// must not move that connection: with round-robin the next pick is another backend,
/// which would answer the connection's next segment with a reset. Its backend's stack
/// answers the SYN with a challenge ACK and the connection goes on.
#[test]
fn a_forged_syn_on_a_live_connection_leaves_it_on_its_backend() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let mut svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[1, 1, 1]);
    svc.algorithm = "round-robin";
    let file = ConfigFile::new(&lbconfig::render(&[IFACE], &[svc])).expect("config file");
    let lb = scenario::start_with_file(&topo, &file);
    const N: usize = 6;
    let mut conns = open_answering(&topo, &lb, N);
    let homes: std::collections::BTreeSet<&str> = conns.iter().map(|(_, h)| h.as_str()).collect();
    assert!(
        homes.len() > 1,
        "round-robin put all {N} connections on {homes:?}"
    );
    let lb_mac = raw::mac_of(&topo.lb, IFACE).expect("lb MAC");
    let client_mac = raw::mac_of(&topo.client, IFACE).expect("client MAC");
    // Each connection's SYN twice, so that whatever the cursor, a second pick would
    // name another backend for every one of them.
    let forged: Vec<Vec<u8>> = (0..2)
        .flat_map(|_| conns.iter())
        .map(|(c, _)| {
            v4(
                PROTO_TCP,
                CLIENT4,
                VIP4,
                c.local_port(),
                TCP_PORT,
                64,
                client_mac,
                lb_mac,
                b"",
            )
        })
        .collect();
    send_from_client(&topo, forged);
    thread::sleep(Duration::from_millis(200));
    let moved = not_at_home(&mut conns);
    assert!(
        moved.is_empty(),
        "forged SYNs broke {} of {N} live connections: {moved:?}\n{}",
        moved.len(),
        lb.output()
    );
}
