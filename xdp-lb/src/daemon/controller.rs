//! The one owner of the balancer's state: the desired configuration (the file, plus
//! runtime changes that are saved back into it), the planner and the data plane.
//! Every change, whatever its origin, goes through here in one order: validated,
//! planned, saved, written to the kernel, and recorded as typed events. Plain Rust
//! over the `Dataplane` trait, so it is tested against the in-memory fake.
//!
//! Precedence: runtime changes are written back into the configuration file, so the
//! file stays the truth. A reload (SIGHUP or `xdp-lb reload`) re-reads that file and
//! therefore keeps them; a change refuses to run while the file on disk differs from
//! what was last loaded (the operator's unloaded edits would otherwise be applied
//! behind their back, or overwritten).
//!
//! Health is a runtime overlay on the desired configuration, never saved into the
//! file: the planner is fed the *effective* configuration ([`effective`]) derived from
//! the desired one and the last health events. A backend its checks call down is
//! down (a draining one too: it loses its flows); an operator's `down`/`drain` wins
//! over a passing check, and `up` hands the backend back to its last known health;
//! a healthy backup is draining (keeps its flows, gets no new ones) while any
//! primary is up; with every backend down a service drops new flows or fails open
//! (`on_all_down`); a backend that came back ramps its weight up (`slow_start`).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use xdp_lb_common::Counters;

use crate::{
    admin::proto::{
        ApiError, BackendRow, BackendStatus, Changed, Command, ErrorKind, Event, HealthStatus,
        NewService, Origin, Reply, ServiceStatus, Serving, Status,
    },
    config::{
        self,
        edit::{self, Edit},
        BackendConfig, BackendSpec, BackendState, Config, Forwarding, ServiceConfig, Sources,
    },
    dataplane::{Dataplane, FlowCounts},
    health::{
        policy::{self, slow_start_next_step, slow_start_weight},
        BackendHealth, HealthChecker, HealthEvent, Member, OnAllDown, Selection, Target,
    },
    monitor::{BackendSample, DataplaneSample, ReasonCount, ServiceSample},
    plan::{Change, Plan, Planner, ServiceIds},
};

/// The monitor walks the flow table at most once per this many walk durations.
const WALK_BUDGET: u32 = 30;
/// Events kept for `status`.
const EVENT_HISTORY: usize = 64;
/// Flow-table entries walked per status call (one syscall pair each).
pub const DEFAULT_FLOW_SCAN_LIMIT: u64 = 4_000_000;

/// Counters of every service and backend at one instant, by name.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    services: HashMap<String, Counters>,
    backends: HashMap<(String, SocketAddr), Counters>,
}

/// One backend as `status` and the monitor both read it (`Controller::backend_views`).
struct BackendView<'a> {
    key: Key,
    counters: Counters,
    /// The sample before the latest, when there are two: the base of the rates.
    previous: Option<&'a Counters>,
    table_share: f64,
    flows: u64,
}

/// A backend of a service, by name and address: how health is keyed.
type Key = (String, SocketAddr);

/// What the controller needs of the health checker: `HealthChecker` in the daemon, a
/// recorder in the tests.
pub trait HealthSource {
    /// The backends to check now (a reload, a runtime change).
    fn update(&mut self, targets: Vec<Target>);
    /// The checker's view of every target, for `status`.
    fn snapshot(&self) -> Vec<BackendHealth>;
}

impl HealthSource for HealthChecker {
    fn update(&mut self, targets: Vec<Target>) {
        HealthChecker::update(self, targets);
    }

    fn snapshot(&self) -> Vec<BackendHealth> {
        HealthChecker::snapshot(self)
    }
}

/// The last health event of one checked backend: the runtime overlay.
#[derive(Debug, Clone)]
struct Health {
    up: bool,
    /// When it flipped (slow start counts from here).
    since: Instant,
    /// Why, in words: the Event's reason.
    reason: String,
    transitions: u64,
}

/// The configuration the planner gets, and what health made of each service.
#[derive(Debug, Clone)]
pub struct Effective {
    pub cfg: Config,
    /// Per service of `cfg`, in order.
    pub serving: Vec<Serving>,
    /// When the next slow-start step changes a weight.
    pub next_step: Option<Instant>,
}

/// `desired` with health applied; `health` holds the backends whose checks reported
/// (absent: up, the checker's initial state). Pure, so every rule is unit-tested.
fn effective(desired: &Config, health: &HashMap<Key, Health>, now: Instant) -> Effective {
    let mut cfg = desired.clone();
    let mut serving = Vec::with_capacity(cfg.services.len());
    let mut next_step: Option<Instant> = None;
    for svc in &mut cfg.services {
        let record = |addr: SocketAddr| health.get(&(svc.name.clone(), addr));
        let healthy: Vec<bool> = svc
            .backends
            .iter()
            .map(|b| record(b.socket_addr()).is_none_or(|h| h.up))
            .collect();
        // Only backends the operator left active compete for new flows.
        let members: Vec<usize> = (0..svc.backends.len())
            .filter(|&i| svc.backends[i].state == BackendState::Active)
            .collect();
        let picked = policy::eligible(
            &members
                .iter()
                .map(|&i| Member {
                    backup: svc.backends[i].backup,
                    up: healthy[i],
                })
                .collect::<Vec<_>>(),
            svc.on_all_down,
        );
        let chosen: HashSet<usize> = picked.backends.iter().map(|&k| members[k]).collect();
        serving.push(if members.is_empty() {
            Serving::NoActive
        } else {
            match picked.selection {
                Selection::Primaries => Serving::Primaries,
                Selection::Backups => Serving::Backups,
                Selection::AllDownDrop => Serving::AllDownDrop,
                Selection::AllDownFailOpen => Serving::AllDownFailOpen,
            }
        });
        let fail_open = picked.selection == Selection::AllDownFailOpen;
        let (name, slow_start) = (svc.name.clone(), svc.slow_start);
        for (i, b) in svc.backends.iter_mut().enumerate() {
            b.state = match b.state {
                BackendState::Down => BackendState::Down,
                // A draining backend that fails its checks loses its flows too.
                BackendState::Draining if healthy[i] => BackendState::Draining,
                BackendState::Draining => BackendState::Down,
                BackendState::Active if chosen.contains(&i) => BackendState::Active,
                // A healthy backup while a primary is up: its flows stay, new ones
                // go to the primaries.
                BackendState::Active if healthy[i] => BackendState::Draining,
                BackendState::Active => BackendState::Down,
            };
            if b.state != BackendState::Active || fail_open {
                continue;
            }
            let (Some(ramp), Some(h)) = (slow_start, health.get(&(name.clone(), b.socket_addr())))
            else {
                continue;
            };
            let since_up = now.saturating_duration_since(h.since);
            b.weight = slow_start_weight(b.weight, since_up, ramp);
            if let Some(step) = slow_start_next_step(since_up, ramp) {
                let at = now + step;
                next_step = Some(next_step.map_or(at, |n| n.min(at)));
            }
        }
    }
    Effective {
        cfg,
        serving,
        next_step,
    }
}

