//! Raw Ethernet inside a test namespace (AF_PACKET): sending crafted frames (spoofed
//! or malformed traffic no socket API would produce) and capturing what an interface
//! receives, without tcpdump. Open the socket on a thread inside the namespace
//! (`NetNs::run`/`spawn`); it stays bound to that namespace's interface.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use crate::{
    error::{BedError, IoContext, Result},
    netns::NetNs,
};

/// `sll_pkttype` of frames addressed to this host's MAC (unicast).
pub const PACKET_HOST: u8 = 0;
/// `sll_pkttype` of frames this host sent itself.
pub const PACKET_OUTGOING: u8 = 4;

pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// A raw socket bound to `iface` of the calling thread's namespace, receiving
    /// every protocol.
    pub fn open(iface: &str) -> Result<Self> {
        let ifindex = xdp_lb::dataplane::ifindex(iface)
            .ok_or_else(|| BedError::Protocol(format!("no interface {iface}")))?
            as i32;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).ctx(|| "opening an AF_PACKET socket".into());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = Self { fd, ifindex };
        let sa = s.addr(proto);
        // SAFETY: sa outlives the call and has the size passed.
        let rc = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).ctx(|| format!("binding to {iface}"));
        }
        Ok(s)
    }

    fn addr(&self, proto: u16) -> libc::sockaddr_ll {
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = self.ifindex;
        sa
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: frame is readable for its length.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).ctx(|| "sending a raw frame".into());
        }
        Ok(())
    }

    pub fn set_read_timeout(&self, d: Duration) -> Result<()> {
        let tv = libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv outlives the call and has the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).ctx(|| "setting SO_RCVTIMEO".into());
        }
        Ok(())
    }

    /// The next frame and its `sll_pkttype`, or `None` when the read timeout expired.
    pub fn recv(&self) -> Result<Option<(Vec<u8>, u8)>> {
        let mut buf = vec![0u8; 65536];
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and from are writable for the sizes passed.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                _ => Err(e).ctx(|| "receiving a raw frame".into()),
            };
        }
        buf.truncate(n as usize);
        Ok(Some((buf, from.sll_pkttype)))
    }
}

/// The MAC address of `iface` in `ns` (from `ip -o link show`).
pub fn mac_of(ns: &NetNs, iface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-o", "link", "show", iface])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| BedError::Protocol(format!("no MAC in {text:?}")))?;
    let mut m = [0u8; 6];
    for (i, part) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16)
            .map_err(|_| BedError::Protocol(format!("bad MAC {mac:?}")))?;
    }
    Ok(m)
}
