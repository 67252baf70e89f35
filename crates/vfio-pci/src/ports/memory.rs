//! [`BarMappingPort`]: how BAR pages the host lets us mmap reach the guest with no exit (a KVM
//! memory slot, a hypervisor's own memory region). The device mmaps each such part of a BAR
//! once, at attach, as a [`HostMapping`], and asks the port to place it at the guest's BAR
//! address, move it when the guest moves the BAR, and remove it when decode goes off.

use std::io;
use std::sync::Arc;

use vm_memory::{GuestAddress, MmapRegion};

use super::BarRange;

/// Device memory mapped into this process (`MAP_SHARED` of the VFIO device fd at a BAR
/// region's offset). The pages stay mapped while any `Arc` of it lives: a port keeps its clone
/// until the guest can no longer reach them, so a VMM never has device pages unmapped under a
/// live memory slot.
pub struct HostMapping {
    region: MmapRegion,
    /// The region was placed by hand (`MAP_FIXED`, for huge page alignment) and built "raw":
    /// it does not unmap itself, this does on drop.
    unmap_on_drop: bool,
    /// The alignment asked of its address (4096 when the kernel placed it).
    alignment: u64,
}

impl HostMapping {
    /// A mapping that unmaps itself (vm-memory's own `MmapRegion::build`).
    pub(crate) fn new(region: MmapRegion) -> Self {
        Self {
            region,
            unmap_on_drop: false,
            alignment: 4096,
        }
    }

    /// A mapping made at an address aligned to `alignment`, owned by this value: its pages are
    /// unmapped when it is dropped.
    ///
    /// # Safety
    /// `region` describes a whole live mapping that nothing else unmaps.
    pub(crate) unsafe fn owning_raw(region: MmapRegion, alignment: u64) -> Self {
        Self {
            region,
            unmap_on_drop: true,
            alignment,
        }
    }

    /// The alignment its host address was placed at: 2 MiB or 1 GiB for segments that large
    /// (so huge pages can back them), else the page size.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The host address of the first byte (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Its length in bytes (whole host pages).
    pub fn len(&self) -> u64 {
        self.region.size() as u64
    }

    /// Always `false`: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.region.size() == 0
    }

    /// The mapping, for reads and writes through vm-memory's `VolatileMemory`.
    pub fn region(&self) -> &MmapRegion {
        &self.region
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        if self.unmap_on_drop {
            // SAFETY: the whole mapping this value owns (`owning_raw`'s contract); every
            // `Arc` of it is gone, so no slot or reader reaches these pages any more.
            unsafe { libc::munmap(self.region.as_ptr().cast(), self.region.size()) };
        }
    }
}

impl std::fmt::Debug for HostMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMapping")
            .field("host_addr", &self.as_ptr())
            .field("len", &self.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

/// Places device pages in the guest's physical address space. Called from vCPU threads (a
/// guest config write moves a BAR), with `&self`.
///
/// A placement the VMM cannot honour (over guest RAM, over another device, past the address
/// space) returns an error saying why; the device then removes everything it placed for that
/// BAR and leaves it unmapped until the guest moves it.
pub trait BarMappingPort: Send + Sync {
    /// Makes `mapping` (all of it) appear at `at`. Keep the `Arc` until [`unmap`](Self::unmap)
    /// succeeded: the pages must stay mapped while the guest can reach them.
    fn map(&self, range: &BarRange, at: GuestAddress, mapping: &Arc<HostMapping>)
    -> io::Result<()>;

    /// Moves the mapping placed at `from` to `to` (atomically for the guest where the
    /// hypervisor can, as `KVM_MR_MOVE` does).
    fn move_mapping(
        &self,
        range: &BarRange,
        from: GuestAddress,
        to: GuestAddress,
    ) -> io::Result<()>;

    /// Removes the mapping placed at `at`; the guest no longer reaches it when this returns.
    fn unmap(&self, range: &BarRange, at: GuestAddress) -> io::Result<()>;
}
