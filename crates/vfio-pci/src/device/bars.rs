//! BARs in the guest: the mapped segments of the trap-map plan are mmaps of the host regions
//! (made once, at attach) that the VMM's [`BarMappingPort`] places in guest-physical space; the
//! trapped segments are handlers the VMM's [`TrapPort`] dispatches to; both follow the guest's
//! BAR addresses and decode bits.
//!
//! A BAR is placed all or nothing: if any slot or range is refused (over guest RAM, over
//! another BAR or device, past the address space), everything added for it is removed again,
//! the refusal is logged (once per address, and through the device's rate limit: a guest can
//! move a BAR at exit rate), and the BAR stays unmapped. The guest then reaches
//! RAM or nothing there, never a device page mapped over RAM.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use log::{debug, warn};
use log_limit::LogLimiter;
use pci_config::BarKind;
use trap_map::{BarPlan, MsixPlacement, SegmentKind, TrapHandling, TrapReason};
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio};
use vm_memory::{FileOffset, GuestAddress, MmapRegion, VolatileMemory};

use super::ReservedRange;
use super::guest_log::guest_warn;
use super::interrupts::IrqState;
use crate::backend::{BackendError, DeviceBackend};
use crate::ports::{
    BarMappingPort, BarRange, BarRangeKind, HostMapping, ROM_INDEX, TrapAddress, TrapHandler,
    TrapPort,
};

/// The VMM's ports a BAR placement goes through.
pub(crate) struct BarPorts {
    pub memory: Arc<dyn BarMappingPort>,
    pub traps: Arc<dyn TrapPort>,
}

/// What trapped accesses need: the backend, the MSI-X emulation and where it sits.
pub(crate) struct Shared {
    pub name: String,
    pub backend: Arc<dyn DeviceBackend>,
    pub irq: Mutex<IrqState>,
    pub msix: Option<MsixPlacement>,
    /// The device's limit on guest-triggered log lines (shared with `irq`).
    pub log: Arc<LogLimiter>,
}

impl Shared {
    pub fn irq(&self) -> MutexGuard<'_, IrqState> {
        self.irq.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Accesses to one trapped range, counted by the range (the device's exit counters).
#[derive(Debug, Default)]
pub(crate) struct TrapCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub errors: AtomicU64,
}

/// Handles the guest's accesses to one trapped segment; handed to the VMM's [`TrapPort`] as
/// a vm-device [`DeviceMmio`] or [`DevicePio`].
pub(crate) struct BarTrap {
    shared: Arc<Shared>,
    /// Which range this is (for messages).
    range: BarRange,
    /// VFIO region index (the BAR, or 6 for the ROM).
    region: u32,
    handling: TrapHandling,
    /// The expansion ROM: read-only, and read from the host once, at the guest's first read
    /// (as QEMU's `vfio_pci_load_rom`): every VFIO ROM read makes the host kernel map and unmap
    /// the ROM BAR, and firmware reads a ROM a few bytes at a time. `None` when unreadable.
    rom: Option<OnceLock<Option<Box<[u8]>>>>,
    pub counters: TrapCounters,
}

impl BarTrap {
    /// The ROM's bytes (loaded on first use), `None` when the host could not read it.
    fn rom_bytes(&self) -> Option<&[u8]> {
        self.rom
            .as_ref()?
            .get_or_init(|| {
                let size = self.shared.backend.info().region(self.region)?.size;
                let mut rom = vec![0u8; usize::try_from(size).ok()?].into_boxed_slice();
                match self.shared.backend.region_read(self.region, 0, &mut rom) {
                    Ok(()) => Some(rom),
                    Err(e) => {
                        warn!(
                            "{}: expansion ROM unreadable, the guest reads ones: {e}",
                            self.shared.name
                        );
                        None
                    }
                }
            })
            .as_deref()
    }

