//! [`HealthChecker`]: runs the checks of many targets on tokio and reports state flips.
//!
//! One task per target. Its first check comes at a random offset within the target's
//! interval and the later ones at that phase every interval, so a thousand backends
//! with the same interval spread their checks over it instead of firing together.
//! A global semaphore bounds the probes in flight; a target's timeout starts once it
//! holds a permit, so a busy semaphore delays checks but never fails them. A probe
//! that hangs holds one permit until its timeout and delays no other target (with the
//! bound sized above `probes per second x timeout`, no check waits for a permit).
//!
//! The checker knows nothing about maps, planners or the controller: state flips go out
//! as [`HealthEvent`]s over a channel, in order per target, and [`HealthChecker::snapshot`]
//! gives the current view for a `status` command.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch, Semaphore},
    task::JoinHandle,
    time::MissedTickBehavior,
};

use super::{
    config::{CheckKind, HealthCheck},
    probe::{self, ProbeFailure, ProbeResult},
    state::{HealthState, InitialState, Transition},
};

/// Probes in flight at most, when the caller has no better figure.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;

/// One backend to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub backend: SocketAddr,
    pub check: HealthCheck,
    /// Only used when the target is new to the checker; a known target keeps its state.
    pub initial: InitialState,
}

impl Target {
    /// A target that starts up and lets its first check decide (see [`InitialState::Up`]).
    pub fn new(service: impl Into<String>, backend: SocketAddr, check: HealthCheck) -> Self {
        Self {
            service: service.into(),
            backend,
            check,
            initial: InitialState::default(),
        }
    }

    fn key(&self) -> Key {
        (self.service.clone(), self.backend)
    }
}

/// A flip of a backend's health state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub service: String,
    pub backend: SocketAddr,
    pub up: bool,
    /// Why it went down (the failure of the check that tipped it); `None` when it went up.
    pub reason: Option<ProbeFailure>,
    /// Latency of the check that brought it up; `None` when it went down, or when it came
    /// up because its check type became `none`.
    pub latency: Option<Duration>,
    /// When the flip happened (for slow start, see `policy::slow_start_weight`).
    pub at: Instant,
}

/// What the checker knows about one backend, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    pub service: String,
    pub backend: SocketAddr,
    pub kind: CheckKind,
    /// Where the probes go.
    pub check_target: SocketAddr,
    pub up: bool,
    /// The last check's outcome; `None` before the first check.
    pub last: Option<ProbeResult>,
    /// Latency of the last passing check.
    pub last_latency: Option<Duration>,
    /// When the last check finished.
    pub last_check: Option<Instant>,
    /// Consecutive results against the current state (toward `rise` or `fall`).
    pub streak: u32,
    pub checks: u64,
    pub transitions: u64,
    /// The last flip, or when the checker took the target on.
    pub since: Instant,
}

type Key = (String, SocketAddr);

struct Running {
    target: Target,
    record: Arc<Mutex<BackendHealth>>,
    /// Hands a changed check to the task, which keeps its state and applies it.
    control: watch::Sender<HealthCheck>,
    task: JoinHandle<()>,
}

/// The checks of a set of targets, each on its own tokio task.
pub struct HealthChecker {
    running: HashMap<Key, Running>,
    permits: Arc<Semaphore>,
    events: mpsc::Sender<HealthEvent>,
}

impl HealthChecker {
    /// Starts checking `targets` (a later duplicate of the same service and backend
    /// replaces an earlier one). At most `max_concurrent` probes run at once (0 is
    /// taken as 1). Each flip of a backend's state is sent on `events`; a full channel
    /// makes that target wait (its next check is delayed, no event is lost), a closed
    /// one is ignored and the checks go on for [`Self::snapshot`].
    ///
    /// Must be called within a tokio runtime (it spawns).
    pub fn start(
        targets: Vec<Target>,
        max_concurrent: usize,
        events: mpsc::Sender<HealthEvent>,
    ) -> Self {
        let mut checker = Self {
            running: HashMap::new(),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            events,
        };
        checker.update(targets);
        checker
    }

