//! The monitor: turns the samples the daemon takes every tick (data plane counters, cache
//! counters, machine resources) into rates and gauges ([`Figures`]), keeps a bounded
//! history of them, judges alert thresholds, and serves three read-only views: the live
//! [`View`] (dashboard, admin API), a [`Report`] over a time window, and the Prometheus
//! text of `/metrics`.
//!
//! Time is handed in by the caller (`record(at, sample)`), so everything here is pure and
//! tested without sleeping; only [`resources`] reads the machine and [`server`] does I/O.
pub mod alerts;
pub mod figures;
pub mod history;
pub mod metrics;
pub mod rates;
pub mod resources;
pub mod sample;
pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use alerts::{Alert, AlertConfig, AlertConfigError, AlertEngine, AlertEvent, AlertKind};
pub use figures::*;
pub use history::{History, DEFAULT_CAPACITY};
pub use metrics::MetricsInput;
pub use resources::{ProcessUsage, ResourceSample, ResourceSampler};
pub use sample::*;

use rates::Counters;

/// The `[monitor]` settings this module uses. The daemon owns the others (sampling
/// interval, `/metrics` address), so this struct accepts unknown keys and can be
/// `#[serde(flatten)]`ed into the daemon's section; `AlertConfig` itself refuses them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorConfig {
    /// Figures kept for the dashboard and reports (one per tick).
    pub history: usize,
    pub alerts: AlertConfig,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            history: DEFAULT_CAPACITY,
            alerts: AlertConfig::default(),
        }
    }
}

impl MonitorConfig {
    /// What `Monitor::new` checks, for validating a configuration file before starting.
    pub fn validate(&self) -> Result<(), MonitorError> {
        if self.history == 0 {
            return Err(MonitorError::ZeroHistory);
        }
        Ok(self.alerts.validate()?)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MonitorError {
    #[error("monitor.history = 0: must keep at least 1 sample")]
    ZeroHistory,
    #[error(transparent)]
    Alerts(#[from] AlertConfigError),
    #[error("sample taken at or before the previous one: rates need time to pass")]
    NotAfterPrevious,
    #[error("no figures yet: rates need two samples")]
    NoFigures,
    #[error("a window must be longer than zero")]
    EmptyWindow,
}

/// Which counter a remembered value belongs to, so rates match across ticks by identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Service(String, Field),
    Backend(String, String, Field),
    Reason(String),
    Cache(Field),
    Disk(String, Field),
    Interface(String, Field),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Field {
    Packets,
    Bytes,
    NewFlows,
    Requests,
    Lookups,
    Served,
    Stale,
    RedisErrors,
    Coalesced,
    Upstream,
    Read,
    Written,
    RxBytes,
    TxBytes,
    RxPackets,
    TxPackets,
}

pub struct Monitor {
    started: Option<Instant>,
    previous: Option<Instant>,
    counters: Counters<Key>,
    history: History<Figures>,
    alerts: AlertEngine,
    metrics: Arc<MetricsInput>,
    top_cpu: Vec<ProcessUsage>,
    top_memory: Vec<ProcessUsage>,
}

/// The live picture: the latest figures, the series the sparklines draw, and the alerts
/// firing now. What `xdp-lb top` fetches over the admin socket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub latest: Option<Figures>,
    pub series: Series,
    pub alerts: Vec<Alert>,
    pub history_capacity: usize,
}

/// Oldest first, one value per tick in the history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub cpu_percent: Vec<f64>,
    pub memory_percent: Vec<f64>,
    pub packets_per_s: Vec<f64>,
}

/// Averages and peaks over a window (`xdp-lb report`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Seconds the figures in the report cover (may be less than asked: the history is
    /// bounded and starts with the daemon).
    pub window_s: f64,
    pub samples: usize,
    /// Keyed by figure, e.g. `cpu_percent`, `service/web/packets_per_s`,
    /// `backend/web/10.0.0.2:80/bits_per_s`, `net/eth0/rx_bytes_per_s`,
    /// `disk/vda/read_bytes_per_s`, `cache/hit_percent`, `reason/pass_not_ip/packets_per_s`.
    pub figures: BTreeMap<String, Stat>,
    /// As of the end of the window.
    pub top_cpu: Vec<ProcessUsage>,
    pub top_memory: Vec<ProcessUsage>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Weighted by each sample's interval, so a late tick does not count double.
    pub avg: f64,
    pub peak: f64,
    pub last: f64,
    /// The figure integrated over time: for a per-second rate, the count in the window.
    pub sum: f64,
}

