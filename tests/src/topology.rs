//! The namespace topology every test and the demo use. All of it lives in namespaces
//! the builder creates; nothing links to the root namespace:
//!
//! ```text
//!  client (198.18.0.10, 2001:db8::10) ─┐
//!  lb (198.18.0.1 + 198.18.1.1,        ├─ br0 in the bridge namespace
//!      2001:db8::1 + 2001:db8:1::1)   ─┤
//!  backend i (198.18.1.(10+i),         │
//!             2001:db8:1::(10+i))     ─┘
//! ```
//!
//! The client routes the VIPs (198.18.100.0/24, 2001:db8:100::/64) and the backend
//! subnet through the lb; backends' default route is the lb, so NAT replies come back
//! through it. In DSR mode the VIP sits on each backend's `lo` and backends reach the
//! client subnet on-link, so replies bypass the lb.
//!
//! With `client_behind_router(mtu)`, the client sits instead behind a router
//! namespace on the bridge (198.18.0.254, 2001:db8::fe), in 198.18.2.0/24 and
//! 2001:db8:2::/64, and the router's interface towards it has MTU `mtu` while the
//! client's has 1500: the client announces a full-size MSS, so packets from the
//! VIP to the client need path-MTU discovery through the router.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    binary,
    error::Result,
    lb::XdpLbProcess,
    lbconfig::Forwarding,
    netns::NetNs,
    servers::{BackendServers, ServerSpec},
};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const LB_FRONT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const LB_BACK4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const LB_FRONT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const LB_BACK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// `client_behind_router`: the router on the bridge and the client behind it.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
pub const ROUTED_CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
pub const ROUTED_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);

/// Interface name of every host's link to the bridge (names are per namespace).
pub const IFACE: &str = "eth0";
/// The lb's port on the bridge: the peer of the lb's `eth0`.
pub const LB_BRIDGE_PORT: &str = "vl";

/// Default server ports: line protocol over TCP, UDP responder, HTTP.
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
pub const HTTP_PORT: u16 = 8080;

pub fn backend4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + u8::try_from(i).expect("few backends"))
}

pub fn backend6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        1,
        0,
        0,
        0,
        0,
        0x10 + u16::try_from(i).expect("few backends"),
    )
}

pub struct TopologyBuilder {
    backends: usize,
    mode: Forwarding,
    xdp_pass: bool,
    tcp_port: Option<u16>,
    udp_port: Option<u16>,
    http_port: Option<u16>,
    router_mtu: Option<u32>,
    default_offloads: bool,
}

impl TopologyBuilder {
    pub fn new(backends: usize, mode: Forwarding) -> Self {
        Self {
            backends,
            mode,
            xdp_pass: false,
            tcp_port: Some(TCP_PORT),
            udp_port: Some(UDP_PORT),
            http_port: Some(HTTP_PORT),
            router_mtu: None,
            default_offloads: false,
        }
    }

    /// Leaves TX checksum offload on where traffic starts (client, backends), as a
    /// veth has it by default: packets from local sockets then carry partial
    /// checksums (and TSO/GSO sends large segments). The tc attach mode keeps them
    /// right; XDP does not (see `no_tx_checksum`).
    pub fn default_offloads(mut self) -> Self {
        self.default_offloads = true;
        self
    }

    /// Puts the client behind a router whose link towards it has MTU `mtu`.
    pub fn client_behind_router(mut self, mtu: u32) -> Self {
        self.router_mtu = Some(mtu);
        self
    }

    /// Attach `xdp-lb xdp-pass` to the lb's bridge port: XDP_TX out of the lb's veth
    /// only arrives when the peer has an XDP program.
    pub fn xdp_pass(mut self, on: bool) -> Self {
        self.xdp_pass = on;
        self
    }

    pub fn ports(mut self, tcp: Option<u16>, udp: Option<u16>, http: Option<u16>) -> Self {
        self.tcp_port = tcp;
        self.udp_port = udp;
        self.http_port = http;
        self
    }

