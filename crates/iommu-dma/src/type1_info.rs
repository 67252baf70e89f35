//! `VFIO_IOMMU_GET_INFO` on a type1 container: the IOMMU page sizes, the valid IOVA ranges
//! (capability `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`, Linux 5.4+) and the number of DMA
//! mappings still available (`VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`, Linux 5.10+).
//!
//! `vfio-ioctls` does not wrap this ioctl, so it is issued here with the `vfio-bindings`
//! structures. The answer is a `struct vfio_iommu_type1_info` followed by a chain of
//! capabilities; the parser is a pure function over those bytes, checked against every
//! offset it follows.

use std::io;
use std::mem::size_of;
use std::os::unix::io::AsRawFd;

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, VFIO_TYPE, vfio_iommu_type1_info,
};

use crate::error::DmaError;
use crate::mapper::HostIommuLimits;
use crate::range::IovaRange;

vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);

/// What `VFIO_IOMMU_GET_INFO` said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Type1Info {
    /// Bitmap of supported IOMMU page sizes, if reported.
    pub(crate) page_sizes: Option<u64>,
    /// Valid IOVA ranges, if the kernel has the capability.
    pub(crate) iova_ranges: Option<Vec<IovaRange>>,
    /// DMA mappings still available in the container, if reported.
    pub(crate) dma_avail: Option<u32>,
}

impl Type1Info {
    /// The limits this answer sets, given `in_use` mappings of ours in the container.
    ///
    /// The page size is the smallest one supported (4 KiB if none is reported); without the
    /// IOVA range capability (before Linux 5.4) every IOVA counts as valid; `DMA_AVAIL` counts
    /// what is left, so the limit is that plus what is in use. Another user of the same
    /// container would make this an overestimate; the kernel still enforces the real one.
    pub(crate) fn to_limits(&self, in_use: u32) -> Result<HostIommuLimits, DmaError> {
        let page_size = self
            .page_sizes
            .filter(|p| *p != 0)
            .map_or(4096, |p| 1u64 << p.trailing_zeros());
        let ranges = self
            .iova_ranges
            .clone()
            .unwrap_or_else(|| vec![IovaRange::FULL]);
        let max = self.dma_avail.map(|a| a.saturating_add(in_use));
        HostIommuLimits::new(ranges, page_size, max)
    }
}

/// Issue `VFIO_IOMMU_GET_INFO` on `fd` (a type1 container with its IOMMU set) and parse it.
pub(crate) fn query<F: AsRawFd>(fd: &F) -> io::Result<Type1Info> {
    let header_len = size_of::<vfio_iommu_type1_info>();
    let mut info = vfio_iommu_type1_info {
        argsz: header_len as u32,
        ..Default::default()
    };
    // SAFETY: `info` is a valid vfio_iommu_type1_info whose argsz tells the kernel how many
    // bytes it may write; the kernel writes at most that many.
    let ret =
        unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(fd, VFIO_IOMMU_GET_INFO(), &mut info) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let needed = info.argsz as usize;
    if info.flags & VFIO_IOMMU_INFO_CAPS == 0 || needed <= header_len {
        let mut bytes = vec![0u8; header_len];
        write_header(&mut bytes, &info);
        return parse(&bytes).map_err(io::Error::other);
    }
    // The capabilities did not fit: ask again with the size the kernel asked for. A u64
    // buffer keeps the structures 8-byte aligned.
    let mut buf = vec![0u64; needed.div_ceil(8)];
    let bytes_len = buf.len() * 8;
    let head = vfio_iommu_type1_info {
        argsz: bytes_len as u32,
        ..Default::default()
    };
    // SAFETY: `buf` is at least header_len bytes and 8-byte aligned, so it can hold the
    // header; writing a Copy struct through the cast pointer is in bounds.
    unsafe { std::ptr::write(buf.as_mut_ptr().cast::<vfio_iommu_type1_info>(), head) };
    // SAFETY: `buf` holds `bytes_len` writable bytes, and argsz says exactly that, so the
    // kernel writes inside it.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_mut_ptr(fd, VFIO_IOMMU_GET_INFO(), buf.as_mut_ptr())
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    parse(&bytes).map_err(io::Error::other)
}

