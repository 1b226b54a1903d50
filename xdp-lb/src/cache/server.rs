//! Listener and connection handling: HTTP/1.1 with keep-alive, bounded header size, and a
//! periodic statistics log line.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::config::CacheConfig;
use super::interim::{self, ClientIo};
use super::proxy::{Proxy, ProxyError};
use super::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// Clients that do not finish their request headers within this time are dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// On shutdown, requests in progress get this long to finish.
const DRAIN: Duration = Duration::from_secs(10);

pub struct Server {
    listener: TcpListener,
    proxy: Arc<Proxy>,
    max_header_bytes: usize,
    stats_every: Option<Duration>,
}

impl Server {
    pub async fn bind(cfg: CacheConfig) -> Result<Self, ServeError> {
        let listen = cfg.listen;
        let max_header_bytes = cfg.max_header_bytes;
        let stats_every = (cfg.stats_log_s > 0).then(|| Duration::from_secs(cfg.stats_log_s));
        let proxy = Proxy::new(cfg, Arc::new(Stats::default()))?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind(listen, e))?;
        Ok(Self {
            listener,
            proxy,
            max_header_bytes,
            stats_every,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.proxy.stats)
    }

    /// Serves until `shutdown` completes, then lets requests in progress finish (bounded).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let stats = self.stats();
        let stats_log = self.stats_every.map(|every| {
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    log::info!("cache stats: {}", stats.snapshot());
                }
            })
        });
        let follower = self.proxy.hot_follower().map(tokio::spawn);
        // A Redis that is down is not fatal (requests go to the upstreams), but the operator
        // should hear it now rather than from the hit rate; the failed ping logs it, and the
        // watcher logs its return.
        let store = self.proxy.store().clone();
        store.announce_outages();
        let _ = store.ping().await;
        let watcher = tokio::spawn(store.watch());
        log::info!("cache: listening on {}", self.local_addr());
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        log::warn!("cache: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let proxy = Arc::clone(&self.proxy);
            let max_buf = self.max_header_bytes;
            // 1xx heads from upstreams reach the client through this wrapper (see `interim`).
            let shared = interim::Shared::new();
            let io = ClientIo::new(stream, Arc::clone(&shared));
            let fd = io.fd();
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let wants = interim::wants_interim(req.version());
                match proxy.serve(req, peer.ip()) {
                    // Answered without I/O (hot-tier hits): nothing upstream, no 1xx.
                    Either::Left(ready) => Either::Left(ready),
                    Either::Right(fut) if wants => {
                        Either::Right(Either::Left(interim::with_interim(&shared, fd, fut)))
                    }
                    Either::Right(fut) => Either::Right(Either::Right(fut)),
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(max_buf)
                .serve_connection(TokioIo::new(io), svc);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    log::debug!("cache: connection from {peer}: {e}");
                }
            });
        }
        // Idle keep-alive connections close now; busy ones finish their request first.
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            log::warn!("cache: connections still busy after {DRAIN:?}; dropping them");
        }
        for task in [follower, stats_log, Some(watcher)].into_iter().flatten() {
            task.abort();
        }
        log::info!("cache: stopped; {}", stats.snapshot());
        Ok(())
    }
}
