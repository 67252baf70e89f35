//! The one error type of the crate: every variant names the thing that failed and, where there
//! is one, the fix. The OS error behind a failed ioctl is the variant's `source()`, not repeated
//! in its message: print the whole chain.

use std::io;

use kvm_ioctls::Error as KvmError;

/// Errors returned by `kvm-runloop`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The KVM device (`/dev/kvm`) could not be opened.
    #[error("cannot open {}; {hint}", path.display())]
    OpenKvm {
        /// The device node.
        path: std::path::PathBuf,
        /// The error from `open(2)`.
        #[source]
        source: KvmError,
        /// What to do about it (depends on the errno).
        hint: &'static str,
    },
    /// `KVM_CREATE_VM` failed.
    #[error(
        "KVM_CREATE_VM on {} failed{}",
        path.display(),
        if source.errno() == libc::ENOTTY {
            ": it opened, but it is not a KVM device node (give /dev/kvm)"
        } else {
            ""
        }
    )]
    CreateVm {
        /// The device node the VM was asked of.
        path: std::path::PathBuf,
        /// The error from the ioctl.
        #[source]
        source: KvmError,
    },
    /// A KVM capability the requested feature needs is missing.
    #[error("this KVM lacks {capability}, needed for {needed_for}")]
    MissingCapability {
        /// The capability (`KVM_CAP_*`).
        capability: &'static str,
        /// The feature that needs it.
        needed_for: &'static str,
    },
    /// A VM set-up ioctl (`KVM_SET_TSS_ADDR`, `KVM_CREATE_IRQCHIP`) failed.
    #[error("{step} failed while creating the VM")]
    VmSetup {
        /// The ioctl that failed.
        step: &'static str,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// The VM was created without an in-kernel irqchip and the call needs one.
    #[error(
        "{0} needs the in-kernel irqchip; create the VM with `VmConfig {{ irqchip: true, .. }}`"
    )]
    NoIrqchip(&'static str),
    /// Guest RAM could not be allocated.
    #[error("allocating guest RAM {ranges} failed")]
    GuestRam {
        /// The requested ranges, formatted.
        ranges: String,
        /// The vm-memory error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Guest memory access through vm-memory failed.
    #[error(
        "guest memory access at {addr:#x} ({len} bytes) failed; is the range inside guest RAM?"
    )]
    GuestMemory {
        /// Guest physical address.
        addr: u64,
        /// Length of the access.
        len: usize,
        /// The vm-memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// `KVM_CREATE_VCPU` failed.
    #[error(
        "creating vCPU {id} failed; ids must be unique within a VM and below KVM_CAP_MAX_VCPU_ID"
    )]
    CreateVcpu {
        /// The vCPU id.
        id: u32,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// A vCPU register ioctl failed.
    #[error("{op} on vCPU {vcpu} failed")]
    VcpuRegisters {
        /// The ioctl (`KVM_SET_SREGS`, ...).
        op: &'static str,
        /// The vCPU id.
        vcpu: u32,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// `KVM_RUN` failed with an errno other than `EINTR`/`EAGAIN`.
    #[error("KVM_RUN on vCPU {vcpu} failed")]
    Run {
        /// The vCPU id.
        vcpu: u32,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// Installing the vCPU kick signal handler failed.
    #[error("installing the vCPU kick handler for signal {signal} failed")]
    KickSignal {
        /// The signal number (`SIGRTMIN() + offset`).
        signal: i32,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// A guest address, size or offset is not page aligned.
    #[error("{what} {value:#x} is not a multiple of the 4 KiB page size; KVM maps whole pages")]
    Unaligned {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A region of size zero, or one whose end overflows the address space.
    #[error(
        "region \"{name}\" at {guest_addr:#x} with size {size:#x} is empty or wraps around the address space"
    )]
    BadRegion {
        /// Region name.
        name: String,
        /// Guest physical base.
        guest_addr: u64,
        /// Size in bytes.
        size: u64,
    },
    /// A new or moved region would overlap an existing one.
    #[error(
        "region \"{name}\" [{start:#x}, {end:#x}) overlaps region \"{other_name}\" [{other_start:#x}, {other_end:#x}) in slot {other_slot}; move or remove that one first"
    )]
    SlotOverlap {
        /// Name of the region being added or moved.
        name: String,
        /// Its first address.
        start: u64,
        /// One past its last address.
        end: u64,
        /// The existing region's name.
        other_name: String,
        /// The existing region's first address.
        other_start: u64,
        /// One past the existing region's last address.
        other_end: u64,
        /// The existing region's slot.
        other_slot: u32,
    },
    /// All KVM memory slots are in use.
    #[error("all {max} KVM memory slots are in use; remove a region before adding \"{name}\"")]
    SlotsExhausted {
        /// The KVM limit (`KVM_CAP_NR_MEMSLOTS`).
        max: u32,
        /// The region that did not fit.
        name: String,
    },
    /// No region is registered in the given slot.
    #[error(
        "no guest memory region in slot {0}; it was removed or never added (MemorySlots::regions lists the slots in use)"
    )]
    NoSuchSlot(u32),
    /// Mapping a region's host memory failed.
    #[error("mapping host memory for region \"{name}\" ({size:#x} bytes) failed")]
    MapRegion {
        /// Region name.
        name: String,
        /// Size in bytes.
        size: u64,
        /// The mmap error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Duplicating the file descriptor behind a region failed.
    #[error("duplicating the file descriptor for region \"{name}\" failed")]
    DupFd {
        /// Region name.
        name: String,
        /// The io error.
        #[source]
        source: io::Error,
    },
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error(
        "KVM_SET_USER_MEMORY_REGION for region \"{name}\" in slot {slot} at {guest_addr:#x} failed"
    )]
    SetMemoryRegion {
        /// Region name.
        name: String,
        /// Slot id.
        slot: u32,
        /// Guest physical base.
        guest_addr: u64,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// A bus range is empty or wraps.
    #[error(
        "{bus} range for device \"{name}\" at {base:#x} with size {size:#x} is empty or wraps around"
    )]
    BadBusRange {
        /// "PIO" or "MMIO".
        bus: &'static str,
        /// Device name.
        name: String,
        /// Base address.
        base: u64,
        /// Size.
        size: u64,
    },
    /// A device range would overlap an already registered one.
    #[error(
        "{bus} range [{start:#x}, {end:#x}) for device \"{name}\" overlaps [{other_start:#x}, {other_end:#x}) of device \"{other_name}\"; unregister or move that one first"
    )]
    BusOverlap {
        /// "PIO" or "MMIO".
        bus: &'static str,
        /// Name of the device being registered.
        name: String,
        /// Its first address.
        start: u64,
        /// One past its last address.
        end: u64,
        /// The existing device's name.
        other_name: String,
        /// The existing range's first address.
        other_start: u64,
        /// One past the existing range's last address.
        other_end: u64,
    },
    /// A placement overlaps something else in the VM's address map (a slot over a trapped
    /// range, a device over ports KVM serves, any two devices).
    #[error(
        "{space} range [{start:#x}, {end:#x}) for \"{name}\" overlaps [{other_start:#x}, {other_end:#x}) of \"{other_name}\"; place it elsewhere, or remove that one first"
    )]
    AddressInUse {
        /// "memory" or "I/O".
        space: &'static str,
        /// What was being placed.
        name: String,
        /// Its first address.
        start: u64,
        /// One past its last address.
        end: u64,
        /// What holds the range already.
        other_name: String,
        /// Its first address.
        other_start: u64,
        /// One past its last address.
        other_end: u64,
    },
    /// A placement of size zero or past the end of its address space.
    #[error(
        "{space} range for \"{name}\" at {start:#x} of {size:#x} bytes is empty or runs past the end of the address space"
    )]
    AddressOutOfRange {
        /// "memory" or "I/O".
        space: &'static str,
        /// What was being placed.
        name: String,
        /// Its first address.
        start: u64,
        /// Its size.
        size: u64,
    },
    /// No device is registered at the given base address.
    #[error(
        "no device is registered on the {bus} bus with base address {base:#x}; pass the base it was registered or last moved at (DeviceBus::device_counts lists them)"
    )]
    NoSuchDevice {
        /// "PIO" or "MMIO".
        bus: &'static str,
        /// The base address given.
        base: u64,
    },
    /// `KVM_SET_GSI_ROUTING` failed.
    #[error(
        "KVM_SET_GSI_ROUTING with {routes} routes (changing GSI {gsi}) failed; the previous table stays in force"
    )]
    GsiRouting {
        /// The GSI being changed.
        gsi: u32,
        /// Number of entries in the table sent.
        routes: usize,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// A GSI number beyond what KVM supports.
    #[error("GSI {gsi} is out of range; this KVM supports GSIs 0..{max}")]
    GsiOutOfRange {
        /// The GSI.
        gsi: u32,
        /// The limit.
        max: u32,
    },
    /// No free GSI is left for a new MSI route.
    #[error("no free GSI left (KVM supports {max}); release unused MSI routes")]
    GsiExhausted {
        /// The limit.
        max: u32,
    },
    /// `KVM_IRQFD` failed.
    #[error("KVM_IRQFD {op} for GSI {gsi} failed")]
    Irqfd {
        /// "assign", "assign with resample" or "deassign".
        op: &'static str,
        /// The GSI.
        gsi: u32,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// `KVM_SIGNAL_MSI` failed.
    #[error("KVM_SIGNAL_MSI to address {address:#x} data {data:#x} failed")]
    SignalMsi {
        /// MSI address.
        address: u64,
        /// MSI data.
        data: u32,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// `KVM_IRQ_LINE` failed.
    #[error("KVM_IRQ_LINE for GSI {gsi} failed")]
    IrqLine {
        /// The GSI.
        gsi: u32,
        /// The errno.
        #[source]
        source: KvmError,
    },
    /// `KVM_IOEVENTFD` failed.
    #[error("KVM_IOEVENTFD {op} at {addr} failed")]
    Ioeventfd {
        /// "assign" or "deassign".
        op: &'static str,
        /// The address, formatted with its bus.
        addr: String,
        /// The errno.
        #[source]
        source: KvmError,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The advice to print when `/dev/kvm` cannot be opened, chosen by errno.
pub(crate) fn open_kvm_hint(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => {
            "KVM is not available: load the module (`modprobe kvm_intel` or `modprobe kvm_amd`), \
             and enable virtualization in the firmware or, in a VM, nested virtualization"
        }
        libc::EACCES | libc::EPERM => {
            "permission denied: add your user to the group owning /dev/kvm (usually `kvm`: \
             `sudo usermod -aG kvm $USER`, then log in again) or run as root"
        }
        _ => "check that the kvm module is loaded and that you may read and write /dev/kvm",
    }
}