/// The health-check targets of `cfg`: every backend whose check is not "none".
pub fn health_targets(cfg: &Config) -> Vec<Target> {
    cfg.services
        .iter()
        .flat_map(|svc| {
            svc.backends.iter().filter_map(move |b| {
                // Validated when the configuration was loaded or changed.
                let check = svc.health_check(b).ok().flatten()?;
                Some(Target::new(svc.name.clone(), b.socket_addr(), check))
            })
        })
        .collect()
}

/// What the planner is first given: `cfg` with every backend healthy (the checker's
/// initial state), so backups start out draining.
pub fn startup_config(cfg: &Config) -> Config {
    effective(cfg, &HashMap::new(), Instant::now()).cfg
}

pub struct Controller<D> {
    sources: Sources,
    cfg: Config,
    /// The configuration file's text as last loaded or written.
    file_text: Option<String>,
    planner: Planner,
    dp: D,
    generation: u64,
    started: Instant,
    seq: u64,
    events: VecDeque<Event>,
    /// Drains with a timeout: when each backend goes down.
    drains: HashMap<(String, SocketAddr), (Instant, Duration)>,
    samples: VecDeque<Sample>,
    flow_scan_limit: u64,
    /// The last flow-table walk for the monitor, when it was taken, and how long
    /// it took.
    monitor_flows: Option<(Instant, FlowCounts, Duration)>,
    interfaces: Vec<String>,
    /// Health of the checked backends that reported (see the module docs).
    health: HashMap<Key, Health>,
    checker: Option<Box<dyn HealthSource>>,
    /// What each service served at the last publish, to log changes once.
    serving: HashMap<String, (Serving, Instant)>,
    /// When the next slow-start step is due.
    ramp_deadline: Option<Instant>,
    health_transitions: u64,
    pinned: Option<Pinned>,
    /// The last least-conn reconciliation: when, and how long its walk took.
    conns_walk: Option<(Instant, Duration)>,
}

/// Where this run's state is pinned and what it found there at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub dir: std::path::PathBuf,
    /// Pinned state of a previous run was adopted.
    pub adopted: bool,
    /// Flow-table entries found at adoption.
    pub flows: u64,
}

impl<D: Dataplane> Controller<D> {
    /// Takes over a data plane already programmed with `cfg` by `planner`;
    /// `initial` are the changes that first programming made.
    pub fn new(
        sources: Sources,
        cfg: Config,
        file_text: Option<String>,
        planner: Planner,
        dp: D,
        initial: Vec<Change>,
        interfaces: Vec<String>,
    ) -> Self {
        let mut c = Controller {
            sources,
            cfg,
            file_text,
            planner,
            dp,
            generation: 1,
            started: Instant::now(),
            seq: 0,
            events: VecDeque::new(),
            drains: HashMap::new(),
            samples: VecDeque::new(),
            flow_scan_limit: DEFAULT_FLOW_SCAN_LIMIT,
            monitor_flows: None,
            interfaces,
            pinned: None,
            health: HashMap::new(),
            checker: None,
            serving: HashMap::new(),
            ramp_deadline: None,
            health_transitions: 0,
            conns_walk: None,
        };
        for change in initial {
            c.record(Origin::File, None, change);
        }
        // The caller may have programmed `cfg` as it is: publish the effective
        // configuration (backups draining) before anything else happens.
        let cfg = c.cfg.clone();
        let health = c.health.clone();
        match c.publish(&cfg, &health, Instant::now()) {
            Ok(plan) => {
                for change in plan.changes {
                    c.record(Origin::File, None, change);
                }
            }
            Err(e) => log::error!("publishing the effective configuration: {e}"),
        }
        c
    }

    /// Hands the health checker to the controller, which gives it the current
    /// targets now and after every committed change.
    pub fn attach_health(&mut self, mut checker: Box<dyn HealthSource>) {
        checker.update(health_targets(&self.cfg));
        self.checker = Some(checker);
    }

    /// The configuration the data plane runs: the desired one with health applied.
    pub fn effective(&self) -> Effective {
        effective(&self.cfg, &self.health, Instant::now())
    }

