//! The daemon's monitor, end to end: `/metrics` passes Prometheus' own checker and
//! counts the traffic pushed through the VIP, alerts fire and clear with the balancer's
//! state (every backend set down; one backend's server killed and restarted under health
//! checks) and are listed by `xdp-lb alerts`, and `report --json` agrees with
//! `/metrics`.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use xdp_lb_tests::{
    admin::AdminCli,
    client,
    lb::XdpLbProcess,
    lbconfig::{self, ConfigFile},
    require_root,
    scenario::{self, Tally},
    topology::{IFACE, TCP_PORT},
    Forwarding, Topology,
};

const METRICS: &str = "127.0.0.1:9717";
const CONNECTIONS: usize = 120;

fn config(topo: &Topology) -> String {
    let mut svc = scenario::service(topo, false, TCP_PORT, "tcp", &[]);
    svc.backends = (1..=3)
        .map(|i| scenario::backend_spec(topo, i, false, TCP_PORT, 1))
        .collect();
    lbconfig::render(&[IFACE], &[svc]).replacen("[[service]]\n", "[[service]]\nname = \"web\"\n", 1)
        + "\n[monitor]\ninterval = \"200ms\"\nmetrics_listen = \"127.0.0.1:9717\"\n\n[monitor.alerts]\nhold_s = 0.4\n# The machine's own load is not what these tests are about.\ndisabled = [\"cpu\", \"memory\", \"network\"]\n"
}

fn start(topo: &Topology, file: &ConfigFile) -> XdpLbProcess {
    topo.start_lb(&[
        "run".to_string(),
        "--config".into(),
        file.path().display().to_string(),
    ])
    .unwrap_or_else(|e| panic!("starting xdp-lb: {e}"))
}

/// `/metrics`, fetched inside the balancer's namespace (its loopback).
fn scrape(topo: &Topology) -> String {
    let addr: SocketAddr = METRICS.parse().unwrap();
    topo.lb
        .run(|| client::http_get_path(addr, "/metrics"))
        .unwrap()
        .unwrap_or_else(|e| panic!("scraping /metrics: {e}"))
}

