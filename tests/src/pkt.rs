//! Packet-level test bed: a fresh network namespace (per thread, via unshare) with
//! one veth whose neighbours are permanent entries, the real XDP program loaded with
//! a small hand-built configuration, and builders for the frames the packet tests
//! and the per-packet benchmark feed to BPF_PROG_TEST_RUN.
use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use etherparse::{PacketBuilder, VlanId};
use xdp_lb::{
    dataplane::{AyaDataplane, Dataplane as _, MapSizes},
    plan::Plan,
};
use xdp_lb_common::{
    Backend, FlowKey, ReplyTarget, Service, ServiceKey, BACKEND_ACTIVE, FAMILY_V4, FAMILY_V6,
    PROTO_TCP, REPLY_PER_FLOW, SVC_FWD_DSR, SVC_REVERSE_PER_FLOW,
};

pub const LB_IF: &str = "lb0";
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const BACKEND_MACS: [[u8; 6]; 3] = [
    [0x02, 0, 0, 0, 1, 0x0b],
    [0x02, 0, 0, 0, 1, 0x0c],
    [0x02, 0, 0, 0, 1, 0x0d],
];
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const BACKENDS4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 1, 11),
    Ipv4Addr::new(198, 18, 1, 12),
    Ipv4Addr::new(198, 18, 1, 13),
];
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const BACKENDS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x12),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x13),
];
/// Backend port of NAT services; services listen on 80.
pub const BACKEND_PORT: u16 = 8080;
/// Maglev table size of the bed's services (prime, small so tests can reason about it).
pub const RING: u32 = 13;
/// Capacity of each service slot in MAGLEV_RING.
const RING_STRIDE: u32 = 1 << 16;

/// One service of the bed: protocol, family, flags. Backends are always the three
/// bed backends of its family (ids 0-2 for IPv4, 3-5 for IPv6).
#[derive(Clone, Copy, Debug)]
pub struct SvcSpec {
    pub proto: u8,
    pub family: u8,
    pub flags: u32,
    /// Service port (80 unless changed with `on_port`).
    pub port: u16,
}

impl SvcSpec {
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }
    pub fn on_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    pub fn key(&self) -> ServiceKey {
        let addr = if self.family == FAMILY_V4 {
            words4(VIP4)
        } else {
            words6(VIP6)
        };
        ServiceKey {
            addr,
            port: wire_port(self.port),
            proto: self.proto,
            family: self.family,
        }
    }
    /// NAT services of the same protocol and family share the bed's backends.
    fn shares_backends_with(&self, other: &SvcSpec) -> bool {
        self.flags & SVC_FWD_DSR == 0
            && other.flags & SVC_FWD_DSR == 0
            && self.proto == other.proto
            && self.family == other.family
    }
    fn backend_base(&self) -> u32 {
        if self.family == FAMILY_V4 {
            0
        } else {
            3
        }
    }
}

pub fn svc_v4(proto: u8, flags: u32) -> SvcSpec {
    SvcSpec {
        proto,
        family: FAMILY_V4,
        flags,
        port: 80,
    }
}

pub fn svc_v6(proto: u8) -> SvcSpec {
    SvcSpec {
        proto,
        family: FAMILY_V6,
        flags: 0,
        port: 80,
    }
}

/// The ring every bed service starts with: backend indexes 0,1,2 in a fixed pattern.
pub fn ring_pattern(size: u32) -> Vec<u32> {
    (0..size).map(|i| (i * 7 + i / 3) % 3).collect()
}

/// Address words as the data plane stores them (network order in memory).
pub fn words4(a: Ipv4Addr) -> [u32; 4] {
    [u32::from_ne_bytes(a.octets()), 0, 0, 0]
}

