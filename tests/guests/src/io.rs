//! Port I/O, MSRs and memory-mapped registers: the only places the guest touches hardware.
//!
//! MMIO goes through volatile 32-bit accesses (one `mov` each), which every VMM decodes and which
//! split cleanly into one exit per access when a region is trapped.

use core::arch::asm;

/// Writes a byte to an I/O port.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the guest runs in ring 0.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes 16 bits to an I/O port.
#[inline]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes 32 bits to an I/O port.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads 16 bits from an I/O port.
#[inline]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads 32 bits from an I/O port.
#[inline]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a model-specific register.
///
/// # Safety
/// `msr` must exist on this CPU (reading a missing MSR raises #GP).
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// `msr` must exist and `value` must be valid for it; the write may change how the CPU behaves.
#[inline]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR and value are valid.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// 32-bit access to a block of device registers, by offset: what drivers are written against, so
/// that host tests can put a model of the device behind them. [`Mmio`] is the real one.
pub trait Registers {
    /// A 32-bit register read at `offset` (4-byte aligned).
    fn read32(&self, offset: u64) -> u32;

    /// A 32-bit register write at `offset` (4-byte aligned).
    fn write32(&self, offset: u64, value: u32);

    /// A 64-bit register read as two 32-bit reads, low half first (NVMe and MSI-X allow either;
    /// two dword accesses are what every VMM and trap handler decodes).
    fn read64(&self, offset: u64) -> u64 {
        let lo = self.read32(offset);
        let hi = self.read32(offset + 4);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// A 64-bit register write as two 32-bit writes, low half first.
    fn write64(&self, offset: u64, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

impl<R: Registers + ?Sized> Registers for &R {
    fn read32(&self, offset: u64) -> u32 {
        (**self).read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        (**self).write32(offset, value)
    }
}

/// A window of memory-mapped registers at a guest-physical address (identity-mapped, so the
/// address is also the pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// Registers starting at guest-physical `base`.
    ///
    /// # Safety
    /// `base` must be the address of device registers (or RAM) that stay mapped while the value
    /// is used, and accesses at the offsets used later must be valid for that device.
    pub const unsafe fn new(base: u64) -> Self {
        Mmio { base }
    }

    /// The base address.
    pub fn base(&self) -> u64 {
        self.base
    }
}

impl Registers for Mmio {
    #[inline]
    fn read32(&self, offset: u64) -> u32 {
        debug_assert!(offset % 4 == 0);
        // SAFETY: `new`'s contract: the window is mapped device memory or RAM.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    #[inline]
    fn write32(&self, offset: u64, value: u32) {
        debug_assert!(offset % 4 == 0);
        // SAFETY: `new`'s contract.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the counter (CR4.TSD is clear: ring 0 anyway).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    u64::from(hi) << 32 | u64::from(lo)
}