    /// Applies one health event: the backend's table entries follow its health, the
    /// changes are recorded with origin health and the check's verdict as reason.
    pub fn health_event(&mut self, ev: HealthEvent, now: Instant) -> Vec<Event> {
        let key = (ev.service.clone(), ev.backend);
        if !self.checked().contains(&key) {
            // Sent just before a reload removed it (or stopped checking it).
            log::debug!(
                "health: ignoring an event for {} of service {}, which is not checked any more",
                ev.backend,
                ev.service
            );
            return Vec::new();
        }
        let reason = match (&ev.reason, ev.latency) {
            (Some(failure), _) => format!("health check failed: {failure}"),
            (None, Some(latency)) => format!(
                "health check passed in {:.1} ms",
                latency.as_secs_f64() * 1000.0
            ),
            (None, None) => "health check passed".to_string(),
        };
        let transitions = self.health.get(&key).map_or(0, |h| h.transitions) + 1;
        self.health.insert(
            key,
            Health {
                up: ev.up,
                since: ev.at,
                reason: reason.clone(),
                transitions,
            },
        );
        self.health_transitions += 1;
        let cfg = self.cfg.clone();
        let health = self.health.clone();
        let word = if ev.up { "up" } else { "down" };
        match self.publish(&cfg, &health, now) {
            Ok(plan) => {
                let events: Vec<Event> = plan
                    .changes
                    .into_iter()
                    .map(|c| self.record(Origin::Health, Some(reason.clone()), c))
                    .collect();
                if events.is_empty() {
                    let admin = backend_state(&self.cfg, &ev.service, ev.backend)
                        .map_or("unknown", BackendState::as_str);
                    log::info!(
                        "[health] service {}: {} is {word} ({reason}); no table change (admin state {admin})",
                        ev.service,
                        ev.backend
                    );
                }
                events
            }
            Err(e) => {
                log::error!(
                    "[health] service {}: {} is {word} ({reason}) but the change could not be applied: {e}; the next change retries it",
                    ev.service,
                    ev.backend
                );
                Vec::new()
            }
        }
    }

    /// Backends that are health-checked now.
    fn checked(&self) -> HashSet<Key> {
        health_targets(&self.cfg)
            .into_iter()
            .map(|t| (t.service, t.backend))
            .collect()
    }

    /// Plans and writes the effective form of `desired` under `health`; on success
    /// the planner, generation, slow-start timer and serving log follow. On error
    /// nothing changed.
    fn publish(
        &mut self,
        desired: &Config,
        health: &HashMap<Key, Health>,
        now: Instant,
    ) -> Result<Plan, ApiError> {
        let eff = effective(desired, health, now);
        let mut planner = self.planner.clone();
        let plan = planner
            .apply(&eff.cfg)
            .map_err(|e| ApiError::new(ErrorKind::Invalid, error_text(&e)))?;
        self.dp.apply(&plan).map_err(|e| {
            ApiError::new(
                ErrorKind::Dataplane,
                format!("the kernel refused the change: {}", error_text(&e)),
            )
        })?;
        self.planner = planner;
        if !plan.is_empty() {
            self.generation += 1;
        }
        self.ramp_deadline = eff.next_step;
        self.log_serving(desired, &eff.serving, now);
        Ok(plan)
    }

