//! Tests of the monitor as a whole: rates through `record`, the bounded history, window
//! reports, and `/metrics` read back by parsers that did not write it.
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::metrics::{render, series_bound, synthetic_input};
use super::*;

pub(crate) fn backend(addr: &str, packets: u64, bytes: u64) -> BackendSample {
    BackendSample {
        addr: addr.into(),
        state: BackendState::Active,
        health: Some(Health::from_up(true)),
        weight: 1,
        packets,
        bytes,
        new_flows: packets / 10,
        flows: packets / 100,
        last_check_latency: Some(Duration::from_micros(400)),
        health_transitions: 2,
    }
}

/// Service `web` with two backends whose counters are given.
pub(crate) fn sample(a: (u64, u64), b: (u64, u64), cpu: f64) -> Sample {
    Sample {
        dataplane: Some(DataplaneSample {
            services: vec![ServiceSample {
                name: "web".into(),
                packets: a.0 + b.0,
                bytes: a.1 + b.1,
                new_flows: (a.0 + b.0) / 10,
                backends: vec![
                    backend("10.0.0.2:80", a.0, a.1),
                    backend("10.0.0.3:80", b.0, b.1),
                ],
            }],
            reasons: vec![ReasonCount {
                reason: "tx".into(),
                packets: a.0 + b.0,
            }],
            flows_total: 50,
            flow_table_capacity: 1000,
        }),
        cache: None,
        resources: Some(ResourceSample {
            cpu_percent: cpu,
            per_core_percent: vec![cpu, cpu],
            memory_total_bytes: 1000,
            memory_used_bytes: 250,
            ..Default::default()
        }),
    }
}

fn monitor() -> Monitor {
    Monitor::new(MonitorConfig::default()).unwrap()
}

#[test]
fn rates_come_from_deltas_over_measured_time_and_survive_a_reset() {
    let mut m = monitor();
    let t0 = Instant::now();
    m.record(t0, sample((1000, 100_000), (3000, 300_000), 10.0))
        .unwrap();
    assert!(m.latest().is_none(), "the first sample is only a baseline");
    // 2.5 s later, not an assumed 1 s: 1000 and 500 packets more.
    m.record(
        t0 + Duration::from_millis(2500),
        sample((2000, 200_000), (3500, 350_000), 20.0),
    )
    .unwrap();
    let f = m.latest().unwrap();
    assert_eq!(f.interval_s, 2.5);
    let web = &f.dataplane.as_ref().unwrap().services[0];
    assert_eq!(web.packets_per_s, 600.0);
    assert_eq!(web.backends[0].packets_per_s, 400.0);
    assert_eq!(web.backends[0].bits_per_s, 100_000.0 * 8.0 / 2.5);
    assert_eq!(web.backends[1].packets_per_s, 200.0);
    assert!((web.backends[0].share_percent - 200.0 / 3.0).abs() < 1e-9);
    assert_eq!(web.backends[0].check_latency_ms, Some(0.4));
    assert_eq!(f.dataplane.as_ref().unwrap().flow_table_percent, 5.0);
    assert_eq!(f.resources.as_ref().unwrap().memory_percent, 25.0);

    // The data plane restarted: every counter is back near zero.
    m.record(
        t0 + Duration::from_secs(3),
        sample((100, 10_000), (50, 5_000), 20.0),
    )
    .unwrap();
    let web = &m.latest().unwrap().dataplane.as_ref().unwrap().services[0];
    assert_eq!(
        web.backends[0].packets_per_s, 200.0,
        "100 since the reset, over 0.5 s"
    );
    assert_eq!(web.packets_per_s, 300.0);
    assert!(web.backends.iter().all(|b| b.packets_per_s >= 0.0));
    assert_eq!(m.history().len(), 2);

    // Time must move forward.
    assert_eq!(
        m.record(t0 + Duration::from_secs(3), sample((1, 1), (1, 1), 1.0)),
        Err(MonitorError::NotAfterPrevious)
    );
}

#[test]
fn a_backend_added_later_starts_at_zero_not_at_its_total() {
    let mut m = monitor();
    let t0 = Instant::now();
    let mut s = sample((10, 10), (10, 10), 1.0);
    m.record(t0, s.clone()).unwrap();
    let svc = &mut s.dataplane.as_mut().unwrap().services[0];
    svc.backends
        .push(backend("10.0.0.4:80", 1_000_000, 1_000_000));
    m.record(t0 + Duration::from_secs(1), s).unwrap();
    let web = &m.latest().unwrap().dataplane.as_ref().unwrap().services[0];
    assert_eq!(web.backends[2].packets_per_s, 0.0);
}

