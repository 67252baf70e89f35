//! What the two kernel backends (VFIO type1 and iommufd) share: the name used in messages,
//! the last-queried host limits, the mapping table, and the order of a map or unmap.
//!
//! A kernel map is always: check the request against the table and the limits (no state
//! change on error), check the pinning against `RLIMIT_MEMLOCK`, issue the ioctl, record the
//! mapping and the pinned bytes. An unmap is the mirror image. The backends differ only in
//! the ioctl, so they pass it in as a closure and everything else lives here once.

use std::fmt;
use std::io;
use std::sync::{Mutex, MutexGuard, RwLock};

use crate::error::DmaError;
use crate::mapper::{DmaMapping, HostIommuLimits};
use crate::memlock::{self, MemlockBudget};
use crate::table::MappingTable;

/// The bookkeeping of one container or IOAS.
pub(crate) struct KernelMappings {
    name: String,
    limits: RwLock<HostIommuLimits>,
    table: Mutex<MappingTable>,
}

impl fmt::Debug for KernelMappings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelMappings")
            .field("name", &self.name)
            .field("limits", &self.limits())
            .field("mappings", &self.len())
            .finish()
    }
}

impl KernelMappings {
    /// No mappings, no limits yet (the caller queries them right away).
    pub(crate) fn new(name: String) -> Self {
        KernelMappings {
            name,
            limits: RwLock::new(HostIommuLimits::unrestricted()),
            table: Mutex::new(MappingTable::default()),
        }
    }

    /// The container or IOAS, for messages.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The limits as last stored by [`set_limits`](Self::set_limits).
    pub(crate) fn limits(&self) -> HostIommuLimits {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Store freshly queried limits.
    pub(crate) fn set_limits(&self, limits: HostIommuLimits) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// Number of mappings in place.
    pub(crate) fn len(&self) -> usize {
        self.table().len()
    }

    /// Every mapping, sorted by IOVA.
    pub(crate) fn mappings(&self) -> Vec<DmaMapping> {
        self.table().iter().copied().collect()
    }

    /// A [`DmaError::Setup`] for this container or IOAS.
    pub(crate) fn setup_error(&self, op: &'static str, source: io::Error, hint: &str) -> DmaError {
        DmaError::Setup {
            mapper: self.name.clone(),
            op,
            source,
            hint: hint.to_string(),
        }
    }

    /// This process's locked-memory budget: kernel backends pin every mapped page.
    pub(crate) fn memlock_budget(&self) -> Result<MemlockBudget, DmaError> {
        MemlockBudget::current().map_err(|source| {
            self.setup_error(
                "reading RLIMIT_MEMLOCK and /proc/self/status",
                source,
                "is /proc mounted?",
            )
        })
    }

    /// Check `mapping`, check the pinning against the budget, then run `ioctl` (named `op` in
    /// errors) and record the mapping. The table stays locked throughout, so two maps cannot
    /// both pass the overlap check.
    pub(crate) fn map(
        &self,
        mapping: DmaMapping,
        op: &'static str,
        ioctl: impl FnOnce(&DmaMapping) -> io::Result<()>,
    ) -> Result<(), DmaError> {
        let limits = self.limits();
        let mut table = self.table();
        let range = table.check_map(&self.name, &limits, &mapping)?;
        self.memlock_budget()?
            .check(&format!("IOVA {range}"), mapping.size)
            .map_err(|shortfall| DmaError::Memlock {
                mapper: self.name.clone(),
                shortfall,
            })?;
        ioctl(&mapping).map_err(|source| DmaError::MapFailed {
            mapper: self.name.clone(),
            op,
            range,
            host_addr: mapping.host_addr,
            source,
        })?;
        table.insert(mapping);
        memlock::note_pinned(mapping.size);
        Ok(())
    }

    /// Check that `iova`/`size` is exactly one mapping, run `ioctl` (named `op` in errors) on
    /// it, and forget it.
    pub(crate) fn unmap(
        &self,
        iova: u64,
        size: u64,
        op: &'static str,
        ioctl: impl FnOnce(&DmaMapping) -> io::Result<()>,
    ) -> Result<DmaMapping, DmaError> {
        let mut table = self.table();
        let m = table.check_unmap(&self.name, iova, size)?;
        ioctl(&m).map_err(|source| DmaError::UnmapFailed {
            mapper: self.name.clone(),
            op,
            range: m.iova_range().expect("recorded mappings are valid"),
            source,
        })?;
        table.remove(iova);
        memlock::note_unpinned(size);
        Ok(m)
    }

    fn table(&self) -> MutexGuard<'_, MappingTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}
