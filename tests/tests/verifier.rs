//! Every program of the object passes this kernel's verifier: the balancers that
//! `run` attaches (XDP and tc), and the benchmark and veth-peer programs the other tests use.
//! The balancers' sizes and the verifier's work on them are printed (`--nocapture`),
//! to follow how close they get to its limits.
use xdp_lb::dataplane::{AyaDataplane, MapSizes, PASS_PROGRAM, PROGRAM, TC_PROGRAM};

#[test]
fn every_program_passes_the_verifier() {
    xdp_lb_tests::require_root();
    let mut dp = AyaDataplane::load(MapSizes {
        ring_entries: 1000,
        flow_table_size: 1024,
    })
    .expect("loading the object and the balancer program");
    for name in [
        PROGRAM,
        PASS_PROGRAM,
        "xdp_floor",
        "xdp_bench_empty",
        "xdp_bench_wrapper",
    ] {
        let prog = dp
            .load_program(name)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(prog.fd().is_ok(), "{name} has no fd after loading");
        if name == PROGRAM {
            print_sizes(name, prog.info().expect("program info"));
        }
    }
    let tc = dp
        .load_tc_program()
        .unwrap_or_else(|e| panic!("{TC_PROGRAM}: {e:?}"));
    assert!(tc.fd().is_ok(), "{TC_PROGRAM} has no fd after loading");
    print_sizes(TC_PROGRAM, tc.info().expect("program info"));
}

fn print_sizes(name: &str, info: aya::programs::ProgramInfo) {
    eprintln!(
        "{name}: {:?} bytes translated, {:?} instructions verified",
        info.size_translated(),
        info.verified_instruction_count()
    );
}
