//! `cargo xtask bench cache-cost`: the user-space and kernel-entry work of one hot-tier hit
//! against one answer of the bench's bare upstream, counted in instructions by valgrind's
//! callgrind rather than timed, so the figure repeats on a machine shared with builds (the
//! timed `cache` bench swings by 20% there). A fixed number of sequential keep-alive GETs go
//! to each server, each on its own one-thread runtime; the bench re-runs itself under
//! `callgrind --separate-threads=yes` and divides each server thread's instruction count by
//! the requests it answered. What the kernel does for the two syscalls per request is not
//! counted (callgrind sees user space only); it is the same for both servers.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::cache_support::{test_config, ProxyInstance, RedisServer, Reply, TempDir, Upstream};

const PATH: &str = "/bench/object";
const BODY_BYTES: usize = 1024;
/// Requests per server; the warm-up before counting starts is the same for both.
const REQUESTS: usize = 5_000;
/// Set in the re-run under valgrind.
const INNER: &str = "XDP_LB_COST_INNER";

pub fn run() -> anyhow::Result<()> {
    if std::env::var_os(INNER).is_some() {
        return serve_and_load();
    }
    let dir = TempDir::new("cache-cost");
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--separate-threads=yes", "--quiet"])
        .arg(format!("--callgrind-out-file={}/cg.out", dir.0.display()))
        .arg(&exe)
        .arg("cache-cost")
        .env(INNER, "1")
        .status()
        .context("running valgrind (apt-get install valgrind)")?;
    if !status.success() {
        bail!("the run under callgrind failed: {status}");
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir.0)? {
        let path = entry?.path();
        if let Some(role) = thread_role(&path)? {
            found.push((role, instructions(&path)?, path));
        }
    }
    let per = |role: &str| {
        found
            .iter()
            .find(|(r, ..)| *r == role)
            .map(|(_, n, _)| *n as f64 / REQUESTS as f64)
    };
    let (Some(up), Some(hot)) = (per("bare upstream"), per("hot tier")) else {
        bail!("callgrind output lacks a server thread: found {found:?}");
    };
    println!(
        "cache-cost: {REQUESTS} sequential keep-alive GETs of {PATH} ({BODY_BYTES} B) per server, \
         instructions per request in the server's thread (callgrind; user space only)"
    );
    println!("  bare upstream: {up:.0}");
    println!("  hot-tier hit:  {hot:.0}");
    println!("  hot tier / bare upstream: {:.3}", hot / up);
    let keep = std::env::temp_dir().join("xdp-lb-cache-cost");
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(&keep)?;
    for (role, _, path) in &found {
        let to = keep.join(format!("{}.callgrind", role.replace(' ', "-")));
        std::fs::copy(path, &to)?;
        println!("  {role}: callgrind_annotate {}", to.display());
    }
    Ok(())
}

/// Which server a per-thread callgrind file belongs to, by a function only its worker runs
/// (the connection tasks; the main thread only starts the servers and runs the client).
fn thread_role(path: &Path) -> anyhow::Result<Option<&'static str>> {
    let text = std::fs::read_to_string(path)?;
    Ok(
        if text.contains("cache::server::Server::run::{{closure}}::{{closure}}") {
            Some("hot tier")
        } else if text.contains("cache_support::Upstream::start::{{closure}}::{{closure}}") {
            Some("bare upstream")
        } else {
            None
        },
    )
}

/// The `summary:` (or `totals:`) instruction count of a callgrind file.
fn instructions(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no instruction total in {}", path.display()))
}

/// Under valgrind: both servers up, warmed, then `REQUESTS` GETs to each over one connection.
fn serve_and_load() -> anyhow::Result<()> {
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let (up_rt, hot_rt) = (runtime("cost-up")?, runtime("cost-hot")?);
    let redis = RedisServer::start();
    let upstream = up_rt.block_on(async {
        let body = "x".repeat(BODY_BYTES);
        Upstream::start(move |_, _| Reply::ok(&body).header("cache-control", "max-age=3600")).await
    });
    let mut cfg = test_config(&[upstream.addr], vec![redis.url()]);
    // Outlasts the run, so no request waits on a Redis refresh.
    cfg.hot_ttl_ms = 600_000;
    let hot = hot_rt.block_on(ProxyInstance::start(cfg));
    for addr in [upstream.addr, hot.addr] {
        let mut c = Client::connect(addr)?;
        // Fills the cache (the first answer comes from the upstream, the second from Redis)
        // and the connection's buffers before the counted requests.
        for _ in 0..50 {
            c.get()?;
        }
        for _ in 0..REQUESTS {
            c.get()?;
        }
    }
    if hot.stats.snapshot().hot_hits < REQUESTS as u64 {
        bail!(
            "the hot tier answered fewer than {REQUESTS} requests: {}",
            hot.stats.snapshot()
        );
    }
    hot_rt.block_on(async { drop(hot) });
    up_rt.block_on(async { drop(upstream) });
    Ok(())
}

/// A minimal blocking HTTP/1.1 client: one keep-alive connection, `Content-Length` bodies.
struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            request: format!("GET {PATH} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one GET and reads its whole answer; fails on anything but a 200 of the body.
    fn get(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.request)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.buf[..end])?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("unexpected answer: {head}");
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .context("answer without Content-Length")?;
            if len != BODY_BYTES {
                bail!("body of {len} bytes, expected {BODY_BYTES}");
            }
            if self.buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}
