//! `cargo xtask bench cache`: cache-hit throughput and p99 latency of the cache tier, measured
//! with wrk against the same upstream served directly and against nginx `proxy_cache`
//! configured for the same content, in the same run. The upstream, the proxy and the
//! hot-tier proxies each run on their own one-thread tokio runtime (nginx runs one worker).
//! Each run prints the CPU each party used (server, Redis, wrk, the rest of the machine) and
//! which one ran out, so the comparison with nginx's single worker is fair; several rounds
//! give the ratios' spread on a shared machine.
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cache_support::{
    free_port, test_config, HttpClient, ProxyInstance, RedisServer, Reply, TempDir, Upstream,
};

const PATH: &str = "/bench/object";
const BODY_BYTES: usize = 1024;
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: &str = "32";
const WRK_SECONDS: u64 = 5;

/// One wrk run. wrk corrects its latency histogram for coordinated omission before it prints
/// percentiles: every request slower than twice the mean per-connection interval is counted
/// again at that latency minus one, two, ... intervals. So one stall of D ms (the server, or
/// the whole machine, not running) adds about D / interval samples per waiting connection,
/// and in a 5 s run a single stall of 60 ms moves p99 to about 10 ms whatever the server's
/// speed. p99 therefore tells how long the longest stalls were; p50 and p90 tell the rest.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

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

/// A wrk duration such as `786.39us`, `1.52ms` or `1.02s`, in milliseconds.
fn wrk_ms(v: &str) -> anyhow::Result<f64> {
    let v = v.trim();
    let (num, unit) = v.split_at(
        v.find(|c: char| c.is_ascii_alphabetic())
            .with_context(|| format!("latency unit in {v:?}"))?,
    );
    let num: f64 = num
        .parse()
        .with_context(|| format!("latency number in {v:?}"))?;
    Ok(match unit {
        "us" => num / 1000.0,
        "ms" => num,
        "s" => num * 1000.0,
        "m" => num * 60_000.0,
        other => bail!("unknown wrk latency unit {other}"),
    })
}

fn parse_wrk(out: &str) -> anyhow::Result<Figures> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("wrk printed no Requests/sec")?;
    let pct = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .with_context(|| format!("wrk printed no {p} latency"))
            .and_then(wrk_ms)
    };
    // `Latency   786.39us    1.46ms  20.52ms   91.47%`: average, stdev, max, share within a stdev.
    let max = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Latency "))
        .and_then(|l| l.split_whitespace().nth(2))
        .context("wrk printed no latency summary")?;
    Ok(Figures {
        requests_per_s: rps,
        p50_ms: pct("50%")?,
        p90_ms: pct("90%")?,
        p99_ms: pct("99%")?,
        max_ms: wrk_ms(max)?,
    })
}

/// Runs wrk for a bounded time and parses its summary.
fn wrk(addr: SocketAddr) -> anyhow::Result<Figures> {
    let mut child = Command::new("wrk")
        .args([
            "-t",
            WRK_THREADS,
            "-c",
            WRK_CONNECTIONS,
            "-d",
            &format!("{WRK_SECONDS}s"),
            "--latency",
        ])
        .arg(format!("http://{addr}{PATH}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk (cargo xtask setup installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(WRK_SECONDS + 20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// A one-thread runtime whose thread carries `name`, so its CPU time can be read.
fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// CPU seconds (user + system) in a `/proc/.../stat` file, 0 when unreadable.
fn stat_cpu_seconds(path: &std::path::Path) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (num(14) + num(15)) as f64 / ticks
}

/// Seconds a task spent runnable but waiting for a CPU (the second field of
/// `/proc/.../schedstat`), 0 when unreadable.
fn schedstat_wait_seconds(path: &std::path::Path) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Where a side's CPU time is read: this process's threads of one name (tokio's
/// blocking-pool threads carry the name too), or another process.
enum Side {
    Threads(&'static str),
    Process(u32),
}

impl Side {
    /// The `/proc` task directories of this side's threads.
    fn tasks(&self) -> Vec<std::path::PathBuf> {
        let (dir, name) = match self {
            Side::Process(pid) => (format!("/proc/{pid}/task"), None),
            Side::Threads(name) => ("/proc/self/task".to_string(), Some(*name)),
        };
        let Ok(tasks) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .map(|t| t.path())
            .filter(|t| {
                name.is_none_or(|n| {
                    std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == n)
                })
            })
            .collect()
    }

    /// Seconds this side's threads waited on a run queue: the time the server wanted a CPU
    /// and the machine gave it to something else.
    fn wait_seconds(&self) -> f64 {
        self.tasks()
            .iter()
            .map(|t| schedstat_wait_seconds(&t.join("schedstat")))
            .sum()
    }

    fn cpu_seconds(&self) -> f64 {
        match self {
            Side::Process(pid) => {
                stat_cpu_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")))
            }
            Side::Threads(name) => {
                let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
                    return 0.0;
                };
                tasks
                    .flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == *name)
                    })
                    .map(|t| stat_cpu_seconds(&t.path().join("stat")))
                    .sum()
            }
        }
    }
}

