//! The planner: a pure state machine that turns successive `Config`s into the exact
//! map writes the BPF adapter performs, in an order that never lets the XDP program
//! see a half-made change (Katran's split between LB logic and the kernel adapter).
//!
//! Ordering contract for the adapter: apply `backend_writes` and `reply_writes`, then
//! `ring_writes`, then `service_writes`, then `service_deletes`, then `backend_frees`
//! and `reply_deletes`. A new or changed
//! table always goes into the service's idle ring half, and only the `Service` record
//! rewrite (one map update) makes the kernel switch to it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
};

use xdp_lb_common::{
    Backend, ReplyTarget, Service, ServiceKey, BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING,
    MAX_BACKENDS, NO_BACKEND, REPLY_PER_FLOW, SVC_FWD_DSR, SVC_HASH_SRC_ONLY, SVC_REVERSE_PER_FLOW,
    SVC_SCHED_LC, SVC_SCHED_P2C, SVC_SCHED_RR,
};

use crate::{
    config::{is_prime, Algorithm, BackendState, Config, Forwarding, ServiceConfig},
    maglev::{self, MaglevBackend},
    sched,
};

pub use xdp_lb_common::wire::{ip_to_words, port_to_wire};

/// The SERVICES map key of a configured service.
pub fn service_key(svc: &ServiceConfig) -> ServiceKey {
    let (addr, family) = ip_to_words(svc.vip);
    ServiceKey {
        addr,
        port: port_to_wire(svc.port),
        proto: svc.proto.number(),
        family,
    }
}

/// `Service::flags` of a configured service.
pub fn service_flags(svc: &ServiceConfig) -> u32 {
    let mut flags = 0;
    if svc.forwarding == Forwarding::Dsr {
        flags |= SVC_FWD_DSR;
    }
    flags |= match svc.algorithm {
        Algorithm::Maglev => 0,
        Algorithm::SrcHash => SVC_HASH_SRC_ONLY,
        Algorithm::RoundRobin | Algorithm::WeightedRoundRobin => SVC_SCHED_RR,
        Algorithm::LeastConn => SVC_SCHED_LC,
        Algorithm::RandomTwoLeastConn => SVC_SCHED_LC | SVC_SCHED_P2C,
    };
    flags
}

fn state_code(state: BackendState) -> u8 {
    match state {
        BackendState::Active => BACKEND_ACTIVE,
        BackendState::Draining => BACKEND_DRAINING,
        BackendState::Down => BACKEND_DOWN,
    }
}

/// One change the planner made, as the operator's log, the admin API and metrics
/// see it. `Display` gives the log line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    ServiceAdded {
        service: String,
        endpoint: String,
        algorithm: Algorithm,
        forwarding: Forwarding,
        table_size: u32,
    },
    ServiceRemoved {
        service: String,
    },
    ServiceMode {
        service: String,
        algorithm: Algorithm,
        forwarding: Forwarding,
    },
    BackendAdded {
        service: String,
        backend: SocketAddr,
        weight: u32,
        state: BackendState,
        slot: u32,
    },
    BackendRemoved {
        service: String,
        backend: SocketAddr,
        slot: u32,
    },
    BackendState {
        service: String,
        backend: SocketAddr,
        from: BackendState,
        to: BackendState,
    },
    BackendWeight {
        service: String,
        backend: SocketAddr,
        from: u32,
        to: u32,
    },
    TablePublished {
        service: String,
        half: u32,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::ServiceAdded {
                service,
                endpoint,
                algorithm,
                forwarding,
                table_size,
            } => write!(
                f,
                "service {service}: added {endpoint} ({algorithm}, {forwarding}, table {table_size})"
            ),
            Change::ServiceRemoved { service } => write!(f, "service {service}: removed"),
            Change::ServiceMode {
                service,
                algorithm,
                forwarding,
            } => write!(f, "service {service}: now {algorithm} / {forwarding}"),
            Change::BackendAdded {
                service,
                backend,
                weight,
                state,
                slot,
            } => write!(
                f,
                "service {service}: +{backend} w={weight} {state} (slot {slot})"
            ),
            Change::BackendRemoved {
                service,
                backend,
                slot,
            } => write!(f, "service {service}: -{backend} (slot {slot})"),
            Change::BackendState {
                service,
                backend,
                from,
                to,
            } => write!(f, "service {service}: {backend} {from} -> {to}"),
            Change::BackendWeight {
                service,
                backend,
                from,
                to,
            } => write!(f, "service {service}: {backend} weight {from} -> {to}"),
            Change::TablePublished { service, half } => {
                write!(f, "service {service}: new table published in ring half {half}")
            }
        }
    }
}

/// The writes that take the kernel from the previously applied config to the new one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// 1st: new backend slots and changed records (state, generation, address).
    pub backend_writes: Vec<(u32, Backend)>,
    /// 2nd: (offset into MAGLEV_RING, table of backend ids, `ring_size` long).
    pub ring_writes: Vec<(u32, Vec<u32>)>,
    /// 3rd: new or changed Service records; this publishes the new tables.
    pub service_writes: Vec<(ServiceKey, Service)>,
    /// 4th: services no longer configured.
    pub service_deletes: Vec<ServiceKey>,
    /// 5th: slots of removed backends, and backends newly marked down, written with
    /// state DOWN once no table names them, so flows still pinned to them are
    /// re-dispatched.
    pub backend_frees: Vec<(u32, Backend)>,
    /// 1st, with the backends: NAT backend endpoints -> VIP their replies go back to.
    pub reply_writes: Vec<(ServiceKey, ReplyTarget)>,
    /// Last: endpoints no NAT service uses any more.
    pub reply_deletes: Vec<ServiceKey>,
    /// Last: BACKEND_OWNERS entries, backend id -> owning service id + 1 (0: freed).
    /// Only the control plane reads them (`restore`); the XDP program never does.
    pub owner_writes: Vec<(u32, u32)>,
    /// What changed, one entry per change, for the operator's log and the admin API.
    pub changes: Vec<Change>,
}

impl Plan {
    /// True when the kernel needs no writes at all.
    pub fn is_empty(&self) -> bool {
        self.backend_writes.is_empty()
            && self.ring_writes.is_empty()
            && self.service_writes.is_empty()
            && self.service_deletes.is_empty()
            && self.backend_frees.is_empty()
            && self.reply_writes.is_empty()
            && self.reply_deletes.is_empty()
            && self.owner_writes.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{key} changed from {running} to {configured}; it sizes kernel maps, so restart xdp-lb to change it")]
    LimitChanged {
        key: &'static str,
        running: u32,
        configured: u32,
    },
    #[error("{count} services configured but the maps were sized for max_services = {max}; restart to change max_services")]
    TooManyServices { count: usize, max: u32 },
    #[error("service {service:?}: table_size {size} exceeds max_table_size {max} the ring map was sized for; restart to change max_table_size")]
    TableTooLarge {
        service: String,
        size: u32,
        max: u32,
    },
    #[error("service {service:?}: table_size {size} is not prime")]
    TableSizeNotPrime { service: String, size: u32 },
    #[error("service {service:?}: table_size must be {max} or less and non-zero, got {size}")]
    TableSizeZero {
        service: String,
        size: u32,
        max: u32,
    },
    #[error("{endpoint} configured twice")]
    DuplicateService { endpoint: String },
    #[error("service {service:?}: backend {backend} listed twice")]
    DuplicateBackend {
        service: String,
        backend: SocketAddr,
    },
    #[error("out of backend slots: {needed} new backends but only {available} free of {MAX_BACKENDS} (removed backends' slots are reused one reload later)")]
    BackendSlotsExhausted { needed: usize, available: usize },
}

/// Service ids and backend ids currently assigned, for labelling counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIds {
    pub name: String,
    pub key: ServiceKey,
    pub id: u32,
    /// (backend address, backend id), sorted by address.
    pub backends: Vec<(SocketAddr, u32)>,
    /// Per backend, in the order of `backends`: its slot and its share of the table.
    pub slots: Vec<BackendSlot>,
    /// Entries in the published table.
    pub table_size: u32,
}

