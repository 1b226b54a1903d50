//! Round-robin schedules: the table a `round-robin` or `weighted-round-robin` service
//! publishes, which the XDP program walks entry by entry with a per-CPU cursor.
//!
//! The schedule is nginx's smooth weighted round robin: every step each backend's
//! running score grows by its weight, the highest score is picked and loses the total
//! weight. Over one cycle (the sum of the weights) every backend appears exactly
//! `weight` times, and the picks are spread out: 5:1:1 gives a a b a c a a, never a
//! burst of five. Pure code, tested without a kernel.

/// Longest schedule built, whatever the service's `table_size`: a weight resolution
/// of 1/65536 is finer than any operator sets, and the builder costs
/// O(length × backends).
pub const MAX_SCHEDULE: u32 = 65_536;

/// Smooth WRR over `weights` (all ≥ 1): indexes into `weights`, one cycle long. The
/// weights are first divided by their greatest common divisor (3:3 and 1:1 are the
/// same cycle of 2), then, if the cycle would exceed `max_len` (capped at
/// `MAX_SCHEDULE`), scaled down to fit with every backend keeping at least one
/// entry. `max_len` must be at least `weights.len()`. Empty for no backends.
pub fn smooth_wrr(weights: &[u32], max_len: u32) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let max_len = u64::from(max_len.min(MAX_SCHEDULE)).max(weights.len() as u64);
    let g = weights.iter().fold(0, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1) / g)).collect();
    let total: u64 = w.iter().sum();
    if total > max_len {
        // 1 + share of what is left after the guaranteed entries: sums to at most max_len.
        let n = w.len() as u64;
        let spare = max_len - n;
        for x in &mut w {
            *x = 1 + *x * spare / total;
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, c) in current.iter_mut().enumerate() {
            *c += w[i] as i64;
        }
        for i in 1..current.len() {
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in s {
            c[i as usize] += 1;
        }
        c
    }

    /// Longest run of one backend, counting across the wrap from the end of the cycle
    /// to its start (the kernel's cursor goes round).
    fn longest_run(s: &[u32]) -> usize {
        let twice: Vec<u32> = s.iter().chain(s).copied().collect();
        let (mut best, mut run) = (1, 1);
        for w in twice.windows(2) {
            run = if w[0] == w[1] { run + 1 } else { 1 };
            best = best.max(run);
        }
        best.min(s.len())
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        // The sequence nginx documents for weights 5, 1, 1.
        assert_eq!(smooth_wrr(&[5, 1, 1], 1000), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_3_2_1_interleave_exactly() {
        let s = smooth_wrr(&[3, 2, 1], 65537);
        assert_eq!(s, vec![0, 1, 0, 2, 1, 0]);
        assert_eq!(counts(&s, 3), vec![3, 2, 1]);
        assert!(longest_run(&s) <= 2, "{s:?}");
    }

    #[test]
    fn common_divisor_is_removed() {
        assert_eq!(
            smooth_wrr(&[300, 200, 100], 65537),
            smooth_wrr(&[3, 2, 1], 65537)
        );
        assert_eq!(smooth_wrr(&[7, 7, 7, 7], 65537), vec![0, 1, 2, 3]);
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        let s = smooth_wrr(&[1; 256], 65537);
        assert_eq!(s, (0..256).collect::<Vec<_>>());
    }

    #[test]
    fn no_backends_no_schedule() {
        assert!(smooth_wrr(&[], 1009).is_empty());
    }

    #[test]
    fn a_long_cycle_is_scaled_to_fit_and_keeps_every_backend() {
        // Coprime weights summing past the limit.
        let weights: Vec<u32> = (0..256).map(|i| 65535 - i).collect();
        let s = smooth_wrr(&weights, 1009);
        assert!(s.len() <= 1009, "{}", s.len());
        let c = counts(&s, 256);
        assert!(c.iter().all(|&n| n >= 1), "{c:?}");
        // A dominant backend with many light ones: still every backend present.
        let mut w = vec![1; 100];
        w[0] = 65535;
        let s = smooth_wrr(&w, 1009);
        assert!(s.len() <= 1009);
        let c = counts(&s, 100);
        assert!(c.iter().all(|&n| n >= 1), "{c:?}");
        assert!(c[0] > 800, "{c:?}");
    }

    #[test]
    fn shares_match_weights_and_runs_stay_short() {
        // Mixed weights 1..=7 over 256 backends: exact shares, and no backend gets
        // more consecutive entries than its weight needs.
        let weights: Vec<u32> = (0..256).map(|i| 1 + i % 7).collect();
        let s = smooth_wrr(&weights, 65537);
        assert_eq!(s.len() as u32, weights.iter().sum::<u32>());
        let c = counts(&s, 256);
        for (i, &w) in weights.iter().enumerate() {
            assert_eq!(c[i], w as usize, "backend {i}");
        }
        assert_eq!(longest_run(&s), 1, "a heavy backend was bunched");
    }

    #[test]
    fn at_most_the_schedule_cap() {
        let weights: Vec<u32> = (0..1024).map(|i| 65535 - i).collect();
        let s = smooth_wrr(&weights, 1_000_003);
        assert!(s.len() as u32 <= MAX_SCHEDULE);
    }
}
