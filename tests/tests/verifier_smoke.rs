use xdp_lb::dataplane::{Dataplane, MapSizes};
#[test]
fn loads() {
    let mut dp = Dataplane::load(MapSizes {
        ring_entries: 1000,
        flow_table_size: 1024,
    })
    .unwrap();
    for p in [
        "xdp_pass",
        "xdp_floor",
        "xdp_bench_empty",
        "xdp_bench_wrapper",
    ] {
        let name: &'static str = p;
        dp.load_program(name).unwrap();
    }
}
