//! Cache statistics: lock-free counters shared by every request, read by the log and metrics.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub updating: AtomicU64,
    pub expired: AtomicU64,
    pub bypass: AtomicU64,
    /// Redis failures and timeouts.
    pub errors: AtomicU64,
    pub bytes_from_cache: AtomicU64,
    pub upstream_requests: AtomicU64,
    /// Values answered by the in-process hot tier instead of Redis.
    pub hot_hits: AtomicU64,
    /// Requests answered 400 before reaching an upstream or the cache (ambiguous host).
    pub refused: AtomicU64,
}

#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub updating: u64,
    pub expired: u64,
    pub bypass: u64,
    pub errors: u64,
    pub bytes_from_cache: u64,
    pub upstream_requests: u64,
    pub hot_hits: u64,
    pub refused: u64,
}

impl Snapshot {
    /// Share of cacheable lookups answered from the cache (stale copies included).
    pub fn hit_rate(&self) -> f64 {
        let served = self.hits + self.stale + self.updating;
        let total = served + self.misses + self.expired;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            stale: self.stale.load(Relaxed),
            updating: self.updating.load(Relaxed),
            expired: self.expired.load(Relaxed),
            bypass: self.bypass.load(Relaxed),
            errors: self.errors.load(Relaxed),
            bytes_from_cache: self.bytes_from_cache.load(Relaxed),
            upstream_requests: self.upstream_requests.load(Relaxed),
            hot_hits: self.hot_hits.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hits={} misses={} stale={} updating={} expired={} bypass={} errors={} hit_rate={:.3} bytes_from_cache={} upstream_requests={} hot_hits={} refused={}",
            self.hits,
            self.misses,
            self.stale,
            self.updating,
            self.expired,
            self.bypass,
            self.errors,
            self.hit_rate(),
            self.bytes_from_cache,
            self.upstream_requests,
            self.hot_hits,
            self.refused
        )
    }
}
