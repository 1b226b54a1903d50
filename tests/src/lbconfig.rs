//! `xdp-lb` configuration for tests: the command-line flags of a single service, or the
//! TOML file (written to a temporary path removed on Drop) used for reloads.
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::error::{IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    Nat,
    Dsr,
}

impl Forwarding {
    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::Nat => "nat",
            Forwarding::Dsr => "dsr",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// active, draining or down
    pub state: &'static str,
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub vip: IpAddr,
    pub port: u16,
    /// tcp or udp
    pub proto: &'static str,
    /// maglev, src-hash, round-robin, weighted-round-robin or least-conn
    pub algorithm: &'static str,
    pub forwarding: Forwarding,
    pub backends: Vec<BackendSpec>,
}

impl ServiceSpec {
    /// `run --iface IF --vip ... --backend ...` for this one service.
    pub fn run_args(&self, iface: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "run",
            "--iface",
            iface,
            "--vip",
            &SocketAddr::new(self.vip, self.port).to_string(),
            "--proto",
            self.proto,
            "--algorithm",
            self.algorithm,
            "--forwarding",
            self.forwarding.as_str(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for b in self.backends.iter().filter(|b| b.state == "active") {
            a.push("--backend".into());
            a.push(format!("{}@{}", SocketAddr::new(b.addr, b.port), b.weight));
        }
        a
    }
}

/// The TOML the binary reads with `--config`.
pub fn render(interfaces: &[&str], services: &[ServiceSpec]) -> String {
    let mut s = String::new();
    let ifaces: Vec<String> = interfaces.iter().map(|i| format!("{i:?}")).collect();
    let _ = writeln!(s, "interfaces = [{}]", ifaces.join(", "));
    for svc in services {
        let _ = writeln!(s, "\n[[service]]");
        let _ = writeln!(s, "vip = \"{}\"", svc.vip);
        let _ = writeln!(s, "port = {}", svc.port);
        let _ = writeln!(s, "proto = \"{}\"", svc.proto);
        let _ = writeln!(s, "algorithm = \"{}\"", svc.algorithm);
        let _ = writeln!(s, "forwarding = \"{}\"", svc.forwarding.as_str());
        for b in &svc.backends {
            let _ = writeln!(s, "\n[[service.backend]]");
            let _ = writeln!(s, "addr = \"{}\"", b.addr);
            let _ = writeln!(s, "port = {}", b.port);
            let _ = writeln!(s, "weight = {}", b.weight);
            let _ = writeln!(s, "state = \"{}\"", b.state);
        }
    }
    s
}

/// A config file in the temporary directory, removed on Drop.
pub struct ConfigFile {
    path: PathBuf,
}

static NEXT_FILE: AtomicU32 = AtomicU32::new(0);

impl ConfigFile {
    pub fn new(contents: &str) -> Result<Self> {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("xdp-lb-test-{}-{n}.toml", std::process::id()));
        let f = Self { path };
        f.write(contents)?;
        Ok(f)
    }

    /// Replaces the contents atomically (write + rename), so a reload never reads half a file.
    pub fn write(&self, contents: &str) -> Result<()> {
        let tmp = self.path.with_extension("toml.new");
        std::fs::write(&tmp, contents).ctx(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).ctx(|| format!("renaming to {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    fn sample() -> Vec<ServiceSpec> {
        vec![
            ServiceSpec {
                vip: IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1)),
                port: 80,
                proto: "tcp",
                algorithm: "maglev",
                forwarding: Forwarding::Dsr,
                backends: vec![
                    BackendSpec {
                        addr: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 11)),
                        port: 80,
                        weight: 3,
                        state: "active",
                    },
                    BackendSpec {
                        addr: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 12)),
                        port: 80,
                        weight: 1,
                        state: "draining",
                    },
                ],
            },
            ServiceSpec {
                vip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1)),
                port: 53,
                proto: "udp",
                algorithm: "src-hash",
                forwarding: Forwarding::Nat,
                backends: vec![BackendSpec {
                    addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11)),
                    port: 5353,
                    weight: 1,
                    state: "active",
                }],
            },
        ]
    }

    /// The file the bed writes is the file the binary reads: same services back.
    #[test]
    fn rendered_file_loads_in_xdp_lb() {
        use xdp_lb::config::{Algorithm, BackendState, Forwarding as F, Proto};
        let file = ConfigFile::new(&render(&["eth0"], &sample())).unwrap();
        let args = xdp_lb::config::Sources {
            config: Some(file.path().to_path_buf()),
            ..Default::default()
        };
        let cfg = xdp_lb::config::load(&args)
            .unwrap_or_else(|e| panic!("xdp-lb rejects the bed's config: {e}"));
        assert_eq!(cfg.interfaces, vec!["eth0".to_string()]);
        assert_eq!(cfg.services.len(), 2);
        let (a, b) = (&cfg.services[0], &cfg.services[1]);
        assert_eq!(
            (a.vip, a.port, a.proto),
            ("198.18.100.1".parse().unwrap(), 80, Proto::Tcp)
        );
        assert_eq!((a.algorithm, a.forwarding), (Algorithm::Maglev, F::Dsr));
        let states: Vec<_> = a
            .backends
            .iter()
            .map(|x| (x.addr, x.port, x.weight, x.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("198.18.1.11".parse().unwrap(), 80, 3, BackendState::Active),
                (
                    "198.18.1.12".parse().unwrap(),
                    80,
                    1,
                    BackendState::Draining
                ),
            ]
        );
        assert_eq!(
            (b.vip, b.port, b.proto),
            ("2001:db8:100::1".parse().unwrap(), 53, Proto::Udp)
        );
        assert_eq!((b.algorithm, b.forwarding), (Algorithm::SrcHash, F::Nat));
        assert_eq!(b.backends[0].port, 5353);
    }

    #[test]
    fn run_args_carry_only_active_backends() {
        let args = sample()[0].run_args("eth0");
        let joined = args.join(" ");
        assert!(
            joined.starts_with("run --iface eth0 --vip 198.18.100.1:80 --proto tcp"),
            "{joined}"
        );
        assert!(joined.contains("--forwarding dsr"), "{joined}");
        assert!(joined.contains("--backend 198.18.1.11:80@3"), "{joined}");
        assert!(
            !joined.contains("198.18.1.12"),
            "draining backend passed as a flag: {joined}"
        );
        let v6 = sample()[1].run_args("eth0").join(" ");
        assert!(v6.contains("--vip [2001:db8:100::1]:53"), "{v6}");
        assert!(v6.contains("--backend [2001:db8:1::11]:5353@1"), "{v6}");
    }
}