    pub fn build(self) -> Result<Topology> {
        let bridge = NetNs::create("b")?;
        let client = NetNs::create("c")?;
        let lb = NetNs::create("l")?;
        let router = match self.router_mtu {
            Some(_) => Some(NetNs::create("r")?),
            None => None,
        };
        let mut backend_ns = Vec::new();
        for i in 1..=self.backends {
            backend_ns.push(NetNs::create(&format!("s{i}"))?);
        }
        let mut topo = Topology {
            servers: Vec::new(),
            server_specs: Vec::new(),
            xdp_pass: None,
            mode: self.mode,
            backends: Vec::new(),
            client,
            lb,
            router,
            bridge,
        };
        for (i, ns) in backend_ns.into_iter().enumerate() {
            topo.backends.push(Backend {
                index: i + 1,
                name: format!("backend-{}", i + 1),
                ns,
            });
        }

        topo.bridge
            .sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        topo.bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        topo.bridge.ip(&["link", "set", "br0", "up"])?;
        for ns in topo.hosts() {
            host_sysctls(ns)?;
        }
        forwarding_sysctls(&topo.lb)?;

        match (&topo.router, self.router_mtu) {
            (Some(r), Some(mtu)) => route_client(&topo.bridge, r, &topo.client, mtu)?,
            _ => plug(&topo.bridge, "vc", &topo.client)?,
        }
        plug(&topo.bridge, LB_BRIDGE_PORT, &topo.lb)?;
        for b in &topo.backends {
            plug(&topo.bridge, &format!("vs{}", b.index), &b.ns)?;
        }

        if topo.router.is_none() {
            client_on_bridge(&topo.client)?;
        }
        for a in [
            format!("{LB_FRONT4}/24"),
            format!("{LB_BACK4}/24"),
            format!("{LB_FRONT6}/64"),
            format!("{LB_BACK6}/64"),
        ] {
            addr(&topo.lb, &a)?;
        }
        if topo.router.is_some() {
            lb_to_routed_client(&topo.lb)?;
        }
        if !self.default_offloads {
            no_tx_checksum(&topo.client)?;
        }

        for b in &topo.backends {
            addr(&b.ns, &format!("{}/24", backend4(b.index)))?;
            addr(&b.ns, &format!("{}/64", backend6(b.index)))?;
            b.ns.ip(&[
                "-4",
                "route",
                "add",
                "default",
                "via",
                &LB_BACK4.to_string(),
            ])?;
            b.ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &LB_BACK6.to_string(),
            ])?;
            if !self.default_offloads {
                no_tx_checksum(&b.ns)?;
            }
            if self.mode == Forwarding::Dsr {
                dsr_backend(&b.ns, topo.router.is_some())?;
            }
        }

        for b in &topo.backends {
            let mut udp_addrs = vec![IpAddr::V4(backend4(b.index)), IpAddr::V6(backend6(b.index))];
            if self.mode == Forwarding::Dsr {
                udp_addrs.extend([IpAddr::V4(VIP4), IpAddr::V6(VIP6)]);
            }
            let spec = ServerSpec {
                tcp_port: self.tcp_port,
                udp_port: self.udp_port,
                http_port: self.http_port,
                udp_addrs,
            };
            topo.servers
                .push(Some(BackendServers::start(&b.ns, &b.name, &spec)?));
            topo.server_specs.push(spec);
        }

        topo.warm_up()?;
        topo.set_xdp_pass(self.xdp_pass)?;
        Ok(topo)
    }
}

pub struct Backend {
    /// 1-based, as in the addresses and the name.
    pub index: usize,
    /// `backend-N`: what its servers answer.
    pub name: String,
    pub ns: NetNs,
}

impl Backend {
    pub fn v4(&self) -> Ipv4Addr {
        backend4(self.index)
    }

    pub fn v6(&self) -> Ipv6Addr {
        backend6(self.index)
    }
}

/// A built topology. Fields drop in order: servers and processes stop before the
/// namespaces go away.
pub struct Topology {
    /// Per backend (index - 1); `None` while stopped with `stop_servers`.
    servers: Vec<Option<BackendServers>>,
    server_specs: Vec<ServerSpec>,
    xdp_pass: Option<XdpLbProcess>,
    pub mode: Forwarding,
    pub backends: Vec<Backend>,
    pub client: NetNs,
    pub lb: NetNs,
    /// `client_behind_router` only.
    pub router: Option<NetNs>,
    pub bridge: NetNs,
}

impl Topology {
    fn hosts(&self) -> impl Iterator<Item = &NetNs> {
        [&self.client, &self.lb]
            .into_iter()
            .chain(self.router.iter())
            .chain(self.backends.iter().map(|b| &b.ns))
    }

    /// The client's address.
    pub fn client_addr(&self, v6: bool) -> IpAddr {
        match (self.router.is_some(), v6) {
            (false, false) => CLIENT4.into(),
            (false, true) => CLIENT6.into(),
            (true, false) => ROUTED_CLIENT4.into(),
            (true, true) => ROUTED_CLIENT6.into(),
        }
    }

