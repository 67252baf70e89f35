//! A model of an NVMe controller for host unit tests, behind [`Registers`]: CC.EN and CC.SHN take
//! effect at once, a submission doorbell write runs the new commands and posts their completions
//! with their MSI-X interrupt counted, and everything the driver did is logged.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::cmd::opcode;
use super::regs::{cc, csts, reg};
use crate::dma::DmaPage;
use crate::idt::{self, MSIX_VECTOR_BASE};
use crate::io::Registers;

/// What the driver did, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A register write other than a doorbell.
    Register { offset: u64, value: u32 },
    /// An admin command: its opcode and CDW10 (the queue ID of a create or delete).
    Admin { opcode: u8, cdw10: u32 },
    /// An I/O command on queue `qid`.
    Io { qid: u16, opcode: u8 },
}

/// Status fields (SCT << 8 | SC) the model answers with.
pub mod status {
    /// Completion Queue Invalid.
    pub const CQ_INVALID: u16 = 1 << 8;
    /// Invalid Queue Identifier.
    pub const INVALID_QID: u16 = 1 << 8 | 0x01;
    /// Invalid Queue Deletion.
    pub const INVALID_DELETION: u16 = 1 << 8 | 0x0c;
}

struct Cq {
    base: u64,
    entries: u16,
    tail: u16,
    phase: bool,
    msix_entry: u16,
}

struct Sq {
    base: u64,
    entries: u16,
    head: u16,
    cqid: u16,
}

struct State {
    cap: u64,
    bar0_size: u64,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    cqs: BTreeMap<u16, Cq>,
    sqs: BTreeMap<u16, Sq>,
    failing: Vec<(u8, u16)>,
    log: Vec<Event>,
    writes_outside_bar0: Vec<u64>,
}

/// The model. Its queues are the driver's: guest-physical addresses are host pointers here, to
/// pages from [`page`].
pub struct FakeNvme(RefCell<State>);

/// A page for a queue or a buffer, as `'static` as the guest's.
pub fn page() -> &'static DmaPage {
    Box::leak(Box::new(DmaPage::new()))
}

impl FakeNvme {
    /// A controller with CAP.DSTRD `dstrd` and CAP.TO `to` (500 ms units) behind a BAR0 of
    /// `bar0_size` bytes.
    pub fn new(dstrd: u32, to: u8, bar0_size: u64) -> Self {
        // MQES 2047, CQR, TO, DSTRD, CSS NVM, MPSMIN 4 KiB: QEMU's, but for TO and DSTRD.
        let cap = 0x7ff | 1 << 16 | u64::from(to) << 24 | u64::from(dstrd) << 32 | 1 << 37;
        FakeNvme(RefCell::new(State {
            cap,
            bar0_size,
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            cqs: BTreeMap::new(),
            sqs: BTreeMap::new(),
            failing: Vec::new(),
            log: Vec::new(),
            writes_outside_bar0: Vec::new(),
        }))
    }

    /// Makes every admin command with `opcode` complete with `status` from now on.
    pub fn fail(&self, opcode: u8, status: u16) {
        self.0.borrow_mut().failing.push((opcode, status));
    }

    /// Makes admin commands succeed again.
    pub fn heal(&self) {
        self.0.borrow_mut().failing.clear();
    }

    /// What the driver did so far.
    pub fn log(&self) -> Vec<Event> {
        self.0.borrow().log.clone()
    }

    /// The admin commands so far, as (opcode, CDW10).
    pub fn admin_commands(&self) -> Vec<(u8, u32)> {
        self.log()
            .into_iter()
            .filter_map(|e| match e {
                Event::Admin { opcode, cdw10 } => Some((opcode, cdw10)),
                _ => None,
            })
            .collect()
    }

    /// The I/O queues that exist: (submission queue IDs, completion queue IDs).
    pub fn io_queues(&self) -> (Vec<u16>, Vec<u16>) {
        let s = self.0.borrow();
        (
            s.sqs.keys().copied().filter(|&q| q != 0).collect(),
            s.cqs.keys().copied().filter(|&q| q != 0).collect(),
        )
    }

    /// Offsets of writes the driver made past BAR0's end.
    pub fn writes_outside_bar0(&self) -> Vec<u64> {
        self.0.borrow().writes_outside_bar0.clone()
    }
}