/// A backend's slot in BACKENDS and how much of its service's table it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSlot {
    pub addr: SocketAddr,
    pub id: u32,
    /// Flow entries carrying another generation belong to a former occupant.
    pub generation: u32,
    /// Entries of the published table that name this backend.
    pub table_entries: u32,
}

#[derive(Debug, Clone)]
struct AppliedBackend {
    id: u32,
    record: Backend,
    weight: u32,
    state: BackendState,
}

#[derive(Debug, Clone)]
struct AppliedService {
    name: String,
    id: u32,
    record: Service,
    /// Ring half (0/1) the published table lives in.
    slot: u32,
    /// Published table: backend ids, `record.ring_size` long.
    table: Vec<u32>,
    backends: BTreeMap<SocketAddr, AppliedBackend>,
}

/// Allocation state carried from one `apply` to the next.
#[derive(Debug, Clone)]
pub struct Planner {
    max_services: u32,
    max_table_size: u32,
    services: HashMap<ServiceKey, AppliedService>,
    /// Unused service ids; the lowest is taken first.
    free_service_ids: BTreeSet<u32>,
    /// Per service id, the ring half last published by whoever held the id, so a new
    /// holder starts in the other half and never overwrites a live table.
    last_slot: Vec<u32>,
    /// Backend ids never handed out yet start here.
    next_fresh_backend: u32,
    /// Released backend ids, oldest first: reused only once fresh ids run out, so a
    /// slot stays DOWN (and distinct) as long as possible after its backend left.
    free_backends: VecDeque<u32>,
    /// Per backend id, bumped on every assignment.
    generations: Vec<u32>,
    /// BACKEND_REPLIES as last planned.
    replies: HashMap<ServiceKey, ReplyTarget>,
    /// Services (by key) with a backend endpoint shared with another NAT service.
    per_flow: HashSet<ServiceKey>,
}

impl Planner {
    pub fn new(max_services: u32, max_table_size: u32) -> Self {
        Planner {
            max_services,
            max_table_size,
            services: HashMap::new(),
            free_service_ids: (0..max_services).collect(),
            // The first holder of every id publishes into half 0.
            last_slot: vec![1; max_services as usize],
            next_fresh_backend: 0,
            free_backends: VecDeque::new(),
            generations: vec![0; MAX_BACKENDS as usize],
            replies: HashMap::new(),
            per_flow: HashSet::new(),
        }
    }

    /// Offset into MAGLEV_RING of ring half `slot` of service `id`.
    pub fn ring_offset(&self, id: u32, slot: u32) -> u32 {
        xdp_lb_common::wire::ring_offset(id, slot, self.max_table_size)
    }

