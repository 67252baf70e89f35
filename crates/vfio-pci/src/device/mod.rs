//! [`PassthroughDevice`]: a host PCI function in a guest, reaching the VMM through the
//! [ports](crate::ports).
//!
//! | file | concept |
//! |---|---|
//! | `mod.rs` | attach/detach, the config-space view and what guest config writes do |
//! | `bars.rs` | BARs: mmaps made once, mappings and trapped ranges that follow the guest |
//! | `bar_mmap.rs` | the mmap of a mapped segment, aligned so huge pages can back it |
//! | `interrupts.rs` | MSI-X, MSI and INTx wiring to VFIO eventfds and the VM's irqfds |
//! | `view.rs` | the `info mtree -f`-style view and per-range exit counters |

mod bar_mmap;
mod bars;
mod guest_log;
mod interrupts;
mod view;

use std::io;
use std::sync::{Arc, Mutex};

use iommu_dma::{DmaAttachment, DmaError, DmaOptions, GuestMemoryDma};
use log::{debug, info, warn};
use pci_config::bar::flags as bar_flags;
use pci_config::header::offset;
use pci_config::{
    BarDef, CapId, ConfigBackend, ConfigError, ConfigEvent, ConfigSpace, ExtCapabilityId,
    PciFunction, RomDef, VirtualizedConfig, capability,
};
use thiserror::Error;
use trap_map::{DeviceLayout, DevicePlan, MsixInfo, PageSize, PlanError, Policy};
use vfio_bindings::bindings::vfio::{VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::backend::{BackendError, DeviceBackend};
use crate::host::IrqKind;
use crate::ports::{BarMappingPort, InterruptPort, MsiWindow, TrapPort};
pub use bars::{BarAccessFault, MmapError};
use bars::{BarPorts, BarState, Shared};
pub use interrupts::IntxError;
use interrupts::IrqState;
pub use view::TrapCounts;

/// How guest RAM is made reachable for the device's DMA.
pub enum DmaSetup {
    /// No DMA mapping (a device that never masters the bus, or a test).
    None,
    /// Map this guest memory through the backend's DMA mapper (IOVA = GPA) at attach; the
    /// mappings go at detach.
    GuestMemory(GuestMemoryMmap),
    /// Share the mappings of devices in the same IOMMU domain (VFIO container): the
    /// [`GuestMemoryDma`] must use that domain's mapper.
    Shared(Arc<GuestMemoryDma>),
}

/// The memory's region count or the shared mapper, never the guest's pages.
impl std::fmt::Debug for DmaSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DmaSetup::None => f.write_str("None"),
            DmaSetup::GuestMemory(memory) => f
                .debug_struct("GuestMemory")
                .field("regions", &memory.num_regions())
                .finish_non_exhaustive(),
            DmaSetup::Shared(dma) => f.debug_tuple("Shared").field(dma).finish(),
        }
    }
}

/// What the VM gives the device: the [ports](crate::ports) through which it places BARs and
/// raises interrupts, and what it must know about the guest's address space.
pub struct AttachContext {
    /// Places the mapped parts of BARs in guest-physical space.
    pub memory: Arc<dyn BarMappingPort>,
    /// Dispatches guest accesses to the trapped parts of BARs.
    pub traps: Arc<dyn TrapPort>,
    /// MSI routes and irqfds; `None` leaves every interrupt unwired (logged once).
    pub interrupts: Option<Arc<dyn InterruptPort>>,
    /// The guest-physical window MSI messages must target (the interrupt controller's):
    /// a vector the guest points anywhere else stays unrouted.
    pub msi_window: MsiWindow,
    /// Guest RAM for DMA.
    pub dma: DmaSetup,
    /// The GSI the function's INTx pin is wired to (after the bus's swizzle); `None`: no INTx.
    pub intx_gsi: Option<u32>,
    /// Guest-physical ranges no memory BAR may cover: the VMM's own MMIO windows (ECAM, the
    /// interrupt controllers). A placement over one is refused like one over RAM (which the
    /// memory slots refuse by themselves) and the BAR stays unmapped.
    pub reserved: Vec<ReservedRange>,
}

