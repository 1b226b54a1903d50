//! The controller against the in-memory data plane and a real file in a temporary
//! directory: what reaches the "kernel", what reaches the file, what is refused.
use std::path::PathBuf;

use super::*;
use crate::{dataplane::FakeDataplane, plan::service_key};

const FILE: &str = r#"# the operator's comment survives every change
interfaces = ["veth0"]
max_services = 4
max_table_size = 1009

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
table_size = 1009

[[service.backend]]
addr = "198.18.1.2"
port = 8080

[[service.backend]]
addr = "198.18.1.3"
port = 8080
"#;

struct Bed {
    _dir: tempfile::TempDir,
    path: PathBuf,
    ctl: Controller<FakeDataplane>,
}

fn bed_with(text: &str) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xdp-lb.toml");
    std::fs::write(&path, text).unwrap();
    let sources = Sources {
        config: Some(path.clone()),
        ..Default::default()
    };
    let (cfg, text) = config::load_with_text(&sources).unwrap();
    let mut planner = Planner::new(cfg.max_services, cfg.max_table_size);
    let plan = planner.apply(&cfg).unwrap();
    let mut dp = FakeDataplane::default();
    dp.apply(&plan).unwrap();
    let ctl = Controller::new(
        sources,
        cfg,
        text,
        planner,
        dp,
        plan.changes,
        vec!["veth0".into()],
    );
    Bed {
        _dir: dir,
        path,
        ctl,
    }
}

fn bed() -> Bed {
    bed_with(FILE)
}

impl Bed {
    fn file(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap()
    }

    /// Backend ids in the published table of "web", counted.
    fn table_counts(&self) -> HashMap<u32, usize> {
        let key = service_key(&self.ctl.config().services[0]);
        let mut m = HashMap::new();
        for id in self.ctl.dataplane().table(&key) {
            *m.entry(id).or_default() += 1;
        }
        m
    }

    fn id_of(&self, addr: &str) -> u32 {
        let a: SocketAddr = addr.parse().unwrap();
        self.ctl.planner().assignments()[0]
            .backends
            .iter()
            .find(|(x, _)| *x == a)
            .unwrap()
            .1
    }

    fn run(&mut self, cmd: Command) -> Result<Reply, ApiError> {
        self.ctl.handle(cmd)
    }

    /// Everything an operator could observe, for before/after comparisons.
    fn observable(&self) -> (String, Config, HashMap<u32, usize>, usize, u64) {
        (
            self.file(),
            self.ctl.config().clone(),
            self.table_counts(),
            self.ctl.dataplane().applied,
            self.ctl.generation(),
        )
    }
}

