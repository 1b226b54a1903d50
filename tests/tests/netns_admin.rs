//! Runtime management through the admin API and the CLI verbs, against the real
//! daemon in namespaces: every verb, drains with a timeout, weight changes under
//! traffic, backends added and removed under established connections, changes that
//! survive a restart, a refused non-root user, and bad input that changes nothing.
use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use xdp_lb_tests::{
    admin::AdminCli,
    client::{self, LineClient},
    lbconfig::{self, ConfigFile},
    require_root, scenario,
    topology::{IFACE, TCP_PORT},
    Forwarding, Topology,
};

/// A file with one named service, "web", on the topology's IPv4 VIP.
fn web_config(topo: &Topology, weights: &[(usize, u32)]) -> String {
    let mut svc = scenario::service(topo, false, TCP_PORT, "tcp", &[]);
    svc.backends = weights
        .iter()
        .map(|&(i, w)| scenario::backend_spec(topo, i, false, TCP_PORT, w))
        .collect();
    lbconfig::render(&[IFACE], &[svc]).replacen("[[service]]\n", "[[service]]\nname = \"web\"\n", 1)
}

fn addr(topo: &Topology, i: usize) -> String {
    SocketAddr::new(topo.backend(i).v4().into(), TCP_PORT).to_string()
}

/// Connections held open until each of `want` backends has one.
fn hold_connections(topo: &Topology, want: &[&str]) -> Vec<LineClient> {
    let vip = topo.vip(false, TCP_PORT);
    let mut held = Vec::new();
    for _ in 0..60 {
        let c = topo
            .client
            .run(|| LineClient::connect(vip))
            .expect("client namespace")
            .expect("connecting to the VIP");
        if want.contains(&c.greeting())
            && !held
                .iter()
                .any(|h: &LineClient| h.greeting() == c.greeting())
        {
            held.push(c);
        }
        if held.len() == want.len() {
            return held;
        }
    }
    panic!("could not get a connection to each of {want:?} in 60 tries");
}

