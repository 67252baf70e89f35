//! The local APIC in xAPIC mode (registers at 0xFEE0_0000): enable, timer tick, EOI, and the
//! MSI address that targets this CPU.
//!
//! MSI and MSI-X messages a device sends are writes to `0xFEE0_0000 | dest_id << 12` with the
//! vector in the data (fixed delivery, edge; Intel SDM 10.11). The interrupt stubs write EOI
//! themselves, so Rust code never has to.

use crate::idt::{SPURIOUS_VECTOR, TIMER_VECTOR};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::io::{Mmio, Registers, rdmsr, rdtsc, wrmsr};

/// Architectural default base of the local APIC registers (the interrupt stubs assume it).
pub const BASE: u64 = 0xfee0_0000;
/// The MSI address window: `MSI_ADDRESS | dest << 12`.
pub const MSI_ADDRESS: u32 = 0xfee0_0000;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

const ID: u64 = 0x20;
const VERSION: u64 = 0x30;
const TPR: u64 = 0x80;
const SVR: u64 = 0xf0;
const ESR: u64 = 0x280;
const LVT_TIMER: u64 = 0x320;
const LVT_THERMAL: u64 = 0x330;
const LVT_PERF: u64 = 0x340;
const LVT_LINT0: u64 = 0x350;
const LVT_ERROR: u64 = 0x370;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const DIVIDE_BY_1: u32 = 0b1011;

/// The timer's initial count, rewritten by the timer interrupt stub (boot.rs) on every tick.
///
/// Why: on the KVM hosts these guests are tested on (the PVM backend), the in-kernel local
/// APIC's periodic timer fires once and then never again, so a `hlt` wait that needs a second
/// tick sleeps forever (measured: a periodic 1 ms timer on vector 0x20 woke one `hlt` and not
/// the next; re-arming TMICT in the handler gave a tick every millisecond). Rewriting the
/// initial count restarts the period, which changes nothing where the periodic mode works
/// (QEMU TCG, other KVMs). 0 while the timer is off.
#[unsafe(no_mangle)]
pub static GUESTS_TIMER_INITIAL: AtomicU32 = AtomicU32::new(0);

/// Timer counts per millisecond: QEMU and KVM both clock the APIC timer at 1 GHz (1 ns per
/// count at divide-by-1), so this gives a 1 ms tick there.
pub const COUNTS_PER_MS: u32 = 1_000_000;

/// The MSI address (low 32 bits) that delivers to the local APIC with ID `apic_id`, physical
/// destination mode, no redirection hint.
pub const fn msi_address(apic_id: u8) -> u32 {
    MSI_ADDRESS | (apic_id as u32) << 12
}

/// The MSI data for `vector`: fixed delivery, edge triggered.
pub const fn msi_data(vector: u8) -> u32 {
    vector as u32
}

/// What [`init`] found and set up.
#[derive(Debug, Clone, Copy)]
pub struct LocalApic {
    /// This CPU's APIC ID (the MSI destination).
    pub id: u8,
    /// The version register.
    pub version: u32,
    /// IA32_APIC_BASE as found at boot.
    pub base_msr_at_boot: u64,
    /// Whether the timer counts (then `hlt` waits are bounded by its tick).
    pub timer_runs: bool,
    /// Time-stamp counter increments per millisecond, measured against the timer.
    pub tsc_per_ms: Option<u64>,
}

/// Timer counts the TSC calibration measures over (4 ms at 1 GHz).
const CALIBRATION_COUNTS: u32 = 4 * COUNTS_PER_MS;

/// Enables the local APIC at [`BASE`] in xAPIC mode, masks LINT0 (firmware leaves the 8259 PIC
/// there; its vectors would land on CPU exceptions), and starts a periodic timer on
/// [`TIMER_VECTOR`] every `tick_ms` milliseconds, after measuring the TSC frequency against it.
/// Interrupts stay disabled.
pub fn init(tick_ms: u32) -> LocalApic {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let msr = unsafe { rdmsr(IA32_APIC_BASE) };
    let want = (msr & 0xfff & !APIC_BASE_X2APIC) | BASE | APIC_BASE_ENABLE;
    if msr != want {
        if msr & APIC_BASE_X2APIC != 0 {
            // x2APIC -> xAPIC is only allowed through the disabled state (SDM 10.12.5).
            // SAFETY: disabling the APIC is always a legal transition.
            unsafe { wrmsr(IA32_APIC_BASE, msr & !(APIC_BASE_X2APIC | APIC_BASE_ENABLE)) };
        }
        // SAFETY: xAPIC mode at the default base, which boot.rs maps uncached.
        unsafe { wrmsr(IA32_APIC_BASE, want) };
    }
    // SAFETY: the APIC is enabled at BASE, which the guest's page tables map.
    let apic = unsafe { Mmio::new(BASE) };
    apic.write32(SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    apic.write32(TPR, 0);
    apic.write32(LVT_LINT0, LVT_MASKED);
    apic.write32(LVT_THERMAL, LVT_MASKED);
    apic.write32(LVT_PERF, LVT_MASKED);
    apic.write32(LVT_ERROR, LVT_MASKED);
    apic.write32(ESR, 0);
    let id = (apic.read32(ID) >> 24) as u8;
    let version = apic.read32(VERSION);

    // One-shot, masked, from the top: a stopwatch to measure the TSC against (no interrupts).
    apic.write32(TIMER_DIVIDE, DIVIDE_BY_1);
    apic.write32(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    apic.write32(TIMER_INITIAL, u32::MAX);
    let (c0, t0) = (apic.read32(TIMER_CURRENT), rdtsc());
    let mut tsc_per_ms = None;
    let mut timer_runs = false;
    // Bounded: 10 million reads is seconds even where every read is an exit.
    for i in 0..10_000_000u32 {
        let (c, t) = (apic.read32(TIMER_CURRENT), rdtsc());
        let counted = c0.wrapping_sub(c);
        timer_runs |= counted != 0;
        if counted >= CALIBRATION_COUNTS {
            let per_ms = (t.wrapping_sub(t0) as u128 * u128::from(COUNTS_PER_MS)
                / u128::from(counted)) as u64;
            tsc_per_ms = (per_ms > 0).then_some(per_ms);
            break;
        }
        if !timer_runs && (i >= 100_000 || t.wrapping_sub(t0) > 1 << 32) {
            break; // the timer does not count
        }
    }
    if timer_runs {
        let initial = COUNTS_PER_MS.saturating_mul(tick_ms.max(1));
        GUESTS_TIMER_INITIAL.store(initial, Ordering::SeqCst);
        apic.write32(LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(TIMER_VECTOR));
        apic.write32(TIMER_INITIAL, initial);
    } else {
        apic.write32(TIMER_INITIAL, 0);
    }
    LocalApic {
        id,
        version,
        base_msr_at_boot: msr,
        timer_runs,
        tsc_per_ms,
    }
}
