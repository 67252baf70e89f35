//! BARs in the guest: the mapped segments of the trap-map plan as KVM memory slots over mmaps
//! of the host regions (made once, at attach), the trapped segments as named MMIO/PIO ranges on
//! the [`DeviceBus`], following the guest's BAR addresses and decode bits.
//!
//! A BAR is placed all or nothing: if any slot or range is refused (over guest RAM, over
//! another BAR or device, past the address space), everything added for it is removed again,
//! the refusal is logged once per address, and the BAR stays unmapped. The guest then reaches
//! RAM or nothing there, never a device page mapped over RAM.

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_runloop::reexports::vm_device::bus::{
    MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset,
};
use kvm_runloop::{
    DeviceBus, DeviceError, FallibleMmio, FalliblePio, MemoryAccess, MemorySlots, SlotId,
};
use log::warn;
use trap_map::{BarKind, BarPlan, MsixPlacement, SegmentKind, TrapHandling, TrapReason};
use vm_memory::{FileOffset, MmapRegion};

use super::interrupts::IrqState;
use crate::backend::DeviceBackend;

/// What trapped accesses need: the backend, the MSI-X emulation and where it sits.
pub(crate) struct Shared {
    pub name: String,
    pub backend: Arc<dyn DeviceBackend>,
    pub irq: Mutex<IrqState>,
    pub msix: Option<MsixPlacement>,
}

impl Shared {
    pub fn irq(&self) -> MutexGuard<'_, IrqState> {
        self.irq.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handles the guest's accesses to one trapped segment.
pub(crate) struct TrapHandler {
    shared: Arc<Shared>,
    /// VFIO region index (the BAR, or 6 for the ROM).
    region: u32,
    /// Offset of the segment in the BAR.
    seg_offset: u64,
    handling: TrapHandling,
    read_only: bool,
}

impl TrapHandler {
    fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let at = self.seg_offset + offset;
        match self.handling {
            TrapHandling::Device => self.shared.backend.region_read(self.region, at, data)?,
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

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let at = self.seg_offset + offset;
        match self.handling {
            TrapHandling::Device if !self.read_only => {
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
                let irq = self.shared.irq();
                if let Some(m) = irq.msix.as_ref() {
                    m.table.write_pba(at, data);
                }
            }
            TrapHandling::Unbacked => {}
        }
        Ok(())
    }
}

impl FallibleMmio for TrapHandler {
    fn try_mmio_read(
        &self,
        _base: MmioAddress,
        offset: MmioAddressOffset,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        self.read(offset, data)
    }

    fn try_mmio_write(
        &self,
        _base: MmioAddress,
        offset: MmioAddressOffset,
        data: &[u8],
    ) -> Result<(), DeviceError> {
        self.write(offset, data)
    }
}

impl FalliblePio for TrapHandler {
    fn try_pio_read(
        &self,
        _base: PioAddress,
        offset: PioAddressOffset,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        self.read(u64::from(offset), data)
    }

