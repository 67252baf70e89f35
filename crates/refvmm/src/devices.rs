//! `--device SPEC`: what to put on the PCI bus, and attaching it.
//!
//! | SPEC | what |
//! |---|---|
//! | `BDF` (`0000:01:00.0`, `01:00.0`) or a sysfs path | a host device passed through with VFIO (vfio-pci's `PassthroughDevice` over `VfioBackend`) |
//! | `BDF,fd=N,iommufd-fd=M` | the same, with the device's VFIO cdev and an iommufd opened by a launcher ([`crate::handed_in`]) |
//! | `sim`, `sim:nvme`, `sim:nic` | the same passthrough device over vfio-pci's simulated backend: a **test aid** (memfd BARs, eventfd interrupts; cargo feature `sim`) |
//! | `test` | refvmm's own emulated test function ([`crate::test_function`]), a test aid for the bus |
//!
//! Every device goes at function 0 of the next free slot (00:01.0, 00:02.0, ...) and is named by
//! that guest address in logs, bus ranges and memory slots. Its BARs are placed before the guest
//! starts, as firmware would. A function's INTx is wired to GSI `16 + device % 4`
//! ([`crate::pci::intx_gsi`], which the DSDT's `_PRT` also reads).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_runloop::Vm;
use pci_config::{Bdf, PciFunction};
use pci_regnames::DeviceFacts;
use trap_map::{PageSize, Policy};
use vfio_pci::host::{HostPaths, IommuBackendChoice, PciAddress};
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::{
    AttachContext, DeviceBackend, DmaSetup, PassthroughDevice, PassthroughOptions, ReservedRange,
    VfioBackend, VfioDeviceFd,
};

use crate::handed_in::{HandedInDevice, HandedInError};
use crate::pci::{AssignedBar, BarAllocator, PciBus};
use crate::test_function::{TestFunction, TestHandle};
use crate::trace::hook::{SharedTracer, TracedFunction, TracingTraps};

/// A preset of the simulated backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPreset {
    /// QEMU's NVMe controller (1b36:0010).
    Nvme,
    /// An Intel 82574L NIC (8086:10d3).
    Nic,
}

/// One `--device` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A host PCI device, through VFIO.
    Host(PciAddress),
    /// A host PCI device through iommufd, its fds handed in by a launcher.
    HandedIn(HandedInDevice),
    /// The passthrough device over the simulated backend.
    Sim(SimPreset),
    /// The emulated test function.
    Test,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "test" => Ok(DeviceSpec::Test),
            "sim" | "sim:nvme" => Ok(DeviceSpec::Sim(SimPreset::Nvme)),
            "sim:nic" => Ok(DeviceSpec::Sim(SimPreset::Nic)),
            _ if s.starts_with("sim:") => Err(format!(
                "{s:?}: unknown simulated device; the presets are sim:nvme (the default for `sim`) and sim:nic"
            )),
            // QEMU's `-device vfio-pci,host=01:00.0`: say what refvmm takes instead.
            _ if s.contains("host=") => Err(format!(
                "{s:?}: QEMU's vfio-pci,host=... form; refvmm's --device takes the host address \
                 alone, e.g. --device 0000:01:00.0 (or 0000:01:00.0,fd=N,iommufd-fd=M for fds a \
                 launcher handed in)"
            )),
            _ if s.contains(',') => HandedInDevice::parse(s).map(DeviceSpec::HandedIn),
            _ => PciAddress::from_arg(s).map(DeviceSpec::Host).map_err(|e| {
                format!(
                    "{e}; --device takes a host PCI address (01:00.0), a sysfs path, `BDF,fd=N,iommufd-fd=M`, `sim[:nvme|:nic]` or `test`"
                )
            }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Host(a) => write!(f, "{a}"),
            DeviceSpec::HandedIn(h) => write!(f, "{h}"),
            DeviceSpec::Sim(SimPreset::Nvme) => f.write_str("sim:nvme"),
            DeviceSpec::Sim(SimPreset::Nic) => f.write_str("sim:nic"),
            DeviceSpec::Test => f.write_str("test"),
        }
    }
}

/// The passthrough knobs of `refvmm run` (`--policy`, `--page-size`).
#[derive(Debug, Clone)]
pub struct PassthroughKnobs {
    /// trap-map policy.
    pub policy: Policy,
    /// Mapping granularity.
    pub page_size: PageSize,
    /// IOMMU interface for host devices (`--iommu`).
    pub iommu: IommuBackendChoice,
    /// The VM's KVM VFIO device, created once when a host device is passed through.
    pub kvm_vfio: Option<Arc<VfioDeviceFd>>,
    /// `--trace`: the tracer whose handlers wrap the devices it covers.
    pub tracer: Option<SharedTracer>,
}

