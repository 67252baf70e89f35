//! How the guest ends the machine: the FADT's sleep control and reset registers (hardware-reduced
//! ACPI, ACPI 6.5 4.8.3.7 "Sleep Control and Status Registers" and 4.8.3.6 "Reset Register"),
//! and the 8042 keyboard controller's reset line (port 0x64, command 0xFE), which Linux tries
//! after the ACPI reset (arch/x86/kernel/reboot.c, `BOOT_ACPI` then `BOOT_KBD`).
//!
//! Linux powers off (`poweroff`, `acpi_power_off`) by writing `SLP_TYP` (from `\_S5`) and `SLP_EN`
//! to the sleep control register, and resets (`reboot`; a panic with `panic=-1`, which calls
//! `emergency_restart`) by writing the reset value to the reset register. Each write records the
//! event and stops every vCPU from inside the handler, so the run ends at once.

use std::sync::{Arc, OnceLock};

use kvm_runloop::reexports::vm_device::DevicePio;
use kvm_runloop::reexports::vm_device::bus::{PioAddress, PioAddressOffset};
use kvm_runloop::{StopHandle, Vm};

/// The sleep control register (one byte).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The sleep status register (one byte; reads 0: the machine never sleeps and wakes).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// The reset register (one byte).
pub const RESET_PORT: u16 = 0x602;
/// What the guest writes to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 1;
/// The `SLP_TYP` value `\_S5` names.
pub const SLP_TYP_S5: u8 = 5;
/// The 8042 command port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// 8042 command "pulse output line 0", wired to the CPU's reset on a PC.
const I8042_RESET: u8 = 0xfe;
/// Sleep control: `SLP_EN` (bit 5) and `SLP_TYP` (bits 4:2).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// How the guest ended the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// ACPI S5 through the sleep control register (`poweroff`).
    PowerOff,
    /// A reset: the ACPI reset register or the 8042 reset line (`reboot`, or a panic with
    /// `panic=-1`).
    Reset {
        /// Which register did it.
        via: &'static str,
    },
}

/// The sleep control/status and reset registers, and the 8042 command port.
pub struct PowerRegisters {
    stop: StopHandle,
    event: OnceLock<PowerEvent>,
}

impl PowerRegisters {
    /// Puts the registers on `vm`'s port bus.
    pub fn install(vm: &Vm) -> Result<Arc<Self>, kvm_runloop::Error> {
        let regs = Arc::new(PowerRegisters {
            stop: vm.stop_handle(),
            event: OnceLock::new(),
        });
        vm.bus()
            .register_pio("acpi-sleep-reset", SLEEP_CONTROL_PORT, 3, regs.clone())?;
        vm.bus()
            .register_pio("i8042-command", I8042_COMMAND_PORT, 1, regs.clone())?;
        Ok(regs)
    }

    /// What the guest did, if it powered off or reset (the first event counts).
    pub fn event(&self) -> Option<PowerEvent> {
        self.event.get().copied()
    }

    fn end(&self, event: PowerEvent) {
        let _ = self.event.set(event);
        self.stop.stop();
    }

    /// Handles a byte written to `port`.
    fn write(&self, port: u16, value: u8) {
        match port {
            SLEEP_CONTROL_PORT => {
                let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && slp_typ == SLP_TYP_S5 {
                    self.end(PowerEvent::PowerOff);
                } else if value & SLP_EN != 0 {
                    log::warn!(
                        "guest asked for sleep type {slp_typ}, which the DSDT does not offer; ignored"
                    );
                }
            }
            RESET_PORT if value == RESET_VALUE => self.end(PowerEvent::Reset {
                via: "the ACPI reset register",
            }),
            I8042_COMMAND_PORT if value == I8042_RESET => self.end(PowerEvent::Reset {
                via: "the 8042 reset line",
            }),
            _ => {}
        }
    }
}

impl DevicePio for PowerRegisters {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // Sleep status: never woken. 8042 status: input buffer empty (Linux's `kb_wait` polls
        // for bit 1 clear before sending the reset command).
        data.fill(0);
    }

    fn pio_write(&self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.write(base.0 + offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Option<(Vm, Arc<PowerRegisters>)> {
        kvm_runloop::testing::kvm_or_skip()?;
        let vm = Vm::new(&Default::default()).unwrap();
        let regs = PowerRegisters::install(&vm).unwrap();
        Some((vm, regs))
    }

    #[test]
    fn s5_powers_off_and_stops_the_vm() {
        let Some((vm, regs)) = regs() else { return };
        // Sleep type 3 is not offered: nothing happens.
        regs.write(SLEEP_CONTROL_PORT, SLP_EN | (3 << SLP_TYP_SHIFT));
        // SLP_TYP without SLP_EN: nothing either.
        regs.write(SLEEP_CONTROL_PORT, SLP_TYP_S5 << SLP_TYP_SHIFT);
        assert_eq!(regs.event(), None);
        assert!(!vm.stop_handle().is_stop_requested());
        // What Linux's acpi_hw_extended_sleep writes for S5.
        regs.write(SLEEP_CONTROL_PORT, 0x34);
        assert_eq!(regs.event(), Some(PowerEvent::PowerOff));
        assert!(vm.stop_handle().is_stop_requested());
    }

    #[test]
    fn reset_register_and_8042_reset() {
        let Some((_vm, regs)) = regs() else { return };
        regs.write(RESET_PORT, 0);
        regs.write(I8042_COMMAND_PORT, 0xaa);
        assert_eq!(regs.event(), None);
        regs.write(I8042_COMMAND_PORT, 0xfe);
        assert_eq!(
            regs.event(),
            Some(PowerEvent::Reset {
                via: "the 8042 reset line"
            })
        );
        let Some((_vm, regs)) = super::tests::regs() else {
            return;
        };
        regs.write(RESET_PORT, RESET_VALUE);
        assert!(matches!(regs.event(), Some(PowerEvent::Reset { via }) if via.contains("ACPI")));
        // The first event counts.
        regs.write(SLEEP_CONTROL_PORT, 0x34);
        assert!(matches!(regs.event(), Some(PowerEvent::Reset { .. })));
    }
}
