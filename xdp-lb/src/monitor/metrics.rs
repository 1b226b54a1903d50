//! `/metrics`: the latest cumulative counters, gauges and firing alerts in the Prometheus
//! text format (0.0.4), written by `prometheus-client`. Counters are exported as counted
//! (`_total`, base units: bytes, seconds) and no rates: Prometheus computes those with
//! `rate()`. The text is made from a snapshot on each scrape by a collector, so a backend
//! that is removed disappears from the next scrape instead of lingering.
//!
//! Cardinality is bounded by the configuration, never by traffic or clients: per service
//! 3 series, per backend at most 10 (packets, bytes, new flows, flows, weight, up, admin
//! state, healthy, health transitions, check latency) and 1 firing `backend_down` alert,
//! per service 1 firing `no_healthy_backend`, plus fixed families (verdict reasons, cache,
//! host, one `xdp_lb_alerts_firing` per alert kind). [`series_bound`] is the formula; with
//! 256 backends in 16 services on a 2-CPU machine with one disk and one interface it is
//! 2,932 series, of which backends are 2,816.
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::alerts::{Alert, AlertKind};
use super::resources::ResourceSample;
use super::sample::{BackendState, CacheSample, DataplaneSample, Health, Sample, ServiceSample};

/// `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What one scrape shows: the latest sample's cumulative counters and the alerts firing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsInput {
    pub sample: Sample,
    pub firing: Vec<Alert>,
}

/// Upper bound of the series [`render`] writes for a configuration of this size, for
/// capacity planning of the Prometheus server (asserted by the tests).
pub fn series_bound(
    services: usize,
    backends: usize,
    reasons: usize,
    cpus: usize,
    disks: usize,
    interfaces: usize,
) -> usize {
    let dataplane = 3 * services + 10 * backends + reasons + 2;
    let cache = 6 + 6;
    let host = (cpus + 1) + 3 + 4 + 2 * disks + 5 * interfaces + 2;
    // One `xdp_lb_alerts_firing` per kind, then one firing series per target.
    // Machine-wide alerts: cpu, memory, flow_table, cache_hit_rate, redis_unreachable.
    let alerts = AlertKind::ALL.len() + backends + services + interfaces + 5;
    dataplane + cache + host + alerts
}

/// Renders `/metrics`. Takes an `Arc` because the collector must own what it encodes.
pub fn render(input: Arc<MetricsInput>) -> String {
    encode(Box::new(Snapshot(input)), 64 * 1024)
}

/// Renders `/metrics` of the cache tier run alone (`xdp-lb cache serve`): the cache
/// families of the daemon's `/metrics`, under the same names, and nothing else (no
/// alert families: the tier alone judges no thresholds).
pub fn render_cache(sample: CacheSample) -> String {
    encode(Box::new(CacheOnly(sample)), 4 * 1024)
}

fn encode(collector: Box<dyn Collector>, capacity: usize) -> String {
    let mut registry = Registry::default();
    registry.register_collector(collector);
    let mut out = String::with_capacity(capacity);
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("formatting into a String does not fail");
    out
}

#[derive(Debug)]
struct Snapshot(Arc<MetricsInput>);

#[derive(Debug)]
struct CacheOnly(CacheSample);

impl Collector for CacheOnly {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_cache(&mut enc, &self.0)
    }
}

enum Kind {
    Counter,
    Gauge,
}

/// Writes one metric family with its samples; nothing at all when it has none, so a
/// daemon without a cache tier shows no empty cache families.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let ty = match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    };
    let mut metric = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, value) in samples {
        let m = metric.encode_family(&labels)?;
        match kind {
            Kind::Counter => ConstCounter::new(value).encode(m)?,
            Kind::Gauge => ConstGauge::new(value).encode(m)?,
        }
    }
    Ok(())
}

/// A family without labels.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    value: f64,
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, kind, [(NO_LABELS, value)])
}

const NO_LABELS: [(&str, &str); 0] = [];

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let input = &*self.0;
        if let Some(d) = &input.sample.dataplane {
            encode_dataplane(&mut enc, d)?;
        }
        if let Some(c) = &input.sample.cache {
            encode_cache(&mut enc, c)?;
        }
        if let Some(r) = &input.sample.resources {
            encode_host(&mut enc, r)?;
        }
        encode_alerts(&mut enc, &input.firing)
    }
}

