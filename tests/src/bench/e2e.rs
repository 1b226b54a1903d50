//! End-to-end benchmark in the namespace topology (NAT), in one run and interleaved:
//! keep-alive HTTP requests/s, new connections/s (connect, one request, close) and one
//! bulk TCP stream (iperf3, backend to client), each to the VIP through the balancer and
//! to a backend by plain kernel routing between the same namespaces.
//!
//! The backends are nginx (`return 200`, keep-alive, no access log, one worker per CPU)
//! and iperf3, fast enough that the path between client and backend matters. Every row
//! names its attach mode and the offloads of the interfaces it crossed; every figure is
//! the median of interleaved repetitions with its min-max; beside each rate is the
//! machine's CPU time per request (all CPUs, busy time from /proc/stat: other load on
//! the machine counts too, which is why the load average is printed) and which side
//! saturated. A failed request or stream fails the run, after one repeat of that
//! measurement (reported).
//!
//! `e2e` compares the balancer against plain routing (no XDP program anywhere) and
//! routing past the attached balancer (its XDP_PASS path), and the tc attach mode with
//! every offload on against plain routing with the same offloads. `veth` adds the
//! variants of the veth investigation: generic (SKB) mode, and TSO/GSO/GRO off on
//! every veth.
//!
//! `XDP_LB_BENCH_E2E_ROWS=word,...` and `XDP_LB_BENCH_E2E_METRICS=word,...` keep only
//! the rows and metrics whose names contain one of the words (e.g. `tc,offloads on`
//! and `new conn`): to profile one path (`perf record -a` beside it) or to repeat one
//! comparison without the rest.
//!
//! `XDP_LB_BENCH_PROG_STATS=1` also has the kernel time the balancer's program
//! (BPF_STATS_RUN_TIME): its runs and ns per request, connection or GB, printed under
//! each table. Off by default: the kernel then reads the clock twice per run, which
//! the balancer's rows pay and the routing rows do not.
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};

use super::pkt::{loadavg, Spread};
use crate::{
    cache_support::TempDir,
    lb::XdpLbProcess,
    lbconfig::{render, BackendSpec, ConfigFile, Forwarding, ServiceSpec},
    netns::NetNs,
    root,
    topology::{Topology, TopologyBuilder, HTTP_PORT, IFACE, LB_BRIDGE_PORT, VIP4},
};

/// Why a measurement may be repeated once. Measured with `nstat` in the client
/// namespace over three rounds of new connections: 8k-14k out-of-order segments
/// (`TCPOFOQueue`) with native XDP on the veths (the balancer, or only its XDP_PASS),
/// none by routing or through tc. veth's XDP receive path runs in NAPI, on whichever
/// CPU scheduled it, and hands skbs on through that CPU's backlog, so two segments of
/// a flow can overtake each other. With the client reusing ports, now and then that ends
/// a connection with a reset: about one request in 1-2 million failed on the native XDP
/// rows (a read error after the server's RST), none on the others.
const REPEATED: &str = "Repeated once after a failed request \
    (native XDP on veth reorders segments: see README, Known limits):";

const BULK_PORT: u16 = 5201;
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 32;

/// Where a row's traffic goes and what is attached on the way.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    /// To the VIP through xdp-lb in this mode.
    Vip(&'static str),
    /// To backend 2 (not in the service) routed by the lb's kernel, xdp-lb attached
    /// natively: the program's XDP_PASS path.
    PastLb,
    /// To backend 1 routed by the lb's kernel with no XDP program on any interface.
    Plain,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Offloads {
    /// As the topology sets them: TX checksum off on client and backends (XDP rewrites
    /// lose partial checksums, see TOOLCHAIN.md), which turns their TSO off; GSO and
    /// GRO at the kernel's defaults.
    Topology,
    /// TSO, GSO and GRO off on every veth of the path.
    SegOff,
    /// Every offload at the veth defaults, TX checksum on client and backends too
    /// (so TSO is on there): what the tc attach mode keeps correct.
    Default,
}

#[derive(Clone, Copy)]
struct Row {
    label: &'static str,
    path: Path,
    offloads: Offloads,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    KeepAlive,
    NewConns,
    Bulk,
}

const METRICS: [Metric; 3] = [Metric::KeepAlive, Metric::NewConns, Metric::Bulk];

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::KeepAlive => "keep-alive req/s",
            Metric::NewConns => "new conn/s",
            Metric::Bulk => "bulk Gbit/s",
        }
    }
    /// What one unit of the rate is, for the program-time lines.
    fn unit_name(self) -> &'static str {
        match self {
            Metric::KeepAlive => "request",
            Metric::NewConns => "connection",
            Metric::Bulk => "GB",
        }
    }
    /// Unit of the machine CPU column.
    fn cpu_unit(self) -> &'static str {
        match self {
            Metric::KeepAlive => "us/req",
            Metric::NewConns => "us/conn",
            Metric::Bulk => "ms/GB",
        }
    }
}

