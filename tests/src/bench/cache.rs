//! `cargo xtask bench cache`: cache-hit throughput and p99 latency of the cache tier, measured
//! with wrk against the same upstream served directly and against nginx `proxy_cache`
//! configured for the same content, in the same run. The upstream, the proxy and the
//! hot-tier proxies each run on their own one-thread tokio runtime (nginx runs one worker).
//! On a machine with two cores or more, wrk (one thread) and Redis run on core 0 and the
//! server under test on core 1, so no server waits behind the load generator for a CPU
//! (`XDP_LB_BENCH_PIN=0` turns that off: wrk -t2, everything anywhere). Every target is
//! loaded twice per round: closed (capacity, saturated latency) and paced at a rate below
//! every server's capacity (latency with time to spare). Each run prints the CPU each party
//! used (server, Redis, wrk, the rest of the machine, and with pinning each core's load) and
//! which one ran out; several rounds give the ratios' spread on a shared machine.
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::cpu::{self, Side};
use super::wrk::{self, Figures, Load, Wrk};
use crate::cache_support::{
    free_port, test_config, HttpClient, ProxyInstance, RedisServer, Reply, TempDir, Upstream,
};

const PATH: &str = "/bench/object";
const BODY_BYTES: usize = 1024;
const WRK_CONNECTIONS: u32 = 32;
const WRK_SECONDS: u64 = 5;
/// Each connection's pause between an answer and its next request in the paced runs: about
/// 32 / 2.1 ms = 15k requests/s, below every server's capacity here (Redis hits, the slowest,
/// answer 40-50k/s).
const PACE_MS: u32 = 2;

/// nginx with a proxy_cache in front of the upstream, killed by PID on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let p = dir.0.display();
        // master_process off: one process, no switch to an unprivileged user that could not
        // write the temporary cache directory.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
               proxy_cache_path {p}/cache keys_zone=bench:10m;\n\
               upstream app {{ server {upstream}; keepalive 32; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_cache bench;\n\
                 proxy_cache_valid 200 10m;\n      add_header X-Cache $upstream_cache_status;\n    }}\n  }}\n}}\n"
        );
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (cargo xtask setup installs nginx-light)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let n = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start listening on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the parties run: with pinning, the load side (wrk, Redis, the bench's own client)
/// on one core and the server under test alone on another. Redis goes with the load side
/// because it stands for a service of its own (nginx's cache needs no other process), so the
/// tier gets one core as nginx's worker does, plus Redis's time, which is printed.
#[derive(Debug, Clone, Copy)]
struct Layout {
    load_cpu: usize,
    server_cpu: usize,
}

impl Layout {
    /// Core 0 for the load, core 1 for the server; `None` on one core or when
    /// `XDP_LB_BENCH_PIN=0`.
    fn choose(cores: usize) -> Option<Self> {
        let off = std::env::var("XDP_LB_BENCH_PIN").is_ok_and(|v| v == "0");
        (cores >= 2 && !off).then_some(Self {
            load_cpu: 0,
            server_cpu: 1,
        })
    }
}

/// A one-thread runtime whose threads carry `name`, so their CPU time can be read, and run on
/// `cpu` when given.
fn runtime(name: &str, cpu: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(1).thread_name(name).enable_all();
    if let Some(cpu) = cpu {
        b.on_thread_start(move || {
            if let Err(e) = cpu::pin_task(0, cpu) {
                eprintln!("bench: could not pin a server thread to core {cpu}: {e}");
            }
        });
    }
    Ok(b.build()?)
}

/// One server under wrk: where it runs, and the Redis it reads from, if any.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    server: Side,
    redis: Option<Side>,
}

/// One wrk run and the CPU each party used during it, in cores (CPU seconds per second).
#[derive(Debug, Clone, Copy)]
struct Measured {
    fig: Figures,
    server: f64,
    /// Seconds per second the server's threads were runnable but waited for a CPU.
    server_wait: f64,
    redis: f64,
    wrk: f64,
    /// Everything else on the machine (other builds, the kernel's softirq time not charged
    /// to a task).
    other: f64,
    /// With pinning: how busy the load core and the server's core were.
    load_core: f64,
    server_core: f64,
}

