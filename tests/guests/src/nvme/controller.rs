//! Controller bring-up, command execution and shutdown (NVMe 1.4, 7.6.1 initialization, 7.6.2
//! shutdown).

use core::fmt;
use core::sync::atomic::{Ordering, compiler_fence};

use super::cmd::{Completion, Sqe};
use super::error::NvmeError;
use super::queue::{CompletionQueue, SubmissionQueue};
use super::regs::{Cap, cc, csts, doorbell_offset, reg};
use crate::dma::DmaPage;
use crate::idt::irq_count;
use crate::io::{Mmio, Registers};
use crate::time::{self, Deadline};

/// How a completion was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Its queue's MSI-X vector fired.
    Interrupt,
    /// The entry was there but no interrupt came within the grace time: found by polling.
    Polled,
}

/// A finished command.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// The completion entry.
    pub completion: Completion,
    /// How it was noticed.
    pub delivery: Delivery,
    /// Microseconds from the doorbell write to noticing it.
    pub micros: u64,
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cid={} dw0={:#x} via={} {}us",
            self.completion.status,
            self.completion.cid,
            self.completion.dw0,
            match self.delivery {
                Delivery::Interrupt => "msix",
                Delivery::Polled => "POLL",
            },
            self.micros
        )
    }
}

/// Counters over the controller's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commands completed.
    pub commands: u64,
    /// Of those, noticed by their MSI-X interrupt.
    pub by_interrupt: u64,
    /// Of those, found by polling after the grace time.
    pub by_polling: u64,
    /// Doorbell register writes (submission tail and completion head).
    pub doorbell_writes: u64,
    /// 32-bit writes to the other controller registers (CC, AQA, ASQ, ACQ; a 64-bit register
    /// counts 2). With every BAR access trapped, the VMM's write exits on BAR0's register and
    /// doorbell pages should equal `doorbell_writes + register_writes`.
    pub register_writes: u64,
}

/// Time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest wait for a completion.
    pub command_ms: u64,
    /// How long a posted completion may wait for its interrupt before it counts as polled.
    pub irq_grace_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command_ms: 10_000,
            irq_grace_ms: 1_000,
        }
    }
}

/// What [`Controller::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownDone {
    /// The I/O submission queue deleted before CC.SHN, if one existed.
    pub deleted_sq: Option<u16>,
    /// The I/O completion queue deleted after it.
    pub deleted_cq: Option<u16>,
    /// Microseconds from the CC.SHN write to CSTS.SHST = complete.
    pub waited_us: u64,
    /// How long it would have waited.
    pub limit_ms: u64,
    /// The RTD3 Entry Latency the bound came from (0: not reported).
    pub rtd3e_us: u32,
}

impl fmt::Display for ShutdownDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.deleted_sq, self.deleted_cq) {
            (None, None) => write!(f, "no I/O queue to delete; ")?,
            (sq, cq) => {
                if let Some(q) = sq {
                    write!(f, "deleted I/O SQ {q}; ")?;
                }
                if let Some(q) = cq {
                    write!(f, "deleted I/O CQ {q}; ")?;
                }
            }
        }
        write!(
            f,
            "CSTS.SHST=complete in {}us (bound {}ms for RTD3E={}us)",
            self.waited_us, self.limit_ms, self.rtd3e_us
        )
    }
}

/// The shortest bound on a shutdown (the spec's minimum wait when RTD3E is not reported).
const SHUTDOWN_FLOOR_MS: u64 = 1_000;
/// The bound on a shutdown when RTD3E is 0 (not reported).
const SHUTDOWN_UNREPORTED_MS: u64 = 5_000;

