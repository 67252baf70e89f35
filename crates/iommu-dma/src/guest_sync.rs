//! Keeping an IOMMU in sync with guest RAM: IOVA = GPA for all of guest RAM and nothing else.
//!
//! [`GuestMemoryDma`] belongs to one mapper (one VFIO container or iommufd IOAS). Devices
//! attach to it: the first attach maps every RAM region (one mapping per region, split only
//! where the host's valid IOVA ranges demand), later attaches share those mappings, and the
//! last detach unmaps everything. Hot-added and hot-removed regions are mapped and unmapped
//! while devices are attached. Every multi-step change rolls back on failure, so an error
//! leaves the mappings as they were.
//!
//! The regions' mmaps are kept alive (an `Arc` of each `MmapRegion`) while they are tracked,
//! so guest memory can never be unmapped from the process while a device may still DMA to it.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::error::DmaError;
use crate::mapper::{DmaMapper, DmaMapping, DmaPerm, HostIommuLimits};
use crate::range::{ByteSize, IovaRange, RangeList};
use crate::report::MappingReport;
use crate::split::split_region;

/// Policy for a [`GuestMemoryDma`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaOptions {
    /// Map passed-through BARs too, so devices can DMA to each other (peer-to-peer). Off by
    /// default, as in QEMU and cloud-hypervisor: few guests need it, and it lets one device
    /// write another's registers.
    pub peer_to_peer: bool,
    /// Permission guest RAM is mapped with. Read-write unless a VMM wants a read-only guest
    /// view for a device that must never write memory.
    pub ram_perm: DmaPerm,
}

impl Default for DmaOptions {
    fn default() -> Self {
        DmaOptions {
            peer_to_peer: false,
            ram_perm: DmaPerm::ReadWrite,
        }
    }
}

/// What a tracked region is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Guest RAM.
    Ram,
    /// A passed-through BAR mapped for peer-to-peer DMA, with a label such as
    /// `0000:01:00.0 BAR0`.
    PeerBar(String),
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionKind::Ram => f.write_str("guest RAM"),
            RegionKind::PeerBar(label) => write!(f, "peer BAR {label}"),
        }
    }
}

/// How one region is (or will be) mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionReport {
    /// RAM or peer BAR.
    pub kind: RegionKind,
    /// Guest-physical range (= IOVA range).
    pub range: IovaRange,
    /// The mappings in place now (empty while no device is attached).
    pub mapped: Vec<IovaRange>,
    /// Parts that cannot be mapped on this host (outside its valid IOVA ranges): devices
    /// cannot DMA there.
    pub excluded: Vec<IovaRange>,
}

impl fmt::Display for RegionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}): ",
            self.kind,
            self.range,
            ByteSize(self.range.size())
        )?;
        match self.mapped.len() {
            0 => f.write_str("not mapped")?,
            1 => f.write_str("1 mapping")?,
            n => write!(f, "{n} mappings")?,
        }
        if !self.excluded.is_empty() {
            write!(
                f,
                "; NOT mappable (outside the host's valid IOVA ranges, no DMA possible): {}",
                RangeList(&self.excluded)
            )?;
        }
        Ok(())
    }
}

/// Whether a peer BAR was mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerBarStatus {
    /// Tracked, and mapped if a device is attached.
    Tracked,
    /// Ignored: [`DmaOptions::peer_to_peer`] is off.
    Disabled,
}

struct TrackedRegion {
    kind: RegionKind,
    range: IovaRange,
    host_addr: u64,
    /// Keeps the backing mmap alive while the region may be mapped; `None` for peer BARs,
    /// whose lifetime the caller of `add_peer_bar` guarantees.
    _keep_alive: Option<Arc<dyn Any + Send + Sync>>,
    mapped: Vec<DmaMapping>,
    excluded: Vec<IovaRange>,
}

