//! The reference VMM's PCI bus: [`pci_bus`] composed with refvmm's memory map. The bus, its host
//! bridge, conf1, ECAM and BAR placement live in the `pci-bus` crate; this module gathers what the
//! rest of refvmm uses under one path and keeps the layout constants where refvmm's modules find
//! them. refvmm uses `pci_bus::layout`'s default (QEMU q35-like) map unchanged: its table is the
//! guest-physical layout of `refvmm run`.

// All of the layout, so a module that needs another window or port takes it from here too.
pub use pci_bus::layout::*;
pub use pci_bus::{
    AssignedBar, BarAllocator, BarAssignError, BusError, Conf1, Ecam, HostBridge, PciBus,
};