#[test]
fn history_is_bounded_by_its_configured_capacity() {
    let mut m = Monitor::new(MonitorConfig {
        history: 5,
        ..Default::default()
    })
    .unwrap();
    let t0 = Instant::now();
    for i in 0..20u64 {
        m.record(
            t0 + Duration::from_secs(i),
            sample((i * 100, i * 1000), (0, 0), i as f64),
        )
        .unwrap();
    }
    assert_eq!(m.history().len(), 5);
    let view = m.view();
    assert_eq!(view.series.cpu_percent, [15.0, 16.0, 17.0, 18.0, 19.0]);
    assert_eq!(view.series.packets_per_s, [100.0; 5]);
    assert_eq!(view.history_capacity, 5);
    assert_eq!(
        Monitor::new(MonitorConfig {
            history: 0,
            ..Default::default()
        })
        .err(),
        Some(MonitorError::ZeroHistory)
    );
    let from_file: MonitorConfig =
        toml::from_str("history = 60\n[alerts]\ncpu_percent = 101").unwrap();
    assert_eq!(from_file.history, 60);
    assert_eq!(
        from_file.validate().unwrap_err().to_string(),
        "monitor.alerts.cpu_percent = 101: must be a percentage between 0 and 100"
    );
}

#[test]
fn window_report_has_time_weighted_averages_and_peaks() {
    let mut m = monitor();
    let t0 = Instant::now();
    // Packets per second 100 (1 s), 300 (1 s), 200 (2 s); CPU 10, 50, 20.
    let ticks = [(0, 0, 0.0), (1, 100, 10.0), (2, 400, 50.0), (4, 800, 20.0)];
    for (t, pkts, cpu) in ticks {
        m.record(
            t0 + Duration::from_secs(t),
            sample((pkts, pkts * 100), (0, 0), cpu),
        )
        .unwrap();
    }
    let r = m.window(Duration::from_secs(60)).unwrap();
    assert_eq!(r.samples, 3);
    assert_eq!(r.window_s, 4.0);
    let pps = r.figures["service/web/packets_per_s"];
    assert_eq!(pps.avg, (100.0 + 300.0 + 2.0 * 200.0) / 4.0);
    assert_eq!(pps.peak, 300.0);
    assert_eq!(pps.last, 200.0);
    assert_eq!(pps.sum, 800.0, "the packets counted in the window");
    let cpu = r.figures["cpu_percent"];
    assert_eq!(cpu.avg, (10.0 + 50.0 + 2.0 * 20.0) / 4.0);
    assert_eq!(cpu.peak, 50.0);
    assert!(r.figures.contains_key("backend/web/10.0.0.2:80/bits_per_s"));
    assert!(r.figures.contains_key("reason/tx/packets_per_s"));

    // The last 2 s: only the final tick.
    let r = m.window(Duration::from_secs(2)).unwrap();
    assert_eq!(r.samples, 1);
    assert_eq!(r.figures["service/web/packets_per_s"].avg, 200.0);
    // It serialises for `report --json`.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["figures"]["cpu_percent"]["peak"], 20.0);

    assert_eq!(m.window(Duration::ZERO), Err(MonitorError::EmptyWindow));
    assert_eq!(
        monitor().window(Duration::from_secs(1)),
        Err(MonitorError::NoFigures)
    );
}

