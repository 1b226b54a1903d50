//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table
//! is built here and the XDP program only indexes it with `flow_hash % M`.
//!
//! Each backend walks its own permutation of the slots, `(offset + j * skip) % M`,
//! derived from two independent hashes of its key; backends take turns claiming their
//! next free preferred slot until the table is full. Weights set how often a backend
//! gets a turn: backend i takes its k-th turn at "time" k / w_i, so over the whole fill
//! each backend claims a share of slots equal to its share of the total weight (within
//! one slot). The hashes are our own fixed functions, so two balancers (or two
//! releases) given the same backends build the same table.
use std::{cmp::Ordering, collections::BinaryHeap};

/// One entry of the table's input: a stable identity and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Identity the permutation is derived from (e.g. "10.0.0.2:8080"), so two
    /// balancers with the same backends build the same table whatever the order.
    pub key: String,
    pub weight: u32,
}

const SEED_OFFSET: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// FNV-1a over the bytes, started from a seed-dependent basis, then the MurmurHash3
/// 64-bit finaliser so that keys differing in one character spread over all bits.
/// Written out here (not std's `DefaultHasher`) because its output is part of the
/// contract between balancers and must never change.
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The next turn of one backend, ordered so the `BinaryHeap` pops the earliest turn
/// time `turns / weight` first (ties: lower position in the key-sorted order).
#[derive(Debug, PartialEq, Eq)]
struct Turn {
    /// Number of the turn (1-based): its time is `turn / weight`.
    turn: u64,
    weight: u64,
    pos: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // Cross-multiplied to compare exact fractions; reversed for a min-heap.
        (other.turn * self.weight)
            .cmp(&(self.turn * other.weight))
            .then_with(|| other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Builds a table of size `m` (prime); each slot holds an index into `backends`.
/// Backends with weight 0 get no slots. Returns an empty table when no backend has
/// a positive weight or `m` is 0.
///
/// # Panics
/// If `m` is not prime (the permutations would not cover the table); config
/// validation rejects such sizes before they get here.
pub fn build(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    // Visit backends in key order so the table does not depend on input order.
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    if order.is_empty() || m == 0 {
        return Vec::new();
    }
    assert!(
        crate::config::is_prime(m),
        "maglev table size {m} is not prime"
    );
    order.sort_by(|&a, &b| {
        backends[a]
            .key
            .cmp(&backends[b].key)
            .then(backends[a].weight.cmp(&backends[b].weight))
            .then(a.cmp(&b))
    });

    let m64 = u64::from(m);
    // Per backend (in `order` positions): current permutation slot and step.
    let mut cursor = Vec::with_capacity(order.len());
    let mut skip = Vec::with_capacity(order.len());
    for &i in &order {
        let key = backends[i].key.as_bytes();
        cursor.push(stable_hash(key, SEED_OFFSET) % m64);
        skip.push(if m == 1 {
            0
        } else {
            stable_hash(key, SEED_SKIP) % (m64 - 1) + 1
        });
    }

    let mut turns: BinaryHeap<Turn> = order
        .iter()
        .enumerate()
        .map(|(pos, &i)| Turn {
            turn: 1,
            weight: u64::from(backends[i].weight),
            pos,
        })
        .collect();

    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u32;
    while filled < m {
        let mut next = turns.pop().expect("heap holds every backend");
        let pos = next.pos;
        // A prime M makes every skip coprime with M, so the walk visits every slot
        // and finds a free one while the table is not full.
        loop {
            let slot = cursor[pos] as usize;
            // skip < M, so one conditional subtraction replaces a division.
            cursor[pos] += skip[pos];
            if cursor[pos] >= m64 {
                cursor[pos] -= m64;
            }
            if table[slot] == EMPTY {
                table[slot] = order[pos] as u32;
                break;
            }
        }
        filled += 1;
        next.turn += 1;
        turns.push(next);
    }
    table
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const M: u32 = 65537;

    fn backends(weights: &[u32]) -> Vec<MaglevBackend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| MaglevBackend {
                key: format!("198.18.{}.{}:8080", 1 + i / 200, 1 + i % 200),
                weight,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in table {
            c[i as usize] += 1;
        }
        c
    }

    /// Largest |share of slots - share of weight|, as a fraction of the weight share.
    fn worst_relative_error(weights: &[u32], table: &[u32]) -> f64 {
        let total: u32 = weights.iter().sum();
        let c = counts(table, weights.len());
        weights
            .iter()
            .zip(&c)
            .filter(|(&w, _)| w > 0)
            .map(|(&w, &n)| {
                let want = f64::from(w) / f64::from(total);
                let got = n as f64 / table.len() as f64;
                (got - want).abs() / want
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn distribution_follows_weights() {
        for weights in [
            vec![3, 2, 1],
            vec![1, 2, 3, 4, 5, 5, 4, 3, 2, 1],
            vec![10, 1, 1, 1, 7, 3, 3, 100, 1, 50],
        ] {
            let table = build(&backends(&weights), M);
            assert_eq!(table.len(), M as usize);
            let err = worst_relative_error(&weights, &table);
            println!(
                "weights {weights:?}: slots {:?}, worst relative error {:.4}%",
                counts(&table, weights.len()),
                err * 100.0
            );
            assert!(
                err < 0.01,
                "share off by {:.3}% for {weights:?}",
                err * 100.0
            );
        }
    }

    #[test]
    fn equal_weights_split_evenly() {
        let table = build(&backends(&[1; 7]), 1009);
        let c = counts(&table, 7);
        assert!(c.iter().all(|&n| n == 144 || n == 145), "{c:?}");
    }

    /// Removes backend `gone` out of `n` equal ones and reports (moved fraction,
    /// fraction moved between survivors).
    fn removal(n: usize, gone: usize) -> (f64, f64) {
        let all = backends(&vec![1; n]);
        let mut rest = all.clone();
        rest.remove(gone);
        let before = build(&all, M);
        let after = build(&rest, M);
        let key_before = |s: usize| &all[before[s] as usize].key;
        let key_after = |s: usize| &rest[after[s] as usize].key;
        let mut moved = 0;
        let mut between_survivors = 0;
        for s in 0..M as usize {
            if key_before(s) != key_after(s) {
                moved += 1;
                if *key_before(s) != all[gone].key {
                    between_survivors += 1;
                }
            }
        }
        // Every slot of the removed backend must have moved.
        assert!(after.iter().all(|&i| rest[i as usize].key != all[gone].key));
        (
            moved as f64 / f64::from(M),
            between_survivors as f64 / f64::from(M),
        )
    }

    #[test]
    fn removing_one_backend_moves_about_one_nth() {
        for n in [10, 50] {
            for gone in [0, n / 2, n - 1] {
                let (moved, collateral) = removal(n, gone);
                let ideal = 1.0 / n as f64;
                println!(
                    "N={n} remove #{gone}: moved {:.3}% of slots (1/N = {:.3}%), \
                     {:.3}% between survivors",
                    moved * 100.0,
                    ideal * 100.0,
                    collateral * 100.0
                );
                assert!(moved <= ideal + 0.02, "moved {moved} for N={n}");
                assert!(collateral < 0.02, "collateral {collateral} for N={n}");
            }
        }
    }

    #[test]
    fn adding_or_reweighting_disturbs_little() {
        let weights = [3, 1, 2, 5, 1, 4, 2, 2, 1, 3];
        let all = backends(&weights);
        let before = build(&all[..9], M);
        let after = build(&all, M);
        let moved_to_new = after.iter().filter(|&&i| i == 9).count();
        let collateral = before
            .iter()
            .zip(&after)
            .filter(|(&b, &a)| a != 9 && a != b)
            .count();
        let share = 3.0 / 24.0;
        println!(
            "weighted add (w=3 of 24): {:.3}% of slots to the new backend (share {:.3}%), \
             {:.3}% between others",
            100.0 * moved_to_new as f64 / f64::from(M),
            100.0 * share,
            100.0 * collateral as f64 / f64::from(M)
        );
        assert!((moved_to_new as f64 / f64::from(M) - share).abs() < 0.01);
        assert!((collateral as f64) < 0.02 * f64::from(M));

        // Doubling one weight of ten: it gains ~its extra share, others mostly stay.
        let mut heavier = all.clone();
        heavier[0].weight = 6;
        let reweighted = build(&heavier, M);
        let changed = after
            .iter()
            .zip(&reweighted)
            .filter(|(a, b)| a != b)
            .count();
        println!(
            "reweight 3 -> 6 of 24: {:.3}% of slots changed owner",
            100.0 * changed as f64 / f64::from(M)
        );
        // Its share goes from 3/24 to 6/27: about 9.7% of the table must move.
        assert!((changed as f64) < 0.15 * f64::from(M), "{changed}");
    }

    #[test]
    fn input_order_does_not_matter() {
        let a = backends(&[5, 1, 3, 3, 2, 8]);
        let mut b = a.clone();
        b.reverse();
        b.swap(0, 3);
        let ta = build(&a, 1009);
        let tb = build(&b, 1009);
        let keys = |bs: &[MaglevBackend], t: &[u32]| {
            t.iter()
                .map(|&i| bs[i as usize].key.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&a, &ta), keys(&b, &tb));
    }

    #[test]
    fn table_is_pinned_across_releases() {
        // Two balancers must agree: this checksum of a fixed input changes only if the
        // hash or fill order changes, which would reshuffle every deployed table.
        let table = build(&backends(&[1, 2, 3]), 101);
        let digest = table
            .iter()
            .fold(0u64, |h, &i| h.wrapping_mul(31).wrapping_add(u64::from(i)));
        assert_eq!(table.len(), 101);
        assert_eq!(&table[..8], &PINNED_PREFIX);
        assert_eq!(digest, PINNED_DIGEST);
    }
    const PINNED_PREFIX: [u32; 8] = [2, 1, 0, 1, 2, 2, 2, 2];
    const PINNED_DIGEST: u64 = 6_319_815_278_175_693_988;

    #[test]
    fn empty_and_zero_weight_inputs() {
        assert!(build(&[], M).is_empty());
        assert!(build(&backends(&[0, 0]), M).is_empty());
        assert!(build(&backends(&[1]), 0).is_empty());
        // Zero-weight backends get no slots, the rest share the table.
        let table = build(&backends(&[0, 1, 0, 1]), 1009);
        let c = counts(&table, 4);
        assert_eq!((c[0], c[2]), (0, 0));
        assert_eq!(c[1] + c[3], 1009);
    }

    #[test]
    fn large_build_is_quick() {
        let weights: Vec<u32> = (0..256).map(|i| 1 + i % 7).collect();
        let input = backends(&weights);
        let start = std::time::Instant::now();
        let table = build(&input, M);
        println!(
            "M={M}, 256 backends: built in {:?}, worst relative error {:.3}%",
            start.elapsed(),
            worst_relative_error(&weights, &table) * 100.0
        );
        let mut c = counts(&table, 256);
        c.sort_unstable();
        // Weight 1 of total sum ~1020: about 64 slots; nobody may starve.
        assert!(c[0] > 0);
        // Extreme skew still terminates and keeps the light backend in the table.
        let table = build(&backends(&[65535, 1]), M);
        let c = counts(&table, 2);
        assert_eq!(c[1], 1, "{c:?}");
    }

    #[test]
    fn hash_is_stable() {
        // Distinct keys must not collide, and the two seeds must give unrelated hashes.
        assert_eq!(stable_hash(b"", 0), stable_hash(b"", 0));
        let mut seen = HashMap::new();
        for i in 0..1000 {
            let h = stable_hash(format!("198.18.0.{i}:80").as_bytes(), SEED_OFFSET);
            assert!(seen.insert(h, i).is_none());
        }
        assert_ne!(stable_hash(b"a", SEED_OFFSET), stable_hash(b"a", SEED_SKIP));
    }
}
