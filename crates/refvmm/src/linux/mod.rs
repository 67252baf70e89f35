//! The Linux machine of `refvmm run --kernel`: what a Linux kernel needs beyond the PCI bus and
//! COM1 that every run has, one concept per file.
//!
//! | file | what |
//! |---|---|
//! | `boot.rs` | kernel (bzImage or ELF vmlinux, linux-loader), initramfs and command line placement, the zero page (`boot_params`) |
//! | `e820.rs` | the e820 memory map: RAM, and the holes Linux must leave alone |
//! | `acpi.rs` | the firmware tables: RSDP, XSDT, FADT, DSDT, MADT, MCFG |
//! | `cpu.rs` | per-vCPU state: CPUID topology, MSRs, FPU, LAPIC LINT0/LINT1, the 64-bit entry registers |
//! | `power.rs` | the power-off and reset registers the FADT names, and the i8042 reset line |
//! | `legacy.rs` | the legacy PC ports Linux touches: the CMOS RTC/NVRAM at 0x70/0x71 ([`crate::cmos`]), and the absent i8237 DMA page registers (0x81-0x8F) and Super I/O configuration ports (0x2E/0x2F, 0x4E/0x4F), which read all-ones without a warning |
//!
//! # Low memory
//!
//! | address | what |
//! |---|---|
//! | `0x7000` | the zero page (`struct boot_params`, 4 KiB) |
//! | `0x1_0000` | GDT, IDT and identity page tables for the 64-bit entry (kvm-runloop `SystemTables`) |
//! | `0x1_F000` | boot stack top (Linux switches to its own at once) |
//! | `0x2_0000` | the command line, at most [`boot::MAX_CMDLINE`] bytes plus the NUL |
//! | `0x9_FC00` .. `0x10_0000` | reserved in e820, as on a PC (EBDA, VGA, BIOS) |
//! | `0xE_0000` | the ACPI tables, RSDP first (where Linux's legacy scan also looks) |
//! | `0x10_0000` | the kernel (bzImage protected-mode part, or the vmlinux segments where they say) |
//! | top of low RAM | the initramfs, page aligned, below the kernel's `initrd_addr_max` |

mod acpi;
mod boot;
mod cpu;
mod e820;
mod legacy;
mod power;

use std::path::PathBuf;
use std::sync::Arc;

use kvm_runloop::reexports::kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_runloop::{Space, Vcpu, Vm};
use thiserror::Error;

pub use cpu::wait_for_sipi;
pub use power::{PowerEvent, PowerRegisters};

/// Where the zero page goes.
pub const ZERO_PAGE: u64 = 0x7000;
/// kvm-runloop's GDT, IDT and page tables for the 64-bit entry.
pub const TABLES_ADDR: u64 = 0x1_0000;
/// The boot stack.
pub const STACK_TOP: u64 = 0x1_f000;
/// The command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Start of the reserved PC area below 1 MiB (EBDA, VGA hole, BIOS).
pub const EBDA_START: u64 = 0x9_fc00;
/// The ACPI tables, RSDP first.
pub const ACPI_TABLES: u64 = 0xe_0000;
/// The first byte above the PC's reserved low area: kernels load at or above it.
pub const HIGHMEM_START: u64 = 0x10_0000;

/// What `refvmm run --kernel` boots.
#[derive(Debug, Clone)]
pub struct LinuxSpec {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// The initramfs (cpio, compressed or not), if any.
    pub initramfs: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Number of vCPUs (APIC IDs 0..cpus).
    pub cpus: u32,
    /// The 64-bit PCI window `[base, end)` BARs are placed in, for the DSDT's `_CRS`.
    pub mem64_window: (u64, u64),
}