/// One measurement.
#[derive(Clone, Default)]
struct Sample {
    /// Requests/s, connections/s or Gbit/s.
    rate: f64,
    /// Machine CPU per unit (see `Metric::cpu_unit`).
    cpu_per_unit: f64,
    /// Client + server + softirq CPU per unit: the part other load on the machine
    /// hardly touches (softirq is where veth, XDP and forwarding run).
    own_per_unit: f64,
    /// Cores busy on the whole machine during the run.
    machine_cores: f64,
    /// Of which softirq (where veth, XDP and forwarding run).
    softirq_cores: f64,
    /// Cores the client (wrk / iperf3 -c) and the server (nginx workers / iperf3 -s) used.
    client_cores: f64,
    server_cores: f64,
    /// The balancer program's runs and run time per unit, with XDP_LB_BENCH_PROG_STATS.
    prog: Option<ProgTime>,
}

#[derive(Clone, Copy, Default)]
struct ProgTime {
    runs: f64,
    ns: f64,
}

impl ProgTime {
    /// Runs and run time of the balancer programs loaded now (BPF_STATS_RUN_TIME
    /// counts only while enabled).
    fn read() -> Self {
        let mut t = Self::default();
        for p in aya::programs::loaded_programs().flatten() {
            if matches!(p.name_as_str(), Some("xdp_lb" | "tc_lb")) {
                t.runs += p.run_count() as f64;
                t.ns += p.run_time().as_nanos() as f64;
            }
        }
        t
    }
}

/// Rows both `run` and `run_veth` measure.
const TC_VIP: Row = Row {
    label: "xdp-lb tc -> VIP, offloads on",
    path: Path::Vip("tc"),
    offloads: Offloads::Default,
};
const PLAIN_OFFLOADS_ON: Row = Row {
    label: "plain routing, offloads on",
    path: Path::Plain,
    offloads: Offloads::Default,
};
const PLAIN_NO_XDP: Row = Row {
    label: "plain routing, no XDP",
    path: Path::Plain,
    offloads: Offloads::Topology,
};

pub fn run() -> anyhow::Result<()> {
    let rows = [
        Row {
            label: "xdp-lb -> VIP",
            path: Path::Vip("native"),
            offloads: Offloads::Topology,
        },
        TC_VIP,
        PLAIN_OFFLOADS_ON,
        Row {
            label: "routed past xdp-lb (XDP_PASS)",
            path: Path::PastLb,
            offloads: Offloads::Topology,
        },
        PLAIN_NO_XDP,
    ];
    bench(&rows, 3, 5, true)
}

/// The veth investigation (issue #13): attach modes and segmentation offloads.
pub fn run_veth() -> anyhow::Result<()> {
    let rows = [
        Row {
            label: "xdp-lb native -> VIP",
            path: Path::Vip("native"),
            offloads: Offloads::Topology,
        },
        Row {
            label: "xdp-lb generic -> VIP",
            path: Path::Vip("generic"),
            offloads: Offloads::Topology,
        },
        PLAIN_NO_XDP,
        Row {
            label: "xdp-lb native -> VIP, seg off",
            path: Path::Vip("native"),
            offloads: Offloads::SegOff,
        },
        Row {
            label: "plain routing, seg off",
            path: Path::Plain,
            offloads: Offloads::SegOff,
        },
        TC_VIP,
        PLAIN_OFFLOADS_ON,
    ];
    // Failures are findings here (a mode that breaks a path): reported, not fatal.
    bench(&rows, 2, 4, false)
}