impl TrackedRegion {
    fn report(&self, limits: &HostIommuLimits) -> RegionReport {
        // While detached, show what the host's limits would exclude.
        let excluded = if self.mapped.is_empty() {
            split_region(self.range, self.host_addr, DmaPerm::ReadWrite, limits).excluded
        } else {
            self.excluded.clone()
        };
        RegionReport {
            kind: self.kind.clone(),
            range: self.range,
            mapped: self
                .mapped
                .iter()
                .filter_map(DmaMapping::iova_range)
                .collect(),
            excluded,
        }
    }
}

#[derive(Default)]
struct SyncState {
    devices: BTreeMap<u64, String>,
    next_device_id: u64,
    regions: BTreeMap<u64, TrackedRegion>,
}

impl SyncState {
    fn overlapping(&self, range: &IovaRange) -> Option<IovaRange> {
        let (_, r) = self.regions.range(..=range.last()).next_back()?;
        r.range.overlaps(range).then_some(r.range)
    }
}

/// Guest memory made reachable for device DMA at IOVA = GPA through one [`DmaMapper`].
///
/// Share one per container or IOAS (`Arc<GuestMemoryDma>`); each device calls
/// [`attach_device`](Self::attach_device) and keeps the returned [`DmaAttachment`].
pub struct GuestMemoryDma {
    mapper: Arc<dyn DmaMapper>,
    options: DmaOptions,
    state: Mutex<SyncState>,
}