pub fn words6(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

pub fn wire_port(p: u16) -> u16 {
    u16::from_ne_bytes(p.to_be_bytes())
}

pub struct Bed {
    specs: RefCell<Vec<SvcSpec>>,
}

/// Runs a command (in the calling thread's namespace, e.g. `with_bed`'s); panics
/// with its stderr if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a new thread inside a new, private network namespace holding the bed's
/// interface. The namespace disappears with the thread, so nothing is left behind
/// even if `f` panics; the panic is re-raised here.
pub fn with_bed<F: FnOnce(&Bed) + Send>(f: F) {
    crate::require_root();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            // SAFETY: affects only this thread's namespaces.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            setup_links();
            f(&Bed {
                specs: RefCell::new(Vec::new()),
            });
        });
        if let Err(e) = h.join() {
            std::panic::resume_unwind(e);
        }
    });
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn setup_links() {
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "link",
        "add",
        LB_IF,
        "address",
        &mac(&LB_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ]);
    sh(&["ip", "link", "set", LB_IF, "up"]);
    sh(&["ip", "link", "set", "peer0", "up"]);
    for a in ["198.18.0.1/24", "198.18.1.1/24"] {
        sh(&["ip", "addr", "add", a, "dev", LB_IF]);
    }
    for a in ["2001:db8::1/64", "2001:db8:1::1/64"] {
        sh(&["ip", "-6", "addr", "add", a, "dev", LB_IF, "nodad"]);
    }
    sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let mut neigh = vec![
        (CLIENT4.to_string(), CLIENT_MAC),
        (CLIENT6.to_string(), CLIENT_MAC),
    ];
    for i in 0..3 {
        neigh.push((BACKENDS4[i].to_string(), BACKEND_MACS[i]));
        neigh.push((BACKENDS6[i].to_string(), BACKEND_MACS[i]));
    }
    for (ip, m) in neigh {
        sh(&[
            "ip",
            "neigh",
            "replace",
            &ip,
            "lladdr",
            &mac(&m),
            "dev",
            LB_IF,
            "nud",
            "permanent",
        ]);
    }
}

/// Second interface of the bed, for routes that leave through another port.
pub const LB_IF2: &str = "lb1";

impl Bed {
    /// Routes bed backend `idx` (IPv4) out of a second interface, `LB_IF2`, created
    /// on first use; returns that interface's index.
    pub fn route_backend_via_second_port(&self, idx: usize) -> u32 {
        if xdp_lb::dataplane::ifindex(LB_IF2).is_none() {
            sh(&[
                "ip", "link", "add", LB_IF2, "type", "veth", "peer", "name", "peer1",
            ]);
            sh(&["ip", "link", "set", LB_IF2, "up"]);
            sh(&["ip", "link", "set", "peer1", "up"]);
        }
        let host = format!("{}/32", BACKENDS4[idx]);
        sh(&["ip", "route", "replace", &host, "dev", LB_IF2]);
        sh(&[
            "ip",
            "neigh",
            "replace",
            &BACKENDS4[idx].to_string(),
            "lladdr",
            &mac(&BACKEND_MACS[idx]),
            "dev",
            LB_IF2,
            "nud",
            "permanent",
        ]);
        xdp_lb::dataplane::ifindex(LB_IF2).expect("second port")
    }

    /// Adds a permanent neighbour entry (MAC `CLIENT_MAC`) for `ip`.
    pub fn add_client_neighbour(&self, ip: &str) {
        sh(&[
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac(&CLIENT_MAC),
            "dev",
            LB_IF,
            "nud",
            "permanent",
        ]);
    }

    /// Loads the program and programs `services` (service id = index in the slice).
    pub fn load(&self, services: &[SvcSpec]) -> AyaDataplane {
        self.load_sized(services, 4096)
    }

    pub fn load_sized(&self, services: &[SvcSpec], flow_table_size: u32) -> AyaDataplane {
        self.load_variant(services, flow_table_size, &[], None)
    }