    /// Ids currently assigned, sorted by service id.
    pub fn assignments(&self) -> Vec<ServiceIds> {
        let mut out: Vec<ServiceIds> = self
            .services
            .iter()
            .map(|(key, s)| ServiceIds {
                name: s.name.clone(),
                key: *key,
                id: s.id,
                backends: s.backends.iter().map(|(a, b)| (*a, b.id)).collect(),
                slots: s
                    .backends
                    .iter()
                    .map(|(a, b)| BackendSlot {
                        addr: *a,
                        id: b.id,
                        generation: b.record.generation,
                        table_entries: s.table.iter().filter(|&&i| i == b.id).count() as u32,
                    })
                    .collect(),
                table_size: s.table.len() as u32,
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// Checks everything that can fail before any state changes, so a rejected
    /// config leaves the planner exactly as it was.
    fn precheck(&self, cfg: &Config) -> Result<(), PlanError> {
        for (key, running, configured) in [
            ("max_services", self.max_services, cfg.max_services),
            ("max_table_size", self.max_table_size, cfg.max_table_size),
        ] {
            if running != configured {
                return Err(PlanError::LimitChanged {
                    key,
                    running,
                    configured,
                });
            }
        }
        if cfg.services.len() > self.max_services as usize {
            return Err(PlanError::TooManyServices {
                count: cfg.services.len(),
                max: self.max_services,
            });
        }
        let mut keys = HashSet::new();
        let mut new_backends = 0;
        for svc in &cfg.services {
            let size = svc.table_size;
            if size == 0 {
                return Err(PlanError::TableSizeZero {
                    service: svc.name.clone(),
                    size,
                    max: self.max_table_size,
                });
            }
            if size > self.max_table_size {
                return Err(PlanError::TableTooLarge {
                    service: svc.name.clone(),
                    size,
                    max: self.max_table_size,
                });
            }
            if !is_prime(size) {
                return Err(PlanError::TableSizeNotPrime {
                    service: svc.name.clone(),
                    size,
                });
            }
            let key = service_key(svc);
            if !keys.insert(key) {
                return Err(PlanError::DuplicateService {
                    endpoint: svc.endpoint(),
                });
            }
            let existing = self.services.get(&key);
            let mut addrs = HashSet::new();
            for b in &svc.backends {
                let addr = backend_addr(svc, b.addr, b.port);
                if !addrs.insert(addr) {
                    return Err(PlanError::DuplicateBackend {
                        service: svc.name.clone(),
                        backend: addr,
                    });
                }
                if !existing.is_some_and(|s| s.backends.contains_key(&addr)) {
                    new_backends += 1;
                }
            }
        }
        let available =
            (MAX_BACKENDS - self.next_fresh_backend) as usize + self.free_backends.len();
        if new_backends > available {
            return Err(PlanError::BackendSlotsExhausted {
                needed: new_backends,
                available,
            });
        }
        Ok(())
    }

    fn alloc_backend(&mut self) -> (u32, u32) {
        let id = if self.next_fresh_backend < MAX_BACKENDS {
            self.next_fresh_backend += 1;
            self.next_fresh_backend - 1
        } else {
            self.free_backends
                .pop_front()
                .expect("precheck counted free backend slots")
        };
        let generation = &mut self.generations[id as usize];
        // 0 never names a live occupant, so a zeroed flow entry cannot match.
        *generation = generation.wrapping_add(1).max(1);
        (id, *generation)
    }

    /// Diff `cfg` against what was applied before and return the writes, in the
    /// order to perform them. On error nothing changes.
    pub fn apply(&mut self, cfg: &Config) -> Result<Plan, PlanError> {
        self.precheck(cfg)?;
        let mut plan = Plan::default();
        let (replies, per_flow) = reply_targets(cfg);
        self.per_flow = per_flow;
        for (k, t) in &replies {
            if self.replies.get(k) != Some(t) {
                plan.reply_writes.push((*k, *t));
            }
        }
        plan.reply_deletes = self
            .replies
            .keys()
            .filter(|k| !replies.contains_key(k))
            .copied()
            .collect();
        self.replies = replies;
        // Ids released by this apply only become reusable after it: until the
        // adapter finishes, the old service or ring may still point at them.
        let mut released_backends = Vec::new();
        let mut released_services = Vec::new();

        let wanted: HashSet<ServiceKey> = cfg.services.iter().map(service_key).collect();
        let mut gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        gone.sort_by_key(|k| self.services[k].id);
        for key in gone {
            let old = self.services.remove(&key).expect("key listed from map");
            plan.changes.push(Change::ServiceRemoved {
                service: old.name.clone(),
            });
            for (addr, b) in old.backends {
                plan.backend_frees.push((
                    b.id,
                    Backend {
                        state: BACKEND_DOWN,
                        ..b.record
                    },
                ));
                plan.changes.push(Change::BackendRemoved {
                    service: old.name.clone(),
                    backend: addr,
                    slot: b.id,
                });
                plan.owner_writes.push((b.id, 0));
                released_backends.push(b.id);
            }
            plan.service_deletes.push(key);
            released_services.push(old.id);
        }

        for svc in &cfg.services {
            let key = service_key(svc);
            let mut applied = match self.services.remove(&key) {
                Some(existing) => existing,
                None => {
                    // Prefer an id nobody used this round; an id released just now is
                    // still safe because `last_slot` steers us to its idle half.
                    let id = match self.free_service_ids.pop_first() {
                        Some(id) => id,
                        None => {
                            released_services.sort_unstable();
                            released_services.remove(0)
                        }
                    };
                    plan.changes.push(Change::ServiceAdded {
                        service: svc.name.clone(),
                        endpoint: svc.endpoint(),
                        algorithm: svc.algorithm,
                        forwarding: svc.forwarding,
                        table_size: svc.table_size,
                    });
                    AppliedService {
                        name: svc.name.clone(),
                        id,
                        record: Service::default(),
                        slot: self.last_slot[id as usize],
                        table: Vec::new(),
                        backends: BTreeMap::new(),
                    }
                }
            };
            applied.name = svc.name.clone();
            self.plan_backends(svc, &mut applied, &mut plan, &mut released_backends);
            self.plan_table(svc, &mut applied, &mut plan);
            self.services.insert(key, applied);
        }

        self.free_backends.extend(released_backends);
        self.free_service_ids.extend(released_services);
        Ok(plan)
    }

    /// Backend records of one service: keep ids of backends that stay, allocate for
    /// new ones, release the rest.
    fn plan_backends(
        &mut self,
        svc: &ServiceConfig,
        applied: &mut AppliedService,
        plan: &mut Plan,
        released: &mut Vec<u32>,
    ) {
        let mut old = std::mem::take(&mut applied.backends);
        for b in &svc.backends {
            let addr = backend_addr(svc, b.addr, b.port);
            let (words, family) = ip_to_words(addr.ip());
            let record = |generation| Backend {
                addr: words,
                port: port_to_wire(addr.port()),
                family,
                state: state_code(b.state),
                generation,
                // Only the least-conn schedulers read weights in the kernel; the
                // others carry them in their tables, so a reweight there rewrites no
                // record.
                weight: if svc.algorithm.counts_connections() {
                    b.weight
                } else {
                    0
                },
            };
            let entry = match old.remove(&addr) {
                Some(prev) => {
                    let new = record(prev.record.generation);
                    if new != prev.record {
                        // Marking a backend down waits until the table without it is
                        // published, or new flows hashing to it would be dropped
                        // in between; anything else must precede the table.
                        if new.state == BACKEND_DOWN && prev.record.state != BACKEND_DOWN {
                            plan.backend_frees.push((prev.id, new));
                        } else {
                            plan.backend_writes.push((prev.id, new));
                        }
                    }
                    if prev.state != b.state {
                        plan.changes.push(Change::BackendState {
                            service: svc.name.clone(),
                            backend: addr,
                            from: prev.state,
                            to: b.state,
                        });
                    }
                    // Weight 0: restored from the kernel, which does not keep weights.
                    if prev.weight != b.weight && prev.weight != 0 {
                        plan.changes.push(Change::BackendWeight {
                            service: svc.name.clone(),
                            backend: addr,
                            from: prev.weight,
                            to: b.weight,
                        });
                    }
                    AppliedBackend {
                        id: prev.id,
                        record: new,
                        weight: b.weight,
                        state: b.state,
                    }
                }
                None => {
                    let (id, generation) = self.alloc_backend();
                    let new = record(generation);
                    plan.backend_writes.push((id, new));
                    plan.owner_writes.push((id, applied.id + 1));
                    plan.changes.push(Change::BackendAdded {
                        service: svc.name.clone(),
                        backend: addr,
                        weight: b.weight,
                        state: b.state,
                        slot: id,
                    });
                    AppliedBackend {
                        id,
                        record: new,
                        weight: b.weight,
                        state: b.state,
                    }
                }
            };
            applied.backends.insert(addr, entry);
        }
        for (addr, b) in old {
            plan.backend_frees.push((
                b.id,
                Backend {
                    state: BACKEND_DOWN,
                    ..b.record
                },
            ));
            plan.changes.push(Change::BackendRemoved {
                service: svc.name.clone(),
                backend: addr,
                slot: b.id,
            });
            plan.owner_writes.push((b.id, 0));
            released.push(b.id);
        }
    }

    /// Maglev table and Service record of one service: a changed table goes to the
    /// idle ring half and the record flips to it.
    fn plan_table(&mut self, svc: &ServiceConfig, applied: &mut AppliedService, plan: &mut Plan) {
        let table = table_for(svc, &applied.backends);
        let mut slot = applied.slot;
        if table != applied.table {
            // A brand-new service has no live table: `slot` was initialised to the
            // half the previous holder of the id used last, so flip away from it too.
            slot = 1 - applied.slot;
            let offset = self.ring_offset(applied.id, slot);
            plan.ring_writes.push((offset, table.clone()));
            if !applied.table.is_empty() {
                plan.changes.push(Change::TablePublished {
                    service: svc.name.clone(),
                    half: slot,
                });
            }
            applied.table = table;
        }
        let record = Service {
            id: applied.id,
            ring_offset: self.ring_offset(applied.id, slot),
            ring_size: applied.table.len() as u32,
            flags: service_flags(svc)
                | if self.per_flow.contains(&service_key(svc)) {
                    SVC_REVERSE_PER_FLOW
                } else {
                    0
                },
        };
        if record != applied.record {
            if applied.record != Service::default() && record.flags != applied.record.flags {
                plan.changes.push(Change::ServiceMode {
                    service: svc.name.clone(),
                    algorithm: svc.algorithm,
                    forwarding: svc.forwarding,
                });
            }
            plan.service_writes.push((service_key(svc), record));
            applied.record = record;
        }
        applied.slot = slot;
        self.last_slot[applied.id as usize] = slot;
    }
}

/// What the kernel maps hold, as `Planner::restore` needs it (read by
/// `Dataplane::snapshot` from pinned maps a previous run left).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// SERVICES entries, each with the table its record points at (`ring_size` ids).
    pub services: Vec<(ServiceKey, Service, Vec<u32>)>,
    /// BACKENDS slots ever used (generation != 0), with their BACKEND_OWNERS entry
    /// (owning service id + 1; 0: free).
    pub backends: Vec<(u32, Backend, u32)>,
    /// BACKEND_REPLIES.
    pub replies: Vec<(ServiceKey, ReplyTarget)>,
}

/// Pinned maps that no planner could have written: refused rather than guessed at.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("pinned service record has id {id}, but max_services is {max}")]
    ServiceId { id: u32, max: u32 },
    #[error("two pinned service records share id {id}")]
    DuplicateServiceId { id: u32 },
    #[error(
        "pinned service {id} points at ring offset {offset}, which is neither of its table halves"
    )]
    RingOffset { id: u32, offset: u32 },
    #[error("pinned service {id} has a table of {size} entries (max_table_size {max})")]
    TableSize { id: u32, size: u32, max: u32 },
    #[error("pinned backend slot {id} is out of range")]
    BackendId { id: u32 },
    #[error("pinned backend slot {id} has an unknown address family {family}")]
    BackendFamily { id: u32, family: u8 },
}

fn state_from_code(code: u8) -> BackendState {
    match code {
        BACKEND_ACTIVE => BackendState::Active,
        BACKEND_DRAINING => BackendState::Draining,
        _ => BackendState::Down,
    }
}

/// "198.18.100.1:80/tcp" for a service known only by its key (a restored service
/// the configuration no longer names).
fn key_endpoint(key: &ServiceKey) -> String {
    let ip = xdp_lb_common::wire::words_to_ip(key.addr, key.family)
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let port = xdp_lb_common::wire::port_from_wire(key.port);
    let proto = match key.proto {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        p => p.to_string(),
    };
    format!("{}/{proto}", SocketAddr::new(ip, port))
}

