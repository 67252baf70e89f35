//! The mmap of a mapped BAR segment, placed so that huge pages can back it.
//!
//! Since Linux 6.12 (0fd06844de5d, "vfio/pci: huge pfnmap"), vfio-pci fills a BAR mmap with
//! PMD (2 MiB) or PUD (1 GiB) page-table entries instead of 4 KiB ones when the virtual address
//! and the BAR's physical address agree modulo that size: mapping a multi-GiB GPU BAR drops from
//! seconds to under a millisecond, and KVM, which maps guest pages at the largest size where the
//! guest address and the host address agree too, then maps the BAR with huge pages as well.
//! The kernel's own placement only guarantees 4 KiB alignment, so (as QEMU's `vfio_region_mmap`
//! does since 9.2) the segment is placed by hand: reserve `len + align` bytes of address space
//! with an inaccessible anonymous mapping, `MAP_FIXED` the region over the right part of it,
//! and return the rest of the reservation to the kernel.
//!
//! A BAR's physical base is aligned to its size (PCI Local Bus 3.0 §6.2.5.1), and so is its
//! guest address (`pci-bus`'s allocator, and every firmware): a segment at offset `o` in the
//! BAR is at `o` modulo the alignment on both sides, so its mmap is too.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::MmapRegion;

/// The page sizes x86-64 page tables (and so the kernel's huge pfnmap and KVM) can use above
/// 4 KiB, largest first.
const HUGE_PAGE_SIZES: [u64; 2] = [1 << 30, 2 << 20];

/// The alignment that lets huge pages back a segment of `len` bytes: the largest huge page
/// size the segment can hold, or `None` (4 KiB pages only, the kernel's placement will do).
pub(crate) fn huge_alignment(len: u64) -> Option<u64> {
    HUGE_PAGE_SIZES.into_iter().find(|&size| len >= size)
}

/// A `MAP_SHARED` read-write mmap of `len` bytes of `fd` at `file_offset`, whose address is
/// `phase` modulo `align` (a power of two of at least 4 KiB).
///
/// The returned region does not unmap itself: the caller owns `[as_ptr(), as_ptr() + len)` and
/// must `munmap` it once (as [`HostMapping`](crate::ports::HostMapping) does on drop).
pub(crate) fn mmap_aligned(
    fd: BorrowedFd<'_>,
    file_offset: u64,
    len: usize,
    align: u64,
    phase: u64,
) -> io::Result<MmapRegion> {
    debug_assert!(align.is_power_of_two() && phase < align);
    let align = usize::try_from(align).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let phase = (phase % align as u64) as usize;
    let reserve_len = len
        .checked_add(align)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    let offset = libc::off_t::try_from(file_offset)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing: it overlaps
    // nothing of ours. PROT_NONE and MAP_NORESERVE: it only holds address space.
    let reserve = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve_len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserve == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = reserve as usize;
    // The first address at or after `start` that is `phase` modulo `align`: within `align`
    // bytes of `start`, so `[at, at + len)` lies inside the reservation.
    let at = start + (phase + align - start % align) % align;
    // SAFETY: `[at, at + len)` lies inside the reservation made above, which nothing else
    // uses; MAP_FIXED replaces exactly those reserved pages with the region.
    let mapped = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            offset,
        )
    };
    let result = if mapped == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // Give back the reserved pages on either side (all of it if the MAP_FIXED failed, which
    // leaves the reservation in place).
    let (head, tail) = match result {
        Ok(()) => (
            (start, at - start),
            (at + len, start + reserve_len - (at + len)),
        ),
        Err(_) => ((start, reserve_len), (0, 0)),
    };
    for (addr, n) in [head, tail] {
        if n > 0 {
            // SAFETY: `[addr, addr + n)` is part of the reservation above and holds nothing
            // but its inaccessible pages (the region is mapped outside it).
            unsafe { libc::munmap(addr as *mut libc::c_void, n) };
        }
    }
    result?;
    // SAFETY: `at` is the start of the `len`-byte MAP_SHARED read-write mapping made above;
    // the caller unmaps it (the region built here does not, being "raw").
    unsafe {
        MmapRegion::build_raw(
            at as *mut u8,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
    }
    .map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn huge_alignment_is_the_largest_page_the_segment_holds() {
        assert_eq!(huge_alignment(4096), None);
        assert_eq!(huge_alignment((2 << 20) - 4096), None);
        assert_eq!(huge_alignment(2 << 20), Some(2 << 20));
        assert_eq!(huge_alignment(256 << 20), Some(2 << 20));
        assert_eq!(huge_alignment(1 << 30), Some(1 << 30));
        assert_eq!(huge_alignment(16 << 30), Some(1 << 30));
    }

    #[test]
    fn the_mapping_has_the_asked_phase_and_the_file_behind_it() {
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.set_len(8 << 20).unwrap();
        for phase in [0, 4096, 1 << 20] {
            let region = mmap_aligned(file.as_fd(), 4096, 4 << 20, 2 << 20, phase).unwrap();
            let addr = region.as_ptr() as u64;
            assert_eq!(addr % (2 << 20), phase, "{addr:#x}");
            // SAFETY: the mapping made above, 4 MiB long; unmapped at the end of the test.
            unsafe {
                region.as_ptr().write_volatile(0x5a);
            }
            let mut byte = [0u8];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, 4096).unwrap();
            assert_eq!(byte, [0x5a], "MAP_SHARED at the file offset");
            // SAFETY: the region's own mapping, unmapped once.
            let r = unsafe { libc::munmap(region.as_ptr().cast(), region.size()) };
            assert_eq!(r, 0);
        }
    }
}