    /// `load_sized` with some maps' capacities replaced, of another build's object if
    /// `object` is given (`AyaDataplane::load_object`).
    pub fn load_variant(
        &self,
        services: &[SvcSpec],
        flow_table_size: u32,
        resize: &[(&str, u32)],
        object: Option<&[u8]>,
    ) -> AyaDataplane {
        *self.specs.borrow_mut() = services.to_vec();
        let mut dp = AyaDataplane::load_object(
            object.unwrap_or(xdp_lb::dataplane::EBPF_OBJECT),
            MapSizes {
                ring_entries: (services.len() as u32).max(1) * 2 * RING_STRIDE,
                flow_table_size,
            },
            resize,
        )
        .expect("load XDP object");
        let mut plan = Plan::default();
        for i in 0..3u32 {
            for (id, addr, family) in [
                (i, words4(BACKENDS4[i as usize]), FAMILY_V4),
                (i + 3, words6(BACKENDS6[i as usize]), FAMILY_V6),
            ] {
                plan.backend_writes.push((
                    id,
                    Backend {
                        addr,
                        port: wire_port(BACKEND_PORT),
                        family,
                        state: BACKEND_ACTIVE,
                        generation: 1,
                        weight: 1,
                    },
                ));
            }
        }
        // NAT backends' replies map back to the VIP; an endpoint (address, port,
        // protocol) used by two NAT services of the bed is shared: per-flow entries.
        for (i, s) in services.iter().enumerate() {
            if s.flags & SVC_FWD_DSR != 0 {
                continue;
            }
            let shared = services
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && s.shares_backends_with(o));
            for b in 0..3 {
                let addr = if s.family == FAMILY_V4 {
                    words4(BACKENDS4[b])
                } else {
                    words6(BACKENDS6[b])
                };
                let key = ServiceKey {
                    addr,
                    port: wire_port(BACKEND_PORT),
                    proto: s.proto,
                    family: s.family,
                };
                let flags = if shared { REPLY_PER_FLOW } else { 0 };
                plan.reply_writes.push((
                    key,
                    ReplyTarget {
                        vip: s.key().addr,
                        vport: s.key().port,
                        flags,
                    },
                ));
            }
        }
        dp.apply(&plan).expect("program backends");
        for (id, s) in services.iter().enumerate() {
            let table: Vec<u32> = ring_pattern(RING)
                .iter()
                .map(|b| b + s.backend_base())
                .collect();
            self.publish_raw(&mut dp, id as u32, &table, 0);
        }
        // Each backend's owner, as the control plane records it: the bed's services
        // of one family share its three backends, so the first service of each family
        // owns them (the program finds an established flow's service through its
        // backend's owner; flows of the other services look SERVICES up).
        let mut owners = Plan::default();
        for (id, s) in services.iter().enumerate() {
            for b in 0..3 {
                let backend = b + s.backend_base();
                if !owners.owner_writes.iter().any(|(o, _)| *o == backend) {
                    owners.owner_writes.push((backend, id as u32 + 1));
                }
            }
        }
        dp.apply(&owners).expect("record backend owners");
        dp
    }

    /// Writes a new table for service `id` into `slot` and publishes it. `table`
    /// holds bed backend indexes (0-2), translated to the service family's ids.
    pub fn publish_ring(&self, dp: &mut AyaDataplane, id: u32, table: &[u32], slot: u32) {
        let base = self.specs.borrow()[id as usize].backend_base();
        let t: Vec<u32> = table
            .iter()
            .map(|b| if *b == u32::MAX { *b } else { b + base })
            .collect();
        self.publish_raw(dp, id, &t, slot);
    }

    fn publish_raw(&self, dp: &mut AyaDataplane, id: u32, table: &[u32], slot: u32) {
        let specs = self.specs.borrow();
        let spec = specs[id as usize];
        let shared = specs
            .iter()
            .enumerate()
            .any(|(j, o)| j != id as usize && spec.shares_backends_with(o));
        let flags = spec.flags | if shared { SVC_REVERSE_PER_FLOW } else { 0 };
        drop(specs);
        let offset = (id * 2 + slot) * RING_STRIDE;
        let plan = Plan {
            ring_writes: vec![(offset, table.to_vec())],
            service_writes: vec![(
                spec.key(),
                Service {
                    id,
                    ring_offset: offset,
                    ring_size: table.len() as u32,
                    flags,
                },
            )],
            ..Default::default()
        };
        dp.apply(&plan).expect("publish ring");
    }

    /// Gives service `id` other flags (a scheduler or forwarding switch), publishing
    /// the bed's table again with them, as a reload would.
    pub fn set_service_flags(&self, dp: &mut AyaDataplane, id: u32, flags: u32) {
        let base = {
            let mut specs = self.specs.borrow_mut();
            specs[id as usize].flags = flags;
            specs[id as usize].backend_base()
        };
        let table: Vec<u32> = ring_pattern(RING).iter().map(|b| b + base).collect();
        self.publish_raw(dp, id, &table, 0);
    }

    /// Publishes a table of raw backend ids (not bed indexes) for service `id`: the
    /// scheduler cases use backend slots beyond the bed's six.
    pub fn publish_ids(&self, dp: &mut AyaDataplane, id: u32, ids: &[u32], slot: u32) {
        self.publish_raw(dp, id, ids, slot);
    }

    /// Backend slots `first..first + weights.len()`, IPv4, at the bed's backend
    /// addresses in turn (so every one is reachable), with the given weights: a large
    /// pool for the scheduler cases. Slot `first + i` sits at `BACKENDS4[i % 3]`.
    pub fn add_pool(&self, dp: &mut AyaDataplane, first: u32, weights: &[u32]) {
        let plan = Plan {
            backend_writes: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| {
                    (
                        first + i as u32,
                        Backend {
                            addr: words4(BACKENDS4[i % 3]),
                            port: wire_port(BACKEND_PORT),
                            family: FAMILY_V4,
                            state: BACKEND_ACTIVE,
                            generation: 1,
                            weight,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        dp.apply(&plan).expect("backend pool");
    }

    /// Sets bed backend `idx` (both families) to `state`.
    pub fn set_backend_state(&self, dp: &mut AyaDataplane, idx: u32, state: u8) {
        let mut plan = Plan::default();
        let i = idx as usize;
        for (id, addr, family) in [
            (idx, words4(BACKENDS4[i]), FAMILY_V4),
            (idx + 3, words6(BACKENDS6[i]), FAMILY_V6),
        ] {
            plan.backend_writes.push((
                id,
                Backend {
                    addr,
                    port: wire_port(BACKEND_PORT),
                    family,
                    state,
                    generation: 1,
                    weight: 1,
                },
            ));
        }
        dp.apply(&plan).expect("backend state");
    }
}

/// CONNS[id]: the least-conn count of backend slot `id`.
pub fn conns(dp: &mut AyaDataplane, id: u32) -> i64 {
    dp.conn_count(id).expect("CONNS entry")
}

/// Overwrites CONNS[id], as the control plane's reconciliation does.
pub fn set_conns(dp: &mut AyaDataplane, id: u32, n: i64) {
    dp.set_conn_count(id, n).expect("CONNS write");
}

/// A TCP SYN (a new connection) or UDP datagram over IPv4.
#[allow(clippy::too_many_arguments)]
pub fn v4(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
    smac: [u8; 6],
    dmac: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    frame(
        proto,
        true,
        src.into(),
        dst.into(),
        (sport, dport),
        ttl,
        (smac, dmac),
        payload,
    )
}

/// A TCP SYN (a new connection) or UDP datagram over IPv6.
#[allow(clippy::too_many_arguments)]
pub fn v6(
    proto: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    hop: u8,
    smac: [u8; 6],
    dmac: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    frame(
        proto,
        true,
        src.into(),
        dst.into(),
        (sport, dport),
        hop,
        (smac, dmac),
        payload,
    )
}

/// Like `v4`/`v6` with TCP, but an ACK of an established connection instead of a SYN.
#[allow(clippy::too_many_arguments)]
pub fn tcp_ack(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    ttl: u8,
    smac: [u8; 6],
    dmac: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    frame(
        PROTO_TCP,
        false,
        src,
        dst,
        (sport, dport),
        ttl,
        (smac, dmac),
        payload,
    )
}

/// A TCP ACK of an established connection (`tcp_ack`) or a UDP datagram (`v4`/`v6`),
/// of either family: for tests that run the same case over both protocols.
#[allow(clippy::too_many_arguments)]
pub fn l4_packet(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    ttl: u8,
    smac: [u8; 6],
    dmac: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    match (proto, src, dst) {
        (PROTO_TCP, ..) => tcp_ack(src, dst, sport, dport, ttl, smac, dmac, payload),
        (_, IpAddr::V4(s), IpAddr::V4(d)) => {
            v4(proto, s, d, sport, dport, ttl, smac, dmac, payload)
        }
        (_, IpAddr::V6(s), IpAddr::V6(d)) => {
            v6(proto, s, d, sport, dport, ttl, smac, dmac, payload)
        }
        _ => panic!("mixed address families"),
    }
}

/// An untagged Ethernet frame built by etherparse, checksums computed in full.
#[allow(clippy::too_many_arguments)]
fn frame(
    proto: u8,
    syn: bool,
    src: IpAddr,
    dst: IpAddr,
    (sport, dport): (u16, u16),
    ttl: u8,
    (smac, dmac): ([u8; 6], [u8; 6]),
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), ttl),
        _ => panic!("mixed address families"),
    };
    let mut out = Vec::new();
    let written = if proto != PROTO_TCP {
        b.udp(sport, dport).write(&mut out, payload)
    } else if syn {
        b.tcp(sport, dport, 1000, 64240)
            .syn()
            .write(&mut out, payload)
    } else {
        b.tcp(sport, dport, 1001, 64240)
            .ack(1)
            .write(&mut out, payload)
    };
    written.expect("building a test frame");
    out
}