fn write_header(bytes: &mut [u8], info: &vfio_iommu_type1_info) {
    bytes[0..4].copy_from_slice(&info.argsz.to_ne_bytes());
    bytes[4..8].copy_from_slice(&info.flags.to_ne_bytes());
    bytes[8..16].copy_from_slice(&info.iova_pgsizes.to_ne_bytes());
    bytes[16..20].copy_from_slice(&info.cap_offset.to_ne_bytes());
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Why the bytes `VFIO_IOMMU_GET_INFO` returned cannot be read. Reported inside an
/// `io::Error` (the kernel gave them), so the type stays private.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Type1InfoError {
    /// A structure runs past the end of the bytes.
    #[error("VFIO_IOMMU_GET_INFO: {what} at offset {offset:#x} is truncated")]
    Truncated { what: &'static str, offset: usize },
    /// The capability chain has more entries than any kernel writes.
    #[error("VFIO_IOMMU_GET_INFO: capability chain does not end (loop?)")]
    Loop,
    /// A next pointer points back into the fixed header.
    #[error("VFIO_IOMMU_GET_INFO: capability offset {0:#x} points into the info header")]
    IntoHeader(usize),
    /// An IOVA range whose end is below its start.
    #[error("VFIO_IOMMU_GET_INFO: IOVA range {start:#x}-{end:#x} ends before it starts")]
    BackwardsRange { start: u64, end: u64 },
}

/// Parse a `vfio_iommu_type1_info` and its capability chain.
pub(crate) fn parse(b: &[u8]) -> Result<Type1Info, Type1InfoError> {
    const HEADER: usize = size_of::<vfio_iommu_type1_info>();
    const CAP_HEADER: usize = 8;
    // A real chain has two or three entries; anything longer is a loop.
    const MAX_CAPS: usize = 64;
    let truncated = |what: &'static str, offset: usize| Type1InfoError::Truncated { what, offset };
    let flags = u32_at(b, 4).ok_or_else(|| truncated("info header", 0))?;
    let mut info = Type1Info::default();
    if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
        info.page_sizes = Some(u64_at(b, 8).ok_or_else(|| truncated("info header", 0))?);
    }
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(info);
    }
    let mut off = u32_at(b, 16).ok_or_else(|| truncated("info header", 0))? as usize;
    let mut seen = 0;
    while off != 0 {
        seen += 1;
        if seen > MAX_CAPS {
            return Err(Type1InfoError::Loop);
        }
        if off < HEADER {
            return Err(Type1InfoError::IntoHeader(off));
        }
        let id = u16_at(b, off).ok_or_else(|| truncated("capability header", off))?;
        let next = u32_at(b, off + 4).ok_or_else(|| truncated("capability header", off))?;
        match u32::from(id) {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let nr = u32_at(b, off + CAP_HEADER)
                    .ok_or_else(|| truncated("IOVA range capability", off))?;
                let mut ranges = Vec::new();
                for i in 0..nr as usize {
                    let at = off + CAP_HEADER + 8 + i * 16;
                    let start =
                        u64_at(b, at).ok_or_else(|| truncated("IOVA range capability", off))?;
                    let end =
                        u64_at(b, at + 8).ok_or_else(|| truncated("IOVA range capability", off))?;
                    ranges.push(
                        IovaRange::from_inclusive(start, end)
                            .ok_or(Type1InfoError::BackwardsRange { start, end })?,
                    );
                }
                info.iova_ranges = Some(ranges);
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                info.dma_avail = Some(
                    u32_at(b, off + CAP_HEADER)
                        .ok_or_else(|| truncated("DMA-avail capability", off))?,
                );
            }
            // Migration and future capabilities: not needed here.
            _ => {}
        }
        off = next as usize;
    }
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The bytes the nested test bed's kernel returns: 4 KiB|2 MiB|1 GiB pages, IOVA ranges
    /// 0x0-0xfedfffff and 0xfef00000-0x7fffffffff, 65535 mappings available.
    pub(crate) fn testbed_info() -> Vec<u8> {
        let mut b = vec![0u8; 24];
        let flags = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS;
        b[4..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..16].copy_from_slice(&(0x1000u64 | 0x20_0000 | 0x4000_0000).to_ne_bytes());
        b[16..20].copy_from_slice(&24u32.to_ne_bytes());
        // IOVA range cap at 24: header, nr_iovas=2, reserved, 2 ranges => 8+8+32 = 48 bytes.
        let next = 24 + 48;
        b.extend_from_slice(&(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16).to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&(next as u32).to_ne_bytes());
        b.extend_from_slice(&2u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for (s, e) in [(0u64, 0xfedf_ffffu64), (0xfef0_0000, 0x7f_ffff_ffff)] {
            b.extend_from_slice(&s.to_ne_bytes());
            b.extend_from_slice(&e.to_ne_bytes());
        }
        // DMA avail cap, last in chain.
        b.extend_from_slice(&(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as u16).to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&65535u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    #[test]
    fn parses_what_the_testbed_reports() {
        let info = parse(&testbed_info()).unwrap();
        assert_eq!(info.page_sizes, Some(0x4020_1000));
        assert_eq!(
            info.iova_ranges,
            Some(vec![
                IovaRange::from_inclusive(0, 0xfedf_ffff).unwrap(),
                IovaRange::from_inclusive(0xfef0_0000, 0x7f_ffff_ffff).unwrap(),
            ])
        );
        assert_eq!(info.dma_avail, Some(65535));
    }

    #[test]
    fn testbed_answer_gives_the_x86_limits() {
        let info = parse(&testbed_info()).unwrap();
        assert_eq!(info.to_limits(0).unwrap(), HostIommuLimits::x86_vtd());
        // 10 of ours in use: the limit is what is left plus those.
        assert_eq!(info.to_limits(10).unwrap().max_mappings(), Some(65545));
        let old = Type1Info::default();
        let limits = old.to_limits(0).unwrap();
        assert_eq!(limits.valid_ranges(), &[IovaRange::FULL]);
        assert_eq!(limits.page_size(), 4096);
        assert_eq!(limits.max_mappings(), None);
    }

    #[test]
    fn rejects_malformed_chains() {
        let mut looped = testbed_info();
        // Point the DMA-avail cap back at the IOVA range cap.
        looped[72 + 4..72 + 8].copy_from_slice(&24u32.to_ne_bytes());
        assert!(parse(&looped).unwrap_err().to_string().contains("loop"));

        let mut into_header = testbed_info();
        into_header[16..20].copy_from_slice(&8u32.to_ne_bytes());
        assert!(
            parse(&into_header)
                .unwrap_err()
                .to_string()
                .contains("info header")
        );

        let truncated = &testbed_info()[..60];
        assert!(
            parse(truncated)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );

        let mut backwards = testbed_info();
        backwards[40..48].copy_from_slice(&0x10_0000u64.to_ne_bytes());
        backwards[48..56].copy_from_slice(&0x1000u64.to_ne_bytes());
        assert!(
            parse(&backwards)
                .unwrap_err()
                .to_string()
                .contains("ends before")
        );

        assert!(parse(&[0u8; 3]).is_err());
    }

    #[test]
    fn old_kernel_without_caps() {
        let mut b = vec![0u8; 24];
        b[4..8].copy_from_slice(&VFIO_IOMMU_INFO_PGSIZES.to_ne_bytes());
        b[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
        let info = parse(&b).unwrap();
        assert_eq!(info.iova_ranges, None);
        assert_eq!(info.dma_avail, None);
    }

    #[test]
    fn query_on_a_non_vfio_fd_fails_cleanly() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let err = query(&f).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