#[test]
fn every_verb_works_against_a_running_daemon() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let file = ConfigFile::new(&web_config(&topo, &[(1, 1), (2, 1)])).expect("config file");
    let lb = scenario::start_with_file(&topo, &file);
    let cli = AdminCli::new(&lb);
    let (b1, b2, b3) = (addr(&topo, 1), addr(&topo, 2), addr(&topo, 3));

    // status: the table and the JSON agree with the file.
    let table = cli.ok(&["status"]);
    assert!(
        table.contains("service web") && table.contains(&b1),
        "{table}"
    );
    let s = cli.status();
    assert_eq!(s["services"][0]["name"], "web");
    assert_eq!(s["services"][0]["backends"].as_array().unwrap().len(), 2);
    assert!(s["generation"].as_u64().unwrap() >= 1);
    let shares: f64 = s["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["table_share"].as_f64().unwrap())
        .sum();
    assert!((shares - 100.0).abs() < 0.01, "{s}");

    // backend add: the new backend takes new connections.
    let out = cli.ok(&["backend", "add", "web", &b3]);
    assert!(out.contains(&format!("+{b3}")), "{out}");
    assert!(out.contains("saved to"), "{out}");
    let t = scenario::connections(&topo, 60);
    assert!(t.errors.is_empty(), "{}", t.report());
    assert!(
        t.get("backend-3") > 0,
        "added backend unused: {}",
        t.report()
    );

    // weight, drain, undrain, down, up: each visible in `backend list --json`.
    let state_of = |who: &str| -> (String, u64) {
        let v = cli.json(&["backend", "list", "web"]);
        let row = v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["addr"] == who)
            .unwrap_or_else(|| panic!("{who} not listed: {v}"))
            .clone();
        assert_eq!(row["service"], "web");
        (
            row["state"].as_str().unwrap().to_string(),
            row["weight"].as_u64().unwrap(),
        )
    };
    cli.ok(&["backend", "weight", "web", &b1, "4"]);
    assert_eq!(state_of(&b1), ("active".into(), 4));
    cli.ok(&["backend", "drain", "web", &b2]);
    assert_eq!(state_of(&b2).0, "draining");
    let t = scenario::connections(&topo, 40);
    assert_eq!(
        t.get("backend-2"),
        0,
        "draining backend got new connections: {}",
        t.report()
    );
    cli.ok(&["backend", "undrain", "web", &b2]);
    assert_eq!(state_of(&b2).0, "active");
    // ADDR alone names a backend when it is unambiguous.
    cli.ok(&["backend", "down", "web", &topo.backend(3).v4().to_string()]);
    assert_eq!(state_of(&b3).0, "down");
    let t = scenario::connections(&topo, 40);
    assert_eq!(
        t.get("backend-3"),
        0,
        "down backend got new connections: {}",
        t.report()
    );
    cli.ok(&["backend", "up", "web", &b3]);
    assert_eq!(state_of(&b3).0, "active");
    cli.ok(&["backend", "remove", "web", &b3]);
    assert_eq!(cli.backends("web").len(), 2);

    // service add / list / remove, on the IPv6 VIP.
    let vip6 = topo.vip(true, TCP_PORT).to_string();
    let b6 = SocketAddr::new(topo.backend(1).v6().into(), TCP_PORT).to_string();
    cli.ok(&["service", "add", "web6", "--vip", &vip6, "--backend", &b6]);
    let list = cli.json(&["service", "list"]);
    let names: Vec<&str> = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "web6"]);
    let six = topo
        .client
        .run(|| client::tcp_name(topo.vip(true, TCP_PORT)))
        .unwrap();
    assert_eq!(six.expect("IPv6 service added at runtime").0, "backend-1");
    cli.ok(&["service", "remove", "web6"]);
    assert_eq!(
        cli.json(&["service", "list"])["services"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // reload: the file holds every change above, so nothing changes.
    let out = cli.ok(&["reload"]);
    assert!(out.contains("no change"), "{out}");
    let text = std::fs::read_to_string(file.path()).unwrap();
    assert!(text.contains("weight = 4"), "{text}");
    assert!(
        !text.contains("web6") && !text.contains(&topo.backend(3).v4().to_string()),
        "{text}"
    );
    // The recent events name where each change came from.
    let s = cli.status();
    let origins: Vec<&str> = s["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["origin"].as_str().unwrap())
        .collect();
    assert!(
        origins.contains(&"file") && origins.contains(&"admin"),
        "{origins:?}"
    );
}

/// A drained backend keeps its long-lived connection while 300 new ones avoid it;
/// when the timeout expires it goes down, its flows move, and the connection is
/// re-dispatched (NAT: the new backend does not know it and resets it).
#[test]
fn drain_with_timeout_then_flows_move() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let file = ConfigFile::new(&web_config(&topo, &[(1, 1), (2, 1), (3, 1)])).expect("config file");
    let lb = scenario::start_with_file(&topo, &file);
    let cli = AdminCli::new(&lb);
    let vip = topo.vip(false, TCP_PORT);
    let mut conn = topo
        .client
        .run(|| LineClient::connect(vip))
        .unwrap()
        .expect("first connection");
    let home = conn.greeting().to_string();
    let idx: usize = home.trim_start_matches("backend-").parse().unwrap();
    let home_addr = addr(&topo, idx);
    cli.ok(&["backend", "drain", "web", &home_addr, "--timeout", "6s"]);

    // While draining: the connection keeps transferring, new ones avoid it.
    let t = scenario::connections(&topo, 300);
    assert!(t.errors.is_empty(), "{}\n{}", t.report(), lb.output());
    assert_eq!(
        t.get(&home),
        0,
        "drained backend got new connections: {}",
        t.report()
    );
    for i in 0..5 {
        assert_eq!(
            conn.ping().unwrap_or_else(|e| panic!("ping {i}: {e}")),
            home
        );
    }
    let rows = cli.json(&["backend", "list", "web"]);
    let row = rows["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["addr"] == home_addr.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["state"], "draining");
    assert!(
        row["flows"].as_u64().unwrap() >= 1,
        "drained backend's remaining flows: {row}"
    );
    assert!(row["drain_remaining_secs"].as_f64().unwrap() > 0.0, "{row}");

    // After the timeout: down, saved, and the connection no longer reaches it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cli
        .backends("web")
        .iter()
        .any(|(a, s, _)| *a == home_addr && s != "down")
    {
        assert!(
            Instant::now() < deadline,
            "drain timeout never fired\n{}",
            lb.output()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(std::fs::read_to_string(file.path())
        .unwrap()
        .contains("state = \"down\""));
    let after = conn.ping().map_err(|e| e.to_string());
    assert!(
        after.as_deref() != Ok(home.as_str()),
        "the drained connection still reaches {home} after the timeout: {after:?}"
    );
    let s = cli.status();
    let last = s["recent_events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["origin"], "timer", "{last}");
}

/// 1:1:1 -> 3:1:1 at runtime: 1200 new connections land 60/20/20 within 5 points.
#[test]
fn weight_change_moves_the_shares() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let file = ConfigFile::new(&web_config(&topo, &[(1, 1), (2, 1), (3, 1)])).expect("config file");
    let lb = scenario::start_with_file(&topo, &file);
    let cli = AdminCli::new(&lb);
    cli.ok(&["backend", "weight", "web", &addr(&topo, 1), "3"]);
    let t = scenario::connections(&topo, 1200);
    let report = format!("{}\n{}", t.report(), lb.output());
    assert!(t.errors.is_empty(), "{report}");
    for (name, want) in [
        ("backend-1", 60.0),
        ("backend-2", 20.0),
        ("backend-3", 20.0),
    ] {
        let got = t.share(name);
        assert!(
            (got - want).abs() <= 5.0,
            "{name}: {got:.1}% (want {want}%): {report}"
        );
    }
}

/// Established connections to the other backends are untouched when one is added
/// and when one is removed.
#[test]
fn add_and_remove_under_traffic_keep_established_connections() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let file = ConfigFile::new(&web_config(&topo, &[(1, 1), (2, 1)])).expect("config file");
    let lb = scenario::start_with_file(&topo, &file);
    let cli = AdminCli::new(&lb);
    let mut held = hold_connections(&topo, &["backend-1", "backend-2"]);
    let check = |held: &mut Vec<LineClient>, when: &str| {
        for c in held.iter_mut() {
            let want = c.greeting().to_string();
            let got = c.ping().map_err(|e| e.to_string());
            assert_eq!(
                got.as_deref(),
                Ok(want.as_str()),
                "{when}: connection to {want} broke"
            );
        }
    };
    cli.ok(&["backend", "add", "web", &addr(&topo, 3)]);
    check(&mut held, "after adding backend-3");
    let t = scenario::connections(&topo, 60);
    assert!(t.get("backend-3") > 0, "{}", t.report());
    // Remove backend-2: backend-1's connection is unaffected.
    cli.ok(&["backend", "remove", "web", &addr(&topo, 2)]);
    let mut one: Vec<LineClient> = held
        .into_iter()
        .filter(|c| c.greeting() == "backend-1")
        .collect();
    check(&mut one, "after removing backend-2");
    let t = scenario::connections(&topo, 60);
    assert_eq!(t.get("backend-2"), 0, "{}", t.report());
}

/// A change made through the API is in the file, so a restarted daemon has it.
#[test]
fn api_change_survives_a_restart() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let file = ConfigFile::new(&web_config(&topo, &[(1, 1), (2, 1)])).expect("config file");
    let mut lb = scenario::start_with_file(&topo, &file);
    let cli = AdminCli::new(&lb);
    cli.ok(&["backend", "drain", "web", &addr(&topo, 2)]);
    cli.ok(&["backend", "weight", "web", &addr(&topo, 1), "7"]);
    lb.stop();
    drop(lb);
    let lb = scenario::start_with_file(&topo, &file);
    let cli = AdminCli::new(&lb);
    let b = cli.backends("web");
    assert!(b.contains(&(addr(&topo, 1), "active".into(), 7)), "{b:?}");
    assert!(b.contains(&(addr(&topo, 2), "draining".into(), 1)), "{b:?}");
    let t = scenario::connections(&topo, 40);
    assert_eq!(t.get("backend-2"), 0, "{}", t.report());
}

/// The socket is root-only: another user gets a clear refusal.
#[test]
fn non_root_user_is_refused() {
    require_root();
    let topo = scenario::xdp_topology(1, Forwarding::Nat);
    let file = ConfigFile::new(&web_config(&topo, &[(1, 1)])).expect("config file");
    let lb = scenario::start_with_file(&topo, &file);
    let cli = AdminCli::new(&lb);
    let mut cmd = std::process::Command::new("setpriv");
    let inner = cli.command(&["status"]);
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_remove("XDP_LB_ADMIN_SOCKET");
    let out = cmd.output().expect("running setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a non-root user got an answer: {stderr}"
    );
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("root"), "{stderr}");
    // The daemon is unaffected.
    assert_eq!(cli.backends("web").len(), 1);
}

/// Every kind of bad request exits non-zero with a message that says what to fix,
/// and the daemon's state is exactly as before.
#[test]
fn bad_input_changes_nothing() {
    require_root();
    let topo = scenario::xdp_topology(2, Forwarding::Nat);
    let file = ConfigFile::new(&web_config(&topo, &[(1, 1), (2, 1)])).expect("config file");
    let lb = scenario::start_with_file(&topo, &file);
    let cli = AdminCli::new(&lb);
    cli.ok(&["backend", "down", "web", &addr(&topo, 2)]);
    let snapshot = |cli: &AdminCli| {
        let s = cli.status();
        (
            s["generation"].clone(),
            cli.backends("web"),
            std::fs::read_to_string(file.path()).unwrap(),
        )
    };
    let before = snapshot(&cli);
    let b1 = addr(&topo, 1);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["backend", "weight", "nope", &b1, "2"],
            "unknown service \"nope\"; known services: web",
        ),
        (
            vec!["backend", "weight", "web", "198.18.1.99:80", "2"],
            "has no backend 198.18.1.99:80; its backends:",
        ),
        (vec!["backend", "weight", "web", &b1, "0"], "out of range"),
        (
            vec!["backend", "weight", "web", &b1, "70000"],
            "out of range",
        ),
        (vec!["backend", "add", "web", &b1], "listed twice"),
        (
            vec!["backend", "add", "web", "not-an-address:80"],
            "malformed address",
        ),
        (vec!["backend", "down", "web", &b1], "no active backend"),
        (vec!["backend", "drain", "web", &b1], "no active backend"),
        (vec!["backend", "remove", "web", &b1], "no active backend"),
        (vec!["service", "remove", "web"], "only service"),
        (
            vec![
                "service",
                "add",
                "web",
                "--vip",
                "198.18.100.2:80",
                "--backend",
                "198.18.1.2:80",
            ],
            "exists already",
        ),
    ];
    for (args, want) in cases {
        let stderr = cli.fails(&args);
        assert!(
            stderr.contains(want),
            "xdp-lb {args:?}: expected {want:?} in: {stderr}"
        );
        assert_eq!(snapshot(&cli), before, "xdp-lb {args:?} changed something");
    }
    // No daemon at the given path.
    let stderr = AdminCli::at(std::path::Path::new("/nonexistent/admin.sock")).fails(&["status"]);
    assert!(
        stderr.contains("no xdp-lb daemon at /nonexistent/admin.sock"),
        "{stderr}"
    );
    // --force does take the last active backend out.
    cli.ok(&["backend", "down", "web", &b1, "--force"]);
    assert!(cli.backends("web").iter().all(|(_, s, _)| s == "down"));
}