    /// Logs, once each, a service entering or leaving "every backend down" (loudly)
    /// and the backups taking over or handing back.
    fn log_serving(&mut self, desired: &Config, serving: &[Serving], now: Instant) {
        let mut seen = HashSet::new();
        for (svc, &now_serving) in desired.services.iter().zip(serving) {
            seen.insert(svc.name.clone());
            let (before, since) = self
                .serving
                .get(&svc.name)
                .copied()
                .unwrap_or((Serving::Primaries, now));
            if before == now_serving {
                continue;
            }
            let all_down =
                |s: Serving| matches!(s, Serving::AllDownDrop | Serving::AllDownFailOpen);
            let lasted = humantime::format_duration(Duration::from_millis(
                now.saturating_duration_since(since).as_millis() as u64,
            ));
            if all_down(before) && !all_down(now_serving) {
                log::warn!(
                    "service {}: ALL BACKENDS DOWN ended after {lasted}: new connections go to the {now_serving} again",
                    svc.name
                );
            }
            match now_serving {
                Serving::AllDownDrop => log::error!(
                    "service {}: ALL BACKENDS DOWN: on_all_down = \"drop\": new connections are dropped (counted as drop_no_backend) until a backend passes its checks",
                    svc.name
                ),
                Serving::AllDownFailOpen => log::error!(
                    "service {}: ALL BACKENDS DOWN: on_all_down = \"fail-open\": new connections go to every configured backend as if all were up",
                    svc.name
                ),
                Serving::Backups => log::warn!(
                    "service {}: every primary backend is down: the backups take new connections",
                    svc.name
                ),
                Serving::Primaries if before == Serving::Backups => log::info!(
                    "service {}: a primary backend is up again: new connections go to the primaries",
                    svc.name
                ),
                Serving::Primaries | Serving::NoActive => {}
            }
            self.serving.insert(svc.name.clone(), (now_serving, now));
        }
        self.serving.retain(|name, _| seen.contains(name));
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Records where the state is pinned, for `status` and the exit message.
    pub fn set_pinned(&mut self, pinned: Pinned) {
        self.pinned = Some(pinned);
    }

    pub fn pinned(&self) -> Option<&Pinned> {
        self.pinned.as_ref()
    }

    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn set_flow_scan_limit(&mut self, limit: u64) {
        self.flow_scan_limit = limit;
    }

    /// Serves one admin command. On error nothing changed.
    pub fn handle(&mut self, cmd: Command) -> Result<Reply, ApiError> {
        match cmd {
            Command::Status => Ok(Reply::Status(self.status())),
            Command::ServiceList => Ok(Reply::Services {
                services: self.status().services,
            }),
            Command::BackendList { service } => {
                if let Some(name) = &service {
                    self.service_index(name)?;
                }
                let backends = self
                    .status()
                    .services
                    .into_iter()
                    .filter(|s| service.as_ref().is_none_or(|n| *n == s.name))
                    .flat_map(|s| {
                        let name = s.name;
                        s.backends.into_iter().map(move |b| BackendRow {
                            service: name.clone(),
                            backend: b,
                        })
                    })
                    .collect();
                Ok(Reply::Backends { backends })
            }
            Command::Reload => self.reload().map(Reply::Changed),
            // The daemon's loop answers these from the monitor it owns.
            Command::Monitor | Command::Alerts | Command::Report { .. } => Err(ApiError::new(
                ErrorKind::Unavailable,
                "the monitor is not running in this daemon",
            )),
            change => self
                .change(&change, Origin::Admin, None)
                .map(Reply::Changed),
        }
    }

    /// Re-reads the configuration file and applies the difference.
    pub fn reload(&mut self) -> Result<Changed, ApiError> {
        let (new, text) = config::load_with_text(&self.sources)
            .map_err(|e| ApiError::new(ErrorKind::Invalid, error_text(&e)))?;
        refuse_local_backends(&new)?;
        let fixed = |c: &Config| {
            (
                c.interfaces.clone(),
                c.xdp_mode,
                c.attach,
                c.flow_table_size,
                c.max_services,
                c.max_table_size,
                c.nat_handshake_guard,
                // Alert thresholds apply on reload (the daemon's loop hands them to the
                // monitor); the sampling, the endpoint and the history size do not.
                c.monitor.interval,
                c.monitor.metrics_listen,
                c.monitor.monitor.history,
            )
        };
        if fixed(&new) != fixed(&self.cfg) {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                "interfaces, xdp_mode, attach, flow_table_size, max_services, max_table_size, nat_handshake_guard and [monitor] (except [monitor.alerts]) only change on restart",
            ));
        }
        if new.cache != self.cfg.cache {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                "the [cache] section only changes on restart",
            ));
        }
        let events = self.commit(new, text, Origin::File, None, None)?;
        Ok(Changed {
            generation: self.generation,
            events,
            saved_to: None,
        })
    }

    /// Applies a runtime change: checked, saved into the file, then written to the
    /// kernel.
    pub fn change(
        &mut self,
        cmd: &Command,
        origin: Origin,
        reason: Option<String>,
    ) -> Result<Changed, ApiError> {
        let path = self.sources.config.clone().ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotPersistable,
                "this daemon was started without --config: runtime changes are saved into the configuration file, so there is nowhere to keep them; restart with `xdp-lb run --config FILE`",
            )
        })?;
        let old_text = self.file_text.clone().unwrap_or_default();
        match std::fs::read_to_string(&path) {
            Ok(now) if now == old_text => {}
            Ok(_) => {
                return Err(ApiError::new(
                    ErrorKind::NotPersistable,
                    format!(
                        "{} changed on disk since it was loaded; run `xdp-lb reload` (or send SIGHUP) to apply it first, then repeat the change",
                        path.display()
                    ),
                ))
            }
            Err(e) => {
                return Err(ApiError::new(
                    ErrorKind::NotPersistable,
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        }
        let (new, edit, drain) = mutate(&self.cfg, cmd)?;
        config::validate_services(&new)
            .map_err(|e| ApiError::new(ErrorKind::Invalid, error_text(&e)))?;
        refuse_local_backends(&new)?;
        let new_text = edit::apply(&old_text, &edit)
            .map_err(|e| ApiError::new(ErrorKind::NotPersistable, error_text(&e)))?;
        // The file must say exactly what will be applied, or a restart would differ.
        match config::parse_text(&new_text, &self.sources) {
            Ok(reread) if reread == new => {}
            Ok(_) => {
                return Err(ApiError::new(
                    ErrorKind::NotPersistable,
                    "internal error: the edited file would not load as the changed configuration; nothing was changed (please report this)",
                ))
            }
            Err(e) => {
                return Err(ApiError::new(
                    ErrorKind::NotPersistable,
                    format!(
                        "internal error: the edited file would not load ({}); nothing was changed",
                        error_text(&e)
                    ),
                ))
            }
        }
        edit::write_atomically(&path, &new_text)
            .map_err(|e| ApiError::new(ErrorKind::NotPersistable, error_text(&e)))?;
        match self.commit(new, Some(new_text), origin, reason, drain) {
            Ok(events) => Ok(Changed {
                generation: self.generation,
                events,
                saved_to: Some(path.display().to_string()),
            }),
            Err(e) => {
                // The kernel refused: the file goes back to what is running.
                if let Err(w) = edit::write_atomically(&path, &old_text) {
                    log::error!(
                        "could not restore {} after a failed change: {}",
                        path.display(),
                        error_text(&w)
                    );
                }
                Err(e)
            }
        }
    }

    /// Plans `new` and writes it to the data plane; on success it becomes the
    /// running configuration. On error the planner and the state are as before.
    fn commit(
        &mut self,
        new: Config,
        text: Option<String>,
        origin: Origin,
        reason: Option<String>,
        drain: Option<DrainTimer>,
    ) -> Result<Vec<Event>, ApiError> {
        // Health of backends that are no longer checked (removed, or their check
        // turned off) is void: they count as up.
        let targets = health_targets(&new);
        let checked: HashSet<Key> = targets
            .iter()
            .map(|t| (t.service.clone(), t.backend))
            .collect();
        let mut health = self.health.clone();
        health.retain(|k, _| checked.contains(k));
        // The planner gets the effective configuration; the desired one is kept (and
        // was saved by the caller).
        let plan = self.publish(&new, &health, Instant::now())?;
        // Only the services make tables; a reload that changed nothing else but
        // [monitor.alerts] is announced by the monitor, not explained by health here.
        let desired_changed = new.services != self.cfg.services;
        let alerts_changed = new.monitor != self.cfg.monitor;
        self.health = health;
        self.cfg = new;
        self.file_text = text;
        if let Some(checker) = &mut self.checker {
            checker.update(targets);
        }
        // Timers of backends that are no longer draining (undrained, removed, or
        // changed in the file) are void.
        let cfg = &self.cfg;
        self.drains.retain(|(svc, addr), _| {
            backend_state(cfg, svc, *addr) == Some(BackendState::Draining)
        });
        if let Some(d) = drain {
            self.drains
                .insert((d.service, d.backend), (Instant::now() + d.after, d.after));
        }
        let events: Vec<Event> = plan
            .changes
            .into_iter()
            .map(|c| self.record(origin, reason.clone(), c))
            .collect();
        if events.is_empty() && desired_changed {
            // E.g. `up` for a backend its checks call down: saved, and it comes back
            // when they pass.
            log::info!(
                "{origin}: saved; the tables are unchanged because health decides the backends' effective state (see `xdp-lb status`)"
            );
        } else if events.is_empty() && !alerts_changed {
            log::info!("{origin}: configuration unchanged");
        }
        Ok(events)
    }

    fn record(&mut self, origin: Origin, reason: Option<String>, change: Change) -> Event {
        self.seq += 1;
        let event = Event {
            seq: self.seq,
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            origin,
            reason,
            change,
        };
        log::info!("{event}");
        if self.events.len() == EVENT_HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
        event
    }

    /// Least-conn: rewrites the kernel's connection counts from the flow tables, so
    /// silent LRU evictions, idle UDP flows and closes the data plane never saw
    /// (DSR) cannot make them drift for good. Does nothing without a least-conn
    /// service; otherwise walks at most every `every`, and never more often than 30
    /// times the last walk took (the same budget as the monitor's walk).
    pub fn reconcile_conns(&mut self, now: Instant, every: Duration) {
        let lc: HashSet<&str> = self
            .cfg
            .services
            .iter()
            .filter(|s| s.algorithm.counts_connections())
            .map(|s| s.name.as_str())
            .collect();
        if lc.is_empty() {
            return;
        }
        if self
            .conns_walk
            .is_some_and(|(at, took)| now.duration_since(at) < every.max(took * WALK_BUDGET))
        {
            return;
        }
        let current: HashMap<u32, u32> = self
            .planner
            .assignments()
            .iter()
            .filter(|a| lc.contains(a.name.as_str()))
            .flat_map(|a| a.slots.iter().map(|s| (s.id, s.generation)))
            .collect();
        let started = Instant::now();
        match self.dp.reconcile_conns(&current, self.flow_scan_limit) {
            Ok(Some(_)) => {}
            Ok(None) => log::warn!(
                "least-conn: the flow tables hold more than {} entries; connection counts were not reconciled",
                self.flow_scan_limit
            ),
            Err(e) => log::warn!("least-conn: reconciling connection counts failed: {e}"),
        }
        self.conns_walk = Some((now, started.elapsed()));
    }

    /// When the next timer fires: a drain timeout or a slow-start step.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.drains
            .values()
            .map(|(at, _)| *at)
            .chain(self.ramp_deadline)
            .min()
    }

    /// Takes down every draining backend whose timeout has expired.
    pub fn fire_timers(&mut self, now: Instant) {
        let due: Vec<((String, SocketAddr), Duration)> = self
            .drains
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, (_, after))| (k.clone(), *after))
            .collect();
        for ((service, backend), after) in due {
            self.drains.remove(&(service.clone(), backend));
            let cmd = Command::BackendDown {
                service: service.clone(),
                backend: backend.to_string(),
                force: true,
            };
            let reason = format!(
                "drain timeout of {} expired",
                humantime::format_duration(after)
            );
            if let Err(e) = self.change(&cmd, Origin::Timer, Some(reason)) {
                log::error!(
                    "service {service}: drain timeout of {backend} expired but it cannot be taken down: {e}; it stays draining"
                );
            }
        }
        if self.ramp_deadline.is_some_and(|at| at <= now) {
            let cfg = self.cfg.clone();
            let health = self.health.clone();
            match self.publish(&cfg, &health, now) {
                Ok(plan) => {
                    for change in plan.changes {
                        self.record(Origin::Timer, Some("slow start".into()), change);
                    }
                }
                Err(e) => {
                    // Retried at the next change; do not spin on the same deadline.
                    self.ramp_deadline = None;
                    log::error!("slow start step could not be applied: {e}");
                }
            }
        }
    }

    /// Reads every counter once; rates come from the last two samples.
    pub fn sample(&mut self, now: Instant) {
        let mut s = Sample {
            at: now,
            services: HashMap::new(),
            backends: HashMap::new(),
        };
        for a in self.planner.assignments() {
            if let Ok(c) = self.dp.service_counters(a.id) {
                s.services.insert(a.name.clone(), c);
            }
            for (addr, id) in &a.backends {
                if let Ok(c) = self.dp.backend_counters(*id) {
                    s.backends.insert((a.name.clone(), *addr), c);
                }
            }
        }
        if self.samples.len() == 2 {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Per-second rates of a counter between the two latest samples.
    fn rates(&self, now: &Counters, prev: Option<&Counters>, secs: f64) -> (f64, f64, f64) {
        let Some(prev) = prev else {
            return (0.0, 0.0, 0.0);
        };
        if secs <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        // A counter that went backwards was reset (a slot reused, a restart): count
        // from zero instead of reporting a negative or huge rate.
        let d = |n: u64, p: u64| if n >= p { n - p } else { n } as f64 / secs;
        (
            d(now.packets, prev.packets),
            d(now.bytes, prev.bytes) * 8.0,
            d(now.new_flows, prev.new_flows),
        )
    }

    /// The monitor's view of the data plane as of the latest `sample`. The flow table
    /// is walked at most once per `flows_every`, and never more often than 30 times
    /// the last walk took, so the walk stays under about 3% of a core whatever the
    /// table holds (about 2 s at a million flows: see the status benchmark); in
    /// between, the last walk's counts are reported.
    pub fn monitor_sample(&mut self, now: Instant, flows_every: Duration) -> DataplaneSample {
        let stale = self.monitor_flows.as_ref().is_none_or(|(at, _, took)| {
            now.duration_since(*at) >= flows_every.max(*took * WALK_BUDGET)
        });
        if stale {
            let started = Instant::now();
            if let Ok(f) = self.dp.flow_counts(self.flow_scan_limit) {
                self.monitor_flows = Some((now, f, started.elapsed()));
            }
        }
        let flows = self
            .monitor_flows
            .as_ref()
            .map(|(_, f, _)| f.clone())
            .unwrap_or_default();
        let last = self.samples.back();
        let assignments = self.planner.assignments();
        let checked = self.checked();
        let checks = self.check_snapshots();
        let services = self
            .cfg
            .services
            .iter()
            .map(|svc| {
                let c = last
                    .and_then(|l| l.services.get(&svc.name))
                    .copied()
                    .unwrap_or_default();
                let ids = assignments.iter().find(|a| a.name == svc.name);
                ServiceSample {
                    name: svc.name.clone(),
                    packets: c.packets,
                    bytes: c.bytes,
                    new_flows: c.new_flows,
                    backends: svc
                        .backends
                        .iter()
                        .zip(self.backend_views(svc, ids, &flows))
                        .map(|(b, v)| {
                            let key = v.key;
                            BackendSample {
                                addr: key.1.to_string(),
                                state: b.state,
                                health: checked.contains(&key).then(|| {
                                    crate::monitor::sample::Health::from_up(
                                        self.health.get(&key).is_none_or(|h| h.up),
                                    )
                                }),
                                weight: b.weight,
                                packets: v.counters.packets,
                                bytes: v.counters.bytes,
                                new_flows: v.counters.new_flows,
                                flows: v.flows,
                                last_check_latency: checks.get(&key).and_then(|h| h.last_latency),
                                health_transitions: self
                                    .health
                                    .get(&key)
                                    .map_or(0, |h| h.transitions),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        DataplaneSample {
            services,
            reasons: self
                .dp
                .global_counters()
                .unwrap_or_default()
                .into_iter()
                .map(|(reason, packets)| ReasonCount {
                    reason: reason.to_string(),
                    packets,
                })
                .collect(),
            flows_total: flows.scanned,
            flow_table_capacity: u64::from(self.cfg.flow_table_size),
        }
    }

    /// What `status` and the monitor both show of each backend of `svc`, in its order:
    /// counters as of the latest sample (and the one before, for rates), share of the
    /// published table, and flow entries of its current slot in `flows`.
    fn backend_views(
        &self,
        svc: &ServiceConfig,
        ids: Option<&ServiceIds>,
        flows: &FlowCounts,
    ) -> Vec<BackendView<'_>> {
        let last = self.samples.back();
        let prev = self.samples.front().filter(|_| self.samples.len() == 2);
        svc.backends
            .iter()
            .map(|b| {
                let addr = b.socket_addr();
                let key = (svc.name.clone(), addr);
                let slot = ids.and_then(|a| a.slots.iter().find(|s| s.addr == addr));
                BackendView {
                    counters: last
                        .and_then(|l| l.backends.get(&key))
                        .copied()
                        .unwrap_or_default(),
                    previous: prev.and_then(|p| p.backends.get(&key)),
                    table_share: match (slot, ids) {
                        (Some(s), Some(a)) if a.table_size > 0 => {
                            100.0 * f64::from(s.table_entries) / f64::from(a.table_size)
                        }
                        _ => 0.0,
                    },
                    flows: slot
                        .and_then(|s| flows.by_backend.get(&(s.id, s.generation)))
                        .copied()
                        .unwrap_or(0),
                    key,
                }
            })
            .collect()
    }

    /// The checker's latest result per backend (empty without a checker).
    fn check_snapshots(&self) -> HashMap<Key, BackendHealth> {
        self.checker
            .as_ref()
            .map(|c| c.snapshot())
            .unwrap_or_default()
            .into_iter()
            .map(|h| ((h.service.clone(), h.backend), h))
            .collect()
    }

    pub fn status(&self) -> Status {
        let flows = self
            .dp
            .flow_counts(self.flow_scan_limit)
            .unwrap_or_default();
        let (prev, last, window) = match (self.samples.front(), self.samples.back()) {
            (Some(p), Some(l)) if self.samples.len() == 2 => {
                (Some(p), Some(l), (l.at - p.at).as_secs_f64())
            }
            _ => (None, self.samples.back(), 0.0),
        };
        let assignments = self.planner.assignments();
        let now = Instant::now();
        let eff = effective(&self.cfg, &self.health, now);
        let checks = self.check_snapshots();
        let checked = self.checked();
        let services =
            self.cfg
                .services
                .iter()
                .enumerate()
                .map(|(i, svc)| {
                    let eff_svc = &eff.cfg.services[i];
                    let ids = assignments.iter().find(|a| a.name == svc.name);
                    let counters = last
                        .and_then(|l| l.services.get(&svc.name))
                        .copied()
                        .unwrap_or_default();
                    let (pps, bps, nfps) = self.rates(
                        &counters,
                        prev.and_then(|p| p.services.get(&svc.name)),
                        window,
                    );
                    let backends =
                        svc.backends
                            .iter()
                            .zip(&eff_svc.backends)
                            .zip(self.backend_views(svc, ids, &flows))
                            .map(|((b, eb), v)| {
                                let key = v.key;
                                let c = v.counters;
                                let (pps, bps, nfps) = self.rates(&c, v.previous, window);
                                BackendStatus {
                                    addr: key.1,
                                    weight: b.weight,
                                    state: b.state,
                                    table_share: v.table_share,
                                    flows: v.flows,
                                    packets: c.packets,
                                    bytes: c.bytes,
                                    new_flows: c.new_flows,
                                    packets_per_sec: pps,
                                    bits_per_sec: bps,
                                    new_flows_per_sec: nfps,
                                    drain_remaining_secs: self.drains.get(&key).map(|(at, _)| {
                                        at.saturating_duration_since(now).as_secs_f64()
                                    }),
                                    backup: b.backup,
                                    effective_state: eb.state,
                                    effective_weight: eb.weight,
                                    health: checked.contains(&key).then(|| {
                                        self.health_status(&key, checks.get(&key), svc, b, now)
                                    }),
                                }
                            })
                            .collect();
                    ServiceStatus {
                        name: svc.name.clone(),
                        endpoint: svc.endpoint(),
                        algorithm: svc.algorithm,
                        forwarding: svc.forwarding,
                        table_size: svc.table_size,
                        from_flags: i >= self.cfg.file_services,
                        packets: counters.packets,
                        bytes: counters.bytes,
                        new_flows: counters.new_flows,
                        packets_per_sec: pps,
                        bits_per_sec: bps,
                        new_flows_per_sec: nfps,
                        on_all_down: svc.on_all_down,
                        serving: eff.serving[i],
                        backends,
                    }
                })
                .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            generation: self.generation,
            config_file: self
                .sources
                .config
                .as_ref()
                .map(|p| p.display().to_string()),
            interfaces: self.interfaces.clone(),
            services,
            flows_scanned: flows.scanned,
            flows_truncated: flows.truncated,
            rate_window_secs: window,
            recent_events: self.events.iter().cloned().collect(),
            pin_dir: self.pinned.as_ref().map(|p| p.dir.display().to_string()),
            adopted: self.pinned.as_ref().is_some_and(|p| p.adopted),
            adopted_flows: self.pinned.as_ref().map_or(0, |p| p.flows),
            health_transitions: self.health_transitions,
        }
    }

    /// The health part of a backend's status: the checker's record (last result,
    /// latency) and the controller's (what it applied, and why).
    fn health_status(
        &self,
        key: &Key,
        check: Option<&BackendHealth>,
        svc: &ServiceConfig,
        b: &BackendConfig,
        now: Instant,
    ) -> HealthStatus {
        let applied = self.health.get(key);
        let resolved = svc.health_check(b).ok().flatten();
        HealthStatus {
            up: applied.is_none_or(|h| h.up),
            check: resolved
                .as_ref()
                .map_or_else(|| "none".to_string(), |c| c.kind().to_string()),
            target: resolved.as_ref().map_or(key.1, |c| c.target),
            last_result: check.and_then(|c| c.last.as_ref()).map(|r| match r {
                Ok(_) => "ok".to_string(),
                Err(failure) => failure.to_string(),
            }),
            last_latency_ms: check
                .and_then(|c| c.last_latency)
                .map(|l| l.as_secs_f64() * 1000.0),
            last_check_secs_ago: check
                .and_then(|c| c.last_check)
                .map(|at| now.saturating_duration_since(at).as_secs_f64()),
            checks: check.map_or(0, |c| c.checks),
            streak: check.map_or(0, |c| c.streak),
            transitions: applied.map_or(0, |h| h.transitions),
            reason: applied.map(|h| h.reason.clone()),
            since_secs: applied.map(|h| now.saturating_duration_since(h.since).as_secs_f64()),
        }
    }

    fn service_index(&self, name: &str) -> Result<usize, ApiError> {
        find_service(&self.cfg, name)
    }
}

/// A drain whose timeout starts when the change is committed.
struct DrainTimer {
    service: String,
    backend: SocketAddr,
    after: Duration,
}

fn backend_state(cfg: &Config, service: &str, addr: SocketAddr) -> Option<BackendState> {
    cfg.services
        .iter()
        .find(|s| s.name == service)?
        .backends
        .iter()
        .find(|b| b.socket_addr() == addr)
        .map(|b| b.state)
}

/// "outer: inner: innermost", each cause once.
/// A reload or runtime change may not make one of this host's addresses a backend,
/// as `run` refuses at start.
fn refuse_local_backends(cfg: &Config) -> Result<(), ApiError> {
    let local = super::local_addresses().map_err(|e| {
        ApiError::new(
            ErrorKind::Invalid,
            format!("cannot list this host's addresses to check the backends: {e}"),
        )
    })?;
    match super::host::local_backend(cfg, &local) {
        Some(e) => Err(ApiError::new(ErrorKind::Invalid, error_text(&e))),
        None => Ok(()),
    }
}

fn error_text(e: &dyn std::error::Error) -> String {
    crate::dataplane::error_chain(e)
}

fn find_service(cfg: &Config, name: &str) -> Result<usize, ApiError> {
    cfg.services
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
            ApiError::new(
                ErrorKind::UnknownService,
                format!(
                    "unknown service {name:?}; known services: {}",
                    known.join(", ")
                ),
            )
        })
}

/// The backend `spec` (`ADDR:PORT`, or `ADDR` when unambiguous) of `svc`.
fn find_backend(svc: &ServiceConfig, spec: &str) -> Result<usize, ApiError> {
    let parsed = BackendSpec::parse("backend", spec)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, error_text(&e)))?;
    let matches: Vec<usize> = svc
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.addr == parsed.addr && parsed.port.is_none_or(|p| p == b.port))
        .map(|(i, _)| i)
        .collect();
    let list = || {
        svc.backends
            .iter()
            .map(|b| b.socket_addr().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match matches[..] {
        [i] => Ok(i),
        [] => Err(ApiError::new(
            ErrorKind::UnknownBackend,
            format!(
                "service {:?} has no backend {spec}; its backends: {}",
                svc.name,
                list()
            ),
        )),
        _ => Err(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "service {:?} has several backends at {spec}; give ADDR:PORT, one of: {}",
                svc.name,
                list()
            ),
        )),
    }
}

