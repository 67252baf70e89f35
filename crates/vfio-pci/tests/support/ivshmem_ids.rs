//! The IDs of QEMU's `ivshmem-plain` (1af4:1110, class "RAM memory"), the device the simulated
//! large-BAR and shared-memory functions of these tests imitate.

use pci_config::DeviceIds;

/// `ivshmem-plain`'s vendor, device, class and subsystem IDs.
pub const IVSHMEM_IDS: DeviceIds = DeviceIds {
    vendor_id: 0x1af4,
    device_id: 0x1110,
    class_code: 0x050000,
    revision: 1,
    subsystem_vendor_id: 0x1af4,
    subsystem_id: 0x1100,
};
