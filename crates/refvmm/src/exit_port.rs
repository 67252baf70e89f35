//! The exit-status port (0x501, QEMU's `isa-debug-exit` default): the guest writes one byte, the
//! run ends, and that byte becomes refvmm's exit status (the test guests write 0 for pass, 1 for
//! fail, 2 for a crash). The device stops every vCPU from inside its own handler; kvm-runloop
//! completes the `out` before `run` returns.

use std::sync::OnceLock;

use kvm_runloop::StopHandle;
use kvm_runloop::reexports::vm_device::DevicePio;
use kvm_runloop::reexports::vm_device::bus::{PioAddress, PioAddressOffset};

/// The port.
pub const EXIT_PORT: u16 = 0x501;

/// The exit-status device.
pub struct ExitPort {
    stop: StopHandle,
    /// The first byte written; later ones are ignored.
    status: OnceLock<u8>,
}

impl ExitPort {
    /// A port that stops the VM through `stop`.
    pub fn new(stop: StopHandle) -> Self {
        ExitPort {
            stop,
            status: OnceLock::new(),
        }
    }

    /// The byte the guest wrote, if it did (the first one counts).
    pub fn status(&self) -> Option<u8> {
        self.status.get().copied()
    }
}

impl DevicePio for ExitPort {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn pio_write(&self, _base: PioAddress, _offset: PioAddressOffset, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        let _ = self.status.set(byte);
        self.stop.stop();
    }
}
