//! `cargo xtask install` / `uninstall`: the release binary, a hardened systemd unit and
//! a commented example configuration, put where an operator expects them. A manifest
//! records what was installed, so `uninstall` removes exactly that and nothing else;
//! an existing configuration is never overwritten, and one the operator changed is
//! never removed.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

/// The example configuration installed as `xdp-lb.toml` when none exists.
pub const EXAMPLE_CONFIG: &str = include_str!("../../xdp-lb/examples/xdp-lb.toml");

/// Where the pieces go.
pub struct Layout {
    pub prefix: PathBuf,
    pub unit_dir: PathBuf,
    pub config_dir: PathBuf,
}

impl Layout {
    pub fn bin(&self) -> PathBuf {
        self.prefix.join("bin/xdp-lb")
    }
    pub fn unit(&self) -> PathBuf {
        self.unit_dir.join("xdp-lb.service")
    }
    pub fn config(&self) -> PathBuf {
        self.config_dir.join("xdp-lb.toml")
    }
    fn manifest(&self) -> PathBuf {
        self.prefix.join("share/xdp-lb/install-manifest")
    }
}

/// The unit: restarts on failure, `systemctl reload` sends SIGHUP, and the hardening
/// leaves exactly what loading XDP and programming maps need (BPF, netlink, perf
/// events for the program's log ring, /sys/fs/bpf, its own config directory for
/// runtime changes, /run/xdp-lb for the admin socket).
pub fn unit_file(l: &Layout) -> String {
    let bin = l.bin();
    let config = l.config();
    let (bin, config, config_dir) = (bin.display(), config.display(), l.config_dir.display());
    format!(
        "\
[Unit]
Description=xdp-lb XDP layer-4 load balancer
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStartPre={bin} check --config {config}
ExecStart={bin} run --config {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
RuntimeDirectory=xdp-lb
RuntimeDirectoryMode=0755
LimitMEMLOCK=infinity
CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_ADMIN CAP_SYS_RESOURCE CAP_NET_RAW
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={config_dir} -/sys/fs/bpf
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"
    )
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Installs `binary` and the rest; returns the installed paths.
pub fn install(binary: &Path, l: &Layout) -> anyhow::Result<Vec<PathBuf>> {
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let mut installed = Vec::new();
    write_file(&l.bin(), &bytes, 0o755)?;
    installed.push(l.bin());
    write_file(&l.unit(), unit_file(l).as_bytes(), 0o644)?;
    installed.push(l.unit());
    if l.config().exists() {
        println!(
            "xtask: kept the existing {} (the example is not installed over it)",
            l.config().display()
        );
    } else {
        write_file(&l.config(), EXAMPLE_CONFIG.as_bytes(), 0o644)?;
        installed.push(l.config());
    }
    let manifest: String = installed
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    write_file(&l.manifest(), manifest.as_bytes(), 0o644)?;
    for p in &installed {
        println!("xtask: installed {}", p.display());
    }
    println!(
        "xtask: edit {} (interfaces, services), then `systemctl daemon-reload && systemctl enable --now xdp-lb`",
        l.config().display()
    );
    Ok(installed)
}

/// Removes what `install` recorded; returns the removed paths.
pub fn uninstall(l: &Layout) -> anyhow::Result<Vec<PathBuf>> {
    let manifest = l.manifest();
    let text = match fs::read_to_string(&manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no install manifest at {}: nothing installed with this --prefix",
            manifest.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", manifest.display())),
    };
    let mut removed = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let path = PathBuf::from(line);
        if path == l.config() && fs::read_to_string(&path).is_ok_and(|c| c != EXAMPLE_CONFIG) {
            println!(
                "xtask: kept {}: it was changed after the install (remove it by hand if it is not needed)",
                path.display()
            );
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    fs::remove_file(&manifest).with_context(|| format!("removing {}", manifest.display()))?;
    for dir in [manifest.parent(), Some(l.config_dir.as_path())]
        .into_iter()
        .flatten()
    {
        // Only if empty: never a directory holding someone else's files.
        let _ = fs::remove_dir(dir);
    }
    for p in &removed {
        println!("xtask: removed {}", p.display());
    }
    Ok(removed)
}