/// The topology and the servers, and which state (lb mode, offloads) is in place.
/// Fields drop in order: the balancer and the servers stop before the namespaces go.
struct Bed {
    lb: Option<(XdpLbProcess, &'static str)>,
    _nginx: [Nginx; 2],
    _iperf: [KillOnDrop; 2],
    nginx_pids: Vec<u32>,
    /// With XDP_LB_BENCH_PROG_STATS=1: the kernel counts program run time while this
    /// fd is open, and each measurement reads it (`ProgTime`).
    prog_stats: Option<std::os::fd::OwnedFd>,
    config: ConfigFile,
    offloads: Offloads,
    topo: Topology,
}

fn bench(rows: &[Row], rounds: usize, seconds: u32, strict: bool) -> anyhow::Result<()> {
    if !root::is_root() {
        bail!("the e2e benchmark needs root (network namespaces, XDP): run `sudo cargo xtask bench e2e`");
    }
    let rows: Vec<Row> = rows
        .iter()
        .copied()
        .filter(|r| selected("XDP_LB_BENCH_E2E_ROWS", r.label))
        .collect();
    let metrics: Vec<Metric> = METRICS
        .into_iter()
        .filter(|m| selected("XDP_LB_BENCH_E2E_METRICS", m.name()))
        .collect();
    ensure!(
        !rows.is_empty() && !metrics.is_empty(),
        "XDP_LB_BENCH_E2E_ROWS / XDP_LB_BENCH_E2E_METRICS left nothing to measure"
    );
    let rows = &rows[..];
    let load_before = loadavg();
    let started = Instant::now();
    let mut bed = Bed::build()?;
    if std::env::var("XDP_LB_BENCH_PROG_STATS").is_ok_and(|v| v == "1") {
        bed.prog_stats = Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enabling BPF_STATS_RUN_TIME (XDP_LB_BENCH_PROG_STATS=1)")?,
        );
    }
    // results[row][metric]: one sample per round, or the error of a failed run.
    let mut results: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); METRICS.len()]; rows.len()];
    let mut failures: Vec<String> = Vec::new();
    let mut repeated: Vec<String> = Vec::new();
    let mut offload_text: Vec<String> = vec![String::new(); rows.len()];
    for round in 1..=rounds {
        // Alternate the order of the rows so no row always runs first.
        let order: Vec<usize> = if round % 2 == 1 {
            (0..rows.len()).collect()
        } else {
            (0..rows.len()).rev().collect()
        };
        for ri in order {
            let row = rows[ri];
            bed.enter(row)?;
            offload_text[ri] = bed.describe_offloads()?;
            for (mi, m) in METRICS.iter().enumerate() {
                if !metrics.contains(m) {
                    continue;
                }
                let mut measured = bed.measure(row.path, *m, seconds);
                if let (true, Err(e)) = (strict, &measured) {
                    // Native XDP on veth reorders a flow's segments (see `REPEATED`); a
                    // failure is repeated once, and reported, rather than ending the run.
                    let msg = format!("round {round}: {} {}: {e:#}", row.label, m.name());
                    eprintln!("REPEATING {msg}");
                    repeated.push(msg);
                    measured = bed.measure(row.path, *m, seconds);
                }
                match measured {
                    Ok(s) => {
                        eprintln!(
                            "round {round}: {:<32} {:<17} {:>10.1}  (load {})",
                            row.label,
                            m.name(),
                            s.rate,
                            loadavg()
                        );
                        results[ri][mi].push(s);
                    }
                    Err(e) => {
                        let msg = format!("round {round}: {} {}: {e:#}", row.label, m.name());
                        if strict {
                            bail!(msg);
                        }
                        eprintln!("FAILED {msg}");
                        failures.push(msg);
                    }
                }
            }
        }
    }
    bed.stop_lb();
    print_report(
        rows,
        &results,
        &offload_text,
        rounds,
        seconds,
        &load_before,
        started,
    );
    if !repeated.is_empty() {
        println!();
        println!("{REPEATED}");
        for r in &repeated {
            println!("  repeated after: {r}");
        }
    }
    for f in &failures {
        println!("failed: {f}");
    }
    Ok(())
}

/// Whether `name` passes the filter in the environment variable `var` (a
/// comma-separated list of words, one of which it must contain; unset: everything).
fn selected(var: &str, name: &str) -> bool {
    match std::env::var(var) {
        Ok(words) => words
            .split(',')
            .filter(|w| !w.is_empty())
            .any(|w| name.contains(w)),
        Err(_) => true,
    }
}