impl Monitor {
    pub fn new(config: MonitorConfig) -> Result<Self, MonitorError> {
        config.validate()?;
        let history = History::new(config.history).map_err(|_| MonitorError::ZeroHistory)?;
        Ok(Self {
            started: None,
            previous: None,
            counters: Counters::default(),
            history,
            alerts: AlertEngine::new(config.alerts)?,
            metrics: Arc::new(MetricsInput::default()),
            top_cpu: Vec::new(),
            top_memory: Vec::new(),
        })
    }

    /// Takes one tick's sample, observed at `at`. The first sample is the baseline; from
    /// the second on each one adds a [`Figures`] to the history and is judged by the alert
    /// thresholds. Returns the alerts that fired or cleared (log each once).
    pub fn record(&mut self, at: Instant, sample: Sample) -> Result<Vec<AlertEvent>, MonitorError> {
        let started = *self.started.get_or_insert(at);
        let elapsed = match self.previous {
            Some(prev) if at <= prev => return Err(MonitorError::NotAfterPrevious),
            Some(prev) => Some(at - prev),
            None => None,
        };
        self.previous = Some(at);
        // On the first tick the rates read 0 (no baseline) but every counter is remembered.
        let figures = self.figures(
            (at - started).as_secs_f64(),
            elapsed.unwrap_or(Duration::ZERO),
            &sample,
        );
        self.counters.end_tick();
        if let Some(r) = &sample.resources {
            self.top_cpu.clone_from(&r.top_cpu);
            self.top_memory.clone_from(&r.top_memory);
        }
        let events = if elapsed.is_some() {
            let events = self.alerts.evaluate(&figures);
            self.history.push(figures);
            events
        } else {
            Vec::new()
        };
        self.metrics = Arc::new(MetricsInput {
            sample,
            firing: self.alerts.firing(),
        });
        Ok(events)
    }

    pub fn latest(&self) -> Option<&Figures> {
        self.history.latest()
    }

    pub fn history(&self) -> &History<Figures> {
        &self.history
    }

    pub fn firing(&self) -> Vec<Alert> {
        self.alerts.firing()
    }

    pub fn alert_config(&self) -> &AlertConfig {
        self.alerts.config()
    }

    /// `[monitor.alerts]` changed by a reload; see [`AlertEngine::set_config`].
    pub fn set_alert_config(&mut self, config: AlertConfig) -> Result<(), MonitorError> {
        Ok(self.alerts.set_config(config)?)
    }

    pub fn view(&self) -> View {
        let mut series = Series::default();
        for f in self.history.iter() {
            let r = f.resources.as_ref();
            series.cpu_percent.push(r.map_or(0.0, |r| r.cpu_percent));
            series
                .memory_percent
                .push(r.map_or(0.0, |r| r.memory_percent));
            series
                .packets_per_s
                .push(f.dataplane.as_ref().map_or(0.0, |d| d.packets_per_s));
        }
        View {
            latest: self.history.latest().cloned(),
            series,
            alerts: self.alerts.firing(),
            history_capacity: self.history.capacity(),
        }
    }

    /// What `/metrics` shows now: the latest cumulative counters and the firing alerts.
    pub fn metrics_input(&self) -> Arc<MetricsInput> {
        Arc::clone(&self.metrics)
    }

