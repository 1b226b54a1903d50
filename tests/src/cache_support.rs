//! Support for the cache tier tests: real `redis-server` processes (single node or a 3-master
//! cluster) on loopback ports, a scriptable upstream HTTP server that counts its requests, an
//! in-process proxy instance, and a small HTTP client.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use xdp_lb::cache::config::{CacheConfig, UpstreamConfig};
use xdp_lb::cache::stats::Stats;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("xdp-lb-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A real `redis-server` on 127.0.0.1, killed by PID when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// On a given port (e.g. one a proxy was told about before Redis existed).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let mut s = Self {
            port,
            child: None,
            dir: TempDir::new("redis"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir.0)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (cargo xtask setup)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs (the bench reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused server would not die from SIGKILL any later, but resume it for clarity.
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) on our own, not yet reaped child.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, like a
    /// Redis stuck in a long command.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Undoes `pause` (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of a child this guard spawned and has not reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "signal {sig} to redis-server {pid}");
    }

    /// Starts the server again on the same port (empty, nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Number of keys in database 0.
    pub fn dbsize(&self) -> u64 {
        self.cli(&["DBSIZE"]).trim().parse().unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three cluster-enabled masters joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }
}

/// What the test upstream answers.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Answer after this long (to simulate a slow or timing-out upstream).
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &str) -> Self {
        Self {
            status: 200,
            body: body.as_bytes().to_vec(),
            ..Self::default()
        }
    }

    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// A request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
}

/// Requests kept in full by an upstream (counts go on past it, for benchmarks).
pub const KEPT_REQUESTS: usize = 10_000;

#[derive(Default)]
struct Record {
    kept: Vec<Seen>,
    per_path: HashMap<String, u64>,
    total: u64,
}

impl Record {
    /// Records a request; returns how many requests for its path came before it.
    fn record(&mut self, s: &Seen) -> u64 {
        self.total += 1;
        if self.kept.len() < KEPT_REQUESTS {
            self.kept.push(s.clone());
        }
        let n = self.per_path.entry(s.path.clone()).or_insert(0);
        *n += 1;
        *n - 1
    }
}

type Handler = dyn Fn(&Seen, u64) -> Reply + Send + Sync;

/// A loopback HTTP/1.1 upstream whose answers come from a closure (given the request and how
/// many requests for that path it had before); it records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Record>>,
    handler: Arc<Mutex<Arc<Handler>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(handler: impl Fn(&Seen, u64) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen: Arc<Mutex<Record>> = Arc::default();
        let handler: Arc<Mutex<Arc<Handler>>> = Arc::new(Mutex::new(Arc::new(handler)));
        let (s2, h2) = (Arc::clone(&seen), Arc::clone(&handler));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, handler) = (Arc::clone(&s2), Arc::clone(&h2));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, handler) = (Arc::clone(&seen), Arc::clone(&handler));
                        async move {
                            let s = Seen {
                                method: req.method().to_string(),
                                path: req
                                    .uri()
                                    .path_and_query()
                                    .map_or("/".into(), |p| p.to_string()),
                                headers: req.headers().clone(),
                            };
                            let n = seen.lock().unwrap().record(&s);
                            let h = Arc::clone(&handler.lock().unwrap());
                            let r = h(&s, n);
                            if !r.delay.is_zero() {
                                tokio::time::sleep(r.delay).await;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(r.body)));
                            *resp.status_mut() =
                                StatusCode::from_u16(r.status).expect("valid status");
                            for (k, v) in r.headers {
                                resp.headers_mut().append(
                                    http::HeaderName::from_bytes(k.as_bytes())
                                        .expect("header name"),
                                    v.parse().expect("header value"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            handler,
            task,
        }
    }

    /// Replaces the answer closure (e.g. to make the upstream fail after it was cached).
    pub fn set_handler(&self, handler: impl Fn(&Seen, u64) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    /// Requests received for `path` (path and query).
    pub fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .per_path
            .get(path)
            .copied()
            .unwrap_or(0) as usize
    }

    pub fn total(&self) -> usize {
        self.seen.lock().unwrap().total as usize
    }

    /// The first `KEPT_REQUESTS` requests, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().kept.clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that answers every connection with bytes that are not HTTP.
pub struct GarbageUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl GarbageUpstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"\x00\x01garbage that is not http\r\n\r\n")
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for GarbageUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A cache configuration for tests: loopback listener on a free port, the given upstreams and
/// Redis nodes, short timeouts, no periodic stats log.
pub fn test_config(upstreams: &[SocketAddr], redis: Vec<String>) -> CacheConfig {
    let mut cfg = CacheConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstreams: upstreams
            .iter()
            .map(|&addr| UpstreamConfig { addr, weight: 1 })
            .collect(),
        upstream_timeout_ms: 2_000,
        lock_wait_ms: 5_000,
        stats_log_s: 0,
        ..CacheConfig::default()
    };
    cfg.redis.nodes = redis;
    // Generous, so a loaded test machine does not turn slow answers into misses.
    cfg.redis.timeout_ms = 1_000;
    cfg
}