impl Bed {
    fn build() -> anyhow::Result<Self> {
        let topo = TopologyBuilder::new(2, Forwarding::Nat)
            .ports(None, None, None)
            .xdp_pass(false)
            .build()
            .context("building the topology")?;
        // Many short connections: a wide port range at the client, deep accept queues.
        topo.client
            .sysctl("net/ipv4/ip_local_port_range", "1024 65000")?;
        topo.client.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
        for b in &topo.backends {
            b.ns.sysctl("net/core/somaxconn", "4096")?;
            b.ns.sysctl("net/ipv4/tcp_max_syn_backlog", "4096")?;
        }
        let nginx = [
            Nginx::start(&topo.backend(1).ns, topo.backend(1).v4().into())?,
            Nginx::start(&topo.backend(2).ns, topo.backend(2).v4().into())?,
        ];
        let mut nginx_pids = Vec::new();
        for n in &nginx {
            nginx_pids.extend(n.workers());
        }
        let iperf = [
            iperf_server(&topo.backend(1).ns, topo.backend(1).v4().into())?,
            iperf_server(&topo.backend(2).ns, topo.backend(2).v4().into())?,
        ];
        let svc = |port| ServiceSpec {
            vip: IpAddr::V4(VIP4),
            port,
            proto: "tcp",
            algorithm: "maglev",
            forwarding: Forwarding::Nat,
            backends: vec![BackendSpec {
                addr: IpAddr::V4(topo.backend(1).v4()),
                port,
                weight: 1,
                state: "active",
            }],
        };
        let config = ConfigFile::new(&render(&[IFACE], &[svc(HTTP_PORT), svc(BULK_PORT)]))?;
        Ok(Self {
            topo,
            _nginx: nginx,
            _iperf: iperf,
            nginx_pids,
            prog_stats: None,
            config,
            lb: None,
            offloads: Offloads::Topology,
        })
    }

    /// Puts the state `row` needs in place: xdp-lb in the right mode (or none), the
    /// bridge port's XDP_PASS peer program with a native lb, and the offloads.
    fn enter(&mut self, row: Row) -> anyhow::Result<()> {
        let want_mode = match row.path {
            Path::Vip(m) => Some(m),
            Path::PastLb => Some("native"),
            Path::Plain => None,
        };
        if self.lb.as_ref().map(|l| l.1) != want_mode {
            self.stop_lb();
            // XDP_TX out of a native program needs one on the peer; a generic one does
            // not, and a native peer program would turn TSO off on the lb's side.
            self.topo.set_xdp_pass(want_mode == Some("native"))?;
            if let Some(mode) = want_mode {
                // "tc" is an attach mode of its own, the rest are XDP modes (said
                // explicitly: the default, auto, attaches tc on these veths).
                let mut args = vec![
                    "run".to_string(),
                    "--config".into(),
                    self.config.path().display().to_string(),
                ];
                if mode == "tc" {
                    args.extend(["--attach", "tc"].map(String::from));
                } else {
                    args.extend(["--attach", "xdp", "--xdp-mode", mode].map(String::from));
                }
                self.lb = Some((self.topo.start_lb(&args).context("starting xdp-lb")?, mode));
            }
        }
        if self.offloads != row.offloads {
            // TX checksum first: TSO depends on it.
            let tx = if row.offloads == Offloads::Default {
                "on"
            } else {
                "off"
            };
            let t = &self.topo;
            for ns in std::iter::once(&t.client).chain(t.backends.iter().map(|b| &b.ns)) {
                ns.exec(&["ethtool", "-K", IFACE, "tx", tx])?;
            }
            // Segmentation offloads only change into or out of SegOff; out of it they
            // go back to the veth defaults, GRO off: GRO on a veth with native XDP
            // stalls streams (seen here: 78 KB in 5 s), see TOOLCHAIN.md.
            if (row.offloads == Offloads::SegOff) != (self.offloads == Offloads::SegOff) {
                let (seg, gro) = if row.offloads == Offloads::SegOff {
                    ("off", "off")
                } else {
                    ("on", "off")
                };
                for (ns, ifs) in self.veths() {
                    for i in ifs {
                        ns.exec(&["ethtool", "-K", &i, "tso", seg, "gso", seg, "gro", gro])?;
                    }
                }
            }
            self.offloads = row.offloads;
        }
        Ok(())
    }

