//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! The XDP program rewrites addresses, ports and TTLs and patches the IP and L4
//! checksums with these instead of recomputing them over the payload. Every value is
//! taken as loaded from packet memory (no byte swapping): the ones' complement sum is
//! byte-order independent as long as all words come from the same representation.

/// Running ones' complement sum of an incremental update.
#[derive(Clone, Copy)]
pub struct Update(u32);

impl Update {
    /// Starts from the checksum currently in the header.
    #[inline(always)]
    pub fn new(check: u16) -> Self {
        Update(!check as u32 & 0xffff)
    }

    /// A 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn u16(self, old: u16, new: u16) -> Self {
        Update(self.0 + (!old as u32 & 0xffff) + new as u32)
    }

    /// A 32-bit word changed; handled as its two 16-bit halves.
    #[inline(always)]
    pub fn u32(self, old: u32, new: u32) -> Self {
        self.u16(old as u16, new as u16)
            .u16((old >> 16) as u16, (new >> 16) as u16)
    }

    /// The new checksum to store.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        let mut s = self.0;
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        !(s as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full checksum over 16-bit words, the slow way, for comparison.
    fn full(words: &[u16]) -> u16 {
        let mut s: u32 = words.iter().map(|&w| w as u32).sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut words = [
            0x4500u16, 0x0054, 0x1c46, 0x4000, 0x4001, 0, 0xac10, 0x0a63, 0xac10, 0x0a0c,
        ];
        let before = full(&words);
        let old = ((words[8] as u32) << 16) | words[9] as u32;
        let new = 0xc612_0105u32;
        let inc = Update::new(before).u32(old, new).finish();
        words[8] = (new >> 16) as u16;
        words[9] = new as u16;
        assert_eq!(inc, full(&words));
    }

    #[test]
    fn byte_order_independent() {
        // The same update done on byte-swapped words gives the byte-swapped checksum.
        let words = [0x1234u16, 0xabcd, 0xfff0];
        let c = full(&words);
        let inc = Update::new(c).u16(0xabcd, 0x0102).finish();
        let swapped = Update::new(c.swap_bytes())
            .u16(0xabcdu16.swap_bytes(), 0x0102u16.swap_bytes())
            .finish();
        assert_eq!(inc.swap_bytes(), swapped);
        assert_eq!(inc, full(&[0x1234, 0x0102, 0xfff0]));
    }
}
