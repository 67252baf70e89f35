//! Controller registers (NVMe 1.4, section 3.1).

/// Register offsets in BAR0.
pub mod reg {
    /// Controller capabilities (64 bits).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt mask set (INTx/MSI only).
    pub const INTMS: u64 = 0x0c;
    /// Controller configuration.
    pub const CC: u64 = 0x14;
    /// Controller status.
    pub const CSTS: u64 = 0x1c;
    /// Admin queue attributes.
    pub const AQA: u64 = 0x24;
    /// Admin submission queue base (64 bits).
    pub const ASQ: u64 = 0x28;
    /// Admin completion queue base (64 bits).
    pub const ACQ: u64 = 0x30;
    /// First doorbell.
    pub const DOORBELLS: u64 = 0x1000;
}

/// CC fields.
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1 << 0;
    /// I/O command set: NVM (0 in bits 6:4).
    pub const CSS_NVM: u32 = 0 << 4;
    /// Memory page size 4 KiB (0 in bits 10:7: 2^(12+0)).
    pub const MPS_4K: u32 = 0 << 7;
    /// Round-robin arbitration (0 in bits 13:11).
    pub const AMS_RR: u32 = 0 << 11;
    /// Shutdown notification: normal (01b in bits 15:14).
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// I/O submission queue entry size 2^6 = 64 bytes (bits 19:16).
    pub const IOSQES_64: u32 = 6 << 16;
    /// I/O completion queue entry size 2^4 = 16 bytes (bits 23:20).
    pub const IOCQES_16: u32 = 4 << 20;
}

/// CSTS fields.
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1 << 0;
    /// Controller fatal status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown status mask (bits 3:2).
    pub const SHST_MASK: u32 = 0b11 << 2;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0b10 << 2;
}

/// CAP, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum queue entries supported (MQES + 1).
    pub fn max_queue_entries(&self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }

    /// Contiguous queues required.
    pub fn contiguous_queues_required(&self) -> bool {
        self.0 >> 16 & 1 == 1
    }

    /// Worst-case time for CSTS.RDY to change after CC.EN does (TO, in 500 ms units).
    pub fn ready_timeout_ms(&self) -> u64 {
        (self.0 >> 24 & 0xff) * 500
    }

    /// Doorbell stride exponent: doorbells are `4 << DSTRD` bytes apart.
    pub fn doorbell_stride(&self) -> u32 {
        (self.0 >> 32 & 0xf) as u32
    }

    /// Whether the NVM command set is supported (CSS bit 0).
    pub fn supports_nvm(&self) -> bool {
        self.0 >> 37 & 1 == 1
    }

    /// Smallest memory page size, in bytes.
    pub fn min_page_size(&self) -> u64 {
        1 << (12 + (self.0 >> 48 & 0xf))
    }

    /// Largest memory page size, in bytes.
    pub fn max_page_size(&self) -> u64 {
        1 << (12 + (self.0 >> 52 & 0xf))
    }
}

impl core::fmt::Display for Cap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "CAP={:#018x} (MQES+1={} CQR={} TO={}ms DSTRD={} NVM={} MPS={}..{})",
            self.0,
            self.max_queue_entries(),
            u8::from(self.contiguous_queues_required()),
            self.ready_timeout_ms(),
            self.doorbell_stride(),
            u8::from(self.supports_nvm()),
            self.min_page_size(),
            self.max_page_size()
        )
    }
}

/// Offset in BAR0 of a queue's doorbell: submission tail or completion head of queue `qid`
/// (NVMe 1.4, 3.1.24-25): `0x1000 + (2 * qid + completion) * (4 << DSTRD)`.
pub const fn doorbell_offset(qid: u16, completion: bool, dstrd: u32) -> u64 {
    reg::DOORBELLS + (2 * qid as u64 + completion as u64) * (4 << dstrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_cap() {
        // QEMU 7.2 NVMe: MQES 0x7ff, CQR 1, TO 0xf, DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Cap(0x0040_0020_0f01_07ff | 1 << 37);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.contiguous_queues_required());
        assert_eq!(cap.ready_timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 0);
        assert!(cap.supports_nvm());
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
    }

    #[test]
    fn doorbells() {
        assert_eq!(doorbell_offset(0, false, 0), 0x1000);
        assert_eq!(doorbell_offset(0, true, 0), 0x1004);
        // Queue 3, the "kicking the doorbell of IO queue 3" queue.
        assert_eq!(doorbell_offset(3, false, 0), 0x1018);
        assert_eq!(doorbell_offset(3, true, 0), 0x101c);
        assert_eq!(doorbell_offset(3, false, 2), 0x1060);
        assert_eq!(doorbell_offset(3, true, 2), 0x1070);
    }
}