/// CPU seconds used by this process's reaped children (wrk, once waited for).
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// CPU seconds all cores of the machine spent busy (everything but idle and iowait).
fn machine_busy_seconds() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (f.iter().sum::<u64>().saturating_sub(idle)) as f64 / ticks
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
}

impl Measured {
    /// Which resource ran out: the server's one thread, the machine's cores, or neither
    /// (then the limit is latency: wrk's connections waiting on answers).
    fn bottleneck(&self, cores: f64) -> String {
        let busy = self.server + self.redis + self.wrk + self.other;
        if self.server >= 0.9 {
            "server thread saturated".into()
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

fn measure(t: &Target) -> anyhow::Result<Measured> {
    let server0 = t.server.cpu_seconds();
    let wait0 = t.server.wait_seconds();
    let redis0 = t.redis.as_ref().map_or(0.0, Side::cpu_seconds);
    let (wrk0, busy0) = (children_cpu_seconds(), machine_busy_seconds());
    let started = Instant::now();
    let fig = wrk(t.addr)?;
    let wall = started.elapsed().as_secs_f64();
    let server = (t.server.cpu_seconds() - server0) / wall;
    let server_wait = (t.server.wait_seconds() - wait0) / wall;
    let redis = (t.redis.as_ref().map_or(0.0, Side::cpu_seconds) - redis0) / wall;
    let wrk = (children_cpu_seconds() - wrk0) / wall;
    let busy = (machine_busy_seconds() - busy0) / wall;
    Ok(Measured {
        fig,
        server,
        server_wait,
        redis,
        wrk,
        other: (busy - server - redis - wrk).max(0.0),
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// How many rounds of the five wrk runs; `XDP_LB_BENCH_RUNS` overrides.
const ROUNDS: usize = 3;

/// The ratios the goals are stated in, for one round.
struct Ratios {
    redis_per_nginx: f64,
    hot_per_direct: f64,
    hot_per_nginx: f64,
    hot_p99_per_nginx: f64,
    hot_p50_per_nginx: f64,
    hot_p90_per_nginx: f64,
    /// The hot tier with a TTL longer than the run: no entry expires, so no request waits on
    /// the Redis refresh that the 1 s tier makes every second with all its connections.
    hot_long_p99_per_nginx: f64,
    redis_p99_per_nginx: f64,
    /// Requests per CPU second of the serving thread, which other load on a shared machine
    /// does not change as much as the throughput.
    hot_cpu_per_direct: f64,
    hot_cpu_per_nginx: f64,
}

impl Ratios {
    const NAMES: [&'static str; 10] = [
        "redis hits / nginx hits (goal >= 0.75)",
        "hot-tier hits / bare upstream (goal >= 0.9)",
        "hot-tier hits / nginx hits",
        "hot-tier p99 / nginx p99 (goal <= 1)",
        "hot-tier p50 / nginx p50",
        "hot-tier p90 / nginx p90",
        "hot-tier (60 s TTL) p99 / nginx p99",
        "redis-hit p99 / nginx p99",
        "hot-tier hits per server CPU s / bare upstream's",
        "hot-tier hits per server CPU s / nginx's",
    ];

    fn of(m: &[Measured; 5]) -> Self {
        let per_cpu = m.map(|m| m.fig.requests_per_s / m.server.max(1e-9));
        let [direct, redis, hot, nginx, hot_long] = m.map(|m| m.fig);
        Self {
            hot_cpu_per_direct: per_cpu[2] / per_cpu[0],
            hot_cpu_per_nginx: per_cpu[2] / per_cpu[3],
            redis_per_nginx: redis.requests_per_s / nginx.requests_per_s,
            hot_per_direct: hot.requests_per_s / direct.requests_per_s,
            hot_per_nginx: hot.requests_per_s / nginx.requests_per_s,
            hot_p99_per_nginx: hot.p99_ms / nginx.p99_ms,
            hot_p50_per_nginx: hot.p50_ms / nginx.p50_ms,
            hot_p90_per_nginx: hot.p90_ms / nginx.p90_ms,
            hot_long_p99_per_nginx: hot_long.p99_ms / nginx.p99_ms,
            redis_p99_per_nginx: redis.p99_ms / nginx.p99_ms,
        }
    }

    fn values(&self) -> [f64; 10] {
        [
            self.redis_per_nginx,
            self.hot_per_direct,
            self.hot_per_nginx,
            self.hot_p99_per_nginx,
            self.hot_p50_per_nginx,
            self.hot_p90_per_nginx,
            self.hot_long_p99_per_nginx,
            self.redis_p99_per_nginx,
            self.hot_cpu_per_direct,
            self.hot_cpu_per_nginx,
        ]
    }
}

pub fn run() -> anyhow::Result<()> {
    let rounds = std::env::var("XDP_LB_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(ROUNDS)
        .clamp(1, 20);
    // The test bed's client runs here; the servers each have their own runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (up_rt, proxy_rt, hot_rt, hot_long_rt) = (
        runtime("bench-up")?,
        runtime("bench-proxy")?,
        runtime("bench-hot")?,
        runtime("bench-hot-60s")?,
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
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
    println!(
        "cache-hit benchmark: GET {PATH} ({BODY_BYTES} B body), wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s, \
         {rounds} rounds on {cores:.0} cores"
    );
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
        println!(
            "  {:<28} {:>8} {:>6} {:>6} {:>7} {:>7} {:>6} {:>5} {:>5} {:>4} {:>5} {:>8}  bottleneck",
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
            "req/CPU s"
        );
        let mut m = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            let fetched = upstream.hits(PATH);
            let x = measure(t)?;
            if i > 0 {
                from_upstream += upstream.hits(PATH) - fetched;
            }
            println!(
                "  {:<28} {:>8.0} {:>6.2} {:>6.2} {:>7.2} {:>7.2} {:>6.2} {:>5.2} {:>5.2} {:>4.2} {:>5.2} {:>8.0}  {}",
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
                x.fig.requests_per_s / x.server.max(1e-9),
                x.bottleneck(cores)
            );
            m.push(x);
        }
        let m: [Measured; 5] = m.try_into().expect("five targets");
        let r = Ratios::of(&m);
        for (name, v) in Ratios::NAMES.iter().zip(r.values()) {
            println!("  {name}: {v:.2}");
        }
        all.push(r);
    }
    println!("summary over {rounds} rounds (median, min-max):");
    for (i, name) in Ratios::NAMES.iter().enumerate() {
        let mut vals: Vec<f64> = all.iter().map(|r| r.values()[i]).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_summary() {
        let out = "    Latency   786.39us    1.46ms  20.52ms   91.47%\n  Latency Distribution\n     50%  210.00us\n     75%  400.00us\n     90%  900.00us\n     99%    1.52ms\n  Requests/sec:  41234.56\n";
        let f = parse_wrk(out).unwrap();
        assert_eq!(f.requests_per_s, 41234.56);
        assert!((f.p50_ms - 0.21).abs() < 1e-9);
        assert!((f.p90_ms - 0.9).abs() < 1e-9);
        assert!((f.p99_ms - 1.52).abs() < 1e-9);
        assert!((f.max_ms - 20.52).abs() < 1e-9);
    }
}
