//! Guest layout and devices shared by the integration tests.
#![allow(dead_code)]

use std::sync::Mutex;

use kvm_runloop::reexports::vm_device::bus::{MmioAddress, PioAddress};
use kvm_runloop::reexports::vm_device::{DeviceMmio, DevicePio};
use kvm_runloop::{CpuMode, GuestEntry, Privilege, SystemTables, Vcpu, Vm, VmConfig};

/// GDT/IDT/page tables.
pub const TABLES: u64 = 0x1000;
/// Guest code.
pub const CODE: u64 = 0x10000;
/// Guest data.
pub const DATA: u64 = 0x20000;
/// Top of the stack.
pub const STACK: u64 = 0x80000;
/// Where test MMIO devices live (no RAM there).
pub const MMIO_BASE: u64 = 0xd000_0000;

/// A VM with 2 MiB of RAM, or `None` (test skipped) without /dev/kvm.
pub fn vm(irqchip: bool) -> Option<Vm> {
    kvm_runloop::testing::kvm_or_skip()?;
    Some(
        Vm::new(&VmConfig {
            irqchip,
            ..VmConfig::default()
        })
        .expect("create VM"),
    )
}

/// Loads `code` at `CODE + 0x1000 * id` and puts vCPU `id` in long mode there.
pub fn long_mode_vcpu(vm: &Vm, id: u32, code: &[u8], privilege: Privilege) -> (Vcpu, SystemTables) {
    let entry = CODE + 0x1000 * u64::from(id);
    vm.write_memory(entry, code).unwrap();
    let vcpu = vm.create_vcpu(id).unwrap();
    let tables = vcpu
        .setup(
            vm.memory(),
            &GuestEntry {
                mode: CpuMode::Long,
                privilege,
                entry,
                stack: STACK - 0x1000 * u64::from(id),
                tables: TABLES,
            },
        )
        .unwrap()
        .unwrap();
    (vcpu, tables)
}

/// One access a [`Recorder`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub write: bool,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A device that records every access and answers reads with `0x11, 0x22, 0x33, ...` shifted by
/// the offset, so the test can tell which bytes the guest got.
#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    pub fn read_pattern(offset: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| 0x11u8.wrapping_mul(i as u8 + 1).wrapping_add(offset as u8))
            .collect()
    }
    fn record(&self, write: bool, offset: u64, data: &[u8]) {
        self.seen.lock().unwrap().push(Seen {
            write,
            offset,
            data: data.to_vec(),
        });
    }
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl DevicePio for Recorder {
    fn pio_read(&self, _: PioAddress, offset: u16, data: &mut [u8]) {
        data.copy_from_slice(&Self::read_pattern(offset.into(), data.len()));
        self.record(false, offset.into(), data);
    }
    fn pio_write(&self, _: PioAddress, offset: u16, data: &[u8]) {
        self.record(true, offset.into(), data);
    }
}

impl DeviceMmio for Recorder {
    fn mmio_read(&self, _: MmioAddress, offset: u64, data: &mut [u8]) {
        data.copy_from_slice(&Self::read_pattern(offset, data.len()));
        self.record(false, offset, data);
    }
    fn mmio_write(&self, _: MmioAddress, offset: u64, data: &[u8]) {
        self.record(true, offset, data);
    }
}
