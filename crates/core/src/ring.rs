//! The hash ring: where a key lives.
//!
//! Every key hashes to a 64-bit *ring position* with XXH3-64 (seed 0) of the raw key bytes.
//! Positions order the whole key space on a circle; storage keeps objects under their position
//! followed by the key, so one arc of the ring is one contiguous range scan.

/// The ring position of a key: XXH3-64 (seed 0) of the key bytes.
///
/// This function is part of the on-disk format and of the wire protocol: changing it moves
/// every key.
pub fn position(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_is_stable() {
        // Known XXH3-64 values: a change here is a change of the on-disk format.
        assert_eq!(position(b""), 0x2D06_8005_38D3_94C2);
        assert_ne!(position(b"a"), position(b"b"));
        assert_eq!(position(b"hello"), position(b"hello"));
    }
}
