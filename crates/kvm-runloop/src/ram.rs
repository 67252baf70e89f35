//! What backs guest RAM (prefaulting it is in `prefault.rs`).
//!
//! Passthrough pins all of guest RAM for the IOMMU when the first device attaches, and most of
//! that time is the kernel zeroing pages on first touch (Linux 4d83de6da265, "vfio/type1: Batch
//! page pinning", measured about 0.25 s per GB with 4 KiB pages). The levers are those of QEMU
//! (`-object memory-backend-file,mem-path=/dev/hugepages`, `prealloc-threads`) and
//! cloud-hypervisor (`--memory hugepages=on,prefault=on`):
//!
//! - **huge pages**: transparent ones (`madvise(MADV_HUGEPAGE)`, falls back to 4 KiB pages
//!   when the kernel has no 2 MiB page at hand) or hugetlbfs ones (a `memfd` with
//!   `MFD_HUGETLB`, reserved at `mmap`, so a shortage is an error at start, never a `SIGBUS`
//!   later). Fewer, larger faults, and KVM and the IOMMU map 2 MiB or 1 GiB at a time.
//! - **prefaulting in parallel**: `MADV_POPULATE_WRITE` (Linux 5.14) over one share of RAM per
//!   thread, so the zeroing is spread over the host's cores before the single-threaded pin,
//!   either before the VM is returned or alongside the VMM's device set-up
//!   ([`PrefaultJob`](crate::PrefaultJob)).

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion,
};

/// Where the kernel lists its huge page pools, one directory per size.
pub const HUGEPAGES_SYSFS: &str = "/sys/kernel/mm/hugepages";

/// A hugetlbfs page size (x86-64: PMD and PUD level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HugePageSize {
    /// 2 MiB pages.
    Size2MiB,
    /// 1 GiB pages (the CPU needs `pdpe1gb`).
    Size1GiB,
}

impl HugePageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            HugePageSize::Size2MiB => 2 << 20,
            HugePageSize::Size1GiB => 1 << 30,
        }
    }

    /// The pool's directory name under [`HUGEPAGES_SYSFS`] (`hugepages-2048kB`).
    pub fn sysfs_dir(self) -> String {
        format!("hugepages-{}kB", self.bytes() >> 10)
    }

    /// `memfd_create` flags for this size: `MFD_HUGETLB` and log2 of the size in
    /// `MFD_HUGE_SHIFT` (include/uapi/linux/memfd.h).
    fn memfd_flags(self) -> libc::c_uint {
        libc::MFD_HUGETLB
            | match self {
                HugePageSize::Size2MiB => libc::MFD_HUGE_2MB,
                HugePageSize::Size1GiB => libc::MFD_HUGE_1GB,
            }
    }
}

impl fmt::Display for HugePageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HugePageSize::Size2MiB => "2 MiB",
            HugePageSize::Size1GiB => "1 GiB",
        })
    }
}

impl FromStr for HugePageSize {
    type Err = RamBackingError;

    /// `2M`, `2MiB`, `2048k`, `1G`, `1GiB` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, RamBackingError> {
        match s.to_ascii_lowercase().as_str() {
            "2m" | "2mb" | "2mib" | "2048k" | "2048kb" | "2048kib" => Ok(HugePageSize::Size2MiB),
            "1g" | "1gb" | "1gib" | "1024m" | "1024mb" | "1024mib" => Ok(HugePageSize::Size1GiB),
            _ => Err(RamBackingError::BadPageSize(s.to_string())),
        }
    }
}

/// What backs guest RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RamBacking {
    /// Private anonymous memory, 4 KiB pages unless the host's THP mode is `always`.
    #[default]
    Anonymous,
    /// Private anonymous memory with `madvise(MADV_HUGEPAGE)`: 2 MiB pages where the kernel
    /// has them (THP mode `always` or `madvise`), 4 KiB pages otherwise. Never fails for lack
    /// of huge pages.
    Thp,
    /// A hugetlbfs `memfd` (`MFD_HUGETLB`), shared: every page reserved from the host's pool
    /// of `page_size` pages when the VM is created.
    Hugetlb {
        /// The pool to take pages from.
        page_size: HugePageSize,
    },
}

