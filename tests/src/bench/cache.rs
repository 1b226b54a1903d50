//! `cargo xtask bench cache`: cache-hit throughput and p99 latency of the cache tier, measured
//! with wrk against the same upstream served directly and against nginx `proxy_cache`
//! configured for the same content, in the same run. The upstream, the proxy and the
//! hot-tier proxy each run on their own one-thread tokio runtime (nginx runs one worker),
//! and the CPU time each used during each run is printed, so the comparison is fair.
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

/// One wrk run.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub requests_per_s: f64,
    pub p99_ms: f64,
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

fn parse_wrk(out: &str) -> anyhow::Result<Figures> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("wrk printed no Requests/sec")?;
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .context("wrk printed no 99% latency")?;
    let (num, unit) = p99.split_at(
        p99.find(|c: char| c.is_ascii_alphabetic())
            .context("latency unit")?,
    );
    let num: f64 = num.parse().context("latency number")?;
    let ms = match unit {
        "us" => num / 1000.0,
        "ms" => num,
        "s" => num * 1000.0,
        other => bail!("unknown wrk latency unit {other}"),
    };
    Ok(Figures {
        requests_per_s: rps,
        p99_ms: ms,
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

/// Where a side's CPU time is read: this process's threads of one name (tokio's
/// blocking-pool threads carry the name too), or another process.
enum Side {
    Threads(&'static str),
    Process(u32),
}

impl Side {
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

/// CPU seconds each side uses while `f` runs.
fn cpu_during<T>(sides: &[Side], f: impl FnOnce() -> T) -> (T, Vec<f64>) {
    let before: Vec<f64> = sides.iter().map(Side::cpu_seconds).collect();
    let out = f();
    let used = sides
        .iter()
        .zip(before)
        .map(|(s, b)| s.cpu_seconds() - b)
        .collect();
    (out, used)
}

pub fn run() -> anyhow::Result<()> {
    // The test bed's client runs here; the servers each have their own runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (up_rt, proxy_rt, hot_rt) = (
        runtime("bench-up")?,
        runtime("bench-proxy")?,
        runtime("bench-hot")?,
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
    let nginx = Nginx::start(upstream.addr)?;
    // Fill the caches with the Host wrk will send, and check they answer hits.
    rt.block_on(async {
        let c = HttpClient::default();
        for addr in [proxy.addr, hot.addr, nginx.addr] {
            let host = addr.to_string();
            c.get_with(addr, PATH, &[("host", &host)]).await;
            let r = c.get_with(addr, PATH, &[("host", &host)]).await;
            if r.x_cache() != "HIT" {
                bail!("cache at {addr} did not warm: X-Cache {:?}", r.x_cache());
            }
        }
        anyhow::Ok(())
    })?;
    // wrk blocks this thread; the servers' runtimes keep serving.
    let sides = [
        Side::Threads("bench-up"),
        Side::Threads("bench-proxy"),
        Side::Threads("bench-hot"),
        Side::Process(nginx.child.id()),
    ];
    let (direct, cpu_direct) = cpu_during(&sides, || wrk(upstream.addr));
    let before = upstream.hits(PATH);
    let (ours, cpu_ours) = cpu_during(&sides, || wrk(proxy.addr));
    let (ours_hot, cpu_hot) = cpu_during(&sides, || wrk(hot.addr));
    let (theirs, cpu_nginx) = cpu_during(&sides, || wrk(nginx.addr));
    let (direct, ours, ours_hot, theirs) = (direct?, ours?, ours_hot?, theirs?);
    let upstream_hits = upstream.hits(PATH) - before;
    println!(
        "cache-hit benchmark: GET {PATH} ({BODY_BYTES} B body), wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s"
    );
    println!(
        "{:<28} {:>12} {:>10}   CPU s (upstream/proxy/hot proxy/nginx)",
        "target", "requests/s", "p99 ms"
    );
    for (name, f, cpu) in [
        ("upstream direct", direct, &cpu_direct),
        ("xdp-lb cache (redis hit)", ours, &cpu_ours),
        ("xdp-lb cache (hot tier 1s)", ours_hot, &cpu_hot),
        ("nginx proxy_cache hit", theirs, &cpu_nginx),
    ] {
        println!(
            "{name:<28} {:>12.0} {:>10.2}   {:.2}/{:.2}/{:.2}/{:.2}",
            f.requests_per_s, f.p99_ms, cpu[0], cpu[1], cpu[2], cpu[3]
        );
    }
    println!("(nginx: one process, no master; Redis, not counted, serves the redis-hit run)");
    for (name, f) in [("xdp-lb", ours), ("xdp-lb hot", ours_hot)] {
        println!(
            "ratios {name}: /direct rps {:.2}, /nginx rps {:.2}, /nginx p99 {:.2}",
            f.requests_per_s / direct.requests_per_s,
            f.requests_per_s / theirs.requests_per_s,
            f.p99_ms / theirs.p99_ms
        );
    }
    println!("upstream requests during the cache runs: {upstream_hits}");
    println!("xdp-lb stats: {}", proxy.stats.snapshot());
    println!("xdp-lb hot stats: {}", hot.stats.snapshot());
    drop(nginx);
    proxy_rt.block_on(async { drop(proxy) });
    hot_rt.block_on(async { drop(hot) });
    up_rt.block_on(async { drop(upstream) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_summary() {
        let out = "  Latency Distribution\n     50%  210.00us\n     99%    1.52ms\n  Requests/sec:  41234.56\n";
        let f = parse_wrk(out).unwrap();
        assert_eq!(f.requests_per_s, 41234.56);
        assert!((f.p99_ms - 1.52).abs() < 1e-9);
    }
}
