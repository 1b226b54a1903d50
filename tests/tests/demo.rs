//! `cargo xtask run` without arguments runs this demo: it must run to the end, print
//! each step's result line, and leave no namespace behind.
use std::process::Command;

use xdp_lb_tests::require_root;

#[test]
fn demo_runs_to_the_end_and_cleans_up() {
    require_root();
    let child = Command::new(env!("CARGO_BIN_EXE_xdp-lb-demo"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    for want in [
        "== step 1",
        "xdp-lb ready",
        "== step 2",
        "result: 300 of 300 requests answered, 0 failed",
        "== step 3",
        "(0 to backend-",
        "the open connection still answers from backend-",
        "== step 4",
        "xdp-lb marked backend-2 down",
        "health check failed: connection refused",
        "xdp-lb marked backend-2 up",
        "== step 5",
        "service chat",
        "== step 6",
        "#1: HTTP/1.1 200 OK, X-Cache: MISS",
        "#2: HTTP/1.1 200 OK, X-Cache: HIT",
        "== step 7",
        "report over",
        "new_flows_per_s",
        "cpu_percent",
        "xdp_lb_backend_new_flows_total{service=\"web\"",
        "xdp_lb_cache_requests_total{result=\"hit\"} 1",
        "xdp_lb_cache_requests_total{result=\"miss\"} 1",
        "demo complete",
    ] {
        assert!(
            stdout.contains(want),
            "demo output lacks {want:?}:\n{stdout}\n{stderr}"
        );
    }
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&list.stdout);
    assert!(
        !left.contains(&format!("xlb{pid}x")),
        "the demo left namespaces behind:\n{left}"
    );
}