/// One proxy instance serving in the test's runtime, stopped on drop.
pub struct ProxyInstance {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ProxyInstance {
    pub async fn start(cfg: CacheConfig) -> Self {
        let server = xdp_lb::cache::Server::bind(cfg)
            .await
            .expect("cache proxy starts");
        let addr = server.local_addr();
        let stats = server.stats();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stats,
            stop: Some(tx),
        }
    }
}

impl Drop for ProxyInstance {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A response as the client got it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive HTTP client for talking to proxies and upstreams.
#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl Default for HttpClient {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }
}

impl HttpClient {
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        let mut has_host = false;
        for (k, v) in headers {
            has_host |= k.eq_ignore_ascii_case("host");
            req = req.header(*k, *v);
        }
        if !has_host {
            req = req.header("host", "cache.test");
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(20), self.0.request(req))
            .await
            .expect("response within 20s")
            .expect("http response");
        let (p, b) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(20), b.collect())
            .await
            .expect("body within 20s")
            .expect("body")
            .to_bytes();
        Got {
            status: p.status,
            headers: p.headers,
            body,
        }
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Got {
        self.send(addr, "GET", path, &[], b"").await
    }

    pub async fn get_with(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
        self.send(addr, "GET", path, headers, b"").await
    }
}

/// Sends raw bytes on a fresh connection and returns what came back until the server closed
/// or went quiet (for malformed requests hyper's client would refuse to send).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    exchange(addr, bytes, true)
}

/// Sends raw bytes on a fresh connection and returns everything that came back until the
/// server closed it (bounded by a 5 s read timeout): for requests with `Connection: close`
/// whose whole answer matters, e.g. interim 1xx heads before the final response.
pub fn raw_exchange_to_close(addr: SocketAddr, bytes: &[u8]) -> String {
    exchange(addr, bytes, false)
}

/// Reads until the server closes or a read times out (5 s), or, with `first_head`, until
/// the end of the first response head has arrived.
fn exchange(addr: SocketAddr, bytes: &[u8], first_head: bool) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to proxy");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if first_head && out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The real `xdp-lb` binary running a cache verb, its stderr collected line by line; killed
/// (by PID) on drop.
pub struct CacheProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl CacheProcess {
    pub fn spawn(args: &[&str]) -> Self {
        let bin = crate::binary::xdp_lb_bin().expect("xdp-lb binary");
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start xdp-lb");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle` (the bound only keeps a broken run from
    /// hanging; nothing is measured) and returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Lines seen so far that contain `needle`.
    pub fn count_lines(&mut self, needle: &str) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for CacheProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the real `xdp-lb` binary to completion: exit success, stdout, stderr.
pub fn run_xdp_lb(args: &[&str]) -> (bool, String, String) {
    let bin = crate::binary::xdp_lb_bin().expect("xdp-lb binary");
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run xdp-lb");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

type RawHandler = dyn Fn(u64) -> Vec<u8> + Send + Sync;

/// An upstream that writes raw bytes: for its n-th request (from 0) whatever the closure
/// returns, then closes the connection. For answers hyper's server would not send: interim
/// 1xx responses, bodies cut short of their Content-Length.
pub struct RawUpstream {
    pub addr: SocketAddr,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(answer: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicU64::new(0));
        let answer: Arc<RawHandler> = Arc::new(answer);
        let c2 = Arc::clone(&count);
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (count, answer) = (Arc::clone(&c2), Arc::clone(&answer));
                tokio::spawn(async move {
                    // Read the request head (the proxy sends no body on GET).
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(&answer(n)).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Self { addr, count, task }
    }

    pub fn requests(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