fn encode_dataplane(
    enc: &mut DescriptorEncoder,
    d: &DataplaneSample,
) -> Result<(), std::fmt::Error> {
    use Kind::{Counter, Gauge};
    let svc = |f: fn(&ServiceSample) -> u64| {
        d.services
            .iter()
            .map(move |s| ([("service", s.name.as_str())], f(s) as f64))
    };
    family(
        enc,
        "xdp_lb_service_packets",
        "Packets balanced to the service's backends.",
        Counter,
        svc(|s| s.packets),
    )?;
    family(
        enc,
        "xdp_lb_service_bytes",
        "Bytes of the packets balanced for the service.",
        Counter,
        svc(|s| s.bytes),
    )?;
    family(
        enc,
        "xdp_lb_service_new_flows",
        "Flows the service dispatched by its table.",
        Counter,
        svc(|s| s.new_flows),
    )?;
    let backends = || {
        d.services.iter().flat_map(|s| {
            s.backends.iter().map(move |b| {
                (
                    [("service", s.name.as_str()), ("backend", b.addr.as_str())],
                    b,
                )
            })
        })
    };
    family(
        enc,
        "xdp_lb_backend_packets",
        "Packets sent to the backend.",
        Counter,
        backends().map(|(l, b)| (l, b.packets as f64)),
    )?;
    family(
        enc,
        "xdp_lb_backend_bytes",
        "Bytes of the packets sent to the backend.",
        Counter,
        backends().map(|(l, b)| (l, b.bytes as f64)),
    )?;
    family(
        enc,
        "xdp_lb_backend_new_flows",
        "New flows dispatched to the backend.",
        Counter,
        backends().map(|(l, b)| (l, b.new_flows as f64)),
    )?;
    family(
        enc,
        "xdp_lb_backend_flows",
        "Flow-table entries pointing at the backend.",
        Gauge,
        backends().map(|(l, b)| (l, b.flows as f64)),
    )?;
    family(
        enc,
        "xdp_lb_backend_weight",
        "Configured weight of the backend.",
        Gauge,
        backends().map(|(l, b)| (l, f64::from(b.weight))),
    )?;
    family(
        enc,
        "xdp_lb_backend_up",
        "1 if the backend gets new flows (active, not failing checks).",
        Gauge,
        backends().map(|(l, b)| (l, flag(b.usable()))),
    )?;
    family(
        enc,
        "xdp_lb_backend_admin_state",
        "The backend's admin state (the state label), always 1.",
        Gauge,
        backends().map(|(l, b)| {
            let [service, backend] = l;
            ([service, backend, ("state", b.state.as_str())], 1.0)
        }),
    )?;
    family(
        enc,
        "xdp_lb_backend_healthy",
        "1 if the backend passes its health checks, else 0; absent unchecked.",
        Gauge,
        backends().filter_map(|(l, b)| b.health.map(|h| (l, flag(h == Health::Up)))),
    )?;
    family(
        enc,
        "xdp_lb_backend_health_transitions",
        "Changes of the backend's health state; absent without checks.",
        Counter,
        backends().filter_map(|(l, b)| b.health.map(|_| (l, b.health_transitions as f64))),
    )?;
    family(
        enc,
        "xdp_lb_backend_check_latency_seconds",
        "Latency of the backend's last health check.",
        Gauge,
        backends().filter_map(|(l, b)| b.last_check_latency.map(|t| (l, t.as_secs_f64()))),
    )?;
    family(
        enc,
        "xdp_lb_packets",
        "Packets seen by the XDP program, by verdict reason.",
        Counter,
        d.reasons
            .iter()
            .map(|r| ([("reason", r.reason.as_str())], r.packets as f64)),
    )?;
    single(
        enc,
        "xdp_lb_flows",
        "Entries in the flow table.",
        Gauge,
        d.flows_total as f64,
    )?;
    single(
        enc,
        "xdp_lb_flow_table_capacity",
        "Entries the flow table can hold.",
        Gauge,
        d.flow_table_capacity as f64,
    )?;
    Ok(())
}

fn encode_cache(enc: &mut DescriptorEncoder, c: &CacheSample) -> Result<(), std::fmt::Error> {
    use Kind::{Counter, Gauge};
    family(
        enc,
        "xdp_lb_cache_requests",
        "Cache tier requests by result (the X-Cache header).",
        Counter,
        [
            ("hit", c.hits),
            ("miss", c.misses),
            ("stale", c.stale),
            ("updating", c.updating),
            ("expired", c.expired),
            ("bypass", c.bypass),
        ]
        .map(|(result, n)| ([("result", result)], n as f64)),
    )?;
    single(
        enc,
        "xdp_lb_cache_redis_errors",
        "Redis calls that failed or timed out.",
        Counter,
        c.redis_errors as f64,
    )?;
    single(
        enc,
        "xdp_lb_cache_coalesced_waits",
        "Requests that waited for another instance's fetch.",
        Counter,
        c.coalesced_waits as f64,
    )?;
    single(
        enc,
        "xdp_lb_cache_served_bytes",
        "Body bytes served from the cache.",
        Counter,
        c.bytes_from_cache as f64,
    )?;
    single(
        enc,
        "xdp_lb_cache_upstream_requests",
        "Requests sent to the upstreams.",
        Counter,
        c.upstream_requests as f64,
    )?;
    if let Some(l) = c.redis_latency {
        single(
            enc,
            "xdp_lb_cache_redis_latency_seconds",
            "Latency of the last Redis round trip.",
            Gauge,
            l.as_secs_f64(),
        )?;
    }
    if let Some(up) = c.redis_reachable {
        single(
            enc,
            "xdp_lb_cache_redis_up",
            "1 if the last Redis call succeeded.",
            Gauge,
            flag(up),
        )?;
    }
    Ok(())
}

