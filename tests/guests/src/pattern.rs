//! The disk blocks the NVMe test reads and writes: 512 bytes of 32 ASCII records of 16 bytes.
//!
//! The test bed (`tests/testbed/run.sh`) writes [`testbed_block`] at LBA 100 before the run:
//! record *k* is `LBA=0100 REC=kk\n`. The guest writes [`guest_block`] (`E2E=0101 REC=kk\n`) to
//! its write LBA. Every record differs, so a block from the wrong place or offset never matches,
//! and both read well in a hex dump. LBAs print modulo 10000 so a record stays 16 bytes.
//!
//! ```
//! let b = guests::pattern::testbed_block(100);
//! assert_eq!(&b[..16], b"LBA=0100 REC=00\n");
//! assert_eq!(&b[496..], b"LBA=0100 REC=31\n");
//! assert_eq!(&guests::pattern::guest_block(101)[16..32], b"E2E=0101 REC=01\n");
//! ```

/// Bytes in a block (the test bed's LBAs count 512-byte blocks).
pub const BLOCK: usize = 512;

/// The block the test bed wrote at `lba`.
pub fn testbed_block(lba: u64) -> [u8; BLOCK] {
    block(*b"LBA=", lba)
}

/// The block the guest writes at `lba`.
pub fn guest_block(lba: u64) -> [u8; BLOCK] {
    block(*b"E2E=", lba)
}

fn block(tag: [u8; 4], lba: u64) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    let lba = lba % 10_000;
    for (k, rec) in out.chunks_exact_mut(16).enumerate() {
        rec[..4].copy_from_slice(&tag);
        rec[4] = b'0' + (lba / 1000) as u8;
        rec[5] = b'0' + (lba / 100 % 10) as u8;
        rec[6] = b'0' + (lba / 10 % 10) as u8;
        rec[7] = b'0' + (lba % 10) as u8;
        rec[8..13].copy_from_slice(b" REC=");
        rec[13] = b'0' + (k / 10) as u8;
        rec[14] = b'0' + (k % 10) as u8;
        rec[15] = b'\n';
    }
    out
}

/// The first offset where `got` differs from `want`, for error messages.
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or_else(|| (got.len() != want.len()).then_some(got.len().min(want.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_test_bed_printf() {
        // run.sh: for k in $(seq 0 31); do printf 'LBA=%04d REC=%02d\n' "$PATTERN_LBA" "$k"; done
        let mut want = String::new();
        for k in 0..32 {
            want.push_str(&format!("LBA={:04} REC={:02}\n", 100, k));
        }
        assert_eq!(&testbed_block(100)[..], want.as_bytes());
        let mut want = String::new();
        for k in 0..32 {
            want.push_str(&format!("E2E={:04} REC={:02}\n", 7, k));
        }
        assert_eq!(&guest_block(7)[..], want.as_bytes());
    }

    #[test]
    fn differences() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abd", b"abc"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
    }
}
