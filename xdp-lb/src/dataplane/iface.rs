//! What kind of interface the balancer attaches to, for `--attach auto` (tc on veth)
//! and for how the tc program delivers to it (`bpf_redirect_peer` needs a veth whose
//! peer is in another namespace; the kernel drops the packet otherwise).
use std::{fs, path::Path};

/// SIOCETHTOOL with ETHTOOL_GDRVINFO: the driver's name.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with `ifr_data`.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut DrvInfo,
    _pad: [u8; 16],
}

/// The interface's driver as ethtool names it ("veth", "mlx5_core", ...), if it
/// answers.
pub fn driver(iface: &str) -> Option<String> {
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: req points at a valid ifreq whose data points at a drvinfo, both alive
    // for the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

pub fn is_veth(iface: &str) -> bool {
    driver(iface).as_deref() == Some("veth")
}

/// A veth whose peer lives in another network namespace: `bpf_redirect_peer` can
/// deliver into it. sysfs gives the peer's index (`iflink`) but not its namespace; a
/// peer in this namespace is an interface here with that index whose own `iflink`
/// points back at us. (A peer elsewhere whose index happens to be taken here by
/// an interface pointing back at us is not told apart: it gets plain redirects.)
pub fn veth_peer_elsewhere(iface: &str, ifindex: u32) -> bool {
    if !is_veth(iface) {
        return false;
    }
    let Some(peer) = read_u32(&Path::new("/sys/class/net").join(iface).join("iflink")) else {
        return false;
    };
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return false;
    };
    let local_peer = entries.flatten().any(|e| {
        let p = e.path();
        read_u32(&p.join("ifindex")) == Some(peer) && read_u32(&p.join("iflink")) == Some(ifindex)
    });
    !local_peer
}

fn read_u32(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_a_veth() {
        assert!(!is_veth("lo"));
        assert!(!veth_peer_elsewhere("lo", 1));
    }

    #[test]
    fn a_missing_interface_has_no_driver() {
        assert_eq!(driver("no-such-if0"), None);
        assert_eq!(driver("a-name-longer-than-ifnamsiz"), None);
    }
}
