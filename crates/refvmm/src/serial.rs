//! COM1 (ports 0x3F8-0x3FF, IRQ 4): vm-superio's 16550A model, output to a writer (stdout).
//!
//! The interrupt line is an eventfd wired to GSI 4 with an irqfd, so a guest that enables the
//! transmit-empty interrupt gets it from the in-kernel IOAPIC; a guest that just writes bytes
//! (the test guests do, one `out` per byte) causes one port-IO exit per byte and nothing else.

use std::io::{self, Write};

use kvm_runloop::reexports::vm_device::MutDevicePio;
use kvm_runloop::reexports::vm_device::bus::{PioAddress, PioAddressOffset};
use kvm_runloop::reexports::vmm_sys_util::eventfd::EventFd;
use vm_superio::{Serial, Trigger};

/// First port of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// Its ISA IRQ (GSI).
pub const COM1_GSI: u32 = 4;

/// vm-superio's interrupt line as an eventfd (a newtype: neither type is ours).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// COM1 as a port-IO device.
pub struct Com1<W: Write + Send> {
    serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, W>,
}

impl<W: Write + Send> Com1<W> {
    /// A UART whose transmitted bytes go to `out` and whose interrupt signals `irq`.
    pub fn new(irq: EventFd, out: W) -> Self {
        Com1 {
            serial: Serial::new(EventFdTrigger(irq), out),
        }
    }
}

impl<W: Write + Send> Com1<W> {
    /// Queues bytes the console typed for the guest to read (raising the receive interrupt if
    /// the guest enabled it); how many fit in the 64-byte receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl<W: Write + Send> MutDevicePio for Com1<W> {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        // Registers are bytes; a wider read returns the register in the low byte.
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = self.serial.read(offset as u8);
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if let Some(&b) = data.first() {
            if let Err(e) = self.serial.write(offset as u8, b) {
                log::warn!("COM1: write of {b:#04x} at +{offset}: {e:?}");
            }
        }
    }
}

/// Stdout for the guest's console, written a line at a time.
///
/// vm-superio flushes its writer after every byte the guest sends; passing that on would cost a
/// `write(2)` per byte on top of the byte's port-IO exit. Rust's stdout is a `LineWriter`, so
/// `flush` here leaves the flushing to it: each guest line reaches stdout whole, at its newline,
/// and interleaves cleanly with refvmm's own messages. The run flushes stdout once the vCPU has
/// stopped, so a last line without a newline is not lost.
pub struct ConsoleOut;

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A closed pipe must not take down the VMM: the guest keeps running, its output is lost.
        match io::stdout().lock().write(buf) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(buf.len()),
            r => r,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_thr_reach_the_writer() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut com = Com1::new(irq, Vec::new());
        for b in b"hi\n" {
            com.pio_write(PioAddress(COM1_PORT), 0, &[*b]);
        }
        let mut lsr = [0u8];
        com.pio_read(PioAddress(COM1_PORT), 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        assert_eq!(com.serial.writer(), b"hi\n");
    }

    #[test]
    fn input_is_read_from_rbr_up_to_the_fifo_size() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut com = Com1::new(irq, Vec::new());
        assert_eq!(com.enqueue_input(&[b'x'; 100]), 64);
        assert_eq!(com.enqueue_input(b"y"), 0, "the FIFO is full");
        let mut lsr = [0u8];
        com.pio_read(PioAddress(COM1_PORT), 5, &mut lsr);
        assert_ne!(lsr[0] & 1, 0, "data ready");
        let mut rbr = [0u8];
        com.pio_read(PioAddress(COM1_PORT), 0, &mut rbr);
        assert_eq!(rbr[0], b'x');
    }
}