    /// `/metrics` in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        metrics::render(self.metrics_input())
    }

    /// Averages and peaks of every figure over the last `window` of history.
    pub fn window(&self, window: Duration) -> Result<Report, MonitorError> {
        if window.is_zero() {
            return Err(MonitorError::EmptyWindow);
        }
        let latest = self.history.latest().ok_or(MonitorError::NoFigures)?;
        let from = latest.at_s - window.as_secs_f64();
        let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
        let mut report = Report {
            top_cpu: self.top_cpu.clone(),
            top_memory: self.top_memory.clone(),
            ..Default::default()
        };
        for f in self.history.iter().filter(|f| f.at_s > from) {
            report.samples += 1;
            report.window_s += f.interval_s;
            let mut put = |key: String, v: f64| acc.entry(key).or_default().add(v, f.interval_s);
            add_figures(f, &mut put);
        }
        report.figures = acc.into_iter().map(|(k, a)| (k, a.stat())).collect();
        Ok(report)
    }

    fn figures(&mut self, at_s: f64, elapsed: Duration, sample: &Sample) -> Figures {
        let c = &mut self.counters;
        let dataplane = sample.dataplane.as_ref().map(|d| {
            let mut out = DataplaneFigures {
                flows: d.flows_total,
                flow_table_capacity: d.flow_table_capacity,
                flow_table_percent: if d.flow_table_capacity == 0 {
                    0.0
                } else {
                    d.flows_total as f64 * 100.0 / d.flow_table_capacity as f64
                },
                ..Default::default()
            };
            for s in &d.services {
                let svc = |f| Key::Service(s.name.clone(), f);
                let mut backends: Vec<BackendFigures> = s
                    .backends
                    .iter()
                    .map(|b| {
                        let be = |f| Key::Backend(s.name.clone(), b.addr.clone(), f);
                        BackendFigures {
                            addr: b.addr.clone(),
                            state: b.state,
                            health: b.health,
                            weight: b.weight,
                            packets_per_s: c.rate(&be(Field::Packets), b.packets, elapsed),
                            bits_per_s: 8.0 * c.rate(&be(Field::Bytes), b.bytes, elapsed),
                            new_flows_per_s: c.rate(&be(Field::NewFlows), b.new_flows, elapsed),
                            flows: b.flows,
                            share_percent: 0.0,
                            check_latency_ms: b.last_check_latency.map(|l| l.as_secs_f64() * 1e3),
                        }
                    })
                    .collect();
                let backend_pps: f64 = backends.iter().map(|b| b.packets_per_s).sum();
                if backend_pps > 0.0 {
                    for b in &mut backends {
                        b.share_percent = b.packets_per_s * 100.0 / backend_pps;
                    }
                }
                let service = ServiceFigures {
                    name: s.name.clone(),
                    packets_per_s: c.rate(&svc(Field::Packets), s.packets, elapsed),
                    bits_per_s: 8.0 * c.rate(&svc(Field::Bytes), s.bytes, elapsed),
                    new_flows_per_s: c.rate(&svc(Field::NewFlows), s.new_flows, elapsed),
                    flows: s.backends.iter().map(|b| b.flows).sum(),
                    usable_backends: s.backends.iter().filter(|b| b.usable()).count(),
                    backends,
                };
                out.packets_per_s += service.packets_per_s;
                out.bits_per_s += service.bits_per_s;
                out.new_flows_per_s += service.new_flows_per_s;
                out.services.push(service);
            }
            out.reasons = d
                .reasons
                .iter()
                .map(|r| ReasonRate {
                    reason: r.reason.clone(),
                    packets_per_s: c.rate(&Key::Reason(r.reason.clone()), r.packets, elapsed),
                })
                .collect();
            out
        });
        let cache = sample.cache.as_ref().map(|s| {
            let lookups = c.delta(&Key::Cache(Field::Lookups), s.lookups());
            let served = c.delta(&Key::Cache(Field::Served), s.served());
            CacheFigures {
                requests_per_s: c.rate(&Key::Cache(Field::Requests), s.requests(), elapsed),
                lookups_per_s: rate_of(lookups, elapsed),
                // A reset between the two reads can leave `served` above `lookups` for one
                // tick; the ratio is capped rather than reported above 100%.
                hit_percent: (lookups > 0)
                    .then(|| (served as f64 * 100.0 / lookups as f64).min(100.0)),
                stale_per_s: c.rate(&Key::Cache(Field::Stale), s.stale, elapsed),
                redis_errors_per_s: c.rate(
                    &Key::Cache(Field::RedisErrors),
                    s.redis_errors,
                    elapsed,
                ),
                coalesced_waits_per_s: c.rate(
                    &Key::Cache(Field::Coalesced),
                    s.coalesced_waits,
                    elapsed,
                ),
                upstream_requests_per_s: c.rate(
                    &Key::Cache(Field::Upstream),
                    s.upstream_requests,
                    elapsed,
                ),
                redis_latency_ms: s.redis_latency.map(|l| l.as_secs_f64() * 1e3),
                redis_reachable: s.redis_reachable,
            }
        });
        let resources = sample.resources.as_ref().map(|r| ResourceFigures {
            cpu_percent: r.cpu_percent,
            per_core_percent: r.per_core_percent.clone(),
            load1: r.load1,
            load5: r.load5,
            load15: r.load15,
            memory_percent: r.memory_percent(),
            memory_used_bytes: r.memory_used_bytes,
            memory_total_bytes: r.memory_total_bytes,
            swap_percent: r.swap_percent(),
            swap_used_bytes: r.swap_used_bytes,
            disks: r
                .disks
                .iter()
                .map(|d| {
                    let k = |f| Key::Disk(d.device.clone(), f);
                    DiskRates {
                        device: d.device.clone(),
                        read_bytes_per_s: c.rate(&k(Field::Read), d.read_bytes, elapsed),
                        write_bytes_per_s: c.rate(&k(Field::Written), d.written_bytes, elapsed),
                    }
                })
                .collect(),
            interfaces: r
                .interfaces
                .iter()
                .map(|i| {
                    let k = |f| Key::Interface(i.name.clone(), f);
                    let rx_bytes_per_s = c.rate(&k(Field::RxBytes), i.rx_bytes, elapsed);
                    let tx_bytes_per_s = c.rate(&k(Field::TxBytes), i.tx_bytes, elapsed);
                    InterfaceRates {
                        name: i.name.clone(),
                        rx_bytes_per_s,
                        tx_bytes_per_s,
                        rx_packets_per_s: c.rate(&k(Field::RxPackets), i.rx_packets, elapsed),
                        tx_packets_per_s: c.rate(&k(Field::TxPackets), i.tx_packets, elapsed),
                        link_bits_per_s: i.link_bits_per_s,
                        link_percent: i
                            .link_bits_per_s
                            .filter(|&l| l > 0)
                            .map(|l| rx_bytes_per_s.max(tx_bytes_per_s) * 8.0 * 100.0 / l as f64),
                    }
                })
                .collect(),
            process_cpu_percent: r.process.cpu_percent,
            process_memory_bytes: r.process.memory_bytes,
        });
        Figures {
            at_s,
            interval_s: elapsed.as_secs_f64(),
            dataplane,
            cache,
            resources,
        }
    }
}