impl Measured {
    /// Which resource ran out: the server's one thread, a core, the machine's cores, or
    /// neither (then the limit is latency: wrk's connections waiting on answers, or the pace).
    fn bottleneck(&self, cores: f64, layout: Option<Layout>) -> String {
        let busy = self.server + self.redis + self.wrk + self.other;
        if self.server >= 0.9 {
            "server thread saturated".into()
        } else if layout.is_some() && self.server_core >= 0.9 {
            format!(
                "server core busy ({:.2} of it not the server)",
                self.server_core - self.server
            )
        } else if layout.is_some() && self.load_core >= 0.9 {
            "load core busy (wrk, redis)".into()
        } else if busy >= 0.9 * cores {
            let mut parts = [
                ("wrk", self.wrk),
                ("server", self.server),
                ("redis", self.redis),
                ("other load", self.other),
            ];
            parts.sort_by(|a, b| b.1.total_cmp(&a.1));
            format!("all {cores:.0} cores busy, most by {}", parts[0].0)
        } else {
            "neither CPU: latency".into()
        }
    }
}

/// Runs wrk once against `t`; with `realtime`, the server, its Redis and wrk run at
/// `SCHED_FIFO` for the run (see [`realtime_paced`]).
fn measure(
    t: &Target,
    w: &Wrk,
    load: Load,
    layout: Option<Layout>,
    realtime: bool,
) -> anyhow::Result<Measured> {
    let sides = || std::iter::once(&t.server).chain(&t.redis);
    if realtime {
        for s in sides() {
            s.set_realtime(true)
                .with_context(|| format!("making {}'s threads real-time", t.name))?;
        }
    }
    let w = Wrk { realtime, ..*w };
    let res = measure_now(t, &w, load, layout);
    if realtime {
        for s in sides() {
            s.set_realtime(false)
                .with_context(|| format!("making {}'s threads normal again", t.name))?;
        }
    }
    res
}

