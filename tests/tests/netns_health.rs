//! Health-gated forwarding with the real program and real sockets (issue 7): a backend
//! whose server dies is taken out by its checks and comes back after `rise` passes; an
//! HTTP check's status and body decide; backups serve only while every primary is down;
//! every backend down drops new connections (counted) or fails open; an operator's
//! `down` beats a passing check and `up` hands the backend back to its checks.
//!
//! Checks run every 200 ms (timeout 100 ms, rise 2, fall 2). Waits poll the daemon's
//! status over its admin socket with bounded deadlines; detection and return times
//! are measured and printed, never asserted against a threshold.
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use xdp_lb::{
    admin::{
        client::{self as admin, Endpoint},
        proto::{BackendStatus, Command, Reply, Serving, Status},
    },
    config::BackendState,
};
use xdp_lb_tests::{
    client::{self, LineClient},
    lb::XdpLbProcess,
    lbconfig::ConfigFile,
    netns::NetNs,
    require_root,
    scenario::{self, Tally},
    topology::{IFACE, TCP_PORT, UDP_PORT},
    Forwarding, Topology,
};

const INTERVAL: Duration = Duration::from_millis(200);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// The port of the test's own HTTP health endpoints (the line servers stay on 80).
const HEALTH_PORT: u16 = 8081;
/// New connections per traffic batch.
const BATCH: usize = 60;
/// Bound for any wait on the daemon: far above what the checks need.
const PATIENCE: Duration = Duration::from_secs(20);
/// Connect timeout where a dropped SYN is the expected outcome.
const DROPPED_CONNECT: Duration = Duration::from_millis(500);

fn tcp_check() -> String {
    format!(
        "[service.health_check]\ntype = \"tcp\"\ninterval = \"{}ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n",
        INTERVAL.as_millis()
    )
}

fn http_check() -> String {
    format!(
        "[service.health_check]\ntype = \"http\"\ninterval = \"{}ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\nport = {HEALTH_PORT}\npath = \"/healthz\"\nexpect_body = \"ok\"\n",
        INTERVAL.as_millis()
    )
}

/// One NAT tcp service on port 80 over `backends` (index, extra backend lines), with
/// `service` lines (scalar keys, then the health_check table) before the backends.
fn config(topo: &Topology, service: &str, backends: &[(usize, &str)]) -> String {
    let mut s = format!(
        "interfaces = [\"{IFACE}\"]\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nport = {TCP_PORT}\nforwarding = \"{}\"\n{service}\n",
        topo.vip(false, TCP_PORT).ip(),
        topo.mode.as_str()
    );
    for (i, extra) in backends {
        s += &format!(
            "[[service.backend]]\naddr = \"{}\"\nport = {TCP_PORT}\n{extra}\n",
            topo.backend(*i).v4()
        );
    }
    s
}

fn call(lb: &XdpLbProcess, cmd: Command) -> Reply {
    admin::call(&Endpoint::Unix(lb.admin_socket().to_path_buf()), cmd)
        .unwrap_or_else(|e| panic!("admin call: {e}\n{}", lb.output()))
}

fn status(lb: &XdpLbProcess) -> Status {
    match call(lb, Command::Status) {
        Reply::Status(s) => s,
        other => panic!("status answered {other:?}"),
    }
}

fn backend<'a>(s: &'a Status, topo: &Topology, index: usize) -> &'a BackendStatus {
    let addr = SocketAddr::new(IpAddr::V4(topo.backend(index).v4()), TCP_PORT);
    s.services[0]
        .backends
        .iter()
        .find(|b| b.addr == addr)
        .unwrap_or_else(|| panic!("backend {addr} not in status"))
}

/// Health of backend `index` as the balancer applied it (`None`: not checked).
fn health_up(s: &Status, topo: &Topology, index: usize) -> Option<bool> {
    backend(s, topo, index).health.as_ref().map(|h| h.up)
}