/// The tracer, when it covers the device at `bdf`.
fn tracer_for(knobs: &PassthroughKnobs, bdf: Bdf) -> Option<&SharedTracer> {
    knobs.tracer.as_ref().filter(|t| {
        t.lock()
            .unwrap_or_else(|p| p.into_inner())
            .filter()
            .covers_device(bdf)
    })
}

/// A device on the bus, as the run command keeps it.
pub struct Attached {
    /// Its guest address.
    pub bdf: Bdf,
    /// What was asked for.
    pub spec: DeviceSpec,
    /// BARs placed at attach.
    pub bars: Vec<AssignedBar>,
    /// State access for the reports.
    pub handle: DeviceHandle,
}

impl Attached {
    /// Takes the device out of the guest for good: a passthrough device unwires its interrupts,
    /// removes its BARs from the guest, unmaps guest RAM from the IOMMU and resets the function.
    /// Call it once the bus no longer holds the device (the bus dropped), or it stays attached
    /// until the process ends.
    pub fn detach(self) -> Result<(), String> {
        let DeviceHandle::Passthrough(dev) = self.handle else {
            return Ok(());
        };
        match Arc::try_unwrap(dev) {
            Ok(m) => m
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .detach()
                .map(|()| log::debug!("{}: detached", self.bdf.short()))
                .map_err(|e| format!("{}: detach: {e}", self.bdf.short())),
            Err(_) => Err(format!(
                "{}: still held by the bus; it is detached when refvmm exits",
                self.bdf.short()
            )),
        }
    }
}

/// Per-kind access to a device's live state.
pub enum DeviceHandle {
    /// A passthrough device (VFIO or simulated backend).
    Passthrough(Arc<Mutex<PassthroughDevice>>),
    /// The emulated test function.
    Test(TestHandle),
}

fn lock(d: &Mutex<PassthroughDevice>) -> MutexGuard<'_, PassthroughDevice> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

impl DeviceHandle {
    /// The `info mtree -f`-style view of its BARs.
    pub fn mtree(&self) -> String {
        match self {
            DeviceHandle::Passthrough(d) => lock(d).mtree(),
            DeviceHandle::Test(h) => h.mtree(),
        }
    }

    /// How long the device's DMA attach took (mapping guest RAM); `None` without DMA.
    pub fn dma_map_time(&self) -> Option<std::time::Duration> {
        match self {
            DeviceHandle::Passthrough(d) => lock(d).dma_map_time(),
            DeviceHandle::Test(_) => None,
        }
    }

    /// Device-specific counters, one `name value` pair each.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        match self {
            DeviceHandle::Passthrough(d) => {
                let d = lock(d);
                let traps: u64 = d.exit_counters().iter().map(|c| c.traps()).sum();
                // MSI-X vectors whose eventfd is bound to a KVM irqfd: the device's messages for
                // them reach the guest in the kernel, without refvmm (the test bed checks this).
                let irqfd_vectors = (0..=u16::MAX)
                    .map_while(|v| d.msix_vector(v))
                    .filter(|v| v.bound)
                    .count() as u64;
                vec![
                    ("bar-traps", traps),
                    ("msix-irqfd-vectors", irqfd_vectors),
                    ("msix-pending-delivered", d.delivered_pending()),
                    ("msi-routes-refused", d.refused_routes()),
                ]
            }
            DeviceHandle::Test(h) => {
                let c = h.counters();
                vec![
                    ("doorbells", c.doorbells),
                    ("msi-delivered", c.delivered),
                    ("msi-refused", c.refused_msi),
                    ("bar-placements-refused", c.refused_placements),
                ]
            }
        }
    }
}

/// The bus holds a passthrough device through this, so refvmm keeps a typed handle for reports.
struct SharedPassthrough(Arc<Mutex<PassthroughDevice>>);

impl PciFunction for SharedPassthrough {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        lock(&self.0).config_read(offset, data)
    }

    fn config_read_u32(&mut self, offset: u16) -> u32 {
        lock(&self.0).config_read_u32(offset)
    }

    fn config_read_u16(&mut self, offset: u16) -> u16 {
        lock(&self.0).config_read_u16(offset)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        lock(&self.0).config_write(offset, data)
    }
}

