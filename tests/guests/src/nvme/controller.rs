//! Controller bring-up and command execution (NVMe 1.4, 7.6.1 initialization, 7.6.2 shutdown).

use core::fmt;
use core::sync::atomic::{Ordering, compiler_fence};

use super::cmd::{Completion, Sqe, StatusField};
use super::queue::{CompletionQueue, SubmissionQueue};
use super::regs::{Cap, cc, csts, reg};
use crate::dma::DmaPage;
use crate::idt::irq_count;
use crate::io::Mmio;
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

/// What went wrong, with the register values that tell why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmeError {
    /// CSTS.RDY did not reach the wanted value.
    Ready {
        /// The value waited for.
        want: bool,
        /// Milliseconds waited.
        waited_ms: u64,
        /// CSTS at the end.
        csts: u32,
    },
    /// CSTS.CFS is set.
    Fatal {
        /// CSTS.
        csts: u32,
    },
    /// CAP reads 0 or all-ones: no NVMe controller answers behind BAR0 (a simulated device that
    /// has only the PCI side of an NVMe, such as refvmm's `--device sim`, a BAR that is not
    /// decoded, or a device that is gone).
    NoController,
    /// [`Controller::enable`] found the controller enabled or not yet idle (CC.EN or CSTS.RDY
    /// set): the admin queue registers may only be written while it is disabled.
    NotDisabled {
        /// CC.
        cc: u32,
        /// CSTS.
        csts: u32,
    },
    /// The controller cannot do what this driver needs.
    Unsupported {
        /// What is missing.
        what: &'static str,
    },
    /// No completion arrived.
    NoCompletion {
        /// Queue.
        qid: u16,
        /// Opcode.
        opcode: u8,
        /// Command identifier.
        cid: u16,
        /// Milliseconds waited.
        waited_ms: u64,
        /// CSTS at the end.
        csts: u32,
    },
    /// A completion for another command or queue arrived (or an earlier command's late one: a
    /// queue whose command timed out is dropped, so this cannot follow a
    /// [`NvmeError::NoCompletion`]).
    WrongCompletion {
        /// Queue.
        qid: u16,
        /// The CID waited for.
        cid: u16,
        /// What arrived.
        got: Completion,
    },
    /// The command completed with an error status.
    Failed {
        /// Queue.
        qid: u16,
        /// Opcode.
        opcode: u8,
        /// The status.
        status: StatusField,
    },
    /// An I/O command before [`Controller::create_io_queue_pair`].
    NoIoQueue,
    /// Shutdown did not complete.
    Shutdown {
        /// CSTS at the end.
        csts: u32,
    },
}

impl fmt::Display for NvmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NvmeError::Ready {
                want,
                waited_ms,
                csts,
            } => {
                write!(
                    f,
                    "CSTS.RDY did not become {} within {waited_ms}ms (CSTS={csts:#x})",
                    u8::from(want)
                )
            }
            NvmeError::Fatal { csts } => write!(
                f,
                "controller fatal status (CSTS={csts:#x}): reset the controller"
            ),
            NvmeError::NoController => write!(
                f,
                "CAP reads 0 or all-ones: no NVMe controller answers behind BAR0 (refvmm's `--device sim` \
                 simulates only the PCI side of an NVMe, its registers are plain memory; pass a \
                 real NVMe through)"
            ),
            NvmeError::NotDisabled { cc, csts } => write!(
                f,
                "controller not disabled (CC={cc:#x}, CSTS={csts:#x}): disable it before enabling"
            ),
            NvmeError::Unsupported { what } => write!(f, "controller does not support {what}"),
            NvmeError::NoCompletion {
                qid,
                opcode,
                cid,
                waited_ms,
                csts,
            } => write!(
                f,
                "no completion on queue {qid} for opcode {opcode:#04x} cid {cid} within {waited_ms}ms (CSTS={csts:#x}): \
                 the doorbell write or the DMA did not reach the controller"
            ),
            NvmeError::WrongCompletion { qid, cid, got } => write!(
                f,
                "queue {qid}: waited for cid {cid}, got cid {} from sq {} ({})",
                got.cid, got.sq_id, got.status
            ),
            NvmeError::Failed {
                qid,
                opcode,
                status,
            } => write!(f, "queue {qid} opcode {opcode:#04x} failed: {status}"),
            NvmeError::NoIoQueue => write!(f, "no I/O queue pair: create one first"),
            NvmeError::Shutdown { csts } => write!(f, "shutdown did not complete (CSTS={csts:#x})"),
        }
    }
}

struct QueuePair {
    sq: SubmissionQueue,
    cq: CompletionQueue,
    vector: u8,
}

/// An NVMe controller driven through its BAR0.
pub struct Controller {
    regs: Mmio,
    cap: Cap,
    timeouts: Timeouts,
    admin: Option<QueuePair>,
    io: Option<QueuePair>,
    next_cid: u16,
    stats: Stats,
}

impl Controller {
    /// A controller whose BAR0 (memory decode on) is at `bar0`.
    ///
    /// # Safety
    /// `bar0` must be the address of an NVMe controller's BAR0, with memory decode enabled.
    pub unsafe fn new(bar0: u64, timeouts: Timeouts) -> Self {
        // SAFETY: the caller's contract.
        let regs = unsafe { Mmio::new(bar0) };
        let cap = Cap(regs.read64(reg::CAP));
        Controller {
            regs,
            cap,
            timeouts,
            admin: None,
            io: None,
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
    /// Returns the two completions.
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
        let cq = CompletionQueue::new(qid, cq, entries, dstrd);
        let sq = SubmissionQueue::new(qid, sq, entries, dstrd);
        let cq_done = self.admin_ok(Sqe::create_io_cq(qid, entries, cq.base(), msix_entry))?;
        let sq_done = self.admin_ok(Sqe::create_io_sq(qid, entries, sq.base(), qid))?;
        self.io = Some(QueuePair { sq, cq, vector });
        Ok((cq_done, sq_done))
    }

    /// The doorbell offsets (submission tail, completion head) of the I/O queue pair.
    pub fn io_doorbells(&self) -> Option<(u64, u64)> {
        self.io.as_ref().map(|p| (p.sq.doorbell(), p.cq.doorbell()))
    }

    /// Normal shutdown (CC.SHN = 01b), waiting for CSTS.SHST = complete.
    pub fn shutdown(&mut self) -> Result<u64, NvmeError> {
        let cc_now = self.regs.read32(reg::CC);
        self.regs
            .write32(reg::CC, (cc_now & !(0b11 << 14)) | cc::SHN_NORMAL);
        self.stats.register_writes += 1;
        let mut csts_now = 0;
        time::wait_until(self.cap.ready_timeout_ms().max(1000), || {
            csts_now = self.regs.read32(reg::CSTS);
            csts_now & csts::SHST_MASK == csts::SHST_COMPLETE
        })
        .map_err(|_| NvmeError::Shutdown { csts: csts_now })
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
    regs: &Mmio,
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

    #[test]
    fn command_identifiers_skip_0_and_the_reserved_0xffff() {
        assert_eq!(cid_after(1), 2);
        assert_eq!(cid_after(0xfffd), 0xfffe);
        assert_eq!(cid_after(0xfffe), 1);
        assert_eq!(cid_after(0xffff), 1);
    }
}
