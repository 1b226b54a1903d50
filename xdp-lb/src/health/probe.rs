//! The probes: one check of one backend, cut at the check's timeout.
//!
//! - tcp: a connect; the connection is closed at once.
//! - http: an HTTP/1.1 `GET` on a fresh connection (`Connection: close`), the status must
//!   lie in the expected range and, if asked, the first [`MAX_BODY`] bytes of the body
//!   must contain a substring.
//! - udp: one datagram out on a connected socket, one datagram back, which must contain
//!   the expected bytes if any. An ICMP port unreachable (a closed port) shows up as
//!   "connection refused" on the connected socket; silence as "no reply".
//!
//! Nothing is spawned: the HTTP connection is driven inside the probe's own future, so
//! when the timeout drops it, the socket is closed with it and nothing lingers.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::pin,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use super::config::{HealthCheck, HttpProbe, Probe, UdpProbe};

/// Bytes of an HTTP body searched for `expect_body`: enough for a status page, small
/// enough that a backend streaming a large body cannot make a check expensive.
pub const MAX_BODY: usize = 64 * 1024;
/// The User-Agent of HTTP checks, so backends can tell them from traffic in their logs.
pub const USER_AGENT: &str = concat!("xdp-lb-health-check/", env!("CARGO_PKG_VERSION"));

/// Why a check failed. The `Display` texts are what the controller logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// The probe did not finish within the check's timeout.
    #[error("timeout after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("connection refused")]
    Refused,
    #[error("connection reset")]
    Reset,
    /// The HTTP status was outside the expected range.
    #[error("status {0}")]
    Status(u16),
    /// The HTTP body did not contain `expect_body`.
    #[error("body mismatch")]
    BodyMismatch,
    /// The server closed the connection before a complete response.
    #[error("connection closed before a complete response")]
    Closed,
    /// The server's bytes were not an HTTP/1.x response.
    #[error("invalid http response")]
    BadResponse,
    /// No UDP reply within the timeout.
    #[error("no reply")]
    NoReply,
    /// A UDP reply came but did not contain `expect`.
    #[error("reply mismatch")]
    ReplyMismatch,
    /// The configured source address could not be bound (not local, or in use).
    #[error("cannot bind source address {addr}: {kind}")]
    Bind { addr: IpAddr, kind: io::ErrorKind },
    /// Any other socket error (e.g. host unreachable).
    #[error("{0}")]
    Io(io::ErrorKind),
}

/// A passing check's latency, or why it failed.
pub type ProbeResult = Result<Duration, ProbeFailure>;

/// Runs one check of `check` and returns its latency (from the start of the probe to the
/// verdict), or the failure. A `none` check passes at once.
pub async fn run(check: &HealthCheck) -> ProbeResult {
    let started = Instant::now();
    let verdict = tokio::time::timeout(check.timeout, async {
        match &check.probe {
            Probe::None => Ok(()),
            Probe::Tcp => connect(check.target, check.source).await.map(drop),
            Probe::Http(http) => http_get(check, http).await,
            Probe::Udp(udp) => udp_exchange(check, udp).await,
        }
    })
    .await;
    match verdict {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(failure)) => Err(failure),
        Err(_elapsed) => Err(match check.probe {
            Probe::Udp(_) => ProbeFailure::NoReply,
            _ => ProbeFailure::Timeout(check.timeout),
        }),
    }
}

async fn connect(target: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ProbeFailure> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(io_failure)?;
    if let Some(addr) = source {
        socket
            .bind(SocketAddr::new(addr, 0))
            .map_err(|err| ProbeFailure::Bind {
                addr,
                kind: err.kind(),
            })?;
    }
    socket.connect(target).await.map_err(io_failure)
}