/// How long to wait for CSTS.SHST = complete after CC.SHN, given RTD3E (Identify Controller
/// bytes 91:88, microseconds).
///
/// NVMe 2.0 3.6.1 (1.4 7.6.2) asks the host to wait at least RTD3E, and at least 1 s when RTD3E
/// is 0. RTD3E is a *typical* latency, not a worst case, so a reported value gets the 1 s as a
/// floor too. A controller that reports nothing gets the 5 s Linux's nvme driver waits then (its
/// `shutdown_timeout`): the bound only delays the verdict on a controller that never completes,
/// while one that is too short fails a slow but working one. CAP.TO is no bound here: it is the
/// worst case for CSTS.RDY after CC.EN changes, which says nothing about shutdown.
fn shutdown_limit_ms(rtd3e_us: u32) -> u64 {
    match u64::from(rtd3e_us) {
        0 => SHUTDOWN_UNREPORTED_MS,
        us => us.div_ceil(1000).max(SHUTDOWN_FLOOR_MS),
    }
}

struct QueuePair {
    sq: SubmissionQueue,
    cq: CompletionQueue,
    vector: u8,
}

/// The I/O queues that exist on the controller (created and not yet deleted), whether or not
/// the driver can still use them: a queue pair whose command timed out is dropped for I/O, but
/// shutdown still deletes it.
#[derive(Debug, Clone, Copy, Default)]
struct CreatedIoQueues {
    sq: Option<u16>,
    cq: Option<u16>,
}

/// An NVMe controller driven through its BAR0 registers, `R` ([`Mmio`] in a guest; a model of
/// the controller in host tests).
pub struct Controller<R: Registers = Mmio> {
    regs: R,
    bar0_size: u64,
    cap: Cap,
    timeouts: Timeouts,
    admin: Option<QueuePair>,
    io: Option<QueuePair>,
    created: CreatedIoQueues,
    next_cid: u16,
    stats: Stats,
}

impl Controller<Mmio> {
    /// A controller whose BAR0 (memory decode on) is at `bar0` and `bar0_size` bytes long.
    ///
    /// # Safety
    /// `bar0` must be the address of an NVMe controller's BAR0 of `bar0_size` bytes, mapped, with
    /// memory decode enabled.
    pub unsafe fn new(bar0: u64, bar0_size: u64, timeouts: Timeouts) -> Self {
        // SAFETY: the caller's contract.
        let regs = unsafe { Mmio::new(bar0) };
        Controller::with_registers(regs, bar0_size, timeouts)
    }
}

impl<R: Registers> Controller<R> {
    /// A controller behind `regs`, a BAR0 of `bar0_size` bytes (no queue's doorbell may lie
    /// past it).
    pub fn with_registers(regs: R, bar0_size: u64, timeouts: Timeouts) -> Self {
        let cap = Cap(regs.read64(reg::CAP));
        Controller {
            regs,
            bar0_size,
            cap,
            timeouts,
            admin: None,
            io: None,
            created: CreatedIoQueues::default(),
            next_cid: 1,
            stats: Stats::default(),
        }
    }

    /// CAP as read at creation.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The version register.
    pub fn version(&self) -> u32 {
        self.regs.read32(reg::VS)
    }

    /// CSTS now.
    pub fn csts(&self) -> u32 {
        self.regs.read32(reg::CSTS)
    }

