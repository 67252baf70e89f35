//! The process limits that decide whether guest memory can be pinned for DMA.
//!
//! VFIO's type1 IOMMU driver (and iommufd) pin every page mapped for DMA and count them
//! against `RLIMIT_MEMLOCK`, unless the process holds `CAP_IPC_LOCK`. A VMM maps all of guest
//! RAM, so the limit must be at least the guest's memory size.

use std::fmt;
use std::fs;
use std::io;

/// `CAP_IPC_LOCK`'s bit in the capability sets (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// A soft `RLIMIT_MEMLOCK` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemlockLimit {
    /// `RLIM_INFINITY`.
    Unlimited,
    /// At most this many bytes may be locked.
    Bytes(u64),
}

impl MemlockLimit {
    /// Whether `bytes` can be locked under this limit.
    pub fn allows(self, bytes: u64) -> bool {
        match self {
            MemlockLimit::Unlimited => true,
            MemlockLimit::Bytes(limit) => bytes <= limit,
        }
    }
}

impl fmt::Display for MemlockLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemlockLimit::Unlimited => f.write_str("unlimited"),
            MemlockLimit::Bytes(b) => write!(f, "{}", format_bytes(*b)),
        }
    }
}

/// `8 MiB`, `1.5 GiB`, `4096 bytes`: sizes as people read them.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit {
            return if bytes % unit == 0 {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

/// What limits pinning memory in the current process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// The soft `RLIMIT_MEMLOCK`.
    pub memlock: MemlockLimit,
    /// Whether `CAP_IPC_LOCK` is in the effective set: then VFIO ignores the limit.
    pub cap_ipc_lock: bool,
}

impl ProcessLimits {
    /// The calling process's limits: `getrlimit(RLIMIT_MEMLOCK)` and `CapEff` from
    /// `/proc/self/status` (the real one: these describe this process, not a host tree).
    pub fn current() -> io::Result<Self> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed `limit`.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let memlock = if limit.rlim_cur == libc::RLIM_INFINITY {
            MemlockLimit::Unlimited
        } else {
            MemlockLimit::Bytes(limit.rlim_cur)
        };
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        Ok(Self {
            memlock,
            cap_ipc_lock: effective_caps(&status).is_some_and(|c| c & (1 << CAP_IPC_LOCK) != 0),
        })
    }
}

/// The `CapEff:` mask of a `/proc/PID/status` text.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(format_bytes(8 << 20), "8 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(100), "100 bytes");
        assert_eq!(MemlockLimit::Bytes(64 << 10).to_string(), "64 KiB");
    }

    #[test]
    fn limits() {
        assert!(MemlockLimit::Unlimited.allows(u64::MAX));
        assert!(MemlockLimit::Bytes(1 << 30).allows(1 << 30));
        assert!(!MemlockLimit::Bytes(8 << 20).allows(1 << 30));
        assert_eq!(
            effective_caps("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
        assert_eq!(effective_caps("CapEff:\t0000000000000000"), Some(0));
        assert_eq!(effective_caps("nothing"), None);
    }

    #[test]
    fn current_matches_proc_self_limits() {
        let limits = ProcessLimits::current().unwrap();
        // /proc/self/limits shows the same soft limit: "Max locked memory  SOFT  HARD  bytes".
        let text = fs::read_to_string("/proc/self/limits").unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max locked memory"))
            .unwrap();
        let soft = line["Max locked memory".len()..]
            .split_whitespace()
            .next()
            .unwrap();
        let expected = match soft {
            "unlimited" => MemlockLimit::Unlimited,
            n => MemlockLimit::Bytes(n.parse().unwrap()),
        };
        assert_eq!(limits.memlock, expected);
    }
}
