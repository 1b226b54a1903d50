//! Client side of the servers' protocols, with bounded connect and read timeouts. Call
//! these on a thread inside the client namespace (`NetNs::run`).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use crate::error::{BedError, IoContext, Result};

pub const TIMEOUT: Duration = Duration::from_secs(5);

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).ctx(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .ctx(|| "setting read timeout".into())?;
    s.set_write_timeout(Some(TIMEOUT))
        .ctx(|| "setting write timeout".into())?;
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
        let out = connect(addr)?;
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