async fn http_get(check: &HealthCheck, probe: &HttpProbe) -> Result<(), ProbeFailure> {
    let stream = connect(check.target, check.source).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(hyper_failure)?;

    let mut request = Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = Uri::from(probe.path.clone());
    let host = match &probe.host {
        Some(host) => host.clone(),
        // A SocketAddr prints as a valid authority ("10.0.0.1:80", "[::1]:80").
        None => http::HeaderValue::try_from(check.target.to_string())
            .expect("a socket address is a valid header value"),
    };
    let headers = request.headers_mut();
    headers.insert(header::HOST, host);
    headers.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    headers.insert(
        header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    );

    let exchange = async {
        let response = sender.send_request(request).await.map_err(hyper_failure)?;
        let status = response.status().as_u16();
        if !probe.expect_status.contains(status) {
            return Err(ProbeFailure::Status(status));
        }
        let Some(needle) = &probe.expect_body else {
            return Ok(());
        };
        let mut body = response.into_body();
        let mut seen = Vec::new();
        // Bounded by MAX_BODY bytes (and by the timeout around the probe).
        while seen.len() < MAX_BODY {
            match body.frame().await {
                None => break,
                Some(Err(err)) => return Err(hyper_failure(err)),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen.extend_from_slice(data);
                    }
                }
            }
        }
        if contains(&seen, needle.as_bytes()) {
            Ok(())
        } else {
            Err(ProbeFailure::BodyMismatch)
        }
    };
    // The connection future moves the bytes; the exchange waits on it. Poll both in
    // this task. If the connection ends first (e.g. the server closed it after the
    // response), the exchange still has its answer or its error to give.
    let mut exchange = pin!(exchange);
    let mut conn = pin!(conn);
    tokio::select! {
        biased;
        verdict = &mut exchange => verdict,
        _ = &mut conn => exchange.await,
    }
}