    /// Replaces the set of targets (a reload). Targets are matched by service name and
    /// backend address: an unchanged one keeps its state and schedule; one whose check
    /// changed keeps its up/down state (its rise/fall count starts afresh) and is
    /// rescheduled; a removed one stops at once (an event it was about to send is
    /// dropped); a new one starts in its `initial` state. A target whose check becomes
    /// `none` is up: if it was down, an up event is sent.
    pub fn update(&mut self, targets: Vec<Target>) {
        let mut wanted: HashMap<Key, Target> = HashMap::new();
        for target in targets {
            wanted.insert(target.key(), target);
        }
        self.running.retain(|key, running| {
            let keep = wanted.contains_key(key);
            if !keep {
                running.task.abort();
            }
            keep
        });
        for (key, target) in wanted {
            match self.running.get_mut(&key) {
                Some(running) => {
                    if running.target.check != target.check {
                        // The task is alive (it only ends when aborted), so the send
                        // cannot fail; if it ever did, the old check would go on.
                        let _ = running.control.send(target.check.clone());
                        running.target.check = target.check;
                    }
                }
                None => {
                    let running = self.spawn(target);
                    self.running.insert(key, running);
                }
            }
        }
    }

    fn spawn(&self, target: Target) -> Running {
        let now = Instant::now();
        let state = HealthState::new(target.initial, target.check.rise, target.check.fall);
        let record = Arc::new(Mutex::new(BackendHealth {
            service: target.service.clone(),
            backend: target.backend,
            kind: target.check.kind(),
            check_target: target.check.target,
            up: state.is_up(),
            last: None,
            last_latency: None,
            last_check: None,
            streak: 0,
            checks: 0,
            transitions: 0,
            since: now,
        }));
        let (control, control_rx) = watch::channel(target.check.clone());
        let task = tokio::spawn(
            TargetTask {
                service: target.service.clone(),
                backend: target.backend,
                state,
                record: Arc::clone(&record),
                permits: Arc::clone(&self.permits),
                events: self.events.clone(),
                control: control_rx,
            }
            .run(),
        );
        Running {
            target,
            record,
            control,
            task,
        }
    }

    /// The state of every target, sorted by service and backend.
    pub fn snapshot(&self) -> Vec<BackendHealth> {
        let mut all: Vec<BackendHealth> = self
            .running
            .values()
            .map(|running| lock(&running.record).clone())
            .collect();
        all.sort_by(|a, b| (&a.service, a.backend).cmp(&(&b.service, b.backend)));
        all
    }

    /// Stops every check and waits until their tasks are gone (so no probe socket is
    /// left open and no event is sent after this returns).
    pub async fn stop(mut self) {
        let running = std::mem::take(&mut self.running);
        for running in running.values() {
            running.task.abort();
        }
        for (_, running) in running {
            // Cancelled is the expected outcome; a panic in a check task has nothing
            // left to clean up either.
            let _ = running.task.await;
        }
    }
}

impl Drop for HealthChecker {
    /// A checker dropped without `stop` must not leave its tasks probing forever.
    fn drop(&mut self) {
        for running in self.running.values() {
            running.task.abort();
        }
    }
}

/// The records are plain data updated in one step, so a panic elsewhere cannot leave
/// one half-written: recover from poisoning instead of spreading the panic.
fn lock(record: &Mutex<BackendHealth>) -> std::sync::MutexGuard<'_, BackendHealth> {
    record.lock().unwrap_or_else(PoisonError::into_inner)
}

struct TargetTask {
    service: String,
    backend: SocketAddr,
    state: HealthState,
    record: Arc<Mutex<BackendHealth>>,
    permits: Arc<Semaphore>,
    events: mpsc::Sender<HealthEvent>,
    control: watch::Receiver<HealthCheck>,
}

