//! The runtime between the entry stubs and a program's `main`: boot information, the IDT, the
//! local APIC and clock, the final verdict and the panic handler.
//!
//! A program is a function `fn(&BootInfo, &mut Report)` registered with [`guest_main!`](crate::guest_main):
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! guests::guest_main!(main);
//! fn main(boot: &guests::BootInfo, report: &mut guests::Report) {
//!     report.pass("hello", format_args!("cmdline {:?}", boot.cmdline));
//! }
//! ```

use crate::cmdline::{Cmdline, MAX_LEN};
use crate::exit::{Status, exit};
use crate::lapic::{self, LocalApic};
use crate::report::Report;
use crate::{idt, note, time};

/// The EAX value a multiboot (v1) loader passes.
pub const MULTIBOOT_MAGIC: u64 = 0x2bad_b002;

/// Milliseconds between APIC timer ticks (the longest a `hlt` sleeps).
pub const TICK_MS: u32 = 1;

/// Which loader started the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// A 64-bit ELF loader (the reference VMM): entered at `_start64`.
    Elf64,
    /// A multiboot v1 loader (QEMU `-kernel`): entered at the 32-bit entry.
    Multiboot,
}

/// What the guest knows about where it runs.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The loader.
    pub loader: Loader,
    /// The command line (empty if none was given).
    pub cmdline: Cmdline<'static>,
    /// RAM size in bytes: `mem=` on the command line, else the multiboot memory info.
    pub ram_bytes: Option<u64>,
    /// The local APIC.
    pub apic: LocalApic,
}

/// Reads a NUL-terminated string of at most [`MAX_LEN`] bytes at guest-physical `addr`, byte by
/// byte (never past the NUL, which may be the last byte of RAM).
///
/// # Safety
/// `addr` must be 0 or point at readable memory up to the NUL or `MAX_LEN` bytes.
unsafe fn c_string(addr: u64) -> &'static [u8] {
    if addr == 0 {
        return &[];
    }
    let p = addr as *const u8;
    let mut len = 0;
    // SAFETY: the caller guarantees readability up to the NUL.
    while len < MAX_LEN && unsafe { p.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes were just read; nothing writes them afterwards.
    unsafe { core::slice::from_raw_parts(p, len) }
}

/// Called by `guests_rust_entry` (see [`guest_main!`](crate::guest_main)): sets the machine up,
/// runs `main`, prints the verdict and ends the run. Never returns.
pub fn start(
    cmdline_addr: u64,
    mb_info: u64,
    mb_magic: u64,
    program: &'static str,
    main: fn(&BootInfo, &mut Report),
) -> ! {
    idt::install();
    let (loader, cmdline, mut ram_bytes) = if mb_magic == MULTIBOOT_MAGIC && mb_info != 0 {
        // Multiboot information (multiboot spec 3.3): flags, mem_lower, mem_upper, ..., cmdline at 16.
        let info = mb_info as *const u32;
        // SAFETY: a multiboot loader passes a valid information structure in identity-mapped RAM.
        let header = unsafe { (info.read(), info.add(2).read(), info.add(4).read()) };
        let (flags, mem_upper_kib, cmdline_ptr) = header;
        let ram = (flags & 1 != 0).then(|| (u64::from(mem_upper_kib) + 1024) * 1024);
        let text: &[u8] = if flags & 4 != 0 {
            // SAFETY: flag bit 2 says the command line pointer is valid.
            unsafe { c_string(u64::from(cmdline_ptr)) }
        } else {
            &[]
        };
        (Loader::Multiboot, Cmdline::new(text).skip_first_word(), ram)
    } else {
        // SAFETY: the boot contract: RDI is 0 or a NUL-terminated string in RAM.
        let text = unsafe { c_string(cmdline_addr) };
        (Loader::Elf64, Cmdline::new(text), None)
    };
    let apic = lapic::init(TICK_MS);
    time::set_clock(apic.timer_runs, apic.tsc_per_ms);
    match cmdline.number("mem") {
        Ok(Some(m)) => ram_bytes = Some(m),
        Ok(None) => {}
        Err(e) => note!("{e}; ignored"),
    }
    let info = BootInfo {
        loader,
        cmdline,
        ram_bytes,
        apic,
    };
    note!(
        "program={program} loader={} cmdline=\"{}\" ram={} apic-id={} apic-timer={} clock={}",
        match loader {
            Loader::Elf64 => "elf64",
            Loader::Multiboot => "multiboot",
        },
        cmdline.as_str(),
        Mib(ram_bytes),
        apic.id,
        if apic.timer_runs {
            "1ms-tick"
        } else {
            "none(waits-are-iteration-bounded)"
        },
        Khz(apic.tsc_per_ms),
    );
    let mut report = Report::new(program);
    main(&info, &mut report);
    let unexpected = idt::unexpected_irqs();
    if unexpected != 0 {
        report.fail(
            "unexpected-interrupts",
            format_args!("{unexpected} interrupts on vectors nothing programmed"),
        );
    }
    let status = report.finish();
    exit(status)
}

struct Mib(Option<u64>);
impl core::fmt::Display for Mib {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(b) => write!(f, "{}MiB", b >> 20),
            None => f.write_str("unknown"),
        }
    }
}

struct Khz(Option<u64>);
impl core::fmt::Display for Khz {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(per_ms) => write!(f, "tsc-{}MHz", per_ms / 1000),
            None => f.write_str("none"),
        }
    }
}

/// Defines the guest's Rust entry point (`guests_rust_entry`, called by the boot stubs) to run
/// `main` under [`start`]. Use once, in a `#![no_std] #![no_main]` binary.
#[macro_export]
macro_rules! guest_main {
    ($main:path) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn guests_rust_entry(cmdline: u64, mb_info: u64, mb_magic: u64) -> ! {
            $crate::rt::start(cmdline, mb_info, mb_magic, env!("CARGO_BIN_NAME"), $main)
        }
    };
}

#[cfg(all(feature = "image", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // One line: `PanicInfo`'s own Display puts the message on a second line.
    match info.location() {
        Some(l) => crate::println!(
            "GUEST: PANIC at {}:{}:{}: {}",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        ),
        None => crate::println!("GUEST: PANIC {}", info.message()),
    }
    crate::println!("GUEST: RESULT CRASH panic");
    exit(Status::Crash)
}

// Keeps `Status` used in builds without the panic handler.
const _: Status = Status::Crash;