    /// A read at `offset` in the range, counted.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), BackendError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let result = self.read_uncounted(offset, data);
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// A write at `offset` in the range, counted.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let result = self.write_uncounted(offset, data);
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn read_uncounted(&self, offset: u64, data: &mut [u8]) -> Result<(), BackendError> {
        let at = self.range.offset + offset;
        match self.handling {
            TrapHandling::Device => match &self.rom {
                Some(_) => {
                    let bytes = usize::try_from(at)
                        .ok()
                        .and_then(|at| self.rom_bytes()?.get(at..)?.get(..data.len()));
                    match bytes {
                        Some(bytes) => data.copy_from_slice(bytes),
                        None => data.fill(0xff),
                    }
                }
                None => self.shared.backend.region_read(self.region, at, data)?,
            },
            TrapHandling::MsixTable => {
                let base = self.shared.msix.map_or(0, |m| m.table_offset);
                let irq = self.shared.irq();
                match irq.msix.as_ref() {
                    Some(m) => m.table.read_table(at - base, data),
                    None => data.fill(0xff),
                }
            }
            TrapHandling::MsixPba => {
                let base = self.shared.msix.map_or(0, |m| m.pba_offset);
                let mut irq = self.shared.irq();
                irq.poll_masked();
                match irq.msix.as_ref() {
                    Some(m) => m.table.read_pba(at - base, data),
                    None => data.fill(0xff),
                }
            }
            TrapHandling::Unbacked => data.fill(0),
        }
        Ok(())
    }

    fn write_uncounted(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let at = self.range.offset + offset;
        match self.handling {
            TrapHandling::Device if self.rom.is_none() => {
                self.shared.backend.region_write(self.region, at, data)?
            }
            TrapHandling::Device => {}
            TrapHandling::MsixTable => {
                let base = self.shared.msix.map_or(0, |m| m.table_offset);
                let mut irq = self.shared.irq();
                let events = match irq.msix.as_mut() {
                    Some(m) => m.table.write_table(at - base, data),
                    None => Vec::new(),
                };
                irq.apply_msix(events);
            }
            TrapHandling::MsixPba => {
                let base = self.shared.msix.map_or(0, |m| m.pba_offset);
                let irq = self.shared.irq();
                if let Some(m) = irq.msix.as_ref() {
                    m.table.write_pba(at - base, data);
                }
            }
            TrapHandling::Unbacked => {}
        }
        Ok(())
    }

    /// A guest access through the VMM's bus: a failed read gives all-ones (what a guest sees
    /// from a function that fell off the bus). Only the range's first failure is a warning,
    /// the others are counted (a guest can make every access fail, and must not flood the log).
    fn guest_read(&self, offset: u64, data: &mut [u8]) {
        if let Err(e) = self.read(offset, data) {
            data.fill(0xff);
            self.log_failure(&e);
        }
    }

    fn guest_write(&self, offset: u64, data: &[u8]) {
        if let Err(e) = self.write(offset, data) {
            self.log_failure(&e);
        }
    }

    fn log_failure(&self, e: &BackendError) {
        if self.counters.errors.load(Ordering::Relaxed) == 1 {
            warn!(
                "{}: {e} (further failures of this range are counted, not logged)",
                self.range
            );
        } else {
            debug!("{}: {e}", self.range);
        }
    }
}

impl DeviceMmio for BarTrap {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.guest_read(offset, data)
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.guest_write(offset, data)
    }
}

impl DevicePio for BarTrap {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.guest_read(u64::from(offset), data)
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.guest_write(u64::from(offset), data)
    }
}

/// A mapped segment: its mmap (kept for the device's lifetime; the VMM's port holds a clone
/// while the guest can reach it) and where it is placed.
pub(crate) struct MappedSegment {
    pub range: BarRange,
    pub mapping: Arc<HostMapping>,
    /// The guest address it is placed at, while placed (or while the port refused to remove
    /// it: then the guest may still reach it there).
    pub placed: Option<u64>,
}

/// A trapped segment and its registration while placed.
pub(crate) struct TrappedSegment {
    pub range: BarRange,
    pub handler: Arc<BarTrap>,
    /// Where it is registered, while placed.
    pub registered: Option<TrapAddress>,
}

/// One guest-visible BAR (or the ROM) and where it is placed.
pub(crate) struct BarState {
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
    pub maps: Vec<MappedSegment>,
    pub traps: Vec<TrappedSegment>,
    /// Guest address where everything is currently added.
    pub placed: Option<u64>,
    /// Last address that was refused and why (logged once, shown by `mtree`).
    pub refused: Option<(u64, String)>,
    pub is_rom: bool,
}

/// Why a region could not be mmapped at attach.
#[derive(Debug, thiserror::Error)]
#[error("{device}: cannot mmap BAR {bar} bytes {offset:#x}-{end:#x}: {why}", end = offset + len - 1)]
pub struct MmapError {
    /// The device.
    pub device: String,
    /// The BAR.
    pub bar: u8,
    /// Offset of the segment in the BAR.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// What failed.
    pub why: String,
}

