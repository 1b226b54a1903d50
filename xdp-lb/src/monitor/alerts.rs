//! Threshold alerts, pure: the engine reads one tick's [`Figures`] at a time, with time
//! given by the figures themselves (no clock), and answers with the alerts that started or
//! stopped firing. A condition must hold for its hold time before it fires; it fires once,
//! stays listed while it holds, and clears once when it stops holding. The daemon logs the
//! events; `xdp-lb alerts` and `/metrics` list [`AlertEngine::firing`].
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::figures::Figures;
use super::sample::Health;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Cpu,
    Memory,
    /// An interface busier than a share of its link speed (only where the speed is known).
    Network,
    FlowTable,
    /// A backend failing its health checks (an operator's `down` is not an alert).
    BackendDown,
    NoHealthyBackend,
    CacheHitRate,
    RedisUnreachable,
}

impl AlertKind {
    pub const ALL: [AlertKind; 8] = [
        Self::Cpu,
        Self::Memory,
        Self::Network,
        Self::FlowTable,
        Self::BackendDown,
        Self::NoHealthyBackend,
        Self::CacheHitRate,
        Self::RedisUnreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Network => "network",
            Self::FlowTable => "flow_table",
            Self::BackendDown => "backend_down",
            Self::NoHealthyBackend => "no_healthy_backend",
            Self::CacheHitRate => "cache_hit_rate",
            Self::RedisUnreachable => "redis_unreachable",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[monitor.alerts]`. Percentages are 0..=100.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// Seconds a condition must hold before its alert fires.
    pub hold_s: f64,
    /// Per-alert hold times replacing `hold_s`, e.g. `{ backend_down = 0, cpu = 60 }`.
    pub hold_overrides_s: BTreeMap<AlertKind, f64>,
    /// Alerts never raised.
    pub disabled: Vec<AlertKind>,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    /// Of the link speed, for interfaces whose driver reports one.
    pub network_percent: f64,
    pub flow_table_percent: f64,
    /// Fires below this share of cacheable lookups served from the cache.
    pub cache_hit_percent: f64,
    /// The hit rate is judged only at or above this many lookups per second, so an idle
    /// cache, or one answering a handful of first requests, does not alert.
    pub cache_min_lookups_per_s: f64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            hold_s: 10.0,
            hold_overrides_s: BTreeMap::new(),
            disabled: Vec::new(),
            cpu_percent: 80.0,
            memory_percent: 85.0,
            network_percent: 90.0,
            flow_table_percent: 90.0,
            cache_hit_percent: 80.0,
            cache_min_lookups_per_s: 1.0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AlertConfigError {
    #[error("monitor.alerts.{key} = {value}: must be a percentage between 0 and 100")]
    Percent { key: &'static str, value: f64 },
    #[error("monitor.alerts.{key} = {value}: must be a number of seconds, 0 or more")]
    Seconds { key: String, value: f64 },
    #[error("monitor.alerts.cache_min_lookups_per_s = {0}: must be 0 or more")]
    MinLookups(f64),
}

impl AlertConfig {
    pub fn validate(&self) -> Result<(), AlertConfigError> {
        for (key, value) in [
            ("cpu_percent", self.cpu_percent),
            ("memory_percent", self.memory_percent),
            ("network_percent", self.network_percent),
            ("flow_table_percent", self.flow_table_percent),
            ("cache_hit_percent", self.cache_hit_percent),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(AlertConfigError::Percent { key, value });
            }
        }
        let seconds = |key: String, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(AlertConfigError::Seconds { key, value })
            }
        };
        seconds("hold_s".into(), self.hold_s)?;
        for (kind, &value) in &self.hold_overrides_s {
            seconds(format!("hold_overrides_s.{kind}"), value)?;
        }
        if !(self.cache_min_lookups_per_s.is_finite() && self.cache_min_lookups_per_s >= 0.0) {
            return Err(AlertConfigError::MinLookups(self.cache_min_lookups_per_s));
        }
        Ok(())
    }

    pub fn hold_s(&self, kind: AlertKind) -> f64 {
        self.hold_overrides_s
            .get(&kind)
            .copied()
            .unwrap_or(self.hold_s)
    }
}

/// An alert that is firing (or, inside the engine, waiting out its hold time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// What it is about: `SERVICE/ADDR` for a backend, a service name, an interface; empty
    /// for the machine, the flow table and Redis.
    pub target: String,
    pub message: String,
    /// The figure that crossed the threshold, as of the latest tick.
    pub value: f64,
    pub threshold: f64,
    /// Monitor time (seconds) at which the condition was first seen.
    pub since_s: f64,
    /// Monitor time at which it fired.
    pub fired_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    Fired,
    Cleared,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub transition: Transition,
    pub alert: Alert,
}

impl fmt::Display for AlertEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.alert;
        let what = match self.transition {
            Transition::Fired => "firing",
            Transition::Cleared => "cleared",
        };
        write!(f, "alert {what}: {}", a.kind)?;
        if !a.target.is_empty() {
            write!(f, " {}", a.target)?;
        }
        write!(f, ": {}", a.message)
    }
}

type Key = (AlertKind, String);

struct Condition {
    key: Key,
    value: f64,
    threshold: f64,
    message: String,
}

#[derive(Debug)]
pub struct AlertEngine {
    config: AlertConfig,
    tracked: HashMap<Key, Alert>,
}

impl AlertEngine {
    pub fn new(config: AlertConfig) -> Result<Self, AlertConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            tracked: HashMap::new(),
        })
    }

    pub fn config(&self) -> &AlertConfig {
        &self.config
    }

    /// New thresholds from a reload. What is firing stays firing until the next tick
    /// judges it by the new thresholds; an alert that no longer holds then clears (and is
    /// logged) as it would after a change of the figures.
    pub fn set_config(&mut self, config: AlertConfig) -> Result<(), AlertConfigError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Judges one tick. Returns the alerts that fired or cleared at it, sorted by kind and
    /// target.
    pub fn evaluate(&mut self, figures: &Figures) -> Vec<AlertEvent> {
        let now = figures.at_s;
        let mut events = Vec::new();
        let mut holding: HashSet<Key> = HashSet::new();
        for c in self.conditions(figures) {
            let hold = self.config.hold_s(c.key.0);
            let alert = self.tracked.entry(c.key.clone()).or_insert_with(|| Alert {
                kind: c.key.0,
                target: c.key.1.clone(),
                message: String::new(),
                value: 0.0,
                threshold: c.threshold,
                since_s: now,
                fired_s: None,
            });
            alert.value = c.value;
            alert.threshold = c.threshold;
            alert.message = c.message;
            if alert.fired_s.is_none() && now - alert.since_s >= hold {
                alert.fired_s = Some(now);
                events.push(AlertEvent {
                    transition: Transition::Fired,
                    alert: alert.clone(),
                });
            }
            holding.insert(c.key);
        }
        let gone: Vec<Key> = self
            .tracked
            .keys()
            .filter(|k| !holding.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(alert) = self.tracked.remove(&key) {
                // A condition that never outlasted its hold time was never announced.
                if alert.fired_s.is_some() {
                    events.push(AlertEvent {
                        transition: Transition::Cleared,
                        alert,
                    });
                }
            }
        }
        events
            .sort_by(|a, b| (a.alert.kind, &a.alert.target).cmp(&(b.alert.kind, &b.alert.target)));
        events
    }

    /// Alerts firing now, sorted by kind and target.
    pub fn firing(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .tracked
            .values()
            .filter(|a| a.fired_s.is_some())
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.kind, &a.target).cmp(&(b.kind, &b.target)));
        v
    }

    fn conditions(&self, f: &Figures) -> Vec<Condition> {
        let cfg = &self.config;
        let mut out = Vec::new();
        let mut add = |kind: AlertKind, target: String, value: f64, threshold: f64, message| {
            if !cfg.disabled.contains(&kind) {
                out.push(Condition {
                    key: (kind, target),
                    value,
                    threshold,
                    message,
                });
            }
        };
        if let Some(r) = &f.resources {
            if r.cpu_percent > cfg.cpu_percent {
                add(
                    AlertKind::Cpu,
                    String::new(),
                    r.cpu_percent,
                    cfg.cpu_percent,
                    format!("CPU {:.1}% above {}%", r.cpu_percent, cfg.cpu_percent),
                );
            }
            if r.memory_percent > cfg.memory_percent {
                add(
                    AlertKind::Memory,
                    String::new(),
                    r.memory_percent,
                    cfg.memory_percent,
                    format!(
                        "memory {:.1}% above {}%",
                        r.memory_percent, cfg.memory_percent
                    ),
                );
            }
            for i in &r.interfaces {
                if let Some(p) = i.link_percent.filter(|&p| p > cfg.network_percent) {
                    add(
                        AlertKind::Network,
                        i.name.clone(),
                        p,
                        cfg.network_percent,
                        format!(
                            "{:.1}% of the link speed, above {}%",
                            p, cfg.network_percent
                        ),
                    );
                }
            }
        }
        if let Some(d) = &f.dataplane {
            if d.flow_table_capacity > 0 && d.flow_table_percent > cfg.flow_table_percent {
                add(
                    AlertKind::FlowTable,
                    String::new(),
                    d.flow_table_percent,
                    cfg.flow_table_percent,
                    format!(
                        "flow table {:.1}% full ({} of {}), above {}%",
                        d.flow_table_percent,
                        d.flows,
                        d.flow_table_capacity,
                        cfg.flow_table_percent
                    ),
                );
            }
            for s in &d.services {
                for b in &s.backends {
                    if b.health == Some(Health::Down) {
                        add(
                            AlertKind::BackendDown,
                            format!("{}/{}", s.name, b.addr),
                            1.0,
                            1.0,
                            "failing its health checks".into(),
                        );
                    }
                }
                if s.usable_backends == 0 {
                    add(
                        AlertKind::NoHealthyBackend,
                        s.name.clone(),
                        0.0,
                        1.0,
                        format!(
                            "no active, healthy backend among {}: new connections are dropped",
                            s.backends.len()
                        ),
                    );
                }
            }
        }
        if let Some(c) = &f.cache {
            if let Some(hit) = c.hit_percent {
                if c.lookups_per_s >= cfg.cache_min_lookups_per_s && hit < cfg.cache_hit_percent {
                    add(
                        AlertKind::CacheHitRate,
                        String::new(),
                        hit,
                        cfg.cache_hit_percent,
                        format!(
                            "cache hit rate {:.1}% below {}% ({:.1} lookups/s)",
                            hit, cfg.cache_hit_percent, c.lookups_per_s
                        ),
                    );
                }
            }
            if c.redis_reachable == Some(false) {
                add(
                    AlertKind::RedisUnreachable,
                    String::new(),
                    0.0,
                    1.0,
                    "the last Redis call failed; requests go to the upstreams".into(),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::figures::{
        BackendFigures, CacheFigures, DataplaneFigures, ResourceFigures, ServiceFigures,
    };
    use crate::monitor::sample::BackendState;

    fn cpu_at(at_s: f64, cpu: f64) -> Figures {
        Figures {
            at_s,
            interval_s: 1.0,
            resources: Some(ResourceFigures {
                cpu_percent: cpu,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn backend(addr: &str, health: Option<Health>) -> BackendFigures {
        BackendFigures {
            addr: addr.into(),
            state: BackendState::Active,
            health,
            weight: 1,
            packets_per_s: 0.0,
            bits_per_s: 0.0,
            new_flows_per_s: 0.0,
            flows: 0,
            share_percent: 0.0,
            check_latency_ms: None,
        }
    }

    fn service_at(at_s: f64, backends: Vec<BackendFigures>) -> Figures {
        let usable_backends = backends
            .iter()
            .filter(|b| b.state == BackendState::Active && b.health != Some(Health::Down))
            .count();
        Figures {
            at_s,
            interval_s: 1.0,
            dataplane: Some(DataplaneFigures {
                services: vec![ServiceFigures {
                    name: "web".into(),
                    usable_backends,
                    backends,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn transitions(events: &[AlertEvent]) -> Vec<(Transition, AlertKind, String)> {
        events
            .iter()
            .map(|e| (e.transition, e.alert.kind, e.alert.target.clone()))
            .collect()
    }

    #[test]
    fn cpu_alert_waits_for_its_hold_time_fires_once_and_clears_once() {
        let mut e = AlertEngine::new(AlertConfig {
            hold_s: 5.0,
            ..Default::default()
        })
        .unwrap();
        assert!(e.evaluate(&cpu_at(0.0, 50.0)).is_empty());
        // Above 80% from t=1; not yet held for 5 s.
        for t in 1..6 {
            assert!(e.evaluate(&cpu_at(f64::from(t), 95.0)).is_empty(), "t={t}");
            assert!(e.firing().is_empty());
        }
        let fired = e.evaluate(&cpu_at(6.0, 96.0));
        assert_eq!(
            transitions(&fired),
            [(Transition::Fired, AlertKind::Cpu, String::new())]
        );
        assert_eq!(fired[0].alert.since_s, 1.0);
        assert_eq!(fired[0].alert.value, 96.0);
        assert!(
            fired[0].to_string().contains("CPU 96.0% above 80%"),
            "{}",
            fired[0]
        );
        // Still holding: listed, but no second event.
        for t in 7..20 {
            assert!(e.evaluate(&cpu_at(f64::from(t), 99.0)).is_empty());
        }
        assert_eq!(e.firing().len(), 1);
        assert_eq!(e.firing()[0].value, 99.0);
        let cleared = e.evaluate(&cpu_at(20.0, 10.0));
        assert_eq!(
            transitions(&cleared),
            [(Transition::Cleared, AlertKind::Cpu, String::new())]
        );
        assert!(e.evaluate(&cpu_at(21.0, 10.0)).is_empty());
        assert!(e.firing().is_empty());
    }

    #[test]
    fn new_thresholds_judge_the_next_tick_without_refiring() {
        let mut e = AlertEngine::new(AlertConfig {
            hold_s: 0.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(e.evaluate(&cpu_at(0.0, 95.0)).len(), 1);
        // A threshold still under the figure: the alert stays, with no second event.
        let lower = AlertConfig {
            hold_s: 0.0,
            cpu_percent: 90.0,
            ..Default::default()
        };
        e.set_config(lower.clone()).unwrap();
        assert!(e.evaluate(&cpu_at(1.0, 95.0)).is_empty());
        assert_eq!(e.firing()[0].threshold, 90.0);
        // Above the figure: it clears once, as if the figure had dropped.
        e.set_config(AlertConfig {
            cpu_percent: 100.0,
            ..lower
        })
        .unwrap();
        assert_eq!(e.firing().len(), 1, "judged at the next tick, not at once");
        let cleared = e.evaluate(&cpu_at(2.0, 95.0));
        assert_eq!(
            transitions(&cleared),
            [(Transition::Cleared, AlertKind::Cpu, String::new())]
        );
        assert!(e.firing().is_empty());
        let bad = AlertConfig {
            cpu_percent: 101.0,
            ..Default::default()
        };
        assert!(e.set_config(bad).is_err());
        assert_eq!(
            e.config().cpu_percent,
            100.0,
            "a refused config changes nothing"
        );
    }

    #[test]
    fn a_condition_shorter_than_its_hold_never_fires_nor_clears() {
        let mut e = AlertEngine::new(AlertConfig::default()).unwrap();
        for t in 0..9 {
            assert!(e.evaluate(&cpu_at(f64::from(t), 99.0)).is_empty());
        }
        assert!(e.evaluate(&cpu_at(9.0, 1.0)).is_empty());
        // A new excursion starts its hold time afresh.
        assert!(e.evaluate(&cpu_at(10.0, 99.0)).is_empty());
        assert!(e.evaluate(&cpu_at(19.0, 99.0)).is_empty());
        assert_eq!(e.evaluate(&cpu_at(20.0, 99.0)).len(), 1);
    }

    #[test]
    fn backend_down_and_no_healthy_backend_per_target() {
        let mut e = AlertEngine::new(AlertConfig {
            hold_overrides_s: BTreeMap::from([(AlertKind::BackendDown, 0.0)]),
            hold_s: 3.0,
            ..Default::default()
        })
        .unwrap();
        let a = "10.0.0.2:80";
        let b = "10.0.0.3:80";
        let one_down = service_at(0.0, vec![backend(a, Some(Health::Down)), backend(b, None)]);
        assert_eq!(
            transitions(&e.evaluate(&one_down)),
            [(
                Transition::Fired,
                AlertKind::BackendDown,
                format!("web/{a}")
            )]
        );
        let both_down = |t| {
            service_at(
                t,
                vec![
                    backend(a, Some(Health::Down)),
                    backend(b, Some(Health::Down)),
                ],
            )
        };
        assert_eq!(
            transitions(&e.evaluate(&both_down(1.0))),
            [(
                Transition::Fired,
                AlertKind::BackendDown,
                format!("web/{b}")
            )]
        );
        assert!(e.evaluate(&both_down(3.0)).is_empty());
        assert_eq!(
            transitions(&e.evaluate(&both_down(4.0))),
            [(
                Transition::Fired,
                AlertKind::NoHealthyBackend,
                "web".to_string()
            )]
        );
        assert_eq!(e.firing().len(), 3);
        let recovered = service_at(5.0, vec![backend(a, Some(Health::Up)), backend(b, None)]);
        assert_eq!(
            transitions(&e.evaluate(&recovered)),
            [
                (
                    Transition::Cleared,
                    AlertKind::BackendDown,
                    format!("web/{a}")
                ),
                (
                    Transition::Cleared,
                    AlertKind::BackendDown,
                    format!("web/{b}")
                ),
                (
                    Transition::Cleared,
                    AlertKind::NoHealthyBackend,
                    "web".to_string()
                ),
            ]
        );
    }

    #[test]
    fn cache_hit_rate_needs_traffic_and_redis_reachability_alerts() {
        let mut e = AlertEngine::new(AlertConfig {
            hold_s: 0.0,
            ..Default::default()
        })
        .unwrap();
        let cache = |at_s, lookups_per_s, hit, reachable| Figures {
            at_s,
            cache: Some(CacheFigures {
                lookups_per_s,
                hit_percent: Some(hit),
                redis_reachable: reachable,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            e.evaluate(&cache(0.0, 0.5, 10.0, Some(true))).is_empty(),
            "too few lookups"
        );
        assert_eq!(
            transitions(&e.evaluate(&cache(1.0, 50.0, 10.0, Some(false)))),
            [
                (Transition::Fired, AlertKind::CacheHitRate, String::new()),
                (
                    Transition::Fired,
                    AlertKind::RedisUnreachable,
                    String::new()
                ),
            ]
        );
        assert_eq!(
            transitions(&e.evaluate(&cache(2.0, 50.0, 90.0, None))),
            [
                (Transition::Cleared, AlertKind::CacheHitRate, String::new()),
                (
                    Transition::Cleared,
                    AlertKind::RedisUnreachable,
                    String::new()
                ),
            ]
        );
    }

    #[test]
    fn flow_table_and_disabled_alerts() {
        let full = |at_s| Figures {
            at_s,
            dataplane: Some(DataplaneFigures {
                flows: 95,
                flow_table_capacity: 100,
                flow_table_percent: 95.0,
                ..Default::default()
            }),
            resources: Some(ResourceFigures {
                memory_percent: 99.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut e = AlertEngine::new(AlertConfig {
            hold_s: 0.0,
            disabled: vec![AlertKind::Memory],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            transitions(&e.evaluate(&full(0.0))),
            [(Transition::Fired, AlertKind::FlowTable, String::new())]
        );
    }

    #[test]
    fn config_from_toml_with_defaults_and_overrides() {
        let c: AlertConfig = toml::from_str(
            "cpu_percent = 70\nhold_overrides_s = { backend_down = 0 }\ndisabled = [\"network\"]",
        )
        .unwrap();
        assert_eq!(c.cpu_percent, 70.0);
        assert_eq!(c.memory_percent, 85.0);
        assert_eq!(c.hold_s(AlertKind::BackendDown), 0.0);
        assert_eq!(c.hold_s(AlertKind::Cpu), 10.0);
        assert_eq!(c.disabled, [AlertKind::Network]);
        c.validate().unwrap();
        let err = toml::from_str::<AlertConfig>("cpu_percnt = 70").unwrap_err();
        assert!(err.to_string().contains("cpu_percnt"), "{err}");
        assert!(toml::from_str::<AlertConfig>("hold_overrides_s = { cpuu = 1 }").is_err());
    }

    #[test]
    fn config_validation_names_the_key() {
        let bad = AlertConfig {
            memory_percent: 120.0,
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "monitor.alerts.memory_percent = 120: must be a percentage between 0 and 100"
        );
        let bad = AlertConfig {
            hold_overrides_s: BTreeMap::from([(AlertKind::Cpu, -1.0)]),
            ..Default::default()
        };
        assert_eq!(
            AlertEngine::new(bad).unwrap_err(),
            AlertConfigError::Seconds {
                key: "hold_overrides_s.cpu".into(),
                value: -1.0
            }
        );
        let bad = AlertConfig {
            hold_s: f64::NAN,
            ..Default::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(AlertConfigError::Seconds { .. })
        ));
    }
}