fn encode_host(enc: &mut DescriptorEncoder, r: &ResourceSample) -> Result<(), std::fmt::Error> {
    use Kind::{Counter, Gauge};
    let cores: Vec<String> = (0..r.per_core_percent.len())
        .map(|i| i.to_string())
        .collect();
    family(
        enc,
        "xdp_lb_host_cpu_usage_ratio",
        "Busy share of the CPUs since the previous sample, 0 to 1 (cpu=\"all\" for all).",
        Gauge,
        std::iter::once(("all", r.cpu_percent))
            .chain(
                cores
                    .iter()
                    .map(String::as_str)
                    .zip(r.per_core_percent.iter().copied()),
            )
            .map(|(cpu, p)| ([("cpu", cpu)], p / 100.0)),
    )?;
    single(
        enc,
        "xdp_lb_host_load1",
        "1-minute load average.",
        Gauge,
        r.load1,
    )?;
    single(
        enc,
        "xdp_lb_host_load5",
        "5-minute load average.",
        Gauge,
        r.load5,
    )?;
    single(
        enc,
        "xdp_lb_host_load15",
        "15-minute load average.",
        Gauge,
        r.load15,
    )?;
    single(
        enc,
        "xdp_lb_host_memory_total_bytes",
        "Memory installed.",
        Gauge,
        r.memory_total_bytes as f64,
    )?;
    single(
        enc,
        "xdp_lb_host_memory_used_bytes",
        "Memory not available (total minus available).",
        Gauge,
        r.memory_used_bytes as f64,
    )?;
    single(
        enc,
        "xdp_lb_host_swap_total_bytes",
        "Swap space.",
        Gauge,
        r.swap_total_bytes as f64,
    )?;
    single(
        enc,
        "xdp_lb_host_swap_used_bytes",
        "Swap space in use.",
        Gauge,
        r.swap_used_bytes as f64,
    )?;
    family(
        enc,
        "xdp_lb_host_disk_read_bytes",
        "Bytes read from the device.",
        Counter,
        r.disks
            .iter()
            .map(|d| ([("device", d.device.as_str())], d.read_bytes as f64)),
    )?;
    family(
        enc,
        "xdp_lb_host_disk_written_bytes",
        "Bytes written to the device.",
        Counter,
        r.disks
            .iter()
            .map(|d| ([("device", d.device.as_str())], d.written_bytes as f64)),
    )?;
    let ifaces = || {
        r.interfaces
            .iter()
            .map(|i| ([("interface", i.name.as_str())], i))
    };
    family(
        enc,
        "xdp_lb_host_network_receive_bytes",
        "Bytes received by the interface.",
        Counter,
        ifaces().map(|(l, i)| (l, i.rx_bytes as f64)),
    )?;
    family(
        enc,
        "xdp_lb_host_network_transmit_bytes",
        "Bytes sent by the interface.",
        Counter,
        ifaces().map(|(l, i)| (l, i.tx_bytes as f64)),
    )?;
    family(
        enc,
        "xdp_lb_host_network_receive_packets",
        "Packets received by the interface.",
        Counter,
        ifaces().map(|(l, i)| (l, i.rx_packets as f64)),
    )?;
    family(
        enc,
        "xdp_lb_host_network_transmit_packets",
        "Packets sent by the interface.",
        Counter,
        ifaces().map(|(l, i)| (l, i.tx_packets as f64)),
    )?;
    family(
        enc,
        "xdp_lb_host_network_speed_bytes",
        "Link speed in bytes per second, where the driver reports one.",
        Gauge,
        ifaces().filter_map(|(l, i)| i.link_bits_per_s.map(|s| (l, s as f64 / 8.0))),
    )?;
    single(
        enc,
        "xdp_lb_process_cpu_seconds",
        "CPU time used by this process.",
        Counter,
        r.process.cpu_seconds_total,
    )?;
    single(
        enc,
        "xdp_lb_process_resident_memory_bytes",
        "Resident memory of this process.",
        Gauge,
        r.process.memory_bytes as f64,
    )?;
    Ok(())
}