/// Why a Linux guest could not be set up.
#[derive(Debug, Error)]
pub enum LinuxError {
    /// A file cannot be read.
    #[error("cannot read the {what} {path}; check the path and its permissions")]
    Open {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel file is neither a bzImage nor an x86-64 ELF.
    #[error(
        "--kernel {path} is neither a bzImage (boot protocol 2.00 or later, \"HdrS\" at 0x202) \
         nor a 64-bit x86 ELF vmlinux (found {detail}); give arch/x86/boot/bzImage, a \
         distribution's /boot/vmlinuz-*, or an uncompressed vmlinux"
    )]
    NotAKernel {
        /// The path given.
        path: PathBuf,
        /// What the file looked like and what the loader said.
        detail: String,
    },
    /// The kernel needs more RAM than the VM has below the PCI hole.
    #[error(
        "--kernel {path} needs guest RAM up to {needed:#x} ({} MiB) to load and decompress, but \
         low RAM ends at {ram:#x}; raise --memory",
        needed.div_ceil(1 << 20)
    )]
    KernelTooBig {
        /// The path given.
        path: PathBuf,
        /// End of what the kernel needs.
        needed: u64,
        /// End of low RAM.
        ram: u64,
    },
    /// The initramfs does not fit between the kernel and the top of low RAM.
    #[error(
        "--initramfs {path} is {size} bytes, but only {room} bytes of RAM are free between the \
         kernel (ending at {kernel_end:#x}) and {limit:#x}; raise --memory (or shrink the initramfs)"
    )]
    InitramfsTooBig {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The free room.
        room: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest usable address + 1 (RAM end or the kernel's `initrd_addr_max`).
        limit: u64,
    },
    /// The command line is too long for the kernel or holds a NUL.
    #[error(
        "--cmdline is {len} bytes; this kernel takes at most {max} bytes, without NUL characters"
    )]
    Cmdline {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// More vCPUs than KVM or the xAPIC tables allow.
    #[error(
        "--cpus {cpus}: this host's KVM allows at most {max} vCPUs per VM (KVM_CAP_MAX_VCPUS) \
         and the MADT's xAPIC IDs at most 255; give a smaller number"
    )]
    TooManyCpus {
        /// Asked for.
        cpus: u32,
        /// The limit.
        max: u32,
    },
    /// A KVM call on a vCPU or the VM failed.
    #[error("{step} failed")]
    Kvm {
        /// The ioctl.
        step: String,
        /// The error.
        source: kvm_runloop::reexports::kvm_ioctls::Error,
    },
    /// linux-loader could not write the zero page.
    #[error("writing the zero page (boot_params) at {ZERO_PAGE:#x}")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    /// Anything kvm-runloop reports (guest memory writes, register set-up).
    #[error("setting up the Linux guest's memory or vCPUs")]
    Vm(#[from] kvm_runloop::Error),
}

/// The machine set up and ready to run: vCPU 0 at the kernel's 64-bit entry, the others waiting
/// for the kernel's INIT/SIPI.
pub struct LinuxMachine {
    /// vCPUs 0..cpus.
    pub vcpus: Vec<Vcpu>,
    /// The registers through which the guest powers off or resets the machine.
    pub power: Arc<PowerRegisters>,
}

/// Sets up `vm` (which must have the in-kernel irqchip and RAM as `ram`) to boot `spec`: the
/// PIT, the power registers, the CMOS and the absent legacy ports, the ACPI tables, the kernel, initramfs, zero page and every vCPU.
pub fn setup(vm: &Vm, spec: &LinuxSpec, ram: &[(u64, u64)]) -> Result<LinuxMachine, LinuxError> {
    let max = (vm.kvm().get_max_vcpus() as u32).min(255);
    if spec.cpus == 0 || spec.cpus > max {
        return Err(LinuxError::TooManyCpus {
            cpus: spec.cpus,
            max,
        });
    }
    // The in-kernel PIT (the irqchip is already there): Linux calibrates against it and uses
    // it until the LAPIC timer is up. The dummy speaker port (0x61) is KVM's too.
    vm.fd()
        .create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(|source| LinuxError::Kvm {
            step: "KVM_CREATE_PIT2".into(),
            source,
        })?;
    // KVM serves these ports in the kernel now: no I/O BAR may be placed over them (the guest
    // would reach the PIT, not the device).
    for (start, size, name) in [
        (0x40, 4, "the in-kernel PIT"),
        (0x61, 1, "the PIT's speaker port"),
    ] {
        vm.address_map().reserve(Space::Io, start, size, name)?;
    }
    let power = PowerRegisters::install(vm)?;
    legacy::install(vm)?;

    let tables = acpi::AcpiTables::build(spec.cpus, spec.mem64_window);
    vm.write_memory(ACPI_TABLES, &tables.bytes)?;
    let loaded = boot::load(vm, spec, ram)?;
    let map = e820::memory_map(ram);
    boot::write_zero_page(vm, &loaded, &map, ACPI_TABLES)?;

    let supported = vm
        .kvm()
        .get_supported_cpuid(kvm_runloop::reexports::kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| LinuxError::Kvm {
            step: "KVM_GET_SUPPORTED_CPUID".into(),
            source,
        })?;
    let tsc_deadline = vm
        .kvm()
        .check_extension(kvm_runloop::reexports::kvm_ioctls::Cap::TscDeadlineTimer);
    let mut vcpus = Vec::with_capacity(spec.cpus as usize);
    for id in 0..spec.cpus {
        let vcpu = vm.create_vcpu(id)?;
        cpu::configure(&vcpu, &supported, spec.cpus, tsc_deadline)?;
        if id == 0 {
            cpu::enter_64bit(vm, &vcpu, loaded.entry, ZERO_PAGE)?;
        } else {
            wait_for_sipi(&vcpu)?;
        }
        vcpus.push(vcpu);
    }
    Ok(LinuxMachine { vcpus, power })
}
