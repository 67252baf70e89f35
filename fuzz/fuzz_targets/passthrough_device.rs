#![no_main]
//! Drives two whole passthrough devices (simulated NVMe and NIC on one KVM-free address map,
//! guest RAM and the VMM's windows reserved) with guest operation sequences: config reads and
//! writes of every width, BAR sizing and moves (64-bit halves in either order), decode on and
//! off, ROM enable, MSI and MSI-X programming and masking, MMIO and port accesses anywhere, BAR
//! accesses, device interrupts. After every step: nothing placed over RAM, a VMM window or
//! another device; the device's view and the map agree; every route in the MSI window and
//! owned by one vector. The operations and checks are vfio-pci's tests/support/guest_ops.rs
//! (`tests/guest_ops_fuzz.rs` runs them on stable).

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/vfio-pci/tests/support/guest_ops.rs"]
mod guest_ops;

fuzz_target!(|data: &[u8]| {
    guest_ops::run(data);
});
