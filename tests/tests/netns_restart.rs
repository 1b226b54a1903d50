//! Restarts without losing a connection: paced uploads through the VIP (each ~15 s,
//! SHA-256 verified by the backend at the end) while `xdp-lb run` is stopped and
//! started again, killed with SIGKILL and started again, or restarted with more
//! backends, or replaced by a build whose XDP program differs (an upgrade); the
//! program stays attached from pinned state throughout and the next start adopts it.
//! Also: pinned state of another layout is refused, or migrated where only a counter
//! array or the flow tables' size changed; `--fresh` starts clean, `xdp-lb detach`
//! removes everything.
use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use xdp_lb_tests::{
    admin::AdminCli,
    client::LineClient,
    lb::XdpLbProcess,
    lbconfig::{self, ConfigFile},
    pins, require_root,
    scenario::{self, test_data},
    servers::hex,
    topology::{IFACE, TCP_PORT, UDP_PORT},
    Forwarding, Topology,
};

/// Parallel connections per test: with Maglev spreading them, every backend gets some.
const CONNECTIONS: usize = 8;
/// Bytes per connection, sent in CHUNK writes PAUSE apart: about 15 s per upload.
const LEN: usize = 4 << 20;
const CHUNK: usize = 32 << 10;
const PAUSE: Duration = Duration::from_millis(115);
/// Bounded waits for events (not thresholds on how fast anything is).
const WAIT: Duration = Duration::from_secs(60);

/// No /metrics listener: two processes in one namespace would compete for its port
/// before they reach what these tests check.
const NO_METRICS: &str = "\n[monitor]\nmetrics_listen = \"off\"\n";

fn config(topo: &Topology, backends: &[usize], flow_table_size: Option<u32>) -> String {
    let mut svc = scenario::service(topo, false, TCP_PORT, "tcp", &[]);
    svc.backends = backends
        .iter()
        .map(|&i| scenario::backend_spec(topo, i, false, TCP_PORT, 1))
        .collect();
    let body = lbconfig::render(&[IFACE], &[svc]) + NO_METRICS;
    match flow_table_size {
        Some(n) => format!("flow_table_size = {n}\n{body}"),
        None => body,
    }
}

fn start(topo: &Topology, file: &ConfigFile, extra: &[&str]) -> XdpLbProcess {
    topo.start_lb(&run_args(file, extra))
        .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"))
}

