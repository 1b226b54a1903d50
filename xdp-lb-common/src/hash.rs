//! Flow hashing for backend selection. Runs in the XDP program for every new flow and
//! in userspace tests that predict which backend a crafted packet reaches, so it must
//! be pure, branch-free and identical on both sides: two balancers with the same
//! configuration send the same flow to the same backend.
//!
//! MurmurHash3 (x86, 32-bit) over the tuple's 32-bit words: cheap, straight-line code
//! the verifier accepts, and good avalanche so `hash % M` spreads over the table.

use crate::FlowKey;

const SEED: u32 = 0x6c62_7864; // "dxbl"

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len_bytes: u32) -> u32 {
    h ^= len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of the whole 5-tuple (the `maglev` algorithm).
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = SEED;
    h = mix(h, k.src[0]);
    h = mix(h, k.src[1]);
    h = mix(h, k.src[2]);
    h = mix(h, k.src[3]);
    h = mix(h, k.dst[0]);
    h = mix(h, k.dst[1]);
    h = mix(h, k.dst[2]);
    h = mix(h, k.dst[3]);
    h = mix(h, (k.sport as u32) | ((k.dport as u32) << 16));
    h = mix(h, (k.proto as u32) | ((k.family as u32) << 8));
    finish(h, 40)
}

/// Hash of the source address only (the `src-hash` algorithm).
#[inline(always)]
pub fn src_hash(src: &[u32; 4]) -> u32 {
    let mut h = SEED;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    finish(h, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sensitive_to_every_field() {
        let base = FlowKey {
            src: [0x0a00_0001, 0, 0, 0],
            dst: [0x0a00_0002, 0, 0, 0],
            sport: 1234,
            dport: 80,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        assert_eq!(flow_hash(&base), flow_hash(&base));
        let mut k = base;
        k.sport = 1235;
        assert_ne!(flow_hash(&base), flow_hash(&k));
        let mut k = base;
        k.proto = 17;
        assert_ne!(flow_hash(&base), flow_hash(&k));
        let mut k = base;
        k.dst[3] = 1;
        assert_ne!(flow_hash(&base), flow_hash(&k));
        assert_ne!(src_hash(&base.src), src_hash(&base.dst));
    }

    #[test]
    fn spreads_sequential_ports_evenly() {
        let mut buckets = [0u32; 16];
        for p in 0..16000u16 {
            let k = FlowKey {
                src: [0x0a00_0001, 0, 0, 0],
                dst: [0x0a00_0002, 0, 0, 0],
                sport: p,
                dport: 80,
                proto: 6,
                family: 4,
                _pad: [0; 2],
            };
            buckets[(flow_hash(&k) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "bucket count {b} far from 1000");
        }
    }
}