fn measure_now(
    t: &Target,
    w: &Wrk,
    load: Load,
    layout: Option<Layout>,
) -> anyhow::Result<Measured> {
    let server0 = t.server.cpu_seconds();
    let wait0 = t.server.wait_seconds();
    let redis0 = t.redis.as_ref().map_or(0.0, Side::cpu_seconds);
    let (wrk0, busy0) = (cpu::children_cpu_seconds(), cpu::busy_seconds_per_core());
    let started = Instant::now();
    let fig = w.run(&wrk::url(t.addr, PATH), load)?;
    let wall = started.elapsed().as_secs_f64();
    let server = (t.server.cpu_seconds() - server0) / wall;
    let server_wait = (t.server.wait_seconds() - wait0) / wall;
    let redis = (t.redis.as_ref().map_or(0.0, Side::cpu_seconds) - redis0) / wall;
    let wrk = (cpu::children_cpu_seconds() - wrk0) / wall;
    let per_core: Vec<f64> = cpu::busy_seconds_per_core()
        .iter()
        .zip(&busy0)
        .map(|(b, b0)| (b - b0) / wall)
        .collect();
    let busy: f64 = per_core.iter().sum();
    let core = |c: Option<usize>| c.and_then(|c| per_core.get(c).copied()).unwrap_or(0.0);
    Ok(Measured {
        fig,
        server,
        server_wait,
        redis,
        wrk,
        other: (busy - server - redis - wrk).max(0.0),
        load_core: core(layout.map(|l| l.load_cpu)),
        server_core: core(layout.map(|l| l.server_cpu)),
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Whether the paced runs use `SCHED_FIFO` for the server, its Redis and wrk: on unless
/// `XDP_LB_BENCH_RT=0`, when this process may (root or CAP_SYS_NICE). On a machine shared
/// with builds a woken server otherwise waits behind them on its core, and that wait, not the
/// server, makes the paced p99. Only the paced runs: there nothing saturates a core, so the
/// real-time tasks never meet the kernel's real-time throttling (95% of a core), which
/// would stall a saturating closed run for tens of milliseconds every second.
fn realtime_paced() -> Result<bool, String> {
    if std::env::var("XDP_LB_BENCH_RT").is_ok_and(|v| v == "0") {
        return Err("XDP_LB_BENCH_RT=0".into());
    }
    cpu::set_realtime(0, true)
        .and_then(|()| cpu::set_realtime(0, false))
        .map(|()| true)
        .map_err(|e| format!("cannot use SCHED_FIFO: {e}"))
}

/// How many rounds of the five wrk runs; `XDP_LB_BENCH_RUNS` overrides.
const ROUNDS: usize = 3;

/// The targets, in the order they run in every round.
const DIRECT: usize = 0;
const REDIS: usize = 1;
const HOT: usize = 2;
const NGINX: usize = 3;
const HOT_LONG: usize = 4;

/// The ratios the goals are stated in, for one round: from the closed runs (capacity) and
/// from the paced runs (latency below capacity).
struct Ratios([f64; Self::NAMES.len()]);

impl Ratios {
    const NAMES: [&'static str; 15] = [
        "redis hits / nginx hits (goal >= 0.75)",
        "redis hits per server CPU s / nginx's",
        "hot-tier hits / bare upstream (goal >= 0.9)",
        "hot-tier hits / nginx hits",
        "hot-tier p99 / nginx p99 (goal <= 1)",
        "hot-tier p50 / nginx p50",
        "hot-tier p90 / nginx p90",
        "hot-tier (60 s TTL) p99 / nginx p99",
        "redis-hit p99 / nginx p99",
        "bare upstream p99 / nginx p99",
        "hot-tier hits per server CPU s / bare upstream's",
        "hot-tier hits per server CPU s / nginx's",
        "paced: hot-tier p99 / nginx p99",
        "paced: hot-tier p50 / nginx p50",
        "paced: redis-hit p99 / nginx p99",
    ];

    fn of(closed: &[Measured; 5], paced: &[Measured; 5]) -> Self {
        let per_cpu = closed.map(|m| m.fig.requests_per_s / m.server.max(1e-9));
        let c = closed.map(|m| m.fig);
        let p = paced.map(|m| m.fig);
        Self([
            c[REDIS].requests_per_s / c[NGINX].requests_per_s,
            per_cpu[REDIS] / per_cpu[NGINX],
            c[HOT].requests_per_s / c[DIRECT].requests_per_s,
            c[HOT].requests_per_s / c[NGINX].requests_per_s,
            c[HOT].p99_ms / c[NGINX].p99_ms,
            c[HOT].p50_ms / c[NGINX].p50_ms,
            c[HOT].p90_ms / c[NGINX].p90_ms,
            c[HOT_LONG].p99_ms / c[NGINX].p99_ms,
            c[REDIS].p99_ms / c[NGINX].p99_ms,
            c[DIRECT].p99_ms / c[NGINX].p99_ms,
            per_cpu[HOT] / per_cpu[DIRECT],
            per_cpu[HOT] / per_cpu[NGINX],
            p[HOT].p99_ms / p[NGINX].p99_ms,
            p[HOT].p50_ms / p[NGINX].p50_ms,
            p[REDIS].p99_ms / p[NGINX].p99_ms,
        ])
    }
}

fn print_header(what: &str) {
    println!(
        "  {:<28} {:>8} {:>6} {:>6} {:>7} {:>7} {:>6} {:>5} {:>5} {:>4} {:>5} {:>5} {:>5} {:>8}  bottleneck ({what})",
        "target",
        "req/s",
        "p50 ms",
        "p90",
        "p99",
        "max",
        "server",
        "wait",
        "redis",
        "wrk",
        "other",
        "core0",
        "core1",
        "req/CPU s"
    );
}

pub fn run() -> anyhow::Result<()> {
    let rounds = std::env::var("XDP_LB_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(ROUNDS)
        .clamp(1, 20);
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let layout = Layout::choose(cores);
    // This thread, and what it spawns from now on (Redis, wrk, nginx before it is moved),
    // goes to the load core; the servers' runtimes move their own threads.
    if let Some(l) = layout {
        cpu::pin_task(0, l.load_cpu).context("pinning the bench to the load core")?;
    }
    let server_cpu = layout.map(|l| l.server_cpu);
    // The test bed's client runs here; the servers each have their own runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (up_rt, proxy_rt, hot_rt, hot_long_rt) = (
        runtime("bench-up", server_cpu)?,
        runtime("bench-proxy", server_cpu)?,
        runtime("bench-hot", server_cpu)?,
        runtime("bench-hot-60s", server_cpu)?,
    );
    let redis = RedisServer::start();
    let upstream = up_rt.block_on(async {
        let body = "x".repeat(BODY_BYTES);
        Upstream::start(move |_, _| Reply::ok(&body).header("cache-control", "max-age=3600")).await
    });
    let proxy = proxy_rt.block_on(ProxyInstance::start(test_config(
        &[upstream.addr],
        vec![redis.url()],
    )));
    let mut hot_cfg = test_config(&[upstream.addr], vec![redis.url()]);
    hot_cfg.hot_ttl_ms = 1_000;
    let hot = hot_rt.block_on(ProxyInstance::start(hot_cfg));
    let mut hot_long_cfg = test_config(&[upstream.addr], vec![redis.url()]);
    hot_long_cfg.hot_ttl_ms = 60_000;
    let hot_long = hot_long_rt.block_on(ProxyInstance::start(hot_long_cfg));
    let nginx = Nginx::start(upstream.addr)?;
    if let Some(l) = layout {
        let pid = redis.pid().context("redis-server is not running")?;
        cpu::pin_process(pid, l.load_cpu).context("pinning redis-server")?;
        cpu::pin_process(nginx.child.id(), l.server_cpu).context("pinning nginx")?;
    }
    // Fill the caches with the Host wrk will send, and check they answer hits.
    rt.block_on(async {
        let c = HttpClient::default();
        for addr in [proxy.addr, hot.addr, nginx.addr, hot_long.addr] {
            let host = addr.to_string();
            c.get_with(addr, PATH, &[("host", &host)]).await;
            let r = c.get_with(addr, PATH, &[("host", &host)]).await;
            if r.x_cache() != "HIT" {
                bail!("cache at {addr} did not warm: X-Cache {:?}", r.x_cache());
            }
        }
        anyhow::Ok(())
    })?;
    let redis_side = || redis.pid().map(Side::Process);
    let targets = [
        Target {
            name: "upstream direct",
            addr: upstream.addr,
            server: Side::Threads("bench-up"),
            redis: None,
        },
        Target {
            name: "xdp-lb cache (redis hit)",
            addr: proxy.addr,
            server: Side::Threads("bench-proxy"),
            redis: redis_side(),
        },
        Target {
            name: "xdp-lb cache (hot tier 1s)",
            addr: hot.addr,
            server: Side::Threads("bench-hot"),
            redis: None,
        },
        Target {
            name: "nginx proxy_cache hit",
            addr: nginx.addr,
            server: Side::Process(nginx.child.id()),
            redis: None,
        },
        Target {
            name: "xdp-lb cache (hot tier 60s)",
            addr: hot_long.addr,
            server: Side::Threads("bench-hot-60s"),
            redis: None,
        },
    ];
    // One wrk thread when it has a core of its own: a second one would only contend for it.
    let w = Wrk {
        threads: if layout.is_some() { 1 } else { 2 },
        connections: WRK_CONNECTIONS,
        seconds: WRK_SECONDS,
        realtime: false,
    };
    let realtime = realtime_paced();
    println!(
        "cache-hit benchmark: GET {PATH} ({BODY_BYTES} B body), wrk -t{} -c{} -d{}s, closed and \
         paced ({PACE_MS} ms between an answer and the next request on each connection), \
         {rounds} rounds on {cores} cores",
        w.threads, w.connections, w.seconds
    );
    match layout {
        Some(l) => println!(
            "layout: core {} wrk, redis-server and the bench's client; core {} the server under \
             test (each upstream/proxy runtime's threads, nginx's one process); the idle servers \
             and the tier's upstream (not asked during hits) stay on core {}; nothing keeps other \
             work on the machine off either core (core0/core1 columns)",
            l.load_cpu, l.server_cpu, l.server_cpu
        ),
        None => {
            println!("layout: not pinned (XDP_LB_BENCH_PIN=0 or one core): every party anywhere")
        }
    }
    match &realtime {
        Ok(_) => println!(
            "paced runs: the server under test, its Redis and wrk at SCHED_FIFO priority 1, so \
             other work on the machine does not delay their wake-ups; closed runs: normal policy"
        ),
        Err(why) => println!("paced runs: normal scheduling policy ({why})"),
    }
    let realtime = realtime.unwrap_or(false);
    println!(
        "servers: one thread each (the upstream, each proxy on its own tokio runtime; nginx one \
         process); CPU columns are cores used during the run (CPU s per s); `wait` is the time \
         per second the server was runnable but had no CPU; wrk's percentiles are corrected \
         for coordinated omission, so p99 mostly measures the longest stalls (see Figures)"
    );
    let mut from_upstream = 0;
    let mut all = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        println!("round {round}/{rounds} (load average {})", load_average());
        let mut by_load = Vec::with_capacity(2);
        for (what, load, rt) in [
            ("closed", Load::Closed, false),
            ("paced", Load::Paced { pause_ms: PACE_MS }, realtime),
        ] {
            print_header(what);
            let mut m = Vec::with_capacity(targets.len());
            for (i, t) in targets.iter().enumerate() {
                let fetched = upstream.hits(PATH);
                let x = measure(t, &w, load, layout, rt)?;
                if i != DIRECT {
                    from_upstream += upstream.hits(PATH) - fetched;
                }
                println!(
                    "  {:<28} {:>8.0} {:>6.2} {:>6.2} {:>7.2} {:>7.2} {:>6.2} {:>5.2} {:>5.2} {:>4.2} {:>5.2} {:>5.2} {:>5.2} {:>8.0}  {}",
                    t.name,
                    x.fig.requests_per_s,
                    x.fig.p50_ms,
                    x.fig.p90_ms,
                    x.fig.p99_ms,
                    x.fig.max_ms,
                    x.server,
                    x.server_wait,
                    x.redis,
                    x.wrk,
                    x.other,
                    x.load_core,
                    x.server_core,
                    x.fig.requests_per_s / x.server.max(1e-9),
                    x.bottleneck(cores as f64, layout)
                );
                m.push(x);
            }
            let m: [Measured; 5] = m.try_into().expect("five targets");
            by_load.push(m);
        }
        let r = Ratios::of(&by_load[0], &by_load[1]);
        for (name, v) in Ratios::NAMES.iter().zip(r.0) {
            println!("  {name}: {v:.2}");
        }
        all.push(r);
    }
    println!("summary over {rounds} rounds (median, min-max):");
    for (i, name) in Ratios::NAMES.iter().enumerate() {
        let mut vals: Vec<f64> = all.iter().map(|r| r.0[i]).collect();
        vals.sort_by(f64::total_cmp);
        let (min, max) = (vals[0], vals[vals.len() - 1]);
        let median = vals[vals.len() / 2];
        println!("  {name}: {median:.2} ({min:.2}-{max:.2})");
    }
    println!("upstream requests during the cache runs (should be 0): {from_upstream}");
    println!("xdp-lb stats: {}", proxy.stats.snapshot());
    println!("xdp-lb hot stats: {}", hot.stats.snapshot());
    drop(nginx);
    proxy_rt.block_on(async { drop(proxy) });
    hot_rt.block_on(async { drop(hot) });
    hot_long_rt.block_on(async { drop(hot_long) });
    up_rt.block_on(async { drop(upstream) });
    Ok(())
}