/// Polls the status until `done` holds; returns how long that took from `since`.
fn wait_for(
    lb: &XdpLbProcess,
    what: &str,
    since: Instant,
    mut done: impl FnMut(&Status) -> bool,
) -> Duration {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = status(lb);
        if done(&s) {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}; last status: {s:#?}\n{}",
            lb.output()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Every backend has been checked at least once and is up.
fn all_checked_and_up(lb: &XdpLbProcess, topo: &Topology, n: usize) {
    wait_for(lb, "the first checks", Instant::now(), |s| {
        (1..=n).all(|i| {
            backend(s, topo, i)
                .health
                .as_ref()
                .is_some_and(|h| h.up && h.checks > 0)
        })
    });
}

/// Sleeps until `fall x interval + 1 interval` after `since`: from then on no new
/// connection may reach a backend that died at `since`.
fn after_detection_bound(since: Instant) {
    let bound = INTERVAL * (FALL + 1);
    if let Some(left) = bound.checked_sub(since.elapsed()) {
        thread::sleep(left);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn nat_tcp_check_takes_a_dead_backend_out_and_brings_it_back() {
    dead_backend_out_and_back(Forwarding::Nat);
}

/// In DSR mode the checks go to the backend's own address (the VIP is on its `lo`).
#[test]
fn dsr_tcp_check_takes_a_dead_backend_out_and_brings_it_back() {
    dead_backend_out_and_back(Forwarding::Dsr);
}

fn dead_backend_out_and_back(mode: Forwarding) {
    require_root();
    let mut topo = scenario::xdp_topology(3, mode);
    let file = ConfigFile::new(&config(&topo, &tcp_check(), &[(1, ""), (2, ""), (3, "")]))
        .expect("writing the config file");
    let lb = scenario::start_with_file(&topo, &file);
    all_checked_and_up(&lb, &topo, 3);
    let before = scenario::connections(&topo, BATCH);
    assert!(
        before.errors.is_empty() && (1..=3).all(|i| before.get(&format!("backend-{i}")) > 0),
        "before the kill: {}\n{}",
        before.report(),
        lb.output()
    );
    // A long-lived connection on a backend that stays up.
    let vip = topo.vip(false, TCP_PORT);
    let mut keep = (0..20)
        .find_map(|_| {
            let c = topo.client.run(|| LineClient::connect(vip)).ok()?.ok()?;
            (c.greeting() != "backend-2").then_some(c)
        })
        .expect("a connection to backend-1 or backend-3");
    let home = keep.greeting().to_string();

    let stopping = Instant::now();
    topo.stop_servers(2);
    // The listener closes while `stop_servers` joins the accept loop (which polls
    // every 100 ms): from here on the server is surely gone.
    let killed = Instant::now();
    let detected = wait_for(&lb, "backend-2 marked down", killed, |s| {
        health_up(s, &topo, 2) == Some(false)
            && backend(s, &topo, 2).effective_state == BackendState::Down
    });
    // When the checks flipped (the event's time), as opposed to when the status
    // showed the new table: the difference is the publish (table build and writes).
    let asked = Instant::now();
    let since = backend(&status(&lb), &topo, 2)
        .health
        .as_ref()
        .and_then(|h| h.since_secs)
        .expect("a flip time");
    let flipped = (asked - Duration::from_secs_f64(since)).saturating_duration_since(killed);
    println!(
        "detection ({mode:?}): backend-2's checks failed it {:.0} ms and the status showed it out {:.0} ms after its server was gone (stopping it took {:.0} ms; interval {} ms, fall {FALL})",
        ms(flipped),
        ms(detected),
        ms(killed - stopping),
        INTERVAL.as_millis(),
    );
    after_detection_bound(killed);
    let after = scenario::connections(&topo, BATCH);
    let report = format!("after the kill: {}\n{}", after.report(), lb.output());
    assert!(after.errors.is_empty(), "{report}");
    assert_eq!(after.get("backend-2"), 0, "{report}");
    assert_eq!(after.total(), BATCH, "{report}");
    assert_eq!(
        keep.ping().ok().as_deref(),
        Some(home.as_str()),
        "the long-lived connection on {home} broke\n{}",
        lb.output()
    );
    let s = status(&lb);
    let h = backend(&s, &topo, 2).health.clone().expect("checked");
    assert_eq!(
        h.last_result.as_deref(),
        Some("connection refused"),
        "{h:?}"
    );
    assert_eq!(
        h.reason.as_deref(),
        Some("health check failed: connection refused")
    );
    assert!(
        s.recent_events
            .iter()
            .any(|e| e.origin == xdp_lb::admin::proto::Origin::Health
                && e.reason.as_deref() == Some("health check failed: connection refused")),
        "no health event in {:#?}",
        s.recent_events
    );
    assert!(
        lb.output()
            .contains("health check failed: connection refused"),
        "no log line with the reason\n{}",
        lb.output()
    );

    let restarted = Instant::now();
    topo.start_servers(2)
        .expect("restarting backend-2's servers");
    let back = wait_for(&lb, "backend-2 up again", restarted, |s| {
        health_up(s, &topo, 2) == Some(true)
            && backend(s, &topo, 2).effective_state == BackendState::Active
    });
    println!(
        "return ({mode:?}): backend-2 marked up {:.0} ms after its server restarted (rise {RISE} x {} ms)",
        ms(back),
        INTERVAL.as_millis()
    );
    let s = status(&lb);
    let h = backend(&s, &topo, 2).health.clone().expect("checked");
    assert_eq!(h.last_result.as_deref(), Some("ok"));
    assert!(h.last_latency_ms.is_some_and(|l| l > 0.0), "{h:?}");
    assert_eq!(h.transitions, 2, "{h:?}");
    let again = scenario::connections(&topo, BATCH);
    let report = format!("after the restart: {}\n{}", again.report(), lb.output());
    assert!(again.errors.is_empty(), "{report}");
    assert!(again.get("backend-2") > 0, "{report}");
}

/// A tiny HTTP/1.1 health endpoint in a backend namespace whose status and body the
/// test sets; every request gets the current pair, then the connection closes.
struct HealthEndpoint {
    answer: Arc<Mutex<(u16, &'static str)>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthEndpoint {
    fn start(ns: &NetNs) -> Self {
        let sa = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), HEALTH_PORT);
        let listener = ns
            .run(|| TcpListener::bind(sa))
            .expect("entering the backend namespace")
            .expect("binding the health endpoint");
        listener.set_nonblocking(true).expect("non-blocking");
        let answer = Arc::new(Mutex::new((200, "ok")));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (answer, stop) = (answer.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let now = *answer.lock().unwrap();
                            respond(stream, now);
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            answer,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, status: u16, body: &'static str) {
        *self.answer.lock().unwrap() = (status, body);
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(stream: TcpStream, (status, body): (u16, &str)) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    // The request head ends with an empty line; the probe sends no body.
    loop {
        line.clear();
        match rd.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.trim_end().is_empty() => break,
            Ok(_) => {}
        }
    }
    let _ = out.write_all(
        format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

fn endpoints(topo: &Topology) -> Vec<HealthEndpoint> {
    topo.backends
        .iter()
        .map(|b| HealthEndpoint::start(&b.ns))
        .collect()
}

#[test]
fn nat_http_check_503_or_a_wrong_body_takes_the_backend_down() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let health = endpoints(&topo);
    let file = ConfigFile::new(&config(&topo, &http_check(), &[(1, ""), (2, ""), (3, "")]))
        .expect("writing the config file");
    let lb = scenario::start_with_file(&topo, &file);
    all_checked_and_up(&lb, &topo, 3);

    let t = Instant::now();
    health[0].set(503, "ok");
    let took = wait_for(&lb, "backend-1 down on 503", t, |s| {
        health_up(s, &topo, 1) == Some(false)
    });
    println!(
        "http: backend-1 marked down {:.0} ms after answering 503",
        ms(took)
    );
    let s = status(&lb);
    let h = backend(&s, &topo, 1).health.clone().unwrap();
    assert_eq!(
        (h.check.as_str(), h.last_result.as_deref()),
        ("http", Some("status 503"))
    );
    assert_eq!(h.reason.as_deref(), Some("health check failed: status 503"));
    let tally = scenario::connections(&topo, BATCH);
    let report = format!("with backend-1 at 503: {}\n{}", tally.report(), lb.output());
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(tally.get("backend-1"), 0, "{report}");

    let t = Instant::now();
    health[0].set(200, "ok");
    wait_for(&lb, "backend-1 up again", t, |s| {
        health_up(s, &topo, 1) == Some(true)
    });

    let t = Instant::now();
    health[1].set(200, "maintenance");
    let took = wait_for(&lb, "backend-2 down on a body mismatch", t, |s| {
        health_up(s, &topo, 2) == Some(false)
    });
    println!(
        "http: backend-2 marked down {:.0} ms after its body changed",
        ms(took)
    );
    let s = status(&lb);
    assert_eq!(
        backend(&s, &topo, 2)
            .health
            .as_ref()
            .unwrap()
            .last_result
            .as_deref(),
        Some("body mismatch")
    );
    assert_eq!(health_up(&s, &topo, 1), Some(true));
    let tally = scenario::connections(&topo, BATCH);
    let report = format!(
        "with backend-2 mismatching: {}\n{}",
        tally.report(),
        lb.output()
    );
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(tally.get("backend-2"), 0, "{report}");
    assert!(tally.get("backend-1") > 0, "{report}");
}

#[test]
fn nat_backup_serves_only_while_every_primary_is_down() {
    require_root();
    let mut topo = scenario::xdp_topology(3, Forwarding::Nat);
    let file = ConfigFile::new(&config(
        &topo,
        &tcp_check(),
        &[(1, ""), (2, ""), (3, "backup = true")],
    ))
    .expect("writing the config file");
    let lb = scenario::start_with_file(&topo, &file);
    all_checked_and_up(&lb, &topo, 3);
    let before = scenario::connections(&topo, BATCH);
    let report = format!("primaries up: {}\n{}", before.report(), lb.output());
    assert!(before.errors.is_empty(), "{report}");
    assert_eq!(
        before.get("backend-3"),
        0,
        "the backup got new flows: {report}"
    );

    let killed = Instant::now();
    topo.stop_servers(1);
    topo.stop_servers(2);
    let took = wait_for(&lb, "the backup taking over", killed, |s| {
        s.services[0].serving == Serving::Backups
    });
    println!(
        "backup: took over {:.0} ms after both primaries stopped",
        ms(took)
    );
    after_detection_bound(killed);
    let during = scenario::connections(&topo, BATCH);
    let report = format!("primaries down: {}\n{}", during.report(), lb.output());
    assert!(during.errors.is_empty(), "{report}");
    assert_eq!(during.get("backend-3"), BATCH, "{report}");

    let restarted = Instant::now();
    topo.start_servers(1).expect("restarting backend-1");
    let took = wait_for(&lb, "a primary back", restarted, |s| {
        s.services[0].serving == Serving::Primaries
    });
    println!(
        "backup: handed back {:.0} ms after backend-1 restarted",
        ms(took)
    );
    let after = scenario::connections(&topo, BATCH);
    let report = format!("backend-1 back: {}\n{}", after.report(), lb.output());
    assert!(after.errors.is_empty(), "{report}");
    assert_eq!(after.get("backend-1"), BATCH, "{report}");
    let out = lb.output();
    assert!(
        out.contains("every primary backend is down: the backups take new connections")
            && out.contains("a primary backend is up again"),
        "{out}"
    );
}

/// A connection attempt with a short timeout: `true` if the backend greeted.
fn connects(topo: &Topology) -> bool {
    let vip = topo.vip(false, TCP_PORT);
    topo.client
        .run(|| {
            TcpStream::connect_timeout(&vip, DROPPED_CONNECT)
                .ok()
                .and_then(|s| {
                    s.set_read_timeout(Some(client::TIMEOUT)).ok()?;
                    let mut greeting = String::new();
                    BufReader::new(s).read_line(&mut greeting).ok()?;
                    Some(greeting.starts_with("backend-"))
                })
                .unwrap_or(false)
        })
        .expect("entering the client namespace")
}

/// `name=VALUE` from the daemon's last `final counters:` line.
fn final_counter(output: &str, name: &str) -> u64 {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains("final counters:"))
        .unwrap_or_else(|| panic!("no final counters line\n{output}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .map_or(0, |v| v.parse().expect("a counter value"))
}

#[test]
fn nat_every_backend_down_drops_new_connections_and_counts_them() {
    require_root();
    const ATTEMPTS: usize = 5;
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let health = endpoints(&topo);
    let file = ConfigFile::new(&config(&topo, &http_check(), &[(1, ""), (2, "")]))
        .expect("writing the config file");
    let mut lb = scenario::start_with_file(&topo, &file);
    all_checked_and_up(&lb, &topo, 2);
    let t = Instant::now();
    for h in &health {
        h.set(503, "down");
    }
    wait_for(&lb, "every backend down", t, |s| {
        s.services[0].serving == Serving::AllDownDrop
    });
    let answered = (0..ATTEMPTS).filter(|_| connects(&topo)).count();
    assert_eq!(
        answered,
        0,
        "connections answered with every backend down\n{}",
        lb.output()
    );
    let t = Instant::now();
    health[1].set(200, "ok");
    wait_for(&lb, "backend-2 back", t, |s| {
        s.services[0].serving == Serving::Primaries
    });
    let tally = scenario::connections(&topo, 10);
    assert!(
        tally.errors.is_empty() && tally.get("backend-2") == 10,
        "{}\n{}",
        tally.report(),
        lb.output()
    );
    lb.stop();
    let out = lb.output();
    let dropped = final_counter(&out, "drop_no_backend");
    println!("all down (drop): {ATTEMPTS} connection attempts, drop_no_backend = {dropped}");
    // One SYN per attempt at least (a retransmit within the timeout would add one).
    assert!(
        (ATTEMPTS as u64..=2 * ATTEMPTS as u64).contains(&dropped),
        "drop_no_backend = {dropped} for {ATTEMPTS} attempts\n{out}"
    );
    assert_eq!(
        out.matches("ALL BACKENDS DOWN: on_all_down = \"drop\"")
            .count(),
        1,
        "{out}"
    );
    assert_eq!(out.matches("ALL BACKENDS DOWN ended").count(), 1, "{out}");
}

#[test]
fn nat_every_backend_down_fails_open_when_configured() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let health = endpoints(&topo);
    let service = format!("on_all_down = \"fail-open\"\n{}", http_check());
    let file = ConfigFile::new(&config(&topo, &service, &[(1, ""), (2, "")]))
        .expect("writing the config file");
    let lb = scenario::start_with_file(&topo, &file);
    all_checked_and_up(&lb, &topo, 2);
    let t = Instant::now();
    for h in &health {
        h.set(503, "down");
    }
    wait_for(&lb, "every backend down", t, |s| {
        s.services[0].serving == Serving::AllDownFailOpen
    });
    // The checks are what is broken here: the servers still answer.
    let tally = scenario::connections(&topo, BATCH);
    let report = format!("fail-open: {}\n{}", tally.report(), lb.output());
    assert!(tally.errors.is_empty(), "{report}");
    assert!(
        tally.get("backend-1") > 0 && tally.get("backend-2") > 0,
        "{report}"
    );
    let out = lb.output();
    assert_eq!(
        out.matches("ALL BACKENDS DOWN: on_all_down = \"fail-open\"")
            .count(),
        1,
        "{out}"
    );
}

#[test]
fn nat_admin_down_beats_a_passing_check_and_up_hands_back_to_the_checks() {
    require_root();
    let mut topo = scenario::xdp_topology(2, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo, &tcp_check(), &[(1, ""), (2, "")]))
        .expect("writing the config file");
    let lb = scenario::start_with_file(&topo, &file);
    all_checked_and_up(&lb, &topo, 2);
    let b1 = SocketAddr::new(IpAddr::V4(topo.backend(1).v4()), TCP_PORT).to_string();
    call(
        &lb,
        Command::BackendDown {
            service: "web".into(),
            backend: b1.clone(),
            force: false,
        },
    );
    // Checks keep passing for several intervals; the operator's down stands.
    let checks_then = backend(&status(&lb), &topo, 1)
        .health
        .as_ref()
        .unwrap()
        .checks;
    wait_for(&lb, "three more passing checks", Instant::now(), |s| {
        let h = backend(s, &topo, 1).health.as_ref().unwrap();
        h.checks >= checks_then + 3
    });
    let s = status(&lb);
    let st = backend(&s, &topo, 1);
    assert_eq!(st.state, BackendState::Down);
    assert_eq!(st.effective_state, BackendState::Down);
    assert_eq!(st.health.as_ref().map(|h| h.up), Some(true));
    let tally = scenario::connections(&topo, BATCH);
    let report = format!("admin down: {}\n{}", tally.report(), lb.output());
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(tally.get("backend-1"), 0, "{report}");

    // Its server dies while it is down; `up` hands it to the checks, which say down.
    let t = Instant::now();
    topo.stop_servers(1);
    wait_for(&lb, "backend-1's checks failing", t, |s| {
        health_up(s, &topo, 1) == Some(false)
    });
    call(
        &lb,
        Command::BackendUp {
            service: "web".into(),
            backend: b1,
        },
    );
    let s = status(&lb);
    let st = backend(&s, &topo, 1);
    assert_eq!(
        (st.state, st.effective_state),
        (BackendState::Active, BackendState::Down)
    );
    let tally = scenario::connections(&topo, BATCH);
    let report = format!("admin up, checks down: {}\n{}", tally.report(), lb.output());
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(tally.get("backend-1"), 0, "{report}");
    let t = Instant::now();
    topo.start_servers(1).expect("restarting backend-1");
    wait_for(&lb, "backend-1 back by its checks", t, |s| {
        backend(s, &topo, 1).effective_state == BackendState::Active
    });
    let tally = scenario::connections(&topo, BATCH);
    let report = format!("checks up again: {}\n{}", tally.report(), lb.output());
    assert!(tally.errors.is_empty(), "{report}");
    assert!(tally.get("backend-1") > 0, "{report}");
}

/// A udp check against a udp service: the responder answers every datagram with its
/// name; stopped, its port answers ICMP port unreachable ("connection refused").
#[test]
fn nat_udp_check_takes_a_dead_udp_backend_out() {
    require_root();
    let mut topo = scenario::xdp_topology(2, Forwarding::Nat);
    let mut text = format!(
        "interfaces = [\"{IFACE}\"]\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nport = {UDP_PORT}\nproto = \"udp\"\n\
         [service.health_check]\ntype = \"udp\"\nsend = \"ping\"\nexpect = \"backend-\"\ninterval = \"{}ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n",
        topo.vip(false, UDP_PORT).ip(),
        INTERVAL.as_millis()
    );
    for i in 1..=2 {
        text += &format!(
            "[[service.backend]]\naddr = \"{}\"\nport = {UDP_PORT}\n",
            topo.backend(i).v4()
        );
    }
    let file = ConfigFile::new(&text).expect("writing the config file");
    let lb = scenario::start_with_file(&topo, &file);
    let addrs: Vec<SocketAddr> = (1..=2)
        .map(|i| SocketAddr::new(IpAddr::V4(topo.backend(i).v4()), UDP_PORT))
        .collect();
    let udp = |s: &Status, i: usize| {
        s.services[0]
            .backends
            .iter()
            .find(|b| b.addr == addrs[i - 1])
            .and_then(|b| b.health.clone())
    };
    wait_for(&lb, "the first udp checks", Instant::now(), |s| {
        (1..=2).all(|i| udp(s, i).is_some_and(|h| h.up && h.checks > 0 && h.check == "udp"))
    });
    topo.stop_servers(1);
    let killed = Instant::now();
    let took = wait_for(&lb, "backend-1 down by its udp check", killed, |s| {
        udp(s, 1).is_some_and(|h| !h.up)
    });
    let h = udp(&status(&lb), 1).unwrap();
    println!(
        "udp: backend-1 marked down {:.0} ms after its responder stopped ({})",
        ms(took),
        h.last_result.as_deref().unwrap_or("-")
    );
    let vip = topo.vip(false, UDP_PORT);
    let tally = topo
        .client
        .run(|| {
            let mut t = Tally::default();
            for _ in 0..BATCH {
                if t.gave_up() {
                    break;
                }
                match client::udp_ask(vip) {
                    Ok((name, _, _)) => t.add(&name),
                    Err(e) => t.error(e),
                }
            }
            t
        })
        .expect("entering the client namespace");
    let report = format!(
        "udp with backend-1 down: {}\n{}",
        tally.report(),
        lb.output()
    );
    assert!(tally.errors.is_empty(), "{report}");
    assert_eq!(tally.get("backend-2"), BATCH, "{report}");
}

/// Slow start: a backend that comes back gets its weight in 4 steps over `slow_start`,
/// each step a table publish on the daemon's timer.
#[test]
fn nat_slow_start_ramps_a_returning_backend_in_steps() {
    require_root();
    let mut topo = scenario::xdp_topology(2, Forwarding::Nat);
    let service = format!("slow_start = \"1200ms\"\n{}", tcp_check());
    let file = ConfigFile::new(&config(&topo, &service, &[(1, ""), (2, "weight = 4")]))
        .expect("writing the config file");
    let lb = scenario::start_with_file(&topo, &file);
    all_checked_and_up(&lb, &topo, 2);
    assert_eq!(backend(&status(&lb), &topo, 2).effective_weight, 4);
    topo.stop_servers(2);
    wait_for(&lb, "backend-2 down", Instant::now(), |s| {
        health_up(s, &topo, 2) == Some(false)
    });
    topo.start_servers(2).expect("restarting backend-2");
    let back = Instant::now();
    // Every effective weight seen while it is up, with when it was first seen.
    let mut seen: Vec<(u32, Duration)> = Vec::new();
    wait_for(&lb, "the ramp to reach weight 4", back, |s| {
        let b = backend(s, &topo, 2);
        if b.effective_state == BackendState::Active
            && seen.last().is_none_or(|(w, _)| *w != b.effective_weight)
        {
            seen.push((b.effective_weight, back.elapsed()));
        }
        seen.last().is_some_and(|(w, _)| *w == 4)
    });
    println!(
        "slow start: weights after the return: {}",
        seen.iter()
            .map(|(w, t)| format!("{w} at {:.0} ms", ms(*t)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        seen.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "{seen:?}\n{}",
        lb.output()
    );
    assert!(
        lb.output().contains("(slow start)"),
        "no timer events for the ramp\n{}",
        lb.output()
    );
}