fn changed(r: Result<Reply, ApiError>) -> Changed {
    match r {
        Ok(Reply::Changed(c)) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn weight(service: &str, backend: &str, weight: u32) -> Command {
    Command::BackendWeight {
        service: service.into(),
        backend: backend.into(),
        weight,
    }
}

#[test]
fn reload_applies_the_file_diff() {
    let mut b = bed();
    assert_eq!(b.table_counts().len(), 2);
    std::fs::write(
        &b.path,
        format!("{FILE}\n[[service.backend]]\naddr = \"198.18.1.4\"\nport = 8080\n"),
    )
    .unwrap();
    let c = changed(b.run(Command::Reload));
    assert!(
        c.events.iter().any(|e| e.origin == Origin::File
            && matches!(&e.change, Change::BackendAdded { backend, .. } if backend.to_string() == "198.18.1.4:8080")),
        "{:?}",
        c.events
    );
    assert_eq!(b.table_counts().len(), 3);
    assert_eq!(c.generation, 2);
    // Reloading the same file again changes nothing.
    let again = changed(b.run(Command::Reload));
    assert!(again.events.is_empty());
    assert_eq!(again.generation, 2);
}

#[test]
fn admin_change_is_applied_saved_and_logged() {
    let mut b = bed();
    let c = changed(b.run(weight("web", "198.18.1.2:8080", 3)));
    assert_eq!(c.saved_to.as_deref(), Some(b.path.to_str().unwrap()));
    assert!(c.events.iter().all(|e| e.origin == Origin::Admin));
    assert!(c
        .events
        .iter()
        .any(|e| matches!(e.change, Change::BackendWeight { from: 1, to: 3, .. })));
    // The table follows the weights: 3:1 of 1009.
    let counts = b.table_counts();
    let heavy = counts[&b.id_of("198.18.1.2:8080")];
    assert!((740..=775).contains(&heavy), "{counts:?}");
    // The file says so, and kept the operator's comment.
    let file = b.file();
    assert!(file.contains("weight = 3"), "{file}");
    assert!(file.contains("# the operator's comment"), "{file}");
    // And a restart from that file would program the same thing.
    let reread = config::load(&Sources {
        config: Some(b.path.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(&reread, b.ctl.config());
}

#[test]
fn runtime_change_survives_a_reload() {
    let mut b = bed();
    changed(b.run(Command::BackendDrain {
        service: "web".into(),
        backend: "198.18.1.3".into(),
        timeout_ms: None,
        force: false,
    }));
    assert!(b.file().contains("state = \"draining\""));
    let drained = b.id_of("198.18.1.3:8080");
    assert!(!b.table_counts().contains_key(&drained));
    let c = changed(b.run(Command::Reload));
    assert!(c.events.is_empty(), "{:?}", c.events);
    assert_eq!(
        b.ctl.config().services[0].backends[1].state,
        BackendState::Draining
    );
    assert!(!b.table_counts().contains_key(&drained));
}

#[test]
fn refused_changes_change_nothing() {
    let mut b = bed();
    // One backend down is fine; the other would leave no active backend.
    changed(b.run(Command::BackendDown {
        service: "web".into(),
        backend: "198.18.1.2:8080".into(),
        force: false,
    }));
    let before = b.observable();
    let cases = [
        (
            Command::BackendDown {
                service: "web".into(),
                backend: "198.18.1.3:8080".into(),
                force: false,
            },
            ErrorKind::WouldEmpty,
            "no active backend",
        ),
        (
            weight("nope", "198.18.1.2:8080", 2),
            ErrorKind::UnknownService,
            "known services: web",
        ),
        (
            weight("web", "198.18.1.9:8080", 2),
            ErrorKind::UnknownBackend,
            "its backends: 198.18.1.2:8080, 198.18.1.3:8080",
        ),
        (
            weight("web", "198.18.1.2:8080", 0),
            ErrorKind::Invalid,
            "out of range",
        ),
        (
            weight("web", "198.18.1.2:8080", 70000),
            ErrorKind::Invalid,
            "out of range",
        ),
        (
            Command::BackendAdd {
                service: "web".into(),
                backend: "198.18.1.3:8080".into(),
                state: None,
            },
            ErrorKind::Invalid,
            "listed twice",
        ),
        (
            Command::BackendAdd {
                service: "web".into(),
                backend: "2001:db8::5".into(),
                state: None,
            },
            ErrorKind::BadRequest,
            "need brackets",
        ),
        (
            Command::BackendAdd {
                service: "web".into(),
                backend: "[2001:db8::5]:8080".into(),
                state: None,
            },
            ErrorKind::Invalid,
            "address family",
        ),
        (
            Command::BackendAdd {
                service: "web".into(),
                backend: "not-an-address:80".into(),
                state: None,
            },
            ErrorKind::BadRequest,
            "malformed address",
        ),
        (
            Command::ServiceRemove {
                service: "web".into(),
            },
            ErrorKind::WouldEmpty,
            "only service",
        ),
        (
            Command::ServiceAdd {
                service: NewService {
                    name: "web".into(),
                    vip: "198.18.100.2:80".into(),
                    proto: config::Proto::Tcp,
                    algorithm: config::Algorithm::Maglev,
                    forwarding: Forwarding::Nat,
                    table_size: Some(1009),
                    backends: vec!["198.18.2.2:80".into()],
                },
            },
            ErrorKind::Invalid,
            "exists already",
        ),
        (
            Command::ServiceAdd {
                service: NewService {
                    name: "same-vip".into(),
                    vip: "198.18.100.1:80".into(),
                    proto: config::Proto::Tcp,
                    algorithm: config::Algorithm::Maglev,
                    forwarding: Forwarding::Nat,
                    table_size: Some(1009),
                    backends: vec!["198.18.2.2:80".into()],
                },
            },
            ErrorKind::Invalid,
            "both use 198.18.100.1:80/tcp",
        ),
    ];
    for (cmd, kind, text) in cases {
        let e = b.run(cmd.clone()).expect_err(&format!("{cmd:?} accepted"));
        assert_eq!(e.kind, kind, "{cmd:?}: {e}");
        assert!(e.message.contains(text), "{cmd:?}: {e}");
        assert_eq!(b.observable(), before, "{cmd:?} changed something");
    }
    // The kernel refusing the writes leaves the file as it was too.
    b.ctl.dataplane_mut().fail_next = true;
    let e = b
        .run(weight("web", "198.18.1.3:8080", 5))
        .expect_err("injected failure");
    assert_eq!(e.kind, ErrorKind::Dataplane);
    assert_eq!(b.observable(), before);
    // --force takes the last active backend out.
    changed(b.run(Command::BackendDown {
        service: "web".into(),
        backend: "198.18.1.3:8080".into(),
        force: true,
    }));
    assert_eq!(
        b.table_counts().keys().copied().collect::<Vec<_>>(),
        [xdp_lb_common::NO_BACKEND]
    );
}

#[test]
fn a_file_edited_but_not_reloaded_blocks_runtime_changes() {
    let mut b = bed();
    let edited = FILE.replace(
        "port = 8080\n\n[[service.backend]]",
        "port = 8080\nweight = 9\n\n[[service.backend]]",
    );
    std::fs::write(&b.path, &edited).unwrap();
    let e = b.run(weight("web", "198.18.1.3:8080", 2)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotPersistable);
    assert!(e.message.contains("xdp-lb reload"), "{e}");
    assert_eq!(b.file(), edited, "the operator's edit was overwritten");
    changed(b.run(Command::Reload));
    changed(b.run(weight("web", "198.18.1.3:8080", 2)));
    let file = b.file();
    assert!(
        file.contains("weight = 9") && file.contains("weight = 2"),
        "{file}"
    );
}

#[test]
fn drain_timeout_takes_the_backend_down() {
    let mut b = bed();
    changed(b.run(Command::BackendDrain {
        service: "web".into(),
        backend: "198.18.1.3:8080".into(),
        timeout_ms: Some(30_000),
        force: false,
    }));
    let deadline = b.ctl.next_deadline().expect("a timer");
    let Reply::Status(s) = b.run(Command::Status).unwrap() else {
        panic!("status")
    };
    let left = s.services[0].backends[1].drain_remaining_secs.unwrap();
    assert!(left > 0.0 && left <= 30.0, "{left}");
    // Not yet.
    b.ctl.fire_timers(deadline - Duration::from_secs(1));
    assert_eq!(
        b.ctl.config().services[0].backends[1].state,
        BackendState::Draining
    );
    b.ctl.fire_timers(deadline);
    assert_eq!(
        b.ctl.config().services[0].backends[1].state,
        BackendState::Down
    );
    assert!(b.file().contains("state = \"down\""));
    assert!(b.ctl.next_deadline().is_none());
    let Reply::Status(s) = b.run(Command::Status).unwrap() else {
        panic!("status")
    };
    let last = s.recent_events.last().unwrap();
    assert_eq!(last.origin, Origin::Timer);
    assert!(last.reason.as_deref().unwrap().contains("30s"), "{last}");
    // Undrain before a timeout cancels it.
    changed(b.run(Command::BackendUp {
        service: "web".into(),
        backend: "198.18.1.3:8080".into(),
    }));
    changed(b.run(Command::BackendDrain {
        service: "web".into(),
        backend: "198.18.1.3:8080".into(),
        timeout_ms: Some(1),
        force: false,
    }));
    changed(b.run(Command::BackendUndrain {
        service: "web".into(),
        backend: "198.18.1.3:8080".into(),
    }));
    assert!(b.ctl.next_deadline().is_none());
}

#[test]
fn services_and_backends_are_added_and_removed() {
    let mut b = bed();
    changed(b.run(Command::ServiceAdd {
        service: NewService {
            name: "api".into(),
            vip: "198.18.100.2:443".into(),
            proto: config::Proto::Tcp,
            algorithm: config::Algorithm::SrcHash,
            forwarding: Forwarding::Dsr,
            table_size: Some(1009),
            backends: vec!["198.18.2.2".into(), "198.18.2.3:443@2".into()],
        },
    }));
    assert_eq!(b.ctl.config().services.len(), 2);
    assert_eq!(b.ctl.dataplane().services.len(), 2);
    let file = b.file();
    assert!(
        file.contains("name = \"api\"") && file.contains("forwarding = \"dsr\""),
        "{file}"
    );
    changed(b.run(Command::BackendAdd {
        service: "web".into(),
        backend: "198.18.1.4:8080@2".into(),
        state: None,
    }));
    assert_eq!(b.table_counts().len(), 3);
    changed(b.run(Command::BackendRemove {
        service: "web".into(),
        backend: "198.18.1.2:8080".into(),
        force: false,
    }));
    assert_eq!(b.table_counts().len(), 2);
    changed(b.run(Command::ServiceRemove {
        service: "api".into(),
    }));
    assert_eq!(b.ctl.dataplane().services.len(), 1);
    let reread = config::load(&Sources {
        config: Some(b.path.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(&reread, b.ctl.config());
}

#[test]
fn flag_services_and_flag_only_daemons_refuse_runtime_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, FILE).unwrap();
    let sources = Sources {
        config: Some(path),
        vip: Some("198.18.100.9:80".into()),
        backends: vec!["198.18.9.2:80".into()],
        table_size: Some(1009),
        ..Default::default()
    };
    let (cfg, text) = config::load_with_text(&sources).unwrap();
    let mut planner = Planner::new(cfg.max_services, cfg.max_table_size);
    let plan = planner.apply(&cfg).unwrap();
    let flag_name = cfg.services[1].name.clone();
    let mut ctl = Controller::new(
        sources,
        cfg,
        text,
        planner,
        FakeDataplane::default(),
        plan.changes,
        vec![],
    );
    let e = ctl
        .handle(weight(&flag_name, "198.18.9.2:80", 2))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotPersistable);
    assert!(e.message.contains("command-line flags"), "{e}");
    // The file's services still change.
    ctl.handle(weight("web", "198.18.1.2:8080", 2)).unwrap();

    let sources = Sources {
        ifaces: vec!["veth0".into()],
        vip: Some("198.18.100.9:80".into()),
        backends: vec!["198.18.9.2:80".into()],
        ..Default::default()
    };
    let cfg = config::load(&sources).unwrap();
    let mut planner = Planner::new(cfg.max_services, cfg.max_table_size);
    let plan = planner.apply(&cfg).unwrap();
    let name = cfg.services[0].name.clone();
    let mut ctl = Controller::new(
        sources,
        cfg,
        None,
        planner,
        FakeDataplane::default(),
        plan.changes,
        vec![],
    );
    let e = ctl.handle(weight(&name, "198.18.9.2:80", 2)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotPersistable);
    assert!(e.message.contains("--config"), "{e}");
}

#[test]
fn status_rates_come_from_counter_deltas_over_real_time() {
    let mut b = bed();
    let id = b.id_of("198.18.1.2:8080");
    let t0 = Instant::now();
    b.ctl.dataplane_mut().backend_counters.insert(
        id,
        Counters {
            packets: 1000,
            bytes: 100_000,
            new_flows: 10,
        },
    );
    b.ctl.sample(t0);
    b.ctl.dataplane_mut().backend_counters.insert(
        id,
        Counters {
            packets: 3000,
            bytes: 300_000,
            new_flows: 30,
        },
    );
    b.ctl.sample(t0 + Duration::from_secs(2));
    let s = b.ctl.status();
    let be = &s.services[0].backends[0];
    assert_eq!(s.rate_window_secs, 2.0);
    assert_eq!(be.packets_per_sec, 1000.0);
    assert_eq!(be.bits_per_sec, 800_000.0);
    assert_eq!(be.new_flows_per_sec, 10.0);
    // A reset (counter went backwards) never gives a negative rate.
    b.ctl.dataplane_mut().backend_counters.insert(
        id,
        Counters {
            packets: 500,
            bytes: 50_000,
            new_flows: 5,
        },
    );
    b.ctl.sample(t0 + Duration::from_secs(3));
    let be = b.ctl.status().services[0].backends[0].clone();
    assert_eq!(be.packets_per_sec, 500.0);
    // Table share and flows per backend.
    let gen = b.ctl.planner().assignments()[0].slots[0].generation;
    b.ctl.dataplane_mut().flows.by_backend.insert((id, gen), 42);
    b.ctl
        .dataplane_mut()
        .flows
        .by_backend
        .insert((id, gen + 1), 7);
    let s = b.ctl.status();
    assert_eq!(
        s.services[0].backends[0].flows, 42,
        "stale generation counted"
    );
    let shares: f64 = s.services[0].backends.iter().map(|b| b.table_share).sum();
    assert!((shares - 100.0).abs() < 1e-9, "{shares}");
}

// ---- health: the runtime overlay ----

use std::{cell::RefCell, rc::Rc};

use crate::health::{ProbeFailure, Target};
use xdp_lb_common::{BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, NO_BACKEND};

const B2: &str = "198.18.1.2:8080";
const B3: &str = "198.18.1.3:8080";
const B4: &str = "198.18.1.4:8080";

/// `FILE` with `extra` spliced into the service table (before its backends) and a
/// third backend `198.18.1.4:8080` whose table lines are `b4`.
fn health_file(extra: &str, b4: &str) -> String {
    let svc_end = FILE.find("[[service.backend]]").unwrap();
    format!(
        "{}{extra}\n\n{}\n[[service.backend]]\naddr = \"198.18.1.4\"\nport = 8080\n{b4}\n",
        &FILE[..svc_end],
        &FILE[svc_end..]
    )
}

fn event(backend: &str, up: bool, at: Instant) -> HealthEvent {
    HealthEvent {
        service: "web".into(),
        backend: backend.parse().unwrap(),
        up,
        reason: (!up).then_some(ProbeFailure::Refused),
        latency: up.then_some(Duration::from_micros(1500)),
        at,
    }
}

impl Bed {
    fn health(&mut self, backend: &str, up: bool) -> Vec<Event> {
        let now = Instant::now();
        self.ctl.health_event(event(backend, up, now), now)
    }

    /// The configured backends present in the published table of "web".
    fn in_table(&self) -> Vec<&'static str> {
        let counts = self.table_counts();
        [B2, B3, B4]
            .into_iter()
            .filter(|b| {
                let a: SocketAddr = b.parse().unwrap();
                self.ctl.planner().assignments()[0]
                    .backends
                    .iter()
                    .any(|(x, id)| *x == a && counts.contains_key(id))
            })
            .collect()
    }

    /// The backend record's state as the kernel sees it.
    fn kernel_state(&self, backend: &str) -> u8 {
        self.ctl.dataplane().backends[&self.id_of(backend)].state
    }

    fn backend_status(&self, backend: &str) -> BackendStatus {
        let a: SocketAddr = backend.parse().unwrap();
        self.ctl.status().services[0]
            .backends
            .iter()
            .find(|b| b.addr == a)
            .unwrap()
            .clone()
    }

    fn admin(&mut self, cmd: Command) {
        changed(self.run(cmd));
    }
}

fn down(backend: &str) -> Command {
    Command::BackendDown {
        service: "web".into(),
        backend: backend.into(),
        force: false,
    }
}

fn up(backend: &str) -> Command {
    Command::BackendUp {
        service: "web".into(),
        backend: backend.into(),
    }
}

#[test]
fn a_down_event_takes_the_backend_out_and_an_up_event_brings_it_back() {
    let mut b = bed();
    let file = b.file();
    assert_eq!(b.in_table(), [B2, B3]);
    let events = b.health(B2, false);
    assert_eq!(b.in_table(), [B3]);
    // Its flows are re-dispatched: the kernel's record says down.
    assert_eq!(b.kernel_state(B2), BACKEND_DOWN);
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e.origin, Origin::Health);
        assert_eq!(
            e.reason.as_deref(),
            Some("health check failed: connection refused")
        );
    }
    assert!(events.iter().any(|e| matches!(
        &e.change,
        Change::BackendState { backend, to: BackendState::Down, .. } if backend.to_string() == B2
    )));
    // Health is an overlay: the desired state and the file are untouched.
    assert_eq!(
        b.ctl.config().services[0].backends[0].state,
        BackendState::Active
    );
    assert_eq!(b.file(), file);
    let st = b.backend_status(B2);
    assert_eq!(
        (st.state, st.effective_state),
        (BackendState::Active, BackendState::Down)
    );
    let h = st.health.expect("checked by default (tcp service)");
    assert!(!h.up);
    assert_eq!(h.check, "tcp");
    assert_eq!(h.transitions, 1);
    assert_eq!(
        h.reason.as_deref(),
        Some("health check failed: connection refused")
    );

    let events = b.health(B2, true);
    assert_eq!(b.in_table(), [B2, B3]);
    assert_eq!(b.kernel_state(B2), BACKEND_ACTIVE);
    assert!(events.iter().all(|e| e
        .reason
        .as_deref()
        .unwrap()
        .starts_with("health check passed in 1.5 ms")));
    assert_eq!(b.ctl.status().health_transitions, 2);
    assert_eq!(b.backend_status(B2).health.unwrap().transitions, 2);
}

#[test]
fn a_draining_backend_that_fails_its_checks_loses_its_flows() {
    let mut b = bed();
    b.admin(Command::BackendDrain {
        service: "web".into(),
        backend: B3.into(),
        timeout_ms: None,
        force: false,
    });
    assert_eq!(b.kernel_state(B3), BACKEND_DRAINING);
    b.health(B3, false);
    assert_eq!(b.kernel_state(B3), BACKEND_DOWN);
    // A pass gives it back its draining flows' state (no new flows).
    b.health(B3, true);
    assert_eq!(b.kernel_state(B3), BACKEND_DRAINING);
    assert_eq!(b.in_table(), [B2]);
}

#[test]
fn admin_down_beats_a_passing_check_and_up_hands_it_back_to_the_checks() {
    let mut b = bed();
    b.admin(down(B2));
    // A passing check does not bring an operator's down backend back.
    let events = b.health(B2, true);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(b.in_table(), [B3]);
    let st = b.backend_status(B2);
    assert_eq!(st.state, BackendState::Down);
    assert!(
        st.health.unwrap().up,
        "status shows the health state beside the admin state"
    );
    // The checks call it down while the operator has it down: nothing changes ...
    b.health(B2, false);
    assert_eq!(b.in_table(), [B3]);
    // ... and `up` hands it to the checks, which still say down.
    b.admin(up(B2));
    assert_eq!(
        b.ctl.config().services[0].backends[0].state,
        BackendState::Active
    );
    assert_eq!(b.in_table(), [B3]);
    assert_eq!(b.kernel_state(B2), BACKEND_DOWN);
    b.health(B2, true);
    assert_eq!(b.in_table(), [B2, B3]);
}

#[test]
fn the_backup_takes_over_when_every_primary_is_down_and_hands_back() {
    let mut b = bed_with(&health_file("", "backup = true"));
    // At start the backup is out of the table but keeps any flows (draining).
    assert_eq!(b.in_table(), [B2, B3]);
    assert_eq!(b.kernel_state(B4), BACKEND_DRAINING);
    let st = b.backend_status(B4);
    assert!(st.backup);
    assert_eq!(
        (st.state, st.effective_state),
        (BackendState::Active, BackendState::Draining)
    );
    b.health(B2, false);
    assert_eq!(b.in_table(), [B3]);
    b.health(B3, false);
    assert_eq!(b.in_table(), [B4]);
    assert_eq!(b.ctl.status().services[0].serving, Serving::Backups);
    // One primary back: new flows go to it, the backup keeps what it has.
    b.health(B2, true);
    assert_eq!(b.in_table(), [B2]);
    assert_eq!(b.kernel_state(B4), BACKEND_DRAINING);
    assert_eq!(b.ctl.status().services[0].serving, Serving::Primaries);
}

#[test]
fn every_backend_down_drops_or_fails_open() {
    let mut b = bed();
    b.health(B2, false);
    b.health(B3, false);
    assert_eq!(
        b.table_counts().keys().copied().collect::<Vec<_>>(),
        [NO_BACKEND]
    );
    assert_eq!(b.ctl.status().services[0].serving, Serving::AllDownDrop);
    b.health(B3, true);
    assert_eq!(b.in_table(), [B3]);

    let mut b = bed_with(&FILE.replace(
        "table_size = 1009\n\n[[service.backend]]",
        "table_size = 1009\non_all_down = \"fail-open\"\n\n[[service.backend]]",
    ));
    assert_eq!(b.ctl.config().services[0].on_all_down, OnAllDown::FailOpen);
    b.health(B2, false);
    assert_eq!(b.in_table(), [B3]);
    b.health(B3, false);
    // Every configured backend, as if all were up.
    assert_eq!(b.in_table(), [B2, B3]);
    assert_eq!(b.kernel_state(B2), BACKEND_ACTIVE);
    assert_eq!(b.ctl.status().services[0].serving, Serving::AllDownFailOpen);
    b.health(B2, true);
    assert_eq!(b.in_table(), [B2]);
    assert_eq!(b.kernel_state(B3), BACKEND_DOWN);
}

#[test]
fn slow_start_ramps_the_weight_in_timer_steps() {
    let mut b = bed_with(&health_file("slow_start = \"30s\"", "weight = 4"));
    let t0 = Instant::now();
    b.ctl.health_event(event(B4, false, t0), t0);
    assert!(b.ctl.next_deadline().is_none());
    b.ctl.health_event(event(B4, true, t0), t0);
    let weights = |b: &Bed| -> Vec<(u32, u32, Origin)> {
        b.ctl
            .status()
            .recent_events
            .iter()
            .filter_map(|e| match &e.change {
                Change::BackendWeight {
                    backend, from, to, ..
                } if backend.to_string() == B4 => Some((*from, *to, e.origin)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(weights(&b), [(4, 1, Origin::Health)]);
    let s = Duration::from_secs(1);
    assert_eq!(b.ctl.next_deadline(), Some(t0 + s * 10));
    // Not yet.
    b.ctl.fire_timers(t0 + s * 9);
    assert_eq!(weights(&b).len(), 1);
    for (at, w) in [(10, 2), (20, 3), (30, 4)] {
        b.ctl
            .fire_timers(b.ctl.next_deadline().expect("a step is due"));
        assert_eq!(
            weights(&b).last().copied(),
            Some((w - 1, w, Origin::Timer)),
            "{at}s into the ramp"
        );
    }
    assert!(b.ctl.next_deadline().is_none(), "the ramp is over");
    // The table follows: 4:1:1 of 1009 for the ramped backend.
    let share = b.table_counts()[&b.id_of(B4)];
    assert!((640..=705).contains(&share), "{share}");
}

/// Records what the controller asks the checker to check.
#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Vec<Vec<Target>>>>);

impl HealthSource for Recorder {
    fn update(&mut self, targets: Vec<Target>) {
        self.0.borrow_mut().push(targets);
    }

    fn snapshot(&self) -> Vec<BackendHealth> {
        Vec::new()
    }
}

impl Recorder {
    fn last(&self) -> Vec<String> {
        self.0
            .borrow()
            .last()
            .map(|ts| {
                ts.iter()
                    .map(|t| format!("{}/{}", t.service, t.backend))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn the_checker_follows_every_committed_change_and_stale_events_are_ignored() {
    let mut b = bed();
    let rec = Recorder::default();
    b.ctl.attach_health(Box::new(rec.clone()));
    assert_eq!(rec.last(), [format!("web/{B2}"), format!("web/{B3}")]);
    b.admin(Command::BackendAdd {
        service: "web".into(),
        backend: "198.18.1.4:8080".into(),
        state: None,
    });
    assert_eq!(rec.last().len(), 3);
    b.health(B4, false);
    b.admin(Command::BackendRemove {
        service: "web".into(),
        backend: B4.into(),
        force: false,
    });
    assert_eq!(rec.last().len(), 2);
    // An event from before the removal changes nothing.
    let before = b.observable();
    assert!(b.health(B4, true).is_empty());
    assert_eq!(b.observable(), before);
    // A udp service without a health_check table is not checked; type "none" is not.
    std::fs::write(
        &b.path,
        format!(
            "{FILE}\n[service.health_check]\ntype = \"none\"\n\n[[service]]\nname = \"dns\"\nvip = \"198.18.100.2\"\nport = 53\nproto = \"udp\"\ntable_size = 1009\n[[service.backend]]\naddr = \"198.18.1.5\"\nport = 53\n"
        ),
    )
    .unwrap();
    changed(b.run(Command::Reload));
    assert!(rec.last().is_empty(), "{:?}", rec.last());
    assert!(b.backend_status(B2).health.is_none());
}

#[test]
fn least_conn_counts_are_reconciled_for_least_conn_backends_only_and_paced() {
    let every = Duration::from_secs(10);
    // No least-conn service: no walk at all.
    let mut b = bed();
    b.ctl.reconcile_conns(Instant::now(), every);
    assert!(b.ctl.dataplane().reconciled.is_empty());

    let mut b =
        bed_with(&FILE.replacen("port = 80\n", "port = 80\nalgorithm = \"least-conn\"\n", 1));
    let t0 = Instant::now();
    b.ctl.reconcile_conns(t0, every);
    let want: HashMap<u32, u32> = b.ctl.planner().assignments()[0]
        .slots
        .iter()
        .map(|s| (s.id, s.generation))
        .collect();
    assert_eq!(want.len(), 2);
    assert_eq!(b.ctl.dataplane().reconciled, vec![want]);
    // Not again before `every` has passed; again after.
    b.ctl.reconcile_conns(t0 + Duration::from_secs(5), every);
    assert_eq!(b.ctl.dataplane().reconciled.len(), 1);
    b.ctl.reconcile_conns(t0 + every, every);
    assert_eq!(b.ctl.dataplane().reconciled.len(), 2);
}
