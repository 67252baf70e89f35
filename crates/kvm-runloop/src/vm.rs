//! A VM: guest RAM, memory slots, device buses, interrupts and the vCPUs' shared run state.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, kvm_mp_state};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::address_map::{AddressMap, Space};
use crate::bus::DeviceBus;
use crate::error::{Error, Result, open_kvm_hint};
use crate::irq::Interrupts;
use crate::kick::{RunControl, StopHandle};
use crate::slots::MemorySlots;
use crate::stats::{ExitCounts, ExitStats};
use crate::vcpu::Vcpu;

/// Where KVM may put the three pages of the VMX real-mode TSS: just below the 4 GiB BIOS area,
/// where QEMU and Firecracker put it. Guests must not use this range.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// What the in-kernel irqchip (`KVM_CREATE_IRQCHIP`) serves itself, so that a guest access
/// there never exits: nothing else may be placed over it (Linux `arch/x86/kvm/i8259.c`,
/// `ioapic.h`; the local APIC page is the architectural default, Intel SDM vol. 3, 11.4.1).
const IRQCHIP_RANGES: [(Space, u64, u64, &str); 6] = [
    (Space::Io, 0x20, 2, "in-kernel PIC (master)"),
    (Space::Io, 0xa0, 2, "in-kernel PIC (slave)"),
    (Space::Io, 0x4d0, 2, "in-kernel PIC ELCR"),
    (Space::Memory, 0xfec0_0000, 0x1000, "in-kernel IOAPIC"),
    (Space::Memory, 0xfee0_0000, 0x1000, "in-kernel local APIC"),
    // Where KVM puts the real-mode TSS (`KVM_SET_TSS_ADDR`): three pages.
    (
        Space::Memory,
        TSS_ADDRESS as u64,
        0x3000,
        "KVM real-mode TSS",
    ),
];

/// What to create.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Boot RAM as (guest physical base, size in bytes), page aligned, not overlapping.
    pub ram: Vec<(u64, usize)>,
    /// Create the in-kernel irqchip (PIC, IOAPIC, local APICs): needed for irqfd, MSI routes and
    /// `KVM_SIGNAL_MSI`. With it, `hlt` waits in the kernel for an interrupt instead of exiting.
    pub irqchip: bool,
    /// The KVM device node.
    pub kvm_device: PathBuf,
}

impl Default for VmConfig {
    /// 2 MiB of RAM at guest physical 0, no irqchip, `/dev/kvm`.
    fn default() -> Self {
        VmConfig {
            ram: vec![(0, 2 << 20)],
            irqchip: false,
            kvm_device: PathBuf::from("/dev/kvm"),
        }
    }
}

/// Which writes an ioeventfd matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMatch {
    /// Any write, of any length.
    Any,
    /// Only 1-byte writes of this value.
    U8(u8),
    /// Only 2-byte writes of this value.
    U16(u16),
    /// Only 4-byte writes of this value.
    U32(u32),
    /// Only 8-byte writes of this value.
    U64(u64),
}

