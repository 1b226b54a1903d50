//! An in-memory data plane: keeps every map as the kernel would after the writes,
//! serves counters and flows the test sets, and can be told to fail the next write.
use std::collections::HashMap;

use xdp_lb_common::{Backend, Counters, ReplyTarget, Service, ServiceKey, NO_BACKEND};

use super::{Dataplane, DataplaneError, FlowCounts};
use crate::plan::{Plan, Snapshot};

#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub backends: HashMap<u32, Backend>,
    pub ring: HashMap<u32, u32>,
    pub services: HashMap<ServiceKey, Service>,
    pub replies: HashMap<ServiceKey, ReplyTarget>,
    /// BACKEND_OWNERS: backend id -> service id + 1.
    pub owners: HashMap<u32, u32>,
    pub service_counters: HashMap<u32, Counters>,
    pub backend_counters: HashMap<u32, Counters>,
    pub flows: FlowCounts,
    /// Least-conn reconciliations asked for: the backends (id -> generation) each named.
    pub reconciled: Vec<HashMap<u32, u32>>,
    /// Plans applied so far.
    pub applied: usize,
    /// Fail the next `apply` before writing anything.
    pub fail_next: bool,
}

impl FakeDataplane {
    /// The published table of the service at `key`, as backend ids.
    pub fn table(&self, key: &ServiceKey) -> Vec<u32> {
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        (0..svc.ring_size)
            .map(|i| {
                self.ring
                    .get(&(svc.ring_offset + i))
                    .copied()
                    .unwrap_or(NO_BACKEND)
            })
            .collect()
    }
}

impl Dataplane for FakeDataplane {
    fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(DataplaneError::Injected);
        }
        self.backends.extend(plan.backend_writes.iter().copied());
        self.replies.extend(plan.reply_writes.iter().copied());
        for (offset, table) in &plan.ring_writes {
            for (i, id) in table.iter().enumerate() {
                self.ring.insert(offset + i as u32, *id);
            }
        }
        self.services.extend(plan.service_writes.iter().copied());
        for k in &plan.service_deletes {
            self.services.remove(k);
        }
        self.backends.extend(plan.backend_frees.iter().copied());
        for k in &plan.reply_deletes {
            self.replies.remove(k);
        }
        self.owners.extend(plan.owner_writes.iter().copied());
        self.applied += 1;
        Ok(())
    }

    fn global_counters(&self) -> Result<Vec<(&'static str, u64)>, DataplaneError> {
        Ok(Vec::new())
    }

    fn service_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        Ok(self.service_counters.get(&id).copied().unwrap_or_default())
    }

    fn backend_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        Ok(self.backend_counters.get(&id).copied().unwrap_or_default())
    }

    fn flow_counts(&self, _limit: u64) -> Result<FlowCounts, DataplaneError> {
        Ok(self.flows.clone())
    }

    fn reconcile_conns(
        &mut self,
        current: &HashMap<u32, u32>,
        _limit: u64,
    ) -> Result<Option<HashMap<u32, i64>>, DataplaneError> {
        self.reconciled.push(current.clone());
        Ok(Some(current.keys().map(|&id| (id, 0)).collect()))
    }

    fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        let mut snap = Snapshot {
            services: self
                .services
                .iter()
                .map(|(k, s)| (*k, *s, self.table(k)))
                .collect(),
            backends: self
                .backends
                .iter()
                .filter(|(_, b)| b.generation != 0)
                .map(|(id, b)| (*id, *b, self.owners.get(id).copied().unwrap_or(0)))
                .collect(),
            replies: self.replies.iter().map(|(k, t)| (*k, *t)).collect(),
        };
        // The kernel walks maps in its own order; sort so tests are deterministic.
        snap.services.sort_by_key(|(_, s, _)| s.id);
        snap.backends.sort_by_key(|(id, _, _)| *id);
        Ok(snap)
    }
}