impl fmt::Display for RamBacking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RamBacking::Anonymous => f.write_str("anon"),
            RamBacking::Thp => f.write_str("thp"),
            RamBacking::Hugetlb {
                page_size: HugePageSize::Size2MiB,
            } => f.write_str("hugetlb:2M"),
            RamBacking::Hugetlb {
                page_size: HugePageSize::Size1GiB,
            } => f.write_str("hugetlb:1G"),
        }
    }
}

impl FromStr for RamBacking {
    type Err = RamBackingError;

    /// `anon`, `thp`, `hugetlb` (2 MiB pages), `hugetlb:2M`, `hugetlb:1G`.
    fn from_str(s: &str) -> Result<Self, RamBackingError> {
        match s.split_once(':') {
            None if s == "anon" => Ok(RamBacking::Anonymous),
            None if s == "thp" => Ok(RamBacking::Thp),
            None if s == "hugetlb" => Ok(RamBacking::Hugetlb {
                page_size: HugePageSize::Size2MiB,
            }),
            Some(("hugetlb", size)) => Ok(RamBacking::Hugetlb {
                page_size: size.parse()?,
            }),
            _ => Err(RamBackingError::BadBacking(s.to_string())),
        }
    }
}

/// How guest RAM is created: [`VmConfig::ram_backing`](crate::VmConfig::ram_backing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRamBacking {
    /// What backs it.
    pub backing: RamBacking,
    /// Threads that fault every page in before the VM is returned (0: none; the guest or a
    /// DMA pin faults pages in on first use, one at a time). To fault pages in while the VMM
    /// goes on with its start-up instead, leave this at 0 and start a
    /// [`PrefaultJob`](crate::PrefaultJob) on [`Vm::memory`](crate::Vm::memory).
    pub prefault_threads: usize,
}

/// Why guest RAM could not be backed as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RamBackingError {
    /// A page size that is not 2M or 1G.
    #[error("huge page size \"{0}\" is not one of 2M, 1G (the x86-64 huge page sizes)")]
    BadPageSize(String),
    /// A backing name that is not known.
    #[error("memory backing \"{0}\" is not one of anon, thp, hugetlb, hugetlb:2M, hugetlb:1G")]
    BadBacking(String),
    /// The host has no pool of this size.
    #[error(
        "this host has no {page} huge pages ({path} does not exist: the CPU or the kernel \
         lacks them); back guest RAM with 2 MiB huge pages or transparent huge pages instead"
    )]
    NoSuchPool {
        /// The size asked for.
        page: HugePageSize,
        /// The pool's sysfs directory.
        path: String,
    },
    /// A RAM range is not a whole number of huge pages.
    #[error(
        "guest RAM at {base:#x} ({size:#x} bytes) is not a whole number of {page} huge pages; \
         give a RAM size that is a multiple of {page}"
    )]
    NotWholePages {
        /// Guest physical base.
        base: u64,
        /// Size.
        size: u64,
        /// The page size.
        page: HugePageSize,
    },
    /// The pool has too few free pages.
    #[error(
        "not enough free {page} huge pages for guest RAM: {needed} needed, {available} free; \
         reserve them as root with `echo {suggest} > {path}/nr_hugepages` (or use \
         transparent huge pages, which need no reservation)"
    )]
    NotEnoughPages {
        /// The page size.
        page: HugePageSize,
        /// Pages the RAM needs.
        needed: u64,
        /// Pages free and not reserved by others.
        available: u64,
        /// A pool size that would do (the current one plus the shortfall).
        suggest: u64,
        /// The pool's sysfs directory.
        path: String,
    },
    /// A system call failed.
    #[error("{op} for guest RAM at {base:#x} ({size:#x} bytes, backing {backing}) failed{hint}")]
    Os {
        /// The call (`memfd_create`, `mmap`, `madvise(MADV_POPULATE_WRITE)`...).
        op: &'static str,
        /// Guest physical base of the range.
        base: u64,
        /// Its size.
        size: u64,
        /// The backing.
        backing: RamBacking,
        /// What to do, when the errno says.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The ranges overlap or are not sorted.
    #[error("guest RAM ranges {ranges} overlap or are not in address order")]
    Layout {
        /// The ranges, formatted.
        ranges: String,
    },
}