/// Why a device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// VFIO refused the host device (the cause says why and what to do).
    #[error("--device {address}: cannot open it through VFIO")]
    Open {
        /// The device.
        address: PciAddress,
        /// vfio-pci's host-layer error.
        #[source]
        source: vfio_pci::VfioBackendError,
    },
    /// A handed-in device could not be opened (the message names the fd and what it is).
    #[error(transparent)]
    HandedIn(#[from] HandedInError),
    /// The simulated device could not be created.
    #[error("--device {spec}: cannot create the simulated device")]
    Sim {
        /// The spec.
        spec: DeviceSpec,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The passthrough device refused to attach.
    #[error("--device {spec} at {bdf}: cannot attach it")]
    Passthrough {
        /// The spec.
        spec: DeviceSpec,
        /// Where it was going.
        bdf: String,
        /// Why.
        #[source]
        source: Box<vfio_pci::AttachError>,
    },
    /// The bus is full.
    #[error("--device {spec}: cannot put it on the PCI bus")]
    Bus {
        /// The spec.
        spec: DeviceSpec,
        /// Why.
        #[source]
        source: crate::pci::BusError,
    },
    /// BAR placement failed.
    #[error("--device {spec} at {bdf}: cannot place its BARs")]
    Bars {
        /// The spec.
        spec: DeviceSpec,
        /// Where it was put.
        bdf: String,
        /// Why.
        #[source]
        source: crate::pci::BarAssignError,
    },
    /// The emulated function could not be created.
    #[error("--device test: cannot create the emulated function")]
    Test(#[source] std::io::Error),
}

fn passthrough<B: DeviceBackend + 'static>(
    backend: B,
    spec: &DeviceSpec,
    bdf: Bdf,
    vm: &Arc<Vm>,
    reserved: &[ReservedRange],
    knobs: &PassthroughKnobs,
) -> Result<Arc<Mutex<PassthroughDevice>>, AttachError> {
    let ports = Arc::new(KvmPorts::new(vm.clone()));
    let mut ctx = AttachContext {
        dma: DmaSetup::GuestMemory(vm.memory().clone()),
        intx_gsi: Some(crate::pci::intx_gsi(bdf.device)),
        reserved: reserved.to_vec(),
        ..AttachContext::new(ports.clone(), MsiWindow::x86())
    };
    if let Some(tracer) = tracer_for(knobs, bdf) {
        ctx.traps = Arc::new(TracingTraps::new(ports, tracer.clone()));
    }
    let options = PassthroughOptions {
        page_size: knobs.page_size,
        policy: knobs.policy,
        name: Some(bdf.short()),
        ..PassthroughOptions::default()
    };
    PassthroughDevice::attach(backend, ctx, options)
        .map(|d| Arc::new(Mutex::new(d)))
        .map_err(|source| AttachError::Passthrough {
            spec: spec.clone(),
            bdf: bdf.short(),
            source: Box::new(source),
        })
}

/// A function's configuration space as the guest sees it: 256 bytes, or 4096 for a PCI
/// Express function (only those have extended space, PCIe Base 4.0 §7.2.2).
fn guest_config(f: &mut dyn PciFunction) -> Vec<u8> {
    let read = |f: &mut dyn PciFunction, config: &mut [u8], from: usize| {
        for (i, dword) in config[from..].chunks_mut(4).enumerate() {
            f.config_read((from + i * 4) as u16, dword);
        }
    };
    let mut config = vec![0u8; 256];
    read(f, &mut config, 0);
    let express = DeviceFacts::from_config(&config)
        .capabilities()
        .iter()
        .any(|c| c.id == pci_config::CapId::Standard(pci_config::CapabilityId::EXPRESS));
    if express {
        config.resize(4096, 0);
        read(f, &mut config, 256);
    }
    config
}

/// Attaches `spec` to `bus` at the next free slot and places its BARs.
pub fn attach(
    spec: &DeviceSpec,
    vm: &Arc<Vm>,
    bus: &PciBus,
    bars: &mut BarAllocator,
    reserved: &[ReservedRange],
    knobs: &PassthroughKnobs,
) -> Result<Attached, AttachError> {
    let bus_error = |source| AttachError::Bus {
        spec: spec.clone(),
        source,
    };
    let bdf = bus.next_free().map_err(bus_error)?;
    let (function, handle): (Box<dyn PciFunction>, DeviceHandle) = match spec {
        DeviceSpec::Host(address) => {
            let backend = VfioBackend::open_with(
                &HostPaths::default(),
                *address,
                knobs.kvm_vfio.clone(),
                knobs.iommu,
            )
            .map_err(|source| AttachError::Open {
                address: *address,
                source,
            })?;
            eprintln!(
                "refvmm: {address} opened through {}",
                backend.opened().describe()
            );
            let dev = passthrough(backend, spec, bdf, vm, reserved, knobs)?;
            (
                Box::new(SharedPassthrough(dev.clone())),
                DeviceHandle::Passthrough(dev),
            )
        }
        DeviceSpec::HandedIn(handed) => {
            let backend = handed.open(knobs.kvm_vfio.clone())?;
            eprintln!(
                "refvmm: {} opened through {} (handed in)",
                handed.address,
                backend.opened().describe()
            );
            let dev = passthrough(backend, spec, bdf, vm, reserved, knobs)?;
            (
                Box::new(SharedPassthrough(dev.clone())),
                DeviceHandle::Passthrough(dev),
            )
        }
        DeviceSpec::Sim(preset) => sim(*preset, spec, bdf, vm, reserved, knobs)?,
        DeviceSpec::Test => {
            let (function, handle) = TestFunction::new(&bdf.short(), vm, reserved.to_vec())
                .map_err(AttachError::Test)?;
            (Box::new(function), DeviceHandle::Test(handle))
        }
    };
    let tracer = tracer_for(knobs, bdf);
    let function: Box<dyn PciFunction> = match tracer {
        Some(t) => Box::new(TracedFunction::new(function, bdf, t.clone())),
        None => function,
    };
    let shared = bus
        .insert(bdf, &spec.to_string(), function)
        .map_err(bus_error)?;
    let placed = {
        let mut f = shared.lock().unwrap_or_else(|p| p.into_inner());
        bars.assign(f.as_mut())
            .map_err(|source| AttachError::Bars {
                spec: spec.clone(),
                bdf: bdf.short(),
                source,
            })?
    };
    if let Some(t) = tracer {
        // The decoders name registers from the guest's view of config space (its MSI-X
        // location, class code); read before the guest starts, so not traced.
        let config = {
            let mut f = shared.lock().unwrap_or_else(|p| p.into_inner());
            guest_config(f.as_mut())
        };
        t.lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_device(bdf, DeviceFacts::from_config(&config));
    }
    Ok(Attached {
        bdf,
        spec: spec.clone(),
        bars: placed,
        handle,
    })
}

#[cfg(feature = "sim")]
fn sim(
    preset: SimPreset,
    spec: &DeviceSpec,
    bdf: Bdf,
    vm: &Arc<Vm>,
    reserved: &[ReservedRange],
    knobs: &PassthroughKnobs,
) -> Result<(Box<dyn PciFunction>, DeviceHandle), AttachError> {
    use vfio_pci::sim::SimBackend;
    let backend = match preset {
        SimPreset::Nvme => SimBackend::nvme(),
        SimPreset::Nic => SimBackend::nic(),
    }
    .map_err(|source| AttachError::Sim {
        spec: spec.clone(),
        source,
    })?;
    let dev = passthrough(backend, spec, bdf, vm, reserved, knobs)?;
    Ok((
        Box::new(SharedPassthrough(dev.clone())),
        DeviceHandle::Passthrough(dev),
    ))
}

#[cfg(not(feature = "sim"))]
fn sim(
    _: SimPreset,
    spec: &DeviceSpec,
    _: Bdf,
    _: &Arc<Vm>,
    _: &[ReservedRange],
    _: &PassthroughKnobs,
) -> Result<(Box<dyn PciFunction>, DeviceHandle), AttachError> {
    Err(AttachError::Sim {
        spec: spec.clone(),
        source: std::io::Error::other("this refvmm was built without the `sim` feature"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!("test".parse::<DeviceSpec>().unwrap(), DeviceSpec::Test);
        assert_eq!(
            "sim".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Sim(SimPreset::Nvme)
        );
        assert_eq!(
            "sim:nic".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Sim(SimPreset::Nic)
        );
        assert!(
            "sim:gpu"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .contains("sim:nic")
        );
        assert!(matches!(
            "01:00.0".parse::<DeviceSpec>(),
            Ok(DeviceSpec::Host(_))
        ));
        let e = "nvme0".parse::<DeviceSpec>().unwrap_err();
        assert!(e.contains("`test`"), "{e}");
    }
}
