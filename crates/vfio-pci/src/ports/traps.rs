//! [`TrapPort`]: guest accesses to a range that must not be mapped (the emulated MSI-X table,
//! pages the host does not let us mmap, I/O BARs, the ROM) are dispatched by the VMM to a
//! handler the device gives it: a vm-device [`DeviceMmio`] or [`DevicePio`], so any VMM with a
//! vm-device style bus takes it as is, and a VMM can wrap it (to trace or count accesses)
//! before registering it.

use std::io;
use std::sync::Arc;

use vm_device::{DeviceMmio, DevicePio};
use vm_memory::GuestAddress;

use super::BarRange;

/// Where a trapped range sits: guest-physical memory space or x86 I/O port space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapAddress {
    /// A memory BAR's range at a guest-physical address.
    Mmio(GuestAddress),
    /// An I/O BAR's range at a port.
    Pio(u16),
}

impl TrapAddress {
    /// The address or port as a number (for messages and range arithmetic).
    pub fn raw(self) -> u64 {
        match self {
            TrapAddress::Mmio(a) => a.0,
            TrapAddress::Pio(p) => u64::from(p),
        }
    }
}

/// The handler of a trapped range. Its offsets are relative to the range's first byte; errors
/// are handled inside (a failed read gives all-ones, as from a PCI device that fell off the
/// bus, and is counted in the device's exit counters).
#[derive(Clone)]
pub enum TrapHandler {
    /// For a range in memory space.
    Mmio(Arc<dyn DeviceMmio + Send + Sync>),
    /// For a range in I/O space.
    Pio(Arc<dyn DevicePio + Send + Sync>),
}

impl std::fmt::Debug for TrapHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrapHandler::Mmio(_) => "TrapHandler::Mmio",
            TrapHandler::Pio(_) => "TrapHandler::Pio",
        })
    }
}

/// Registers trapped ranges on the VMM's buses. Called from vCPU threads with `&self`,
/// possibly from inside one of the device's own handlers (a BAR moved by a guest write): an
/// implementation must not hold a lock across dispatch that registration also takes.
///
/// `at` and the handler always agree ([`TrapAddress::Mmio`] with [`TrapHandler::Mmio`]).
/// A placement the VMM refuses (overlap with another range or with memory, past the address
/// space) returns an error saying why, and the device leaves the BAR unmapped.
pub trait TrapPort: Send + Sync {
    /// Starts dispatching guest accesses to `range.len` bytes at `at` to `handler`.
    fn add_trap(&self, range: &BarRange, at: TrapAddress, handler: TrapHandler) -> io::Result<()>;

    /// Moves the range registered at `from` to `to`, keeping its handler.
    fn move_trap(&self, range: &BarRange, from: TrapAddress, to: TrapAddress) -> io::Result<()>;

    /// Stops dispatching the range registered at `at`. An access another vCPU already started
    /// may still complete.
    fn remove_trap(&self, range: &BarRange, at: TrapAddress) -> io::Result<()>;
}
