//! The admin verbs of the real binary, run against a test daemon's socket: the
//! client side of every runtime-management test.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{binary, lb::XdpLbProcess};

/// `xdp-lb VERB ... --admin-socket SOCKET`, from the root namespace (the socket is a
/// file, reachable from every network namespace).
pub struct AdminCli {
    bin: PathBuf,
    socket: PathBuf,
}

impl AdminCli {
    pub fn new(lb: &XdpLbProcess) -> Self {
        Self::at(lb.admin_socket())
    }

    pub fn at(socket: &Path) -> Self {
        AdminCli {
            bin: binary::xdp_lb_bin().unwrap_or_else(|e| panic!("{e}")),
            socket: socket.to_path_buf(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).arg("--admin-socket").arg(&self.socket);
        // The daemon's own variable must not leak into the client's defaults.
        c.env_remove("XDP_LB_ADMIN_SOCKET");
        c
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("running xdp-lb {args:?}: {e}"))
    }

    /// Runs a verb that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "xdp-lb {args:?} failed: {}\nstdout: {stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs a verb with `--json` and parses its answer.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("xdp-lb {a:?}: not JSON ({e}): {text}"))
    }

    /// Runs a verb that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "xdp-lb {args:?} succeeded but should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        self.json(&["status"])
    }

    /// (address, state, weight) of every backend of `service`, from `status`.
    pub fn backends(&self, service: &str) -> Vec<(String, String, u64)> {
        let s = self.status();
        let svc = s["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|x| x["name"] == service)
            .unwrap_or_else(|| panic!("no service {service} in {s}"));
        svc["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| {
                (
                    b["addr"].as_str().unwrap().to_string(),
                    b["state"].as_str().unwrap().to_string(),
                    b["weight"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}
