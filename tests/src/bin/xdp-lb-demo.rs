//! `xdp-lb-demo`: the namespace demo run by `cargo xtask run` (see `xdp_lb_tests::demo`).
use std::process::ExitCode;

fn main() -> ExitCode {
    match xdp_lb_tests::demo::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