impl TargetTask {
    /// Runs until aborted (or the checker's control handle is dropped).
    async fn run(mut self) {
        let mut check = self.control.borrow_and_update().clone();
        // One round per configuration of this target; a changed check starts the next.
        loop {
            if check.kind() == CheckKind::None {
                self.unchecked_is_up().await;
                if self.control.changed().await.is_err() {
                    return;
                }
            } else {
                let first = Instant::now() + jitter(check.interval);
                let period = check.interval.max(Duration::from_millis(1));
                let mut ticks = tokio::time::interval_at(first.into(), period);
                // A late tick (semaphore wait, full event channel) shifts the schedule
                // rather than firing a burst of catch-up checks.
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        biased;
                        changed = self.control.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break;
                        }
                        _ = ticks.tick() => {}
                    }
                    self.check_once(&check).await;
                }
            }
            check = self.control.borrow_and_update().clone();
            self.state = HealthState::resume(self.state.is_up(), check.rise, check.fall);
            let mut record = lock(&self.record);
            record.kind = check.kind();
            record.check_target = check.target;
            record.streak = 0;
        }
    }

    async fn check_once(&mut self, check: &HealthCheck) {
        let result = {
            // The semaphore is never closed, so acquire cannot fail; treat it as a
            // skipped check if it ever does.
            let Ok(_permit) = self.permits.acquire().await else {
                return;
            };
            probe::run(check).await
        };
        let transition = self.state.record(result.is_ok());
        let now = Instant::now();
        {
            let mut record = lock(&self.record);
            record.checks += 1;
            record.last_check = Some(now);
            if let Ok(latency) = &result {
                record.last_latency = Some(*latency);
            }
            record.last = Some(result.clone());
            record.streak = self.state.streak();
            record.up = self.state.is_up();
            if transition.is_some() {
                record.transitions += 1;
                record.since = now;
            }
        }
        if let Some(transition) = transition {
            let (reason, latency) = match result {
                Ok(latency) => (None, Some(latency)),
                Err(failure) => (Some(failure), None),
            };
            self.emit(transition == Transition::WentUp, reason, latency, now)
                .await;
        }
    }

    /// A target with check type `none` is up; tell the controller if it was down.
    async fn unchecked_is_up(&mut self) {
        if self.state.is_up() {
            return;
        }
        self.state = HealthState::resume(true, 1, 1);
        let now = Instant::now();
        {
            let mut record = lock(&self.record);
            record.up = true;
            record.transitions += 1;
            record.since = now;
            record.streak = 0;
        }
        self.emit(true, None, None, now).await;
    }

    async fn emit(
        &self,
        up: bool,
        reason: Option<ProbeFailure>,
        latency: Option<Duration>,
        at: Instant,
    ) {
        let event = HealthEvent {
            service: self.service.clone(),
            backend: self.backend,
            up,
            reason,
            latency,
            at,
        };
        // A closed channel means nobody listens any more; the checks go on for
        // snapshots, so the error is not a reason to stop.
        let _ = self.events.send(event).await;
    }
}

