//! Cache statistics: lock-free cumulative counters shared by every request, read as a
//! [`Snapshot`] by the periodic log line and by a metrics exporter (every field is a counter
//! that only grows, so rates are deltas between two snapshots).
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

/// Why a request skipped the cache entirely (`X-Cache: BYPASS`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BypassReason {
    /// Not GET or HEAD.
    Method,
    /// Carries `Authorization` and `cache_authorized` is off.
    Authorization,
    /// `Cache-Control: no-store` in the request.
    NoStore,
}

impl BypassReason {
    pub const ALL: [BypassReason; 3] = [Self::Method, Self::Authorization, Self::NoStore];

    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Authorization => "authorization",
            Self::NoStore => "no_store",
        }
    }
}

#[derive(Default, Debug)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub updating: AtomicU64,
    pub expired: AtomicU64,
    /// By [`BypassReason`], in the order of `BypassReason::ALL`.
    pub bypass: [AtomicU64; 3],
    /// Responses sent, by status class (index 0 is 1xx, 4 is 5xx).
    pub status_class: [AtomicU64; 5],
    /// Redis failures and timeouts (including requests that skipped Redis after one).
    pub errors: AtomicU64,
    /// Redis commands that completed (successfully or with an error reply), and their summed
    /// latency in microseconds.
    pub redis_calls: AtomicU64,
    pub redis_latency_us: AtomicU64,
    /// 0 before the first Redis call, 1 when the last one reached Redis, 2 when it did not.
    pub redis_state: AtomicU8,
    pub bytes_from_cache: AtomicU64,
    pub upstream_requests: AtomicU64,
    /// Values answered by the in-process hot tier instead of Redis.
    pub hot_hits: AtomicU64,
    /// Times the hot tier's invalidation subscription was lost.
    pub hot_subscription_losses: AtomicU64,
    /// Requests answered 400 before reaching an upstream or the cache (ambiguous host).
    pub refused: AtomicU64,
    /// Requests that waited for another request's fetch of the same key on this instance.
    pub coalesced_waits: AtomicU64,
    /// Compressed variants made, and the bytes that went into and came out of them.
    pub compressions: AtomicU64,
    pub compressed_in: AtomicU64,
    pub compressed_out: AtomicU64,
}

/// A copy of every counter at one moment.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub updating: u64,
    pub expired: u64,
    /// Requests that bypassed the cache, whatever the reason.
    pub bypass: u64,
    /// By [`BypassReason`], in the order of `BypassReason::ALL`.
    pub bypass_by_reason: [u64; 3],
    /// By status class, 1xx first.
    pub status_class: [u64; 5],
    pub errors: u64,
    pub redis_calls: u64,
    pub redis_latency_us: u64,
    /// Whether the last Redis call reached Redis; `None` before the first call. (A gauge,
    /// the one field that is not a counter.)
    pub redis_reachable: Option<bool>,
    pub bytes_from_cache: u64,
    pub upstream_requests: u64,
    pub hot_hits: u64,
    pub hot_subscription_losses: u64,
    pub refused: u64,
    pub coalesced_waits: u64,
    pub compressions: u64,
    pub compressed_in: u64,
    pub compressed_out: u64,
}

impl Snapshot {
    pub fn bypassed(&self, reason: BypassReason) -> u64 {
        self.bypass_by_reason[reason as usize]
    }

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

    pub fn bypassed(&self, reason: BypassReason) {
        Self::bump(&self.bypass[reason as usize]);
    }

    pub fn response(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        Self::bump(&self.status_class[class]);
    }

    pub fn redis_reached(&self, reached: bool) {
        self.redis_state.store(if reached { 1 } else { 2 }, Relaxed);
    }

    pub fn redis_latency(&self, took: Duration) {
        Self::bump(&self.redis_calls);
        self.redis_latency_us
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn compressed(&self, from: usize, to: usize) {
        Self::bump(&self.compressions);
        self.compressed_in.fetch_add(from as u64, Relaxed);
        self.compressed_out.fetch_add(to as u64, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &[AtomicU64]| -> Vec<u64> { a.iter().map(|c| c.load(Relaxed)).collect() };
        let mut bypass_by_reason = [0; 3];
        bypass_by_reason.copy_from_slice(&load(&self.bypass));
        let mut status_class = [0; 5];
        status_class.copy_from_slice(&load(&self.status_class));
        Snapshot {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            stale: self.stale.load(Relaxed),
            updating: self.updating.load(Relaxed),
            expired: self.expired.load(Relaxed),
            bypass: bypass_by_reason.iter().sum(),
            bypass_by_reason,
            status_class,
            errors: self.errors.load(Relaxed),
            redis_calls: self.redis_calls.load(Relaxed),
            redis_latency_us: self.redis_latency_us.load(Relaxed),
            redis_reachable: match self.redis_state.load(Relaxed) {
                0 => None,
                state => Some(state == 1),
            },
            bytes_from_cache: self.bytes_from_cache.load(Relaxed),
            upstream_requests: self.upstream_requests.load(Relaxed),
            hot_hits: self.hot_hits.load(Relaxed),
            hot_subscription_losses: self.hot_subscription_losses.load(Relaxed),
            refused: self.refused.load(Relaxed),
            coalesced_waits: self.coalesced_waits.load(Relaxed),
            compressions: self.compressions.load(Relaxed),
            compressed_in: self.compressed_in.load(Relaxed),
            compressed_out: self.compressed_out.load(Relaxed),
        }
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hits={} misses={} stale={} updating={} expired={} bypass={} errors={} hit_rate={:.3} \
             bytes_from_cache={} upstream_requests={} hot_hits={} refused={} coalesced_waits={}",
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
            self.refused,
            self.coalesced_waits,
        )?;
        if let Some(avg) = self.redis_latency_us.checked_div(self.redis_calls) {
            write!(f, " redis_avg_us={avg}")?;
        }
        if self.compressions > 0 {
            write!(
                f,
                " compressed={}B->{}B",
                self.compressed_in, self.compressed_out
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_and_class() {
        let s = Stats::default();
        s.bypassed(BypassReason::NoStore);
        s.bypassed(BypassReason::NoStore);
        s.bypassed(BypassReason::Method);
        s.response(http::StatusCode::OK);
        s.response(http::StatusCode::BAD_GATEWAY);
        s.response(http::StatusCode::CONTINUE);
        let snap = s.snapshot();
        assert_eq!(snap.bypassed(BypassReason::NoStore), 2);
        assert_eq!(snap.bypassed(BypassReason::Authorization), 0);
        assert_eq!(snap.bypass, 3);
        assert_eq!(snap.redis_reachable, None);
        s.redis_reached(false);
        assert_eq!(s.snapshot().redis_reachable, Some(false));
        assert_eq!(snap.status_class, [1, 1, 0, 0, 1]);
    }
}
