//! Network namespaces owned by a test: created by `ip netns add`, removed on Drop, and
//! entered either by a child process (`ip netns exec`) or by a fresh thread (`setns`,
//! network namespaces are per thread), so servers and clients are real Rust sockets.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use crate::{
    cmd,
    error::{BedError, IoContext, Result},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A namespace that exists as long as this guard does.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `xlb<pid>x<n><role>`: unique per process and per call, so tests running in
    /// parallel (and other test binaries) never share a namespace.
    pub fn create(role: &str) -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            sweep_stale();
        }
        let name = format!("xlb{}x{id}{role}", std::process::id());
        cmd::run_args(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        cmd::run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that will run inside the namespace (`ip netns exec NS PROGRAM`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a program (given as words) inside the namespace to completion.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let (prog, rest) = args.split_first().expect("a command has a program name");
        cmd::run(self.command(prog).args(rest))
    }

    /// Writes a sysctl of this namespace, e.g. `("net/ipv4/ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let key = key.replace('.', "/");
        self.run(move || {
            std::fs::write(format!("/proc/sys/{key}"), value)
                .ctx(|| format!("setting sysctl {key}={value}"))
        })?
    }

    /// Runs `f` to completion on a new thread that has entered this namespace. Sockets
    /// created there stay in the namespace wherever they are used afterwards.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        thread::scope(|s| {
            s.spawn(|| {
                enter(&self.name)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Starts `f` on a new thread inside this namespace and returns at once.
    pub fn spawn<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> thread::JoinHandle<Result<T>> {
        let name = self.name.clone();
        thread::spawn(move || {
            enter(&name)?;
            Ok(f())
        })
    }
}

/// Removes namespaces left by test processes that were killed before their guards
/// ran (`xlb<pid>x...` whose pid no longer exists). Only our own naming pattern is touched.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("xlb")
            .and_then(|r| r.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            crate::pins::remove(&name);
            let _ = cmd::run_args(&["ip", "netns", "del", &name]);
        }
    }
}

/// Moves the calling thread into the named namespace.
pub fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).ctx(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(BedError::Io {
            what: format!("entering namespace {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Pins first: xdp-lb leaves its program attached when it exits, and the pinned
        // maps would outlive the namespace.
        crate::pins::remove(&self.name);
        if let Err(e) = cmd::run_args(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: removing namespace {}: {e}", self.name);
        }
    }
}
