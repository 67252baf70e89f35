//! Page-aligned buffers that devices read and write by DMA.
//!
//! The guest's memory is identity-mapped, so a buffer's pointer is also its guest-physical
//! address, which is what a device (and the VMM's IOMMU mapping) sees. The buffers live in
//! `.bss`; the compiler is never told what a device wrote, so reads of device-written memory go
//! through [`DmaPage::read`] (volatile).

use core::cell::UnsafeCell;

/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;

/// One 4 KiB, 4 KiB-aligned page of DMA memory.
#[repr(C, align(4096))]
pub struct DmaPage(UnsafeCell<[u8; PAGE_SIZE]>);

// SAFETY: the guest runs on one vCPU and only its main flow touches these pages (interrupt stubs
// never do), so there is no concurrent access from Rust; the device's accesses are what the
// volatile reads account for.
unsafe impl Sync for DmaPage {}

impl DmaPage {
    /// A zeroed page (place it in a `static`).
    pub const fn new() -> Self {
        DmaPage(UnsafeCell::new([0; PAGE_SIZE]))
    }

    /// The guest-physical (= virtual) address.
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    /// A raw pointer to the first byte.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.0.get().cast()
    }

    /// Copies `src` to offset `at` (volatile, so the copy happens before a later doorbell write).
    pub fn write(&self, at: usize, src: &[u8]) {
        assert!(
            at + src.len() <= PAGE_SIZE,
            "DMA page write beyond the page"
        );
        for (i, &b) in src.iter().enumerate() {
            // SAFETY: in bounds (checked above); the page is only used from this flow.
            unsafe { core::ptr::write_volatile(self.as_mut_ptr().add(at + i), b) }
        }
    }

    /// Copies from offset `at` into `dst` (volatile: the device may have written it).
    pub fn read(&self, at: usize, dst: &mut [u8]) {
        assert!(at + dst.len() <= PAGE_SIZE, "DMA page read beyond the page");
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above).
            *b = unsafe { core::ptr::read_volatile(self.as_mut_ptr().add(at + i)) };
        }
    }

    /// Zeroes the page (512 volatile 8-byte stores).
    pub fn zero(&self) {
        let p = self.as_mut_ptr().cast::<u64>();
        for i in 0..PAGE_SIZE / 8 {
            // SAFETY: in bounds; the page is 4 KiB aligned, so 8-byte aligned.
            unsafe { core::ptr::write_volatile(p.add(i), 0) }
        }
    }

    /// Fills the page with `byte`.
    pub fn fill(&self, byte: u8) {
        for i in 0..PAGE_SIZE {
            // SAFETY: in bounds.
            unsafe { core::ptr::write_volatile(self.as_mut_ptr().add(i), byte) }
        }
    }
}

impl Default for DmaPage {
    fn default() -> Self {
        Self::new()
    }
}
