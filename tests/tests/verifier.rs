//! Every program of the object passes this kernel's verifier: the balancers that
//! `run` attaches (XDP and tc), and the benchmark and veth-peer programs the other tests use.
//! The balancers' sizes and the verifier's work on them are printed (`--nocapture`),
//! to follow how close they get to its limits.
use xdp_lb::dataplane::{AyaDataplane, MapSizes, EBPF_OBJECT, PASS_PROGRAM, PROGRAM, TC_PROGRAM};

/// The cut-short programs of `cargo xtask bench pkt`: they copy the packet path by
/// hand, and a verifier rejection there would otherwise show only when the bench runs.
const BENCH_CUTS: [&str; 16] = [
    "xdp_floor_value",
    "xdp_bench_l4_csum",
    "xdp_bench_ip_csum",
    "xdp_bench_step1",
    "xdp_bench_step2",
    "xdp_bench_step3",
    "xdp_bench_step4",
    "xdp_bench_step5",
    "xdp_bench_step6",
    "xdp_bench_new1",
    "xdp_bench_new2",
    "xdp_bench_new3",
    "xdp_bench_new4",
    "xdp_bench_new5",
    "xdp_bench_new6",
    "xdp_bench_new7",
];

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
    ]
    .into_iter()
    .chain(BENCH_CUTS)
    {
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
    for name in ["tc_bench_wrapper", "tc_bench_empty"] {
        let prog = dp
            .load_classifier(name)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(prog.fd().is_ok(), "{name} has no fd after loading");
    }
}

fn print_sizes(name: &str, info: aya::programs::ProgramInfo) {
    eprintln!(
        "{name}: {:?} bytes translated, {:?} instructions verified",
        info.size_translated(),
        info.verified_instruction_count()
    );
}

/// The per-packet path is inlined into each balancer's entry: a module of it left
/// out of line costs a BPF-to-BPF call on every packet, and LLVM has done that
/// unasked once already (when `toobig` became generic). Rare paths (too-big answers,
/// events, the least-conn step, the first packet's checksum) may stay out of line.
#[test]
fn the_per_packet_path_is_inlined_into_the_balancers() {
    assert!(
        !EBPF_OBJECT.is_empty(),
        "the eBPF object is a stub (AYA_BUILD_SKIP): run through `cargo xtask test`"
    );
    let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("parsing the eBPF object");
    let names: Vec<&str> = obj.functions.values().map(|f| f.name.as_str()).collect();
    for entry in [PROGRAM, TC_PROGRAM] {
        assert!(names.contains(&entry), "no function {entry} in {names:#?}");
    }
    // Rust v0 mangling: the crate, then each path segment as <length><name>.
    let hot = ["2lb", "5parse", "6select", "7forward"].map(|m| format!("11xdp_lb_ebpf{m}"));
    let outlined: Vec<&&str> = names
        .iter()
        .filter(|n| hot.iter().any(|h| n.contains(h.as_str())))
        .collect();
    assert!(
        outlined.is_empty(),
        "per-packet functions compiled out of line (mark them or their callers \
         #[inline(always)]): {outlined:#?}"
    );
}