    /// Stops xdp-lb and detaches it: `run` leaves its program attached and its state
    /// pinned on exit (restarts are hitless), and the next run would keep the attach
    /// mode. Removing the pins detaches the program.
    fn stop_lb(&mut self) {
        self.lb = None;
        crate::pins::remove(self.topo.lb.name());
    }

    fn veths(&self) -> Vec<(&NetNs, Vec<String>)> {
        let t = &self.topo;
        let mut v = vec![
            (&t.client, vec![IFACE.to_string()]),
            (&t.lb, vec![IFACE.to_string()]),
            (
                &t.bridge,
                ["vc", LB_BRIDGE_PORT, "vs1", "vs2"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
        ];
        for b in &t.backends {
            v.push((&b.ns, vec![IFACE.to_string()]));
        }
        v
    }

    /// `client eth0: tx-csum off, tso off, gso on, gro on; lb eth0: ...` as ethtool reads them.
    fn describe_offloads(&self) -> anyhow::Result<String> {
        let t = &self.topo;
        let mut s = String::new();
        for (name, ns, i) in [
            ("client", &t.client, IFACE),
            ("lb", &t.lb, IFACE),
            ("bridge port", &t.bridge, LB_BRIDGE_PORT),
            ("backend", &t.backend(1).ns, IFACE),
        ] {
            let out = ns.exec(&["ethtool", "-k", i])?;
            let text = String::from_utf8_lossy(&out.stdout);
            let get = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.split_whitespace().next().map(str::to_string))
                    .unwrap_or_else(|| "?".into())
            };
            let _ = write!(
                s,
                "{}{name} {i}: csum {} tso {} gso {} gro {}",
                if s.is_empty() { "" } else { "; " },
                get("tx-checksumming: "),
                get("tcp-segmentation-offload: "),
                get("generic-segmentation-offload: "),
                get("generic-receive-offload: ")
            );
        }
        Ok(s)
    }

    fn target(&self, path: Path, port: u16) -> SocketAddr {
        match path {
            Path::Vip(_) => SocketAddr::new(IpAddr::V4(VIP4), port),
            Path::PastLb => SocketAddr::new(IpAddr::V4(self.topo.backend(2).v4()), port),
            Path::Plain => SocketAddr::new(IpAddr::V4(self.topo.backend(1).v4()), port),
        }
    }

    /// Drops the backends' TIME_WAIT sockets (`ss -K`). nginx closes first under
    /// `Connection: close`, so a backend keeps one for every connection of the last 60 s.
    /// Rows reach backend 1 both through the VIP and directly, from the same client
    /// address and ports, and the client's TCP timestamps start from an offset hashed
    /// per destination address: a SYN that meets a TIME_WAIT left by the other path then
    /// carries an older timestamp, is answered with an ACK instead of a SYN-ACK, and is
    /// retried a second later. That halved whichever row came right after a row of the
    /// other path (plain routing after the VIP: 8k new connections/s instead of 16k,
    /// cores half idle).
    fn forget_time_wait(&self) -> anyhow::Result<()> {
        for b in &self.topo.backends {
            b.ns.exec(&["ss", "-K", "-t", "state", "time-wait"])
                .context(
                "dropping the backends' TIME_WAIT sockets (ss -K needs CONFIG_INET_DIAG_DESTROY)",
            )?;
        }
        Ok(())
    }

