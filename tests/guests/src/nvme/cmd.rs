//! Submission queue entries (64 bytes) and completion queue entries (16 bytes), NVMe 1.4 4.2-4.6.

use core::fmt;

/// Opcodes used here.
pub mod opcode {
    /// Admin: Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Admin: Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Admin: Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Admin: Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Admin: Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Admin: Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// NVM: Flush.
    pub const FLUSH: u8 = 0x00;
    /// NVM: Write.
    pub const WRITE: u8 = 0x01;
    /// NVM: Read.
    pub const READ: u8 = 0x02;

    /// The name of admin command `opcode` (of those used here).
    pub fn admin_name(opcode: u8) -> &'static str {
        match opcode {
            DELETE_IO_SQ => "Delete I/O Submission Queue",
            CREATE_IO_SQ => "Create I/O Submission Queue",
            DELETE_IO_CQ => "Delete I/O Completion Queue",
            CREATE_IO_CQ => "Create I/O Completion Queue",
            IDENTIFY => "Identify",
            SET_FEATURES => "Set Features",
            _ => "?",
        }
    }
}

/// Feature ID of Number of Queues.
pub const FEATURE_NUMBER_OF_QUEUES: u32 = 0x07;

/// A submission queue entry, as 16 dwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u32; 16]);

impl Sqe {
    /// An entry with `opcode`, namespace `nsid` and data pointer `prp1` (one page, so PRP2 is 0;
    /// the command identifier is set at submission).
    pub const fn new(opcode: u8, nsid: u32, prp1: u64) -> Self {
        let mut d = [0u32; 16];
        d[0] = opcode as u32;
        d[1] = nsid;
        d[6] = prp1 as u32;
        d[7] = (prp1 >> 32) as u32;
        Sqe(d)
    }

    /// The opcode.
    pub const fn opcode(&self) -> u8 {
        self.0[0] as u8
    }

    /// Sets the command identifier (dword 0, bits 31:16).
    pub fn set_cid(&mut self, cid: u16) {
        self.0[0] = (self.0[0] & 0xffff) | u32::from(cid) << 16;
    }

    /// Sets command dword `n` (10-15).
    pub const fn cdw(mut self, n: usize, value: u32) -> Self {
        self.0[n] = value;
        self
    }

    /// Identify with CNS `cns` (1 controller, 0 namespace) into the 4 KiB page at `buffer`.
    pub const fn identify(cns: u8, nsid: u32, buffer: u64) -> Self {
        Sqe::new(opcode::IDENTIFY, nsid, buffer).cdw(10, cns as u32)
    }

    /// Set Features, Number of Queues: ask for `count` submission and `count` completion queues
    /// (at least 1: a count of 0 asks for 1).
    pub const fn set_number_of_queues(count: u16) -> Self {
        let n = count.saturating_sub(1) as u32;
        Sqe::new(opcode::SET_FEATURES, 0, 0)
            .cdw(10, FEATURE_NUMBER_OF_QUEUES)
            .cdw(11, n << 16 | n)
    }

    /// Create I/O Completion Queue `qid` of `entries` at `base` (physically contiguous), with
    /// interrupts enabled on MSI-X entry `vector`.
    pub const fn create_io_cq(qid: u16, entries: u16, base: u64, vector: u16) -> Self {
        Sqe::new(opcode::CREATE_IO_CQ, 0, base)
            .cdw(10, (entries.saturating_sub(1) as u32) << 16 | qid as u32)
            .cdw(11, (vector as u32) << 16 | 0b11) // IEN | PC
    }

    /// Create I/O Submission Queue `qid` of `entries` at `base`, completing to queue `cqid`.
    pub const fn create_io_sq(qid: u16, entries: u16, base: u64, cqid: u16) -> Self {
        Sqe::new(opcode::CREATE_IO_SQ, 0, base)
            .cdw(10, (entries.saturating_sub(1) as u32) << 16 | qid as u32)
            .cdw(11, (cqid as u32) << 16 | 0b1) // PC, priority 0
    }

    /// Delete I/O Submission Queue `qid`.
    pub const fn delete_io_sq(qid: u16) -> Self {
        Sqe::new(opcode::DELETE_IO_SQ, 0, 0).cdw(10, qid as u32)
    }

    /// Delete I/O Completion Queue `qid`.
    pub const fn delete_io_cq(qid: u16) -> Self {
        Sqe::new(opcode::DELETE_IO_CQ, 0, 0).cdw(10, qid as u32)
    }

    /// Read (`write` false) or Write `blocks` blocks at `lba` of namespace `nsid`, one page at
    /// `buffer` (at least 1 block: a count of 0 moves 1).
    pub const fn rw(write: bool, nsid: u32, lba: u64, blocks: u16, buffer: u64) -> Self {
        Sqe::new(
            if write { opcode::WRITE } else { opcode::READ },
            nsid,
            buffer,
        )
        .cdw(10, lba as u32)
        .cdw(11, (lba >> 32) as u32)
        .cdw(12, blocks.saturating_sub(1) as u32)
    }

    /// Sets PRP2 (dwords 8-9): the second page of a two-page transfer, or the address of a PRP
    /// list when the transfer spans more than two pages (NVMe 1.4 4.3).
    pub const fn prp2(mut self, prp2: u64) -> Self {
        self.0[8] = prp2 as u32;
        self.0[9] = (prp2 >> 32) as u32;
        self
    }

