//! Ports: the few things a [`PassthroughDevice`](crate::PassthroughDevice) needs from the VMM
//! it lives in, as small traits owned by this crate. A VMM implements them over its own memory
//! slots, device buses and interrupt controller; nothing here names a hypervisor. Errors are
//! [`std::io::Error`], so a VMM returns its own errors through them (`io::Error::other`).
//!
//! | file | concept |
//! |---|---|
//! | `range.rs` | [`BarRange`]: which part of which BAR a mapping or trap is, for logs and tracers |
//! | `memory.rs` | [`BarMappingPort`]: device pages ([`HostMapping`]) placed in guest-physical space |
//! | `traps.rs` | [`TrapPort`]: guest accesses to a range dispatched to a vm-device handler |
//! | `interrupts.rs` | [`InterruptPort`]: MSI routes (allocated and routed in one step), irqfds |
//! | `kvm.rs` | `KvmPorts`: the three over `kvm-runloop`'s `Vm` (feature `kvm`) |
//! | `in_memory.rs` | `InMemoryPorts`: plain bookkeeping, no KVM, for tests and fuzzing (feature `sim`) |

#[cfg(feature = "sim")]
mod in_memory;
mod interrupts;
#[cfg(feature = "kvm")]
mod kvm;
mod memory;
mod range;
mod traps;

#[cfg(feature = "sim")]
pub use in_memory::{AddressSpace, InMemoryPorts, IrqfdRecord, PlacedRange};
pub use interrupts::{InterruptPort, MsiMessage, MsiWindow, RouteChange};
#[cfg(feature = "kvm")]
pub use kvm::KvmPorts;
pub use memory::{BarMappingPort, HostMapping};
pub use range::{BarRange, BarRangeKind, ROM_INDEX};
pub use traps::{TrapAddress, TrapHandler, TrapPort};
