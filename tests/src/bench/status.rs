//! What `xdp-lb status` costs: the flow-table walk that counts flows per backend is
//! its whole price. Fills the real FLOWS map (loaded into the kernel, not attached)
//! with N entries spread over 256 backends and times `Dataplane::flow_counts`.
use std::time::Instant;

use anyhow::{ensure, Context};
use xdp_lb::dataplane::{AyaDataplane, Dataplane as _, MapSizes};
use xdp_lb_common::{FlowKey, FlowValue, FAMILY_V4, PROTO_TCP};

const BACKENDS: u32 = 256;
const SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];

pub fn run() -> anyhow::Result<()> {
    println!("status: flow-table walk (one get_next_key + lookup per entry), {BACKENDS} backends");
    println!(
        "{:>10}  {:>10}  {:>12}  {:>10}",
        "flows", "walk ms", "ns/entry", "fill ms"
    );
    for n in SIZES {
        let mut dp = AyaDataplane::load(MapSizes {
            ring_entries: 1,
            flow_table_size: (n + n / 4) as u32,
        })
        .context("loading the XDP object (root?)")?;
        let t = Instant::now();
        let inserted = dp.insert_flows((0..n).map(|i| {
            let key = FlowKey {
                src: [u32::to_be(0xc612_0000 | (i as u32 >> 16)), 0, 0, 0],
                dst: [u32::to_be(0xc612_6401), 0, 0, 0],
                sport: (i as u16).to_be(),
                dport: 80u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            };
            let value = FlowValue {
                backend_id: i as u32 % BACKENDS,
                generation: 1,
                ..Default::default()
            };
            (key, value)
        }))?;
        let fill = t.elapsed();
        let t = Instant::now();
        let counts = dp.flow_counts(u64::MAX)?;
        let walk = t.elapsed();
        ensure!(
            counts.scanned == inserted && !counts.truncated,
            "walked {} of {inserted} entries",
            counts.scanned
        );
        ensure!(counts.by_backend.len() == BACKENDS as usize);
        println!(
            "{:>10}  {:>10.1}  {:>12.0}  {:>10.0}",
            n,
            walk.as_secs_f64() * 1e3,
            walk.as_nanos() as f64 / n as f64,
            fill.as_secs_f64() * 1e3
        );
    }
    println!("(a status call is this walk plus microseconds of formatting; the daemon serves it on its one control task)");
    // The monitor's own share of a tick and of a scrape, at 256 backends.
    let iters = 200;
    let render = xdp_lb::monitor::metrics::bench_render(256, iters);
    let record = xdp_lb::monitor::bench_record(256, iters);
    println!("monitor, {BACKENDS} backends: /metrics render {:.2} ms per scrape, record {:.2} ms per tick", render as f64 / 1e6, record as f64 / 1e6);
    println!("daemon CPU at 1 s sampling, 1M flows: the walk above once per 10 s (per-backend flows) plus record, counter reads and a resource sample each second");
    Ok(())
}