fn active_count(svc: &ServiceConfig) -> usize {
    svc.backends
        .iter()
        .filter(|b| b.state == BackendState::Active)
        .count()
}

/// The configuration after `cmd`, the file edit that records it, and a drain timer
/// to start. Pure: checks names, flag-defined services and the "no active backend
/// left" rule.
fn mutate(cfg: &Config, cmd: &Command) -> Result<(Config, Edit, Option<DrainTimer>), ApiError> {
    let mut new = cfg.clone();
    let target = |name: &str| -> Result<usize, ApiError> {
        let i = find_service(cfg, name)?;
        if i >= cfg.file_services {
            return Err(ApiError::new(
                ErrorKind::NotPersistable,
                format!("service {name:?} is defined by command-line flags (--vip), which a runtime change cannot be saved into; move it into the --config file to manage it at runtime"),
            ));
        }
        Ok(i)
    };
    let mut drain = None;
    let (si, edit, force) = match cmd {
        Command::BackendWeight {
            service,
            backend,
            weight,
        } => {
            let si = target(service)?;
            let bi = find_backend(&cfg.services[si], backend)?;
            if !(1..=config::MAX_WEIGHT).contains(weight) {
                return Err(ApiError::new(
                    ErrorKind::Invalid,
                    format!("weight {weight} out of range 1..={} (to take a backend out, drain it or mark it down)", config::MAX_WEIGHT),
                ));
            }
            new.services[si].backends[bi].weight = *weight;
            (
                si,
                Edit::SetWeight {
                    service: si,
                    backend: bi,
                    weight: *weight,
                },
                true,
            )
        }
        Command::BackendDrain {
            service,
            backend,
            timeout_ms,
            force,
        } => {
            let si = target(service)?;
            let bi = find_backend(&cfg.services[si], backend)?;
            drain = timeout_ms.map(|ms| DrainTimer {
                service: service.clone(),
                backend: cfg.services[si].backends[bi].socket_addr(),
                after: Duration::from_millis(ms),
            });
            set_state(&mut new, si, bi, BackendState::Draining, *force)
        }
        Command::BackendDown {
            service,
            backend,
            force,
        } => {
            let si = target(service)?;
            let bi = find_backend(&cfg.services[si], backend)?;
            set_state(&mut new, si, bi, BackendState::Down, *force)
        }
        Command::BackendUndrain { service, backend } | Command::BackendUp { service, backend } => {
            let si = target(service)?;
            let bi = find_backend(&cfg.services[si], backend)?;
            set_state(&mut new, si, bi, BackendState::Active, true)
        }
        Command::BackendAdd {
            service,
            backend,
            state,
        } => {
            let si = target(service)?;
            let svc = &cfg.services[si];
            let spec = BackendSpec::parse("backend", backend)
                .map_err(|e| ApiError::new(ErrorKind::BadRequest, error_text(&e)))?;
            let port = match (svc.forwarding, spec.port) {
                (Forwarding::Dsr, None) => svc.port,
                (_, Some(p)) => p,
                (Forwarding::Nat, None) => {
                    return Err(ApiError::new(
                        ErrorKind::BadRequest,
                        format!("service {service:?} uses nat: give the backend as ADDR:PORT"),
                    ))
                }
            };
            let b = BackendConfig::new(
                spec.addr,
                port,
                spec.weight.unwrap_or(1),
                state.unwrap_or(BackendState::Active),
            );
            new.services[si].backends.push(b.clone());
            (
                si,
                Edit::AddBackend {
                    service: si,
                    backend: b,
                },
                true,
            )
        }
        Command::BackendRemove {
            service,
            backend,
            force,
        } => {
            let si = target(service)?;
            let bi = find_backend(&cfg.services[si], backend)?;
            new.services[si].backends.remove(bi);
            if new.services[si].backends.is_empty() {
                return Err(ApiError::new(
                    ErrorKind::WouldEmpty,
                    format!("{backend} is the last backend of service {service:?}; remove the service instead (`xdp-lb service remove {service}`)"),
                ));
            }
            (
                si,
                Edit::RemoveBackend {
                    service: si,
                    backend: bi,
                },
                *force,
            )
        }
        Command::ServiceAdd { service } => {
            if cfg.services.iter().any(|s| s.name == service.name) {
                return Err(ApiError::new(
                    ErrorKind::Invalid,
                    format!("a service named {:?} exists already", service.name),
                ));
            }
            let svc = new_service(service)?;
            // File services come first: keep the flag-defined one last.
            new.services.insert(cfg.file_services, svc.clone());
            new.file_services += 1;
            return Ok((new, Edit::AddService(svc), None));
        }
        Command::ServiceRemove { service } => {
            let si = target(service)?;
            new.services.remove(si);
            new.file_services -= 1;
            if new.services.is_empty() {
                return Err(ApiError::new(
                    ErrorKind::WouldEmpty,
                    format!("{service:?} is the only service; a balancer with no service cannot run (stop it instead)"),
                ));
            }
            return Ok((new, Edit::RemoveService(si), None));
        }
        Command::Status
        | Command::ServiceList
        | Command::BackendList { .. }
        | Command::Reload
        | Command::Monitor
        | Command::Alerts
        | Command::Report { .. } => {
            return Err(ApiError::new(ErrorKind::BadRequest, "not a change"))
        }
    };
    if !force && active_count(&cfg.services[si]) > 0 && active_count(&new.services[si]) == 0 {
        return Err(ApiError::new(
            ErrorKind::WouldEmpty,
            format!(
                "this would leave service {:?} with no active backend, so its new connections would be dropped; repeat with --force if that is what you want",
                cfg.services[si].name
            ),
        ));
    }
    Ok((new, edit, drain))
}

