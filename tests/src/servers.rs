//! The backends' servers, each a real socket in its backend namespace:
//! - a TCP line server that greets with its name and answers `PING` and `SHA <len>`;
//! - a UDP responder that answers any datagram with its name;
//! - a minimal HTTP/1.1 server (keep-alive) whose body is its name.
//!
//! The protocols are tiny on purpose: every answer names the backend, which is what the
//! tests count.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use sha2::{Digest, Sha256};

use crate::{
    error::{IoContext, Result},
    netns::NetNs,
};

/// How long a connection handler waits for the next request before giving up, so
/// handler threads never outlive a test by much.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);
/// Upper bound for one `SHA` upload (the transfer test sends 10 MB).
const MAX_UPLOAD: u64 = 64 << 20;

/// Which servers a backend runs, and on which ports.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub tcp_port: Option<u16>,
    pub udp_port: Option<u16>,
    pub http_port: Option<u16>,
    /// Addresses the UDP responder binds one socket each to, so every answer leaves
    /// from the address the request was sent to (the VIP in DSR mode).
    pub udp_addrs: Vec<IpAddr>,
}

/// The servers of one backend; stopped (accept loops joined) on Drop.
pub struct BackendServers {
    name: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BackendServers {
    pub fn start(ns: &NetNs, name: &str, spec: &ServerSpec) -> Result<Self> {
        let mut servers = Self {
            name: name.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        if let Some(port) = spec.tcp_port {
            let l = listen(ns, port)?;
            servers.accept_loop(l, handle_line_client);
        }
        if let Some(port) = spec.http_port {
            let l = listen(ns, port)?;
            servers.accept_loop(l, handle_http_client);
        }
        if let Some(port) = spec.udp_port {
            for addr in &spec.udp_addrs {
                let sa = SocketAddr::new(*addr, port);
                let sock = ns
                    .run(|| UdpSocket::bind(sa))?
                    .ctx(|| format!("binding udp {sa}"))?;
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .ctx(|| "setting udp timeout".into())?;
                let stop = servers.stop.clone();
                let reply = format!("{name}\n").into_bytes();
                servers
                    .threads
                    .push(thread::spawn(move || udp_loop(&sock, &stop, &reply)));
            }
        }
        Ok(servers)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn accept_loop(&mut self, listener: TcpListener, handler: fn(TcpStream, &str)) {
        let stop = self.stop.clone();
        let name = self.name.clone();
        self.threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if !readable(&listener, POLL) {
                    continue;
                }
                // Drain the backlog: the listener is non-blocking.
                while let Ok((stream, _)) = listener.accept() {
                    let name = name.clone();
                    thread::spawn(move || {
                        if stream.set_nonblocking(false).is_ok()
                            && stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_ok()
                        {
                            let _ = stream.set_nodelay(true);
                            handler(stream, &name);
                        }
                    });
                }
            }
        }));
    }
}

impl Drop for BackendServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits up to `timeout` for a pending connection, so the accept loop wakes at once for
/// clients yet still notices the stop flag.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for a descriptor the listener owns for the whole call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// A listener on `[::]:port` (dual-stack: bindv6only is 0 in new namespaces), polled so
/// the accept loop can notice the stop flag.
fn listen(ns: &NetNs, port: u16) -> Result<TcpListener> {
    let sa = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let l = ns
        .run(|| TcpListener::bind(sa))?
        .ctx(|| format!("listening on {sa} in {}", ns.name()))?;
    l.set_nonblocking(true)
        .ctx(|| "making the listener non-blocking".into())?;
    Ok(l)
}

fn udp_loop(sock: &UdpSocket, stop: &AtomicBool, reply: &[u8]) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(reply, from);
        }
    }
}

/// Line protocol: greeting `NAME\n`; `PING` -> `PONG NAME`; `SHA <len>` + len bytes ->
/// hex SHA-256 of those bytes; `DATA <len>` -> `scenario::test_data(len)`; `QUIT` or
/// end of stream closes.
fn handle_line_client(stream: TcpStream, name: &str) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut rd = BufReader::new(stream);
    if out.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match rd.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end();
        let reply = if cmd == "PING" {
            format!("PONG {name}\n")
        } else if let Some(len) = cmd.strip_prefix("DATA ") {
            let Ok(len) = len.parse::<u64>() else { return };
            if len > MAX_UPLOAD {
                return;
            }
            if out
                .write_all(&crate::scenario::test_data(len as usize))
                .is_err()
            {
                return;
            }
            continue;
        } else if let Some(len) = cmd.strip_prefix("SHA ") {
            let Ok(len) = len.parse::<u64>() else { return };
            if len > MAX_UPLOAD {
                return;
            }
            let mut hasher = Sha256::new();
            let mut limited = (&mut rd).take(len);
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                match limited.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        got += n as u64;
                    }
                    Err(_) => return,
                }
            }
            if got != len {
                return;
            }
            format!("{}\n", hex(&hasher.finalize()))
        } else {
            return;
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Answers every request on the connection with the backend's name; closes when the
/// client asks (`Connection: close`) or goes away.
fn handle_http_client(stream: TcpStream, name: &str) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut rd = BufReader::new(stream);
    let body = format!("{name}\n");
    let mut line = String::new();
    loop {
        let mut close = false;
        let mut first = true;
        loop {
            line.clear();
            match rd.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                if first {
                    continue;
                }
                break;
            }
            if first && l.starts_with("HTTP/1.0") {
                close = true;
            }
            first = false;
            if let Some((k, v)) = l.split_once(':') {
                if k.trim().eq_ignore_ascii_case("connection")
                    && v.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        let conn = if close { "close" } else { "keep-alive" };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
