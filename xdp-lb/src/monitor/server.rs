//! The `/metrics` HTTP endpoint (hyper, HTTP/1.1). It only reads: each scrape calls the
//! source for the current text. It listens on loopback unless the operator explicitly
//! allows another address, since the figures name every backend of the site.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::metrics::CONTENT_TYPE;

/// Produces the text of one scrape. It runs on the async runtime, so it should hold a lock
/// only to take the snapshot and render after releasing it:
/// `Arc::new(move || { let input = monitor.lock().unwrap().metrics_input(); render(input) })`
/// (in one expression the lock guard would live until the render is done).
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Scrapers that do not send their request within this time are dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, scrapes in progress get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    LoopbackOnly,
    /// The operator chose to expose the endpoint beyond this machine.
    AllowRemote,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    #[error("refusing to serve /metrics on {0}: not a loopback address (allow it explicitly to expose the figures beyond this machine)")]
    NotLoopback(SocketAddr),
    #[error("cannot listen for /metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the /metrics listener's address")]
    LocalAddr(#[source] std::io::Error),
}

fn check(addr: SocketAddr, exposure: Exposure) -> Result<(), MetricsServerError> {
    if exposure == Exposure::LoopbackOnly && !addr.ip().is_loopback() {
        return Err(MetricsServerError::NotLoopback(addr));
    }
    Ok(())
}

/// Binds the listener, refusing a non-loopback address unless `exposure` allows it
/// (checked before binding, so nothing listens even briefly).
pub async fn bind_metrics(
    addr: SocketAddr,
    exposure: Exposure,
) -> Result<TcpListener, MetricsServerError> {
    check(addr, exposure)?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsServerError::Bind { addr, source })
}

/// Serves `GET /metrics` until `shutdown` completes. The listener's address is checked
/// against `exposure` too, for listeners bound elsewhere.
pub async fn serve_metrics(
    listener: TcpListener,
    source: MetricsSource,
    exposure: Exposure,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsServerError> {
    let local = listener
        .local_addr()
        .map_err(MetricsServerError::LocalAddr)?;
    check(local, exposure)?;
    log::info!("metrics: serving http://{local}/metrics");
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = Arc::clone(&source);
        let svc = service_fn(move |req| {
            let source = Arc::clone(&source);
            async move { Ok::<_, Infallible>(answer(&req, &source)) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("metrics: connection from {peer}: {e}");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("metrics: scrapes still running after {DRAIN:?}; dropping them");
    }
    Ok(())
}

fn answer(req: &Request<Incoming>, source: &MetricsSource) -> Response<Full<Bytes>> {
    let reply = |status, content_type: &str, body: Bytes| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .expect("static status and header are valid")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found: the metrics are at /metrics\n"),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"only GET and HEAD\n"),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    reply(StatusCode::OK, CONTENT_TYPE, Bytes::from(source()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_server_answers_over_loopback_and_stops_on_shutdown() {
        let listener = bind_metrics("127.0.0.1:0".parse().unwrap(), Exposure::LoopbackOnly)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let scrapes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&scrapes);
        let source: MetricsSource = Arc::new(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            format!(
                "# HELP scrapes_total Scrapes.\n# TYPE scrapes_total counter\nscrapes_total {n}\n"
            )
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics(
            listener,
            source,
            Exposure::LoopbackOnly,
            async {
                let _ = stopped.await;
            },
        ));

        let close = "Connection: close\r\n\r\n";
        let ok = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("scrapes_total 1\n"), "{ok}");
        let again = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(
            again.ends_with("scrapes_total 2\n"),
            "each scrape reads the source: {again}"
        );
        let missing = get(addr, &format!("GET / HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(
            addr,
            &format!("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{close}"),
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(
            post.to_ascii_lowercase().contains("allow: get, head"),
            "{post}"
        );

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
    }

    #[tokio::test]
    async fn non_loopback_is_refused_unless_allowed() {
        let err = bind_metrics("0.0.0.0:0".parse().unwrap(), Exposure::LoopbackOnly)
            .await
            .unwrap_err();
        assert!(matches!(err, MetricsServerError::NotLoopback(_)), "{err}");
        assert!(err.to_string().contains("not a loopback address"), "{err}");
        // The same rule guards listeners bound elsewhere; nothing here binds a
        // non-loopback address, so no test opens a port beyond this machine.
        let wide: SocketAddr = "192.0.2.1:9100".parse().unwrap();
        assert!(matches!(
            check(wide, Exposure::LoopbackOnly),
            Err(MetricsServerError::NotLoopback(a)) if a == wide
        ));
        check(wide, Exposure::AllowRemote).unwrap();
        check("[::1]:9100".parse().unwrap(), Exposure::LoopbackOnly).unwrap();
    }
}