/// A huge page pool's counters (`/sys/kernel/mm/hugepages/hugepages-*/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugePagePool {
    /// `nr_hugepages`: the pool's size.
    pub total: u64,
    /// `free_hugepages`: pages not faulted in by anyone (reserved ones included).
    pub free: u64,
    /// `resv_hugepages`: free pages another mapping has reserved.
    pub reserved: u64,
}

impl HugePagePool {
    /// Reads the pool of `page` under `sysfs` (normally [`HUGEPAGES_SYSFS`]).
    pub fn read(sysfs: &Path, page: HugePageSize) -> Result<Self, RamBackingError> {
        let dir = sysfs.join(page.sysfs_dir());
        let missing = || RamBackingError::NoSuchPool {
            page,
            path: dir.display().to_string(),
        };
        let counter = |name: &str| -> Result<u64, RamBackingError> {
            fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(missing)
        };
        Ok(HugePagePool {
            total: counter("nr_hugepages")?,
            free: counter("free_hugepages")?,
            reserved: counter("resv_hugepages")?,
        })
    }

    /// Pages a new mapping can still reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }

    /// `Ok` when `bytes` of RAM fit in the pool's available pages; else what to reserve.
    pub fn check(
        &self,
        sysfs: &Path,
        page: HugePageSize,
        bytes: u64,
    ) -> Result<(), RamBackingError> {
        let needed = bytes.div_ceil(page.bytes());
        if needed <= self.available() {
            return Ok(());
        }
        Err(RamBackingError::NotEnoughPages {
            page,
            needed,
            available: self.available(),
            suggest: self.total + (needed - self.available()),
            path: sysfs.join(page.sysfs_dir()).display().to_string(),
        })
    }
}

/// Creates guest RAM for `ranges` (guest physical base, size) as `backing` says, prefaulted
/// when it asks.
pub(crate) fn create_guest_ram(
    ranges: &[(u64, usize)],
    backing: &GuestRamBacking,
) -> Result<GuestMemoryMmap, crate::Error> {
    let memory = match backing.backing {
        RamBacking::Anonymous | RamBacking::Thp => {
            let list: Vec<(GuestAddress, usize)> = ranges
                .iter()
                .map(|(base, size)| (GuestAddress(*base), *size))
                .collect();
            let memory =
                GuestMemoryMmap::from_ranges(&list).map_err(|source| crate::Error::GuestRam {
                    ranges: format!("{ranges:x?}"),
                    source,
                })?;
            if backing.backing == RamBacking::Thp {
                for region in memory.iter() {
                    advise_huge(region, backing.backing)?;
                }
            }
            memory
        }
        RamBacking::Hugetlb { page_size } => {
            hugetlb_ram(ranges, page_size, Path::new(HUGEPAGES_SYSFS))?
        }
    };
    if backing.prefault_threads > 0 {
        crate::prefault::prefault(&memory, backing.backing, backing.prefault_threads)?;
    }
    Ok(memory)
}