#[allow(clippy::too_many_arguments)]
pub fn v4_vlan(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
    smac: [u8; 6],
    dmac: [u8; 6],
    vlan: u16,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .single_vlan(VlanId::try_new(vlan).unwrap())
        .ipv4(src.octets(), dst.octets(), ttl)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut out, b"v")
        .unwrap();
    out
}

/// Clears the UDP checksum of an untagged IPv4 frame ("no checksum").
pub fn zero_udp_checksum_v4(frame: &mut [u8]) {
    frame[14 + 20 + 6] = 0;
    frame[14 + 20 + 7] = 0;
}

pub fn icmp4_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, b"ping")
        .unwrap();
    out
}

pub fn arp_request() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&CLIENT4.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&VIP4.octets());
    f.resize(60, 0);
    f
}

/// A TCP SYN to the IPv4 VIP with 4 bytes of IP options (IHL 6), checksums valid.
pub fn v4_with_options() -> Vec<u8> {
    let plain = v4(
        PROTO_TCP, CLIENT4, VIP4, 40000, 80, 64, CLIENT_MAC, LB_MAC, b"",
    );
    let mut f = plain[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    f.extend_from_slice(&plain[34..]);
    f[14] = 0x46;
    let tot = (u16::from_be_bytes([f[16], f[17]]) + 4).to_be_bytes();
    f[16..18].copy_from_slice(&tot);
    f[24] = 0;
    f[25] = 0;
    let c = ones_complement(&f[14..38]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// An IPv6 frame to the VIP whose next header is a fragment header.
pub fn v6_fragment() -> Vec<u8> {
    let plain = v6(
        PROTO_TCP, CLIENT6, VIP6, 40000, 80, 64, CLIENT_MAC, LB_MAC, b"",
    );
    let mut f = plain[..54].to_vec();
    f[20] = 44; // next header: fragment
    f.extend_from_slice(&[PROTO_TCP, 0, 0, 1, 0, 0, 0, 7]); // offset 0, M=1
    f.extend_from_slice(&plain[54..]);
    let len = (u16::from_be_bytes([f[18], f[19]]) + 8).to_be_bytes();
    f[18..20].copy_from_slice(&len);
    f
}

fn ones_complement(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The data plane's flow key of an untagged frame built by `v4`/`v6`.
pub fn flow_key_of(f: &[u8]) -> FlowKey {
    let et = u16::from_be_bytes([f[12], f[13]]);
    let w = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let p = |b: &[u8]| u16::from_ne_bytes([b[0], b[1]]);
    if et == 0x0800 {
        FlowKey {
            src: [w(&f[26..]), 0, 0, 0],
            dst: [w(&f[30..]), 0, 0, 0],
            sport: p(&f[34..]),
            dport: p(&f[36..]),
            proto: f[23],
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    } else {
        FlowKey {
            src: core::array::from_fn(|i| w(&f[22 + 4 * i..])),
            dst: core::array::from_fn(|i| w(&f[38 + 4 * i..])),
            sport: p(&f[54..]),
            dport: p(&f[56..]),
            proto: f[20],
            family: FAMILY_V6,
            _pad: [0; 2],
        }
    }
}

/// Asserts two frames are byte-identical, naming the first differing offset.
pub fn assert_frame_eq(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: frames differ at byte {first} (len {} vs {})\n got: {:02x?}\nwant: {:02x?}",
            got.len(),
            want.len(),
            got,
            want
        );
    }
}

/// Offset of the L4 header of an untagged IPv4 (IHL from the header) or IPv6 frame.
fn l4_offset(f: &[u8]) -> usize {
    if u16::from_be_bytes([f[12], f[13]]) == 0x0800 {
        14 + 4 * (f[14] & 0xf) as usize
    } else {
        14 + 40
    }
}

/// Recomputes the IPv4 header checksum and the TCP/UDP checksum of an untagged
/// frame over the lengths its headers state (clamped to the frame), so a test can
/// change one field and have that field be the only thing wrong.
pub fn refresh_checksums(f: &mut [u8]) {
    let v4 = u16::from_be_bytes([f[12], f[13]]) == 0x0800;
    let l4 = l4_offset(f);
    let (proto, l4_len, pseudo) = if v4 {
        f[24] = 0;
        f[25] = 0;
        let c = ones_complement(&f[14..l4]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
        (f[23], tot.saturating_sub(l4 - 14), f[26..34].to_vec())
    } else {
        let pl = u16::from_be_bytes([f[18], f[19]]) as usize;
        (f[20], pl, f[22..54].to_vec())
    };
    let l4_len = l4_len.min(f.len() - l4);
    let check = l4 + if proto == PROTO_TCP { 16 } else { 6 };
    if check + 2 > f.len() {
        return;
    }
    f[check] = 0;
    f[check + 1] = 0;
    let mut buf = pseudo;
    buf.extend_from_slice(&[0, proto]);
    buf.extend_from_slice(&(l4_len as u16).to_be_bytes());
    buf.extend_from_slice(&f[l4..l4 + l4_len]);
    let mut c = ones_complement(&buf);
    if proto != PROTO_TCP && c == 0 {
        c = 0xffff;
    }
    f[check..check + 2].copy_from_slice(&c.to_be_bytes());
}

/// Sets the TCP flags byte of an untagged frame (checksums refreshed).
pub fn with_tcp_flags(mut f: Vec<u8>, flags: u8) -> Vec<u8> {
    let l4 = l4_offset(&f);
    f[l4 + 13] = flags;
    refresh_checksums(&mut f);
    f
}

/// Sets the TCP data offset (in 32-bit words) of an untagged frame (checksums
/// refreshed).
pub fn with_tcp_doff(mut f: Vec<u8>, doff: u8) -> Vec<u8> {
    let l4 = l4_offset(&f);
    f[l4 + 12] = (doff << 4) | (f[l4 + 12] & 0xf);
    refresh_checksums(&mut f);
    f
}

/// Flips bits of the L4 checksum of an untagged frame.
pub fn with_bad_l4_checksum(mut f: Vec<u8>) -> Vec<u8> {
    let l4 = l4_offset(&f);
    let proto = if u16::from_be_bytes([f[12], f[13]]) == 0x0800 {
        f[23]
    } else {
        f[20]
    };
    let check = l4 + if proto == PROTO_TCP { 16 } else { 6 };
    f[check] ^= 0x5a;
    f
}

/// A TCP SYN to the IPv4 VIP carrying `options` (a multiple of 4 bytes) after the
/// fixed header, data offset and checksums set to match.
pub fn v4_syn_with_options(sport: u16, options: &[u8]) -> Vec<u8> {
    let plain = v4(
        PROTO_TCP, CLIENT4, VIP4, sport, 80, 64, CLIENT_MAC, LB_MAC, b"",
    );
    let mut f = plain.clone();
    f.extend_from_slice(options);
    let tot = (u16::from_be_bytes([f[16], f[17]]) + options.len() as u16).to_be_bytes();
    f[16..18].copy_from_slice(&tot);
    f[14 + 20 + 12] = ((5 + options.len() / 4) as u8) << 4;
    refresh_checksums(&mut f);
    f
}

/// An ICMP error from `src` to `dst` that quotes `quoted` (an IP packet: a frame
/// without its Ethernet header), checksums computed in full by etherparse. With
/// `mtu` set: IPv4 fragmentation needed, IPv6 packet too big; without: port
/// unreachable.
pub fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    (smac, dmac): ([u8; 6], [u8; 6]),
    mtu: Option<u16>,
    quoted: &[u8],
) -> Vec<u8> {
    use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type};
    let b = PacketBuilder::ethernet2(smac, dmac);
    let mut out = Vec::new();
    let written = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let code = match mtu {
                Some(next_hop_mtu) => {
                    icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu }
                }
                None => icmpv4::DestUnreachableHeader::Port,
            };
            b.ipv4(s.octets(), d.octets(), ttl)
                .icmpv4(Icmpv4Type::DestinationUnreachable(code))
                .write(&mut out, quoted)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ty = match mtu {
                Some(mtu) => Icmpv6Type::PacketTooBig { mtu: mtu.into() },
                None => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
            };
            b.ipv6(s.octets(), d.octets(), ttl)
                .icmpv6(ty)
                .write(&mut out, quoted)
        }
        _ => panic!("mixed address families"),
    };
    written.expect("building an ICMP error");
    out
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The program under test: the same data path as XDP (`xdp_lb`) or on an skb at tc
/// ingress (`tc_lb`). Cases whose behaviour must not differ run on both.
#[derive(Clone, Copy, Debug)]
pub enum Prog {
    Xdp,
    Tc,
}