async fn udp_exchange(check: &HealthCheck, probe: &UdpProbe) -> Result<(), ProbeFailure> {
    let local = match (check.source, check.target) {
        (Some(addr), _) => addr,
        (None, SocketAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, SocketAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .map_err(|err| ProbeFailure::Bind {
            addr: local,
            kind: err.kind(),
        })?;
    // Connected, so the kernel filters replies to the target and reports ICMP errors.
    socket.connect(check.target).await.map_err(io_failure)?;
    socket.send(&probe.send).await.map_err(io_failure)?;
    let mut reply = vec![0u8; 65536];
    let len = socket.recv(&mut reply).await.map_err(io_failure)?;
    match &probe.expect {
        Some(expect) if !contains(&reply[..len], expect) => Err(ProbeFailure::ReplyMismatch),
        _ => Ok(()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn io_failure(err: io::Error) -> ProbeFailure {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => ProbeFailure::Refused,
        io::ErrorKind::ConnectionReset => ProbeFailure::Reset,
        kind => ProbeFailure::Io(kind),
    }
}

fn hyper_failure(err: hyper::Error) -> ProbeFailure {
    // A socket error underneath says more than hyper's own classification.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&err);
    // Bounded: error chains are short and finite.
    while let Some(inner) = cause {
        if let Some(io_err) = inner.downcast_ref::<io::Error>() {
            return match io_err.kind() {
                io::ErrorKind::ConnectionRefused => ProbeFailure::Refused,
                io::ErrorKind::ConnectionReset => ProbeFailure::Reset,
                // hyper reports an early EOF as UnexpectedEof underneath.
                io::ErrorKind::UnexpectedEof => ProbeFailure::Closed,
                kind => ProbeFailure::Io(kind),
            };
        }
        cause = inner.source();
    }
    if err.is_incomplete_message() || err.is_closed() || err.is_canceled() {
        ProbeFailure::Closed
    } else {
        ProbeFailure::BadResponse
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::health::{
        config::StatusRange,
        testutil::{self, loopback},
    };

    const SHORT: Duration = Duration::from_millis(300);

    fn check(probe: Probe, target: SocketAddr) -> HealthCheck {
        HealthCheck {
            probe,
            target,
            source: None,
            interval: SHORT * 2,
            timeout: SHORT,
            rise: 1,
            fall: 1,
        }
    }

    fn http(expect_body: Option<&str>, host: Option<&'static str>) -> Probe {
        Probe::Http(HttpProbe {
            path: http::uri::PathAndQuery::from_static("/healthz"),
            host: host.map(http::HeaderValue::from_static),
            expect_status: StatusRange { lo: 200, hi: 399 },
            expect_body: expect_body.map(str::to_owned),
        })
    }

    fn udp(send: &[u8], expect: Option<&[u8]>) -> Probe {
        Probe::Udp(UdpProbe {
            send: send.to_vec(),
            expect: expect.map(<[u8]>::to_vec),
        })
    }

    #[test]
    fn failure_texts_are_what_the_controller_logs() {
        let texts = [
            (
                ProbeFailure::Timeout(Duration::from_secs(1)),
                "timeout after 1s",
            ),
            (
                ProbeFailure::Timeout(Duration::from_millis(1500)),
                "timeout after 1s 500ms",
            ),
            (ProbeFailure::Refused, "connection refused"),
            (ProbeFailure::Status(503), "status 503"),
            (ProbeFailure::BodyMismatch, "body mismatch"),
            (ProbeFailure::NoReply, "no reply"),
            (ProbeFailure::ReplyMismatch, "reply mismatch"),
            (
                ProbeFailure::Io(io::ErrorKind::HostUnreachable),
                "host unreachable",
            ),
        ];
        for (failure, text) in texts {
            assert_eq!(failure.to_string(), text);
        }
    }

    #[tokio::test]
    async fn tcp_passes_against_a_listener() {
        let server = testutil::tcp_server(loopback()).await;
        let latency = run(&check(Probe::Tcp, server.addr))
            .await
            .expect("tcp check passes");
        assert!(latency < SHORT, "latency {latency:?} within the timeout");
        assert!(testutil::wait_for(SHORT * 10, || server.seen.count() == 1).await);
    }

    #[tokio::test]
    async fn tcp_is_refused_on_a_closed_port() {
        let target = testutil::closed_port().await;
        assert_eq!(
            run(&check(Probe::Tcp, target)).await,
            Err(ProbeFailure::Refused)
        );
    }

    #[tokio::test]
    async fn tcp_times_out_when_the_accept_queue_is_full() {
        // A listener that never accepts, with a backlog of 0: Linux queues one
        // connection, then drops further SYNs, so a connect hangs until its SYN retry.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(loopback()).unwrap();
        let listener = socket.listen(0).unwrap();
        let target = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        // Bounded: the queue holds one or two connections.
        for _ in 0..8 {
            match tokio::time::timeout(SHORT, TcpStream::connect(target)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(err)) => panic!("filler connect failed: {err}"),
                Err(_) => break,
            }
        }
        assert!(
            !fillers.is_empty() && fillers.len() < 8,
            "queue filled with {}",
            fillers.len()
        );
        assert_eq!(
            run(&check(Probe::Tcp, target)).await,
            Err(ProbeFailure::Timeout(SHORT))
        );
    }

    #[tokio::test]
    async fn tcp_binds_the_source_address() {
        let server = testutil::tcp_server(loopback()).await;
        let mut with_source = check(Probe::Tcp, server.addr);
        with_source.source = Some("127.0.0.2".parse().unwrap());
        run(&with_source)
            .await
            .expect("check from 127.0.0.2 passes");
        assert!(testutil::wait_for(SHORT * 10, || server.seen.count() == 1).await);
        let peer = server.seen.arrivals.lock().unwrap()[0].1;
        assert_eq!(peer.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_source_address_that_is_not_local_is_a_bind_failure() {
        let server = testutil::tcp_server(loopback()).await;
        let mut foreign = check(Probe::Tcp, server.addr);
        // TEST-NET-1: assigned to no interface here, so bind fails before any packet.
        foreign.source = Some("192.0.2.1".parse().unwrap());
        assert_eq!(
            run(&foreign).await,
            Err(ProbeFailure::Bind {
                addr: "192.0.2.1".parse().unwrap(),
                kind: io::ErrorKind::AddrNotAvailable,
            })
        );
    }

    #[tokio::test]
    async fn http_passes_on_200() {
        let server = testutil::http_server(loopback(), 200, "ok", Duration::ZERO).await;
        run(&check(http(None, None), server.addr))
            .await
            .expect("200 passes");
        assert_eq!(server.seen.count(), 1);
    }

    #[tokio::test]
    async fn http_fails_with_the_status_outside_the_range() {
        let server = testutil::http_server(loopback(), 503, "busy", Duration::ZERO).await;
        assert_eq!(
            run(&check(http(None, None), server.addr)).await,
            Err(ProbeFailure::Status(503))
        );
        let not_found = testutil::http_server(loopback(), 404, "", Duration::ZERO).await;
        assert_eq!(
            run(&check(http(None, None), not_found.addr)).await,
            Err(ProbeFailure::Status(404))
        );
    }

    #[tokio::test]
    async fn http_checks_the_body() {
        let server =
            testutil::http_server(loopback(), 200, "status: degraded", Duration::ZERO).await;
        assert_eq!(
            run(&check(http(Some("status: ok"), None), server.addr)).await,
            Err(ProbeFailure::BodyMismatch)
        );
        run(&check(http(Some("degraded"), None), server.addr))
            .await
            .expect("body contains the substring");
    }

    #[tokio::test]
    async fn http_sends_the_host_header() {
        let server = testutil::http_server(loopback(), 200, "ok", Duration::ZERO).await;
        run(&check(http(None, Some("www.example")), server.addr))
            .await
            .expect("check passes");
        run(&check(http(None, None), server.addr))
            .await
            .expect("check passes");
        assert_eq!(
            *server.seen.hosts.lock().unwrap(),
            vec!["www.example".to_owned(), server.addr.to_string()]
        );
    }

    #[tokio::test]
    async fn http_is_refused_on_a_closed_port() {
        let target = testutil::closed_port().await;
        assert_eq!(
            run(&check(http(None, None), target)).await,
            Err(ProbeFailure::Refused)
        );
    }

    #[tokio::test]
    async fn http_against_a_server_that_never_answers_is_cut_at_the_timeout() {
        let server = testutil::silent_tcp_server().await;
        assert_eq!(
            run(&check(http(None, None), server.addr)).await,
            Err(ProbeFailure::Timeout(SHORT))
        );
        // The probe's connection is gone with it, nothing lingers.
        assert!(
            testutil::wait_for(SHORT * 10, || server.seen.closed.load(Ordering::SeqCst)
                == 1)
            .await,
            "the server saw the probe close its connection"
        );
    }

    #[tokio::test]
    async fn http_and_udp_work_over_ipv6_loopback() {
        let v6: SocketAddr = "[::1]:0".parse().unwrap();
        let server = testutil::http_server(v6, 200, "ok", Duration::ZERO).await;
        run(&check(http(None, None), server.addr))
            .await
            .expect("http over ::1 passes");
        // The default Host header is a valid IPv6 authority, brackets included.
        assert_eq!(
            *server.seen.hosts.lock().unwrap(),
            vec![format!("[::1]:{}", server.addr.port())]
        );
        let echo = testutil::udp_echo_server_on(v6, b"").await;
        run(&check(udp(b"ping", Some(b"ping")), echo.addr))
            .await
            .expect("udp over ::1 passes");
    }

    #[tokio::test]
    async fn udp_passes_on_a_reply_and_checks_its_bytes() {
        let server = testutil::udp_echo_server(b"pong ").await;
        run(&check(udp(b"ping", None), server.addr))
            .await
            .expect("any reply passes");
        run(&check(udp(b"ping", Some(b"pong ping")), server.addr))
            .await
            .expect("reply contains the expected bytes");
        assert_eq!(
            run(&check(udp(b"ping", Some(b"PONG")), server.addr)).await,
            Err(ProbeFailure::ReplyMismatch)
        );
        assert_eq!(server.seen.count(), 3);
    }

    #[tokio::test]
    async fn udp_gets_no_reply_from_a_silent_socket() {
        let silent = testutil::silent_udp_socket().await;
        let target = silent.local_addr().unwrap();
        assert_eq!(
            run(&check(udp(b"ping", None), target)).await,
            Err(ProbeFailure::NoReply)
        );
        // The datagram did arrive: the socket was silent, not unreachable.
        let mut buf = [0u8; 16];
        let (len, _) = silent
            .try_recv_from(&mut buf)
            .expect("probe datagram queued");
        assert_eq!(&buf[..len], b"ping");
    }

    #[tokio::test]
    async fn udp_is_refused_on_a_closed_port() {
        let target = testutil::closed_udp_port().await;
        assert_eq!(
            run(&check(udp(b"ping", None), target)).await,
            Err(ProbeFailure::Refused)
        );
    }
}