#[test]
fn cache_hit_rate_is_over_the_interval() {
    let mut m = monitor();
    let t0 = Instant::now();
    let cache = |hits, misses| Sample {
        cache: Some(CacheSample {
            hits,
            misses,
            redis_reachable: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    m.record(t0, cache(1000, 0)).unwrap();
    m.record(t0 + Duration::from_secs(2), cache(1060, 40))
        .unwrap();
    let c = m.latest().unwrap().cache.clone().unwrap();
    assert_eq!(c.hit_percent, Some(60.0), "not the 96% since start");
    assert_eq!(c.lookups_per_s, 50.0);
    assert_eq!(c.requests_per_s, 50.0);
}

#[test]
fn alerts_flow_through_record_into_view_and_metrics() {
    let mut m = Monitor::new(MonitorConfig {
        alerts: AlertConfig {
            hold_s: 2.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let t0 = Instant::now();
    let mut fired = Vec::new();
    for t in 0..5 {
        fired.extend(
            m.record(t0 + Duration::from_secs(t), sample((t, t), (t, t), 95.0))
                .unwrap(),
        );
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].alert.kind, AlertKind::Cpu);
    assert_eq!(m.view().alerts.len(), 1);
    let text = m.render_metrics();
    assert!(
        text.contains("xdp_lb_alert_firing{alert=\"cpu\",target=\"\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("xdp_lb_alerts_firing{alert=\"cpu\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("xdp_lb_alerts_firing{alert=\"memory\"} 0"),
        "{text}"
    );
    let cleared = m
        .record(t0 + Duration::from_secs(5), sample((5, 5), (5, 5), 5.0))
        .unwrap();
    assert_eq!(cleared.len(), 1);
    assert!(!m.render_metrics().contains("xdp_lb_alert_firing{"));
}

#[test]
fn cache_sample_from_the_cache_tiers_statistics() {
    let s = crate::cache::stats::Snapshot {
        hits: 8,
        stale: 1,
        misses: 1,
        errors: 3,
        ..Default::default()
    };
    let c = CacheSample::from(s);
    assert_eq!((c.served(), c.lookups(), c.redis_errors), (9, 10, 3));
    assert_eq!(c.served() as f64 / c.lookups() as f64, s.hit_rate());
}

fn sample_of(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus-parse reads it");
    let found: Vec<&prometheus_parse::Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in\n{text}");
    match found[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

#[test]
fn metrics_read_back_by_prometheus_parse() {
    let mut m = monitor();
    let t0 = Instant::now();
    let mut s = sample((1234, 99_000), (10, 1500), 40.0);
    let d = s.dataplane.as_mut().unwrap();
    d.services[0].backends[1].health = Some(Health::from_up(false));
    d.services[0].backends[1].state = BackendState::Draining;
    // A name that needs escaping must not break the format.
    d.services[0].name = "we\"b\\x".into();
    m.record(t0, s).unwrap();
    let text = m.render_metrics();
    // prometheus-parse keeps label values as written (escaped); promtool, which unescapes,
    // checks the same kind of name in `metrics_pass_promtool_check`.
    let svc = r#"we\"b\\x"#;
    let a = ("backend", "10.0.0.2:80");
    let b = ("backend", "10.0.0.3:80");
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(&str, Labels, f64)] = &[
        (
            "xdp_lb_backend_packets_total",
            &[("service", svc), a],
            1234.0,
        ),
        ("xdp_lb_backend_bytes_total", &[b], 1500.0),
        ("xdp_lb_backend_healthy", &[b], 0.0),
        ("xdp_lb_backend_up", &[b], 0.0),
        ("xdp_lb_backend_up", &[a], 1.0),
        (
            "xdp_lb_backend_admin_state",
            &[b, ("state", "draining")],
            1.0,
        ),
        ("xdp_lb_backend_check_latency_seconds", &[a], 0.0004),
        ("xdp_lb_backend_health_transitions_total", &[b], 2.0),
        ("xdp_lb_packets_total", &[("reason", "tx")], 1244.0),
        ("xdp_lb_flow_table_capacity", &[], 1000.0),
        ("xdp_lb_host_cpu_usage_ratio", &[("cpu", "all")], 0.4),
        ("xdp_lb_host_cpu_usage_ratio", &[("cpu", "1")], 0.4),
        ("xdp_lb_host_memory_used_bytes", &[], 250.0),
    ];
    for (name, labels, want) in cases {
        assert_eq!(sample_of(&text, name, labels), *want, "{name} {labels:?}");
    }
    // No rates are exported: Prometheus derives them.
    assert!(!text.contains("per_s"), "{text}");
    assert!(
        !text.contains("xdp_lb_cache_"),
        "no cache tier, no cache families"
    );
}

#[test]
fn metrics_pass_promtool_check() {
    let mut input = synthetic_input(16, 16);
    // This machine's real disks, interfaces and cores, named as sysinfo names them.
    input.sample.resources = Some(ResourceSampler::new().unwrap().sample());
    // Label values needing every escape of the format.
    input.sample.dataplane.as_mut().unwrap().services[0].name = "a \"quoted\"\\ name\nx".into();
    let text = render(Arc::new(input));
    assert!(
        text.contains(r#"service="a \"quoted\"\\ name\nx""#),
        "{text}"
    );
    let (ok, report) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {report}");
    // `xdp-lb cache serve` alone: the cache families only, under the daemon's names.
    let cache = CacheSample {
        hits: 3,
        redis_reachable: Some(false),
        ..Default::default()
    };
    let cache_only = metrics::render_cache(cache.clone());
    assert!(cache_only.contains("xdp_lb_cache_requests_total{result=\"hit\"} 3"));
    assert!(cache_only.contains("xdp_lb_cache_redis_up 0"));
    assert!(!cache_only.contains("xdp_lb_backend"));
    assert!(!cache_only.contains("xdp_lb_alert"), "{cache_only}");
    let in_daemon = render(Arc::new(MetricsInput {
        sample: Sample {
            cache: Some(cache),
            ..Default::default()
        },
        firing: Vec::new(),
    }));
    for line in cache_only.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            in_daemon.lines().any(|l| l == line),
            "{line:?} is not in the daemon's /metrics:\n{in_daemon}"
        );
    }
    let (ok, report) = promtool_check(&cache_only);
    assert!(ok, "promtool check metrics (cache only): {report}");
    // The checker does reject what breaks the conventions (a counter without `_total`, no
    // help), so its verdict above means something.
    let (ok, report) = promtool_check("# TYPE bad counter\nbad 1\n");
    assert!(!ok, "promtool accepted a broken exposition: {report}");
}

/// Runs `promtool check metrics` on `text`: (passed, what it said).
fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed for this test ({e}); install Debian's `prometheus` \
                 package (`cargo xtask setup` does)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("waiting for promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn metrics_cardinality_is_bounded_at_256_backends() {
    let mut input = synthetic_input(16, 16);
    // Every per-target alert at once: the worst case.
    let d = input.sample.dataplane.clone().unwrap();
    for s in &d.services {
        for b in &s.backends {
            input.firing.push(Alert {
                kind: AlertKind::BackendDown,
                target: format!("{}/{}", s.name, b.addr),
                message: String::new(),
                value: 1.0,
                threshold: 1.0,
                since_s: 0.0,
                fired_s: Some(0.0),
            });
        }
    }
    let text = render(Arc::new(input));
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let bound = series_bound(16, 256, 5, 2, 1, 1);
    assert!(series <= bound, "{series} series, bound {bound}");
    // Backends dominate: 10 per backend plus one firing alert each.
    assert!(series >= 256 * 11, "{series}");
    assert_eq!(bound, 2932, "the figure the README quotes");
}

#[test]
fn view_round_trips_through_json_for_the_admin_api() {
    let mut m = monitor();
    let t0 = Instant::now();
    m.record(t0, sample((0, 0), (0, 0), 1.0)).unwrap();
    m.record(t0 + Duration::from_secs(1), sample((10, 100), (5, 50), 2.0))
        .unwrap();
    let view = m.view();
    let json = serde_json::to_string(&view).unwrap();
    let back: View = serde_json::from_str(&json).unwrap();
    assert_eq!(back, view);
    assert!(json.contains(r#""state":"active""#), "{json}");
}

/// Not a threshold: prints what the benchmark reports, and checks the seams run.
#[test]
fn monitor_costs_for_256_backends() {
    let render_ns = metrics::bench_render(256, 20);
    let record_ns = bench_record(256, 20);
    // Mean over one scan period: one sample reads every process, the others only this one.
    let mut sampler = ResourceSampler::new().unwrap();
    let start = Instant::now();
    let mut s = sampler.sample();
    for _ in 1..resources::DEFAULT_TOP_EVERY {
        s = sampler.sample();
    }
    let sample_ns = start.elapsed().as_nanos() / u128::from(resources::DEFAULT_TOP_EVERY);
    assert!(render_ns > 0 && record_ns > 0 && s.memory_total_bytes > 0);
    println!(
        "monitor, 256 backends: /metrics render {render_ns} ns, record {record_ns} ns, \
         resource sample {sample_ns} ns (mean)"
    );
}

#[test]
fn loopback_traffic_shows_in_the_measured_interface_rates() {
    use std::io::{Read, Write};
    const PAYLOAD: usize = 4 << 20;
    let mut sampler = ResourceSampler::new().unwrap();
    let mut m = monitor();
    let machine = |s: &mut ResourceSampler| Sample {
        resources: Some(s.sample()),
        ..Default::default()
    };
    m.record(Instant::now(), machine(&mut sampler)).unwrap();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got.len()
    });
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(&vec![7u8; PAYLOAD]).unwrap();
    drop(conn);
    assert_eq!(reader.join().unwrap(), PAYLOAD);

    m.record(Instant::now(), machine(&mut sampler)).unwrap();
    let f = m.latest().unwrap();
    let lo = f
        .resources
        .as_ref()
        .unwrap()
        .interfaces
        .iter()
        .find(|i| i.name == "lo")
        .unwrap();
    // Rate times the measured interval is the counted bytes: at least the payload (plus
    // headers and whatever else used loopback meanwhile).
    assert!(
        lo.rx_bytes_per_s * f.interval_s >= PAYLOAD as f64 - 1.0,
        "{lo:?} over {} s",
        f.interval_s
    );
    let report = m.window(Duration::from_secs(3600)).unwrap();
    assert!(report.figures["net/lo/rx_bytes_per_s"].sum >= PAYLOAD as f64 - 1.0);
}
