//! BARs in the guest: the mapped segments of the trap-map plan as KVM memory slots over mmaps
//! of the host regions (made once, at attach), the trapped segments as named MMIO/PIO ranges on
//! the [`DeviceBus`], following the guest's BAR addresses and decode bits.
//!
//! A BAR is placed all or nothing: if any slot or range is refused (over guest RAM, over
//! another BAR or device, past the address space), everything added for it is removed again,
//! the refusal is logged once per address, and the BAR stays unmapped. The guest then reaches
//! RAM or nothing there, never a device page mapped over RAM.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kvm_runloop::reexports::vm_device::bus::{
    MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset,
};
use kvm_runloop::{
    DeviceBus, DeviceError, FallibleMmio, FalliblePio, MemoryAccess, MemorySlots, SlotId,
};
use log::warn;
use trap_map::{BarKind, BarPlan, MsixPlacement, SegmentKind, TrapHandling};
use vm_memory::{FileOffset, MmapRegion};

use super::ReservedRange;
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
    /// The expansion ROM: read-only, and read from the host once, at the guest's first read
    /// (as QEMU's `vfio_pci_load_rom`): every VFIO ROM read makes the host kernel map and unmap
    /// the ROM BAR, and firmware reads a ROM a few bytes at a time. `None` when unreadable.
    rom: Option<OnceLock<Option<Box<[u8]>>>>,
}

impl TrapHandler {
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

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let at = self.seg_offset + offset;
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

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let at = self.seg_offset + offset;
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
    /// Unmapped in `Drop`, and only when no KVM slot still points at it.
    mmap: ManuallyDrop<MmapRegion>,
    /// The KVM slot over the mmap, while placed (or while KVM refused to delete it).
    pub slot: Option<SlotId>,
    pub name: String,
}

impl Drop for MappedSegment {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            // KVM refused to delete the slot (`BarState::remove` logged why), so the guest may
            // still reach these pages: munmapping them would let a later mmap of the VMM's
            // land where the guest writes. Leak the mapping instead.
            warn!(
                "{}: KVM slot {slot} is still in place; leaking its mmap rather than \
                 unmapping memory the guest can reach",
                self.name
            );
            return;
        }
        // SAFETY: `mmap` is dropped exactly once, here, and no KVM slot points at it any more
        // (`slot` is cleared only after `MemorySlots::remove` succeeded).
        unsafe { ManuallyDrop::drop(&mut self.mmap) }
    }
}

