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

/// The first GSI of PCI INTx: the IOAPIC pins above the 16 ISA ones.
pub const FIRST_PCI_GSI: u32 = 16;

/// The GSI the INTx of the device in `slot` is wired to, whatever pin it uses: 16 + slot % 4, the
/// usual swizzle of four shared lines. One place, because the passthrough device raises this GSI
/// and the DSDT's `_PRT` tells Linux the same wiring.
pub fn intx_gsi(slot: u8) -> u32 {
    FIRST_PCI_GSI + u32::from(slot % 4)
}