    /// Flush namespace `nsid`.
    pub const fn flush(nsid: u32) -> Self {
        Sqe::new(opcode::FLUSH, nsid, 0)
    }
}

/// The status field of a completion (dword 3, bits 31:17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusField(pub u16);

impl StatusField {
    /// Status code type (0 generic, 1 command specific, 2 media/data integrity, 3 path).
    pub fn sct(&self) -> u8 {
        (self.0 >> 8 & 0x7) as u8
    }

    /// Status code.
    pub fn sc(&self) -> u8 {
        self.0 as u8
    }

    /// Do not retry.
    pub fn dnr(&self) -> bool {
        self.0 >> 14 & 1 == 1
    }

    /// Success (SCT 0, SC 0).
    pub fn is_success(&self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }

    /// A short name for common status codes.
    pub fn name(&self) -> &'static str {
        match (self.sct(), self.sc()) {
            (0, 0x00) => "success",
            (0, 0x01) => "invalid opcode",
            (0, 0x02) => "invalid field",
            (0, 0x03) => "command id conflict",
            (0, 0x04) => "data transfer error",
            (0, 0x06) => "internal error",
            (0, 0x07) => "abort requested",
            (0, 0x0b) => "invalid namespace or format",
            (0, 0x0c) => "command sequence error",
            (0, 0x13) => "invalid PRP offset",
            (0, 0x80) => "LBA out of range",
            (1, 0x00) => "completion queue invalid",
            (1, 0x01) => "invalid queue identifier",
            (1, 0x02) => "invalid queue size",
            (1, 0x08) => "invalid interrupt vector",
            (1, 0x0c) => "invalid queue deletion",
            (2, 0x81) => "unrecovered read error",
            _ => "other",
        }
    }
}

impl fmt::Display for StatusField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCT={} SC={:#04x} ({}){}",
            self.sct(),
            self.sc(),
            self.name(),
            if self.dnr() { " DNR" } else { "" }
        )
    }
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Command-specific dword 0.
    pub dw0: u32,
    /// Submission queue head pointer.
    pub sq_head: u16,
    /// Submission queue the command came from.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag.
    pub phase: bool,
    /// Status.
    pub status: StatusField,
}

impl Completion {
    /// Decodes the four dwords of an entry.
    pub fn decode(d: [u32; 4]) -> Self {
        Completion {
            dw0: d[0],
            sq_head: d[2] as u16,
            sq_id: (d[2] >> 16) as u16,
            cid: d[3] as u16,
            phase: d[3] >> 16 & 1 == 1,
            status: StatusField((d[3] >> 17) as u16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let mut s = Sqe::identify(1, 0, 0x20_3000);
        s.set_cid(7);
        assert_eq!(s.0[0], 0x0007_0006);
        assert_eq!((s.0[6], s.0[7], s.0[10]), (0x20_3000, 0, 1));
        let s = Sqe::set_number_of_queues(3);
        assert_eq!((s.opcode(), s.0[10], s.0[11]), (0x09, 7, 0x0002_0002));
        let s = Sqe::create_io_cq(3, 16, 0x1_2345_6000, 1);
        assert_eq!(
            (s.0[6], s.0[7], s.0[10], s.0[11]),
            (0x2345_6000, 1, 0x000f_0003, 0x0001_0003)
        );
        let s = Sqe::create_io_sq(3, 16, 0x5000, 3);
        assert_eq!(
            (s.opcode(), s.0[10], s.0[11]),
            (1, 0x000f_0003, 0x0003_0001)
        );
        let s = Sqe::rw(true, 1, 0x1_0000_0065, 1, 0x6000);
        assert_eq!(
            (s.opcode(), s.0[1], s.0[10], s.0[11], s.0[12]),
            (1, 1, 0x65, 1, 0)
        );
        assert_eq!(Sqe::rw(false, 1, 100, 8, 0).0[12], 7);
        // A count of 0 is taken as 1 (0-based fields), not wrapped to 65,536.
        assert_eq!(Sqe::rw(false, 1, 100, 0, 0).0[12], 0);
        assert_eq!(Sqe::set_number_of_queues(0).0[11], 0);
        assert_eq!(Sqe::create_io_cq(3, 0, 0x5000, 1).0[10], 3);
        assert_eq!(Sqe::flush(1).0[..2], [0, 1]);
        assert_eq!(Sqe::delete_io_sq(3).0[10], 3);
        assert_eq!(Sqe::delete_io_cq(3).opcode(), 4);
    }

    #[test]
    fn completion_decode() {
        // Invalid queue identifier (SCT 1, SC 1), DNR, phase 1, CID 9, SQ 0 head 4.
        let status: u32 = 1 << 14 | 1 << 8 | 0x01;
        let c = Completion::decode([0xdead, 0, 0x0000_0004, status << 17 | 1 << 16 | 9]);
        assert_eq!(
            (c.dw0, c.sq_head, c.sq_id, c.cid, c.phase),
            (0xdead, 4, 0, 9, true)
        );
        assert_eq!(
            (c.status.sct(), c.status.sc(), c.status.dnr()),
            (1, 1, true)
        );
        assert!(!c.status.is_success());
        assert_eq!(
            c.status.to_string(),
            "SCT=1 SC=0x01 (invalid queue identifier) DNR"
        );
        let ok = Completion::decode([0, 0, 0x0003_0001, 0x0001_0002]);
        assert!(ok.status.is_success() && ok.phase && ok.sq_id == 3);
    }
}
