//! The interrupt descriptor table and the CPU exception report.
//!
//! | vectors | handler |
//! |---|---|
//! | 0x00-0x1F | CPU exceptions: print the registers, end the run with [`Status::Crash`](crate::exit::Status) |
//! | 0x20 | local APIC timer tick (counted: [`crate::time`]) |
//! | 0x21-0x3F | counted interrupts; [`MSIX_VECTOR_BASE`].. are the MSI-X vectors |
//! | 0x40-0xFE | counted as unexpected, acknowledged |
//! | 0xFF | spurious (no EOI) |
//!
//! The counting stubs are in `boot.rs`: each one increments its counter, writes the local APIC
//! EOI register and returns. Rust code reads the counters with [`irq_count`].

use core::sync::atomic::{AtomicU64, Ordering};

/// First vector of the counted interrupt stubs.
pub const IRQ_BASE: u8 = 0x20;
/// Number of counted vectors.
pub const IRQ_VECTORS: usize = 32;
/// The local APIC timer vector.
pub const TIMER_VECTOR: u8 = 0x20;
/// The vector of MSI-X table entry 0; entry `n` uses `MSIX_VECTOR_BASE + n`.
pub const MSIX_VECTOR_BASE: u8 = 0x30;
/// How many MSI-X entries get a counted vector.
pub const MSIX_VECTORS: u16 = 16;
/// The spurious-interrupt vector programmed into the local APIC.
pub const SPURIOUS_VECTOR: u8 = 0xff;

#[unsafe(export_name = "guests_irq_counts")]
static IRQ_COUNTS: [AtomicU64; IRQ_VECTORS] = [const { AtomicU64::new(0) }; IRQ_VECTORS];
#[unsafe(export_name = "guests_unexpected_irqs")]
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);

/// How many interrupts arrived on `vector` (0 for vectors outside 0x20-0x3F).
pub fn irq_count(vector: u8) -> u64 {
    match vector.checked_sub(IRQ_BASE) {
        Some(i) if usize::from(i) < IRQ_VECTORS => {
            IRQ_COUNTS[usize::from(i)].load(Ordering::SeqCst)
        }
        _ => 0,
    }
}

/// Counts an interrupt on `vector` (0x20-0x3F) as its stub would: how host tests' device models
/// deliver an MSI-X message.
#[cfg(test)]
pub(crate) fn deliver_for_test(vector: u8) {
    let i = usize::from(vector - IRQ_BASE);
    IRQ_COUNTS[i].fetch_add(1, Ordering::SeqCst);
}

/// How many interrupts arrived on vectors 0x40-0xFE, which nothing programs.
pub fn unexpected_irqs() -> u64 {
    UNEXPECTED.load(Ordering::SeqCst)
}

/// An interrupt gate in the 64-bit IDT format (SDM 6.14.1).
pub const fn gate(handler: u64, code_selector: u16) -> [u64; 2] {
    const PRESENT_RING0_INTERRUPT_GATE: u64 = 0x8e;
    let lo = (handler & 0xffff)
        | (code_selector as u64) << 16
        | PRESENT_RING0_INTERRUPT_GATE << 40
        | ((handler >> 16) & 0xffff) << 48;
    [lo, handler >> 32]
}

/// The registers the exception stub saved, lowest address first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    /// The vector (pushed by the stub).
    pub vector: u64,
    /// The error code (0 for exceptions without one).
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// The mnemonic of exception `vector`.
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved 15",
        "#MF x87 error",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD error",
        "#VE virtualization",
        "#CP control protection",
        "reserved 22",
        "reserved 23",
        "reserved 24",
        "reserved 25",
        "reserved 26",
        "reserved 27",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved 31",
    ];
    usize::try_from(vector)
        .ok()
        .and_then(|v| NAMES.get(v))
        .copied()
        .unwrap_or("not an exception")
}

#[cfg(all(feature = "image", not(test)))]
mod image {
    use core::cell::UnsafeCell;

    use super::*;
    use crate::exit::{Status, exit};
    use crate::println;

    /// Selector of the 64-bit code segment in the guest's own GDT (boot.rs).
    const CODE64: u16 = 0x08;

    #[repr(C, align(16))]
    struct Idt(UnsafeCell<[[u64; 2]; 256]>);
    // SAFETY: written once by `install` before interrupts are enabled, then only read by the CPU.
    unsafe impl Sync for Idt {}
    static IDT: Idt = Idt(UnsafeCell::new([[0; 2]; 256]));

    unsafe extern "C" {
        static guests_exc_stubs: [u64; 32];
        static guests_irq_stubs: [u64; IRQ_VECTORS];
        fn guests_isr_unexpected();
        fn guests_isr_spurious();
    }

    /// Fills the IDT and loads it (`lidt`).
    pub fn install() {
        // SAFETY: the stub tables are immutable data defined in boot.rs.
        let (exc, irq) = unsafe { (&guests_exc_stubs, &guests_irq_stubs) };
        let unexpected = gate(guests_isr_unexpected as *const () as u64, CODE64);
        let spurious = gate(guests_isr_spurious as *const () as u64, CODE64);
        // SAFETY: interrupts are off and nothing else references the IDT yet.
        let idt = unsafe { &mut *IDT.0.get() };
        for (v, entry) in idt.iter_mut().enumerate() {
            *entry = match v {
                0..=31 => gate(exc[v], CODE64),
                32..=63 => gate(irq[v - 32], CODE64),
                255 => spurious,
                _ => unexpected,
            };
        }
        #[repr(C, packed)]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        let ptr = Pointer {
            limit: (256 * 16 - 1) as u16,
            base: IDT.0.get() as u64,
        };
        // SAFETY: the IDT is a static with valid gates for every vector.
        unsafe {
            core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags))
        }
    }

    /// Called by the exception stub: report and end the run.
    #[unsafe(no_mangle)]
    extern "C" fn guests_exception(frame: &ExceptionFrame) -> ! {
        let cr2: u64;
        // SAFETY: reading CR2 has no side effects.
        unsafe {
            core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
        }
        let f = frame;
        println!(
            "GUEST: EXCEPTION vector={} ({}) error={:#x} rip={:#x} rsp={:#x} rflags={:#x} cr2={:#x}",
            f.vector,
            exception_name(f.vector),
            f.error,
            f.rip,
            f.rsp,
            f.rflags,
            cr2
        );
        println!(
            "GUEST: EXCEPTION rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
            f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp
        );
        println!(
            "GUEST: RESULT CRASH cpu exception {} at rip={:#x}",
            f.vector, f.rip
        );
        exit(Status::Crash)
    }
}

#[cfg(all(feature = "image", not(test)))]
pub use image::install;

/// Fills the IDT and loads it (does nothing outside a guest image).
#[cfg(not(all(feature = "image", not(test))))]
pub fn install() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_layout() {
        let g = gate(0x1234_5678_9abc_def0, 0x08);
        assert_eq!(g[0] & 0xffff, 0xdef0);
        assert_eq!((g[0] >> 16) & 0xffff, 0x08);
        assert_eq!((g[0] >> 40) & 0xff, 0x8e);
        assert_eq!((g[0] >> 48) & 0xffff, 0x9abc);
        assert_eq!(g[1], 0x1234_5678);
    }

    #[test]
    fn names() {
        assert_eq!(exception_name(14), "#PF page fault");
        assert_eq!(exception_name(99), "not an exception");
        assert_eq!(irq_count(0x10), 0);
        assert_eq!(irq_count(0x40), 0);
    }
}