pub(crate) fn os_error(
    op: &'static str,
    base: u64,
    size: u64,
    backing: RamBacking,
    source: io::Error,
) -> RamBackingError {
    let hint = match (backing, source.raw_os_error()) {
        (RamBacking::Hugetlb { .. }, Some(libc::ENOMEM)) => {
            "; the huge page pool ran out (another process took pages): reserve more in \
             /sys/kernel/mm/hugepages"
        }
        (RamBacking::Hugetlb { .. }, Some(libc::EINVAL | libc::ENODEV)) => {
            "; this kernel has no hugetlbfs of that size (CONFIG_HUGETLBFS, hugepagesz=)"
        }
        _ => "",
    };
    RamBackingError::Os {
        op,
        base,
        size,
        backing,
        hint,
        source,
    }
}

/// Asks for transparent huge pages over a region; a THP mode of `never`, or a kernel built
/// without THP, leaves 4 KiB pages (logged, not an error: the guest still runs).
fn advise_huge(region: &GuestRegionMmap, backing: RamBacking) -> Result<(), RamBackingError> {
    let mmap = region.get_mmap();
    // SAFETY: madvise on a mapping this process owns (the region's), whole; MADV_HUGEPAGE
    // changes how future faults are served, never the contents.
    let r = unsafe { libc::madvise(mmap.as_ptr().cast(), mmap.size(), libc::MADV_HUGEPAGE) };
    let advised = if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    if !thp_advised(advised).map_err(|source| {
        os_error(
            "madvise(MADV_HUGEPAGE)",
            region.start_addr().0,
            mmap.size() as u64,
            backing,
            source,
        )
    })? {
        log::warn!(
            "guest RAM backing thp: this kernel has no transparent huge pages \
             (CONFIG_TRANSPARENT_HUGEPAGE), so RAM gets 4 KiB pages"
        );
        return Ok(());
    }
    if let Ok(mode) = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
        if mode.contains("[never]") {
            log::warn!(
                "guest RAM backing thp: transparent huge pages are off on this host \
                 (/sys/kernel/mm/transparent_hugepage/enabled is never), so RAM gets 4 KiB pages"
            );
        }
    }
    Ok(())
}