    /// CC now.
    pub fn cc(&self) -> u32 {
        self.regs.read32(reg::CC)
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Refuses queue `qid` if either of its doorbells would lie outside BAR0 (with a large
    /// CAP.DSTRD or queue ID they can: NVMe puts no bound on either that BAR0's size follows).
    fn check_doorbells(&self, qid: u16) -> Result<(), NvmeError> {
        let dstrd = self.cap.doorbell_stride();
        for completion in [false, true] {
            let offset = doorbell_offset(qid, completion, dstrd);
            if offset + 4 > self.bar0_size {
                return Err(NvmeError::DoorbellOutsideBar0 {
                    qid,
                    completion,
                    offset,
                    bar0_size: self.bar0_size,
                    dstrd,
                });
            }
        }
        Ok(())
    }

    fn wait_ready(&self, want: bool) -> Result<u64, NvmeError> {
        // CAP.TO bounds it; give at least 500 ms for controllers that report 0.
        let limit = self.cap.ready_timeout_ms().max(500);
        let mut csts_now = 0;
        match time::wait_until(limit, || {
            csts_now = self.regs.read32(reg::CSTS);
            (csts_now & csts::RDY != 0) == want || (want && csts_now & csts::CFS != 0)
        }) {
            Ok(us) if csts_now & csts::CFS != 0 && want => {
                let _ = us;
                Err(NvmeError::Fatal { csts: csts_now })
            }
            Ok(us) => Ok(us),
            Err(t) => Err(NvmeError::Ready {
                want,
                waited_ms: t.waited_us / 1000,
                csts: csts_now,
            }),
        }
    }

    /// Clears CC.EN and waits for CSTS.RDY to clear (a controller reset: all queues are gone).
    /// Returns the microseconds waited.
    pub fn disable(&mut self) -> Result<u64, NvmeError> {
        self.admin = None;
        self.io = None;
        self.created = CreatedIoQueues::default();
        let cc_now = self.regs.read32(reg::CC);
        if cc_now & cc::EN != 0 {
            // EN set and RDY still clear: the controller is still coming up, and clearing EN
            // then is undefined (NVMe 1.4, 7.6.1); let it get ready first (or time out).
            if self.regs.read32(reg::CSTS) & csts::RDY == 0 {
                let _ = self.wait_ready(true);
            }
            self.regs.write32(reg::CC, cc_now & !cc::EN);
            self.stats.register_writes += 1;
        }
        self.wait_ready(false)
    }

    /// Sets up the admin queues (`entries` each, in the pages `sq` and `cq`, interrupts on
    /// MSI-X entry 0 which must deliver `vector`) and enables the controller. Disable first.
    pub fn enable(
        &mut self,
        sq: &'static DmaPage,
        cq: &'static DmaPage,
        entries: u16,
        vector: u8,
    ) -> Result<u64, NvmeError> {
        if self.cap.0 == 0 || self.cap.0 == u64::MAX {
            return Err(NvmeError::NoController);
        }
        let (cc_now, csts_now) = (self.regs.read32(reg::CC), self.regs.read32(reg::CSTS));
        if cc_now & cc::EN != 0 || csts_now & csts::RDY != 0 {
            return Err(NvmeError::NotDisabled {
                cc: cc_now,
                csts: csts_now,
            });
        }
        if !self.cap.supports_nvm() {
            return Err(NvmeError::Unsupported {
                what: "the NVM command set (CAP.CSS bit 0)",
            });
        }
        if self.cap.min_page_size() > 4096 {
            return Err(NvmeError::Unsupported {
                what: "4 KiB memory pages (CAP.MPSMIN)",
            });
        }
        self.check_doorbells(0)?;
        let entries = entries.min(self.cap.max_queue_entries().min(64) as u16);
        let dstrd = self.cap.doorbell_stride();
        let pair = QueuePair {
            sq: SubmissionQueue::new(0, sq, entries, dstrd),
            cq: CompletionQueue::new(0, cq, entries, dstrd),
            vector,
        };
        let n = u32::from(entries - 1);
        self.regs.write32(reg::AQA, n << 16 | n);
        self.regs.write64(reg::ASQ, pair.sq.base());
        self.regs.write64(reg::ACQ, pair.cq.base());
        self.regs.write32(
            reg::CC,
            cc::EN | cc::CSS_NVM | cc::MPS_4K | cc::AMS_RR | cc::IOSQES_64 | cc::IOCQES_16,
        );
        // AQA, ASQ and ACQ (two dwords each), CC.
        self.stats.register_writes += 6;
        let waited = self.wait_ready(true)?;
        self.admin = Some(pair);
        Ok(waited)
    }

    /// Runs an admin command and waits for it. A completion with an error status is returned as
    /// `Ok` (check `completion.status`); see [`Controller::admin_ok`].
    pub fn admin(&mut self, sqe: Sqe) -> Result<Done, NvmeError> {
        let timeouts = self.timeouts;
        let pair = self.admin.as_mut().ok_or(NvmeError::Unsupported {
            what: "commands before enable",
        })?;
        let r = run(
            &self.regs,
            pair,
            &mut self.next_cid,
            &mut self.stats,
            timeouts,
            sqe,
        );
        if matches!(r, Err(NvmeError::NoCompletion { .. })) {
            // Its completion may still come, and would be taken for the next command's.
            self.admin = None;
            self.io = None;
        }
        r
    }

    /// Runs an admin command and turns an error status into [`NvmeError::Failed`].
    pub fn admin_ok(&mut self, sqe: Sqe) -> Result<Done, NvmeError> {
        let done = self.admin(sqe)?;
        check(0, sqe.opcode(), done)
    }

    /// Runs an I/O command on the queue pair and waits for it (error statuses as in [`Controller::admin`]).
    pub fn io(&mut self, sqe: Sqe) -> Result<Done, NvmeError> {
        let timeouts = self.timeouts;
        let pair = self.io.as_mut().ok_or(NvmeError::NoIoQueue)?;
        let r = run(
            &self.regs,
            pair,
            &mut self.next_cid,
            &mut self.stats,
            timeouts,
            sqe,
        );
        if matches!(r, Err(NvmeError::NoCompletion { .. })) {
            // Its completion may still come, and would be taken for the next command's.
            self.io = None;
        }
        r
    }

    /// Runs an I/O command and turns an error status into [`NvmeError::Failed`].
    pub fn io_ok(&mut self, sqe: Sqe) -> Result<Done, NvmeError> {
        let qid = self.io.as_ref().map_or(0, |p| p.sq.qid());
        let done = self.io(sqe)?;
        check(qid, sqe.opcode(), done)
    }

    /// Creates I/O completion queue `qid` (interrupts on MSI-X entry `msix_entry`, which must
    /// deliver `vector`) and submission queue `qid` on it, `entries` each, in `sq` and `cq`.
    /// Returns the two completions. A queue whose doorbells would lie outside BAR0 is refused
    /// before any command; when the submission queue cannot be created, the completion queue is
    /// deleted again and the error is the submission queue's.
    pub fn create_io_queue_pair(
        &mut self,
        qid: u16,
        sq: &'static DmaPage,
        cq: &'static DmaPage,
        entries: u16,
        msix_entry: u16,
        vector: u8,
    ) -> Result<(Done, Done), NvmeError> {
        let entries = entries.min(self.cap.max_queue_entries().min(64) as u16);
        let dstrd = self.cap.doorbell_stride();
        self.check_doorbells(qid)?;
        let cq = CompletionQueue::new(qid, cq, entries, dstrd);
        let sq = SubmissionQueue::new(qid, sq, entries, dstrd);
        let cq_done = self.admin_ok(Sqe::create_io_cq(qid, entries, cq.base(), msix_entry))?;
        self.created.cq = Some(qid);
        let sq_done = match self.admin_ok(Sqe::create_io_sq(qid, entries, sq.base(), qid)) {
            Ok(done) => done,
            Err(e) => {
                // Left behind, the completion queue would keep its ID and interrupt vector in
                // use until a controller reset. If deleting it fails too, the SQ's error is
                // still the one that tells what went wrong, and shutdown tries again.
                if self.admin_ok(Sqe::delete_io_cq(qid)).is_ok() {
                    self.created.cq = None;
                }
                return Err(e);
            }
        };
        self.created.sq = Some(qid);
        self.io = Some(QueuePair { sq, cq, vector });
        Ok((cq_done, sq_done))
    }

    /// The doorbell offsets (submission tail, completion head) of the I/O queue pair.
    pub fn io_doorbells(&self) -> Option<(u64, u64)> {
        self.io.as_ref().map(|p| (p.sq.doorbell(), p.cq.doorbell()))
    }

    /// Deletes the I/O queues that exist on the controller: the submission queue first, since
    /// deleting a completion queue that still has one fails with Invalid Queue Deletion (NVMe 1.4
    /// 5.5, 2.0 5.6). Deleting a submission queue aborts what is still in flight on it.
    fn delete_io_queues(&mut self) -> Result<(Option<u16>, Option<u16>), NvmeError> {
        self.io = None;
        let mut deleted = (None, None);
        if let Some(qid) = self.created.sq {
            self.admin_ok(Sqe::delete_io_sq(qid))?;
            self.created.sq = None;
            deleted.0 = Some(qid);
        }
        if let Some(qid) = self.created.cq {
            self.admin_ok(Sqe::delete_io_cq(qid))?;
            self.created.cq = None;
            deleted.1 = Some(qid);
        }
        Ok(deleted)
    }

    /// Normal shutdown (NVMe 2.0 3.6.1, 1.4 7.6.2): deletes the I/O submission queue, then the
    /// I/O completion queue, sets CC.SHN = 01b and waits for CSTS.SHST = complete, for as long
    /// as `rtd3e_us` (Identify Controller's RTD3 Entry Latency, 0 if not reported) says; see
    /// [`ShutdownDone`] for what it did. The controller takes no commands afterwards.
    ///
    /// When a deletion fails, CC.SHN is still set (the run ends here, and the controller should
    /// be left quiet) and the deletion's error is returned.
    pub fn shutdown(&mut self, rtd3e_us: u32) -> Result<ShutdownDone, NvmeError> {
        // Without an admin queue (a command on it timed out) nothing can be deleted.
        let deleted = if self.admin.is_some() {
            self.delete_io_queues()
        } else {
            Ok((None, None))
        };
        self.admin = None;
        self.io = None;
        let limit_ms = shutdown_limit_ms(rtd3e_us);
        let cc_now = self.regs.read32(reg::CC);
        self.regs
            .write32(reg::CC, (cc_now & !(0b11 << 14)) | cc::SHN_NORMAL);
        self.stats.register_writes += 1;
        let mut csts_now = 0;
        let waited = time::wait_until(limit_ms, || {
            csts_now = self.regs.read32(reg::CSTS);
            csts_now & csts::SHST_MASK == csts::SHST_COMPLETE
        });
        let (deleted_sq, deleted_cq) = deleted?;
        let waited_us = waited.map_err(|_| NvmeError::Shutdown {
            csts: csts_now,
            limit_ms,
        })?;
        Ok(ShutdownDone {
            deleted_sq,
            deleted_cq,
            waited_us,
            limit_ms,
            rtd3e_us,
        })
    }
}

fn check(qid: u16, opcode: u8, done: Done) -> Result<Done, NvmeError> {
    if done.completion.status.is_success() {
        Ok(done)
    } else {
        Err(NvmeError::Failed {
            qid,
            opcode,
            status: done.completion.status,
        })
    }
}

/// The command identifier after `cid`: 0xFFFF is reserved (NVMe 2.0, 4.2), and 0 is skipped so
/// that a zeroed completion entry never matches a command.
fn cid_after(cid: u16) -> u16 {
    match cid.wrapping_add(1) {
        0 | 0xffff => 1,
        c => c,
    }
}

/// Submits `sqe` on `pair`, rings the doorbell, and waits for its completion: first for the
/// completion and its interrupt together; a completion whose interrupt does not follow within
/// the grace time counts as polled.
fn run(
    regs: &impl Registers,
    pair: &mut QueuePair,
    next_cid: &mut u16,
    stats: &mut Stats,
    t: Timeouts,
    mut sqe: Sqe,
) -> Result<Done, NvmeError> {
    let cid = *next_cid;
    *next_cid = cid_after(cid);
    sqe.set_cid(cid);
    if pair.sq.is_full() {
        return Err(NvmeError::Unsupported {
            what: "more commands in flight than the queue holds",
        });
    }
    let irq_before = irq_count(pair.vector);
    let tail = pair.sq.push(&sqe);
    // The entry must be in memory before the controller hears about it.
    compiler_fence(Ordering::SeqCst);
    let start = time::now_us();
    regs.write32(pair.sq.doorbell(), u32::from(tail));
    stats.doorbell_writes += 1;

    let mut deadline = Deadline::after_ms(t.command_ms);
    let mut grace: Option<Deadline> = None;
    let (completion, delivery) = loop {
        if let Some(c) = pair.cq.peek() {
            if irq_count(pair.vector) > irq_before {
                break (c, Delivery::Interrupt);
            }
            if grace
                .get_or_insert_with(|| Deadline::after_ms(t.irq_grace_ms))
                .expired()
            {
                break (c, Delivery::Polled);
            }
        } else if deadline.expired() {
            return Err(NvmeError::NoCompletion {
                qid: pair.sq.qid(),
                opcode: sqe.opcode(),
                cid,
                waited_ms: deadline.elapsed_us() / 1000,
                csts: regs.read32(reg::CSTS),
            });
        }
        time::idle();
    };
    let micros = match (start, time::now_us()) {
        (Some(s), Some(n)) => n.saturating_sub(s),
        _ => 0,
    };
    let head = pair.cq.pop();
    regs.write32(pair.cq.doorbell(), u32::from(head));
    stats.doorbell_writes += 1;
    pair.sq.set_head(completion.sq_head);
    stats.commands += 1;
    match delivery {
        Delivery::Interrupt => stats.by_interrupt += 1,
        Delivery::Polled => stats.by_polling += 1,
    }
    if completion.cid != cid || completion.sq_id != pair.sq.qid() {
        return Err(NvmeError::WrongCompletion {
            qid: pair.sq.qid(),
            cid,
            got: completion,
        });
    }
    Ok(Done {
        completion,
        delivery,
        micros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idt::MSIX_VECTOR_BASE;
    use crate::nvme::cmd::opcode;
    use crate::nvme::fake::{Event, FakeNvme, page, status};

    const QID: u16 = 3;

    /// A controller on `fake`, enabled, with admin interrupts on MSI-X entry 0.
    fn enabled(fake: &FakeNvme, bar0_size: u64) -> Controller<&FakeNvme> {
        let mut c = Controller::with_registers(fake, bar0_size, Timeouts::default());
        c.disable().unwrap();
        c.enable(page(), page(), 16, MSIX_VECTOR_BASE).unwrap();
        c
    }

    fn create_pair(c: &mut Controller<&FakeNvme>, qid: u16) -> Result<(Done, Done), NvmeError> {
        c.create_io_queue_pair(qid, page(), page(), 16, 1, MSIX_VECTOR_BASE + 1)
    }

    #[test]
    fn bring_up_io_and_shutdown_on_the_model() {
        let fake = FakeNvme::new(0, 0xf, 0x4000);
        let mut c = enabled(&fake, 0x4000);
        let (cq, sq) = create_pair(&mut c, QID).unwrap();
        assert_eq!(
            (cq.delivery, sq.delivery),
            (Delivery::Interrupt, Delivery::Interrupt)
        );
        assert_eq!(c.io_doorbells(), Some((0x1018, 0x101c)));
        c.io_ok(Sqe::flush(1)).unwrap();
        assert!(fake.log().contains(&Event::Io {
            qid: QID,
            opcode: opcode::FLUSH
        }));
        c.shutdown(0).unwrap();
        assert_eq!(c.stats().by_polling, 0);
        assert!(fake.writes_outside_bar0().is_empty());
    }

    /// NVMe 2.0 3.6.1: Delete I/O SQ, then Delete I/O CQ, then CC.SHN; the wait is bounded by
    /// RTD3E, not by CAP.TO (here its largest, 127.5 s).
    #[test]
    fn shutdown_deletes_the_io_queues_first_then_sets_cc_shn() {
        let fake = FakeNvme::new(0, 0xff, 0x4000);
        let mut c = enabled(&fake, 0x4000);
        create_pair(&mut c, QID).unwrap();
        let before = fake.log().len();
        let done = c.shutdown(8_000_000).unwrap();
        assert_eq!(
            (done.deleted_sq, done.deleted_cq, done.limit_ms),
            (Some(QID), Some(QID), 8_000)
        );
        let shn = c.cc() & !(0b11 << 14) | cc::SHN_NORMAL;
        assert_eq!(
            fake.log()[before..],
            [
                Event::Admin {
                    opcode: opcode::DELETE_IO_SQ,
                    cdw10: QID.into()
                },
                Event::Admin {
                    opcode: opcode::DELETE_IO_CQ,
                    cdw10: QID.into()
                },
                Event::Register {
                    offset: reg::CC,
                    value: shn
                },
            ]
        );
        assert_eq!(fake.io_queues(), (vec![], vec![]));
        assert!(
            done.to_string()
                .starts_with("deleted I/O SQ 3; deleted I/O CQ 3; CSTS.SHST=complete in "),
            "{done}"
        );
        // The controller takes no more commands.
        assert!(c.admin(Sqe::flush(0)).is_err());
    }

    #[test]
    fn shutdown_without_io_queues_deletes_nothing() {
        let fake = FakeNvme::new(0, 0xf, 0x4000);
        let mut c = enabled(&fake, 0x4000);
        let done = c.shutdown(0).unwrap();
        assert_eq!((done.deleted_sq, done.deleted_cq), (None, None));
        assert_eq!(done.limit_ms, SHUTDOWN_UNREPORTED_MS);
        assert!(fake.admin_commands().is_empty());
    }

    #[test]
    fn shutdown_still_sets_cc_shn_when_a_deletion_fails() {
        let fake = FakeNvme::new(0, 0xf, 0x4000);
        let mut c = enabled(&fake, 0x4000);
        create_pair(&mut c, QID).unwrap();
        fake.fail(opcode::DELETE_IO_SQ, status::INVALID_QID);
        let e = c.shutdown(0).unwrap_err();
        assert_eq!(
            e,
            NvmeError::Failed {
                qid: 0,
                opcode: opcode::DELETE_IO_SQ,
                status: crate::nvme::StatusField(status::INVALID_QID)
            }
        );
        // The CQ is not tried (it still has its SQ), and CC.SHN went out anyway.
        assert_eq!(
            fake.admin_commands().last(),
            Some(&(opcode::DELETE_IO_SQ, u32::from(QID)))
        );
        assert_eq!(c.csts() & csts::SHST_MASK, csts::SHST_COMPLETE);
    }

    #[test]
    fn shutdown_bound_comes_from_rtd3e() {
        // Not reported: 5 s, whatever CAP.TO says.
        assert_eq!(shutdown_limit_ms(0), 5_000);
        // Reported: RTD3E rounded up to milliseconds, at least the spec's 1 s.
        assert_eq!(shutdown_limit_ms(1), 1_000);
        assert_eq!(shutdown_limit_ms(1_000_000), 1_000);
        assert_eq!(shutdown_limit_ms(2_500_001), 2_501);
        assert_eq!(shutdown_limit_ms(u32::MAX), 4_294_968);
    }

    /// A failed Create I/O SQ must not leave its CQ behind; the caller sees the SQ's failure.
    #[test]
    fn failed_submission_queue_deletes_its_completion_queue() {
        let fake = FakeNvme::new(0, 0xf, 0x4000);
        let mut c = enabled(&fake, 0x4000);
        fake.fail(opcode::CREATE_IO_SQ, status::INVALID_QID);
        let e = create_pair(&mut c, QID).unwrap_err();
        assert_eq!(
            e,
            NvmeError::Failed {
                qid: 0,
                opcode: opcode::CREATE_IO_SQ,
                status: crate::nvme::StatusField(status::INVALID_QID)
            }
        );
        let q = u32::from(QID);
        assert_eq!(
            fake.admin_commands(),
            [
                (opcode::CREATE_IO_CQ, 15 << 16 | q),
                (opcode::CREATE_IO_SQ, 15 << 16 | q),
                (opcode::DELETE_IO_CQ, q),
            ]
        );
        assert_eq!(fake.io_queues(), (vec![], vec![]));
        assert_eq!(c.io(Sqe::flush(1)).unwrap_err(), NvmeError::NoIoQueue);
        // Nothing is left for shutdown to delete.
        let done = c.shutdown(0).unwrap();
        assert_eq!((done.deleted_sq, done.deleted_cq), (None, None));
    }

    /// A failed deletion of that CQ leaves it to shutdown.
    #[test]
    fn completion_queue_left_by_a_failed_deletion_is_deleted_at_shutdown() {
        let fake = FakeNvme::new(0, 0xf, 0x4000);
        let mut c = enabled(&fake, 0x4000);
        fake.fail(opcode::CREATE_IO_SQ, status::INVALID_QID);
        fake.fail(opcode::DELETE_IO_CQ, status::INVALID_QID);
        create_pair(&mut c, QID).unwrap_err();
        assert_eq!(fake.io_queues(), (vec![], vec![QID]));
        fake.heal();
        let done = c.shutdown(0).unwrap();
        assert_eq!((done.deleted_sq, done.deleted_cq), (None, Some(QID)));
    }

    /// Doorbells are `0x1000 + (2 * qid + cq) * (4 << DSTRD)`: with DSTRD 8 (1 KiB apart) and a
    /// 16 KiB BAR0, queue 5's (0x3800, 0x3c00) fit and queue 7's (0x4800) do not.
    #[test]
    fn queue_whose_doorbell_is_outside_bar0_is_refused_before_any_command() {
        let fake = FakeNvme::new(8, 0xf, 0x4000);
        let mut c = enabled(&fake, 0x4000);
        let e = create_pair(&mut c, 7).unwrap_err();
        assert_eq!(
            e,
            NvmeError::DoorbellOutsideBar0 {
                qid: 7,
                completion: false,
                offset: 0x4800,
                bar0_size: 0x4000,
                dstrd: 8
            }
        );
        assert!(e.to_string().contains("queue 7"), "{e}");
        assert!(fake.admin_commands().is_empty());
        create_pair(&mut c, 5).unwrap();
        assert_eq!(c.io_doorbells(), Some((0x3800, 0x3c00)));
        assert!(fake.writes_outside_bar0().is_empty());
    }

    /// The admin queue's completion doorbell with DSTRD 10 is at 0x2000: past an 8 KiB BAR0.
    #[test]
    fn admin_doorbell_outside_bar0_is_refused_before_enable() {
        let fake = FakeNvme::new(10, 0xf, 0x2000);
        let mut c = Controller::with_registers(&fake, 0x2000, Timeouts::default());
        c.disable().unwrap();
        let e = c.enable(page(), page(), 16, MSIX_VECTOR_BASE).unwrap_err();
        assert_eq!(
            e,
            NvmeError::DoorbellOutsideBar0 {
                qid: 0,
                completion: true,
                offset: 0x2000,
                bar0_size: 0x2000,
                dstrd: 10
            }
        );
        assert!(fake.log().is_empty(), "{:?}", fake.log());
    }

    #[test]
    fn command_identifiers_skip_0_and_the_reserved_0xffff() {
        assert_eq!(cid_after(1), 2);
        assert_eq!(cid_after(0xfffd), 0xfffe);
        assert_eq!(cid_after(0xfffe), 1);
        assert_eq!(cid_after(0xffff), 1);
    }
}