    pub fn backend(&self, index: usize) -> &Backend {
        &self.backends[index - 1]
    }

    pub fn vip(&self, v6: bool, port: u16) -> SocketAddr {
        if v6 {
            SocketAddr::new(IpAddr::V6(VIP6), port)
        } else {
            SocketAddr::new(IpAddr::V4(VIP4), port)
        }
    }

    /// Stops backend `index`'s servers: its listening sockets close, so new
    /// connections to it are refused (connections already open keep their threads).
    pub fn stop_servers(&mut self, index: usize) {
        // Drop joins the accept loops, so the ports are closed when this returns.
        self.servers[index - 1] = None;
    }

    /// Starts backend `index`'s servers again, as the topology first did.
    pub fn start_servers(&mut self, index: usize) -> Result<()> {
        let b = &self.backends[index - 1];
        let servers = BackendServers::start(&b.ns, &b.name, &self.server_specs[index - 1])?;
        self.servers[index - 1] = Some(servers);
        Ok(())
    }

    /// Attaches (`xdp-lb xdp-pass`) or detaches the XDP_PASS program on the lb's bridge
    /// port. Benchmarks detach it to measure plain routing with no XDP anywhere (a
    /// native program on a veth turns TSO off on its peer).
    pub fn set_xdp_pass(&mut self, on: bool) -> Result<()> {
        if !on {
            self.xdp_pass = None;
        } else if self.xdp_pass.is_none() {
            let bin = binary::xdp_lb_bin()?;
            let args = [
                "xdp-pass".to_string(),
                "--iface".into(),
                LB_BRIDGE_PORT.into(),
            ];
            self.xdp_pass = Some(XdpLbProcess::start(&self.bridge, &bin, &args)?);
        }
        Ok(())
    }

    /// Starts `xdp-lb ARGS` in the lb namespace and waits until it is ready.
    pub fn start_lb(&self, args: &[String]) -> Result<XdpLbProcess> {
        let bin = binary::xdp_lb_bin()?;
        XdpLbProcess::start(&self.lb, &bin, args)
    }

    /// `start_lb` with another `xdp-lb` binary (an upgrade).
    pub fn start_lb_with(&self, bin: &std::path::Path, args: &[String]) -> Result<XdpLbProcess> {
        XdpLbProcess::start(&self.lb, bin, args)
    }