    fn measure(&self, path: Path, m: Metric, seconds: u32) -> anyhow::Result<Sample> {
        self.forget_time_wait()?;
        // Outside the CPU window: it walks every loaded program.
        let prog0 = self.prog_stats.as_ref().map(|_| ProgTime::read());
        let cpu0 = CpuStat::read()?;
        let server0 = procs_cpu(&self.nginx_pids);
        let t0 = Instant::now();
        let (rate, units, client_secs, server_secs) = match m {
            Metric::KeepAlive | Metric::NewConns => {
                let r = wrk(
                    &self.topo.client,
                    self.target(path, HTTP_PORT),
                    m == Metric::NewConns,
                    seconds,
                )?;
                (
                    r.rate,
                    r.requests,
                    r.client_cpu,
                    procs_cpu(&self.nginx_pids) - server0,
                )
            }
            Metric::Bulk => {
                let r = iperf(&self.topo.client, self.target(path, BULK_PORT), seconds)?;
                (r.gbits, r.bytes / 1e9, r.client_cpu, r.server_cpu)
            }
        };
        let wall = t0.elapsed().as_secs_f64();
        let cpu = CpuStat::read()?.since(&cpu0);
        let per_unit = |secs: f64| match m {
            Metric::Bulk => secs * 1e3 / units.max(1e-9),
            _ => secs * 1e6 / units.max(1.0),
        };
        Ok(Sample {
            rate,
            cpu_per_unit: per_unit(cpu.busy),
            own_per_unit: per_unit(client_secs + server_secs + cpu.softirq),
            machine_cores: cpu.busy / wall,
            softirq_cores: cpu.softirq / wall,
            client_cores: client_secs / wall,
            server_cores: server_secs / wall,
            prog: prog0
                .map(|p0| (p0, ProgTime::read()))
                .filter(|(p0, p1)| p1.runs > p0.runs)
                .map(|(p0, p1)| ProgTime {
                    runs: (p1.runs - p0.runs) / units.max(1e-9),
                    ns: (p1.ns - p0.ns) / units.max(1e-9),
                }),
        })
    }
}

/// Busy and softirq seconds of all CPUs, from /proc/stat.
struct CpuStat {
    busy: f64,
    softirq: f64,
}

impl CpuStat {
    fn read() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = text.lines().next().context("empty /proc/stat")?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        ensure!(v.len() >= 8, "short /proc/stat line {line:?}");
        let tick = clk_tck();
        // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
        Ok(Self {
            busy: (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick,
            softirq: v[6] / tick,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            busy: self.busy - before.busy,
            softirq: self.softirq - before.softirq,
        }
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system seconds of these processes so far (exited ones count 0).
fn procs_cpu(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name (which may hold spaces) start at field 3.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / clk_tck())
        })
        .sum()
}

/// nginx serving `return 200` on `addr:HTTP_PORT` in a backend namespace.
struct Nginx {
    child: Child,
    _dir: TempDir,
}

