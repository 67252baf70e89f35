//! Host page size: the granule of every mapping the plan makes.
//!
//! A KVM memory slot needs a page-aligned guest address and a page-aligned size, and a VFIO
//! region can only be mmapped at page-aligned offsets, so everything the plan maps is whole host
//! pages. x86-64 hosts use 4 KiB pages; arm64 and ppc64 hosts often run 16 KiB or 64 KiB kernels,
//! which is where MSI-X tables sharing a page with registers start to hurt.

use std::fmt;
use std::str::FromStr;

/// The page size of the host kernel that mmaps the device regions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB pages (x86-64, most arm64 distributions).
    #[default]
    Size4K,
    /// 16 KiB pages (Apple silicon arm64 kernels).
    Size16K,
    /// 64 KiB pages (ppc64le, RHEL arm64 kernels).
    Size64K,
}

impl PageSize {
    /// Every supported page size, smallest first.
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size16K, PageSize::Size64K];

    /// The page size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 0x1000,
            PageSize::Size16K => 0x4000,
            PageSize::Size64K => 0x1_0000,
        }
    }

    /// The page size for `bytes`, if it is one of the supported sizes.
    pub const fn from_bytes(bytes: u64) -> Option<PageSize> {
        match bytes {
            0x1000 => Some(PageSize::Size4K),
            0x4000 => Some(PageSize::Size16K),
            0x1_0000 => Some(PageSize::Size64K),
            _ => None,
        }
    }

    /// Rounds `value` down to a page boundary.
    pub const fn align_down(self, value: u64) -> u64 {
        value & !(self.bytes() - 1)
    }

    /// Rounds `value` up to a page boundary, saturating at the last page boundary of `u64`.
    pub const fn align_up(self, value: u64) -> u64 {
        match value.checked_add(self.bytes() - 1) {
            Some(v) => self.align_down(v),
            None => self.align_down(u64::MAX),
        }
    }

    /// Whether `value` is a multiple of the page size.
    pub const fn is_aligned(self, value: u64) -> bool {
        value & (self.bytes() - 1) == 0
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} KiB", self.bytes() / 1024)
    }
}

/// The text given for a page size is not one of 4K, 16K, 64K.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported page size {0:?}: use 4K, 16K or 64K (or 4096, 16384, 65536)")]
pub struct ParsePageSizeError(pub String);

impl FromStr for PageSize {
    type Err = ParsePageSizeError;

    /// Accepts `4K`, `4k`, `4KiB`, `4096`, `0x1000` and the same spellings of 16K and 64K.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let bytes = if let Some(hex) = lower.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).ok()
        } else if let Some(kib) = lower
            .strip_suffix("kib")
            .or_else(|| lower.strip_suffix("kb"))
            .or_else(|| lower.strip_suffix('k'))
        {
            kib.trim()
                .parse::<u64>()
                .ok()
                .and_then(|k| k.checked_mul(1024))
        } else {
            lower.parse::<u64>().ok()
        };
        bytes
            .and_then(PageSize::from_bytes)
            .ok_or_else(|| ParsePageSizeError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_spellings() {
        assert_eq!("4K".parse(), Ok(PageSize::Size4K));
        assert_eq!("16k".parse(), Ok(PageSize::Size16K));
        assert_eq!("64KiB".parse(), Ok(PageSize::Size64K));
        assert_eq!("65536".parse(), Ok(PageSize::Size64K));
        assert_eq!("0x1000".parse(), Ok(PageSize::Size4K));
        assert!("8K".parse::<PageSize>().is_err());
        assert!("".parse::<PageSize>().is_err());
        assert!("99999999999999999999K".parse::<PageSize>().is_err());
    }

    #[test]
    fn alignment_helpers() {
        let p = PageSize::Size16K;
        assert_eq!(p.align_down(0x5fff), 0x4000);
        assert_eq!(p.align_up(0x4001), 0x8000);
        assert_eq!(p.align_up(0x4000), 0x4000);
        assert_eq!(p.align_up(u64::MAX), !0x3fff);
        assert!(p.is_aligned(0x8000));
        assert!(!p.is_aligned(0x8008));
        assert_eq!(p.to_string(), "16 KiB");
    }
}