/// A KVM virtual machine with the pieces a VMM needs around it. Share it between threads by
/// reference or `Arc`; all methods take `&self`.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    memory: GuestMemoryMmap,
    slots: Arc<MemorySlots>,
    bus: Arc<DeviceBus>,
    map: Arc<AddressMap>,
    interrupts: Option<Interrupts>,
    control: Arc<RunControl>,
    vcpu_stats: Mutex<Vec<(u32, Arc<ExitStats>)>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("slots", &self.slots)
            .field("bus", &self.bus)
            .field("interrupts", &self.interrupts)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Opens the KVM device, creates the VM, its RAM (each range in its own memory slot) and, if
    /// asked, the in-kernel irqchip. A missing or inaccessible device gives [`Error::OpenKvm`]
    /// with what to do.
    pub fn new(config: &VmConfig) -> Result<Vm> {
        let open_error = |source: kvm_ioctls::Error| Error::OpenKvm {
            path: config.kvm_device.clone(),
            hint: open_kvm_hint(source.errno()),
            source,
        };
        let path = CString::new(config.kvm_device.as_os_str().as_bytes())
            .map_err(|_| open_error(kvm_ioctls::Error::new(libc::EINVAL)))?;
        let kvm = Kvm::new_with_path(&path).map_err(open_error)?;
        let fd = Arc::new(kvm.create_vm().map_err(|source| Error::CreateVm {
            path: config.kvm_device.clone(),
            source,
        })?);
        // Needed by Intel VMX to run real-mode code; harmless elsewhere.
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(|source| Error::VmSetup {
                step: "KVM_SET_TSS_ADDR",
                source,
            })?;
        let map = Arc::new(AddressMap::new());
        let interrupts = if config.irqchip {
            fd.create_irq_chip().map_err(|source| Error::VmSetup {
                step: "KVM_CREATE_IRQCHIP",
                source,
            })?;
            let max_gsi = fd.check_extension_int(Cap::IrqRouting).max(24) as u32;
            Some(Interrupts::new(fd.clone(), max_gsi))
        } else {
            None
        };

        let ranges: Vec<(GuestAddress, usize)> = config
            .ram
            .iter()
            .map(|(base, size)| (GuestAddress(*base), *size))
            .collect();
        let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::GuestRam {
            ranges: format!("{:x?}", config.ram),
            source,
        })?;
        let max_slots = kvm.get_nr_memslots() as u32;
        let slots = Arc::new(MemorySlots::new(
            fd.clone(),
            max_slots,
            kvm.check_extension(Cap::ReadonlyMem),
            map.clone(),
        ));
        for (i, region) in memory.iter().enumerate() {
            slots.add_guest_ram(&format!("ram{i}"), region.start_addr().0, region.get_mmap())?;
        }
        for (space, start, size, name) in IRQCHIP_RANGES {
            // The TSS is KVM's whether or not there is an irqchip; the rest only with one.
            if config.irqchip || start == TSS_ADDRESS as u64 {
                map.reserve(space, start, size, name)?;
            }
        }

        Ok(Vm {
            kvm,
            fd,
            memory,
            slots,
            bus: Arc::new(DeviceBus::with_address_map(map.clone())),
            map,
            interrupts,
            control: RunControl::new()?,
            vcpu_stats: Mutex::new(Vec::new()),
        })
    }

    /// Creates vCPU `id`. With the irqchip, every vCPU is made runnable at once (application
    /// processors would otherwise wait for an INIT/SIPI that no firmware sends).
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|source| Error::CreateVcpu { id, source })?;
        self.set_cpuid(&fd, id)?;
        if self.interrupts.is_some() {
            fd.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(|source| Error::VcpuRegisters {
                op: "KVM_SET_MP_STATE",
                vcpu: id,
                source,
            })?;
        }
        let stats = Arc::new(ExitStats::default());
        self.vcpu_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, stats.clone()));
        Ok(Vcpu::new(
            id,
            fd,
            self.bus.clone(),
            self.slots.clone(),
            stats,
            self.control.clone(),
        ))
    }

    /// Gives vCPU `id` the CPUID KVM supports on this host, with its own APIC ID.
    ///
    /// Without KVM_SET_CPUID2 a vCPU has no CPUID entries at all, so it has no long mode:
    /// kernels since 6.12.y refuse KVM_SET_SREGS with EFER.LME for it (`kvm_valid_efer` checks
    /// the guest's CPUID for LM), where older ones accepted it.
    fn set_cpuid(&self, fd: &kvm_ioctls::VcpuFd, id: u32) -> Result<()> {
        let error = |op| {
            move |source| Error::VcpuRegisters {
                op,
                vcpu: id,
                source,
            }
        };
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(error("KVM_GET_SUPPORTED_CPUID"))?;
        for entry in cpuid.as_mut_slice() {
            match entry.function {
                // Leaf 1 EBX[31:24]: the initial APIC ID.
                1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | ((id & 0xff) << 24),
                // Leaves 0xB and 0x1F EDX: the x2APIC ID.
                0xb | 0x1f => entry.edx = id,
                _ => {}
            }
        }
        fd.set_cpuid2(&cpuid).map_err(error("KVM_SET_CPUID2"))
    }

    /// Boot RAM, for loading code and data (vm-memory's `Bytes` API).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Copies `bytes` into guest RAM at `addr`.
    pub fn write_memory(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.memory
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory {
                addr,
                len: bytes.len(),
                source,
            })
    }

    /// Reads guest RAM at `addr` into `buf`.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.memory
            .read_slice(buf, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory {
                addr,
                len: buf.len(),
                source,
            })
    }

    /// The memory slot manager (add, move, remove regions while vCPUs run).
    pub fn slots(&self) -> &Arc<MemorySlots> {
        &self.slots
    }

    /// The PIO and MMIO buses.
    pub fn bus(&self) -> &Arc<DeviceBus> {
        &self.bus
    }

    /// The one map of what is placed where in the guest's memory and I/O space, shared by the
    /// slots and the bus. Reserve the VMM's own windows here (and ports its devices serve
    /// outside the bus) so no device is placed over them; the in-kernel irqchip's ports and
    /// pages are reserved already.
    pub fn address_map(&self) -> &Arc<AddressMap> {
        &self.map
    }

    /// Routes, irqfds and MSIs; an error if the VM has no in-kernel irqchip.
    pub fn interrupts(&self) -> Result<&Interrupts> {
        self.interrupts
            .as_ref()
            .ok_or(Error::NoIrqchip("interrupt routing"))
    }

    /// A handle that stops every vCPU of this VM from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            control: self.control.clone(),
        }
    }

    /// Exits per kind summed over all vCPUs, plus the bus counters. Cheap; callable while the
    /// vCPUs run.
    pub fn exit_counts(&self) -> ExitCounts {
        let mut counts = ExitCounts {
            bus: self.bus.counts(),
            ..Default::default()
        };
        for (_, s) in self
            .vcpu_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            counts.add(&s.snapshot());
        }
        counts
    }

    /// Binds `fd` to guest writes at `addr`: a matching write completes inside the kernel and
    /// signals `fd`, with no exit to userspace (a virtio or NVMe doorbell). `DataMatch::Any` with
    /// an MMIO address matches writes of any length.
    pub fn register_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<()> {
        let r = match datamatch {
            DataMatch::Any => self.fd.register_ioevent(fd, &addr, NoDatamatch),
            DataMatch::U8(v) => self.fd.register_ioevent(fd, &addr, v),
            DataMatch::U16(v) => self.fd.register_ioevent(fd, &addr, v),
            DataMatch::U32(v) => self.fd.register_ioevent(fd, &addr, v),
            DataMatch::U64(v) => self.fd.register_ioevent(fd, &addr, v),
        };
        r.map_err(|source| Error::Ioeventfd {
            op: "assign",
            addr: format_ioevent(&addr),
            source,
        })
    }

    /// Undoes [`register_ioeventfd`](Self::register_ioeventfd) (same arguments).
    pub fn unregister_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<()> {
        let r = match datamatch {
            DataMatch::Any => self.fd.unregister_ioevent(fd, &addr, NoDatamatch),
            DataMatch::U8(v) => self.fd.unregister_ioevent(fd, &addr, v),
            DataMatch::U16(v) => self.fd.unregister_ioevent(fd, &addr, v),
            DataMatch::U32(v) => self.fd.unregister_ioevent(fd, &addr, v),
            DataMatch::U64(v) => self.fd.unregister_ioevent(fd, &addr, v),
        };
        r.map_err(|source| Error::Ioeventfd {
            op: "deassign",
            addr: format_ioevent(&addr),
            source,
        })
    }

    /// The kvm-ioctls VM, for what this crate does not wrap. A vCPU created directly with
    /// `fd().create_vcpu` keeps the KVM VM alive but not its guest memory mappings (a [`Vcpu`]
    /// from [`create_vcpu`](Self::create_vcpu) keeps both): drop such a vCPU before the `Vm`.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The `/dev/kvm` handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }
}

fn format_ioevent(addr: &IoEventAddress) -> String {
    match addr {
        IoEventAddress::Pio(p) => format!("port {p:#x}"),
        IoEventAddress::Mmio(a) => format!("MMIO {a:#x}"),
    }
}
