//! The one place that encodes addresses, ports and ring positions the way the maps
//! hold them. The control plane, the adapter, the monitor and the tests all use
//! these instead of their own copies.
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{FAMILY_V4, FAMILY_V6};

/// An address as the kernel structs hold it: network-order bytes in native-endian
/// words, IPv4 in word 0 (others zero); plus the family tag.
pub fn ip_to_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The inverse of `ip_to_words`; `None` for an unknown family tag.
pub fn words_to_ip(words: [u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        FAMILY_V6 => {
            let mut o = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// A port as the kernel structs hold it: network-order bytes in a native `u16`.
pub fn port_to_wire(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The inverse of `port_to_wire`.
pub fn port_from_wire(wire: u16) -> u16 {
    u16::from_be_bytes(wire.to_ne_bytes())
}

/// Offset into MAGLEV_RING of table half `slot` (0 or 1) of service `id`, when the
/// ring map was sized for tables of up to `max_table_size` entries: each service
/// owns two consecutive halves, so a new table is written into the idle one and
/// published by one Service record update.
pub const fn ring_offset(id: u32, slot: u32, max_table_size: u32) -> u32 {
    (2 * id + slot) * max_table_size
}

/// Ring entries needed for `max_services` services of up to `max_table_size` each.
pub const fn ring_entries(max_services: u32, max_table_size: u32) -> u32 {
    max_services * 2 * max_table_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ip in ["198.18.0.1", "2001:db8::1", "::ffff:1.2.3.4"] {
            let ip: IpAddr = ip.parse().unwrap();
            let (w, f) = ip_to_words(ip);
            assert_eq!(words_to_ip(w, f), Some(ip));
        }
        assert_eq!(port_to_wire(8080).to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(port_from_wire(port_to_wire(8080)), 8080);
        assert_eq!(ring_offset(1, 1, 1009), 3 * 1009);
    }
}
