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
    /// maglev or src-hash
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
