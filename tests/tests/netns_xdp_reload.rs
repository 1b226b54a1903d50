//! Configuration reload (file rewrite + SIGHUP) under load, NAT and DSR: a long-lived
//! connection keeps its backend while another backend is removed and a new one added;
//! new connections follow the new set. A broken file is refused and the old set kept.
use std::{thread, time::Duration};

use xdp_lb_tests::{
    client::{self, LineClient},
    lbconfig::{self, ConfigFile, ServiceSpec},
    require_root, scenario,
    topology::{IFACE, TCP_PORT},
    Forwarding, Topology,
};

const PINGS: usize = 60;
const RELOAD_AT: usize = 15;
const NEW_CONNECTIONS: usize = 60;

fn config(topo: &Topology, backends: &[usize]) -> String {
    let mut svc: ServiceSpec = scenario::service(topo, false, TCP_PORT, "tcp", &[]);
    svc.backends = backends
        .iter()
        .map(|&i| scenario::backend_spec(topo, i, false, TCP_PORT, 1))
        .collect();
    lbconfig::render(&[IFACE], &[svc])
}

fn long_connection_survives_reload(mode: Forwarding) {
    require_root();
    let topo = scenario::xdp_topology(3, mode);
    let file = ConfigFile::new(&config(&topo, &[1, 2])).expect("writing the config file");
    let mut lb = scenario::start_with_file(&topo, &file);
    let vip = topo.vip(false, TCP_PORT);

    let mut conn = topo
        .client
        .run(|| LineClient::connect(vip))
        .expect("entering the client namespace")
        .unwrap_or_else(|e| panic!("{mode:?}: first connection failed: {e}\n{}", lb.output()));
    let home = conn.greeting().to_string();
    let (home_idx, other_idx) = match home.as_str() {
        "backend-1" => (1, 2),
        "backend-2" => (2, 1),
        other => panic!("greeting {other:?} from a backend that is not configured"),
    };

    let mut answers = Vec::new();
    for i in 0..PINGS {
        if i == RELOAD_AT {
            file.write(&config(&topo, &[home_idx, 3]))
                .expect("rewriting the config file");
            lb.reload()
                .unwrap_or_else(|e| panic!("{mode:?}: reload failed: {e}"));
        }
        answers.push(conn.ping().map_err(|e| e.to_string()));
        if answers.iter().filter(|a| a.is_err()).count() >= scenario::MAX_ERRORS {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let bad: Vec<(usize, &Result<String, String>)> = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.as_deref() != Ok(home.as_str()))
        .collect();
    assert!(
        bad.is_empty(),
        "{mode:?}: the long-lived connection on {home} broke across the reload (ping index, answer): {bad:?}\n{}",
        lb.output()
    );

    let after = scenario::connections(&topo, NEW_CONNECTIONS);
    let report = format!("{mode:?} after reload: {}\n{}", after.report(), lb.output());
    assert!(after.errors.is_empty(), "{report}");
    assert_eq!(
        after.get(&format!("backend-{other_idx}")),
        0,
        "removed backend still gets new connections: {report}"
    );
    assert!(
        after.get("backend-3") > 0,
        "added backend gets no new connections: {report}"
    );
    assert_eq!(
        after.get(&home) + after.get("backend-3"),
        NEW_CONNECTIONS,
        "{report}"
    );
}

#[test]
fn nat_reload_keeps_long_lived_connection() {
    long_connection_survives_reload(Forwarding::Nat);
}

#[test]
fn dsr_reload_keeps_long_lived_connection() {
    long_connection_survives_reload(Forwarding::Dsr);
}

#[test]
fn nat_broken_config_is_refused_and_old_one_kept() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo, &[1])).expect("writing the config file");
    let mut lb = scenario::start_with_file(&topo, &file);
    file.write("this is [not a valid = config\n")
        .expect("rewriting the config file");
    let err = lb.reload().expect_err("a broken config must not reload");
    assert!(
        err.to_string().contains("xdp-lb reload failed"),
        "expected `xdp-lb reload failed`, got: {err}"
    );
    let t = scenario::connections(&topo, NEW_CONNECTIONS);
    assert!(
        t.errors.is_empty(),
        "old config no longer served: {}\n{}",
        t.report(),
        lb.output()
    );
    assert_eq!(t.get("backend-1"), NEW_CONNECTIONS, "{}", t.report());
}

