//! Real servers on loopback for the probe and scheduler tests. Each runs on a task
//! that owns its sockets; dropping the server (or `stop().await`) aborts the task and
//! so closes every socket it had.
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream, UdpSocket},
    task::{JoinHandle, JoinSet},
};

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// What the test servers saw, shared with the test.
#[derive(Default)]
pub struct Seen {
    /// When each connection (or request, for HTTP) arrived, and from where.
    pub arrivals: Mutex<Vec<(Instant, SocketAddr)>>,
    /// Host headers of HTTP requests, in order.
    pub hosts: Mutex<Vec<String>>,
    /// Requests being answered right now, and the most seen at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Connections the client closed (EOF seen), for the never-answering server.
    pub closed: AtomicUsize,
}

impl Seen {
    pub fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    pub fn arrival_times(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().iter().map(|a| a.0).collect()
    }

    fn arrive(&self, peer: SocketAddr) {
        self.arrivals.lock().unwrap().push((Instant::now(), peer));
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Server {
    /// Closes the server's sockets and waits until they are gone.
    pub async fn stop(mut self) {
        self.task.abort();
        // Cancelled is the expected outcome.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `bind` and runs `handle` on a task of its own for every connection accepted.
async fn serve_tcp<F, Fut>(bind: SocketAddr, handle: F) -> Server
where
    F: Fn(TcpStream, SocketAddr, Arc<Seen>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(bind).await.expect("bind test server");
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        // Runs until the test aborts it; the JoinSet's tasks go with it.
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            // Reap finished connections so the set does not grow with every check.
            while connections.try_join_next().is_some() {}
            connections.spawn(handle(stream, peer, Arc::clone(&shared)));
        }
    });
    Server { addr, seen, task }
}

/// Accepts connections, records them, and closes them.
pub async fn tcp_server(bind: SocketAddr) -> Server {
    serve_tcp(bind, |stream, peer, seen| async move {
        seen.arrive(peer);
        drop(stream);
    })
    .await
}

/// Accepts connections and never answers; counts the ones the client closes.
pub async fn silent_tcp_server() -> Server {
    serve_tcp(loopback(), |mut stream, peer, seen| async move {
        seen.arrive(peer);
        let mut buf = [0u8; 4096];
        // Read (and ignore) the request until the client gives up.
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        seen.closed.fetch_add(1, Ordering::SeqCst);
    })
    .await
}

/// An HTTP/1.1 server answering every request with `status` and `body` after `delay`.
pub async fn http_server(
    bind: SocketAddr,
    status: u16,
    body: &'static str,
    delay: Duration,
) -> Server {
    serve_tcp(bind, move |stream, peer, seen| async move {
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.arrive(peer);
                let host = request
                    .headers()
                    .get(hyper::header::HOST)
                    .map(|h| h.to_str().unwrap_or("<binary>").to_owned())
                    .unwrap_or_default();
                seen.hosts.lock().unwrap().push(host);
                let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        // A client that gives up mid-answer is normal here (timeouts).
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// Echoes every datagram back, prefixed with `prefix`.
pub async fn udp_echo_server(prefix: &'static [u8]) -> Server {
    udp_echo_server_on(loopback(), prefix).await
}

/// [`udp_echo_server`] on a given address.
pub async fn udp_echo_server_on(bind: SocketAddr, prefix: &'static [u8]) -> Server {
    let socket = UdpSocket::bind(bind).await.expect("bind udp echo");
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        // Runs until the test aborts it.
        loop {
            if let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                shared.arrive(peer);
                let mut reply = prefix.to_vec();
                reply.extend_from_slice(&buf[..len]);
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    Server { addr, seen, task }
}

/// A bound UDP socket that never reads.
pub async fn silent_udp_socket() -> UdpSocket {
    UdpSocket::bind(loopback()).await.expect("bind silent udp")
}

/// A loopback port with nothing listening (bound, then closed again).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    listener.local_addr().unwrap()
}

/// A loopback UDP port with no socket (bound, then closed again).
pub async fn closed_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind(loopback()).await.unwrap();
    socket.local_addr().unwrap()
}

/// Polls `ready` every 10 ms until it holds or `limit` passes; true if it held.
pub async fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    // Bounded by the deadline.
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ready()
}