/// The value of every sample of `metric` whose labels contain `label`, by labels.
fn samples(text: &str, metric: &str, label: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn backend_label(topo: &Topology, i: usize) -> String {
    format!(
        "backend=\"{}\"",
        SocketAddr::new(topo.backend(i).v4().into(), TCP_PORT)
    )
}

fn connections(topo: &Topology) -> Tally {
    let vip = topo.vip(false, TCP_PORT);
    topo.client
        .run(|| {
            let mut t = Tally::default();
            for _ in 0..CONNECTIONS {
                if t.gave_up() {
                    break;
                }
                match client::tcp_name(vip) {
                    Ok((name, _)) => t.add(&name),
                    Err(e) => t.error(e),
                }
            }
            t
        })
        .unwrap()
}

/// Waits (bounded) until `f` holds for a fresh scrape.
fn wait_scrape(topo: &Topology, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(topo);
        if f(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never showed in /metrics:\n{text}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_pass_promtool_and_count_the_traffic() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo)).expect("config file");
    let lb = start(&topo, &file);
    // The report integrates rates between samples, so traffic before the monitor's
    // baseline sample is in /metrics but in no window: wait for the first figures (two
    // samples) before sending. Seen on a loaded machine: all 45 connections of a backend
    // made before the first sample, the report counting 0.
    let cli = AdminCli::new(&lb);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cli
        .output(&["report", "--window", "1h", "--json"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the monitor never had figures\n{}",
            lb.output()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let t = connections(&topo);
    assert!(t.errors.is_empty(), "{}\n{}", t.report(), lb.output());
    // Every connection is one new flow on the backend that answered it.
    let text = wait_scrape(&topo, "the connections' new flows", |text| {
        samples(text, "xdp_lb_backend_new_flows_total", "service=\"web\"")
            .values()
            .sum::<f64>()
            >= CONNECTIONS as f64
    });
    for i in 1..=3 {
        let label = backend_label(&topo, i);
        let flows: f64 = samples(&text, "xdp_lb_backend_new_flows_total", &label)
            .values()
            .sum();
        assert_eq!(
            flows,
            t.get(&format!("backend-{i}")) as f64,
            "backend-{i}: new flows in /metrics vs connections answered ({})\n{text}",
            t.report()
        );
        // A TCP connection is at least SYN, ACK and FIN from the client.
        let packets: f64 = samples(&text, "xdp_lb_backend_packets_total", &label)
            .values()
            .sum();
        assert!(
            packets >= 3.0 * t.get(&format!("backend-{i}")) as f64,
            "backend-{i}: {packets} packets for {} connections\n{text}",
            t.get(&format!("backend-{i}"))
        );
    }
    // Prometheus' own checker accepts the exposition.
    xdp_lb_tests::promtool::check_metrics(&text);

    // report --json over the same traffic agrees: the counted packets of each backend
    // in the window are at most what /metrics says in total, and not zero.
    let report = cli.json(&["report", "--window", "1h"]);
    let figures = &report["figures"];
    for i in 1..=3 {
        let addr = SocketAddr::new(topo.backend(i).v4().into(), TCP_PORT);
        let key = format!("backend/web/{addr}/new_flows_per_s");
        let in_window = figures[&key]["sum"]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in the report: {report}"));
        let total: f64 = samples(
            &scrape(&topo),
            "xdp_lb_backend_new_flows_total",
            &backend_label(&topo, i),
        )
        .values()
        .sum();
        let answered = t.get(&format!("backend-{i}")) as f64;
        // The report integrates rates between samples, so a connection made around the
        // first sample may fall outside it.
        assert!(
            (in_window - answered).abs() <= 2.0_f64.max(0.05 * answered)
                && in_window <= total + 0.5,
            "{key}: report counts {in_window}, /metrics {total}, connections {answered}"
        );
    }
}

#[test]
fn alert_fires_and_clears_with_the_balancer_state() {
    require_root();
    let topo = scenario::xdp_topology(3, Forwarding::Nat);
    let file = ConfigFile::new(&config(&topo)).expect("config file");
    let lb = start(&topo, &file);
    let cli = AdminCli::new(&lb);
    let no_healthy = |cli: &AdminCli| {
        cli.json(&["alerts"])["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .any(|a| a["kind"] == "no_healthy_backend" && a["target"] == "web")
    };
    assert_eq!(cli.ok(&["alerts"]).trim(), "no alert firing");
    assert!(!no_healthy(&cli));
    // Every backend down: the service has no usable backend.
    for i in 1..=3 {
        let a = SocketAddr::new(topo.backend(i).v4().into(), TCP_PORT).to_string();
        cli.ok(&["backend", "down", "web", &a, "--force"]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = cli.json(&["alerts"]);
        let firing = v["alerts"].as_array().cloned().unwrap_or_default();
        if firing
            .iter()
            .any(|a| a["kind"] == "no_healthy_backend" && a["target"] == "web")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no_healthy_backend never fired: {v}\n{}",
            lb.output()
        );
        thread::sleep(Duration::from_millis(200));
    }
    wait_scrape(&topo, "the firing alert", |t| {
        samples(t, "xdp_lb_alert_firing", "alert=\"no_healthy_backend\"")
            .iter()
            .any(|(labels, v)| labels.contains("target=\"web\"") && *v == 1.0)
    });
    let a = SocketAddr::new(topo.backend(1).v4().into(), TCP_PORT).to_string();
    cli.ok(&["backend", "up", "web", &a]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while no_healthy(&cli) {
        assert!(
            Instant::now() < deadline,
            "the alert never cleared\n{}",
            lb.output()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let out = lb.output();
    assert!(
        out.contains("alert firing: no_healthy_backend web"),
        "{out}"
    );
    assert!(
        out.contains("alert cleared: no_healthy_backend web"),
        "{out}"
    );
}

/// The backend_down alert follows the health checks: a backend whose server is killed
/// is marked down by its checks, the alert fires (listed, exported, logged once) while
/// the others stay quiet, and clears once the server is back and the checks pass.
#[test]
fn backend_down_alert_fires_when_its_server_is_killed_and_clears_when_it_returns() {
    require_root();
    let mut topo = scenario::xdp_topology(3, Forwarding::Nat);
    let checked = config(&topo).replacen(
        "\n[monitor]\n",
        "\n[service.health_check]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n\n[monitor]\n",
        1,
    );
    let file = ConfigFile::new(&checked).expect("config file");
    let lb = start(&topo, &file);
    let cli = AdminCli::new(&lb);
    let victim = SocketAddr::new(topo.backend(2).v4().into(), TCP_PORT).to_string();
    let down_alerts = |cli: &AdminCli| -> Vec<String> {
        cli.json(&["alerts"])["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|a| a["kind"] == "backend_down")
            .map(|a| a["target"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(Instant::now() < deadline, "{what}\n{}", lb.output());
            thread::sleep(Duration::from_millis(100));
        }
    };
    let checked_up = |cli: &AdminCli| -> usize {
        cli.json(&["status"])["services"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s["backends"].as_array().cloned().unwrap_or_default())
            .filter(|b| b["health"]["up"] == true && b["health"]["last_result"] == "ok")
            .count()
    };
    wait("the checks never passed at start", &|| {
        down_alerts(&cli).is_empty() && checked_up(&cli) == 3
    });

    topo.stop_servers(2);
    wait("backend_down never fired for the killed backend", &|| {
        down_alerts(&cli).iter().any(|t| t.contains(&victim))
    });
    let firing = down_alerts(&cli);
    assert_eq!(
        firing.len(),
        1,
        "only the killed backend is down: {firing:?}"
    );
    wait_scrape(&topo, "the firing backend_down alert", |t| {
        samples(t, "xdp_lb_alert_firing", "alert=\"backend_down\"")
            .iter()
            .any(|(labels, v)| labels.contains(&victim) && *v == 1.0)
    });

    topo.start_servers(2)
        .expect("restarting the backend's servers");
    wait(
        "backend_down never cleared after the server returned",
        &|| down_alerts(&cli).is_empty(),
    );
    let out = lb.output();
    assert_eq!(
        out.matches("alert firing: backend_down").count(),
        1,
        "fired once: {out}"
    );
    assert_eq!(
        out.matches("alert cleared: backend_down").count(),
        1,
        "cleared once: {out}"
    );
}