#[test]
fn bad_flags_fail_before_attaching() {
    require_root();
    let topo = xdp_lb_tests::TopologyBuilder::new(1, Forwarding::Nat)
        .build()
        .expect("building the topology");
    let bin = xdp_lb_tests::binary::xdp_lb_bin().unwrap_or_else(|e| panic!("{e}"));
    let out = topo
        .lb
        .command(&bin)
        .args([
            "run",
            "--iface",
            IFACE,
            "--vip",
            "198.18.100.1:80",
            "--backend",
            "not-an-address",
        ])
        .output()
        .expect("running xdp-lb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bad --backend accepted; stderr: {stderr}"
    );
    assert!(stderr.contains("error:"), "no `error:` on stderr: {stderr}");
    let links = topo
        .lb
        .ip(&["link", "show", "dev", IFACE])
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("xdp"),
        "a program stayed attached after a failed start: {links}"
    );
}

/// Draining a backend (state = "draining", then SIGHUP): its open connection keeps
/// working, new connections go elsewhere.
#[test]
fn nat_draining_backend_keeps_flows_gets_no_new_ones() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo, &[1, 2])).expect("writing the config file");
    let mut lb = scenario::start_with_file(&topo, &file);
    let vip = topo.vip(false, TCP_PORT);
    let mut conn = topo
        .client
        .run(|| LineClient::connect(vip))
        .expect("entering the client namespace")
        .unwrap_or_else(|e| panic!("first connection failed: {e}\n{}", lb.output()));
    let home = conn.greeting().to_string();
    let home_idx: usize = home
        .trim_start_matches("backend-")
        .parse()
        .expect("backend-N");
    let mut svc: ServiceSpec = scenario::service(&topo, false, TCP_PORT, "tcp", &[1, 1]);
    svc.backends[home_idx - 1].state = "draining";
    file.write(&lbconfig::render(&[IFACE], &[svc]))
        .expect("rewriting the config file");
    lb.reload().unwrap_or_else(|e| panic!("reload failed: {e}"));
    for i in 0..10 {
        match conn.ping() {
            Ok(name) if name == home => {}
            other => panic!(
                "ping {i} on the draining backend's connection: {other:?}\n{}",
                lb.output()
            ),
        }
    }
    let after = scenario::connections(&topo, NEW_CONNECTIONS);
    let report = format!("after draining {home}: {}\n{}", after.report(), lb.output());
    assert!(after.errors.is_empty(), "{report}");
    assert_eq!(
        after.get(&home),
        0,
        "draining backend still gets new connections: {report}"
    );
}

/// A second balancer on an interface that already has one is refused with a message
/// naming the interface, and does not fall back to generic mode behind the first;
/// the first keeps serving.
#[test]
fn second_balancer_on_the_same_interface_is_refused() {
    require_root();
    let topo = scenario::xdp_topology(1, Forwarding::Nat);
    let svc = scenario::service(&topo, false, TCP_PORT, "tcp", &[1]);
    let lb = scenario::start_service_xdp(&topo, &svc);
    let bin = xdp_lb_tests::binary::xdp_lb_bin().unwrap_or_else(|e| panic!("{e}"));
    // Its own admin socket and no /metrics port: what is refused must be the interface.
    let dir = tempfile::tempdir().unwrap();
    let out = topo
        .lb
        .command(&bin)
        .args(svc.run_args(IFACE))
        .args(["--attach", "xdp", "--metrics-listen", "off"])
        .env("XDP_LB_ADMIN_SOCKET", dir.path().join("second.sock"))
        .output()
        .expect("running a second xdp-lb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second balancer started: {stderr}");
    assert!(
        stderr.contains(&format!(
            "interface {IFACE} already has an XDP program attached"
        )),
        "unclear error: {stderr}"
    );
    assert!(
        !stderr.contains("falling back"),
        "fell back to generic mode: {stderr}"
    );
    let vip = topo.vip(false, TCP_PORT);
    let answer = topo.client.run(|| client::tcp_name(vip)).unwrap();
    assert!(
        answer.as_ref().is_ok_and(|(name, _)| name == "backend-1"),
        "first balancer stopped serving: {answer:?}\n{}",
        lb.output()
    );
}
