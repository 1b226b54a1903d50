//! Benchmarks run by `cargo xtask bench [pkt|status|e2e|veth|cache|cache-cost|all]` through the
//! `xdp-lb-bench` bin (`all` leaves out `veth`, the long veth investigation, and
//! `cache-cost`, which needs valgrind).
pub mod cache;
pub mod cache_cost;
mod cpu;
pub mod e2e;
pub mod pkt;
pub mod status;
mod wrk;

type Bench = fn() -> anyhow::Result<()>;

/// A benchmark whose module has not been merged yet.
#[derive(Debug, thiserror::Error)]
#[error("the {0} benchmark is not built yet")]
pub struct NotBuilt(pub &'static str);

fn pkt() -> anyhow::Result<()> {
    pkt::run()
}

fn cache() -> anyhow::Result<()> {
    cache::run()
}

/// Runs one benchmark by name, or all of them (`all` skips the ones not built yet).
pub fn dispatch(what: &str) -> anyhow::Result<()> {
    match what {
        "pkt" => pkt(),
        "e2e" => e2e::run(),
        "cache" => cache(),
        "cache-cost" => cache_cost::run(),
        "status" => status::run(),
        "veth" => e2e::run_veth(),
        "all" => {
            let all: [(&str, Bench); 4] = [
                ("pkt", pkt),
                ("status", status::run),
                ("e2e", e2e::run),
                ("cache", cache),
            ];
            for (name, f) in all {
                println!("=== bench {name}");
                match f() {
                    Ok(()) => {}
                    Err(e) if e.downcast_ref::<NotBuilt>().is_some() => println!("skipped: {e}"),
                    Err(e) => return Err(e.context(format!("bench {name}"))),
                }
            }
            Ok(())
        }
        other => {
            anyhow::bail!(
                "unknown benchmark {other:?}: expected pkt, status, e2e, veth, cache, cache-cost or all"
            )
        }
    }
}
