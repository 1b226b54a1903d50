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
