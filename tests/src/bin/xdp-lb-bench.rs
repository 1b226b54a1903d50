//! `xdp-lb-bench pkt|e2e|cache|all`: the benchmark dispatcher (run by `cargo xtask bench`).
use std::process::ExitCode;

fn main() -> ExitCode {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match xdp_lb_tests::bench::dispatch(&what) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