/// The ports are the VMM's trait objects: only whether interrupts are wired is shown.
impl std::fmt::Debug for AttachContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachContext")
            .field("interrupts", &self.interrupts.is_some())
            .field("msi_window", &self.msi_window)
            .field("dma", &self.dma)
            .field("intx_gsi", &self.intx_gsi)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

/// A guest-physical range that belongs to the VMM, with its name for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedRange {
    /// First address.
    pub base: u64,
    /// One past the last address.
    pub end: u64,
    /// What is there ("the ECAM window", "the IOAPIC/local APIC range", ...).
    pub what: String,
}

impl AttachContext {
    /// A context whose three ports are one object (as `ports::KvmPorts` and
    /// `ports::InMemoryPorts` are), with no DMA, no INTx and
    /// nothing reserved; set the other fields with struct update syntax.
    pub fn new<P>(ports: Arc<P>, msi_window: MsiWindow) -> Self
    where
        P: BarMappingPort + TrapPort + InterruptPort + 'static,
    {
        Self {
            memory: ports.clone(),
            traps: ports.clone(),
            interrupts: Some(ports),
            msi_window,
            dma: DmaSetup::None,
            intx_gsi: None,
            reserved: Vec::new(),
        }
    }
}

impl ReservedRange {
    /// Whether `[base, end)` overlaps this range.
    pub fn overlaps(&self, base: u64, end: u64) -> bool {
        base < self.end && self.base < end
    }
}

/// Knobs of the passthrough device.
#[derive(Debug, Clone)]
pub struct PassthroughOptions {
    /// The host page size (mapped segments are whole host pages).
    pub page_size: PageSize,
    /// The trap-map policy (trap all, trap the PBA, MSI-X relocation).
    pub policy: Policy,
    /// Name for logs, slots, bus ranges and views; default: the backend's name (host BDF).
    pub name: Option<String>,
    /// Extended capabilities unlinked from the guest's view.
    pub hidden_extended: Vec<ExtCapabilityId>,
    /// Place the mmap of every mapped segment of 2 MiB or more at a 2 MiB or 1 GiB aligned
    /// address, so huge pages can back it on the host and in KVM (default). Off: the kernel
    /// places it (4 KiB aligned), for comparison.
    pub huge_page_alignment: bool,
}

/// Extended capabilities a guest must not drive on an assigned function, as QEMU hides them:
/// SR-IOV (VFs are host business), ARI (changes how the host bus decodes functions), Resizable
/// BAR and VF Resizable BAR (BAR sizes are fixed by the host's region sizes), and ATS, PRI and
/// PASID (no virtual IOMMU to serve them).
pub const DEFAULT_HIDDEN_EXTENDED: [ExtCapabilityId; 7] = [
    ExtCapabilityId::SRIOV,
    ExtCapabilityId::ARI,
    ExtCapabilityId::RESIZABLE_BAR,
    ExtCapabilityId(0x0024), // VF Resizable BAR
    ExtCapabilityId::ATS,
    ExtCapabilityId::PRI,
    ExtCapabilityId::PASID,
];

impl Default for PassthroughOptions {
    fn default() -> Self {
        Self {
            page_size: host_page_size(),
            policy: Policy::default(),
            name: None,
            hidden_extended: DEFAULT_HIDDEN_EXTENDED.to_vec(),
            huge_page_alignment: true,
        }
    }
}

/// This host's page size (4 KiB when it is not one trap-map knows).
pub fn host_page_size() -> PageSize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    PageSize::from_bytes(bytes as u64).unwrap_or(PageSize::Size4K)
}

