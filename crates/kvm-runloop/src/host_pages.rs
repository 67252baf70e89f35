//! Which page size backs a range of this process's memory, as the kernel tells it in
//! `/proc/self/smaps` (Documentation/filesystems/proc.rst): a memory slot over guest RAM or a
//! BAR mmap, for reports. Read when a report is made, never on a vCPU's exit path.
//!
//! What the kernel says and what it does not:
//! - `KernelPageSize` is the VMA's base page: 2 MiB or 1 GiB for hugetlbfs, else 4 KiB.
//! - Transparent huge pages show as `AnonHugePages` (private anonymous), `ShmemPmdMapped`
//!   (memfd, shmem) or `FilePmdMapped` bytes: how much of the range is mapped 2 MiB at a time.
//! - A `VM_PFNMAP` mapping (`pf` in `VmFlags`: a VFIO BAR mmap) reports nothing about the
//!   level its page-table entries are at, huge pfnmaps included: that is "unknown".

use std::fmt;
use std::fs;

/// What backs a range of memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostPages {
    /// The largest `KernelPageSize` of the VMAs over the range, in bytes.
    pub kernel_page_size: u64,
    /// Bytes of the range mapped by transparent huge pages (PMD level).
    pub thp_bytes: u64,
    /// Bytes of the range resident (`Rss`).
    pub resident_bytes: u64,
    /// A VMA over the range is `VM_PFNMAP` (device memory): the page size is not reported.
    pub pfnmap: bool,
}

impl HostPages {
    /// What backs `[addr, addr + len)` of this process; `None` when `/proc/self/smaps` cannot
    /// be read or no mapping covers the range.
    pub fn of(addr: u64, len: u64) -> Option<Self> {
        parse_smaps(&fs::read_to_string("/proc/self/smaps").ok()?, addr, len)
    }
}

impl fmt::Display for HostPages {
    /// `pages=4K`, `pages=2M`, `pages=4K thp=12M`, `pages=unknown(pfnmap)`, and `rss=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pfnmap {
            return f.write_str("pages=unknown(pfnmap)");
        }
        write!(f, "pages={}", size(self.kernel_page_size))?;
        if self.thp_bytes > 0 {
            write!(f, " thp={}", size(self.thp_bytes))?;
        }
        write!(f, " rss={}", size(self.resident_bytes))
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => format!("{}K", b >> 10),
    }
}

/// [`HostPages`] of `[addr, addr + len)` from smaps text.
pub fn parse_smaps(smaps: &str, addr: u64, len: u64) -> Option<HostPages> {
    let end = addr.checked_add(len)?;
    let mut pages = HostPages::default();
    let mut found = false;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                {
                    inside = lo < end && addr < hi;
                    found |= inside;
                    continue;
                }
            }
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = || {
            value
                .trim()
                .strip_suffix("kB")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(0, |v| v * 1024)
        };
        match key {
            "KernelPageSize" => pages.kernel_page_size = pages.kernel_page_size.max(kib()),
            "AnonHugePages" | "ShmemPmdMapped" | "FilePmdMapped" => pages.thp_bytes += kib(),
            "Rss" => pages.resident_bytes += kib(),
            "VmFlags" => pages.pfnmap |= value.split_whitespace().any(|f| f == "pf"),
            _ => {}
        }
    }
    found.then_some(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
KernelPageSize:        4 kB
Rss:               12288 kB
AnonHugePages:     10240 kB
ShmemPmdMapped:        0 kB
VmFlags: rd wr mr mw me ac
7f4000000000-7f4040000000 rw-s 00000000 00:01 1234                       /memfd:sim (deleted)
Size:            1048576 kB
KernelPageSize:        4 kB
Rss:                   0 kB
VmFlags: rd wr sh mr mw me ms pf io dc de dd sd
7f8000000000-7f8000400000 rw-s 00000000 00:0f 99                         /memfd:guest-ram (deleted)
Size:               4096 kB
KernelPageSize:     2048 kB
Rss:                4096 kB
VmFlags: rd wr sh mr mw me ms de ht sd
";

    #[test]
    fn each_kind_of_mapping_says_what_backs_it() {
        let thp = parse_smaps(SMAPS, 0x7f00_0000_0000, 64 << 20).unwrap();
        assert_eq!(thp.to_string(), "pages=4K thp=10M rss=12M");
        let bar = parse_smaps(SMAPS, 0x7f40_0000_0000, 1 << 30).unwrap();
        assert_eq!(bar.to_string(), "pages=unknown(pfnmap)");
        let hugetlb = parse_smaps(SMAPS, 0x7f80_0000_0000, 4 << 20).unwrap();
        assert_eq!(hugetlb.to_string(), "pages=2M rss=4M");
        assert_eq!(parse_smaps(SMAPS, 0x1000, 4096), None);
    }

    #[test]
    fn this_process_has_its_own_stack_mapped() {
        let local = 0u64;
        let at = std::ptr::addr_of!(local) as u64 & !0xfff;
        let pages = HostPages::of(at, 4096).expect("smaps lists the stack");
        assert!(pages.kernel_page_size >= 4096, "{pages:?}");
    }
}