/// `run` with the XDP program: these tests follow its pinned XDP link (`link-IF`);
/// the tc link's restart is `netns_tc.rs`'s.
fn run_args(file: &ConfigFile, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--config".into(),
        file.path().display().to_string(),
        "--attach".into(),
        "xdp".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// One paced upload on its own thread in the client namespace.
struct Upload {
    sent: Arc<AtomicUsize>,
    handle: thread::JoinHandle<xdp_lb_tests::Result<Result<(String, Instant), String>>>,
}

struct Done {
    backend: String,
    finished: Instant,
}

fn start_uploads(topo: &Topology, n: usize) -> Vec<Upload> {
    let vip = topo.vip(false, TCP_PORT);
    (0..n)
        .map(|_| {
            let sent = Arc::new(AtomicUsize::new(0));
            let progress = sent.clone();
            let handle = topo.client.spawn(move || {
                let data = test_data(LEN);
                let want = hex(&Sha256::digest(&data));
                let mut c = LineClient::connect(vip).map_err(|e| format!("connect: {e}"))?;
                let backend = c.greeting().to_string();
                let got = c
                    .sha_paced(&data, CHUNK, PAUSE, &progress)
                    .map_err(|e| format!("upload to {backend}: {e}"))?;
                if got != want {
                    return Err(format!(
                        "{backend} received other bytes: sha256 {got}, sent {want}"
                    ));
                }
                Ok((backend, Instant::now()))
            });
            Upload { sent, handle }
        })
        .collect()
}

/// Waits until every upload has sent at least `fraction` of its bytes.
fn wait_progress(uploads: &[Upload], fraction: f64, lb: Option<&XdpLbProcess>) {
    let deadline = Instant::now() + WAIT;
    let want = (LEN as f64 * fraction) as usize;
    loop {
        let sent: Vec<usize> = uploads
            .iter()
            .map(|u| u.sent.load(Ordering::Relaxed))
            .collect();
        if sent.iter().all(|&s| s >= want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "uploads did not reach {want} bytes within {WAIT:?}: {sent:?}\n{}",
            lb.map(|l| l.output()).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn finish(uploads: Vec<Upload>, lb: &XdpLbProcess) -> Vec<Done> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for u in uploads {
        match u.handle.join().expect("upload thread panicked") {
            Ok(Ok((backend, finished))) => out.push(Done { backend, finished }),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("entering the client namespace: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {CONNECTIONS} uploads failed: {errors:#?}\n{}",
        errors.len(),
        lb.output()
    );
    out
}

/// The tag (hash of the instructions) of program `id`.
fn prog_tag(id: u64) -> String {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool prog show id {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v["tag"].as_str().expect("program tag").to_string()
}

/// (link id, program id) of the pinned link on the lb's interface.
fn link_ids(topo: &Topology) -> (u64, u64) {
    let path = pins::dir_for(topo.lb.name()).join(format!("link-{IFACE}"));
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(&path)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool link show pinned {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    (
        v["id"].as_u64().expect("link id"),
        v["prog_id"].as_u64().expect("prog id"),
    )
}

/// The flow count from `xdp-lb state: adopted (N flows)`, or None for a fresh start.
fn adopted_flows(lb: &XdpLbProcess) -> Option<u64> {
    let line = lb
        .stdout_lines()
        .into_iter()
        .rfind(|l| l.starts_with("xdp-lb state:"))?;
    let n = line
        .strip_prefix("xdp-lb state: adopted (")?
        .strip_suffix(" flows)")?;
    Some(n.parse().expect("a number of flows"))
}

/// Stop (or kill) and start again mid-transfer, with the same binary or `upgrade`;
/// every upload completes intact.
fn restart_mid_transfer(mode: Forwarding, kill: bool, upgrade: Option<std::path::PathBuf>) {
    require_root();
    let topo = scenario::xdp_topology(3, mode);
    let file = ConfigFile::new(&config(&topo, &[1, 2, 3], None)).expect("config file");
    let mut lb = start(&topo, &file, &[]);
    assert_eq!(adopted_flows(&lb), None, "{}", lb.output());
    let (link_before, prog_before) = link_ids(&topo);
    // Read now: the program is freed once the next run has replaced it.
    let tag_before = prog_tag(prog_before);

    let uploads = start_uploads(&topo, CONNECTIONS);
    wait_progress(&uploads, 0.25, Some(&lb));
    let flows_before = AdminCli::new(&lb).json(&["status"])["flows_scanned"]
        .as_u64()
        .expect("flows_scanned");
    let stopped = Instant::now();
    if kill {
        lb.kill();
        // No xdp-lb process now: the pinned program keeps forwarding. Proof: every
        // upload makes progress before anything is started again.
        let at_kill: Vec<usize> = uploads
            .iter()
            .map(|u| u.sent.load(Ordering::Relaxed))
            .collect();
        let deadline = Instant::now() + WAIT;
        while uploads
            .iter()
            .zip(&at_kill)
            .any(|(u, &s)| u.sent.load(Ordering::Relaxed) < s + 4 * CHUNK)
        {
            assert!(
                Instant::now() < deadline,
                "uploads stalled after SIGKILL\n{}",
                lb.output()
            );
            thread::sleep(Duration::from_millis(50));
        }
    } else {
        let status = lb.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "xdp-lb did not exit cleanly: {status:?}\n{}",
            lb.output()
        );
    }
    assert!(
        pins::exists(topo.lb.name()),
        "nothing pinned after the first run"
    );
    let (link_between, prog_between) = link_ids(&topo);
    assert_eq!(
        (link_between, prog_between),
        (link_before, prog_before),
        "the program must stay attached while no xdp-lb runs"
    );

    let lb2 = match &upgrade {
        Some(bin) => topo
            .start_lb_with(bin, &run_args(&file, &[]))
            .unwrap_or_else(|e| panic!("starting the upgrade {}: {e}", bin.display())),
        None => start(&topo, &file, &[]),
    };
    let restarted = Instant::now();
    let adopted = adopted_flows(&lb2).unwrap_or_else(|| panic!("not adopted\n{}", lb2.output()));
    let (link_after, prog_after) = link_ids(&topo);
    assert_eq!(link_after, link_before, "the same link, updated in place");
    assert_ne!(prog_after, prog_before, "the new run's program is attached");
    let tag_after = prog_tag(prog_after);
    if upgrade.is_some() {
        assert_ne!(
            tag_after, tag_before,
            "the upgrade's program (other instructions) is the one attached"
        );
    } else {
        assert_eq!(
            tag_after, tag_before,
            "the same binary loads the same program"
        );
    }
    let status = AdminCli::new(&lb2).json(&["status"]);
    assert_eq!(status["adopted"], true, "{status}");

    let done = finish(uploads, &lb2);
    assert!(
        adopted >= CONNECTIONS as u64 && adopted >= flows_before,
        "adopted {adopted} flows; {CONNECTIONS} connections, {flows_before} before the restart"
    );
    // Ordering, not speed: the new run was ready before the uploads ended, so the
    // restart really happened under traffic.
    assert!(
        done.iter().all(|d| d.finished > restarted),
        "an upload finished before the restart completed: make LEN larger"
    );
    let mut spread: Vec<&str> = done.iter().map(|d| d.backend.as_str()).collect();
    spread.sort_unstable();
    eprintln!(
        "{mode:?} {}: {CONNECTIONS} uploads of {LEN} bytes intact across the restart on {spread:?}; {adopted} flows adopted; no xdp-lb process for {:.2?} while link {link_before} stayed attached, program {prog_before} (tag {tag_before}) -> {prog_after} (tag {tag_after})",
        match (kill, &upgrade) {
            (true, _) => "SIGKILL",
            (false, Some(_)) => "upgrade",
            (false, None) => "stop/start",
        },
        restarted - stopped
    );
}

#[test]
fn nat_stop_and_start_mid_transfer_loses_nothing() {
    restart_mid_transfer(Forwarding::Nat, false, None);
}

#[test]
fn dsr_stop_and_start_mid_transfer_loses_nothing() {
    restart_mid_transfer(Forwarding::Dsr, false, None);
}

#[test]
fn sigkill_mid_transfer_keeps_forwarding_and_the_next_start_adopts() {
    restart_mid_transfer(Forwarding::Nat, true, None);
}

/// An upgrade: the running balancer replaced by another build whose XDP program has
/// other instructions, over the pinned maps, under traffic.
#[test]
fn nat_upgrade_to_a_different_program_mid_transfer_loses_nothing() {
    let next = xdp_lb_tests::binary::upgrade_bin().expect("the upgrade build");
    restart_mid_transfer(Forwarding::Nat, false, Some(next));
}

/// Uploads through a balancer of backends 1 and 2 (`flow_table_size` `before`),
/// restarted mid-transfer with backends 1..4 (and `after`): returns the config file
/// and the restarted balancer once every upload finished intact on 1 or 2. Re-dispatched,
/// about half would have gone to 3 and 4, which would have reset them.
fn uploads_stay_on_1_and_2_across_a_restart(
    topo: &Topology,
    before: Option<u32>,
    after: Option<u32>,
) -> (ConfigFile, XdpLbProcess) {
    let file = ConfigFile::new(&config(topo, &[1, 2], before)).expect("config file");
    let mut lb = start(topo, &file, &[]);
    let uploads = start_uploads(topo, CONNECTIONS);
    wait_progress(&uploads, 0.25, Some(&lb));
    lb.stop();
    file.write(&config(topo, &[1, 2, 3, 4], after))
        .expect("rewriting the config");
    let lb2 = start(topo, &file, &[]);
    assert!(adopted_flows(&lb2).is_some(), "{}", lb2.output());
    let done = finish(uploads, &lb2);
    assert!(
        done.iter()
            .all(|d| d.backend == "backend-1" || d.backend == "backend-2"),
        "connections started before the restart moved to backends added by it:\n{}",
        lb2.output()
    );
    (file, lb2)
}

/// Backends 1 and 2, restarted with 1..4: Maglev now sends about half of the
/// established 5-tuples to backends 3 and 4, where no connection exists (they would
/// answer with a reset). Only the adopted flow table keeps them on 1 and 2.
#[test]
fn backends_added_at_restart_leave_established_flows_alone() {
    require_root();
    let topo = scenario::xdp_topology(4, Forwarding::Nat);
    let (_file, lb2) = uploads_stay_on_1_and_2_across_a_restart(&topo, None, None);
    // New connections do reach the added backends.
    let vip = topo.vip(false, TCP_PORT);
    let names: Vec<String> = topo
        .client
        .run(|| {
            (0..40)
                .filter_map(|_| xdp_lb_tests::client::tcp_name(vip).ok().map(|(n, _)| n))
                .collect()
        })
        .expect("client namespace");
    assert_eq!(names.len(), 40, "new connections failed\n{}", lb2.output());
    assert!(
        names.iter().any(|n| n == "backend-3" || n == "backend-4"),
        "no new connection reached an added backend: {names:?}"
    );
}

/// Backends 1 and 2 in 4096-entry flow tables, restarted with twice the tables and
/// backends 1..4: the pinned flows are copied into the new tables, so the uploads
/// started before stay on 1 and 2 (re-dispatched, about half would go to 3 and 4,
/// which would reset them), and the next restart adopts the new tables as they are.
#[test]
fn a_flow_table_size_change_at_restart_keeps_established_flows() {
    require_root();
    let topo = scenario::xdp_topology(4, Forwarding::Nat);
    let (file, mut lb2) = uploads_stay_on_1_and_2_across_a_restart(&topo, Some(4096), Some(8192));
    let log = lb2.output();
    let copied = log
        .lines()
        .find_map(|l| {
            let rest = l
                .split("migrated pinned map FLOWS from 4097 to 8193 entries (")
                .nth(1)?;
            rest.split(' ').next()?.parse::<usize>().ok()
        })
        .unwrap_or_else(|| panic!("no FLOWS migration logged:\n{log}"));
    assert!(copied >= CONNECTIONS, "{copied} flows copied:\n{log}");
    lb2.stop();
    // The record now says 8192: the next start adopts the tables as they are.
    let lb3 = start(&topo, &file, &[]);
    let log = lb3.output();
    assert!(adopted_flows(&lb3).is_some(), "{log}");
    assert!(
        !log.contains("flow_table_size changes") && !log.contains("migrated pinned map FLOWS"),
        "the tables were resized again:\n{log}"
    );
}

#[test]
fn layout_mismatch_is_refused_and_fresh_starts_clean() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo, &[1, 2], Some(4096))).expect("config file");
    let mut lb = start(&topo, &file, &[]);
    // Some flows to drop later.
    let vip = topo.vip(false, TCP_PORT);
    topo.client
        .run(|| {
            for _ in 0..5 {
                xdp_lb_tests::client::tcp_name(vip).expect("connection through the VIP");
            }
        })
        .expect("client namespace");
    lb.stop();

    // A ring map laid out differently by the configuration (another flow_table_size
    // is copied instead: see a_flow_table_size_change_at_restart_keeps_established_flows).
    file.write(&format!(
        "max_services = 8\n{}",
        config(&topo, &[1, 2], Some(4096))
    ))
    .expect("rewriting the config");
    let refused = topo
        .start_lb(&run_args(&file, &[]))
        .err()
        .expect("a start over a different max_services must be refused")
        .to_string();
    assert!(
        refused.contains("max_services = ") && refused.contains("--fresh"),
        "{refused}"
    );

    // A layout record of another version (as a newer or older binary would leave).
    file.write(&config(&topo, &[1, 2], Some(4096)))
        .expect("rewriting the config");
    let layout =
        pins::dir_for(topo.lb.name()).join(format!("v{}/LAYOUT", xdp_lb_common::LAYOUT_VERSION));
    let magic = u32::from_ne_bytes(*b"xlbL").to_ne_bytes();
    let mut value: Vec<String> = magic.iter().map(|b| b.to_string()).collect();
    value.extend(99u32.to_ne_bytes().iter().map(|b| b.to_string()));
    value.extend(std::iter::repeat_n("0".to_string(), 16));
    let out = std::process::Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&layout)
        .args(["key", "0", "0", "0", "0", "value"])
        .args(&value)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool map update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = topo
        .start_lb(&run_args(&file, &[]))
        .err()
        .expect("another layout version must be refused")
        .to_string();
    assert!(
        refused.contains("version 99") && refused.contains("--fresh"),
        "{refused}"
    );

    let lb2 = start(&topo, &file, &["--fresh"]);
    assert_eq!(adopted_flows(&lb2), None, "{}", lb2.output());
    let status = AdminCli::new(&lb2).json(&["status"]);
    assert_eq!(status["adopted"], false, "{status}");
    assert_eq!(status["flows_scanned"], 0, "--fresh starts from empty maps");
    // And it balances.
    topo.client
        .run(|| xdp_lb_tests::client::tcp_name(vip).expect("connection after --fresh"))
        .expect("client namespace");

    // While it runs, a second daemon on the same pin directory (it would swap the
    // first one's program out of the shared link) and `detach` are refused.
    let second = topo
        .start_lb(&run_args(&file, &[]))
        .err()
        .expect("a second daemon on the same pin directory must be refused")
        .to_string();
    assert!(
        second.contains("another xdp-lb run uses the pin directory"),
        "{second}"
    );
    let detach = || {
        let bin = xdp_lb_tests::binary::xdp_lb_bin().expect("xdp-lb binary");
        topo.lb
            .command(&bin)
            .env("XDP_LB_PIN_DIR", pins::dir_for(topo.lb.name()))
            .arg("detach")
            .output()
            .expect("running xdp-lb detach")
    };
    let out = detach();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("another xdp-lb run uses"),
        "detach under a running daemon: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(lb2);

    // `xdp-lb detach` removes the program and every pin.
    let out = detach();
    assert!(
        out.status.success(),
        "xdp-lb detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins::exists(topo.lb.name()), "pins left after detach");
    let link = topo.lb.ip(&["link", "show", IFACE]).expect("ip link show");
    let text = String::from_utf8_lossy(&link.stdout);
    assert!(!text.contains("xdp"), "a program is still attached: {text}");
}

/// (service packets, flows per backend) once two status samples agree: the
/// counters are sampled every second, so equal answers mean the sample is settled.
fn settled_counters(lb: &XdpLbProcess) -> (u64, Vec<u64>) {
    let cli = AdminCli::new(lb);
    let read = || {
        let s = cli.json(&["status"]);
        let svc = &s["services"][0];
        let flows = svc["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| b["flows"].as_u64().expect("flows"))
            .collect::<Vec<_>>();
        (svc["packets"].as_u64().expect("packets"), flows)
    };
    let deadline = Instant::now() + WAIT;
    let mut last = read();
    loop {
        thread::sleep(Duration::from_millis(1500));
        let now = read();
        if now == last && now.0 > 0 {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "counters never settled above 0: {now:?}\n{}",
            lb.output()
        );
        last = now;
    }
}

/// Counters and the flow table are pinned: with no VIP traffic in between, the
/// restarted run reports exactly the packets and flows the first one had.
#[test]
fn counters_and_flows_survive_a_restart() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo, &[1, 2], None)).expect("config file");
    let mut lb = start(&topo, &file, &[]);
    let vip = topo.vip(false, TCP_PORT);
    topo.client
        .run(|| {
            for _ in 0..10 {
                xdp_lb_tests::client::tcp_name(vip).expect("connection through the VIP");
            }
        })
        .expect("client namespace");
    let before = settled_counters(&lb);
    assert_eq!(before.1.iter().sum::<u64>(), 10, "{before:?}");
    lb.stop();
    let lb2 = start(&topo, &file, &[]);
    assert_eq!(adopted_flows(&lb2), Some(10), "{}", lb2.output());
    let after = settled_counters(&lb2);
    assert_eq!(
        after, before,
        "packets and flows per backend across the restart"
    );
}

/// `nat_handshake_guard` reaches the running program's EMBRYO_SLOT_CONF (read from
/// the kernel through the pinned link's program), is logged, and a reload that
/// changes it is refused: it changes on restart, as the next start shows.
#[test]
fn the_nat_handshake_guard_reaches_the_kernel_and_changes_on_restart() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let with = |guard: &str| {
        format!(
            "nat_handshake_guard = {guard:?}\n{}",
            config(&topo, &[1, 2], None)
        )
    };
    let file = ConfigFile::new(&with("250ms")).expect("config file");
    let mut lb = start(&topo, &file, &[]);
    assert_eq!(
        kernel_nat_guard(&topo),
        239,
        "250 ms in 2^20 ns units, rounded up"
    );
    assert!(
        lb.output().contains("nat_handshake_guard 250ms"),
        "{}",
        lb.output()
    );
    file.write(&with("1s")).expect("config file");
    let refused = lb
        .reload()
        .expect_err("a reload changing nat_handshake_guard");
    assert!(
        refused.to_string().contains("nat_handshake_guard")
            || lb.output().contains("nat_handshake_guard and [monitor]"),
        "{refused}: {}",
        lb.output()
    );
    assert_eq!(kernel_nat_guard(&topo), 239, "changed by a refused reload");
    lb.stop();
    let lb2 = start(&topo, &file, &[]);
    assert_eq!(
        kernel_nat_guard(&topo),
        954,
        "1 s in 2^20 ns units, rounded up"
    );
    drop(lb2);
}