impl fmt::Debug for GuestMemoryDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemoryDma")
            .field("mapper", &self.mapper.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl GuestMemoryDma {
    /// Track no memory yet; add regions with [`add_region`](Self::add_region).
    pub fn new(mapper: Arc<dyn DmaMapper>, options: DmaOptions) -> Self {
        GuestMemoryDma {
            mapper,
            options,
            state: Mutex::new(SyncState::default()),
        }
    }

    /// Track every region of `memory` (e.g. a `GuestMemoryMmap`). Nothing is mapped until a
    /// device attaches.
    pub fn with_guest_memory<M, B>(
        mapper: Arc<dyn DmaMapper>,
        memory: &M,
        options: DmaOptions,
    ) -> Result<Self, DmaError>
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>>,
        B: Bitmap + Send + Sync + 'static,
    {
        let dma = Self::new(mapper, options);
        for region in memory.iter() {
            dma.add_region(region)?;
        }
        Ok(dma)
    }

    /// The mapper all devices share.
    pub fn mapper(&self) -> &Arc<dyn DmaMapper> {
        &self.mapper
    }

    /// The names of the attached devices.
    pub fn attached_devices(&self) -> Vec<String> {
        self.lock().devices.values().cloned().collect()
    }

    /// Attach a device (named for messages, e.g. by BDF). The first attach maps all tracked
    /// memory; later ones share the mappings after checking they still fit the host's valid
    /// ranges, which a new device can narrow. On error nothing changes.
    pub fn attach_device(self: &Arc<Self>, device: &str) -> Result<DmaAttachment, DmaError> {
        let mut state = self.lock();
        let limits = self.mapper.refresh_limits()?;
        if state.devices.is_empty() {
            let ram: Vec<&TrackedRegion> = state
                .regions
                .values()
                .filter(|r| r.kind == RegionKind::Ram)
                .collect();
            let ram_bytes = ram
                .iter()
                .map(|r| self.ram_bytes(r.range, r.host_addr, &limits))
                .sum();
            self.check_memlock(
                &format!("guest RAM for {device} ({} region(s))", ram.len()),
                ram_bytes,
            )?;
            let starts: Vec<u64> = state.regions.keys().copied().collect();
            for (i, start) in starts.iter().enumerate() {
                let region = state.regions.get_mut(start).expect("key from the map");
                if let Err(e) = self.map_region(region, &limits) {
                    for undo in &starts[..i] {
                        let done = state.regions.get_mut(undo).expect("key from the map");
                        self.rollback_region(done);
                    }
                    return Err(e);
                }
            }
        } else {
            for region in state.regions.values() {
                for m in &region.mapped {
                    let r = m.iova_range().expect("mapped ranges are valid");
                    if limits.range_containing(&r).is_none() {
                        return Err(DmaError::OutsideValidRanges {
                            mapper: format!("{} (after attaching {device})", self.mapper.name()),
                            range: r,
                            valid: RangeList(limits.valid_ranges()).to_string(),
                        });
                    }
                }
            }
        }
        let id = state.next_device_id;
        state.next_device_id += 1;
        state.devices.insert(id, device.to_string());
        log::info!(
            "{}: {device} attached for DMA ({} device(s))",
            self.mapper.name(),
            state.devices.len()
        );
        Ok(DmaAttachment {
            dma: Arc::clone(self),
            id,
            device: device.to_string(),
            detached: false,
        })
    }

    /// Track a hot-added RAM region and, while devices are attached, map it. Returns how it
    /// is mapped; a part outside the host's valid IOVA ranges is not mapped and is listed in
    /// [`RegionReport::excluded`] (and logged as a warning). On error nothing changes.
    pub fn add_region<B>(&self, region: &GuestRegionMmap<B>) -> Result<RegionReport, DmaError>
    where
        B: Bitmap + Send + Sync + 'static,
    {
        let mmap = region.get_mmap();
        let gpa = region.start_addr().raw_value();
        let size = region.len();
        let host_addr = mmap.as_ptr() as u64;
        let keep_alive: Arc<dyn Any + Send + Sync> = mmap;
        self.track(RegionKind::Ram, gpa, size, host_addr, Some(keep_alive))
    }

    /// Forget the RAM region at `gpa` of `size` bytes (hot-remove), unmapping it first. It
    /// must match an added region exactly.
    pub fn remove_region(&self, gpa: GuestAddress, size: u64) -> Result<(), DmaError> {
        self.untrack(gpa.raw_value(), size)
    }

    /// Track a passed-through BAR at guest address `gpa` for peer-to-peer DMA, if
    /// [`DmaOptions::peer_to_peer`] is on; otherwise nothing happens.
    ///
    /// # Safety
    ///
    /// `host_addr..host_addr + size` (the BAR's mmap in this process) must stay mapped until
    /// [`remove_peer_bar`](Self::remove_peer_bar) succeeds for it or this value is dropped
    /// with no device attached, and may only be accessed through raw pointers or volatile
    /// accesses meanwhile (see [`DmaMapper::map`]).
    pub unsafe fn add_peer_bar(
        &self,
        label: &str,
        gpa: u64,
        host_addr: *mut u8,
        size: u64,
    ) -> Result<PeerBarStatus, DmaError> {
        if !self.options.peer_to_peer {
            log::debug!(
                "{}: not mapping {label} at {gpa:#x} for DMA: peer-to-peer is off",
                self.mapper.name()
            );
            return Ok(PeerBarStatus::Disabled);
        }
        self.track(
            RegionKind::PeerBar(label.to_string()),
            gpa,
            size,
            host_addr as u64,
            None,
        )?;
        Ok(PeerBarStatus::Tracked)
    }

    /// Forget a peer BAR added with [`add_peer_bar`](Self::add_peer_bar) (the guest moved
    /// it, or the device goes away), unmapping it first.
    pub fn remove_peer_bar(&self, gpa: u64, size: u64) -> Result<(), DmaError> {
        self.untrack(gpa, size)
    }

    /// What is tracked and mapped, for diagnostics.
    pub fn report(&self) -> GuestDmaReport {
        let state = self.lock();
        let limits = self.mapper.limits();
        GuestDmaReport {
            devices: state.devices.values().cloned().collect(),
            regions: state.regions.values().map(|r| r.report(&limits)).collect(),
            mapper: self.mapper.report(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes that mapping the RAM region `range` at `host_addr` would pin on this host (the
    /// parts outside the valid IOVA ranges are not mapped, so not pinned).
    fn ram_bytes(&self, range: IovaRange, host_addr: u64, limits: &HostIommuLimits) -> u64 {
        split_region(range, host_addr, self.options.ram_perm, limits)
            .mappings
            .iter()
            .map(|m| m.size)
            .sum()
    }

    fn check_memlock(&self, what: &str, bytes: u64) -> Result<(), DmaError> {
        if bytes == 0 {
            return Ok(());
        }
        if let Some(budget) = self.mapper.memlock_budget()? {
            budget
                .check(what, bytes)
                .map_err(|shortfall| DmaError::Memlock {
                    mapper: self.mapper.name().to_string(),
                    shortfall,
                })?;
        }
        Ok(())
    }

    fn track(
        &self,
        kind: RegionKind,
        gpa: u64,
        size: u64,
        host_addr: u64,
        keep_alive: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Result<RegionReport, DmaError> {
        let bad = |reason: &str| DmaError::BadRegion {
            mapper: self.mapper.name().to_string(),
            gpa,
            size,
            reason: reason.to_string(),
        };
        let range = IovaRange::new(gpa, size)
            .ok_or_else(|| bad("it is empty or runs past the end of the address space"))?;
        if host_addr.checked_add(size - 1).is_none() {
            return Err(bad(
                "its host address range runs past the end of the address space",
            ));
        }
        let page = self.mapper.limits().page_size();
        if (gpa ^ host_addr) & (page - 1) != 0 {
            return Err(bad(&format!(
                "guest address and host address {host_addr:#x} differ in their offset within \
                 a {page:#x}-byte IOMMU page, so no page-granular mapping can translate it"
            )));
        }
        let mut state = self.lock();
        if let Some(existing) = state.overlapping(&range) {
            return Err(DmaError::RegionOverlap {
                mapper: self.mapper.name().to_string(),
                range,
                existing,
            });
        }
        let mut region = TrackedRegion {
            kind,
            range,
            host_addr,
            _keep_alive: keep_alive,
            mapped: Vec::new(),
            excluded: Vec::new(),
        };
        let limits = self.mapper.limits();
        if !state.devices.is_empty() {
            if region.kind == RegionKind::Ram {
                let bytes = self.ram_bytes(range, host_addr, &limits);
                self.check_memlock(&format!("hot-added guest RAM {range}"), bytes)?;
            }
            self.map_region(&mut region, &limits)?;
        }
        let report = region.report(&limits);
        state.regions.insert(gpa, region);
        Ok(report)
    }

    fn untrack(&self, gpa: u64, size: u64) -> Result<(), DmaError> {
        let range = IovaRange::new(gpa, size).ok_or_else(|| DmaError::BadRegion {
            mapper: self.mapper.name().to_string(),
            gpa,
            size,
            reason: "it is empty or runs past the end of the address space".to_string(),
        })?;
        let mut state = self.lock();
        let matches = state.regions.get(&gpa).is_some_and(|r| r.range == range);
        if !matches {
            return Err(DmaError::RegionNotFound {
                mapper: self.mapper.name().to_string(),
                range,
            });
        }
        let region = state.regions.get_mut(&gpa).expect("checked above");
        self.unmap_region(region)?;
        state.regions.remove(&gpa);
        Ok(())
    }

    /// Map every piece of `region`; on failure unmap the pieces mapped so far.
    fn map_region(
        &self,
        region: &mut TrackedRegion,
        limits: &HostIommuLimits,
    ) -> Result<(), DmaError> {
        let perm = match region.kind {
            RegionKind::Ram => self.options.ram_perm,
            RegionKind::PeerBar(_) => DmaPerm::ReadWrite,
        };
        let plan = split_region(region.range, region.host_addr, perm, limits);
        if !plan.excluded.is_empty() {
            log::warn!(
                "{}: {} {} is split at the host's reserved IOVA ranges; not mapped, so devices \
                 cannot DMA there: {}",
                self.mapper.name(),
                region.kind,
                region.range,
                RangeList(&plan.excluded)
            );
        }
        for m in &plan.mappings {
            // SAFETY: the piece lies inside the region's host range, which stays mapped while
            // the region is tracked: RAM regions hold an Arc of their MmapRegion, peer BARs
            // are covered by `add_peer_bar`'s contract. Guest memory is accessed only through
            // vm-memory's volatile accessors and by the guest, which `map` permits.
            if let Err(e) = unsafe { self.mapper.map(*m) } {
                self.rollback_region(region);
                return Err(e);
            }
            region.mapped.push(*m);
        }
        region.excluded = plan.excluded;
        Ok(())
    }

    /// Unmap what `region` has mapped, best effort, after a failed multi-step change.
    fn rollback_region(&self, region: &mut TrackedRegion) {
        if let Err(e) = self.unmap_region(region) {
            log::error!("rolling back DMA mappings failed: {e}");
        }
    }

    /// Unmap every mapping of `region`; the ones that fail stay recorded.
    fn unmap_region(&self, region: &mut TrackedRegion) -> Result<(), DmaError> {
        let mut failures = Vec::new();
        region
            .mapped
            .retain(|m| match self.mapper.unmap(m.iova, m.size) {
                Ok(_) => false,
                Err(e) => {
                    failures.push(e);
                    true
                }
            });
        if failures.is_empty() {
            region.excluded.clear();
            Ok(())
        } else {
            Err(DmaError::Incomplete {
                mapper: self.mapper.name().to_string(),
                failures,
            })
        }
    }

    fn detach(&self, id: u64) -> Result<(), DmaError> {
        let mut state = self.lock();
        let Some(device) = state.devices.remove(&id) else {
            return Ok(());
        };
        log::info!(
            "{}: {device} detached from DMA ({} device(s) left)",
            self.mapper.name(),
            state.devices.len()
        );
        if !state.devices.is_empty() {
            return Ok(());
        }
        let mut failures = Vec::new();
        for region in state.regions.values_mut() {
            if let Err(DmaError::Incomplete { failures: f, .. }) = self.unmap_region(region) {
                failures.extend(f);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(DmaError::Incomplete {
                mapper: self.mapper.name().to_string(),
                failures,
            })
        }
    }
}

/// One device's use of a [`GuestMemoryDma`]. Dropping it detaches (errors are logged); call
/// [`detach`](Self::detach) to see them.
#[derive(Debug)]
pub struct DmaAttachment {
    dma: Arc<GuestMemoryDma>,
    id: u64,
    device: String,
    detached: bool,
}

impl DmaAttachment {
    /// The device name given at attach.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The shared guest memory mapping this device is attached to.
    pub fn guest_memory_dma(&self) -> &Arc<GuestMemoryDma> {
        &self.dma
    }

    /// Detach the device; when it is the last one, unmap all guest memory.
    pub fn detach(mut self) -> Result<(), DmaError> {
        self.detached = true;
        self.dma.detach(self.id)
    }
}

impl Drop for DmaAttachment {
    fn drop(&mut self) {
        if !self.detached {
            if let Err(e) = self.dma.detach(self.id) {
                log::error!("detaching {} from DMA: {e}", self.device);
            }
        }
    }
}

/// A [`GuestMemoryDma`] snapshot: devices, regions and how each maps, and the mapper's own
/// [`MappingReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDmaReport {
    /// Names of attached devices.
    pub devices: Vec<String>,
    /// Every tracked region.
    pub regions: Vec<RegionReport>,
    /// The mapper's mappings and limits.
    pub mapper: MappingReport,
}

impl fmt::Display for GuestDmaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest memory DMA via {}: ", self.mapper.mapper)?;
        if self.devices.is_empty() {
            writeln!(f, "no device attached, nothing mapped")?;
        } else {
            writeln!(
                f,
                "{} device(s) attached ({})",
                self.devices.len(),
                self.devices.join(", ")
            )?;
        }
        for r in &self.regions {
            writeln!(f, "  {r}")?;
        }
        write!(f, "{}", self.mapper)
    }
}
