//! The real `xdp-lb` binary run inside a namespace (`ip netns exec`, which execs it, so
//! the child's PID is xdp-lb's own): waits for its `xdp-lb ready` line, keeps its output
//! for failure messages, reloads it with SIGHUP, and stops it by PID on Drop.
use std::{
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::{
    error::{BedError, IoContext, Result},
    netns::NetNs,
};

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Captured {
    stdout: Vec<String>,
    stderr: Vec<String>,
}

/// A running `xdp-lb` process.
pub struct XdpLbProcess {
    child: Child,
    what: String,
    out: Arc<(Mutex<Captured>, Condvar)>,
    /// Its admin socket: one per process, so parallel tests never meet on the
    /// default path.
    admin_socket: std::path::PathBuf,
    _admin_dir: tempfile::TempDir,
}

impl XdpLbProcess {
    /// Starts `BIN ARGS...` in `ns` and waits for its `xdp-lb ready` line.
    pub fn start(ns: &NetNs, bin: &Path, args: &[String]) -> Result<Self> {
        let what = format!(
            "ip netns exec {} {} {}",
            ns.name(),
            bin.display(),
            args.join(" ")
        );
        let admin_dir = tempfile::Builder::new()
            .prefix("xdp-lb-admin-")
            .tempdir()
            .ctx(|| "creating a directory for the admin socket".to_string())?;
        let admin_socket = admin_dir.path().join("admin.sock");
        let mut cmd = ns.command(bin);
        // Read by `xdp-lb run` (clap `env`); other verbs ignore it.
        cmd.env("XDP_LB_ADMIN_SOCKET", &admin_socket);
        // If the test process dies without running Drop (SIGKILL, a timeout), the kernel
        // stops xdp-lb too instead of leaving it attached in an orphaned namespace. The
        // signal follows the spawning thread, which always outlives this guard's use.
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| format!("starting `{what}`"))?;
        let out = Arc::new((Mutex::new(Captured::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        collect(stdout, out.clone(), false);
        collect(stderr, out.clone(), true);
        let mut p = Self {
            child,
            what,
            out,
            admin_socket,
            _admin_dir: admin_dir,
        };
        p.wait_stdout(0, "xdp-lb ready", None, READY_TIMEOUT)?;
        Ok(p)
    }

    /// The admin socket this process serves (the Unix socket is reachable from any
    /// network namespace: it lives in the file system).
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Sends SIGHUP and waits for `xdp-lb reloaded`; `xdp-lb reload failed` is an error.
    pub fn reload(&mut self) -> Result<()> {
        let from = self.out.0.lock().unwrap().stdout.len();
        self.signal(libc::SIGHUP);
        self.wait_stdout(
            from,
            "xdp-lb reloaded",
            Some("xdp-lb reload failed"),
            READY_TIMEOUT,
        )?;
        Ok(())
    }

    /// The lines the process printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.out.0.lock().unwrap().stdout.clone()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        let c = self.out.0.lock().unwrap();
        format!(
            "--- stdout of `{}`\n{}\n--- stderr\n{}",
            self.what,
            c.stdout.join("\n"),
            c.stderr.join("\n")
        )
    }

    /// Whether the process has exited (and with what status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID; the child is not yet reaped while we
        // hold `Child`, so the PID cannot have been reused.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for a stdout line (from index `from` on) starting with `ready`.
    fn wait_stdout(
        &mut self,
        from: usize,
        ready: &str,
        failed: Option<&str>,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let c = self.out.0.lock().unwrap();
                let hit = c.stdout.iter().skip(from).find_map(|line| {
                    if line.starts_with(ready) {
                        Some(Ok(line.clone()))
                    } else if failed.is_some_and(|f| line.starts_with(f)) {
                        Some(Err(line.clone()))
                    } else {
                        None
                    }
                });
                match hit {
                    Some(Ok(line)) => return Ok(line),
                    Some(Err(line)) => {
                        drop(c);
                        return Err(BedError::Process {
                            what: format!("`{}` printed {line:?}", self.what),
                            output: self.output(),
                        });
                    }
                    None => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    drop(c);
                    return Err(BedError::Timeout {
                        what: format!("`{ready}` from `{}`", self.what),
                        secs: timeout.as_secs(),
                        output: self.output(),
                    });
                }
                // Short waits so an exit is noticed quickly.
                let _ = self
                    .out
                    .1
                    .wait_timeout(c, (deadline - now).min(Duration::from_millis(100)))
                    .unwrap();
            }
            if let Some(status) = self.exited() {
                // Let the readers drain what is left before reporting.
                thread::sleep(Duration::from_millis(100));
                return Err(BedError::Process {
                    what: format!(
                        "`{}` exited ({status}) before printing `{ready}`",
                        self.what
                    ),
                    output: self.output(),
                });
            }
        }
    }
}

impl XdpLbProcess {
    /// Sends SIGTERM and waits (bounded) for the exit; returns its status, or `None`
    /// if the process had to be killed. Its output stays readable with `output`.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                // Let the readers drain the last lines.
                thread::sleep(Duration::from_millis(100));
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: `{}` ignored SIGTERM; killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for XdpLbProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn collect(stream: impl Read + Send + 'static, out: Arc<(Mutex<Captured>, Condvar)>, is_err: bool) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut c = out.0.lock().unwrap();
            if is_err {
                c.stderr.push(line);
            } else {
                c.stdout.push(line);
            }
            out.1.notify_all();
        }
    });
}
