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

/// Folds a 64-bit accumulation of 16-, 32- or 64-bit words into the 16-bit ones'
/// complement sum (2^16, 2^32 and 2^48 are all 1 modulo 0xffff). A region whose
/// checksum is right, checksum field included, sums to 0xffff in either byte order.
#[inline(always)]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_matches_word_sum() {
        let bytes: [u8; 12] = [
            0x45, 0, 0, 0x54, 0xff, 0xff, 0x40, 0, 0xfe, 0xdc, 0x12, 0x34,
        ];
        let words16: u64 = bytes
            .chunks(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]) as u64)
            .sum();
        let words32: u64 = bytes
            .chunks(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) as u64)
            .sum();
        let w64 = u64::from_ne_bytes(bytes[..8].try_into().unwrap());
        let mixed = (w64 & 0xffff_ffff)
            + (w64 >> 32)
            + u32::from_ne_bytes(bytes[8..].try_into().unwrap()) as u64;
        assert_eq!(fold(words16), fold(words32));
        assert_eq!(fold(words16), fold(mixed));
        // The complement of the sum makes the region check out.
        let check = !fold(words16);
        assert_eq!(fold(words16 + check as u64), 0xffff);
    }

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