/// EMBRYO_SLOT_CONF[SLOT_CONF_GUARD] of the program behind the lb's pinned link.
fn kernel_nat_guard(topo: &Topology) -> u32 {
    let (_, prog) = link_ids(topo);
    let maps = bpftool(&["prog", "show", "id", &prog.to_string()]);
    let ids = maps["map_ids"].as_array().expect("map_ids").clone();
    for id in ids {
        let id = id.as_u64().expect("map id").to_string();
        // The kernel keeps 15 characters of a map's name.
        if bpftool(&["map", "show", "id", &id])["name"].as_str() != Some("EMBRYO_SLOT_CON") {
            continue;
        }
        let key = xdp_lb_common::SLOT_CONF_GUARD
            .to_le_bytes()
            .map(|b| b.to_string());
        let mut args = vec!["map", "lookup", "id", &id, "key"];
        args.extend(key.iter().map(String::as_str));
        let bytes = pins::value_bytes(&bpftool(&args));
        return u32::from_le_bytes(bytes[..4].try_into().unwrap());
    }
    panic!("program {prog} has no EMBRYO_SLOT_CONF map");
}

/// The configuration changed while the daemon was down: one backend removed. UDP
/// flows (same socket, same 5-tuple) homed on the others keep their backend; those
/// homed on the removed one are re-dispatched. This holds only if the restored
/// planner knows which slot the removed backend had (it marks that slot down).
#[test]
fn a_backend_removed_at_restart_has_its_flows_re_dispatched() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let udp_config = |backends: &[usize]| {
        let mut svc = scenario::service(&topo, false, UDP_PORT, "udp", &[]);
        svc.backends = backends
            .iter()
            .map(|&i| scenario::backend_spec(&topo, i, false, UDP_PORT, 1))
            .collect();
        lbconfig::render(&[IFACE], &[svc]) + NO_METRICS
    };
    let file = ConfigFile::new(&udp_config(&[1, 2, 3])).expect("config file");
    let mut lb = start(&topo, &file, &[]);
    let vip = topo.vip(false, UDP_PORT);
    let sockets: Vec<UdpSocket> = topo
        .client
        .run(|| {
            (0..12)
                .map(|_| {
                    let s = UdpSocket::bind("0.0.0.0:0").expect("binding a udp socket");
                    s.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("udp timeout");
                    s
                })
                .collect()
        })
        .expect("client namespace");
    let ask = |s: &UdpSocket, lb: &XdpLbProcess| {
        s.send_to(b"hello\n", vip).expect("sending to the VIP");
        let mut buf = [0u8; 64];
        let (n, _) = s
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no answer from {vip}: {e}\n{}", lb.output()));
        String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
    };
    let homes: Vec<String> = sockets.iter().map(|s| ask(s, &lb)).collect();
    let removed = homes[0].clone();
    let idx: usize = removed
        .strip_prefix("backend-")
        .and_then(|n| n.parse().ok())
        .expect("a backend name");
    lb.stop();
    let keep: Vec<usize> = (1..=3).filter(|&i| i != idx).collect();
    file.write(&udp_config(&keep))
        .expect("rewriting the config");
    let lb2 = start(&topo, &file, &[]);
    assert!(adopted_flows(&lb2).is_some(), "{}", lb2.output());
    for (s, home) in sockets.iter().zip(&homes) {
        let now = ask(s, &lb2);
        if *home == removed {
            assert_ne!(now, removed, "a flow stayed on the removed backend");
        } else {
            assert_eq!(&now, home, "a flow to a kept backend moved");
        }
    }
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Replaces the pinned map `name` with a new, empty one of another shape, as a
/// binary of another version would have left it.
fn repin(dir: &std::path::Path, name: &str, shape: &[&str]) -> String {
    let path = dir.join(name);
    std::fs::remove_file(&path).expect("removing the pinned map");
    let path = path.display().to_string();
    let mut args = vec!["map", "create", path.as_str()];
    args.extend_from_slice(shape);
    args.extend_from_slice(&["name", name]);
    bpftool(&args);
    path
}

