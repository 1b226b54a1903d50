//! `cargo xtask setup`: the nightly's rust-src and bpf-linker built against the nightly's
//! own LLVM (what building the balancer needs), and the Debian packages the tests, demo
//! and benchmarks use (only for those). Each step checks first, so running it again
//! does nothing.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// What the tests, the demo and the benchmarks use; never installed for `run ARGS`.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "iputils-ping",
    "bpftool",
    "tcpdump",
    "redis-server",
    "redis-tools",
    "nginx-light",
    "wrk",
    // One bulk TCP stream in `cargo xtask bench e2e`.
    "iperf3",
    // systemd-analyze, for the install test's unit check.
    "systemd",
    // `promtool check metrics` checks the `/metrics` text in the monitor's tests.
    "prometheus",
    // A real pseudo-terminal for the `xdp-lb top` test (new-session, capture-pane).
    "tmux",
    // Instructions per cache hit in `cargo xtask bench cache-cost` (callgrind).
    "valgrind",
];

/// Services the packages above ship: installing them must not leave them enabled or
/// running on the developer's machine.
const SHIPPED_SERVICES: &[&str] = &[
    "redis-server.service",
    "nginx.service",
    "iperf3.service",
    "prometheus.service",
];

/// Which set-up a task needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Building the balancer: the toolchain pieces only.
    Build,
    /// Tests, the demo, benchmarks: the toolchain and the Debian packages they use.
    Test,
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn run(need: Need) -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    rust_src(&sysroot)?;
    bpf_linker(&sysroot)?;
    if need == Need::Test {
        debian_packages()?;
    }
    println!("xtask: setup complete");
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly --print sysroot` (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing (`rustc +nightly` failed: {}); install it with `rustup toolchain install nightly`",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn rust_src(sysroot: &Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library").is_dir() {
        println!("xtask: nightly rust-src present");
        return Ok(());
    }
    println!("xtask: adding rust-src to the nightly toolchain");
    checked(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        println!("xtask: bpf-linker present");
        return Ok(());
    }
    let (lib, major) = nightly_llvm(sysroot)?;
    // A prefix that outlives `target/`: the installed binary finds libLLVM through it.
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join(format!("bpf-linker-llvm-{major}"));
    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    let soname = lib
        .file_name()
        .context("libLLVM path without a file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = libdir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), lib.display()))?;
    }
    println!(
        "xtask: building bpf-linker against {} (LLVM {major}, prefix {})",
        lib.display(),
        prefix.display()
    );
    checked(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            // Pinned with its lock file: 0.13 is the release built for LLVM 22, and an
            // unpinned install would follow newer releases onto an LLVM we lack.
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
}

/// The nightly's shared LLVM, e.g. `lib/libLLVM.so.22.1-rust-1.97.0-nightly`, and its major.
fn nightly_llvm(sysroot: &Path) -> anyhow::Result<(PathBuf, u32)> {
    let libdir = sysroot.join("lib");
    for entry in fs::read_dir(&libdir).with_context(|| format!("reading {}", libdir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("libLLVM.so.") {
            let major =
                llvm_major(name).with_context(|| format!("no LLVM major version in {name}"))?;
            return Ok((path, major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: cannot build bpf-linker",
        libdir.display()
    )
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22
fn llvm_major(file_name: &str) -> Option<u32> {
    file_name
        .strip_prefix("libLLVM.so.")?
        .split(['.', '-'])
        .next()?
        .parse()
        .ok()
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!("xtask: Debian packages present");
        return Ok(());
    }
    if !is_root() {
        println!(
            "xtask: not root, not installing missing Debian packages: {}",
            missing.join(" ")
        );
        return Ok(());
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    checked(Command::new("apt-get").arg("update"))?;
    // policy-rc.d answering 101 keeps package scripts from starting the services they
    // ship (redis, nginx, prometheus): the tests start their own instances or, for
    // prometheus, only use its promtool.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        fs::write(
            policy,
            "#!/bin/sh\n# written by cargo xtask setup for one apt-get run\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = checked(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if own_policy {
        let _ = fs::remove_file(policy);
    }
    installed?;
    // Nor leave them enabled for the next boot.
    for unit in SHIPPED_SERVICES {
        let _ = Command::new("systemctl")
            .args(["disable", "--quiet", unit])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

fn checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_from_the_nightly_library_name() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.19-rust-1.85.0-nightly"), Some(19));
        assert_eq!(llvm_major("libLLVM.so"), None);
        assert_eq!(llvm_major("librustc_driver.so"), None);
    }
}
