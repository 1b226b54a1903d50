//! Forwarding 1xx interim responses (103 Early Hints and the like) from an upstream to the
//! client, HTTP/1.1 only. hyper's server cannot send a 1xx itself (a service returns exactly
//! one response), so the proxy writes the serialized 1xx head to the client's socket itself,
//! while hyper waits on that request's service future. That is safe only when no byte of
//! hyper's own is pending: hyper reads a request head only after the previous response was
//! fully encoded into its buffer, so while request N's future runs, hyper holds at most the
//! unflushed tail of response N-1 (or its own `100 Continue` for N). [`ClientIo`] therefore
//! records whether hyper's last I/O on the socket was a completed flush ("clean"), and
//! [`WithInterim`] sends a queued head only then. A head once started is always finished
//! before any byte hyper writes next ([`ClientIo::poll_write`] writes the rest first), so
//! the stream stays well-formed even if a write is short.
//!
//! The upstream side is hyper's client callback (`hyper::ext::on_informational`), attached
//! by the proxy only to fetches made on behalf of the request being served: the sink is a
//! task-local of that request's future, so background refreshes (spawned tasks) never see
//! it, and a 1xx that arrives after the request was answered is dropped.
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use http::{HeaderMap, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::headers::strip_hop_by_hop;

tokio::task_local! {
    /// The 1xx sink of the request whose future is running, if it may get 1xx responses.
    static SINK: Sink;
}

/// The sink of the request being served on this task, if any.
pub fn current_sink() -> Option<Sink> {
    SINK.try_with(Sink::clone).ok()
}

/// Per-connection state shared by the socket wrapper, the request futures and the upstream
/// callbacks.
#[derive(Default)]
pub struct Shared {
    /// hyper's last I/O on the socket was a completed flush: nothing of its own is pending.
    clean: AtomicBool,
    /// Serial of the request whose future is running (0: none).
    current: AtomicU64,
    /// Something is queued or committed (a cheap check before taking the lock).
    busy: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Heads received and not yet committed to the socket.
    queued: BytesMut,
    /// Bytes that must reach the socket before anything hyper writes next.
    committed: BytesMut,
    /// The request future to wake when a head is queued.
    waker: Option<Waker>,
    /// Requests begun on this connection, for serials.
    begun: u64,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            clean: AtomicBool::new(true),
            ..Self::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where the proxy hands the 1xx responses of one request.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
    serial: u64,
}

impl Sink {
    /// Queues a 1xx head from the upstream for the client. 100 and 101 are not forwarded: the
    /// proxy reads the whole request body itself (hyper answered `Expect` already) and does
    /// not upgrade connections.
    pub fn push(&self, status: StatusCode, headers: &HeaderMap) {
        if !status.is_informational() || matches!(status.as_u16(), 100 | 101) {
            return;
        }
        if self.shared.current.load(Ordering::Acquire) != self.serial {
            return; // the request was answered already
        }
        let head = serialize(status, headers);
        let mut st = self.shared.lock();
        st.queued.extend_from_slice(&head);
        self.shared.busy.store(true, Ordering::Release);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }
}

/// `HTTP/1.1 103 Early Hints` and the end-to-end header fields.
fn serialize(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut headers = headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(http::header::CONTENT_LENGTH);
    let mut out = Vec::with_capacity(64 + headers.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        status
            .canonical_reason()
            .unwrap_or("Informational")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A 1xx is sent only to HTTP/1.1 clients (RFC 9110 section 15.2: never to HTTP/1.0).
pub fn wants_interim(version: Version) -> bool {
    version == Version::HTTP_11
}

/// The client's socket as hyper sees it: reads pass through; writes first finish any
/// committed 1xx bytes, and the clean flag follows hyper's writes and flushes.
pub struct ClientIo<T> {
    io: T,
    shared: Arc<Shared>,
}

impl<T: AsRawFd> ClientIo<T> {
    pub fn new(io: T, shared: Arc<Shared>) -> Self {
        Self { io, shared }
    }

    pub fn fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl<T: AsyncWrite + Unpin> ClientIo<T> {
    /// Writes the committed bytes out before hyper's next write.
    fn poll_committed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shared.busy.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let mut st = self.shared.lock();
        while !st.committed.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &st.committed))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            st.committed.advance(n);
        }
        if st.queued.is_empty() {
            self.shared.busy.store(false, Ordering::Release);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_committed(cx))?;
        self.shared.clean.store(false, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_committed(cx))?;
        self.shared.clean.store(false, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_committed(cx))?;
        let r = std::task::ready!(Pin::new(&mut self.io).poll_flush(cx));
        if r.is_ok() {
            self.shared.clean.store(true, Ordering::Relaxed);
        }
        Poll::Ready(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_committed(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One request's service future, with its 1xx sink in scope, sending the heads queued for it
/// while it runs.
pub struct WithInterim<F: Future> {
    inner: Pin<Box<tokio::task::futures::TaskLocalFuture<Sink, F>>>,
    shared: Arc<Shared>,
    serial: u64,
    fd: RawFd,
}

/// Wraps a request's future so 1xx heads from its upstream fetch reach the client socket `fd`.
pub fn with_interim<F: Future>(shared: &Arc<Shared>, fd: RawFd, fut: F) -> WithInterim<F> {
    let serial = {
        let mut st = shared.lock();
        st.begun += 1;
        st.begun
    };
    shared.current.store(serial, Ordering::Release);
    let sink = Sink {
        shared: Arc::clone(shared),
        serial,
    };
    WithInterim {
        inner: Box::pin(SINK.scope(sink, fut)),
        shared: Arc::clone(shared),
        serial,
        fd,
    }
}

impl<F: Future> WithInterim<F> {
    /// Commits the queued heads when hyper has nothing pending, and sends what the socket
    /// takes now without blocking; the rest goes out before hyper's next write.
    fn send_queued(&self, cx: &mut Context<'_>) {
        if !self.shared.busy.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.shared.lock();
        st.waker = Some(cx.waker().clone());
        if !st.queued.is_empty() && self.shared.clean.load(Ordering::Relaxed) {
            let q = st.queued.split();
            st.committed.unsplit(q);
        }
        while !st.committed.is_empty() {
            match send_nonblocking(self.fd, &st.committed) {
                Ok(0) | Err(_) => break, // would block or failed: hyper's next write retries
                Ok(n) => st.committed.advance(n),
            }
        }
    }

    /// At the end of the request: heads never committed (hyper never got clean) are dropped.
    fn finish(&self) {
        self.shared.current.store(0, Ordering::Release);
        if !self.shared.busy.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.shared.lock();
        st.waker = None;
        if !st.queued.is_empty() {
            log::debug!(
                "cache: dropping {} bytes of 1xx heads: the previous response was still unsent",
                st.queued.len()
            );
            st.queued.clear();
        }
        if st.committed.is_empty() {
            self.shared.busy.store(false, Ordering::Release);
        }
    }
}

impl<F: Future> Future for WithInterim<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.send_queued(cx);
        let out = std::task::ready!(self.inner.as_mut().poll(cx));
        // A head queued while the future ran its last step goes before the final response.
        self.send_queued(cx);
        self.finish();
        Poll::Ready(out)
    }
}

impl<F: Future> Drop for WithInterim<F> {
    fn drop(&mut self) {
        if self.shared.current.load(Ordering::Acquire) == self.serial {
            self.finish();
        }
    }
}

/// `send(2)` without blocking and without SIGPIPE; `Ok(0)` when the socket is full.
fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid slice for its length; `fd` is the client socket, owned by the
    // connection that also owns the future calling this, so it is open.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(0)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_an_early_hints_head_without_hop_by_hop_fields() {
        let mut h = HeaderMap::new();
        h.insert("link", "</s.css>; rel=preload".parse().unwrap());
        h.insert("connection", "x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        let out = String::from_utf8(serialize(StatusCode::EARLY_HINTS, &h)).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n"
        );
    }

    #[test]
    fn a_sink_takes_nothing_after_its_request_ended() {
        let shared = Shared::new();
        let sink = Sink {
            shared: Arc::clone(&shared),
            serial: 1,
        };
        sink.push(StatusCode::EARLY_HINTS, &HeaderMap::new());
        assert!(shared.lock().queued.is_empty(), "no request is current");
        shared.current.store(1, Ordering::Release);
        sink.push(StatusCode::CONTINUE, &HeaderMap::new());
        assert!(shared.lock().queued.is_empty(), "100 is hyper's own");
        sink.push(StatusCode::EARLY_HINTS, &HeaderMap::new());
        assert!(!shared.lock().queued.is_empty());
    }
}