/// `repin` of a flow table (LRU hash, 40-byte `FlowKey`) with this value size and
/// number of entries.
fn repin_flow_table(dir: &std::path::Path, name: &str, value: usize, entries: u32) -> String {
    let (value, entries) = (value.to_string(), entries.to_string());
    repin(
        dir,
        name,
        &[
            "type", "lru_hash", "key", "40", "value", &value, "entries", &entries,
        ],
    )
}

/// A layout change between versions. GLOBAL_STATS pinned with 24 entries is what
/// the version before the ICMP verdict reasons leaves: that counter array is
/// migrated (entries copied into one of this binary's size). FLOWS with exactly
/// flow_table_size entries and EMBRYOS with exactly `embryo_table_size` (the sizing
/// before `hash_table_entries`) are adopted as they are. FLOWS with another value size cannot be read: refused, with a message that
/// says what to do.
#[test]
fn a_resized_counter_array_is_migrated_and_a_reshaped_map_is_refused() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo, &[1, 2], Some(4096))).expect("config file");
    let mut lb = start(&topo, &file, &[]);
    lb.stop();
    let dir = pins::dir_for(topo.lb.name()).join(format!("v{}", xdp_lb_common::LAYOUT_VERSION));
    let stats = repin(
        &dir,
        "GLOBAL_STATS",
        &[
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "24",
        ],
    );
    // pass_malformed (reason 2) = 1000 on every CPU.
    bpftool(&[
        "map", "update", "pinned", &stats, "key", "2", "0", "0", "0", "value", "0xe8", "0x03", "0",
        "0", "0", "0", "0", "0",
    ]);
    let mut lb2 = start(&topo, &file, &[]);
    assert!(adopted_flows(&lb2).is_some(), "{}", lb2.output());
    let want = format!(
        "migrated pinned map GLOBAL_STATS from 24 to {} entries",
        xdp_lb_common::reason::COUNT
    );
    assert!(lb2.output().contains(&want), "{}", lb2.output());
    let shown = bpftool(&["map", "show", "pinned", &stats]);
    assert_eq!(
        shown["max_entries"].as_u64(),
        Some(xdp_lb_common::reason::COUNT as u64),
        "{shown}"
    );
    let entry = bpftool(&["map", "lookup", "pinned", &stats, "key", "2", "0", "0", "0"]);
    let per_cpu = entry["values"].as_array().expect("per-CPU values");
    assert!(!per_cpu.is_empty(), "{entry}");
    for v in per_cpu {
        let bytes = pins::value_bytes(v);
        let n = u64::from_ne_bytes(bytes[..8].try_into().unwrap());
        assert!(n >= 1000, "pass_malformed lost in the migration: {entry}");
    }
    // And it balances.
    let vip = topo.vip(false, TCP_PORT);
    topo.client
        .run(|| xdp_lb_tests::client::tcp_name(vip).expect("connection after the migration"))
        .expect("client namespace");
    lb2.stop();

    // A flow table made with exactly flow_table_size entries (half the hash buckets),
    // as versions before `hash_table_entries` left it: adopted as it is.
    let ours = std::mem::size_of::<xdp_lb_common::FlowValue>();
    let flows = repin_flow_table(&dir, "FLOWS", ours, 4096);
    // And EMBRYOS as those versions sized it for 4096 flows: adopted too.
    repin_flow_table(
        &dir,
        "EMBRYOS",
        ours,
        xdp_lb_common::embryo_table_size(4096),
    );
    // And no EMBRYO_SLOTS, which those versions did not have: an empty one is made.
    let slots = dir.join("EMBRYO_SLOTS");
    std::fs::remove_file(&slots).unwrap_or_else(|e| panic!("{}: {e}", slots.display()));
    let mut lb_earlier = start(&topo, &file, &[]);
    assert!(
        adopted_flows(&lb_earlier).is_some(),
        "{}",
        lb_earlier.output()
    );
    for line in [
        "FLOWS: pinned with 4096 entries by an earlier version, adopted as it is",
        "EMBRYOS: pinned with 1024 entries by an earlier version, adopted as it is",
        "EMBRYO_SLOTS: not pinned (pins of an earlier version, or removed): an empty one is made",
    ] {
        assert!(
            lb_earlier.output().contains(line),
            "{line:?} not in: {}",
            lb_earlier.output()
        );
    }
    assert!(slots.exists(), "EMBRYO_SLOTS was not pinned again");
    topo.client
        .run(|| xdp_lb_tests::client::tcp_name(vip).expect("connection over the adopted table"))
        .expect("client namespace");
    let shown = bpftool(&["map", "show", "pinned", &flows]);
    assert_eq!(shown["max_entries"].as_u64(), Some(4096), "{shown}");
    let held = bpftool(&["map", "dump", "pinned", &flows]);
    assert!(
        held.as_array().is_some_and(|a| !a.is_empty()),
        "the connection's flow is not in the adopted table: {held}"
    );
    lb_earlier.stop();

    // A value 8 bytes larger than this binary's, as an older or newer FlowValue would be.
    let other = ours + 8;
    repin_flow_table(&dir, "FLOWS", other, 4096);
    let refused = topo
        .start_lb(&run_args(&file, &[]))
        .err()
        .expect("a flow table of another value size must be refused")
        .to_string();
    assert!(
        refused.contains(&format!(
            "map FLOWS: value size is {other} pinned but {ours} in this binary"
        )) && refused.contains("--fresh"),
        "{refused}"
    );
    let lb3 = start(&topo, &file, &["--fresh"]);
    assert_eq!(adopted_flows(&lb3), None, "{}", lb3.output());
    topo.client
        .run(|| xdp_lb_tests::client::tcp_name(vip).expect("connection after --fresh"))
        .expect("client namespace");
}