/// The optional TCP listener binds to loopback only and wants the token.
#[test]
fn tcp_listener_needs_loopback_and_token() {
    require_root();
    let topo = scenario::xdp_topology(1, Forwarding::Nat);
    let file = ConfigFile::new(&web_config(&topo, &[(1, 1)])).expect("config file");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let bin = xdp_lb_tests::binary::xdp_lb_bin().unwrap();
    // Not loopback: refused before anything is attached.
    let out = topo
        .lb
        .command(&bin)
        .args(["run", "--config"])
        .arg(file.path())
        .args(["--admin-listen", "198.18.0.1:9901", "--admin-token-file"])
        .arg(&token)
        .env("XDP_LB_ADMIN_SOCKET", dir.path().join("a.sock"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not a loopback address"),
        "{stderr}"
    );
    let lb = topo
        .start_lb(&[
            "run".into(),
            "--config".into(),
            file.path().display().to_string(),
            "--admin-listen".into(),
            "127.0.0.1:9901".into(),
            "--admin-token-file".into(),
            token.display().to_string(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    // The lb namespace's loopback: run the client there.
    let client = |token_file: &std::path::Path| {
        topo.lb
            .command(&bin)
            .args([
                "status",
                "--json",
                "--admin-addr",
                "127.0.0.1:9901",
                "--admin-token-file",
            ])
            .arg(token_file)
            .output()
            .unwrap()
    };
    let good = client(&token);
    assert!(
        good.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&good.stderr),
        lb.output()
    );
    let v: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!(v["services"][0]["name"], "web");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess").unwrap();
    let bad = client(&wrong);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("token"),
        "{stderr}"
    );
}