/// A random offset in [0, interval): the phase of a target's checks.
fn jitter(interval: Duration) -> Duration {
    if interval.is_zero() {
        Duration::ZERO
    } else {
        rand::random_range(Duration::ZERO..interval)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::health::{
        config::{HttpProbe, Probe, StatusRange},
        testutil::{self, loopback},
    };

    /// Generous bound for any wait on events: far above what the tests need, short
    /// enough that a broken checker fails instead of hanging.
    const PATIENCE: Duration = Duration::from_secs(20);

    fn tcp_check(target: SocketAddr, interval_ms: u64, rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            target,
            source: None,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms * 4 / 5),
            rise,
            fall,
        }
    }

    fn http_check(target: SocketAddr, interval_ms: u64, timeout_ms: u64) -> HealthCheck {
        HealthCheck {
            probe: Probe::Http(HttpProbe {
                path: http::uri::PathAndQuery::from_static("/"),
                host: None,
                expect_status: StatusRange { lo: 200, hi: 399 },
                expect_body: None,
            }),
            target,
            source: None,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            rise: 1,
            fall: 1,
        }
    }

    async fn next_event(events: &mut mpsc::Receiver<HealthEvent>) -> HealthEvent {
        tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("an event within the patience bound")
            .expect("the checker is running")
    }

    fn health_of(checker: &HealthChecker, backend: SocketAddr) -> BackendHealth {
        checker
            .snapshot()
            .into_iter()
            .find(|h| h.backend == backend)
            .expect("target in the snapshot")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_server_goes_down_after_fall_checks_and_returns_after_rise() {
        let (rise, fall) = (2, 3);
        let server = testutil::tcp_server(loopback()).await;
        let addr = server.addr;
        let (tx, mut events) = mpsc::channel(16);
        let checker = HealthChecker::start(
            vec![Target::new("web", addr, tcp_check(addr, 50, rise, fall))],
            4,
            tx,
        );
        assert!(
            testutil::wait_for(PATIENCE, || health_of(&checker, addr).checks >= 2).await,
            "checks run"
        );
        assert!(health_of(&checker, addr).up, "a serving backend is up");

        let checks_before = health_of(&checker, addr).checks;
        let killed = Instant::now();
        server.stop().await;
        let down = next_event(&mut events).await;
        let detection = killed.elapsed();
        let checks_to_down = health_of(&checker, addr).checks - checks_before;
        assert_eq!(
            (down.service.as_str(), down.backend, down.up),
            ("web", addr, false)
        );
        assert_eq!(down.reason, Some(ProbeFailure::Refused));
        // `fall` failed checks, plus at most one that was in flight when it was killed.
        assert!(
            (u64::from(fall)..=u64::from(fall) + 1).contains(&checks_to_down),
            "{checks_to_down} checks to go down"
        );

        // Bounded: the port was just ours; rebinding it can only race our own close.
        let mut restarted = None;
        for _ in 0..50 {
            if let Ok(listener) = std::net::TcpListener::bind(addr) {
                drop(listener);
                restarted = Some(testutil::tcp_server(addr).await);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _server = restarted.expect("the port can be bound again");
        let checks_before = health_of(&checker, addr).checks;
        let returned = Instant::now();
        let up = next_event(&mut events).await;
        let recovery = returned.elapsed();
        let checks_to_up = health_of(&checker, addr).checks - checks_before;
        assert!(
            up.up && up.reason.is_none() && up.latency.is_some(),
            "{up:?}"
        );
        assert!(
            (u64::from(rise)..=u64::from(rise) + 1).contains(&checks_to_up),
            "{checks_to_up} checks to come up"
        );
        let health = health_of(&checker, addr);
        assert_eq!((health.up, health.transitions), (true, 2));
        eprintln!(
            "interval 50ms fall {fall} rise {rise}: down {detection:?} after the kill \
             ({checks_to_down} checks), up {recovery:?} after the restart ({checks_to_up} checks)"
        );
        checker.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_target_does_not_delay_another() {
        let hanging = testutil::silent_tcp_server().await;
        let healthy = testutil::http_server(loopback(), 200, "ok", Duration::ZERO).await;
        let (tx, mut events) = mpsc::channel(16);
        let checker = HealthChecker::start(
            vec![
                Target::new("slow", hanging.addr, http_check(hanging.addr, 600, 500)),
                Target::new("fast", healthy.addr, http_check(healthy.addr, 20, 15)),
            ],
            // Two permits: the hanging probe holds one for its whole timeout.
            2,
            tx,
        );
        assert!(
            testutil::wait_for(PATIENCE, || hanging.seen.count() == 1).await,
            "the hanging target's first check started"
        );
        let fast_at_hang = healthy.seen.count();
        assert!(
            testutil::wait_for(PATIENCE, || hanging.seen.closed.load(Ordering::SeqCst) == 1).await,
            "the hanging check was cut"
        );
        let fast_during_hang = healthy.seen.count() - fast_at_hang;
        // 500 ms of hanging against a 20 ms interval: about 25 checks; 3 proves they ran.
        assert!(
            fast_during_hang >= 3,
            "only {fast_during_hang} checks of the other target while one hung"
        );
        // The fast target's 15 ms timeout may trip on a loaded machine; its events
        // are not what this test is about.
        let mut down = next_event(&mut events).await;
        // Bounded: each round consumes one event of the fast target.
        for _ in 0..1000 {
            if down.backend == hanging.addr {
                break;
            }
            down = next_event(&mut events).await;
        }
        assert_eq!(down.backend, hanging.addr);
        assert_eq!(
            down.reason,
            Some(ProbeFailure::Timeout(Duration::from_millis(500)))
        );
        eprintln!("{fast_during_hang} checks of a 20 ms target while a 500 ms probe hung");
        checker.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_targets_spread_their_checks_over_the_interval() {
        const TARGETS: u16 = 1000;
        const WINDOW: Duration = Duration::from_millis(100);
        const WINDOWS: u32 = 20; // two intervals
        let server = testutil::tcp_server(loopback()).await;
        // Distinct backends (keys) whose checks all go to the one counting server.
        let targets: Vec<Target> = (0..TARGETS)
            .map(|i| {
                let backend = SocketAddr::new(loopback().ip(), 10_000 + i);
                Target::new("big", backend, tcp_check(server.addr, 1000, 2, 3))
            })
            .collect();
        let (tx, _events) = mpsc::channel(1024);
        let started = Instant::now();
        let checker = HealthChecker::start(targets, DEFAULT_MAX_CONCURRENT, tx);
        let needed = usize::from(TARGETS) * 2 + 100;
        assert!(
            testutil::wait_for(PATIENCE, || server.seen.count() >= needed).await,
            "two rounds of checks arrive"
        );
        let arrivals = server.seen.arrival_times();
        let mut windows = vec![0usize; WINDOWS as usize];
        for at in arrivals {
            let offset = at.duration_since(started);
            let index = (offset.as_nanos() / WINDOW.as_nanos()) as usize;
            if let Some(count) = windows.get_mut(index) {
                *count += 1;
            }
        }
        let total: usize = windows.iter().sum();
        let mean = total as f64 / f64::from(WINDOWS);
        let max = *windows.iter().max().unwrap();
        eprintln!("checks per 100 ms window: {windows:?} (mean {mean:.0}, max {max})");
        assert!(
            (max as f64) <= 3.0 * mean,
            "a burst: {max} checks in one window, mean {mean:.0}: {windows:?}"
        );
        // Without jitter all 1000 would land in one window of each interval.
        assert!(
            windows.iter().filter(|&&c| c > 0).count() >= 15,
            "{windows:?}"
        );
        let snapshot = checker.snapshot();
        assert_eq!(snapshot.len(), usize::from(TARGETS));
        assert!(snapshot.iter().all(|h| h.checks >= 1 && h.up));
        checker.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_semaphore_bounds_the_probes_in_flight() {
        const LIMIT: usize = 4;
        // Each answer takes 20 ms and 100 targets want 500 checks a second: about 10
        // in flight without a bound, so the bound is what keeps it at LIMIT.
        let server = testutil::http_server(loopback(), 200, "ok", Duration::from_millis(20)).await;
        let targets: Vec<Target> = (0..100u16)
            .map(|i| {
                let backend = SocketAddr::new(loopback().ip(), 20_000 + i);
                Target::new("busy", backend, http_check(server.addr, 200, 150))
            })
            .collect();
        let (tx, _events) = mpsc::channel(1024);
        let checker = HealthChecker::start(targets, LIMIT, tx);
        assert!(
            testutil::wait_for(PATIENCE, || server.seen.count() >= 300).await,
            "checks arrive"
        );
        let max = server.seen.max_in_flight.load(Ordering::SeqCst);
        eprintln!("max probes in flight seen by the server: {max} (limit {LIMIT})");
        assert!(max <= LIMIT, "{max} probes in flight, limit {LIMIT}");
        assert!(max >= 2, "probes did run concurrently ({max})");
        checker.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_keeps_known_targets_and_applies_changes() {
        let server = testutil::tcp_server(loopback()).await;
        let dead = testutil::closed_port().await;
        let kept = SocketAddr::new(loopback().ip(), 30_001);
        let changed = SocketAddr::new(loopback().ip(), 30_002);
        let unchecked = SocketAddr::new(loopback().ip(), 30_003);
        let added = SocketAddr::new(loopback().ip(), 30_004);
        let kept_target = Target::new("svc", kept, tcp_check(server.addr, 50, 2, 1));
        let (tx, mut events) = mpsc::channel(16);
        let mut checker = HealthChecker::start(
            vec![
                kept_target.clone(),
                Target::new("svc", changed, tcp_check(dead, 50, 2, 1)),
                Target::new("svc", unchecked, tcp_check(dead, 50, 2, 1)),
            ],
            8,
            tx,
        );
        let mut down = [next_event(&mut events).await, next_event(&mut events).await];
        down.sort_by_key(|e| e.backend);
        assert_eq!(
            down.iter().map(|e| (e.backend, e.up)).collect::<Vec<_>>(),
            vec![(changed, false), (unchecked, false)]
        );
        assert!(testutil::wait_for(PATIENCE, || health_of(&checker, kept).checks >= 2).await);
        let kept_before = health_of(&checker, kept);

        let mut none_check = tcp_check(dead, 50, 2, 1);
        none_check.probe = Probe::None;
        checker.update(vec![
            kept_target,
            // Now pointed at a live server: comes back after `rise` checks, as it was down.
            Target::new("svc", changed, tcp_check(server.addr, 50, 2, 1)),
            Target::new("svc", unchecked, none_check),
            Target::new("svc", added, tcp_check(server.addr, 50, 2, 1)),
        ]);
        let mut up = [next_event(&mut events).await, next_event(&mut events).await];
        up.sort_by_key(|e| e.backend);
        assert_eq!(
            up.iter()
                .map(|e| (e.backend, e.up, e.latency.is_some()))
                .collect::<Vec<_>>(),
            vec![(changed, true, true), (unchecked, true, false)]
        );
        assert!(up.iter().all(|e| e.reason.is_none()));
        let changed_health = health_of(&checker, changed);
        assert_eq!(changed_health.transitions, 2);
        assert!(
            changed_health.checks >= 3,
            "one failed check, then rise = 2 passes"
        );
        assert_eq!(health_of(&checker, unchecked).kind, CheckKind::None);

        let kept_after = health_of(&checker, kept);
        assert!(
            kept_after.checks >= kept_before.checks,
            "kept target's count went on"
        );
        assert_eq!(
            (kept_after.since, kept_after.transitions),
            (kept_before.since, 0)
        );
        assert!(testutil::wait_for(PATIENCE, || health_of(&checker, added).checks >= 1).await);

        checker.update(vec![Target::new(
            "svc",
            added,
            tcp_check(server.addr, 50, 2, 1),
        )]);
        assert_eq!(
            checker
                .snapshot()
                .iter()
                .map(|h| h.backend)
                .collect::<Vec<_>>(),
            vec![added]
        );
        checker.stop().await;
        // Every task is gone: their senders with them, so the channel closes.
        assert!(tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap()
            .is_none());
    }
}
