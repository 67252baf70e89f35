//! What `refvmm explain BDF` reads from a host device, through sysfs only and never writing:
//! `config` (all of it as root, the first 64 bytes otherwise), `resource` (BAR addresses, sizes
//! and flags), and single registers of a memory BAR through a read-only mmap of `resourceN`.

use std::fs::File;
use std::path::{Path, PathBuf};

use pci_config::BarKind;
use trap_map::{DeviceLayout, HostBar, MsixInfo};
use vfio_pci::host::{HostPaths, PciAddress};

use super::{BarFacts, ExplainError};

/// Linux `include/linux/ioport.h` resource flags, as sysfs `resource` prints them.
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// A host device's sysfs directory.
pub struct LiveDevice {
    dir: PathBuf,
}

impl LiveDevice {
    /// The device's directory under `paths`; fails when it does not exist.
    pub fn open(paths: &HostPaths, address: PciAddress) -> Result<Self, ExplainError> {
        let dir = paths.pci_device(address);
        if !dir.exists() {
            return Err(ExplainError::NoDevice { dir });
        }
        Ok(LiveDevice { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Configuration space as far as sysfs lets this user read it.
    pub fn config(&self) -> Result<Vec<u8>, ExplainError> {
        let path = self.dir.join("config");
        std::fs::read(&path).map_err(|source| ExplainError::Read { path, source })
    }

    /// BARs from `resource`: one line per resource, `start end flags` in hex; the first six
    /// are the BARs, unused ones all zero.
    pub fn bars(&self) -> Result<Vec<BarFacts>, ExplainError> {
        let path = self.dir.join("resource");
        let text = std::fs::read_to_string(&path).map_err(|source| ExplainError::Read {
            path: path.clone(),
            source,
        })?;
        let mut bars = Vec::new();
        for (index, line) in text.lines().take(6).enumerate() {
            let fields: Vec<u64> = line
                .split_whitespace()
                .filter_map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .collect();
            let &[start, end, flags] = fields.as_slice() else {
                return Err(ExplainError::Resource {
                    path,
                    line: line.to_string(),
                });
            };
            if flags & (IORESOURCE_IO | IORESOURCE_MEM) == 0 || end <= start {
                continue;
            }
            let kind = if flags & IORESOURCE_IO != 0 {
                BarKind::Io
            } else if flags & IORESOURCE_MEM_64 != 0 {
                BarKind::Memory64
            } else {
                BarKind::Memory32
            };
            bars.push(BarFacts {
                index: index as u8,
                kind,
                prefetchable: flags & IORESOURCE_PREFETCH != 0,
                host_address: Some(start),
                size: end - start + 1,
            });
        }
        Ok(bars)
    }

    /// Reads `width` (4 or 8) bytes at `offset` of memory BAR `bar` through a read-only shared
    /// mapping of `resource{bar}`. sysfs `resourceN` files of memory BARs support mmap only,
    /// and only for root; the caller checks memory decode is on first (a read with decode off
    /// is an Unsupported Request, which some platforms turn into a machine check).
    pub fn read_bar(&self, bar: u8, offset: u64, width: u8) -> Result<u64, String> {
        let path = self.dir.join(format!("resource{bar}"));
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if offset.checked_add(width as u64).is_none_or(|end| end > len)
            || offset % width as u64 != 0
        {
            return Err(format!(
                "{}: offset {offset:#x} is not inside the {len:#x}-byte file",
                path.display()
            ));
        }
        let page = 4096u64;
        let map_start = offset & !(page - 1);
        let map_len = (offset + width as u64 - map_start)
            .next_multiple_of(page)
            .min(len - map_start);
        let map = ReadOnlyMap::new(&file, map_start, map_len as usize)
            .map_err(|e| format!("{}: mmap: {e}", path.display()))?;
        Ok(map.read((offset - map_start) as usize, width))
    }
}

/// A read-only, shared mapping of part of a file, unmapped on drop.
struct ReadOnlyMap {
    addr: *mut libc::c_void,
    len: usize,
}

impl ReadOnlyMap {
    fn new(file: &File, offset: u64, len: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: a new mapping chosen by the kernel (null hint), PROT_READ only, of a file we
        // hold open; the result is checked for MAP_FAILED before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ReadOnlyMap { addr, len })
    }

    /// One aligned 4- or 8-byte read; device registers want one access of the register's
    /// width, hence a volatile read rather than a byte copy.
    fn read(&self, at: usize, width: u8) -> u64 {
        assert!(at + width as usize <= self.len && at % width as usize == 0);
        // SAFETY: `at..at+width` lies inside the mapping (asserted above), the address is
        // aligned to the width, and the mapping lives until `self` is dropped.
        unsafe {
            let p = (self.addr as *const u8).add(at);
            if width == 8 {
                std::ptr::read_volatile(p as *const u64)
            } else {
                std::ptr::read_volatile(p as *const u32) as u64
            }
        }
    }
}

impl Drop for ReadOnlyMap {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

/// The planner's input from live facts: sizes from `resource`, MSI-X from config space.
pub fn layout(
    bars: &[BarFacts],
    msix: Option<&pci_config::capability::MsixCapability>,
) -> DeviceLayout {
    DeviceLayout {
        bars: bars
            .iter()
            .map(|b| HostBar::new(b.index, b.size, b.kind).prefetchable(b.prefetchable))
            .collect(),
        msix: msix.map(MsixInfo::from),
    }
}