pub const BOTH: [Prog; 2] = [Prog::Xdp, Prog::Tc];

impl Prog {
    /// Runs the program on `input` arriving on the bed's interface.
    pub fn run(self, dp: &mut AyaDataplane, input: &[u8]) -> (u32, Vec<u8>) {
        self.run_gso(dp, input, 0)
    }

    /// `run`; on tc with `input` a GSO skb of `gso_size` payload bytes per segment
    /// (0: not GSO). An XDP buffer is never GSO.
    pub fn run_gso(self, dp: &mut AyaDataplane, input: &[u8], gso_size: u32) -> (u32, Vec<u8>) {
        let ifindex = xdp_lb::dataplane::ifindex(LB_IF).expect("bed interface");
        let r = match self {
            Prog::Xdp => {
                assert_eq!(gso_size, 0, "an XDP buffer is never GSO");
                dp.test_run(xdp_lb::dataplane::PROGRAM, input, ifindex, 1)
                    .expect("BPF_PROG_TEST_RUN")
            }
            Prog::Tc => {
                // As `run` adds every attached interface; the way back out of the
                // ingress is a redirect on tc, so it must be listed too.
                dp.add_tc_port(LB_IF, ifindex).expect("TC_PORTS");
                let segs = if gso_size == 0 {
                    0
                } else {
                    (input.len() as u32).div_ceil(gso_size)
                };
                dp.test_run_tc_gso(input, ifindex, gso_size, segs)
                    .expect("BPF_PROG_TEST_RUN (tc)")
            }
        };
        (r.action, r.frame)
    }

    /// The program's action for what XDP does with `xdp_action`: on tc, TX and
    /// REDIRECT are both a redirect (TC_ACT_REDIRECT), PASS is TC_ACT_OK, DROP is
    /// TC_ACT_SHOT.
    pub fn act(self, xdp_action: u32) -> u32 {
        match (self, xdp_action) {
            (Prog::Xdp, a) => a,
            (Prog::Tc, XDP_PASS) => 0,
            (Prog::Tc, XDP_DROP) => 2,
            (Prog::Tc, XDP_TX | XDP_REDIRECT) => 7,
            (Prog::Tc, a) => panic!("no tc equivalent of XDP action {a}"),
        }
    }

    /// Lets the program send through `iface`, as `run` does for each interface.
    pub fn add_port(self, dp: &mut AyaDataplane, iface: &str, ifindex: u32) {
        match self {
            Prog::Xdp => dp.add_tx_port(ifindex).unwrap(),
            Prog::Tc => dp.add_tc_port(iface, ifindex).unwrap(),
        }
    }
}