impl Nginx {
    fn start(ns: &NetNs, addr: IpAddr) -> anyhow::Result<Self> {
        let dir = TempDir::new("nginx-e2e");
        let p = dir.0.display();
        let listen = SocketAddr::new(addr, HTTP_PORT);
        let conf = format!(
            "daemon off;\nuser root;\nworker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 60s;\n\
               client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fcgi;\n\
               uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
               server {{\n    listen {listen} backlog=4096 reuseport;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let child = ns
            .command("nginx")
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (cargo xtask setup installs nginx-light)")?;
        let n = Self { child, _dir: dir };
        wait_listening(ns, listen, "nginx")?;
        Ok(n)
    }

    /// The worker processes (children of the master).
    fn workers(&self) -> Vec<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let workers = self.workers();
        // SIGTERM: the master stops its workers, then exits.
        // SAFETY: a signal to our own child, by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for w in workers {
            // SAFETY: our child's own workers, by PID, right after it exited.
            unsafe { libc::kill(w as i32, libc::SIGKILL) };
        }
    }
}

fn iperf_server(ns: &NetNs, addr: IpAddr) -> anyhow::Result<KillOnDrop> {
    let child = ns
        .command("iperf3")
        .args(["-s", "-p", &BULK_PORT.to_string(), "-B", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (cargo xtask setup installs it)")?;
    let c = KillOnDrop(Some(child));
    wait_listening(ns, SocketAddr::new(addr, BULK_PORT), "iperf3")?;
    Ok(c)
}

struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_listening(ns: &NetNs, addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = ns.run(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct WrkRun {
    rate: f64,
    requests: f64,
    client_cpu: f64,
}

/// One bounded wrk run from the client namespace. Any socket error, timeout or non-2xx
/// answer is an error.
fn wrk(client: &NetNs, target: SocketAddr, close: bool, seconds: u32) -> anyhow::Result<WrkRun> {
    let url = format!("http://{target}/");
    let mut cmd: Command = client.command("wrk");
    cmd.args([
        &format!("-t{WRK_THREADS}"),
        &format!("-c{WRK_CONNECTIONS}"),
        &format!("-d{seconds}s"),
        "--timeout",
        "2s",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&url);
    let (out, client_cpu) = run_timed(&mut cmd, "wrk")?;
    let rate = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    // "  123456 requests in 5.00s, 9.87MB read"
    let requests = out
        .lines()
        .find_map(|l| {
            l.split_once(" requests in ")
                .map(|x| x.0.trim().to_string())
        })
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no request count in wrk output:\n{out}"))?;
    if let Some(errs) = out
        .lines()
        .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
    {
        bail!("wrk {url}: {} (of {requests} requests)", errs.trim());
    }
    ensure!(requests > 0.0, "wrk {url}: no request completed");
    Ok(WrkRun {
        rate,
        requests,
        client_cpu,
    })
}

struct IperfRun {
    gbits: f64,
    bytes: f64,
    client_cpu: f64,
    server_cpu: f64,
}

/// One bulk stream, the server (backend) sending to the client (`-R`): what a
/// balancer's clients download.
fn iperf(client: &NetNs, target: SocketAddr, seconds: u32) -> anyhow::Result<IperfRun> {
    let mut cmd = client.command("iperf3");
    cmd.args([
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
        "-t",
        &seconds.to_string(),
        "-R",
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    let (out, _) = run_timed(&mut cmd, "iperf3")?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3 to {target}: {e}");
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no sum_received")?;
    let bytes = end["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    // A stream that stalled (retransmission timeouts all along) is a failure too.
    ensure!(
        bps >= 1e6,
        "iperf3 to {target}: stalled ({bytes} bytes in {seconds} s)"
    );
    let secs = end["sum_received"]["seconds"].as_f64().unwrap_or(1.0);
    let cpu = &end["cpu_utilization_percent"];
    // With -R the remote (server) is the sender.
    Ok(IperfRun {
        gbits: bps / 1e9,
        bytes,
        client_cpu: cpu["host_total"].as_f64().unwrap_or(0.0) / 100.0 * secs,
        server_cpu: cpu["remote_total"].as_f64().unwrap_or(0.0) / 100.0 * secs,
    })
}

/// Runs `cmd` to completion, bounded; returns stdout and the child's CPU seconds.
fn run_timed(cmd: &mut Command, what: &str) -> anyhow::Result<(String, f64)> {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what} (installed by `cargo xtask setup`)"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut stderr = child.stderr.take().context("stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // wait4 gives the child's own rusage (`ip netns exec` execs the program).
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 on our own child's PID.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as i32;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    ensure!(
        rc == pid,
        "waiting for {what}: {}",
        std::io::Error::last_os_error()
    );
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    // iperf3 -J exits 1 with its error in the JSON.
    ensure!(
        ok || (what == "iperf3" && out.contains("\"error\"")),
        "{what} failed (status {status}): {}",
        err.trim()
    );
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((out, tv(ru.ru_utime) + tv(ru.ru_stime)))
}

/// Which side saturated, from the run's CPU figures (2 wrk threads, one nginx worker
/// per CPU, single-threaded iperf3).
fn bottleneck(m: Metric, s: &Sample, cpus: f64) -> String {
    let client_max = if m == Metric::Bulk {
        1.0
    } else {
        WRK_THREADS as f64
    };
    let mut v = Vec::new();
    if s.machine_cores >= 0.95 * cpus {
        v.push(format!("all {cpus:.0} CPUs busy"));
    }
    if s.client_cores >= 0.9 * client_max.min(cpus) {
        v.push("client".to_string());
    }
    if m == Metric::Bulk && s.server_cores >= 0.9 {
        v.push("iperf3 sender".to_string());
    }
    if v.is_empty() {
        "none saturated".into()
    } else {
        v.join(", ")
    }
}

fn print_report(
    rows: &[Row],
    results: &[Vec<Vec<Sample>>],
    offloads: &[String],
    rounds: usize,
    seconds: u32,
    load_before: &str,
    started: Instant,
) {
    let cpus = aya::util::nr_cpus().map(|n| n as f64).unwrap_or(1.0);
    println!();
    println!(
        "End to end through veth namespaces (NAT, IPv4): median of {rounds} interleaved rounds x {seconds} s, min-max beside."
    );
    println!(
        "Clients: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} (new conn/s: `Connection: close`), iperf3 -R (one stream, backend -> client)."
    );
    println!(
        "Backends: nginx `return 200` (one worker per CPU, keep-alive, no access log), iperf3 -s."
    );
    println!(
        "CPU: machine busy time (all {cpus:.0} CPUs, other load included) per request / connection / GB;"
    );
    println!("own = client + server + softirq CPU per unit (what other load hardly touches);");
    println!("cores = busy CPUs during the run (machine, of which softirq; client; server).");
    println!(
        "Load average {load_before} at the start, {} at the end; {:.0} s in all.",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    for (mi, m) in METRICS.iter().enumerate() {
        // Left out by XDP_LB_BENCH_E2E_METRICS (a metric that failed on every row
        // is listed under "failed:" below).
        if results.iter().all(|r| r[mi].is_empty()) {
            continue;
        }
        println!();
        println!(
            "{:<32} {:>10} {:>19} {:>8} {:>8} {:>9} {:>8} {:>6} {:>6}  bottleneck",
            m.name(),
            "median",
            "min-max",
            m.cpu_unit(),
            "own",
            "machine",
            "softirq",
            "client",
            "server"
        );
        // Each row against plain routing with the same offloads.
        let plain = |offloads: Offloads| {
            rows.iter()
                .position(|r| r.path == Path::Plain && r.offloads == offloads)
                .map(|i| Spread::of(&rates(&results[i][mi])).median)
        };
        for (ri, r) in rows.iter().enumerate() {
            let v = &results[ri][mi];
            if v.is_empty() {
                println!("{:<32} {:>10}", r.label, "failed");
                continue;
            }
            let rate = Spread::of(&rates(v));
            let f = |g: fn(&Sample) -> f64| Spread::of(&v.iter().map(g).collect::<Vec<_>>()).median;
            let mid = v
                .iter()
                .min_by(|a, b| {
                    (a.rate - rate.median)
                        .abs()
                        .total_cmp(&(b.rate - rate.median).abs())
                })
                .expect("not empty");
            let prec = if *m == Metric::Bulk { 2 } else { 0 };
            let ratio = match plain(r.offloads) {
                Some(p) if p > 0.0 && r.path != Path::Plain => {
                    format!(" {:.2}x plain", rate.median / p)
                }
                _ => String::new(),
            };
            println!(
                "{:<32} {:>10.prec$} {:>19} {:>8.1} {:>8.1} {:>9.2} {:>8.2} {:>6.2} {:>6.2}  {}{}",
                r.label,
                rate.median,
                format!("{:.prec$}-{:.prec$}", rate.min, rate.max),
                f(|s| s.cpu_per_unit),
                f(|s| s.own_per_unit),
                f(|s| s.machine_cores),
                f(|s| s.softirq_cores),
                f(|s| s.client_cores),
                f(|s| s.server_cores),
                bottleneck(*m, mid, cpus),
                ratio
            );
        }
        for (ri, r) in rows.iter().enumerate() {
            let p: Vec<ProgTime> = results[ri][mi].iter().filter_map(|s| s.prog).collect();
            if p.is_empty() {
                continue;
            }
            let runs = Spread::of(&p.iter().map(|t| t.runs).collect::<Vec<_>>()).median;
            let ns = Spread::of(&p.iter().map(|t| t.ns).collect::<Vec<_>>()).median;
            println!(
                "  program time, {}: {runs:.1} runs and {:.2} us per {}, {:.0} ns per run",
                r.label,
                ns / 1e3,
                m.unit_name(),
                ns / runs.max(1e-9)
            );
        }
    }
    println!();
    println!("Attach mode and offloads per row (ethtool -k as the row ran):");
    for (ri, r) in rows.iter().enumerate() {
        let mode = match r.path {
            Path::Vip("tc") => "xdp-lb tc (TCX) at lb eth0 ingress, no XDP program".into(),
            Path::Vip(m) => format!("xdp-lb {m} XDP on lb eth0"),
            Path::PastLb => "xdp-lb native XDP on lb eth0 (XDP_PASS for this traffic)".into(),
            Path::Plain => "no XDP program on any interface".into(),
        };
        let peer = if matches!(r.path, Path::Vip("native") | Path::PastLb) {
            ", XDP_PASS on the bridge port"
        } else {
            ""
        };
        println!("  {}: {mode}{peer}", r.label);
        println!("    {}", offloads[ri]);
    }
    println!();
}

fn rates(v: &[Sample]) -> Vec<f64> {
    v.iter().map(|s| s.rate).collect()
}
