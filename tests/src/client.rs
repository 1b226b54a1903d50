//! Client side of the servers' protocols, with bounded connect and read timeouts. Call
//! these on a thread inside the client namespace (`NetNs::run`).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use crate::error::{BedError, IoContext, Result};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `setsockopt(fd, SOL_SOCKET, opt, value)`.
fn set_socket_option<T>(fd: libc::c_int, opt: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` points to a live T of the size given; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `connect`'s read and write timeouts on a connected stream.
fn with_timeouts(s: TcpStream) -> Result<TcpStream> {
    s.set_read_timeout(Some(TIMEOUT))
        .ctx(|| "setting read timeout".into())?;
    s.set_write_timeout(Some(TIMEOUT))
        .ctx(|| "setting write timeout".into())?;
    Ok(s)
}

/// A blocking IPv4 TCP connection from local port `port` (bind before connect, which
/// std's TcpStream cannot do), with `connect`'s timeouts once connected.
fn connect_from_port(addr: SocketAddr, port: u16) -> Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dst) = addr else {
        return Err(std::io::Error::other("connect_from: IPv4 only")).ctx(|| "connect_from".into());
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on an fd this function owns; the TcpStream takes it
    // over (and closes it) once made, and it is closed here on every error before.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "socket".into());
        }
        let one: libc::c_int = 1;
        // Linux bounds a blocking connect by the send timeout.
        let timeout = libc::timeval {
            tv_sec: TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        let local = sockaddr(Ipv4Addr::UNSPECIFIED, port);
        let remote = sockaddr(*dst.ip(), dst.port());
        let step = if set_socket_option(fd, libc::SO_REUSEADDR, &one).is_err() {
            Some("SO_REUSEADDR")
        } else if set_socket_option(fd, libc::SO_SNDTIMEO, &timeout).is_err() {
            Some("SO_SNDTIMEO")
        } else if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            Some("binding the local port")
        } else if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            Some("connecting")
        } else {
            None
        };
        if let Some(what) = step {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e).ctx(|| format!("{what} (port {port} to {addr})"));
        }
        with_timeouts(TcpStream::from_raw_fd(fd))
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = with_timeouts(
        TcpStream::connect_timeout(&addr, TIMEOUT).ctx(|| format!("connecting to {addr}"))?,
    )?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// A connection to a line server (see `servers`), greeting already read.
pub struct LineClient {
    out: TcpStream,
    rd: BufReader<TcpStream>,
    greeting: String,
}

impl LineClient {
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        Self::with_stream(connect(addr)?)
    }

    /// `connect` from local port `port` (IPv4), SO_REUSEADDR set: a second
    /// connection on the 5-tuple of an earlier one (port reuse).
    pub fn connect_from(addr: SocketAddr, port: u16) -> Result<Self> {
        Self::with_stream(connect_from_port(addr, port)?)
    }

    /// Closes with a RST (SO_LINGER 0): neither side keeps the 5-tuple in TIME_WAIT,
    /// so `connect_from` can use it again at once.
    pub fn abort(self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        set_socket_option(self.out.as_raw_fd(), libc::SO_LINGER, &l)
            .ctx(|| "setting SO_LINGER".into())
    }

    fn with_stream(out: TcpStream) -> Result<Self> {
        let addr = out
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let rd = BufReader::new(out.try_clone().ctx(|| "cloning socket".into())?);
        let mut c = Self {
            out,
            rd,
            greeting: String::new(),
        };
        c.greeting = c.read_line(&format!("greeting from {addr}"))?;
        Ok(c)
    }

    /// The backend name the server greeted with.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    pub fn local_port(&self) -> u16 {
        self.out.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.out.peer_addr().ok()
    }

    /// `PING` -> the backend name from `PONG NAME`.
    pub fn ping(&mut self) -> Result<String> {
        self.out
            .write_all(b"PING\n")
            .ctx(|| "sending PING".into())?;
        let line = self.read_line("PONG")?;
        line.strip_prefix("PONG ")
            .map(str::to_string)
            .ok_or_else(|| BedError::Protocol(format!("expected `PONG NAME`, got {line:?}")))
    }

    /// Uploads `data` and returns the server's hex SHA-256 of what it received.
    pub fn sha(&mut self, data: &[u8]) -> Result<String> {
        self.out
            .write_all(format!("SHA {}\n", data.len()).as_bytes())
            .ctx(|| "sending SHA header".into())?;
        self.out.write_all(data).ctx(|| "uploading data".into())?;
        self.read_line("digest")
    }

    /// Uploads `data` in `chunk`-sized writes with `pause` between them (so the
    /// transfer spans a known stretch of time), storing the bytes sent so far in
    /// `sent`; returns the server's hex SHA-256 of what it received.
    pub fn sha_paced(
        &mut self,
        data: &[u8],
        chunk: usize,
        pause: Duration,
        sent: &std::sync::atomic::AtomicUsize,
    ) -> Result<String> {
        self.out
            .write_all(format!("SHA {}\n", data.len()).as_bytes())
            .ctx(|| "sending SHA header".into())?;
        for (i, part) in data.chunks(chunk).enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            self.out
                .write_all(part)
                .ctx(|| format!("uploading bytes {}.. of {}", i * chunk, data.len()))?;
            sent.fetch_add(part.len(), std::sync::atomic::Ordering::Relaxed);
        }
        self.read_line("digest")
    }

    /// `DATA <len>`: downloads `len` bytes and returns them.
    pub fn download(&mut self, len: usize) -> Result<Vec<u8>> {
        self.out
            .write_all(format!("DATA {len}\n").as_bytes())
            .ctx(|| "sending DATA".into())?;
        let mut data = vec![0u8; len];
        self.rd
            .read_exact(&mut data)
            .ctx(|| format!("downloading {len} bytes"))?;
        Ok(data)
    }

    fn read_line(&mut self, what: &str) -> Result<String> {
        let mut line = String::new();
        let n = self
            .rd
            .read_line(&mut line)
            .ctx(|| format!("reading {what}"))?;
        if n == 0 {
            return Err(BedError::Protocol(format!(
                "connection closed before {what}"
            )));
        }
        Ok(line.trim_end().to_string())
    }
}

/// One new connection, its greeting (the backend name) and the local port it came from.
pub fn tcp_name(addr: SocketAddr) -> Result<(String, u16)> {
    let c = LineClient::connect(addr)?;
    Ok((c.greeting().to_string(), c.local_port()))
}

/// One datagram from a fresh socket (so a fresh source port); returns the answer and
/// the address it came from.
pub fn udp_ask(addr: SocketAddr) -> Result<(String, SocketAddr, u16)> {
    let local = match addr.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let s = UdpSocket::bind(local).ctx(|| "binding udp client".into())?;
    s.set_read_timeout(Some(TIMEOUT))
        .ctx(|| "setting udp timeout".into())?;
    let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
    s.send_to(b"hello\n", addr)
        .ctx(|| format!("sending to {addr}"))?;
    let mut buf = [0u8; 512];
    let (n, from) = s
        .recv_from(&mut buf)
        .ctx(|| format!("waiting for the answer from {addr}"))?;
    Ok((
        String::from_utf8_lossy(&buf[..n]).trim_end().to_string(),
        from,
        port,
    ))
}

/// `GET /` on a new connection (`Connection: close`); returns the body.
pub fn http_get(addr: SocketAddr) -> Result<String> {
    http_get_path(addr, "/")
}

/// `GET path` over one connection; the body of a 200 answer.
pub fn http_get_path(addr: SocketAddr, path: &str) -> Result<String> {
    let (head, body) = http_get_response(addr, path)?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(BedError::Protocol(format!(
            "unexpected HTTP status: {head:?}"
        )));
    }
    Ok(body)
}

/// `GET path` over one connection (`Connection: close`): the response head and body.
pub fn http_get_response(addr: SocketAddr, path: &str) -> Result<(String, String)> {
    let mut s = connect(addr)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ctx(|| format!("sending request to {addr}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .ctx(|| format!("reading response from {addr}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| BedError::Protocol(format!("no HTTP header end in {resp:?}")))?;
    Ok((head.to_string(), body.trim_end().to_string()))
}
