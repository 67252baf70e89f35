//! Text output on the first serial port (COM1, I/O port 0x3F8).
//!
//! The guest writes the transmit register without initialising the UART or polling the line
//! status register: QEMU's and the reference VMM's 16550 accept every byte at once, and each
//! poll would cost one more exit. One byte is one `out`, so one exit under a VMM.

use core::fmt;

use crate::io::outb;

/// The I/O port of COM1's transmit holding register.
pub const COM1: u16 = 0x3f8;

/// A `core::fmt::Write` sink that sends bytes to COM1.
#[derive(Debug, Default, Clone, Copy)]
pub struct Serial;

impl Serial {
    /// Sends raw bytes.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            outb(COM1, b);
        }
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

/// Prints to COM1, like `std::print!`.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints a line to COM1, like `std::println!` (a bare `\n`, no carriage return).
#[macro_export]
macro_rules! println {
    () => { $crate::serial::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
