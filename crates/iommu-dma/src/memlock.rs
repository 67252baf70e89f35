//! The locked-memory check made before pinning guest memory for DMA.
//!
//! VFIO type1 and iommufd pin every mapped page and charge it to `RLIMIT_MEMLOCK` unless the
//! process has `CAP_IPC_LOCK` (type1: `vfio_lock_acct()`; iommufd: `incr_user_locked_vm()`).
//! When the limit is too low the kernel answers `ENOMEM` part-way through mapping guest RAM,
//! which tells the user nothing. So we check first and say both numbers and the fix.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::range::ByteSize;

/// Bytes pinned by kernel mappings made through this crate in this process.
static PINNED_BY_THIS_CRATE: AtomicU64 = AtomicU64::new(0);

/// Record `bytes` newly pinned by a kernel backend.
pub(crate) fn note_pinned(bytes: u64) {
    PINNED_BY_THIS_CRATE.fetch_add(bytes, Ordering::Relaxed);
}

/// Record `bytes` unpinned by a kernel backend.
pub(crate) fn note_unpinned(bytes: u64) {
    // Saturating: a mismatch must never wrap into an absurd number in a message.
    let _ = PINNED_BY_THIS_CRATE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(bytes))
    });
}

/// Bytes currently pinned by kernel mappings made through this crate in this process.
pub fn pinned_by_this_crate() -> u64 {
    PINNED_BY_THIS_CRATE.load(Ordering::Relaxed)
}

/// How much memory this process may still lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemlockBudget {
    /// The soft `RLIMIT_MEMLOCK` in bytes; `None` when unlimited.
    pub limit: Option<u64>,
    /// Bytes this process has locked or pinned already, as far as we know: the larger of
    /// `VmLck + VmPin` from `/proc/self/status` and what this crate pinned itself (iommufd
    /// charges the user, not the process, so its pins do not show in `VmLck`). With no
    /// limit, only what this crate pinned (`/proc` is not read then).
    pub already_locked: u64,
    /// Whether the process has `CAP_IPC_LOCK`, which exempts it from the limit (only read
    /// when there is a limit).
    pub cap_ipc_lock: bool,
}

impl MemlockBudget {
    /// The budget of this process now.
    pub fn current() -> io::Result<Self> {
        let mut rlim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `rlim` is a valid, writable `struct rlimit`; getrlimit only writes to it.
        let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rlim) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        if rlim.rlim_cur == libc::RLIM_INFINITY {
            // Nothing to check against; skip reading /proc (this runs once per mapping).
            return Ok(MemlockBudget {
                limit: None,
                already_locked: pinned_by_this_crate(),
                cap_ipc_lock: false,
            });
        }
        let limit = Some(rlim.rlim_cur);
        let status = std::fs::read_to_string("/proc/self/status")?;
        let (locked, cap_ipc_lock) = parse_proc_status(&status);
        Ok(MemlockBudget {
            limit,
            already_locked: locked.max(pinned_by_this_crate()),
            cap_ipc_lock,
        })
    }

    /// Whether `needed` more bytes may be pinned for `what` (e.g. `guest RAM 0x0-0x7fffffff`).
    pub fn check(&self, what: &str, needed: u64) -> Result<(), MemlockShortfall> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        if self.cap_ipc_lock || self.already_locked.saturating_add(needed) <= limit {
            return Ok(());
        }
        Err(MemlockShortfall {
            what: what.to_string(),
            needed,
            already_locked: self.already_locked,
            limit,
        })
    }
}

/// Pinning would exceed `RLIMIT_MEMLOCK`: the numbers, and (in `Display`) how to raise it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemlockShortfall {
    /// What was to be pinned.
    pub what: String,
    /// Bytes it needs.
    pub needed: u64,
    /// Bytes already locked by this process.
    pub already_locked: u64,
    /// The soft `RLIMIT_MEMLOCK` in bytes.
    pub limit: u64,
}

impl fmt::Display for MemlockShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.already_locked.saturating_add(self.needed);
        write!(
            f,
            "pinning {} for DMA needs {} bytes ({}) of locked memory on top of the {} bytes ({}) \
             this process has locked already, but RLIMIT_MEMLOCK is {} bytes ({}); raise it to at \
             least {} bytes ({}): `ulimit -l {}` (KiB) or `ulimit -l unlimited` in the shell that \
             starts the VMM, LimitMEMLOCK=infinity in its systemd unit (or a memlock line in \
             /etc/security/limits.conf), or run it as root / with CAP_IPC_LOCK",
            self.what,
            self.needed,
            ByteSize(self.needed),
            self.already_locked,
            ByteSize(self.already_locked),
            self.limit,
            ByteSize(self.limit),
            total,
            ByteSize(total),
            total.div_ceil(1024),
        )
    }
}

/// `(VmLck + VmPin in bytes, CAP_IPC_LOCK in CapEff)` from the text of `/proc/self/status`.
fn parse_proc_status(text: &str) -> (u64, bool) {
    const CAP_IPC_LOCK: u32 = 14;
    let mut locked = 0u64;
    let mut cap = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "VmLck" | "VmPin" => {
                let kib = value
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
                locked = locked.saturating_add(kib.saturating_mul(1024));
            }
            "CapEff" => {
                cap = u64::from_str_radix(value, 16)
                    .map(|bits| bits & (1 << CAP_IPC_LOCK) != 0)
                    .unwrap_or(false);
            }
            _ => {}
        }
    }
    (locked, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text =
            "Name:\tx\nVmLck:\t     128 kB\nVmPin:\t       4 kB\nCapEff:\t0000000000004000\n";
        assert_eq!(parse_proc_status(text), (132 * 1024, true));
        let text = "VmLck:\t0 kB\nCapEff:\t0000000000000000\n";
        assert_eq!(parse_proc_status(text), (0, false));
        assert_eq!(parse_proc_status("garbage"), (0, false));
    }

    #[test]
    fn check_states_both_numbers_and_the_fix() {
        let b = MemlockBudget {
            limit: Some(8 << 20),
            already_locked: 1 << 20,
            cap_ipc_lock: false,
        };
        assert!(b.check("x", 7 << 20).is_ok());
        let e = b.check("guest RAM 0x0-0x3fffffff", 1 << 30).unwrap_err();
        let msg = e.to_string();
        for want in [
            "guest RAM 0x0-0x3fffffff",
            "1073741824 bytes (1 GiB)",
            "1048576 bytes (1 MiB)",
            "8388608 bytes (8 MiB)",
            "ulimit -l 1049600",
            "LimitMEMLOCK",
            "CAP_IPC_LOCK",
        ] {
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn unlimited_or_capable_always_passes() {
        let mut b = MemlockBudget {
            limit: None,
            already_locked: u64::MAX,
            cap_ipc_lock: false,
        };
        assert!(b.check("x", u64::MAX).is_ok());
        b.limit = Some(0);
        b.cap_ipc_lock = true;
        assert!(b.check("x", u64::MAX).is_ok());
    }

    #[test]
    fn current_budget_matches_the_shell() {
        let b = MemlockBudget::current().unwrap();
        assert!(b.already_locked >= pinned_by_this_crate());
        // A child shell inherits our limits; `ulimit -l` prints KiB or "unlimited".
        let out = std::process::Command::new("sh")
            .args(["-c", "ulimit -l"])
            .output()
            .expect("sh runs");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match b.limit {
            None => assert_eq!(text, "unlimited"),
            Some(bytes) => assert_eq!(text.parse::<u64>().unwrap(), bytes / 1024),
        }
    }
}