    fn try_pio_write(
        &self,
        _base: PioAddress,
        offset: PioAddressOffset,
        data: &[u8],
    ) -> Result<(), DeviceError> {
        self.write(u64::from(offset), data)
    }
}

/// A mapped segment: its mmap (kept for the device's lifetime) and its slot while placed.
pub(crate) struct MappedSegment {
    pub offset: u64,
    pub len: u64,
    pub mmap: MmapRegion,
    pub slot: Option<SlotId>,
    pub name: String,
}

/// A trapped segment and its bus registration while placed.
pub(crate) struct TrappedSegment {
    pub offset: u64,
    pub len: u64,
    pub handler: Arc<TrapHandler>,
    pub name: String,
    pub registered: bool,
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
    /// Last address that was refused (logged once).
    pub refused: Option<u64>,
    /// Address being tried by a first placement, until it succeeds or is rolled back.
    pending_base: Option<u64>,
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
                        offset: seg.offset,
                        len: seg.len,
                        mmap,
                        slot: None,
                        name: format!("{name} BAR{bar} mmap +{:#x}", seg.offset),
                    });
                }
                SegmentKind::Trap { reason } => {
                    let label = match reason {
                        TrapReason::MsixTable => "msix-table".to_string(),
                        TrapReason::MsixPba => "msix-pba".to_string(),
                        other => format!("+{:#x} ({})", seg.offset, other.description()),
                    };
                    traps.push(TrappedSegment {
                        offset: seg.offset,
                        len: seg.len,
                        handler: Arc::new(TrapHandler {
                            shared: shared.clone(),
                            region: u32::from(bar),
                            seg_offset: seg.offset,
                            handling: reason.handling(),
                            read_only: false,
                        }),
                        name: format!("{name} BAR{bar} {label}"),
                        registered: false,
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
            pending_base: None,
            is_rom: false,
        })
    }

    /// The expansion ROM: one read-only trapped range forwarded to region 6.
    pub fn rom(shared: &Arc<Shared>, size: u64) -> Self {
        let name = &shared.name;
        Self {
            index: 6,
            kind: BarKind::Memory32,
            size,
            maps: Vec::new(),
            traps: vec![TrappedSegment {
                offset: 0,
                len: size,
                handler: Arc::new(TrapHandler {
                    shared: shared.clone(),
                    region: 6,
                    seg_offset: 0,
                    handling: TrapHandling::Device,
                    read_only: true,
                }),
                name: format!("{name} ROM"),
                registered: false,
            }],
            placed: None,
            refused: None,
            pending_base: None,
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

    /// Makes the BAR appear at `desired` (or nowhere). Moves keep the slots and ranges (and
    /// their counters); a refused placement leaves the BAR unmapped.
    pub fn place(
        &mut self,
        device: &str,
        desired: Option<u64>,
        slots: &MemorySlots,
        bus: &DeviceBus,
    ) {
        if self.placed == desired {
            return;
        }
        if let (Some(old), Some(new)) = (self.placed, desired) {
            match self.try_move(old, new, slots, bus) {
                Ok(()) => {
                    self.placed = Some(new);
                    return;
                }
                Err(e) => {
                    self.remove(slots, bus);
                    self.refuse(device, new, &e);
                    return;
                }
            }
        }
        self.remove(slots, bus);
        if let Some(new) = desired {
            if let Err(e) = self.try_add(new, slots, bus) {
                self.remove(slots, bus);
                self.refuse(device, new, &e);
            } else {
                self.placed = Some(new);
                self.pending_base = None;
                self.refused = None;
            }
        }
    }

    fn refuse(&mut self, device: &str, address: u64, why: &str) {
        if self.refused != Some(address) {
            warn!(
                "{device}: the guest placed {} at {address:#x} but it cannot be mapped there \
                 ({why}); it stays unmapped until the guest moves it",
                self.label()
            );
            self.refused = Some(address);
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

    fn try_add(&mut self, base: u64, slots: &MemorySlots, bus: &DeviceBus) -> Result<(), String> {
        self.check_range(base)?;
        self.pending_base = Some(base);
        for m in &mut self.maps {
            // SAFETY: the mapping is owned by this BarState and outlives the slot: every slot
            // is removed (`remove`) before the BarState, and so the mmap, is dropped.
            let slot = unsafe {
                slots.add_host(
                    &m.name,
                    base + m.offset,
                    m.len,
                    m.mmap.as_ptr(),
                    MemoryAccess::ReadWrite,
                )
            }
            .map_err(|e| e.to_string())?;
            m.slot = Some(slot);
        }
        for t in &mut self.traps {
            let at = base + t.offset;
            match self.kind {
                BarKind::Io => {
                    bus.register_fallible_pio(&t.name, at as u16, t.len as u16, t.handler.clone())
                }
                _ => bus.register_fallible_mmio(&t.name, at, t.len, t.handler.clone()),
            }
            .map_err(|e| e.to_string())?;
            t.registered = true;
        }
        Ok(())
    }

    fn try_move(
        &mut self,
        old: u64,
        new: u64,
        slots: &MemorySlots,
        bus: &DeviceBus,
    ) -> Result<(), String> {
        self.check_range(new)?;
        let mut result = Ok(());
        let mut moved_maps = 0;
        for m in &self.maps {
            let Some(slot) = m.slot else { continue };
            if let Err(e) = slots.move_region(slot, new + m.offset) {
                result = Err(e.to_string());
                break;
            }
            moved_maps += 1;
        }
        let mut moved_traps = 0;
        if result.is_ok() {
            for t in &self.traps {
                if !t.registered {
                    continue;
                }
                let r = match self.kind {
                    BarKind::Io => bus.move_pio((old + t.offset) as u16, (new + t.offset) as u16),
                    _ => bus.move_mmio(old + t.offset, new + t.offset),
                };
                if let Err(e) = r {
                    result = Err(e.to_string());
                    break;
                }
                moved_traps += 1;
            }
        }
        if result.is_err() {
            // Put back what moved, so `remove` finds everything where it expects it.
            for m in self.maps.iter().take(moved_maps) {
                if let Some(slot) = m.slot {
                    let _ = slots.move_region(slot, old + m.offset);
                }
            }
            for t in self.traps.iter().filter(|t| t.registered).take(moved_traps) {
                let _ = match self.kind {
                    BarKind::Io => bus.move_pio((new + t.offset) as u16, (old + t.offset) as u16),
                    _ => bus.move_mmio(new + t.offset, old + t.offset),
                };
            }
        }
        result
    }

    /// Removes every slot and range of the BAR (the mmaps stay).
    pub fn remove(&mut self, slots: &MemorySlots, bus: &DeviceBus) {
        for m in &mut self.maps {
            if let Some(slot) = m.slot.take() {
                if let Err(e) = slots.remove(slot) {
                    warn!("{}: {e}", m.name);
                }
            }
        }
        // Ranges are found by their base: where they were added (`placed`) or, during a
        // failed first placement, the address being tried.
        let base = self.placed.or(self.pending_base);
        for t in &mut self.traps {
            if !t.registered {
                continue;
            }
            t.registered = false;
            let Some(base) = base else {
                continue;
            };
            let r = match self.kind {
                BarKind::Io => bus.unregister_pio((base + t.offset) as u16),
                _ => bus.unregister_mmio(base + t.offset),
            };
            if let Err(e) = r {
                warn!("{}: {e}", t.name);
            }
        }
        self.placed = None;
        self.pending_base = None;
    }
}
