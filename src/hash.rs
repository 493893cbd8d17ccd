//! Stable hashes for decisions that must agree across restarts, instances and versions
//! (control-group assignment, train/validation splits, intervention ids).

use sha2::{Digest, Sha256};

/// SHA-256 of `salt`, a 0x1f separator and `key`, as the first 8 bytes big-endian.
pub fn stable_u64(salt: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0x1f]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// A uniform draw in [0, 1) fixed by `salt` and `key`.
pub fn stable_unit(salt: &str, key: &str) -> f64 {
    (stable_u64(salt, key) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_salt_sensitive() {
        assert_eq!(stable_u64("s", "u1"), stable_u64("s", "u1"));
        assert_ne!(stable_u64("s", "u1"), stable_u64("t", "u1"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(stable_u64("ab", "c"), stable_u64("a", "bc"));
        let share = (0..10_000).filter(|i| stable_unit("salt", &format!("u{i}")) < 0.1).count();
        assert!((800..1200).contains(&share), "{share}");
    }
}