impl BarState {
    /// Builds the BAR from its plan: mmaps every mapped segment (once) and prepares a handler
    /// for every trapped one.
    pub fn from_plan(shared: &Arc<Shared>, plan: &BarPlan) -> Result<Self, MmapError> {
        let name = &shared.name;
        let device: Arc<str> = Arc::from(name.as_str());
        let bar = plan.index();
        let mut maps = Vec::new();
        let mut traps = Vec::new();
        for seg in plan.segments() {
            match seg.kind {
                SegmentKind::Map { host_region_offset } => {
                    let err = |why: String| MmapError {
                        device: name.clone(),
                        bar,
                        offset: seg.offset,
                        len: seg.len,
                        why,
                    };
                    let source = shared
                        .backend
                        .mmap_source(u32::from(bar))
                        .ok_or_else(|| err("the host offers no mmap of this region".into()))?;
                    let file = File::from(
                        source
                            .fd
                            .try_clone_to_owned()
                            .map_err(|e| err(format!("dup of the region fd: {e}")))?,
                    );
                    let mmap = MmapRegion::build(
                        Some(FileOffset::new(file, source.offset + host_region_offset)),
                        seg.len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                    )
                    .map_err(|e| err(e.to_string()))?;
                    maps.push(MappedSegment {
                        range: BarRange {
                            device: device.clone(),
                            bar,
                            offset: seg.offset,
                            len: seg.len,
                            kind: BarRangeKind::Mapped,
                            name: trap_map::segment_name(name, bar, seg.offset, seg.kind).into(),
                        },
                        mapping: Arc::new(HostMapping::new(mmap)),
                        placed: None,
                    });
                }
                SegmentKind::Trap { reason } => {
                    let kind = match reason {
                        TrapReason::MsixTable => BarRangeKind::MsixTable,
                        TrapReason::MsixPba => BarRangeKind::MsixPba,
                        other => match other.handling() {
                            TrapHandling::Unbacked => BarRangeKind::Padding,
                            _ => BarRangeKind::Device,
                        },
                    };
                    let range = BarRange {
                        device: device.clone(),
                        bar,
                        offset: seg.offset,
                        len: seg.len,
                        kind,
                        name: trap_map::segment_name(name, bar, seg.offset, seg.kind).into(),
                    };
                    traps.push(TrappedSegment {
                        handler: Arc::new(BarTrap {
                            shared: shared.clone(),
                            range: range.clone(),
                            region: u32::from(bar),
                            handling: reason.handling(),
                            rom: None,
                            counters: TrapCounters::default(),
                        }),
                        range,
                        registered: None,
                    });
                }
            }
        }
        Ok(Self {
            index: bar,
            kind: plan.kind(),
            size: plan.guest_size(),
            maps,
            traps,
            placed: None,
            refused: None,
            is_rom: false,
        })
    }

    /// The expansion ROM: one read-only trapped range served from a copy of region 6.
    pub fn rom(shared: &Arc<Shared>, size: u64) -> Self {
        let name = &shared.name;
        let range = BarRange {
            device: Arc::from(name.as_str()),
            bar: ROM_INDEX,
            offset: 0,
            len: size,
            kind: BarRangeKind::Rom,
            name: format!("{name} ROM").into(),
        };
        Self {
            index: ROM_INDEX,
            kind: BarKind::Memory32,
            size,
            maps: Vec::new(),
            traps: vec![TrappedSegment {
                handler: Arc::new(BarTrap {
                    shared: shared.clone(),
                    range: range.clone(),
                    region: u32::from(ROM_INDEX),
                    handling: TrapHandling::Device,
                    rom: Some(OnceLock::new()),
                    counters: TrapCounters::default(),
                }),
                range,
                registered: None,
            }],
            placed: None,
            refused: None,
            is_rom: true,
        }
    }

    /// A short label for logs: `BAR0` or `ROM`.
    pub fn label(&self) -> String {
        if self.is_rom {
            "ROM".into()
        } else {
            format!("BAR{}", self.index)
        }
    }