    /// Pings every host from the lb: proves the links and fills neighbour tables, so
    /// the first test packet does not wait for ARP/ND.
    fn warm_up(&self) -> Result<()> {
        let mut targets = vec![
            self.client_addr(false).to_string(),
            self.client_addr(true).to_string(),
        ];
        for b in &self.backends {
            targets.push(b.v4().to_string());
            targets.push(b.v6().to_string());
        }
        for t in &targets {
            let mut last = None;
            for _ in 0..3 {
                match self.lb.exec(&["ping", "-c1", "-W2", "-q", t]) {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// A veth pair: `port` on the bridge, `eth0` in `host`.
fn plug(bridge: &NetNs, port: &str, host: &NetNs) -> Result<()> {
    bridge.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        IFACE,
        "netns",
        host.name(),
    ])?;
    bridge.ip(&["link", "set", port, "master", "br0", "up"])?;
    host.ip(&["link", "set", IFACE, "up"])?;
    Ok(())
}

fn addr(ns: &NetNs, cidr: &str) -> Result<()> {
    if cidr.contains(':') {
        ns.ip(&["addr", "add", cidr, "dev", IFACE, "nodad"])?;
    } else {
        ns.ip(&["addr", "add", cidr, "dev", IFACE])?;
    }
    Ok(())
}

/// Set before the veths arrive so the interfaces inherit them from `default`.
fn host_sysctls(ns: &NetNs) -> Result<()> {
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net/ipv6/conf/{scope}/accept_dad"), "0")?;
        // Redirects would teach the client to bypass the lb on the shared segment.
        ns.sysctl(&format!("net/ipv6/conf/{scope}/accept_redirects"), "0")?;
        ns.sysctl(&format!("net/ipv4/conf/{scope}/accept_redirects"), "0")?;
        ns.sysctl(&format!("net/ipv4/conf/{scope}/rp_filter"), "0")?;
    }
    Ok(())
}

/// bpf_fib_lookup only answers when forwarding is on.
fn forwarding_sysctls(lb: &NetNs) -> Result<()> {
    lb.sysctl("net/ipv4/ip_forward", "1")?;
    lb.sysctl("net/ipv6/conf/all/forwarding", "1")?;
    for scope in ["all", "default"] {
        lb.sysctl(&format!("net/ipv4/conf/{scope}/send_redirects"), "0")?;
    }
    Ok(())
}

/// Rewritten packets lose the partial checksum state of veth TX offload (see
/// shared/TOOLCHAIN.md): senders must compute full checksums.
fn no_tx_checksum(ns: &NetNs) -> Result<()> {
    ns.exec(&["ethtool", "-K", IFACE, "tx", "off"])?;
    Ok(())
}

/// The client on the bridge, with the VIPs and the backend subnet through the lb.
fn client_on_bridge(client: &NetNs) -> Result<()> {
    addr(client, &format!("{CLIENT4}/24"))?;
    addr(client, &format!("{CLIENT6}/64"))?;
    for net in ["198.18.100.0/24", "198.18.1.0/24"] {
        client.ip(&["-4", "route", "add", net, "via", &LB_FRONT4.to_string()])?;
    }
    for net in ["2001:db8:100::/64", "2001:db8:1::/64"] {
        client.ip(&["-6", "route", "add", net, "via", &LB_FRONT6.to_string()])?;
    }
    Ok(())
}

/// The client behind `router`: the router on the bridge, a veth pair between it and
/// the client whose router end has MTU `mtu`, routes both ways. The router answers
/// every oversized packet with an ICMP error (no rate limit), so a test never
/// depends on which one got through.
fn route_client(bridge: &NetNs, router: &NetNs, client: &NetNs, mtu: u32) -> Result<()> {
    forwarding_sysctls(router)?;
    router.sysctl("net/ipv4/icmp_ratelimit", "0")?;
    router.sysctl("net/ipv6/icmp/ratelimit", "0")?;
    plug(bridge, "vr", router)?;
    addr(router, &format!("{ROUTER4}/24"))?;
    addr(router, &format!("{ROUTER6}/64"))?;
    router.ip(&[
        "link",
        "add",
        "eth1",
        "mtu",
        &mtu.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        IFACE,
        "netns",
        client.name(),
    ])?;
    router.ip(&["link", "set", "eth1", "up"])?;
    client.ip(&["link", "set", IFACE, "up"])?;
    router.ip(&["addr", "add", "198.18.2.1/24", "dev", "eth1"])?;
    router.ip(&["addr", "add", "2001:db8:2::1/64", "dev", "eth1", "nodad"])?;
    addr(client, &format!("{ROUTED_CLIENT4}/24"))?;
    addr(client, &format!("{ROUTED_CLIENT6}/64"))?;
    client.ip(&["-4", "route", "add", "default", "via", "198.18.2.1"])?;
    client.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])?;
    for net in ["198.18.100.0/24", "198.18.1.0/24"] {
        router.ip(&["-4", "route", "add", net, "via", &LB_FRONT4.to_string()])?;
    }
    for net in ["2001:db8:100::/64", "2001:db8:1::/64"] {
        router.ip(&["-6", "route", "add", net, "via", &LB_FRONT6.to_string()])?;
    }
    Ok(())
}

/// The VIP on `lo` (accepting the lb's frames) without answering ARP for it, and the
/// client subnet on-link so replies go straight back (or, behind the router, through
/// it).
fn dsr_backend(ns: &NetNs, routed_client: bool) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
    ns.ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"])?;
    for scope in ["all", IFACE] {
        ns.sysctl(&format!("net/ipv4/conf/{scope}/arp_ignore"), "1")?;
        ns.sysctl(&format!("net/ipv4/conf/{scope}/arp_announce"), "2")?;
    }
    ns.ip(&["-4", "route", "add", "198.18.0.0/24", "dev", IFACE])?;
    ns.ip(&["-6", "route", "add", "2001:db8::/64", "dev", IFACE])?;
    if routed_client {
        ns.ip(&[
            "-4",
            "route",
            "add",
            "198.18.2.0/24",
            "via",
            &ROUTER4.to_string(),
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:2::/64",
            "via",
            &ROUTER6.to_string(),
        ])?;
    }
    Ok(())
}

/// The lb's way to the client behind the router (once the lb has its addresses).
fn lb_to_routed_client(lb: &NetNs) -> Result<()> {
    lb.ip(&[
        "-4",
        "route",
        "add",
        "198.18.2.0/24",
        "via",
        &ROUTER4.to_string(),
    ])?;
    lb.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:2::/64",
        "via",
        &ROUTER6.to_string(),
    ])?;
    Ok(())
}
