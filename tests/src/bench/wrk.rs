//! Running wrk and reading its summary, for the benches that load an HTTP server.
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// One wrk run. wrk corrects its latency histogram for coordinated omission before it prints
/// percentiles: every request slower than twice the mean per-connection interval is counted
/// again at that latency minus one, two, ... intervals. So one stall of D ms (the server, or
/// the whole machine, not running) adds about D / interval samples per waiting connection,
/// and in a 5 s run a single stall of 60 ms moves p99 to about 10 ms whatever the server's
/// speed. p99 therefore tells how long the longest stalls were; p50 and p90 tell the rest.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A wrk duration such as `786.39us`, `1.52ms` or `1.02s`, in milliseconds.
fn wrk_ms(v: &str) -> anyhow::Result<f64> {
    let v = v.trim();
    let (num, unit) = v.split_at(
        v.find(|c: char| c.is_ascii_alphabetic())
            .with_context(|| format!("latency unit in {v:?}"))?,
    );
    let num: f64 = num
        .parse()
        .with_context(|| format!("latency number in {v:?}"))?;
    Ok(match unit {
        "us" => num / 1000.0,
        "ms" => num,
        "s" => num * 1000.0,
        "m" => num * 60_000.0,
        other => bail!("unknown wrk latency unit {other}"),
    })
}

pub fn parse_wrk(out: &str) -> anyhow::Result<Figures> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("wrk printed no Requests/sec")?;
    let pct = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .with_context(|| format!("wrk printed no {p} latency"))
            .and_then(wrk_ms)
    };
    // `Latency   786.39us    1.46ms  20.52ms   91.47%`: average, stdev, max, share within a stdev.
    let max = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Latency "))
        .and_then(|l| l.split_whitespace().nth(2))
        .context("wrk printed no latency summary")?;
    Ok(Figures {
        requests_per_s: rps,
        p50_ms: pct("50%")?,
        p90_ms: pct("90%")?,
        p99_ms: pct("99%")?,
        max_ms: wrk_ms(max)?,
    })
}

/// How wrk loads the server.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Every connection sends its next request as soon as the answer arrives: the server's
    /// capacity, and its latency when saturated.
    Closed,
    /// Every connection waits this many milliseconds after each answer before it sends the
    /// next request (a Lua `delay()`), which holds the rate at about
    /// connections / (pause + latency), below every server's capacity: latency when the
    /// server has time to spare, as in most of its life. Debian's wrk has no wrk2 `-R`.
    Paced { pause_ms: u32 },
}

/// One wrk invocation: threads, connections and duration.
#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u64,
    /// Runs wrk at `SCHED_FIFO` priority 1 (see `cpu::set_realtime`).
    pub realtime: bool,
}

impl Wrk {
    /// Runs wrk against `url` for a bounded time and parses its summary.
    pub fn run(&self, url: &str, load: Load) -> anyhow::Result<Figures> {
        let mut cmd = Command::new("wrk");
        cmd.arg("-t")
            .arg(self.threads.to_string())
            .arg("-c")
            .arg(self.connections.to_string())
            .arg("-d")
            .arg(format!("{}s", self.seconds))
            .arg("--latency");
        // Kept until wrk has finished: the script is read at start-up.
        let _script = match load {
            Load::Closed => None,
            Load::Paced { pause_ms } => {
                let dir = crate::cache_support::TempDir::new("wrk");
                let path = dir.0.join("pace.lua");
                std::fs::write(
                    &path,
                    format!("function delay()\n  return {pause_ms}\nend\n"),
                )
                .context("writing the wrk pacing script")?;
                cmd.arg("-s").arg(&path);
                Some(dir)
            }
        };
        if self.realtime {
            // SAFETY: the closure only makes one system call, which is async-signal-safe, as
            // code between fork and exec must be.
            unsafe {
                cmd.pre_exec(|| super::cpu::set_realtime(0, true));
            }
        }
        let mut child = cmd
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk (cargo xtask setup installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(self.seconds + 20);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("wrk did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output()?;
        parse_wrk(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
            format!(
                "wrk against {url}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }
}

/// `http://addr/path`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_summary() {
        let out = "    Latency   786.39us    1.46ms  20.52ms   91.47%\n  Latency Distribution\n     50%  210.00us\n     75%  400.00us\n     90%  900.00us\n     99%    1.52ms\n  Requests/sec:  41234.56\n";
        let f = parse_wrk(out).unwrap();
        assert_eq!(f.requests_per_s, 41234.56);
        assert!((f.p50_ms - 0.21).abs() < 1e-9);
        assert!((f.p90_ms - 0.9).abs() < 1e-9);
        assert!((f.p99_ms - 1.52).abs() < 1e-9);
        assert!((f.max_ms - 20.52).abs() < 1e-9);
    }
}