/// What `madvise(MADV_HUGEPAGE)` said: `true` advised; `false` the kernel has no THP at all
/// (EINVAL: built without CONFIG_TRANSPARENT_HUGEPAGE, as the test bed's own L2 kernel is), so
/// the RAM stays on 4 KiB pages, which the `thp` backing promises never to fail for; any other
/// error is one.
fn thp_advised(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

fn hugetlb_ram(
    ranges: &[(u64, usize)],
    page: HugePageSize,
    sysfs: &Path,
) -> Result<GuestMemoryMmap, RamBackingError> {
    let backing = RamBacking::Hugetlb { page_size: page };
    for &(base, size) in ranges {
        if size as u64 % page.bytes() != 0 || base % page.bytes() != 0 {
            return Err(RamBackingError::NotWholePages {
                base,
                size: size as u64,
                page,
            });
        }
    }
    let total: u64 = ranges.iter().map(|&(_, s)| s as u64).sum();
    HugePagePool::read(sysfs, page)?.check(sysfs, page, total)?;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(base, size) in ranges {
        let err = |op, e| os_error(op, base, size as u64, backing, e);
        // SAFETY: a NUL-terminated name and flags; the result is checked.
        let fd = unsafe {
            libc::memfd_create(
                c"guest-ram".as_ptr(),
                libc::MFD_CLOEXEC | page.memfd_flags(),
            )
        };
        if fd < 0 {
            return Err(err("memfd_create(MFD_HUGETLB)", io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = fs::File::from(fd);
        file.set_len(size as u64).map_err(|e| err("ftruncate", e))?;
        // MAP_SHARED without MAP_NORESERVE: the kernel reserves every huge page now (ENOMEM if
        // the pool is short), so a fault can never find the pool empty and SIGBUS the VMM.
        let mmap = MmapRegion::build(
            Some(FileOffset::new(file, 0)),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(|e| match e {
            vm_memory::mmap::MmapRegionError::Mmap(source) => err("mmap", source),
            other => err("mmap", io::Error::other(other.to_string())),
        })?;
        let region = GuestRegionMmap::new(mmap, GuestAddress(base)).ok_or_else(|| {
            RamBackingError::Layout {
                ranges: format!("{ranges:x?}"),
            }
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| RamBackingError::Layout {
        ranges: format!("{ranges:x?}"),
    })
}

#[cfg(test)]
mod tests {

    /// The test bed's own L2 kernel has no THP: `madvise(MADV_HUGEPAGE)` fails with EINVAL
    /// there, and the `thp` backing (refvmm's default) must still give the guest RAM.
    #[test]
    fn thp_backing_falls_back_when_the_kernel_has_no_thp() {
        assert!(thp_advised(Ok(())).unwrap());
        assert!(!thp_advised(Err(io::Error::from_raw_os_error(libc::EINVAL))).unwrap());
        let e = thp_advised(Err(io::Error::from_raw_os_error(libc::ENOMEM))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOMEM));
    }

    use super::*;

    #[test]
    fn backings_and_page_sizes_parse_and_print() {
        for s in ["anon", "thp", "hugetlb:2M", "hugetlb:1G"] {
            assert_eq!(s.parse::<RamBacking>().unwrap().to_string(), s);
        }
        assert_eq!(
            "hugetlb".parse::<RamBacking>().unwrap(),
            RamBacking::Hugetlb {
                page_size: HugePageSize::Size2MiB
            }
        );
        assert_eq!(
            "1GiB".parse::<HugePageSize>().unwrap(),
            HugePageSize::Size1GiB
        );
    }

    #[test]
    fn a_bad_page_size_or_backing_is_named() {
        let e = "hugetlb:4M".parse::<RamBacking>().unwrap_err().to_string();
        assert!(e.contains("\"4M\" is not one of 2M, 1G"), "{e}");
        let e = "huge".parse::<RamBacking>().unwrap_err().to_string();
        assert!(
            e.contains("\"huge\" is not one of anon, thp, hugetlb"),
            "{e}"
        );
    }

    fn fake_pool(root: &Path, dir: &str, total: u64, free: u64, resv: u64) {
        let d = root.join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("nr_hugepages"), format!("{total}\n")).unwrap();
        fs::write(d.join("free_hugepages"), format!("{free}\n")).unwrap();
        fs::write(d.join("resv_hugepages"), format!("{resv}\n")).unwrap();
    }

    fn temp_root(name: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("kvm-runloop-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn too_few_free_huge_pages_say_what_to_reserve() {
        let root = temp_root("pool-short");
        // 4 pages in the pool, 3 free of which 1 is reserved by another mapping: 2 available.
        fake_pool(&root, "hugepages-2048kB", 4, 3, 1);
        let e = hugetlb_ram(&[(0, 8 << 20)], HugePageSize::Size2MiB, &root)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not enough free 2 MiB huge pages"), "{e}");
        assert!(e.contains("4 needed, 2 free"), "{e}");
        assert!(
            e.contains(&format!(
                "echo 6 > {}/hugepages-2048kB/nr_hugepages",
                root.display()
            )),
            "{e}"
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_missing_pool_and_partial_pages_are_named() {
        let root = temp_root("pool-missing");
        fake_pool(&root, "hugepages-2048kB", 0, 0, 0);
        let e = hugetlb_ram(&[(0, 1 << 30)], HugePageSize::Size1GiB, &root)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no 1 GiB huge pages"), "{e}");
        assert!(e.contains("hugepages-1048576kB does not exist"), "{e}");
        let e = hugetlb_ram(&[(0, 3 << 20)], HugePageSize::Size2MiB, &root)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a whole number of 2 MiB huge pages"), "{e}");
        let _ = fs::remove_dir_all(&root);
    }
}
