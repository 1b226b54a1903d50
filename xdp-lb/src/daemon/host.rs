//! What `run` and `check` verify about this host before the kernel is touched: the
//! kernel is new enough for the program, the interfaces exist, and no backend is one of the balancer's own addresses (the
//! balancer would forward a service's traffic to itself, where nothing listens on the
//! rewritten port, or loop it).
use std::net::IpAddr;

use crate::{config::Config, dataplane};

use super::{DaemonError, MAX_INTERFACES};

/// An address held by an interface of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    pub iface: String,
    pub addr: IpAddr,
}

/// What the host checks found, for `check`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// `uname -r`.
    pub kernel: String,
    pub interfaces: usize,
    pub local_addrs: usize,
    pub backends: usize,
}

/// The oldest kernel the program loads on: least-conn's scan calls `bpf_loop` (5.17),
/// and the verifier rejects a program that names a helper it does not know, whichever
/// scheduler is configured.
pub const MIN_KERNEL: (u32, u32) = (5, 17);

/// This kernel's release (`uname -r`).
fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates release.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

/// (major, minor) of a release string such as "6.1.0-27-amd64".
fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => Some((major, minor)),
        _ => None,
    }
}

/// The first kernel with TCX links, which the tc program is attached through.
pub const TCX_KERNEL: (u32, u32) = (6, 6);

/// Whether this kernel has TCX links. A release that does not parse is taken to:
/// the attach then says what is missing.
pub fn has_tcx() -> bool {
    release_has_tcx(&kernel_release().unwrap_or_default())
}

fn release_has_tcx(release: &str) -> bool {
    release_version(release).is_none_or(|v| v >= TCX_KERNEL)
}

/// Refuses a kernel older than `MIN_KERNEL` with a message naming both, instead of the
/// verifier's "unknown func bpf_loop". A release that does not parse is let through:
/// the load then says what is missing.
pub fn check_kernel(release: &str) -> Result<(), DaemonError> {
    match release_version(release) {
        Some(v) if v < MIN_KERNEL => Err(DaemonError::OldKernel {
            release: release.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Every interface named exists here, and there are no more than the program can
/// redirect between.
pub fn check_interfaces(ifaces: &[String]) -> Result<(), DaemonError> {
    if ifaces.len() > MAX_INTERFACES {
        return Err(DaemonError::TooManyInterfaces {
            count: ifaces.len(),
        });
    }
    for i in ifaces {
        if dataplane::ifindex(i).is_none() {
            return Err(DaemonError::NoInterface(i.clone()));
        }
    }
    Ok(())
}

/// The interfaces exist and no backend holds an address of this namespace.
pub fn check_host(cfg: &Config) -> Result<HostReport, DaemonError> {
    let kernel = kernel_release().unwrap_or_else(|| "unknown".into());
    check_kernel(&kernel)?;
    check_interfaces(&cfg.interfaces)?;
    let local = local_addresses().map_err(DaemonError::LocalAddresses)?;
    if let Some(e) = local_backend(cfg, &local) {
        return Err(e);
    }
    Ok(HostReport {
        kernel,
        interfaces: cfg.interfaces.len(),
        local_addrs: local.len(),
        backends: cfg.services.iter().map(|s| s.backends.len()).sum(),
    })
}

/// The first backend of `cfg` that is one of `local`'s addresses, as the error.
pub fn local_backend(cfg: &Config, local: &[LocalAddr]) -> Option<DaemonError> {
    cfg.services.iter().find_map(|svc| {
        svc.backends.iter().find_map(|b| {
            local
                .iter()
                .find(|l| l.addr == b.addr)
                .map(|l| DaemonError::BackendIsLocal {
                    service: svc.name.clone(),
                    backend: b.socket_addr().to_string(),
                    iface: l.iface.clone(),
                })
        })
    })
}

/// Upper bound on the entries read from getifaddrs (a guard against a corrupt list,
/// far above any real host's count).
const MAX_IFADDRS: usize = 1 << 16;

/// Every IPv4 and IPv6 address on an interface of this network namespace (getifaddrs).
pub fn local_addresses() -> std::io::Result<Vec<LocalAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    for _ in 0..MAX_IFADDRS {
        if cur.is_null() {
            break;
        }
        // SAFETY: cur is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which type it is.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    // s_addr is in network byte order: its bytes are the octets.
                    IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes())
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(sin6.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        // SAFETY: ifa_name is a NUL-terminated interface name.
        let iface = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        out.push(LocalAddr { iface, addr });
    }
    // SAFETY: head came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn cfg() -> Config {
        parse_str(
            "interfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nvip = \"198.18.100.1\"\n\
             port = 80\n[[service.backend]]\naddr = \"198.18.1.2\"\nport = 8080\n\
             [[service.backend]]\naddr = \"198.18.1.3\"\nport = 8080\n",
        )
        .unwrap()
    }

    #[test]
    fn a_backend_at_a_local_address_is_named_with_its_interface() {
        let local = [LocalAddr {
            iface: "eth0".into(),
            addr: "198.18.1.3".parse().unwrap(),
        }];
        let e = local_backend(&cfg(), &local).expect("refused");
        let text = e.to_string();
        assert!(text.contains("\"web\""), "{text}");
        assert!(text.contains("198.18.1.3:8080"), "{text}");
        assert!(text.contains("eth0"), "{text}");
        let elsewhere = [LocalAddr {
            iface: "eth0".into(),
            addr: "198.18.1.9".parse().unwrap(),
        }];
        assert!(local_backend(&cfg(), &elsewhere).is_none());
    }

    /// Loopback is in every namespace, so the list is never empty.
    #[test]
    fn local_addresses_include_loopback() {
        let local = local_addresses().unwrap();
        assert!(
            local
                .iter()
                .any(|l| l.iface == "lo" && l.addr == IpAddr::from([127, 0, 0, 1])),
            "{local:?}"
        );
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(release_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(release_version("5.16.0"), Some((5, 16)));
        assert_eq!(release_version("5.15.167-generic"), Some((5, 15)));
        assert_eq!(release_version("4.19.0"), Some((4, 19)));
        assert_eq!(release_version("garbage"), None);
    }

    #[test]
    fn tcx_from_6_6_on() {
        assert!(!release_has_tcx("6.1.0-27-amd64"));
        assert!(!release_has_tcx("5.17.0"));
        assert!(release_has_tcx("6.6.0"));
        assert!(release_has_tcx("6.18.0-1-amd64"));
        assert!(release_has_tcx("7.0.0"));
        assert!(release_has_tcx("garbage"));
    }

    #[test]
    fn kernels_older_than_5_17_are_refused_by_name() {
        for old in ["5.15.0-91-generic", "5.16.20", "4.19.0-26-amd64"] {
            let e = check_kernel(old).expect_err(old).to_string();
            assert!(e.contains(old) && e.contains("5.17"), "{e}");
        }
        for new in ["5.17.0", "6.1.0-27-amd64", "6.18.2", "10.0", "unknown"] {
            check_kernel(new).expect(new);
        }
    }
}