    /// Makes the BAR appear at `desired` (or nowhere). Moves keep the mappings and handlers
    /// (and their counters); a refused placement leaves the BAR unmapped.
    pub fn place(
        &mut self,
        device: &str,
        desired: Option<u64>,
        ports: &BarPorts,
        reserved: &[ReservedRange],
        log: &LogLimiter,
    ) {
        if self.placed == desired {
            return;
        }
        let Some(new) = desired else {
            self.remove(ports, log);
            return;
        };
        let result = if let Err(why) = self.check_clear_of_reserved(new, reserved) {
            Err(why)
        } else if self.placed.is_some() {
            self.try_move(new, ports)
        } else {
            self.try_add(new, ports)
        };
        match result {
            Ok(()) => {
                self.placed = Some(new);
                self.refused = None;
            }
            Err(e) => {
                // All or nothing: whatever was added or moved goes.
                self.remove(ports, log);
                self.refuse(device, new, e, log);
            }
        }
    }

    fn refuse(&mut self, device: &str, address: u64, why: String, log: &LogLimiter) {
        if self.refused.as_ref().is_none_or(|(a, _)| *a != address) {
            guest_warn!(
                log,
                "{device}: the guest placed {} at {address:#x} but it cannot be mapped there \
                 ({why}); it stays unmapped until the guest moves it",
                self.label()
            );
            self.refused = Some((address, why));
        }
    }

    fn check_range(&self, base: u64) -> Result<(), String> {
        let end = base.checked_add(self.size);
        let limit = match self.kind {
            BarKind::Io => 1 << 16,
            BarKind::Memory32 => 1 << 32,
            BarKind::Memory64 => u64::MAX,
        };
        if end.is_none_or(|e| e > limit) {
            return Err(format!(
                "{:#x} bytes there exceed the address space",
                self.size
            ));
        }
        Ok(())
    }

    /// No memory BAR may cover the VMM's own windows (ECAM, the interrupt controllers): the
    /// guest would lose them, or the device would shadow them. Runs on placement only.
    fn check_clear_of_reserved(&self, base: u64, reserved: &[ReservedRange]) -> Result<(), String> {
        if self.kind == BarKind::Io {
            return Ok(());
        }
        let end = base.saturating_add(self.size);
        match reserved.iter().find(|r| r.overlaps(base, end)) {
            Some(r) => Err(format!(
                "it would overlap {} [{:#x}-{:#x}]",
                r.what,
                r.base,
                r.end - 1
            )),
            None => Ok(()),
        }
    }

    /// Where a trapped range at `at` sits, in the BAR's space (`check_range` bounded an I/O
    /// BAR below 64 KiB, so the port fits in 16 bits).
    fn trap_address(&self, at: u64) -> TrapAddress {
        match self.kind {
            BarKind::Io => TrapAddress::Pio(at as u16),
            _ => TrapAddress::Mmio(GuestAddress(at)),
        }
    }

    fn try_add(&mut self, base: u64, ports: &BarPorts) -> Result<(), String> {
        self.check_range(base)?;
        for m in &mut self.maps {
            if let Some(stuck) = m.placed {
                return Err(format!(
                    "{} could not be removed from {stuck:#x} earlier",
                    m.range
                ));
            }
            let at = base + m.range.offset;
            ports
                .memory
                .map(&m.range, GuestAddress(at), &m.mapping)
                .map_err(|e| e.to_string())?;
            m.placed = Some(at);
        }
        for i in 0..self.traps.len() {
            let at = self.trap_address(base + self.traps[i].range.offset);
            let t = &mut self.traps[i];
            let handler = match at {
                TrapAddress::Pio(_) => TrapHandler::Pio(t.handler.clone()),
                TrapAddress::Mmio(_) => TrapHandler::Mmio(t.handler.clone()),
            };
            ports
                .traps
                .add_trap(&t.range, at, handler)
                .map_err(|e| e.to_string())?;
            t.registered = Some(at);
        }
        Ok(())
    }

