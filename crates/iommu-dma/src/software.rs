//! A software IOMMU: an in-process translation table with a fault log.
//!
//! For tests, and for device models that run inside the VMM and do "DMA" by copying: every
//! access is translated through the same mappings a hardware IOMMU would hold, so a device
//! model sees exactly what a passed-through device would. An access to an unmapped IOVA, or
//! one the mapping's permission forbids, is recorded as a [`DmaFault`] and touches nothing:
//! the whole access is translated and checked before the first byte moves.

use std::sync::{Mutex, RwLock};

use vm_memory::VolatileSlice;

use crate::error::DmaError;
use crate::fault::{DmaFault, FaultLog, FaultReason};
use crate::mapper::{DmaAccess, DmaMapper, DmaMapping, HostIommuLimits};
use crate::table::MappingTable;

/// One contiguous piece of a translated access: `len` bytes at host address `host_addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSegment {
    /// Host virtual address.
    pub host_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// An in-process IOMMU: a translation table with a fault log.
///
/// For tests, and for device models that run inside the VMM and do "DMA" by copying: every
/// access is translated through the same mappings a hardware IOMMU would hold, so a device
/// model sees exactly what a passed-through device would. An access to an unmapped IOVA, or
/// one the mapping's permission forbids, is recorded as a [`DmaFault`] and touches nothing:
/// the whole access is translated and checked before the first byte moves.
///
/// Copies bypass `vm-memory`'s dirty bitmap; a VMM that tracks dirty pages for migration
/// marks pages written by device models itself.
#[derive(Debug)]
pub struct SoftwareIommu {
    name: String,
    limits: HostIommuLimits,
    table: RwLock<MappingTable>,
    faults: Mutex<FaultLog>,
}

impl SoftwareIommu {
    /// A software IOMMU named `name` (shown in messages as `software IOMMU 'name'`) that
    /// accepts any IOVA, with 4 KiB pages and no mapping limit.
    pub fn new(name: &str) -> Self {
        Self::with_limits(name, HostIommuLimits::unrestricted())
    }

    /// A software IOMMU that enforces `limits`, e.g. [`HostIommuLimits::x86_vtd`] to behave
    /// like a real host with the MSI window reserved.
    pub fn with_limits(name: &str, limits: HostIommuLimits) -> Self {
        SoftwareIommu {
            name: format!("software IOMMU '{name}'"),
            limits,
            table: RwLock::new(MappingTable::default()),
            faults: Mutex::new(FaultLog::default()),
        }
    }

    /// Translate a device access of `len` bytes at `iova` into host segments, checking the
    /// permission of every mapping it crosses. A refused access is recorded as a fault.
    ///
    /// The host addresses are only valid while the mappings stay in place; use
    /// [`read`](Self::read) and [`write`](Self::write) to copy data safely.
    pub fn translate(
        &self,
        iova: u64,
        len: u64,
        access: DmaAccess,
    ) -> Result<Vec<HostSegment>, DmaFault> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        self.translate_locked(&table, iova, len, access)
    }

    /// Device reads `buf.len()` bytes of memory at `iova` (DMA to the device).
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        // The read lock is held while copying, so no unmap can take the memory away.
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let segments = self.translate_locked(&table, iova, buf.len() as u64, DmaAccess::Read)?;
        let mut done = 0usize;
        for seg in segments {
            let len = seg.len as usize;
            // SAFETY: the segment lies inside a mapping that is still in place (we hold the
            // table lock), and `map`'s contract keeps its host range mapped and usable through
            // raw pointers until it is unmapped. The copy is volatile, as for guest memory.
            let slice = unsafe { VolatileSlice::new(seg.host_addr as *mut u8, len) };
            slice.copy_to(&mut buf[done..done + len]);
            done += len;
        }
        Ok(())
    }

    /// Device writes `data` to memory at `iova` (DMA from the device).
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let segments = self.translate_locked(&table, iova, data.len() as u64, DmaAccess::Write)?;
        let mut done = 0usize;
        for seg in segments {
            let len = seg.len as usize;
            // SAFETY: as in `read`: the mapping is in place while we hold the lock, and its
            // host range may be written through raw pointers per `map`'s contract.
            let slice = unsafe { VolatileSlice::new(seg.host_addr as *mut u8, len) };
            slice.copy_from(&data[done..done + len]);
            done += len;
        }
        Ok(())
    }

    /// The most recent faults, oldest first (at most 256 are kept).
    pub fn faults(&self) -> Vec<DmaFault> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recent()
    }

    /// How many faults happened since this IOMMU was made, including ones no longer kept.
    pub fn fault_count(&self) -> u64 {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total()
    }

    /// Return and forget the kept faults (the count stays).
    pub fn take_faults(&self) -> Vec<DmaFault> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn translate_locked(
        &self,
        table: &MappingTable,
        iova: u64,
        len: u64,
        access: DmaAccess,
    ) -> Result<Vec<HostSegment>, DmaFault> {
        let fault = |fault_iova, reason| {
            let f = DmaFault {
                iova,
                len,
                access,
                fault_iova,
                reason,
            };
            self.faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(f);
            f
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        if iova.checked_add(len - 1).is_none() {
            return Err(fault(iova, FaultReason::AddressOverflow));
        }
        let mut segments = Vec::new();
        let mut at = iova;
        let mut left = len;
        while left > 0 {
            let Some(m) = table.lookup(at) else {
                return Err(fault(at, FaultReason::NotMapped));
            };
            if !m.perm.allows(access) {
                return Err(fault(at, FaultReason::PermissionDenied { perm: m.perm }));
            }
            let offset = at - m.iova;
            let n = left.min(m.size - offset);
            segments.push(HostSegment {
                host_addr: m.host_addr + offset,
                len: n,
            });
            left -= n;
            // Cannot overflow: the access was checked to end at or before u64::MAX.
            at = at.wrapping_add(n);
        }
        Ok(segments)
    }
}

impl DmaMapper for SoftwareIommu {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> HostIommuLimits {
        self.limits.clone()
    }

    unsafe fn map(&self, mapping: DmaMapping) -> Result<(), DmaError> {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        table.check_map(&self.name, &self.limits, &mapping)?;
        table.insert(mapping);
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64) -> Result<DmaMapping, DmaError> {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let m = table.check_unmap(&self.name, iova, size)?;
        table.remove(m.iova);
        Ok(m)
    }

    fn mappings(&self) -> Vec<DmaMapping> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.iter().copied().collect()
    }
}
