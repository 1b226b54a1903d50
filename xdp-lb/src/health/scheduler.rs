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