    /// Moves every mapping and trapped range to `new`. On an error some may have moved and
    /// others not: the caller removes them all (each records where it is).
    ///
    /// The parts move as `memmove` copies: from the top when the BAR moves up, from the bottom
    /// when it moves down. A BAR moved by less than its size then never has a part land on
    /// one of its own parts that has not moved yet, so each port call is checked against
    /// everything but the BAR's own old place.
    fn try_move(&mut self, new: u64, ports: &BarPorts) -> Result<(), String> {
        self.check_range(new)?;
        let mut parts: Vec<(u64, Part)> = (self.maps.iter().enumerate())
            .map(|(i, m)| (m.range.offset, Part::Map(i)))
            .chain((self.traps.iter().enumerate()).map(|(i, t)| (t.range.offset, Part::Trap(i))))
            .collect();
        parts.sort_by_key(|(offset, _)| *offset);
        if self.placed.is_some_and(|old| new > old) {
            parts.reverse();
        }
        for (offset, part) in parts {
            match part {
                Part::Map(i) => {
                    let m = &mut self.maps[i];
                    let Some(old) = m.placed else { continue };
                    let at = new + offset;
                    ports
                        .memory
                        .move_mapping(&m.range, GuestAddress(old), GuestAddress(at))
                        .map_err(|e| e.to_string())?;
                    m.placed = Some(at);
                }
                Part::Trap(i) => {
                    let at = self.trap_address(new + offset);
                    let t = &mut self.traps[i];
                    let Some(old) = t.registered else { continue };
                    ports
                        .traps
                        .move_trap(&t.range, old, at)
                        .map_err(|e| e.to_string())?;
                    t.registered = Some(at);
                }
            }
        }
        Ok(())
    }

    /// Removes every mapping and trapped range of the BAR from the guest (the mmaps stay).
    pub fn remove(&mut self, ports: &BarPorts, log: &LogLimiter) {
        for m in &mut self.maps {
            let Some(at) = m.placed else { continue };
            match ports.memory.unmap(&m.range, GuestAddress(at)) {
                Ok(()) => m.placed = None,
                // It stays recorded: the guest may still reach it, and the BAR is not placed
                // anywhere else until it is gone.
                Err(e) => guest_warn!(log, "{}: {e}", m.range),
            }
        }
        for t in &mut self.traps {
            let Some(at) = t.registered.take() else {
                continue;
            };
            if let Err(e) = ports.traps.remove_trap(&t.range, at) {
                guest_warn!(log, "{}: {e}", t.range);
            }
        }
        self.placed = None;
    }

    /// Drops the device's own references to the BAR's mmaps (detach, after
    /// [`remove`](Self::remove)): the pages are unmapped once no port holds them either. On
    /// VFIO an mmap keeps the device file open, and the group cannot leave its container
    /// (`VFIO_GROUP_UNSET_CONTAINER` says `EBUSY`) while the file is open: every mmap must go
    /// before the backend does, whichever BAR holds the last reference to it.
    pub fn release_mappings(&mut self) {
        self.maps.clear();
    }

    /// Reads `data.len()` bytes at `offset` of the BAR: through the mmap of a mapped part, or
    /// the handler of a trapped one. The access must lie inside one part.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), String> {
        match self.part(offset, data.len())? {
            AccessPart::Mapped(m) => m
                .mapping
                .region()
                .get_slice((offset - m.range.offset) as usize, data.len())
                .map(|s| s.copy_to(data))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            AccessPart::Trapped(t) => t
                .handler
                .read(offset - t.range.offset, data)
                .map_err(|e| e.to_string()),
        }
    }

    /// Writes `data` at `offset` of the BAR (see [`read`](Self::read)).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), String> {
        match self.part(offset, data.len())? {
            AccessPart::Mapped(m) => m
                .mapping
                .region()
                .get_slice((offset - m.range.offset) as usize, data.len())
                .map(|s| s.copy_from(data))
                .map_err(|e| e.to_string()),
            AccessPart::Trapped(t) => t
                .handler
                .write(offset - t.range.offset, data)
                .map_err(|e| e.to_string()),
        }
    }

    fn part(&self, offset: u64, len: usize) -> Result<AccessPart<'_>, String> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.size && len > 0)
            .ok_or_else(|| {
                format!(
                    "{len} bytes at {offset:#x} are outside its {:#x} bytes",
                    self.size
                )
            })?;
        let inside = |r: &BarRange| r.offset <= offset && end <= r.offset + r.len;
        if let Some(m) = self.maps.iter().find(|m| inside(&m.range)) {
            return Ok(AccessPart::Mapped(m));
        }
        if let Some(t) = self.traps.iter().find(|t| inside(&t.range)) {
            return Ok(AccessPart::Trapped(t));
        }
        Err(format!(
            "{len} bytes at {offset:#x} cross a boundary between its mapped and trapped parts"
        ))
    }
}

/// One mapped or trapped part of a BAR, by its index in `maps` or `traps`.
#[derive(Clone, Copy)]
enum Part {
    Map(usize),
    Trap(usize),
}

/// The part of a BAR an access falls in.
enum AccessPart<'a> {
    Mapped(&'a MappedSegment),
    Trapped(&'a TrappedSegment),
}
