//! Upstream pool: weighted round-robin or least-connections choice with nginx-style passive
//! health (`max_fails` failures within `fail_timeout` take an upstream out for `fail_timeout`).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::{Algorithm, CacheConfig};

struct Health {
    fails: u32,
    first_fail: Option<Instant>,
    down_until: Option<Instant>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    weight: i64,
    active: AtomicUsize,
    health: Mutex<Health>,
}

pub struct Pool {
    upstreams: Vec<Upstream>,
    algorithm: Algorithm,
    max_fails: u32,
    fail_timeout: Duration,
    /// Smooth weighted round-robin state (current weights), as nginx does it.
    current: Mutex<Vec<i64>>,
}

/// An in-flight request on one upstream; dropping it releases the least-conn slot.
pub struct Lease {
    pool: Arc<Pool>,
    pub index: usize,
}

impl Lease {
    pub fn addr(&self) -> SocketAddr {
        self.pool.upstreams[self.index].addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.upstreams[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(cfg: &CacheConfig) -> Arc<Self> {
        let upstreams = cfg
            .upstreams
            .iter()
            .map(|u| Upstream {
                addr: u.addr,
                weight: i64::from(u.weight),
                active: AtomicUsize::new(0),
                health: Mutex::new(Health {
                    fails: 0,
                    first_fail: None,
                    down_until: None,
                }),
            })
            .collect::<Vec<_>>();
        let n = upstreams.len();
        Arc::new(Self {
            upstreams,
            algorithm: cfg.algorithm,
            max_fails: cfg.max_fails,
            fail_timeout: Duration::from_millis(cfg.fail_timeout_ms),
            current: Mutex::new(vec![0; n]),
        })
    }

    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    fn is_up(&self, i: usize, now: Instant) -> bool {
        let h = self.upstreams[i]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.down_until.is_none_or(|t| now >= t)
    }

    /// Picks an upstream not in `tried`. When every candidate is down, the pool still answers
    /// (like nginx) so a fully failed pool is retried rather than refusing all traffic.
    pub fn pick(self: &Arc<Self>, tried: &[usize]) -> Option<Lease> {
        let now = Instant::now();
        let candidates: Vec<usize> = (0..self.upstreams.len())
            .filter(|i| !tried.contains(i))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let up: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.is_up(i, now))
            .collect();
        let set = if up.is_empty() { &candidates } else { &up };
        let index = match self.algorithm {
            Algorithm::RoundRobin => {
                let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
                let total: i64 = set.iter().map(|&i| self.upstreams[i].weight).sum();
                let mut best = set[0];
                for &i in set {
                    cur[i] += self.upstreams[i].weight;
                    if cur[i] > cur[best] {
                        best = i;
                    }
                }
                cur[best] -= total;
                best
            }
            Algorithm::LeastConn => *set
                .iter()
                .min_by(|&&a, &&b| {
                    // Compare active/weight without division: a_active * b_weight vs b_active * a_weight.
                    let la = self.upstreams[a].active.load(Ordering::Relaxed) as i64
                        * self.upstreams[b].weight;
                    let lb = self.upstreams[b].active.load(Ordering::Relaxed) as i64
                        * self.upstreams[a].weight;
                    la.cmp(&lb)
                })
                .expect("non-empty set"),
        };
        self.upstreams[index].active.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            pool: Arc::clone(self),
            index,
        })
    }

    pub fn report_failure(&self, index: usize) {
        let now = Instant::now();
        let mut h = self.upstreams[index]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if h.first_fail
            .is_none_or(|t| now.duration_since(t) > self.fail_timeout)
        {
            h.first_fail = Some(now);
            h.fails = 0;
        }
        h.fails += 1;
        if h.fails >= self.max_fails {
            h.down_until = Some(now + self.fail_timeout);
            log::warn!(
                "cache: upstream {} marked down for {:?}",
                self.upstreams[index].addr,
                self.fail_timeout
            );
        }
    }

    pub fn report_success(&self, index: usize) {
        let mut h = self.upstreams[index]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.fails = 0;
        h.first_fail = None;
        h.down_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::config::UpstreamConfig;

    fn pool(weights: &[u32], algorithm: Algorithm) -> Arc<Pool> {
        let cfg = CacheConfig {
            upstreams: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| UpstreamConfig {
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    weight: w,
                })
                .collect(),
            algorithm,
            max_fails: 2,
            ..CacheConfig::default()
        };
        Pool::new(&cfg)
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let p = pool(&[3, 1], Algorithm::RoundRobin);
        let picks: Vec<usize> = (0..8).map(|_| p.pick(&[]).unwrap().index).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        // Smooth: the light upstream is not starved for a run of 3.
        assert!(picks[..4].contains(&1));
    }

    #[test]
    fn least_conn_avoids_busy_upstream() {
        let p = pool(&[1, 1], Algorithm::LeastConn);
        let held = p.pick(&[]).unwrap();
        let next = p.pick(&[]).unwrap();
        assert_ne!(held.index, next.index);
    }

    #[test]
    fn failed_upstream_is_skipped_until_success() {
        let p = pool(&[1, 1], Algorithm::RoundRobin);
        p.report_failure(0);
        assert!(
            (0..4).any(|_| p.pick(&[]).unwrap().index == 0),
            "one failure is below max_fails"
        );
        p.report_failure(0);
        assert!((0..4).all(|_| p.pick(&[]).unwrap().index == 1));
        assert_eq!(
            p.pick(&[1]).unwrap().index,
            0,
            "a down upstream is still used when nothing else is left"
        );
        p.report_success(0);
        assert!((0..4).any(|_| p.pick(&[]).unwrap().index == 0));
    }
}