/// Why a device could not be attached.
#[derive(Debug, Error)]
pub enum AttachError {
    /// A backend operation failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The device's config space cannot be modelled.
    #[error("{device}: its configuration space cannot be used: {source}")]
    Config {
        /// The device.
        device: String,
        /// What pci-config said.
        #[source]
        source: ConfigError,
    },
    /// The device's BARs cannot be planned.
    #[error("{device}: its BARs cannot be planned: {source}")]
    Plan {
        /// The device.
        device: String,
        /// What trap-map said.
        #[source]
        source: PlanError,
    },
    /// A mapped segment cannot be mmapped.
    #[error(transparent)]
    Mmap(#[from] MmapError),
    /// INTx cannot be wired.
    #[error("{device}: INTx on GSI {gsi} cannot be wired: {source}")]
    Intx {
        /// The device.
        device: String,
        /// The GSI.
        gsi: u32,
        /// What failed.
        #[source]
        source: IntxError,
    },
    /// Guest RAM cannot be mapped for DMA.
    #[error("{device}: guest RAM cannot be mapped for DMA: {source}")]
    Dma {
        /// The device.
        device: String,
        /// What iommu-dma said.
        #[source]
        source: DmaError,
    },
}

/// Why [`PassthroughDevice::bar_read`] or [`PassthroughDevice::bar_write`] failed.
#[derive(Debug, Error)]
#[error("{device}: access of {len} bytes at {offset:#x} of BAR {bar}: {source}")]
pub struct BarAccessError {
    /// The device.
    pub device: String,
    /// The BAR index (6: the ROM).
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Access size.
    pub len: usize,
    /// What went wrong.
    #[source]
    pub source: BarAccessFault,
}

/// The config-space port of the backend, as pci-config's view wants it.
struct ConfigPort(Arc<dyn DeviceBackend>);

impl ConfigBackend for ConfigPort {
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        self.0.config_read(offset, data).map_err(io::Error::other)
    }
    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        self.0.config_write(offset, data).map_err(io::Error::other)
    }
}

/// The state of one MSI-X vector, for views and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixVectorState {
    /// The GSI routed to the vector's message, if routed.
    pub gsi: Option<u32>,
    /// Whether its eventfd is bound as an irqfd (unmasked and routed).
    pub bound: bool,
    /// Masked (vector, function mask or MSI-X disabled).
    pub masked: bool,
    /// Its pending bit.
    pub pending: bool,
}

/// A host PCI function passed through to a guest. See the crate docs for how a VMM
/// attaches one; it answers the guest's config accesses as a [`PciFunction`].
pub struct PassthroughDevice {
    name: String,
    config: VirtualizedConfig<ConfigPort>,
    shared: Arc<Shared>,
    plan: DevicePlan,
    bars: Vec<BarState>,
    ports: BarPorts,
    reserved: Vec<ReservedRange>,
    dma: Option<DmaAttachment>,
    /// How long mapping guest RAM for DMA took at attach (pinning every page).
    dma_map_time: Option<std::time::Duration>,
    msix_cap: Option<u16>,
    detached: bool,
}

impl std::fmt::Debug for PassthroughDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughDevice")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Reads the whole config space through the backend (dword by dword).
fn read_config(backend: &dyn DeviceBackend) -> Result<Vec<u8>, BackendError> {
    let size = backend
        .info()
        .region(VFIO_PCI_CONFIG_REGION_INDEX)
        .map_or(256, |r| r.size);
    let len = if size >= 4096 { 4096 } else { 256 };
    let mut bytes = vec![0u8; len];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        backend.config_read((i * 4) as u16, chunk)?;
    }
    Ok(bytes)
}

/// The device's BARs as trap-map wants them: sizes from the region info, kinds from the
/// BAR registers, what the host lets us mmap.
fn layout(backend: &dyn DeviceBackend, model: &ConfigSpace) -> DeviceLayout {
    let info = backend.info();
    let mut bars = Vec::new();
    let mut i = 0u8;
    while i < 6 {
        let reg = model.read_u32(offset::BAR0 + 4 * u16::from(i)).unwrap_or(0);
        let is64 = reg & bar_flags::IO_SPACE == 0
            && reg & bar_flags::MEM_TYPE_MASK == bar_flags::MEM_TYPE_64;
        if let Some(r) = info.region(u32::from(i)).filter(|r| r.size > 0) {
            let bar = if reg & bar_flags::IO_SPACE != 0 {
                trap_map::HostBar::io(i, r.size)
            } else if is64 {
                trap_map::HostBar::memory64(i, r.size)
            } else {
                trap_map::HostBar::memory32(i, r.size)
            };
            let mut bar = bar
                .prefetchable(reg & bar_flags::IO_SPACE == 0 && reg & bar_flags::MEM_PREFETCH != 0)
                .msix_mappable(r.msix_mappable);
            if !r.flags.mmap {
                bar = bar.not_mmappable();
            }
            if let Some(areas) = &r.sparse_areas {
                bar = bar.sparse_mmap(areas.clone());
            }
            bars.push(bar);
        }
        i += if is64 { 2 } else { 1 };
    }
    let msix = model.msix().map(|m| MsixInfo::from(&m));
    DeviceLayout { bars, msix }
}

