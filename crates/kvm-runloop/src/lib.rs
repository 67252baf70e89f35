#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod address_map;
pub mod asm;
mod bus;
mod cpu_mode;
mod error;
mod exit;
mod host_pages;
mod irq;
mod kick;
mod prefault;
mod ram;
mod slots;
mod stats;
pub mod testing;
mod vcpu;
mod vm;

pub use address_map::{AddressMap, Claim, Holder, Space};
pub use bus::{
    BusCounts, BusKind, DeviceBus, DeviceCounts, DeviceError, FallibleMmio, FalliblePio,
};
pub use cpu_mode::{
    CpuMode, GuestEntry, KERNEL_CODE32, KERNEL_CODE64, KERNEL_DATA, Privilege, SYSTEM_TABLES_SIZE,
    SystemTables, USER_CODE32, USER_CODE64, USER_DATA, setup_vcpu,
};
pub use error::{Error, Result};
pub use exit::{Access, Exit, ExitKind, VcpuStop};
pub use host_pages::{HostPages, parse_smaps};
pub use irq::{FIRST_MSI_GSI, Interrupts, MsiMessage, MsiRouteChange, Route};
pub use kick::{KICK_SIGNAL_OFFSET, StopHandle};
pub use kvm_ioctls::IoEventAddress;
pub use prefault::{PrefaultDone, PrefaultJob};
pub use ram::{
    GuestRamBacking, HUGEPAGES_SYSFS, HugePagePool, HugePageSize, RamBacking, RamBackingError,
};
pub use slots::{BackingKind, MemoryAccess, MemorySlots, RegionInfo, SlotId};
pub use stats::{ExitCounts, ExitStats};
pub use vcpu::Vcpu;
pub use vm::{DataMatch, Vm, VmConfig};

/// The rust-vmm crates whose types appear in this API, so users need not pin them separately.
pub mod reexports {
    pub use kvm_bindings;
    pub use kvm_ioctls;
    pub use vm_device;
    pub use vm_memory;
    pub use vmm_sys_util;
}
