//! Rates from cumulative counters: the delta over the *measured* elapsed time, never an
//! assumed interval. A counter that went backwards was reset (a restart, a reloaded
//! program), so the new value is all that was counted since: the rate is taken from it
//! alone, which is never negative and never the huge number a wrapped subtraction gives.
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// Per-second rate of a counter that read `prev` and then `now`, `elapsed` apart.
/// `None` without a positive elapsed time (no rate can be measured).
pub fn counter_rate(prev: u64, now: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let delta = if now >= prev { now - prev } else { now };
    Some(delta as f64 / secs)
}

/// Counter increase between two reads, with the same reset rule as [`counter_rate`].
pub fn counter_delta(prev: u64, now: u64) -> u64 {
    if now >= prev {
        now - prev
    } else {
        now
    }
}

/// The previous value of many counters, keyed by what they count (a service, a backend, a
/// reason, an interface). One tick's reads go through [`Counters::rate`]; [`Counters::end_tick`]
/// forgets keys not read in that tick, so removed backends do not pile up.
#[derive(Debug)]
pub struct Counters<K> {
    prev: HashMap<K, u64>,
    seen: HashMap<K, u64>,
}

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Self {
            prev: HashMap::new(),
            seen: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Counters<K> {
    /// Records `now` for `key` and returns its rate since the previous tick. A key seen for
    /// the first time has no baseline: its rate is 0 rather than its whole cumulative value
    /// spread over one interval.
    pub fn rate(&mut self, key: &K, now: u64, elapsed: Duration) -> f64 {
        self.seen.insert(key.clone(), now);
        match self.prev.get(key) {
            Some(&prev) => counter_rate(prev, now, elapsed).unwrap_or(0.0),
            None => 0.0,
        }
    }

    /// Like [`Counters::rate`] but the increase, for ratios over the interval.
    pub fn delta(&mut self, key: &K, now: u64) -> u64 {
        self.seen.insert(key.clone(), now);
        self.prev
            .get(key)
            .map_or(0, |&prev| counter_delta(prev, now))
    }

    /// Makes this tick's reads the baseline of the next and drops keys not read.
    pub fn end_tick(&mut self) {
        self.prev = std::mem::take(&mut self.seen);
    }

    /// Keys remembered for the next tick.
    pub fn len(&self) -> usize {
        self.prev.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prev.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn rate_uses_the_measured_elapsed_time() {
        assert_eq!(
            counter_rate(100, 400, Duration::from_millis(1500)),
            Some(200.0)
        );
        assert_eq!(counter_rate(100, 100, SEC), Some(0.0));
    }

    #[test]
    fn rate_after_a_reset_comes_from_the_new_value() {
        // The program was reloaded: the counter restarted and has counted 30 since.
        assert_eq!(
            counter_rate(1_000_000, 30, Duration::from_secs(2)),
            Some(15.0)
        );
        assert_eq!(counter_delta(1_000_000, 30), 30);
        // Back to 0 exactly: no traffic since the reset, not a negative rate.
        assert_eq!(counter_rate(u64::MAX, 0, SEC), Some(0.0));
    }

    #[test]
    fn no_rate_without_elapsed_time() {
        assert_eq!(counter_rate(1, 2, Duration::ZERO), None);
    }

    #[test]
    fn counters_start_at_zero_then_rate_then_forget_removed_keys() {
        let mut c = Counters::default();
        assert_eq!(c.rate(&"a", 5_000, SEC), 0.0, "no baseline on first sight");
        assert_eq!(c.rate(&"b", 10, SEC), 0.0);
        c.end_tick();
        assert_eq!(c.rate(&"a", 5_600, Duration::from_millis(500)), 1200.0);
        c.end_tick();
        assert_eq!(c.len(), 1, "\"b\" was not read in the last tick");
        assert_eq!(c.rate(&"a", 100, SEC), 100.0, "a reset");
        c.end_tick();
        assert_eq!(c.delta(&"a", 150), 50);
    }
}
