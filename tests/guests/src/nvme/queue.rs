//! Submission and completion queues in one DMA page each (physically contiguous, as QEMU's
//! CAP.CQR demands).

use super::cmd::{Completion, Sqe};
use super::regs::doorbell_offset;
use crate::dma::{DmaPage, PAGE_SIZE};

const SQE_SIZE: usize = 64;
const CQE_SIZE: usize = 16;

/// A submission queue: the guest writes entries at the tail and rings the tail doorbell.
pub struct SubmissionQueue {
    page: &'static DmaPage,
    qid: u16,
    entries: u16,
    tail: u16,
    head: u16,
    doorbell: u64,
}

impl SubmissionQueue {
    /// Queue `qid` of `entries` (2-64) in `page`; `dstrd` from CAP places its doorbell.
    pub fn new(qid: u16, page: &'static DmaPage, entries: u16, dstrd: u32) -> Self {
        assert!(
            (2..=(PAGE_SIZE / SQE_SIZE) as u16).contains(&entries),
            "submission queue: 2-64 entries in a page"
        );
        SubmissionQueue {
            page,
            qid,
            entries,
            tail: 0,
            head: 0,
            doorbell: doorbell_offset(qid, false, dstrd),
        }
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Guest-physical base.
    pub fn base(&self) -> u64 {
        self.page.addr()
    }

    /// Entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Offset of the tail doorbell in BAR0.
    pub fn doorbell(&self) -> u64 {
        self.doorbell
    }

    /// Whether one more entry would make the tail catch the head.
    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.entries == self.head
    }

    /// Writes `sqe` at the tail and returns the new tail (the value for the doorbell).
    pub fn push(&mut self, sqe: &Sqe) -> u16 {
        let slot = self
            .page
            .as_mut_ptr()
            .cast::<u32>()
            .wrapping_add(usize::from(self.tail) * SQE_SIZE / 4);
        for (i, &d) in sqe.0.iter().enumerate() {
            // SAFETY: `tail < entries <= 64`, so the slot is inside the page.
            unsafe { slot.add(i).write_volatile(d) }
        }
        self.tail = (self.tail + 1) % self.entries;
        self.tail
    }

    /// Records the head the controller reported in a completion.
    pub fn set_head(&mut self, head: u16) {
        self.head = head % self.entries;
    }
}

/// A completion queue: the controller writes entries with a phase tag that flips on each pass.
pub struct CompletionQueue {
    page: &'static DmaPage,
    qid: u16,
    entries: u16,
    head: u16,
    phase: bool,
    doorbell: u64,
}

impl CompletionQueue {
    /// Queue `qid` of `entries` (2-256) in `page`, which this zeroes (phase tags start at 0).
    pub fn new(qid: u16, page: &'static DmaPage, entries: u16, dstrd: u32) -> Self {
        assert!(
            (2..=(PAGE_SIZE / CQE_SIZE) as u16).contains(&entries),
            "completion queue: 2-256 entries in a page"
        );
        page.zero();
        CompletionQueue {
            page,
            qid,
            entries,
            head: 0,
            phase: true,
            doorbell: doorbell_offset(qid, true, dstrd),
        }
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Guest-physical base.
    pub fn base(&self) -> u64 {
        self.page.addr()
    }

    /// Entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Offset of the head doorbell in BAR0.
    pub fn doorbell(&self) -> u64 {
        self.doorbell
    }

    /// The entry at the head, if the controller has posted it (its phase tag matches).
    pub fn peek(&self) -> Option<Completion> {
        let slot = self
            .page
            .as_mut_ptr()
            .cast::<u32>()
            .wrapping_add(usize::from(self.head) * CQE_SIZE / 4);
        // SAFETY: `head < entries <= 256`, so the entry is inside the page. Dword 3 (phase) first:
        // the controller writes the entry before the interrupt, and the phase tells it is new.
        let d3 = unsafe { slot.add(3).read_volatile() };
        if (d3 >> 16 & 1 == 1) != self.phase {
            return None;
        }
        // SAFETY: as above.
        let d = unsafe {
            [
                slot.read_volatile(),
                slot.add(1).read_volatile(),
                slot.add(2).read_volatile(),
                d3,
            ]
        };
        Some(Completion::decode(d))
    }

    /// Consumes the head entry; returns the new head (the value for the doorbell).
    pub fn pop(&mut self) -> u16 {
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.head
    }
}