impl Planner {
    /// Rebuilds the allocation state a previous run left in the kernel: service ids
    /// and their live table halves, backend ids with their generations and owners,
    /// the free lists, the NAT reply targets. `apply` then diffs a configuration
    /// against what is really programmed, so a flow pinned to (id, generation) can
    /// never match a different backend that took its slot, and a configuration
    /// changed while the daemon was down is applied as a diff. Weights are not kept
    /// in the kernel: restored backends carry weight 0 until the next `apply`.
    pub fn restore(
        max_services: u32,
        max_table_size: u32,
        snap: &Snapshot,
    ) -> Result<Self, RestoreError> {
        let mut p = Planner::new(max_services, max_table_size);
        let mut by_id: HashMap<u32, ServiceKey> = HashMap::new();
        for (key, rec, table) in &snap.services {
            let id = rec.id;
            if id >= max_services {
                return Err(RestoreError::ServiceId {
                    id,
                    max: max_services,
                });
            }
            let slot = if rec.ring_offset == p.ring_offset(id, 0) {
                0
            } else if rec.ring_offset == p.ring_offset(id, 1) {
                1
            } else {
                return Err(RestoreError::RingOffset {
                    id,
                    offset: rec.ring_offset,
                });
            };
            if rec.ring_size == 0
                || rec.ring_size > max_table_size
                || table.len() != rec.ring_size as usize
            {
                return Err(RestoreError::TableSize {
                    id,
                    size: rec.ring_size,
                    max: max_table_size,
                });
            }
            if by_id.insert(id, *key).is_some() {
                return Err(RestoreError::DuplicateServiceId { id });
            }
            p.free_service_ids.remove(&id);
            p.last_slot[id as usize] = slot;
            p.services.insert(
                *key,
                AppliedService {
                    name: key_endpoint(key),
                    id,
                    record: *rec,
                    slot,
                    table: table.clone(),
                    backends: BTreeMap::new(),
                },
            );
        }
        let mut free = Vec::new();
        let mut owned = HashSet::new();
        for &(id, rec, owner) in &snap.backends {
            if id >= MAX_BACKENDS {
                return Err(RestoreError::BackendId { id });
            }
            p.generations[id as usize] = rec.generation;
            p.next_fresh_backend = p.next_fresh_backend.max(id + 1);
            // The owner record first; a backend in a live table whose owner entry
            // was never written (a crash between the two writes) belongs to that
            // table's service.
            let key = owner
                .checked_sub(1)
                .and_then(|sid| by_id.get(&sid).copied())
                .or_else(|| {
                    p.services
                        .iter()
                        .find(|(_, s)| s.table.contains(&id))
                        .map(|(k, _)| *k)
                });
            let Some(key) = key else {
                free.push(id);
                continue;
            };
            let ip = xdp_lb_common::wire::words_to_ip(rec.addr, rec.family).ok_or(
                RestoreError::BackendFamily {
                    id,
                    family: rec.family,
                },
            )?;
            let addr = SocketAddr::new(ip, xdp_lb_common::wire::port_from_wire(rec.port));
            let svc = p.services.get_mut(&key).expect("key taken from services");
            let prev = svc.backends.insert(
                addr,
                AppliedBackend {
                    id,
                    record: rec,
                    weight: 0,
                    state: state_from_code(rec.state),
                },
            );
            if let Some(prev) = prev {
                // Two slots for one endpoint of one service: keep the later, free
                // the other (its flows are re-dispatched once it is reused).
                owned.remove(&prev.id);
                free.push(prev.id);
            }
            owned.insert(id);
        }
        // Slots below the highest used one that were never written count as free.
        for id in 0..p.next_fresh_backend {
            if p.generations[id as usize] == 0 && !owned.contains(&id) && !free.contains(&id) {
                free.push(id);
            }
        }
        free.sort_unstable();
        p.free_backends = free.into();
        p.replies = snap.replies.iter().copied().collect();
        p.per_flow = snap
            .services
            .iter()
            .filter(|(_, rec, _)| rec.flags & SVC_REVERSE_PER_FLOW != 0)
            .map(|(k, _, _)| *k)
            .collect();
        Ok(p)
    }
}

/// BACKEND_REPLIES for `cfg`: every NAT backend endpoint (address, port, protocol)
/// maps to the VIP its replies are translated back to. An endpoint serving several
/// NAT services is marked per-flow, and so are those services, whose new flows then
/// record a NAT_REVERSE entry. Also returns those services' keys.
fn reply_targets(cfg: &Config) -> (HashMap<ServiceKey, ReplyTarget>, HashSet<ServiceKey>) {
    let mut users: BTreeMap<(Vec<u32>, u16, u8, u8), Vec<&ServiceConfig>> = BTreeMap::new();
    for svc in cfg
        .services
        .iter()
        .filter(|s| s.forwarding == Forwarding::Nat)
    {
        for b in &svc.backends {
            let (addr, family) = ip_to_words(b.addr);
            let key = (
                addr.to_vec(),
                port_to_wire(b.port),
                svc.proto.number(),
                family,
            );
            users.entry(key).or_default().push(svc);
        }
    }
    let mut replies = HashMap::new();
    let mut per_flow = HashSet::new();
    for ((addr, port, proto, family), svcs) in users {
        let first = svcs[0];
        let (vip, _) = ip_to_words(first.vip);
        let shared = svcs.len() > 1;
        if shared {
            per_flow.extend(svcs.iter().map(|s| service_key(s)));
        }
        let key = ServiceKey {
            addr: [addr[0], addr[1], addr[2], addr[3]],
            port,
            proto,
            family,
        };
        let target = ReplyTarget {
            vip,
            vport: port_to_wire(first.port),
            flags: if shared { REPLY_PER_FLOW } else { 0 },
        };
        replies.insert(key, target);
    }
    (replies, per_flow)
}

/// The address written to the backend record: DSR keeps the service port because
/// only the MAC addresses change on the way to the backend.
fn backend_addr(svc: &ServiceConfig, addr: IpAddr, port: u16) -> SocketAddr {
    match svc.forwarding {
        Forwarding::Dsr => SocketAddr::new(addr, svc.port),
        Forwarding::Nat => SocketAddr::new(addr, port),
    }
}

