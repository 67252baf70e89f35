//! A mapper for tests that wraps the software IOMMU and can pretend to be a kernel backend:
//! charge mappings to a memlock budget, report other limits on refresh, fail unmaps.

#![allow(dead_code)]

use std::sync::Mutex;

use iommu_dma::{DmaError, DmaMapper, DmaMapping, HostIommuLimits, MemlockBudget, SoftwareIommu};

#[derive(Debug)]
pub struct TestMapper {
    pub inner: SoftwareIommu,
    /// What `memlock_budget` returns (None: pins nothing, like the software IOMMU).
    pub budget: Mutex<Option<MemlockBudget>>,
    /// What `refresh_limits` reports from now on, if set.
    pub refreshed_limits: Mutex<Option<HostIommuLimits>>,
    /// IOVAs whose unmap fails (like a kernel that says EBUSY).
    pub failing_unmaps: Mutex<Vec<u64>>,
}

impl TestMapper {
    pub fn new(limits: HostIommuLimits) -> Self {
        TestMapper {
            inner: SoftwareIommu::with_limits("test", limits),
            budget: Mutex::new(None),
            refreshed_limits: Mutex::new(None),
            failing_unmaps: Mutex::new(Vec::new()),
        }
    }
}

impl DmaMapper for TestMapper {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn limits(&self) -> HostIommuLimits {
        self.inner.limits()
    }

    fn refresh_limits(&self) -> Result<HostIommuLimits, DmaError> {
        Ok(self
            .refreshed_limits
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| self.inner.limits()))
    }

    fn memlock_budget(&self) -> Result<Option<MemlockBudget>, DmaError> {
        Ok(*self.budget.lock().unwrap())
    }

    unsafe fn map(&self, mapping: DmaMapping) -> Result<(), DmaError> {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.map(mapping) }
    }

    fn unmap(&self, iova: u64, size: u64) -> Result<DmaMapping, DmaError> {
        if self.failing_unmaps.lock().unwrap().contains(&iova) {
            return Err(DmaError::UnmapFailed {
                mapper: self.name().to_string(),
                op: "TEST_UNMAP",
                range: iommu_dma::IovaRange::new(iova, size).unwrap(),
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
        self.inner.unmap(iova, size)
    }

    fn mappings(&self) -> Vec<DmaMapping> {
        self.inner.mappings()
    }
}
