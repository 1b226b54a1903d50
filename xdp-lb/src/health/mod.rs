//! Active health checks (issue 7): which backends are alive, decided by probing them.
//!
//! - [`config`]: the `health_check` TOML tables (service default, backend override) and
//!   [`resolve`], which merges and validates them into a [`HealthCheck`].
//! - [`state`]: the rise/fall state machine (pure).
//! - [`probe`]: the tcp, http and udp probes, each cut at its timeout.
//! - [`scheduler`]: [`HealthChecker`], running every target's checks on tokio with
//!   jittered schedules and a bound on concurrent probes; state flips go out as
//!   [`HealthEvent`]s on a channel.
//! - [`policy`]: pure rules for the planner: slow start, backups, all-down policy.
//!
//! The module knows nothing of maps, the planner or the controller. A controller:
//! 1. resolves one [`HealthCheck`] per backend with [`resolve`] while loading the file;
//! 2. calls [`HealthChecker::start`] with a [`Target`] per backend and the sending half
//!    of a channel, and on each [`HealthEvent`] republishes the service's table using
//!    [`policy::eligible`] (and [`policy::slow_start_weight`] for backends that came up);
//! 3. on a reload calls [`HealthChecker::update`] with the new targets, for `status`
//!    reads [`HealthChecker::snapshot`], and at exit awaits [`HealthChecker::stop`].
//!
//! Every target starts up (unless its [`Target::initial`] says otherwise), so the
//! controller publishes all backends at start and applies events from then on. Events
//! come only on flips, in order per backend; an admin `down`/`drain` is the
//! controller's business and wins over them (the checks keep running, so `up` from the
//! operator hands the backend back to its last known health).
pub mod config;
pub mod policy;
pub mod probe;
pub mod scheduler;
pub mod state;

#[cfg(test)]
mod testutil;

pub use config::{resolve, CheckKind, HealthCheck, HealthCheckConfig, HealthConfigError};
pub use policy::{eligible, slow_start_weight, Eligible, Member, OnAllDown, Selection};
pub use probe::{ProbeFailure, ProbeResult};
pub use scheduler::{BackendHealth, HealthChecker, HealthEvent, Target, DEFAULT_MAX_CONCURRENT};
pub use state::{HealthState, InitialState, Transition};
