//! What can go wrong driving the controller, with the register values and identifiers that tell why.

use core::fmt;

use super::cmd::{Completion, StatusField, opcode};

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
    /// [`Controller::enable`](super::Controller::enable) found the controller enabled or not yet
    /// idle (CC.EN or CSTS.RDY set): the admin queue registers may only be written while it is
    /// disabled.
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
    /// A queue's doorbell, `0x1000 + (2 * qid + completion) * (4 << CAP.DSTRD)`, would lie
    /// outside BAR0: the queue is refused before any command creates it (a write there would
    /// reach whatever follows BAR0, or nothing).
    DoorbellOutsideBar0 {
        /// Queue.
        qid: u16,
        /// The completion queue's head doorbell (else the submission queue's tail doorbell).
        completion: bool,
        /// Its offset in BAR0.
        offset: u64,
        /// BAR0's size in bytes.
        bar0_size: u64,
        /// CAP.DSTRD.
        dstrd: u32,
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
        /// Queue (0: an admin command).
        qid: u16,
        /// Opcode.
        opcode: u8,
        /// The status.
        status: StatusField,
    },
    /// An I/O command before [`Controller::create_io_queue_pair`](super::Controller::create_io_queue_pair).
    NoIoQueue,
    /// CSTS.SHST did not reach "shutdown processing complete".
    Shutdown {
        /// CSTS at the end.
        csts: u32,
        /// Milliseconds waited (the bound; see [`Controller::shutdown`](super::Controller::shutdown)).
        limit_ms: u64,
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
            NvmeError::DoorbellOutsideBar0 {
                qid,
                completion,
                offset,
                bar0_size,
                dstrd,
            } => write!(
                f,
                "queue {qid} refused: its {} doorbell at BAR0+{offset:#x} (CAP.DSTRD={dstrd}) is outside BAR0 \
                 ({bar0_size:#x} bytes){}",
                if completion {
                    "completion head"
                } else {
                    "submission tail"
                },
                if qid == 0 {
                    ": BAR0 is too small for the admin queue's doorbells"
                } else {
                    "; use a lower qid="
                }
            ),
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
                qid: 0,
                opcode,
                status,
            } => write!(
                f,
                "admin command {} (opcode {opcode:#04x}) failed: {status}",
                opcode::admin_name(opcode)
            ),
            NvmeError::Failed {
                qid,
                opcode,
                status,
            } => write!(f, "queue {qid} opcode {opcode:#04x} failed: {status}"),
            NvmeError::NoIoQueue => write!(f, "no I/O queue pair: create one first"),
            NvmeError::Shutdown { csts, limit_ms } => write!(
                f,
                "CSTS.SHST did not become complete within {limit_ms}ms of CC.SHN=normal (CSTS={csts:#x})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_queue_and_the_command() {
        let e = NvmeError::DoorbellOutsideBar0 {
            qid: 7,
            completion: false,
            offset: 0x4800,
            bar0_size: 0x4000,
            dstrd: 8,
        };
        assert_eq!(
            e.to_string(),
            "queue 7 refused: its submission tail doorbell at BAR0+0x4800 (CAP.DSTRD=8) is outside BAR0 \
             (0x4000 bytes); use a lower qid="
        );
        let e = NvmeError::Failed {
            qid: 0,
            opcode: opcode::DELETE_IO_SQ,
            status: StatusField(1 << 8 | 0x01),
        };
        assert_eq!(
            e.to_string(),
            "admin command Delete I/O Submission Queue (opcode 0x00) failed: SCT=1 SC=0x01 (invalid queue identifier)"
        );
    }
}