/// A trapped segment and its bus registration while placed.
pub(crate) struct TrappedSegment {
    pub offset: u64,
    pub len: u64,
    pub handler: Arc<TrapHandler>,
    pub name: String,
    /// The bus address it is registered at, while placed.
    pub registered: Option<u64>,
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
                        mmap: ManuallyDrop::new(mmap),
                        slot: None,
                        name: trap_map::segment_name(name, bar, seg.offset, seg.kind),
                    });
                }
                SegmentKind::Trap { reason } => {
                    traps.push(TrappedSegment {
                        offset: seg.offset,
                        len: seg.len,
                        handler: Arc::new(TrapHandler {
                            shared: shared.clone(),
                            region: u32::from(bar),
                            seg_offset: seg.offset,
                            handling: reason.handling(),
                            rom: None,
                        }),
                        name: trap_map::segment_name(name, bar, seg.offset, seg.kind),
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
                    rom: Some(OnceLock::new()),
                }),
                name: format!("{name} ROM"),
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

    /// Makes the BAR appear at `desired` (or nowhere). Moves keep the slots and ranges (and
    /// their counters); a refused placement leaves the BAR unmapped.
    pub fn place(
        &mut self,
        device: &str,
        desired: Option<u64>,
        slots: &MemorySlots,
        bus: &DeviceBus,
        reserved: &[ReservedRange],
    ) {
        if self.placed == desired {
            return;
        }
        let Some(new) = desired else {
            self.remove(slots, bus);
            return;
        };
        let result = if let Err(why) = self.check_clear_of_reserved(new, reserved) {
            Err(why)
        } else if self.placed.is_some() {
            self.try_move(new, slots, bus)
        } else {
            self.try_add(new, slots, bus)
        };
        match result {
            Ok(()) => {
                self.placed = Some(new);
                self.refused = None;
            }
            Err(e) => {
                // All or nothing: whatever was added or moved goes.
                self.remove(slots, bus);
                self.refuse(device, new, e);
            }
        }
    }

    fn refuse(&mut self, device: &str, address: u64, why: String) {
        if self.refused.as_ref().is_none_or(|(a, _)| *a != address) {
            warn!(
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

    /// Trapped ranges must not lie over memory slots (guest RAM, another device's mapped
    /// pages): KVM serves the slot and the bus would never see the access, so the BAR would
    /// look placed while the guest reaches RAM there. Mapped segments get the same check from
    /// `MemorySlots` itself; this covers BARs (or parts) that are only trapped, and the ROM.
    /// Runs on BAR placement only, never on a guest access.
    fn check_traps_clear_of_memory(&self, base: u64, slots: &MemorySlots) -> Result<(), String> {
        if self.kind == BarKind::Io || self.traps.is_empty() {
            return Ok(());
        }
        for r in slots.regions() {
            if self.maps.iter().any(|m| m.slot == Some(r.slot)) {
                continue;
            }
            let r_end = r.guest_addr.saturating_add(r.size);
            for t in &self.traps {
                // `check_range` bounded base + size, so these cannot overflow.
                let (start, end) = (base + t.offset, base + t.offset + t.len);
                if start < r_end && r.guest_addr < end {
                    return Err(format!(
                        "range \"{}\" [{start:#x}, {end:#x}) overlaps memory region \"{}\" \
                         [{:#x}, {r_end:#x}) in slot {}",
                        t.name, r.name, r.guest_addr, r.slot
                    ));
                }
            }
        }
        Ok(())
    }

    fn try_add(&mut self, base: u64, slots: &MemorySlots, bus: &DeviceBus) -> Result<(), String> {
        self.check_range(base)?;
        self.check_traps_clear_of_memory(base, slots)?;
        for m in &mut self.maps {
            if let Some(stuck) = m.slot {
                return Err(format!(
                    "KVM slot {stuck} of {} could not be removed earlier",
                    m.name
                ));
            }
            // SAFETY: `m.mmap` is a live MAP_SHARED mapping of `m.len` bytes, page aligned
            // (trap-map plans whole host pages), and it outlives the slot: `MappedSegment`'s
            // `Drop` only unmaps it once `slot` is cleared, which `remove` does only after KVM
            // deleted the slot.
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
            t.registered = Some(at);
        }
        Ok(())
    }

    /// Moves every slot and range to `new`. On an error some may have moved and others not:
    /// the caller removes them all (each records where it is).
    fn try_move(&mut self, new: u64, slots: &MemorySlots, bus: &DeviceBus) -> Result<(), String> {
        self.check_range(new)?;
        self.check_traps_clear_of_memory(new, slots)?;
        for m in &self.maps {
            let Some(slot) = m.slot else { continue };
            slots
                .move_region(slot, new + m.offset)
                .map_err(|e| e.to_string())?;
        }
        for t in &mut self.traps {
            let Some(old) = t.registered else { continue };
            let at = new + t.offset;
            match self.kind {
                BarKind::Io => bus.move_pio(old as u16, at as u16),
                _ => bus.move_mmio(old, at),
            }
            .map_err(|e| e.to_string())?;
            t.registered = Some(at);
        }
        Ok(())
    }

    /// Removes every slot and range of the BAR (the mmaps stay).
    pub fn remove(&mut self, slots: &MemorySlots, bus: &DeviceBus) {
        for m in &mut self.maps {
            let Some(slot) = m.slot else { continue };
            match slots.remove(slot) {
                Ok(_) => m.slot = None,
                // The slot stays recorded so the mmap under it is never unmapped.
                Err(e) => warn!("{}: {e}", m.name),
            }
        }
        for t in &mut self.traps {
            let Some(at) = t.registered.take() else {
                continue;
            };
            let r = match self.kind {
                BarKind::Io => bus.unregister_pio(at as u16),
                _ => bus.unregister_mmio(at),
            };
            if let Err(e) = r {
                warn!("{}: {e}", t.name);
            }
        }
        self.placed = None;
    }
}
