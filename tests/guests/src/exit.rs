//! Ending the run with a status the VMM (or QEMU) turns into an exit code.
//!
//! The guest writes one byte to I/O port [`EXIT_PORT`] (0x501): 0 = pass, 1 = fail, 2 = crash
//! (panic or CPU exception). 0x501 is QEMU's `isa-debug-exit` default port, so plain
//! `-device isa-debug-exit` works; QEMU then exits with `(status << 1) | 1` (1, 3, 5). The
//! reference VMM traps the same port and ends the run with the status itself. If nothing ends the
//! run, the vCPU halts with interrupts off.

use crate::io::outb;

/// The debug-exit I/O port.
pub const EXIT_PORT: u16 = 0x501;

/// The final status of a guest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Every step passed.
    Pass = 0,
    /// A step failed.
    Fail = 1,
    /// A panic or an unexpected CPU exception.
    Crash = 2,
}

impl Status {
    /// The exit code QEMU's `isa-debug-exit` turns this status into.
    pub const fn qemu_exit_code(self) -> i32 {
        ((self as i32) << 1) | 1
    }
}

/// Writes `status` to the debug-exit port, then halts forever.
pub fn exit(status: Status) -> ! {
    outb(EXIT_PORT, status as u8);
    loop {
        // SAFETY: `cli; hlt` only stops this vCPU; nothing else runs.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