/// Mean nanoseconds of one [`Monitor::record`] of a data plane with `backends` backends (in
/// services of 16) and no resources, for `cargo xtask bench`: the monitor's own share of a
/// tick, apart from reading the maps and the machine.
pub fn bench_record(backends: usize, iterations: u32) -> u128 {
    let per_service = 16.min(backends.max(1));
    let base = metrics::synthetic_input(backends.div_ceil(per_service), per_service).sample;
    let mut m = Monitor::new(MonitorConfig::default()).expect("default configuration is valid");
    let t0 = Instant::now();
    let iterations = iterations.max(1);
    let mut total = Duration::ZERO;
    for i in 0..=iterations {
        let mut s = base.clone();
        for svc in s.dataplane.iter_mut().flat_map(|d| d.services.iter_mut()) {
            svc.packets += u64::from(i) * 1000;
            for b in &mut svc.backends {
                b.packets += u64::from(i) * 100;
            }
        }
        let start = Instant::now();
        let _ = m.record(t0 + Duration::from_secs(u64::from(i)), s);
        // The first call only sets the baseline.
        if i > 0 {
            total += start.elapsed();
        }
    }
    total.as_nanos() / u128::from(iterations)
}

fn rate_of(delta: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        delta as f64 / secs
    } else {
        0.0
    }
}

#[derive(Default)]
struct Acc {
    weighted: f64,
    time: f64,
    peak: f64,
    last: f64,
    seen: bool,
}