fn encode_alerts(enc: &mut DescriptorEncoder, firing: &[Alert]) -> Result<(), std::fmt::Error> {
    use Kind::Gauge;
    family(
        enc,
        "xdp_lb_alerts_firing",
        "Alerts of this kind firing now.",
        Gauge,
        AlertKind::ALL.map(|k| {
            let n = firing.iter().filter(|a| a.kind == k).count();
            ([("alert", k.as_str())], n as f64)
        }),
    )?;
    family(
        enc,
        "xdp_lb_alert_firing",
        "1 per firing alert; target: SERVICE/ADDR, service, interface or empty.",
        Gauge,
        firing.iter().map(|a| {
            (
                [("alert", a.kind.as_str()), ("target", a.target.as_str())],
                1.0,
            )
        }),
    )?;
    Ok(())
}

/// A synthetic input of `services` services with `backends_per_service` backends each,
/// for the render benchmark and the tests.
pub fn synthetic_input(services: usize, backends_per_service: usize) -> MetricsInput {
    use super::resources::{DiskCounters, InterfaceCounters, ProcessUsage};
    use super::sample::{BackendSample, ReasonCount};
    use std::time::Duration;
    let mut n = 0u64;
    let services = (0..services)
        .map(|s| ServiceSample {
            name: format!("svc{s}"),
            packets: 1_000_000 + s as u64,
            bytes: 900_000_000,
            new_flows: 10_000,
            backends: (0..backends_per_service)
                .map(|b| {
                    n += 1;
                    BackendSample {
                        addr: format!("10.{}.{}.{}:8080", s, b / 250, b % 250 + 1),
                        state: if n.is_multiple_of(7) {
                            BackendState::Draining
                        } else {
                            BackendState::Active
                        },
                        health: if n.is_multiple_of(5) {
                            Some(Health::Down)
                        } else {
                            Some(Health::Up)
                        },
                        weight: (n % 10) as u32 + 1,
                        packets: 1000 * n,
                        bytes: 1_400_000 * n,
                        new_flows: 10 * n,
                        flows: n,
                        last_check_latency: Some(Duration::from_micros(300 + n)),
                        health_transitions: n % 3,
                    }
                })
                .collect(),
        })
        .collect();
    MetricsInput {
        sample: Sample {
            dataplane: Some(DataplaneSample {
                services,
                reasons: [
                    "tx",
                    "redirect",
                    "pass_not_ip",
                    "pass_no_service",
                    "drop_no_backend",
                ]
                .iter()
                .enumerate()
                .map(|(i, r)| ReasonCount {
                    reason: (*r).into(),
                    packets: 1000 * i as u64,
                })
                .collect(),
                flows_total: n,
                flow_table_capacity: 262_144,
            }),
            cache: Some(CacheSample {
                hits: 900,
                misses: 100,
                redis_latency: Some(Duration::from_micros(250)),
                redis_reachable: Some(true),
                ..Default::default()
            }),
            resources: Some(ResourceSample {
                cpu_percent: 12.5,
                per_core_percent: vec![10.0, 15.0],
                load1: 0.5,
                memory_total_bytes: 24 << 30,
                memory_used_bytes: 3 << 30,
                disks: vec![DiskCounters {
                    device: "/dev/vda".into(),
                    read_bytes: 1 << 20,
                    written_bytes: 2 << 20,
                }],
                interfaces: vec![InterfaceCounters {
                    name: "eth0".into(),
                    rx_bytes: 1,
                    tx_bytes: 2,
                    rx_packets: 3,
                    tx_packets: 4,
                    link_bits_per_s: Some(10_000_000_000),
                }],
                process: ProcessUsage {
                    pid: 1,
                    name: "xdp-lb".into(),
                    cpu_percent: 1.0,
                    memory_bytes: 50 << 20,
                    cpu_seconds_total: 1.5,
                },
                ..Default::default()
            }),
        },
        firing: Vec::new(),
    }
}

/// Renders `/metrics` for `backends` backends (in services of 16) `iterations` times and
/// returns the mean nanoseconds per render, for `cargo xtask bench`.
pub fn bench_render(backends: usize, iterations: u32) -> u128 {
    let per_service = 16.min(backends.max(1));
    let input = Arc::new(synthetic_input(backends.div_ceil(per_service), per_service));
    let start = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..iterations.max(1) {
        bytes += std::hint::black_box(render(Arc::clone(&input))).len();
    }
    std::hint::black_box(bytes);
    start.elapsed().as_nanos() / u128::from(iterations.max(1))
}
