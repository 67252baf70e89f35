//! DMA faults: what a device tried that the IOMMU refused, and a bounded log of them.

use std::collections::VecDeque;
use std::fmt;

use crate::mapper::{DmaAccess, DmaPerm};
use crate::range::ByteSize;

/// Why a DMA access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// Nothing is mapped at the faulting IOVA.
    NotMapped,
    /// A mapping is there, but its permission does not allow the access.
    PermissionDenied {
        /// The mapping's permission.
        perm: DmaPerm,
    },
    /// `iova + len` runs past the end of the 64-bit IOVA space.
    AddressOverflow,
}

/// One refused DMA access. Nothing was read or written for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// Start of the access.
    pub iova: u64,
    /// Length of the access in bytes.
    pub len: u64,
    /// Read or write.
    pub access: DmaAccess,
    /// The first IOVA of the access that could not be translated.
    pub fault_iova: u64,
    /// Why.
    pub reason: FaultReason,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DMA {} of {} at IOVA {:#x} faulted at {:#x}: ",
            self.access,
            ByteSize(self.len),
            self.iova,
            self.fault_iova
        )?;
        match self.reason {
            FaultReason::NotMapped => f.write_str("not mapped"),
            FaultReason::PermissionDenied { perm } => {
                write!(f, "mapping is {perm}, {} not allowed", self.access)
            }
            FaultReason::AddressOverflow => f.write_str("access runs past the end of IOVA space"),
        }
    }
}

impl std::error::Error for DmaFault {}

/// The most recent faults (at most [`FaultLog::CAPACITY`]) and a count of all of them, so a
/// guest that makes its device fault in a loop cannot grow the VMM's memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct FaultLog {
    recent: VecDeque<DmaFault>,
    total: u64,
}

impl FaultLog {
    /// How many faults are kept.
    pub(crate) const CAPACITY: usize = 256;

    pub(crate) fn record(&mut self, fault: DmaFault) {
        log::warn!("{fault}");
        if self.recent.len() == Self::CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(fault);
        self.total += 1;
    }

    pub(crate) fn recent(&self) -> Vec<DmaFault> {
        self.recent.iter().copied().collect()
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    pub(crate) fn take(&mut self) -> Vec<DmaFault> {
        self.recent.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_bounded_but_counts_everything() {
        let mut log = FaultLog::default();
        for i in 0..(FaultLog::CAPACITY as u64 + 10) {
            log.record(DmaFault {
                iova: i,
                len: 1,
                access: DmaAccess::Write,
                fault_iova: i,
                reason: FaultReason::NotMapped,
            });
        }
        assert_eq!(log.total(), FaultLog::CAPACITY as u64 + 10);
        let recent = log.recent();
        assert_eq!(recent.len(), FaultLog::CAPACITY);
        assert_eq!(recent[0].iova, 10);
    }

    #[test]
    fn fault_reads_well() {
        let f = DmaFault {
            iova: 0xdead_0000,
            len: 512,
            access: DmaAccess::Write,
            fault_iova: 0xdead_0000,
            reason: FaultReason::PermissionDenied {
                perm: DmaPerm::ReadOnly,
            },
        };
        assert_eq!(
            f.to_string(),
            "DMA write of 512 bytes at IOVA 0xdead0000 faulted at 0xdead0000: mapping is r-, \
             write not allowed"
        );
    }
}