impl Acc {
    fn add(&mut self, v: f64, dt: f64) {
        self.weighted += v * dt;
        self.time += dt;
        self.peak = if self.seen { self.peak.max(v) } else { v };
        self.last = v;
        self.seen = true;
    }

    fn stat(&self) -> Stat {
        Stat {
            avg: if self.time > 0.0 {
                self.weighted / self.time
            } else {
                self.last
            },
            peak: self.peak,
            last: self.last,
            sum: self.weighted,
        }
    }
}

/// Every figure of one tick under its report key.
fn add_figures(f: &Figures, put: &mut impl FnMut(String, f64)) {
    let mut under = |prefix: &str, figures: &[(&str, f64)]| {
        for (name, value) in figures {
            let key = if prefix.is_empty() {
                (*name).to_string()
            } else {
                format!("{prefix}/{name}")
            };
            put(key, *value);
        }
    };
    if let Some(r) = &f.resources {
        under(
            "",
            &[
                ("cpu_percent", r.cpu_percent),
                ("load1", r.load1),
                ("memory_percent", r.memory_percent),
                ("memory_used_bytes", r.memory_used_bytes as f64),
                ("swap_percent", r.swap_percent),
                ("process_cpu_percent", r.process_cpu_percent),
                ("process_memory_bytes", r.process_memory_bytes as f64),
            ],
        );
        for (i, c) in r.per_core_percent.iter().enumerate() {
            under(&format!("cpu/{i}"), &[("percent", *c)]);
        }
        for d in &r.disks {
            under(
                &format!("disk/{}", d.device),
                &[
                    ("read_bytes_per_s", d.read_bytes_per_s),
                    ("write_bytes_per_s", d.write_bytes_per_s),
                ],
            );
        }
        for i in &r.interfaces {
            under(
                &format!("net/{}", i.name),
                &[
                    ("rx_bytes_per_s", i.rx_bytes_per_s),
                    ("tx_bytes_per_s", i.tx_bytes_per_s),
                    ("rx_packets_per_s", i.rx_packets_per_s),
                    ("tx_packets_per_s", i.tx_packets_per_s),
                ],
            );
        }
    }
    if let Some(d) = &f.dataplane {
        under(
            "",
            &[
                ("packets_per_s", d.packets_per_s),
                ("bits_per_s", d.bits_per_s),
                ("new_flows_per_s", d.new_flows_per_s),
                ("flows", d.flows as f64),
                ("flow_table_percent", d.flow_table_percent),
            ],
        );
        for r in &d.reasons {
            under(
                &format!("reason/{}", r.reason),
                &[("packets_per_s", r.packets_per_s)],
            );
        }
        for s in &d.services {
            under(
                &format!("service/{}", s.name),
                &[
                    ("packets_per_s", s.packets_per_s),
                    ("bits_per_s", s.bits_per_s),
                    ("new_flows_per_s", s.new_flows_per_s),
                    ("flows", s.flows as f64),
                ],
            );
            for b in &s.backends {
                let prefix = format!("backend/{}/{}", s.name, b.addr);
                under(
                    &prefix,
                    &[
                        ("packets_per_s", b.packets_per_s),
                        ("bits_per_s", b.bits_per_s),
                        ("new_flows_per_s", b.new_flows_per_s),
                        ("flows", b.flows as f64),
                        ("share_percent", b.share_percent),
                    ],
                );
                if let Some(l) = b.check_latency_ms {
                    under(&prefix, &[("check_latency_ms", l)]);
                }
            }
        }
    }
    if let Some(c) = &f.cache {
        under(
            "cache",
            &[
                ("requests_per_s", c.requests_per_s),
                ("stale_per_s", c.stale_per_s),
                ("redis_errors_per_s", c.redis_errors_per_s),
                ("coalesced_waits_per_s", c.coalesced_waits_per_s),
                ("upstream_requests_per_s", c.upstream_requests_per_s),
            ],
        );
        if let Some(h) = c.hit_percent {
            under("cache", &[("hit_percent", h)]);
        }
        if let Some(l) = c.redis_latency_ms {
            under("cache", &[("redis_latency_ms", l)]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