fn set_state(
    cfg: &mut Config,
    si: usize,
    bi: usize,
    state: BackendState,
    force: bool,
) -> (usize, Edit, bool) {
    cfg.services[si].backends[bi].state = state;
    (
        si,
        Edit::SetState {
            service: si,
            backend: bi,
            state,
        },
        force,
    )
}

/// A `ServiceConfig` from the API's description; `validate_services` checks the rest.
fn new_service(s: &NewService) -> Result<ServiceConfig, ApiError> {
    let bad = |e: config::ConfigError| ApiError::new(ErrorKind::BadRequest, error_text(&e));
    if s.name.trim().is_empty() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            "a runtime service needs a name (--name)",
        ));
    }
    let vip = BackendSpec::parse("--vip", &s.vip).map_err(bad)?;
    let Some(port) = vip.port else {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "--vip {}: missing port; expected ADDR:PORT such as 198.18.0.1:80",
                s.vip
            ),
        ));
    };
    let mut backends = Vec::new();
    for spec in &s.backends {
        let b = BackendSpec::parse("--backend", spec).map_err(bad)?;
        let bport = match (s.forwarding, b.port) {
            (Forwarding::Dsr, None) => port,
            (Forwarding::Dsr, Some(p)) if p != port => {
                return Err(ApiError::new(
                    ErrorKind::Invalid,
                    format!("dsr backend {spec} must use the service port {port} (dsr only rewrites MAC addresses)"),
                ))
            }
            (_, Some(p)) => p,
            (Forwarding::Nat, None) => {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!("backend {spec} needs a port (nat): ADDR:PORT"),
                ))
            }
        };
        backends.push(BackendConfig::new(
            b.addr,
            bport,
            b.weight.unwrap_or(1),
            BackendState::Active,
        ));
    }
    Ok(ServiceConfig {
        name: s.name.clone(),
        vip: vip.addr,
        port,
        proto: s.proto,
        algorithm: s.algorithm,
        forwarding: s.forwarding,
        table_size: s.table_size.unwrap_or(xdp_lb_common::DEFAULT_RING_SIZE),
        backends,
        health_check: None,
        slow_start: None,
        on_all_down: OnAllDown::default(),
    })
}

#[cfg(test)]
mod tests;