impl Registers for FakeNvme {
    fn read32(&self, offset: u64) -> u32 {
        let s = self.0.borrow();
        match offset {
            reg::CAP => s.cap as u32,
            o if o == reg::CAP + 4 => (s.cap >> 32) as u32,
            reg::VS => 0x0001_0400,
            reg::CC => s.cc,
            reg::CSTS => s.csts,
            reg::AQA => s.aqa,
            _ => 0,
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        let mut s = self.0.borrow_mut();
        if offset + 4 > s.bar0_size {
            s.writes_outside_bar0.push(offset);
            return;
        }
        if offset >= reg::DOORBELLS {
            let stride = 4u64 << (s.cap >> 32 & 0xf);
            let index = (offset - reg::DOORBELLS) / stride;
            // Completion head doorbells need no answer: the model never fills a queue.
            if index % 2 == 0 {
                s.run((index / 2) as u16, value as u16);
            }
            return;
        }
        s.log.push(Event::Register { offset, value });
        match offset {
            reg::CC => s.set_cc(value),
            reg::AQA => s.aqa = value,
            reg::ASQ => s.asq = s.asq & !0xffff_ffff | u64::from(value),
            o if o == reg::ASQ + 4 => s.asq = s.asq & 0xffff_ffff | u64::from(value) << 32,
            reg::ACQ => s.acq = s.acq & !0xffff_ffff | u64::from(value),
            o if o == reg::ACQ + 4 => s.acq = s.acq & 0xffff_ffff | u64::from(value) << 32,
            _ => {}
        }
    }
}

impl State {
    fn set_cc(&mut self, value: u32) {
        let was_enabled = self.cc & cc::EN != 0;
        self.cc = value;
        match (was_enabled, value & cc::EN != 0) {
            (false, true) => {
                self.cqs.insert(
                    0,
                    Cq {
                        base: self.acq,
                        entries: (self.aqa >> 16 & 0xfff) as u16 + 1,
                        tail: 0,
                        phase: true,
                        msix_entry: 0,
                    },
                );
                self.sqs.insert(
                    0,
                    Sq {
                        base: self.asq,
                        entries: (self.aqa & 0xfff) as u16 + 1,
                        head: 0,
                        cqid: 0,
                    },
                );
                self.csts = csts::RDY;
            }
            (true, false) => {
                self.cqs.clear();
                self.sqs.clear();
                self.csts = 0;
            }
            _ => {}
        }
        if value & (0b11 << 14) != 0 {
            self.csts |= csts::SHST_COMPLETE;
        }
    }

    /// Runs the commands of submission queue `qid` up to `tail`, posting each completion.
    fn run(&mut self, qid: u16, tail: u16) {
        loop {
            let Some(sq) = self.sqs.get_mut(&qid) else {
                return;
            };
            if sq.head == tail {
                return;
            }
            let mut sqe = [0u32; 16];
            let slot = (sq.base + u64::from(sq.head) * 64) as *const u32;
            for (i, d) in sqe.iter_mut().enumerate() {
                // SAFETY: the driver's submission queue: a leaked `DmaPage` of at least
                // `entries` 64-byte slots, at a host address.
                *d = unsafe { slot.add(i).read_volatile() };
            }
            sq.head = (sq.head + 1) % sq.entries;
            let (head, cqid) = (sq.head, sq.cqid);
            let status = if qid == 0 {
                self.admin(&sqe)
            } else {
                self.log.push(Event::Io {
                    qid,
                    opcode: sqe[0] as u8,
                });
                0
            };
            self.post(
                cqid,
                [0, 0, u32::from(qid) << 16 | u32::from(head), sqe[0] >> 16],
                status,
            );
        }
    }

    /// Runs an admin command; returns its status field.
    fn admin(&mut self, sqe: &[u32; 16]) -> u16 {
        let (op, cdw10, cdw11) = (sqe[0] as u8, sqe[10], sqe[11]);
        self.log.push(Event::Admin { opcode: op, cdw10 });
        if let Some(&(_, status)) = self.failing.iter().find(|&&(o, _)| o == op) {
            return status;
        }
        let qid = cdw10 as u16;
        let entries = (cdw10 >> 16) as u16 + 1;
        let base = u64::from(sqe[6]) | u64::from(sqe[7]) << 32;
        match op {
            opcode::CREATE_IO_CQ => {
                let cq = Cq {
                    base,
                    entries,
                    tail: 0,
                    phase: true,
                    msix_entry: (cdw11 >> 16) as u16,
                };
                self.cqs.insert(qid, cq);
                0
            }
            opcode::CREATE_IO_SQ => {
                let cqid = (cdw11 >> 16) as u16;
                if !self.cqs.contains_key(&cqid) {
                    return status::CQ_INVALID;
                }
                let sq = Sq {
                    base,
                    entries,
                    head: 0,
                    cqid,
                };
                self.sqs.insert(qid, sq);
                0
            }
            opcode::DELETE_IO_SQ => self.delete_sq(qid),
            opcode::DELETE_IO_CQ => self.delete_cq(qid),
            _ => 0,
        }
    }

    fn delete_sq(&mut self, qid: u16) -> u16 {
        if qid != 0 && self.sqs.remove(&qid).is_some() {
            0
        } else {
            status::INVALID_QID
        }
    }

    fn delete_cq(&mut self, qid: u16) -> u16 {
        if self.sqs.values().any(|sq| sq.cqid == qid) {
            status::INVALID_DELETION
        } else if qid != 0 && self.cqs.remove(&qid).is_some() {
            0
        } else {
            status::INVALID_QID
        }
    }

    /// Posts a completion (dwords 0-2 and the CID in `d[3]`) to queue `cqid` and raises its
    /// MSI-X vector (entry n delivers `MSIX_VECTOR_BASE + n`, as the guests program it).
    fn post(&mut self, cqid: u16, mut d: [u32; 4], status: u16) {
        let Some(cq) = self.cqs.get_mut(&cqid) else {
            return;
        };
        d[3] = u32::from(status) << 17 | u32::from(cq.phase) << 16 | d[3] & 0xffff;
        let slot = (cq.base + u64::from(cq.tail) * 16) as *mut u32;
        for (i, &v) in d.iter().enumerate() {
            // SAFETY: the driver's completion queue: a leaked `DmaPage` of at least `entries`
            // 16-byte entries, at a host address.
            unsafe { slot.add(i).write_volatile(v) }
        }
        cq.tail += 1;
        if cq.tail == cq.entries {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        idt::deliver_for_test(MSIX_VECTOR_BASE + cq.msix_entry as u8);
    }
}
