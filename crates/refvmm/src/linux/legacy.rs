//! The legacy PC ports a Linux kernel touches on this machine: the CMOS RTC/NVRAM
//! ([`crate::cmos`]), and the ports where "nothing there" is the right answer, which refvmm
//! answers on purpose, without the bus's unhandled-access warning.
//!
//! An absent port reads all-ones and drops writes, exactly what the bus does for a port no device
//! claims; the difference is that these ranges are expected, so they are named (`--show-counters`
//! lists each with its reads and writes and the reason) instead of warned about. Each is what a
//! modern PC (a PCH without the legacy blocks) answers:
//!
//! - the i8237 DMA page register block 0x81-0x8F: Intel removed the legacy DMA controller from the
//!   PCH (Skylake on), and with it the page registers 81h-83h, 87h, 89h-8Bh and 8Fh (the spare
//!   ports between them answer the same); Linux probes 87h and takes 0xff for "no i8237"
//!   (arch/x86/kernel/i8237.c). Port 0x80 is left out: it is the POST-code port, not a page
//!   register, and Linux's `io_delay` writes there are a no-op under KVM
//!   (`KVM_FEATURE_NOP_IO_DELAY`), so an access to it is worth the warning.
//! - the Super I/O configuration pairs 0x2E/0x2F and 0x4E/0x4F: hardware-monitor and watchdog
//!   drivers (`it87`, `nct6775`, `w83627hf_wdt`, ...) write an enter key to the index port and
//!   read the chip ID; all-ones is "no chip".
//!
//! Every other port nothing claims keeps the bus's warning: it may be a device refvmm lacks.

use std::sync::{Arc, Mutex};

use kvm_runloop::Vm;
use kvm_runloop::reexports::vm_device::DevicePio;
use kvm_runloop::reexports::vm_device::bus::{PioAddress, PioAddressOffset};

use crate::cmos::{CMOS_PORT, CMOS_PORTS, Cmos};

/// The CMOS's name in the bus's ranges.
pub const CMOS_RANGE: &str = "cmos-rtc";

/// The absent ranges: first port, count, and the name that says why nothing answers.
pub const ABSENT_RANGES: [(u16, u16, &str); 3] = [
    (
        0x2e,
        2,
        "absent: Super I/O config at 0x2e (reads 0xff, no Super I/O chip)",
    ),
    (
        0x4e,
        2,
        "absent: Super I/O config at 0x4e (reads 0xff, no Super I/O chip)",
    ),
    (
        0x81,
        15,
        "absent: i8237 DMA page (reads 0xff, no legacy DMA)",
    ),
];

/// Ports with no device behind them, answered as the ISA bus answers: all-ones, writes dropped.
struct AbsentPorts;

impl DevicePio for AbsentPorts {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn pio_write(&self, _base: PioAddress, _offset: PioAddressOffset, _data: &[u8]) {}
}

/// Puts the CMOS and the absent ranges on `vm`'s port bus.
pub fn install(vm: &Vm) -> Result<(), kvm_runloop::Error> {
    vm.bus().register_pio(
        CMOS_RANGE,
        CMOS_PORT,
        CMOS_PORTS,
        Arc::new(Mutex::new(Cmos::new())),
    )?;
    let absent = Arc::new(AbsentPorts);
    for (base, count, name) in ABSENT_RANGES {
        vm.bus().register_pio(name, base, count, absent.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_runloop::BusKind;

    #[test]
    fn the_machine_answers_linuxs_legacy_probes_without_unhandled_accesses() {
        if kvm_runloop::testing::kvm_or_skip().is_none() {
            return;
        }
        let vm = Vm::new(&Default::default()).unwrap();
        install(&vm).unwrap();
        let ranges: Vec<(u64, u64, String)> = vm
            .bus()
            .device_counts()
            .into_iter()
            .filter(|d| d.bus == BusKind::Pio)
            .map(|d| (d.base, d.size, d.name))
            .collect();
        for (base, size, name) in [
            (0x70, 2, CMOS_RANGE),
            (0x2e, 2, ABSENT_RANGES[0].2),
            (0x4e, 2, ABSENT_RANGES[1].2),
            (0x81, 15, ABSENT_RANGES[2].2),
        ] {
            assert!(
                ranges.contains(&(base, size, name.to_string())),
                "{name} at {base:#x}+{size}: {ranges:?}"
            );
        }
        assert!(!ranges.iter().any(|r| r.0 == 0x80), "0x80 stays unclaimed");

        // smpboot's warm-reset byte, then i8237's probe, then a Super I/O ID read.
        assert!(vm.bus().pio_write(0x70, &[0x8f]));
        assert!(vm.bus().pio_write(0x71, &[0x0a]));
        assert!(vm.bus().pio_write(0x70, &[0x0f]));
        let mut b = [0u8];
        assert!(vm.bus().pio_read(0x71, &mut b));
        assert_eq!(b[0], 0x0a);
        for port in [0x87, 0x2f, 0x4f, 0x8f] {
            b[0] = 0;
            assert!(vm.bus().pio_read(port, &mut b), "{port:#x}");
            assert_eq!(b[0], 0xff, "{port:#x}");
        }
        assert!(vm.bus().pio_write(0x2e, &[0x87]));
        assert_eq!(vm.bus().counts().unhandled_pio, 0);
        // Port 0x80 still counts as unhandled.
        assert!(!vm.bus().pio_read(0x80, &mut b));
        assert_eq!(vm.bus().counts().unhandled_pio, 1);
    }
}