impl PassthroughDevice {
    /// Attaches `backend` to the VM described by `ctx`: resets the function, builds the
    /// guest's view of its config space, plans and mmaps its BARs, wires INTx and maps guest
    /// RAM for DMA. Nothing appears in the guest's address space until the guest programs a
    /// BAR and turns decode on.
    pub fn attach<B: DeviceBackend + 'static>(
        backend: B,
        ctx: AttachContext,
        options: PassthroughOptions,
    ) -> Result<Self, AttachError> {
        let backend: Arc<dyn DeviceBackend> = Arc::new(backend);
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| backend.name().to_string());
        match backend.reset() {
            Ok(true) => debug!("{name}: reset at attach"),
            Ok(false) => info!("{name}: the device has no reset method; attaching it as it is"),
            Err(e) => warn!(
                "{name}: reset at attach failed: {e}; attaching it as it is (it may keep state \
                 from its last user)"
            ),
        }
        let bytes = read_config(backend.as_ref())?;
        let model = ConfigSpace::from_bytes(&bytes).map_err(|source| AttachError::Config {
            device: name.clone(),
            source,
        })?;
        let plan = DevicePlan::new(
            &layout(backend.as_ref(), &model),
            options.page_size,
            options.policy,
        )
        .map_err(|source| AttachError::Plan {
            device: name.clone(),
            source,
        })?;
        let mut config = VirtualizedConfig::passthrough(model, ConfigPort(backend.clone()));
        let msix_cap = setup_model(&name, &mut config, &plan, backend.as_ref(), &options);

        let intx_wanted = ctx.intx_gsi.filter(|_| {
            config.model().read_u8(offset::INTERRUPT_PIN).unwrap_or(0) != 0
                && backend.irq_count(IrqKind::Intx) > 0
                && ctx.interrupts.is_some()
        });
        let model = config.model_mut();
        match intx_wanted {
            Some(gsi) => {
                let _ = model.set_u8(offset::INTERRUPT_LINE, gsi as u8);
            }
            None => {
                // No INTx for the guest: pin 0 says so (PCI 3.0 §6.2.4).
                let _ = model.set_u8(offset::INTERRUPT_PIN, 0);
                let _ = model.set_u8(offset::INTERRUPT_LINE, 0xff);
            }
        }
        if ctx.interrupts.is_none() {
            warn!("{name}: attached without interrupt routing: MSI, MSI-X and INTx stay unwired");
        }

        let log = guest_log::limiter();
        let shared = Arc::new(Shared {
            name: name.clone(),
            backend: backend.clone(),
            irq: Mutex::new(IrqState::new(
                name.clone(),
                backend.clone(),
                ctx.interrupts.clone(),
                ctx.msi_window,
                plan.msix().map(|m| m.entries),
                log.clone(),
            )),
            msix: plan.msix().copied(),
            log,
        });
        let mut bars = Vec::new();
        for bar in plan.bars() {
            bars.push(BarState::from_plan(
                &shared,
                bar,
                options.huge_page_alignment,
            )?);
        }
        if let Some(rom) = config.model().rom() {
            bars.push(BarState::rom(&shared, u64::from(rom.size)));
        }
        let mut device = Self {
            name: name.clone(),
            config,
            shared,
            plan,
            bars,
            ports: BarPorts {
                memory: ctx.memory,
                traps: ctx.traps,
            },
            reserved: ctx.reserved,
            dma: None,
            dma_map_time: None,
            msix_cap,
            detached: false,
        };
        if let Some(gsi) = intx_wanted {
            device
                .shared
                .irq()
                .setup_intx(gsi)
                .map_err(|source| AttachError::Intx {
                    device: name.clone(),
                    gsi,
                    source,
                })?;
        }
        let dma_err = |source| AttachError::Dma {
            device: name.clone(),
            source,
        };
        let dma_start = std::time::Instant::now();
        device.dma = match ctx.dma {
            DmaSetup::None => None,
            DmaSetup::GuestMemory(memory) => {
                let dma = Arc::new(
                    GuestMemoryDma::with_guest_memory(
                        backend.dma_mapper(),
                        &memory,
                        DmaOptions::default(),
                    )
                    .map_err(dma_err)?,
                );
                Some(dma.attach_device(&name).map_err(dma_err)?)
            }
            DmaSetup::Shared(dma) => Some(dma.attach_device(&name).map_err(dma_err)?),
        };
        if device.dma.is_some() {
            device.dma_map_time = Some(dma_start.elapsed());
        }
        Ok(device)
    }

    /// How long attaching to DMA took (mapping and pinning guest RAM when this device was the
    /// first of its IOMMU domain; sharing the mappings otherwise); `None` without DMA.
    pub fn dma_map_time(&self) -> Option<std::time::Duration> {
        self.dma_map_time
    }

    /// The device's name (host BDF unless set in the options).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trap-map plan of its BARs.
    pub fn plan(&self) -> &DevicePlan {
        &self.plan
    }

    /// The guest's view of config space (model and emulation mask).
    pub fn config(&self) -> &VirtualizedConfig<impl ConfigBackend> {
        &self.config
    }

    /// Where BAR `index` (6: the ROM) is mapped in the guest now, if it is.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        self.bars
            .iter()
            .find(|b| b.index == index)
            .and_then(|b| b.placed)
    }

    /// The DMA attachment, while attached.
    pub fn dma(&self) -> Option<&DmaAttachment> {
        self.dma.as_ref()
    }

    /// The GSI of the INTx line, if wired.
    pub fn intx_gsi(&self) -> Option<u32> {
        self.shared.irq().intx_gsi()
    }

    /// The state of MSI-X vector `vector`.
    pub fn msix_vector(&self, vector: u16) -> Option<MsixVectorState> {
        let irq = self.shared.irq();
        let msix = irq.msix.as_ref()?;
        if vector >= msix.table.len() {
            return None;
        }
        let (gsi, bound) = irq.msix_vector_state(vector).unwrap_or((None, false));
        Some(MsixVectorState {
            gsi,
            bound,
            masked: msix.table.is_masked(vector),
            pending: msix.table.is_pending(vector),
        })
    }

    /// GSIs of the MSI vectors in use.
    pub fn msi_gsis(&self) -> Vec<Option<u32>> {
        self.shared.irq().msi_gsis()
    }

    /// Pending MSI-X interrupts delivered at unmask so far.
    pub fn delivered_pending(&self) -> u64 {
        self.shared
            .irq()
            .counters
            .delivered_pending
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Guest MSI/MSI-X addresses refused so far (outside the interrupt window).
    pub fn refused_routes(&self) -> u64 {
        self.shared
            .irq()
            .counters
            .refused_routes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads `data.len()` bytes at `offset` of BAR `bar` (0-5, or
    /// [`ROM_INDEX`](crate::ports::ROM_INDEX)) as the guest would: for a VMM that dispatches
    /// accesses itself rather than through the [`TrapPort`] handlers. Mapped parts are read
    /// through the device's mmap, trapped ones through their handler (and counted).
    pub fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), BarAccessError> {
        self.bar(bar, offset, data.len())?
            .read(offset, data)
            .map_err(|fault| self.bar_error(bar, offset, data.len(), fault))
    }

    /// Writes `data` at `offset` of BAR `bar` as the guest would (see
    /// [`bar_read`](Self::bar_read)).
    pub fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BarAccessError> {
        self.bar(bar, offset, data.len())?
            .write(offset, data)
            .map_err(|fault| self.bar_error(bar, offset, data.len(), fault))
    }

    fn bar(&self, bar: u8, offset: u64, len: usize) -> Result<&BarState, BarAccessError> {
        self.bars
            .iter()
            .find(|b| b.index == bar)
            .ok_or_else(|| self.bar_error(bar, offset, len, BarAccessFault::NoSuchBar))
    }

    fn bar_error(&self, bar: u8, offset: u64, len: usize, fault: BarAccessFault) -> BarAccessError {
        BarAccessError {
            device: self.name.clone(),
            bar,
            offset,
            len,
            source: fault,
        }
    }

    /// Collects device signals on masked MSI-X vectors into their pending bits (and delivers
    /// signals of vectors that are deliverable). A VMM calls this when a vector's eventfd
    /// becomes readable while unbound, or periodically; PBA reads do it too.
    pub fn poll_interrupts(&self) {
        self.shared.irq().poll_masked();
    }

    /// Unwires interrupts, removes the BARs from the guest, resets the function (or, without a
    /// reset method, clears its Bus Master Enable), drops its BAR mmaps and then unmaps guest
    /// RAM from the IOMMU: when the backend goes after this, nothing holds the host device
    /// open, so its VFIO group can leave the container and the device can be attached again.
    /// Dropping the device does the same, logging instead of returning the DMA error.
    pub fn detach(mut self) -> Result<(), AttachError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), AttachError> {
        if self.detached {
            return Ok(());
        }
        self.detached = true;
        self.shared.irq().teardown();
        for bar in &mut self.bars {
            bar.remove(&self.ports, &self.shared.log);
        }
        // Quiesce the function before its IOMMU mappings go, so it cannot DMA into guest RAM
        // that is being unmapped (or fault on it): reset it, or at least stop it mastering.
        match self.shared.backend.reset() {
            Ok(true) => {}
            Ok(false) => self.stop_bus_master(),
            Err(e) => {
                warn!("{}: reset at detach failed: {e}", self.name);
                self.stop_bus_master();
            }
        }
        // Then the device's BAR mmaps, before anything can drop the backend: the host device
        // stays open while one of them lives (see `BarState::release_mappings`).
        for bar in &mut self.bars {
            bar.release_mappings();
        }
        match self.dma.take() {
            Some(a) => a.detach().map_err(|source| AttachError::Dma {
                device: self.name.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Clears Bus Master Enable in the host's command register (a device without a reset).
    fn stop_bus_master(&self) {
        let backend = &self.shared.backend;
        let mut command = [0u8; 2];
        let result = backend
            .config_read(offset::COMMAND, &mut command)
            .and_then(|()| {
                let value = u16::from_le_bytes(command) & !pci_config::header::Command::BUS_MASTER;
                backend.config_write(offset::COMMAND, &value.to_le_bytes())
            });
        if let Err(e) = result {
            warn!(
                "{}: cannot clear Bus Master Enable at detach ({e}); it may still DMA",
                self.name
            );
        }
    }

    /// Re-evaluates where every BAR and the ROM should be, after a write that may have moved
    /// one or changed decode.
    fn update_bars(&mut self) {
        let model = self.config.model();
        let command = model.command();
        for bar in &mut self.bars {
            // (decode on, sizing probe in progress, committed address)
            let state = if bar.is_rom {
                model.rom().map(|r| {
                    (
                        command.memory() && r.enabled,
                        r.sizing,
                        u64::from(r.address),
                    )
                })
            } else {
                model.bar(usize::from(bar.index)).map(|b| {
                    let decode = if b.kind.is_memory() {
                        command.memory()
                    } else {
                        command.io()
                    };
                    (decode, b.sizing, b.address)
                })
            };
            let desired = match state {
                None | Some((false, _, _)) => None,
                // A sizing probe keeps the committed address (pci-config does too): the
                // mapping stays where it is until the guest writes a real address.
                Some((true, true, _)) => bar.placed,
                // Address 0 is "unassigned": firmware and Linux leave BARs there before
                // allocation, and mapping it would cover guest RAM at 0.
                Some((true, false, 0)) => None,
                Some((true, false, address)) => Some(address),
            };
            bar.place(
                &self.name,
                desired,
                &self.ports,
                &self.reserved,
                &self.shared.log,
            );
        }
    }

    /// What the events of one config write asked for: BARs to re-place (`bars`), MSI-X or MSI
    /// routing to re-read. Each reads the registers' state after the write.
    fn handle(&mut self, bars: bool, msix: bool, msi: bool) {
        if let Some(cap) = self.msix_cap.filter(|_| msix) {
            let control = self.config.model().read_u16(cap + 2).unwrap_or(0);
            let mut irq = self.shared.irq();
            let events = match irq.msix.as_mut() {
                Some(m) => m.table.write_message_control(control),
                None => Vec::new(),
            };
            irq.apply_msix(events);
        }
        if msi {
            let cap = self.config.model().msi();
            self.shared.irq().apply_msi(cap);
        }
        if bars {
            self.update_bars();
        }
    }
}

/// Sets up the guest's view: BARs sized from the plan, the ROM, MSI-X locations from the
/// plan, hidden capabilities. Returns the MSI-X capability offset.
fn setup_model(
    name: &str,
    config: &mut VirtualizedConfig<ConfigPort>,
    plan: &DevicePlan,
    backend: &dyn DeviceBackend,
    options: &PassthroughOptions,
) -> Option<u16> {
    let model = config.model_mut();
    for i in 0..6 {
        model.clear_bar(i);
    }
    for bar in plan.bars() {
        let size = bar.guest_size();
        let def = match bar.kind() {
            pci_config::BarKind::Io => BarDef::io(size as u32),
            pci_config::BarKind::Memory32 => BarDef::memory32(size as u32),
            pci_config::BarKind::Memory64 => BarDef::memory64(size),
        };
        let def = if bar.prefetchable() {
            def.prefetchable()
        } else {
            def
        };
        if let Err(e) = model.set_bar(usize::from(bar.index()), def) {
            warn!("{name}: BAR {} hidden from the guest: {e}", bar.index());
        }
    }
    let rom_size = backend
        .info()
        .region(VFIO_PCI_ROM_REGION_INDEX)
        .map_or(0, |r| r.size);
    let rom_reg = model.header_type().rom_offset();
    let _ = model.set_u32(rom_reg, 0);
    if rom_size > 0 {
        if let Err(e) = model.set_rom(RomDef::new(rom_size.min(u64::from(u32::MAX)) as u32)) {
            warn!("{name}: expansion ROM hidden from the guest: {e}");
        }
    }
    let msix_cap = model.msix().map(|m| m.offset);
    if let (Some(cap), Some(p)) = (msix_cap, plan.msix()) {
        let _ = model.set_u32(cap + 4, p.table_register());
        let _ = model.set_u32(cap + 8, p.pba_register());
        // Enable and function mask start clear (the function was just reset).
        let control = model.read_u16(cap + 2).unwrap_or(0) & 0x07ff;
        let _ = model.set_u16(cap + 2, control);
    }
    if let Some(msi) = model.msi() {
        let control = msi.control & !1;
        let _ = model.set_u16(msi.offset + 2, control);
    }
    let (caps, _) = capability::capabilities_lenient(config.model().bytes());
    for cap in caps {
        if let CapId::Extended(id) = cap.id {
            if options.hidden_extended.contains(&id) {
                match config.hide_capability(cap.offset) {
                    Ok(_) => debug!("{name}: hid {id} at {:#x}", cap.offset),
                    Err(e) => warn!("{name}: cannot hide {id} at {:#x}: {e}", cap.offset),
                }
            }
        }
    }
    msix_cap
}

impl PciFunction for PassthroughDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if let Err(e) = self.config.read(offset, data) {
            debug!("{}: config read: {e}", self.name);
            data.fill(0xff);
        }
    }

    fn config_read_u32(&mut self, offset: u16) -> u32 {
        self.config.read_u32(offset).unwrap_or_else(|e| {
            debug!("{}: config read: {e}", self.name);
            u32::MAX
        })
    }

    fn config_read_u16(&mut self, offset: u16) -> u16 {
        self.config.read_u16(offset).unwrap_or_else(|e| {
            debug!("{}: config read: {e}", self.name);
            u16::MAX
        })
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        // The events are taken as the write hands them over (`write_with`: no `ConfigEvents`
        // built and copied on every access); what they ask for is done once the write is over.
        let (mut bars, mut msix, mut msi) = (false, false, false);
        let written = self.config.write_with(offset, data, |event| match event {
            ConfigEvent::BarMoved { .. }
            | ConfigEvent::RomMoved { .. }
            | ConfigEvent::RomEnableChanged { .. }
            | ConfigEvent::DecodeChanged { .. } => bars = true,
            ConfigEvent::MsixChanged { .. } => msix = true,
            ConfigEvent::MsiChanged { .. } => msi = true,
            ConfigEvent::BusMasterChanged { .. }
            | ConfigEvent::IntxDisableChanged { .. }
            | ConfigEvent::BridgeWindowChanged { .. } => {}
        });
        match written {
            Ok(()) => self.handle(bars, msix, msi),
            Err(e) => debug!("{}: config write: {e}", self.name),
        }
    }
}

impl Drop for PassthroughDevice {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            warn!("{}: detach: {e}", self.name);
        }
    }
}