/// The table of backend ids for a service, over its active backends with a positive
/// weight (health, admin state, backups and slow start have already shaped those):
/// - maglev, src-hash: the Maglev table, keyed by "addr:port" so every balancer
///   builds the same one, `table_size` long;
/// - weighted-round-robin: one smooth WRR cycle (`sched::smooth_wrr`);
/// - round-robin: each backend once, weights ignored;
/// - least-conn: the backend ids, each once (weights are in the backend records);
/// - random-two-least-conn: a smooth WRR cycle as weighted-round-robin's, so that a
///   random draw finds a backend in proportion to its weight.
///
/// `[NO_BACKEND]` (or all `NO_BACKEND` for Maglev) when none is active.
fn table_for(svc: &ServiceConfig, backends: &BTreeMap<SocketAddr, AppliedBackend>) -> Vec<u32> {
    let active: Vec<(&SocketAddr, &AppliedBackend)> = backends
        .iter()
        .filter(|(_, b)| b.state == BackendState::Active && b.weight > 0)
        .collect();
    let none = |len: u32| vec![NO_BACKEND; len as usize];
    match svc.algorithm {
        Algorithm::Maglev | Algorithm::SrcHash => {
            let input: Vec<MaglevBackend> = active
                .iter()
                .map(|(addr, b)| MaglevBackend {
                    key: addr.to_string(),
                    weight: b.weight,
                })
                .collect();
            let table = maglev::build(&input, svc.table_size);
            if table.is_empty() {
                return none(svc.table_size);
            }
            table.into_iter().map(|i| active[i as usize].1.id).collect()
        }
        Algorithm::WeightedRoundRobin | Algorithm::RandomTwoLeastConn => {
            let weights: Vec<u32> = active.iter().map(|(_, b)| b.weight).collect();
            let table = sched::smooth_wrr(&weights, svc.table_size);
            if table.is_empty() {
                return none(1);
            }
            table.into_iter().map(|i| active[i as usize].1.id).collect()
        }
        Algorithm::RoundRobin | Algorithm::LeastConn => {
            if active.is_empty() {
                return none(1);
            }
            active.iter().map(|(_, b)| b.id).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::config::parse_str;
    use xdp_lb_common::{FAMILY_V4, FAMILY_V6};

    const M: u32 = 1009;

    fn cfg(services: &str) -> Config {
        parse_str(&format!(
            "interfaces = [\"veth0\"]\nmax_services = 4\nmax_table_size = {M}\n{services}"
        ))
        .unwrap()
    }

    fn service(name: &str, vip: &str, backends: &[(&str, u32, &str)]) -> String {
        let mut s = format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\ntable_size = {M}\n"
        );
        for (addr, weight, state) in backends {
            s += &format!(
                "[[service.backend]]\naddr = \"{addr}\"\nport = 8080\nweight = {weight}\nstate = \"{state}\"\n"
            );
        }
        s
    }

    fn web(backends: &[(&str, u32, &str)]) -> Config {
        cfg(&service("web", "198.18.100.1", backends))
    }

    const TWO: [(&str, u32, &str); 2] = [("198.18.1.2", 1, "active"), ("198.18.1.3", 1, "active")];
    const THREE: [(&str, u32, &str); 3] = [
        ("198.18.1.2", 1, "active"),
        ("198.18.1.3", 1, "active"),
        ("198.18.1.4", 1, "active"),
    ];

    fn ids(planner: &Planner) -> Vec<(SocketAddr, u32)> {
        planner.assignments()[0].backends.clone()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn wire_representation() {
        let (w, f) = ip_to_words(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(f, FAMILY_V4);
        assert_eq!(w[0].to_ne_bytes(), [198, 18, 0, 1]);
        assert_eq!(&w[1..], &[0, 0, 0]);
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let (w, f) = ip_to_words(IpAddr::V6(v6));
        assert_eq!(f, FAMILY_V6);
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
        assert_eq!(bytes, v6.octets());
        assert_eq!(port_to_wire(8080).to_ne_bytes(), [0x1f, 0x90]);
    }

    #[test]
    fn first_apply_writes_everything() {
        let c = cfg(&format!(
            "{}{}",
            service("web", "198.18.100.1", &TWO),
            service("v6", "2001:db8::10", &[("2001:db8::2", 2, "active")])
                .replace("port = 8080\n", "")
                .replace(
                    "table_size",
                    "forwarding = \"dsr\"\nalgorithm = \"src-hash\"\ntable_size"
                )
        ));
        let mut p = Planner::new(4, M);
        let plan = p.apply(&c).unwrap();
        assert_eq!(plan.backend_writes.len(), 3);
        let (id, b) = plan.backend_writes[0];
        assert_eq!(id, 0);
        assert_eq!(b.addr[0].to_ne_bytes(), [198, 18, 1, 2]);
        assert_eq!(b.port, port_to_wire(8080));
        assert_eq!(
            (b.family, b.state, b.generation),
            (FAMILY_V4, BACKEND_ACTIVE, 1)
        );
        // DSR backends carry the service port.
        let (_, b6) = plan.backend_writes[2];
        assert_eq!((b6.port, b6.family), (port_to_wire(80), FAMILY_V6));

        assert_eq!(plan.ring_writes.len(), 2);
        assert_eq!(plan.ring_writes[0].0, 0);
        assert_eq!(plan.ring_writes[1].0, 2 * M, "service 1, half 0");
        let table = &plan.ring_writes[0].1;
        assert_eq!(table.len(), M as usize);
        assert!(table.iter().all(|&id| id == 0 || id == 1));
        assert!(plan.ring_writes[1].1.iter().all(|&id| id == 2));

        let (key, svc) = plan.service_writes[0];
        assert_eq!(key.addr[0].to_ne_bytes(), [198, 18, 100, 1]);
        assert_eq!(
            (key.port, key.proto, key.family),
            (port_to_wire(80), 6, FAMILY_V4)
        );
        assert_eq!(
            svc,
            Service {
                id: 0,
                ring_offset: 0,
                ring_size: M,
                flags: 0
            }
        );
        let (_, svc6) = plan.service_writes[1];
        assert_eq!(svc6.id, 1);
        assert_eq!(svc6.flags, SVC_FWD_DSR | SVC_HASH_SRC_ONLY);
        assert!(plan.service_deletes.is_empty() && plan.backend_frees.is_empty());
        assert!(!plan.changes.is_empty());
    }

    #[test]
    fn reapplying_same_config_is_empty() {
        let mut p = Planner::new(4, M);
        p.apply(&web(&TWO)).unwrap();
        let plan = p.apply(&web(&TWO)).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    }

    #[test]
    fn adding_a_backend_flips_to_the_idle_half() {
        let mut p = Planner::new(4, M);
        p.apply(&web(&TWO)).unwrap();
        let before = ids(&p);
        let plan = p.apply(&web(&THREE)).unwrap();
        assert_eq!(&ids(&p)[..2], &before[..]);
        assert_eq!(plan.backend_writes.len(), 1);
        assert_eq!(plan.backend_writes[0].0, 2);
        assert_eq!(plan.ring_writes.len(), 1);
        assert_eq!(plan.ring_writes[0].0, M, "idle half of service 0");
        assert!(plan.ring_writes[0].1.contains(&2));
        assert_eq!(plan.service_writes.len(), 1);
        assert_eq!(plan.service_writes[0].1.ring_offset, M);
        assert!(plan.service_deletes.is_empty() && plan.backend_frees.is_empty());
        assert!(
            plan.changes
                .iter()
                .any(|c| c.to_string().contains("+198.18.1.4:8080")),
            "{:?}",
            plan.changes
        );
        // And the next change flips back to half 0.
        let plan = p.apply(&web(&TWO)).unwrap();
        assert_eq!(plan.ring_writes[0].0, 0);
        assert_eq!(plan.service_writes[0].1.ring_offset, 0);
    }

    #[test]
    fn removed_backend_is_freed_and_not_reused_next() {
        let mut p = Planner::new(4, M);
        p.apply(&web(&THREE)).unwrap();
        let plan = p.apply(&web(&TWO)).unwrap();
        assert!(plan.backend_writes.is_empty());
        assert_eq!(plan.backend_frees.len(), 1);
        let (id, b) = plan.backend_frees[0];
        assert_eq!((id, b.state, b.generation), (2, BACKEND_DOWN, 1));
        assert_eq!(b.addr[0].to_ne_bytes(), [198, 18, 1, 4]);
        assert!(!plan.ring_writes[0].1.contains(&2));
        assert_eq!(plan.service_writes.len(), 1);

        let plan = p
            .apply(&web(&[
                ("198.18.1.2", 1, "active"),
                ("198.18.1.3", 1, "active"),
                ("198.18.1.5", 1, "active"),
            ]))
            .unwrap();
        assert_eq!(plan.backend_writes.len(), 1);
        assert_ne!(plan.backend_writes[0].0, 2, "freed id reused at once");
        assert_eq!(plan.backend_writes[0].0, 3);
    }

    fn with_algorithm(c: &str, algorithm: &str) -> String {
        c.replacen(
            "port = 80\n",
            &format!("port = 80\nalgorithm = \"{algorithm}\"\n"),
            1,
        )
    }

    #[test]
    fn weighted_round_robin_publishes_a_smooth_schedule() {
        let three = [
            ("198.18.1.2", 3, "active"),
            ("198.18.1.3", 2, "active"),
            ("198.18.1.4", 1, "active"),
        ];
        let text = with_algorithm(
            &service("web", "198.18.100.1", &three),
            "weighted-round-robin",
        );
        let mut p = Planner::new(4, M);
        let plan = p.apply(&cfg(&text)).unwrap();
        assert_eq!(plan.ring_writes[0].1, vec![0, 1, 0, 2, 1, 0]);
        let (_, rec) = plan.service_writes[0];
        assert_eq!(rec.ring_size, 6, "the schedule's length, not table_size");
        assert_eq!(rec.flags & SVC_SCHED_RR, SVC_SCHED_RR);
        assert!(plan.backend_writes.iter().all(|(_, b)| b.weight == 0));
        // A backend going down (health or admin: the same path) leaves the schedule
        // through the idle half.
        let down = text.replacen("state = \"active\"", "state = \"down\"", 1);
        let plan = p.apply(&cfg(&down)).unwrap();
        assert_eq!(plan.ring_writes[0].1, vec![1, 2, 1]);
        assert_ne!(plan.ring_writes[0].0, p.ring_offset(0, 0));
        // round-robin: weights ignored, each backend once.
        let plan = p
            .apply(&cfg(&with_algorithm(
                &service("web", "198.18.100.1", &three),
                "round-robin",
            )))
            .unwrap();
        assert_eq!(plan.ring_writes[0].1, vec![0, 1, 2]);
        // Nothing active: one NO_BACKEND entry, which the kernel drops on.
        let none = text.replace("state = \"active\"", "state = \"draining\"");
        let plan = p.apply(&cfg(&none)).unwrap();
        assert_eq!(plan.ring_writes[0].1, vec![NO_BACKEND]);
    }

    #[test]
    fn least_conn_lists_ids_and_keeps_weights_in_the_records() {
        let two = [("198.18.1.2", 3, "active"), ("198.18.1.3", 1, "active")];
        let text = with_algorithm(&service("web", "198.18.100.1", &two), "least-conn");
        let mut p = Planner::new(4, M);
        let plan = p.apply(&cfg(&text)).unwrap();
        assert_eq!(plan.ring_writes[0].1, vec![0, 1]);
        assert_eq!(plan.service_writes[0].1.flags & SVC_SCHED_LC, SVC_SCHED_LC);
        let weights: Vec<u32> = plan.backend_writes.iter().map(|(_, b)| b.weight).collect();
        assert_eq!(weights, vec![3, 1]);
        // A reweight (or a slow-start step) rewrites the record, not the table.
        let plan = p
            .apply(&cfg(&text.replacen("weight = 3", "weight = 5", 1)))
            .unwrap();
        assert!(plan.ring_writes.is_empty(), "{plan:?}");
        assert_eq!(plan.backend_writes.len(), 1);
        assert_eq!(plan.backend_writes[0].1.weight, 5);
    }

    #[test]
    fn random_two_least_conn_draws_from_a_wrr_cycle_and_keeps_weights_in_the_records() {
        let two = [("198.18.1.2", 3, "active"), ("198.18.1.3", 1, "active")];
        let text = with_algorithm(
            &service("web", "198.18.100.1", &two),
            "random-two-least-conn",
        );
        let mut p = Planner::new(4, M);
        let plan = p.apply(&cfg(&text)).unwrap();
        // One smooth WRR cycle: each backend in proportion to its weight.
        let mut table = plan.ring_writes[0].1.clone();
        table.sort();
        assert_eq!(table, vec![0, 0, 0, 1]);
        assert_eq!(
            plan.service_writes[0].1.flags & (SVC_SCHED_LC | SVC_SCHED_P2C | SVC_SCHED_RR),
            SVC_SCHED_LC | SVC_SCHED_P2C
        );
        let weights: Vec<u32> = plan.backend_writes.iter().map(|(_, b)| b.weight).collect();
        assert_eq!(weights, vec![3, 1]);
    }

    #[test]
    fn reweight_changes_only_the_ring() {
        let mut p = Planner::new(4, M);
        p.apply(&web(&TWO)).unwrap();
        let plan = p
            .apply(&web(&[
                ("198.18.1.2", 3, "active"),
                ("198.18.1.3", 1, "active"),
            ]))
            .unwrap();
        assert!(plan.backend_writes.is_empty() && plan.backend_frees.is_empty());
        assert_eq!(plan.ring_writes.len(), 1);
        assert_eq!(plan.service_writes.len(), 1);
        let zeros = plan.ring_writes[0].1.iter().filter(|&&i| i == 0).count();
        assert!(zeros > 700, "weight 3 of 4 should own ~757 of {M}: {zeros}");
        assert!(
            plan.changes
                .iter()
                .any(|c| c.to_string().contains("weight 1 -> 3")),
            "{:?}",
            plan.changes
        );
    }

    #[test]
    fn draining_keeps_record_but_leaves_ring() {
        let mut p = Planner::new(4, M);
        p.apply(&web(&TWO)).unwrap();
        let before = ids(&p);
        let plan = p
            .apply(&web(&[
                ("198.18.1.2", 1, "active"),
                ("198.18.1.3", 1, "draining"),
            ]))
            .unwrap();
        assert_eq!(ids(&p), before);
        assert_eq!(plan.backend_writes.len(), 1);
        let (id, b) = plan.backend_writes[0];
        assert_eq!((id, b.state, b.generation), (1, BACKEND_DRAINING, 1));
        assert!(plan.backend_frees.is_empty());
        assert!(plan.ring_writes[0].1.iter().all(|&i| i == 0));
        // All backends out of service: table of NO_BACKEND.
        let plan = p
            .apply(&web(&[
                ("198.18.1.2", 1, "down"),
                ("198.18.1.3", 1, "draining"),
            ]))
            .unwrap();
        // Down only after the table without it is live; draining before (it is
        // still allowed to take the flows the old table sends it meanwhile).
        assert_eq!(plan.backend_frees.len(), 1);
        assert_eq!(plan.backend_frees[0].1.state, BACKEND_DOWN);
        assert!(plan
            .backend_writes
            .iter()
            .all(|(_, b)| b.state != BACKEND_DOWN));
        assert!(plan.ring_writes[0].1.iter().all(|&i| i == NO_BACKEND));
        assert_eq!(plan.ring_writes[0].1.len(), M as usize);
    }

    #[test]
    fn service_removal_deletes_key_and_frees_backends() {
        let two = cfg(&format!(
            "{}{}",
            service("web", "198.18.100.1", &TWO),
            service("api", "198.18.100.2", &[("198.18.2.2", 1, "active")])
        ));
        let mut p = Planner::new(4, M);
        let first = p.apply(&two).unwrap();
        let api_key = first.service_writes[1].0;
        let plan = p.apply(&web(&TWO)).unwrap();
        assert_eq!(plan.service_deletes, vec![api_key]);
        assert_eq!(plan.backend_frees.len(), 1);
        assert_eq!(plan.backend_frees[0].0, 2);
        assert_eq!(plan.backend_frees[0].1.state, BACKEND_DOWN);
        assert!(plan.backend_writes.is_empty() && plan.ring_writes.is_empty());
        assert!(plan.service_writes.is_empty());

        // Its id is reusable by a new service, which starts in the half the old
        // holder did not publish.
        let plan = p
            .apply(&cfg(&format!(
                "{}{}",
                service("web", "198.18.100.1", &TWO),
                service("new", "198.18.100.3", &[("198.18.3.2", 1, "active")])
            )))
            .unwrap();
        let (_, svc) = plan.service_writes[0];
        assert_eq!(svc.id, 1);
        assert_eq!(svc.ring_offset, 3 * M, "service 1, half 1");
        assert_eq!(plan.ring_writes[0].0, 3 * M);
    }

    #[test]
    fn replacing_every_service_at_once_never_touches_live_halves() {
        let mut p = Planner::new(1, M);
        let one = |vip: &str| {
            parse_str(&format!(
                "interfaces = [\"veth0\"]\nmax_services = 1\nmax_table_size = {M}\n{}",
                service("s", vip, &TWO)
            ))
            .unwrap()
        };
        let first = p.apply(&one("198.18.100.1")).unwrap();
        assert_eq!(first.ring_writes[0].0, 0);
        let plan = p.apply(&one("198.18.100.9")).unwrap();
        assert_eq!(plan.service_deletes.len(), 1);
        assert_eq!(plan.service_writes[0].1.id, 0);
        assert_eq!(plan.ring_writes[0].0, M, "old service still reads half 0");
        // The old backends are freed, the new ones get fresh slots.
        assert_eq!(plan.backend_frees.len(), 2);
        let new_ids: Vec<u32> = plan.backend_writes.iter().map(|(id, _)| *id).collect();
        assert_eq!(new_ids, [2, 3]);
    }

    #[test]
    fn too_many_services_is_an_error_and_changes_nothing() {
        let mut p = Planner::new(1, M);
        let mut first = web(&TWO);
        first.max_services = 1;
        p.apply(&first).unwrap();
        let two = cfg(&format!(
            "{}{}",
            service("web", "198.18.100.1", &THREE),
            service("api", "198.18.100.2", &[("198.18.2.2", 1, "active")])
        ));
        assert_eq!(
            p.apply(&two).unwrap_err(),
            PlanError::LimitChanged {
                key: "max_services",
                running: 1,
                configured: 4
            }
        );
        // A hand-built config that bypassed validation.
        let mut forced = two.clone();
        forced.max_services = 1;
        assert_eq!(
            p.apply(&forced).unwrap_err(),
            PlanError::TooManyServices { count: 2, max: 1 }
        );
        assert!(p.apply(&first).unwrap().is_empty());
        let mut big = first.clone();
        big.services[0].table_size = 2003;
        assert!(matches!(
            p.apply(&big).unwrap_err(),
            PlanError::TableTooLarge { size: 2003, .. }
        ));
    }

    #[test]
    fn generation_bumps_on_reuse() {
        let mut p = Planner::new(4, M);
        // Use up every fresh id, so the free list is the only source left.
        p.next_fresh_backend = MAX_BACKENDS - 3;
        p.apply(&web(&THREE)).unwrap();
        let removed = p.apply(&web(&TWO)).unwrap();
        let freed = removed.backend_frees[0].0;
        assert_eq!(freed, MAX_BACKENDS - 1);
        let plan = p
            .apply(&web(&[
                ("198.18.1.2", 1, "active"),
                ("198.18.1.3", 1, "active"),
                ("198.18.1.9", 1, "active"),
            ]))
            .unwrap();
        let (id, b) = plan.backend_writes[0];
        assert_eq!(id, freed);
        assert_eq!(b.generation, 2);
        assert_eq!(b.addr[0].to_ne_bytes(), [198, 18, 1, 9]);
        // Reweights and state changes keep the generation.
        let plan = p
            .apply(&web(&[
                ("198.18.1.2", 1, "active"),
                ("198.18.1.3", 1, "active"),
                ("198.18.1.9", 5, "draining"),
            ]))
            .unwrap();
        assert_eq!(plan.backend_writes[0].1.generation, 2);
        // With no slot left at all, the planner refuses.
        let more = web(&[
            ("198.18.1.2", 1, "active"),
            ("198.18.1.3", 1, "active"),
            ("198.18.1.9", 1, "active"),
            ("198.18.1.10", 1, "active"),
        ]);
        assert!(matches!(
            p.apply(&more).unwrap_err(),
            PlanError::BackendSlotsExhausted {
                needed: 1,
                available: 0
            }
        ));
        assert_eq!(ids(&p).len(), 3);
        assert!(ids(&p).contains(&(sa("198.18.1.9:8080"), freed)));
    }

    #[test]
    fn table_size_change_goes_to_idle_half() {
        let mut p = Planner::new(4, M);
        p.apply(&web(&TWO)).unwrap();
        let mut c = web(&TWO);
        c.services[0].table_size = 503;
        let plan = p.apply(&c).unwrap();
        assert!(plan.backend_writes.is_empty());
        assert_eq!(plan.ring_writes.len(), 1);
        assert_eq!(
            (plan.ring_writes[0].0, plan.ring_writes[0].1.len()),
            (M, 503)
        );
        assert_eq!(plan.service_writes[0].1.ring_size, 503);
        assert_eq!(plan.service_writes[0].1.ring_offset, M);
    }

    #[test]
    fn same_backend_in_two_services_gets_two_slots() {
        let c = cfg(&format!(
            "{}{}",
            service("web", "198.18.100.1", &TWO),
            service("api", "198.18.100.2", &TWO)
        ));
        let mut p = Planner::new(4, M);
        p.apply(&c).unwrap();
        let a = p.assignments();
        assert_eq!(a.len(), 2);
        assert_eq!(
            a[0].backends,
            [(sa("198.18.1.2:8080"), 0), (sa("198.18.1.3:8080"), 1)]
        );
        assert_eq!(
            a[1].backends,
            [(sa("198.18.1.2:8080"), 2), (sa("198.18.1.3:8080"), 3)]
        );
        // Removing one service frees only its own slots.
        let plan = p.apply(&web(&TWO)).unwrap();
        let freed: Vec<u32> = plan.backend_frees.iter().map(|(id, _)| *id).collect();
        assert_eq!(freed, [2, 3]);
    }

    #[test]
    fn flag_changes_rewrite_only_the_service() {
        let mut p = Planner::new(4, M);
        p.apply(&web(&TWO)).unwrap();
        let mut c = web(&TWO);
        c.services[0].algorithm = Algorithm::SrcHash;
        let plan = p.apply(&c).unwrap();
        assert!(plan.ring_writes.is_empty() && plan.backend_writes.is_empty());
        assert_eq!(plan.service_writes.len(), 1);
        assert_eq!(plan.service_writes[0].1.flags, SVC_HASH_SRC_ONLY);
        assert_eq!(plan.service_writes[0].1.ring_offset, 0);
    }

    #[test]
    fn nat_backends_map_their_replies_back_to_the_vip() {
        let mut p = Planner::new(4, M);
        let plan = p.apply(&web(&TWO)).unwrap();
        assert_eq!(plan.reply_writes.len(), 2);
        let (vip, _) = ip_to_words("198.18.100.1".parse().unwrap());
        for (k, t) in &plan.reply_writes {
            assert_eq!((k.port, k.proto), (port_to_wire(8080), 6));
            assert_eq!((t.vip, t.vport, t.flags), (vip, port_to_wire(80), 0));
        }
        assert_eq!(plan.service_writes[0].1.flags & SVC_REVERSE_PER_FLOW, 0);
        // Removing a backend removes its reply entry; nothing else is rewritten.
        let plan = p.apply(&web(&TWO[..1])).unwrap();
        assert!(plan.reply_writes.is_empty());
        assert_eq!(plan.reply_deletes.len(), 1);
        assert_eq!(
            plan.reply_deletes[0].addr,
            ip_to_words("198.18.1.3".parse().unwrap()).0
        );
    }

    #[test]
    fn a_backend_shared_by_two_nat_services_replies_per_flow() {
        let two = service("a", "198.18.100.1", &TWO) + &service("b", "198.18.100.2", &TWO[..1]);
        let mut p = Planner::new(4, M);
        let plan = p.apply(&cfg(&two)).unwrap();
        let shared = ip_to_words("198.18.1.2".parse().unwrap()).0;
        for (k, t) in &plan.reply_writes {
            let want = if k.addr == shared { REPLY_PER_FLOW } else { 0 };
            assert_eq!(t.flags, want, "{k:?}");
        }
        assert!(plan
            .service_writes
            .iter()
            .all(|(_, s)| s.flags & SVC_REVERSE_PER_FLOW != 0));
        // Once b is gone the endpoint is a's alone again.
        let plan = p.apply(&cfg(&service("a", "198.18.100.1", &TWO))).unwrap();
        assert_eq!(plan.reply_writes.len(), 1);
        assert_eq!(plan.reply_writes[0].1.flags, 0);
        assert_eq!(plan.service_writes.len(), 1);
        assert_eq!(plan.service_writes[0].1.flags & SVC_REVERSE_PER_FLOW, 0);
    }

    #[test]
    fn dsr_backends_have_no_reply_entries() {
        let dsr = "[[service]]\nvip = \"198.18.100.1\"\nport = 80\nforwarding = \"dsr\"\ntable_size = 1009\n[[service.backend]]\naddr = \"198.18.1.2\"\n";
        let plan = Planner::new(4, M).apply(&cfg(dsr)).unwrap();
        assert!(plan.reply_writes.is_empty());
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;
    use crate::{
        config::parse_str,
        dataplane::{Dataplane, FakeDataplane},
    };

    const M: u32 = 1009;

    /// (address, weight, state) of a backend on port 8080.
    type B<'a> = (&'a str, u32, &'a str);

    fn cfg(services: &[(&str, &str, &[B])]) -> Config {
        let mut s = format!("interfaces = [\"veth0\"]\nmax_services = 4\nmax_table_size = {M}\n");
        for (name, vip, backends) in services {
            s += &format!(
                "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\ntable_size = {M}\n"
            );
            for (addr, weight, state) in *backends {
                s += &format!(
                    "[[service.backend]]\naddr = \"{addr}\"\nport = 8080\nweight = {weight}\nstate = \"{state}\"\n"
                );
            }
        }
        parse_str(&s).unwrap()
    }

    /// A history that exercises every kind of state: two services, a draining
    /// backend, a removed backend (freed slot), a shared NAT endpoint, both halves.
    fn history() -> (Planner, FakeDataplane, Config) {
        let mut p = Planner::new(4, M);
        let mut dp = FakeDataplane::default();
        let steps = [
            cfg(&[
                (
                    "web",
                    "198.18.100.1",
                    &[
                        ("198.18.1.2", 1, "active"),
                        ("198.18.1.3", 1, "active"),
                        ("198.18.1.4", 1, "active"),
                    ],
                ),
                ("api", "198.18.100.2", &[("198.18.1.2", 2, "active")]),
            ]),
            cfg(&[
                (
                    "web",
                    "198.18.100.1",
                    &[
                        ("198.18.1.2", 3, "active"),
                        ("198.18.1.3", 1, "draining"),
                        ("198.18.1.5", 1, "active"),
                    ],
                ),
                ("api", "198.18.100.2", &[("198.18.1.2", 2, "active")]),
            ]),
        ];
        for c in &steps {
            let plan = p.apply(c).unwrap();
            dp.apply(&plan).unwrap();
        }
        let last = steps[1].clone();
        (p, dp, last)
    }

    fn slots(p: &Planner) -> Vec<(ServiceKey, u32, Vec<BackendSlot>, u32)> {
        p.assignments()
            .into_iter()
            .map(|a| (a.key, a.id, a.slots, a.table_size))
            .collect()
    }

    #[test]
    fn restored_planner_sees_the_same_ids_generations_and_tables() {
        let (original, dp, last) = history();
        let mut restored = Planner::restore(4, M, &dp.snapshot().unwrap()).unwrap();
        assert_eq!(slots(&restored), slots(&original));
        // The configuration that is programmed needs no write at all.
        let plan = restored.apply(&last).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    }

    #[test]
    fn a_changed_configuration_is_planned_as_the_original_would() {
        let (mut original, dp, _) = history();
        let mut restored = Planner::restore(4, M, &dp.snapshot().unwrap()).unwrap();
        // Changed while the daemon was down: api removed, a backend added to web,
        // a new service that takes api's id.
        let next = cfg(&[
            (
                "web",
                "198.18.100.1",
                &[
                    ("198.18.1.2", 3, "active"),
                    ("198.18.1.3", 1, "draining"),
                    ("198.18.1.5", 1, "active"),
                    ("198.18.1.6", 1, "active"),
                ],
            ),
            ("new", "198.18.100.3", &[("198.18.3.2", 1, "active")]),
        ]);
        let want = original.apply(&next).unwrap();
        let got = restored.apply(&next).unwrap();
        // Events name restored services by endpoint, and entries that come from
        // hash-map walks (reply targets) have no fixed order: compare the writes.
        let strip = |p: &Plan| {
            let mut p = Plan {
                changes: Vec::new(),
                ..p.clone()
            };
            let key = |k: &ServiceKey| (k.addr, k.port, k.proto, k.family);
            p.reply_writes.sort_by_key(|(k, _)| key(k));
            p.reply_deletes.sort_by_key(key);
            p.service_writes.sort_by_key(|(k, _)| key(k));
            p.service_deletes.sort_by_key(key);
            p
        };
        assert_eq!(strip(&got), strip(&want));
        assert!(!got.backend_writes.is_empty() && !got.service_deletes.is_empty());
        assert_eq!(slots(&restored), slots(&original));
    }

    #[test]
    fn a_slot_reused_after_restore_gets_a_new_generation() {
        let mut p = Planner::new(4, M);
        let mut dp = FakeDataplane::default();
        // Only the free list can serve new backends, so a freed slot is reused.
        p.next_fresh_backend = MAX_BACKENDS - 2;
        let two = [("198.18.1.2", 1, "active"), ("198.18.1.3", 1, "active")];
        dp.apply(&p.apply(&cfg(&[("web", "198.18.100.1", &two)])).unwrap())
            .unwrap();
        let removed = p
            .apply(&cfg(&[("web", "198.18.100.1", &two[..1])]))
            .unwrap();
        let (freed, old) = removed.backend_frees[0];
        dp.apply(&removed).unwrap();

        let mut restored = Planner::restore(4, M, &dp.snapshot().unwrap()).unwrap();
        assert_eq!(restored.next_fresh_backend, MAX_BACKENDS);
        assert!(restored.free_backends.contains(&freed));
        // The ids this test skipped were never written, so restore counts them as
        // free too; leave only the freed one to watch its reuse.
        restored.free_backends.retain(|&id| id == freed);
        let plan = restored
            .apply(&cfg(&[(
                "web",
                "198.18.100.1",
                &[("198.18.1.2", 1, "active"), ("198.18.1.9", 1, "active")],
            )]))
            .unwrap();
        let (id, b) = plan.backend_writes[0];
        assert_eq!(id, freed, "the only free slot");
        assert_eq!(b.generation, old.generation + 1);
        assert_eq!(plan.owner_writes, vec![(freed, 1)]);
    }

    #[test]
    fn an_owner_entry_lost_in_a_crash_is_recovered_from_the_table() {
        let (original, mut dp, last) = history();
        dp.owners.clear();
        let mut restored = Planner::restore(4, M, &dp.snapshot().unwrap()).unwrap();
        // Active backends are found through their service's table; the draining
        // one is in no table, so it counts as free and is re-allocated.
        let plan = restored.apply(&last).unwrap();
        assert_eq!(plan.backend_writes.len(), 1, "{plan:?}");
        let draining = original.assignments()[0]
            .slots
            .iter()
            .find(|s| s.addr == "198.18.1.3:8080".parse().unwrap())
            .copied()
            .unwrap();
        assert_ne!(plan.backend_writes[0].0, draining.id);
    }

    #[test]
    fn inconsistent_maps_are_refused() {
        let (_, dp, _) = history();
        let mut snap = dp.snapshot().unwrap();
        snap.services[0].1.ring_offset += 1;
        assert!(matches!(
            Planner::restore(4, M, &snap),
            Err(RestoreError::RingOffset { .. })
        ));
        let mut snap = dp.snapshot().unwrap();
        snap.services[0].1.id = 9;
        assert_eq!(
            Planner::restore(4, M, &snap).unwrap_err(),
            RestoreError::ServiceId { id: 9, max: 4 }
        );
        let mut snap = dp.snapshot().unwrap();
        snap.services[0].2.pop();
        assert!(matches!(
            Planner::restore(4, M, &snap),
            Err(RestoreError::TableSize { .. })
        ));
    }
}
