//! IOVA ranges and byte sizes as people read them in messages.

use std::fmt;

/// A non-empty, inclusive range of I/O virtual addresses `start..=last`.
///
/// Inclusive because the kernel reports ranges that way (`VFIO_IOMMU_GET_INFO` gives
/// `0x0-0xfedfffff`), and because a range that ends at `u64::MAX` has no exclusive end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IovaRange {
    start: u64,
    last: u64,
}

impl IovaRange {
    /// The whole 64-bit IOVA space.
    pub const FULL: IovaRange = IovaRange {
        start: 0,
        last: u64::MAX,
    };

    /// The range of `size` bytes at `start`, or `None` when `size` is zero or the range
    /// would run past `u64::MAX`.
    pub fn new(start: u64, size: u64) -> Option<Self> {
        let last = start.checked_add(size.checked_sub(1)?)?;
        Some(IovaRange { start, last })
    }

    /// The range `start..=last`, or `None` when `last < start`.
    pub fn from_inclusive(start: u64, last: u64) -> Option<Self> {
        (start <= last).then_some(IovaRange { start, last })
    }

    /// First address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address (inclusive).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Number of bytes, saturating at `u64::MAX` for [`IovaRange::FULL`].
    pub fn size(&self) -> u64 {
        (self.last - self.start).saturating_add(1)
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr <= self.last
    }

    /// Whether `other` lies entirely inside this range.
    pub fn contains_range(&self, other: &IovaRange) -> bool {
        self.start <= other.start && other.last <= self.last
    }

    /// Whether the two ranges share at least one address.
    pub fn overlaps(&self, other: &IovaRange) -> bool {
        self.start <= other.last && other.start <= self.last
    }

    /// The common part of both ranges, if any.
    pub fn intersection(&self, other: &IovaRange) -> Option<IovaRange> {
        IovaRange::from_inclusive(self.start.max(other.start), self.last.min(other.last))
    }

    /// The part of `self` that lies in `allowed`, shrunk inwards to `align` (a power of
    /// two), or `None` when nothing aligned is left.
    pub(crate) fn intersect_aligned(&self, allowed: &IovaRange, align: u64) -> Option<IovaRange> {
        let common = self.intersection(allowed)?;
        let mask = align - 1;
        let start = common.start.checked_add(mask)? & !mask;
        // The first address past the aligned end; `last + 1` may be 2^64, so work on `last`.
        let end_excl = (u128::from(common.last) + 1) & !u128::from(mask);
        if u128::from(start) >= end_excl {
            return None;
        }
        IovaRange::from_inclusive(start, (end_excl - 1) as u64)
    }
}

impl fmt::Display for IovaRange {
    /// `0xfee00000-0xfeefffff`, the form the kernel and QEMU print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.last)
    }
}

/// A list of ranges printed as `0x0-0xfedfffff, 0xfef00000-0x7fffffffff`.
pub(crate) struct RangeList<'a>(pub &'a [IovaRange]);

impl fmt::Display for RangeList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A byte count printed in binary units: `4 KiB`, `1.50 GiB`, `513 bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} bytes");
        }
        let mut unit = 0;
        let mut scale: u64 = 1024;
        while unit + 1 < UNITS.len() && n / scale >= 1024 {
            scale *= 1024;
            unit += 1;
        }
        if n % scale == 0 {
            write!(f, "{} {}", n / scale, UNITS[unit])
        } else {
            write!(f, "{:.2} {}", n as f64 / scale as f64, UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_zero_and_overflow() {
        assert_eq!(IovaRange::new(0x1000, 0), None);
        assert_eq!(IovaRange::new(u64::MAX, 2), None);
        assert_eq!(IovaRange::new(u64::MAX, 1).unwrap().last(), u64::MAX);
        assert_eq!(IovaRange::new(0x1000, 0x1000).unwrap().last(), 0x1fff);
    }

    #[test]
    fn full_range_size_saturates() {
        assert_eq!(IovaRange::FULL.size(), u64::MAX);
        assert_eq!(IovaRange::FULL.to_string(), "0x0-0xffffffffffffffff");
    }

    #[test]
    fn overlap_and_intersection() {
        let a = IovaRange::new(0x1000, 0x2000).unwrap();
        let b = IovaRange::new(0x2000, 0x2000).unwrap();
        let c = IovaRange::new(0x3000, 0x1000).unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
        assert_eq!(a.intersection(&b), IovaRange::new(0x2000, 0x1000));
        assert_eq!(a.intersection(&c), None);
    }

    #[test]
    fn intersect_aligned_shrinks_inwards() {
        let r = IovaRange::new(0, 0x1_0000_0000).unwrap();
        let allowed = IovaRange::from_inclusive(0xfef0_0800, u64::MAX).unwrap();
        let got = r.intersect_aligned(&allowed, 0x1000).unwrap();
        assert_eq!(
            got,
            IovaRange::from_inclusive(0xfef0_1000, 0xffff_ffff).unwrap()
        );
        let tiny = IovaRange::new(0x1800, 0x100).unwrap();
        assert_eq!(tiny.intersect_aligned(&IovaRange::FULL, 0x1000), None);
        assert_eq!(
            IovaRange::FULL.intersect_aligned(&IovaRange::FULL, 0x1000),
            Some(IovaRange::FULL)
        );
    }

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(ByteSize(513).to_string(), "513 bytes");
        assert_eq!(ByteSize(4096).to_string(), "4 KiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.50 GiB");
        assert_eq!(ByteSize(u64::MAX).to_string(), "16.00 EiB");
    }
}
