//! [`ConfigSpace`]: the register model of one function plus the side effects a VMM cares about.
//!
//! `mod.rs` holds the type, construction and guest accesses; `bars.rs` the BAR/ROM definitions,
//! `capabilities.rs` the capability accessors and editing, `side_effects.rs` the table of
//! registers whose writes produce events.

mod bars;
mod capabilities;
mod side_effects;

use crate::bar::{BarDef, BarKind};
use crate::capability;
use crate::error::{AccessError, ConfigError};
use crate::events::{ConfigEvent, ConfigEvents};
use crate::header::{Command, DeviceIds, HeaderType, Status, install_default_masks, offset};
use crate::registers::{BitKind, ConfigSize, RegisterFile, check_access};
use side_effects::Written;

/// A BAR as the VMM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarInfo {
    /// BAR index (lower index for 64-bit BARs).
    pub index: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Prefetchable (memory BARs).
    pub prefetchable: bool,
    /// Region size in bytes.
    pub size: u64,
    /// Committed base address: the last address the guest programmed that was not a sizing
    /// probe. This is where the VMM should map the region (when decode is on).
    pub address: u64,
    /// A sizing probe is in progress (the register reads back the size mask).
    pub sizing: bool,
}

/// The expansion ROM BAR as the VMM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RomInfo {
    /// ROM size in bytes.
    pub size: u32,
    /// Committed base address (see [`BarInfo::address`]).
    pub address: u32,
    /// ROM address decode enable bit.
    pub enabled: bool,
    /// A sizing probe is in progress.
    pub sizing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BarSlot {
    def: BarDef,
    /// A sizing probe is in progress in the lower / upper dword.
    probing: [bool; 2],
    /// The address field of the lower and of the upper dword (what a sizing probe sets).
    fields: [u32; 2],
    /// The bits of the BAR's register(s), read as one little-endian `u64` from its lower dword,
    /// that make up its address: the lower dword's address field, and the upper dword of a
    /// 64-bit BAR. Precomputed so that a BAR write works out the new address with one load.
    address_mask: u64,
}

impl BarSlot {
    fn new(def: BarDef) -> Self {
        let field = crate::bar::probe_field(Some(def.kind), false);
        let upper = if def.kind == BarKind::Memory64 {
            0xffff_ffff_0000_0000
        } else {
            0
        };
        BarSlot {
            def,
            probing: [false; 2],
            fields: [field, u32::MAX],
            address_mask: upper | field as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RomSlot {
    size: u32,
    committed: u32,
    probing: bool,
}

/// An MSI or MSI-X capability, as the write rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InterruptCap {
    /// Offset of its Message Control register.
    control: u16,
    /// MSI-X (else MSI).
    msix: bool,
}

/// The configuration space of one emulated (or shadowed) PCI function.
///
/// It owns the register bytes and their masks ([`RegisterFile`]), knows the header layout, the
/// BAR and ROM definitions and the MSI/MSI-X capabilities, and turns guest writes into
/// [`ConfigEvent`](crate::ConfigEvent)s. It never does I/O.
///
/// # Events
///
/// [`write`](Self::write) returns the side effects of the write, in order:
///
/// - **Command**: [`ConfigEvent::DecodeChanged`](crate::ConfigEvent::DecodeChanged) when the memory or I/O enable bit changes
///   (carrying the new state of both), [`ConfigEvent::BusMasterChanged`](crate::ConfigEvent::BusMasterChanged),
///   [`ConfigEvent::IntxDisableChanged`](crate::ConfigEvent::IntxDisableChanged).
/// - **BARs**: [`ConfigEvent::BarMoved`](crate::ConfigEvent::BarMoved) when the BAR's *committed* address changes. A write
///   that sets every bit of a BAR dword's address field (bits 31:4 of a memory BAR, 31:2 of an
///   I/O BAR, all of the upper dword of a 64-bit BAR) — the "write all ones" of the sizing
///   protocol, PCI 3.0 §6.2.5.1 — starts a *probe*: the register reads back the size mask but
///   the committed address is kept and nothing is reported, even while decode is on (the VMM
///   keeps its mapping; the guest does not access the BAR while it sizes it). The next write of
///   anything else to that dword ends the probe, and if the address then differs from the
///   committed one a single `BarMoved` is reported. So probe-and-restore reports nothing.
///   A 64-bit BAR programmed one dword at a time passes through a transient address after the
///   first dword; that is reported as a move too (it is what the register holds). Guests avoid
///   mapping the transient by turning memory decode off around the update, as Linux does
///   (`pci_std_update_resource`), so a VMM that maps BARs only while `DecodeChanged` says memory
///   decode is on never maps it.
/// - **Expansion ROM**: [`ConfigEvent::RomMoved`](crate::ConfigEvent::RomMoved) with the same probe rule (address field bits
///   31:11), then [`ConfigEvent::RomEnableChanged`](crate::ConfigEvent::RomEnableChanged) when bit 0 changes.
/// - **Bridges**: [`ConfigEvent::BridgeWindowChanged`](crate::ConfigEvent::BridgeWindowChanged) when a window register changes.
/// - **MSI / MSI-X**: [`ConfigEvent::MsiChanged`](crate::ConfigEvent::MsiChanged) when any MSI register changes value,
///   [`ConfigEvent::MsixChanged`](crate::ConfigEvent::MsixChanged) when the MSI-X enable or function-mask bit changes.
///
/// Device-side setters ([`set_u8`](Self::set_u8) and friends) never produce events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    regs: RegisterFile,
    header: HeaderType,
    bars: [Option<BarSlot>; 6],
    rom: Option<RomSlot>,
    /// Per-byte index of the registers with side effects (see `side_effects.rs`).
    watch_at: [u8; side_effects::INDEX_BYTES],
    /// The MSI and MSI-X capabilities the index refers to.
    interrupt_caps: Vec<InterruptCap>,
}

impl ConfigSpace {
    /// A new function with the given header layout, size and identification, no BARs and no
    /// capabilities. Writable bits follow the header's defaults
    /// ([`install_default_masks`](crate::header::install_default_masks)).
    pub fn new(header: HeaderType, size: ConfigSize, ids: DeviceIds) -> Self {
        let mut regs = RegisterFile::new(size);
        // All offsets are inside the 64-byte header: these stores cannot fail.
        let _ = regs.set(offset::VENDOR_ID, &ids.vendor_id.to_le_bytes());
        let _ = regs.set(offset::DEVICE_ID, &ids.device_id.to_le_bytes());
        let _ = regs.set(offset::REVISION_ID, &[ids.revision]);
        let _ = regs.set(offset::CLASS_PROG, &ids.class_code.to_le_bytes()[..3]);
        let _ = regs.set(offset::HEADER_TYPE, &[header.register_value()]);
        if header == HeaderType::Endpoint {
            let _ = regs.set(
                offset::SUBSYSTEM_VENDOR_ID,
                &ids.subsystem_vendor_id.to_le_bytes(),
            );
            let _ = regs.set(offset::SUBSYSTEM_ID, &ids.subsystem_id.to_le_bytes());
        }
        install_default_masks(&mut regs, header);
        let mut space = ConfigSpace {
            regs,
            header,
            bars: [None; 6],
            rom: None,
            watch_at: [side_effects::UNWATCHED; side_effects::INDEX_BYTES],
            interrupt_caps: Vec::new(),
        };
        space.rebuild_watches();
        space
    }

    /// Adopts a snapshot of a real function's configuration space (256 or 4096 bytes, e.g. read
    /// from a VFIO config region or an `lspci -xxx` dump).
    ///
    /// Header masks are the defaults for its header type; the registers of recognised
    /// capabilities in the parseable part of each chain get their masks (a broken chain is
    /// logged and the rest ignored). Reserved header bits are forced to zero. BARs and the ROM
    /// stay read-only until given a size with [`set_bar`](Self::set_bar) /
    /// [`set_rom`](Self::set_rom), because the registers alone cannot tell the size.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        let size = ConfigSize::from_len(bytes.len())
            .ok_or(ConfigError::BadSnapshotLength { len: bytes.len() })?;
        let header = HeaderType::from_register(bytes[offset::HEADER_TYPE as usize]).ok_or(
            ConfigError::UnsupportedHeaderType {
                header_type: bytes[offset::HEADER_TYPE as usize] & 0x7f,
            },
        )?;
        let mut regs = RegisterFile::new(size);
        regs.set(0, bytes)?;
        install_default_masks(&mut regs, header);
        let (caps, err) = capability::capabilities_lenient(bytes);
        if let Some(e) = err {
            log::warn!("pci-config: snapshot capability chain: {e}; later capabilities ignored");
        }
        for cap in &caps {
            capability::install_masks(&mut regs, cap);
        }
        let mut space = ConfigSpace {
            regs,
            header,
            bars: [None; 6],
            rom: None,
            watch_at: [side_effects::UNWATCHED; side_effects::INDEX_BYTES],
            interrupt_caps: Vec::new(),
        };
        space.rebuild_watches();
        Ok(space)
    }

    // ----- identity and raw state -------------------------------------------------------

    /// Header layout.
    pub fn header_type(&self) -> HeaderType {
        self.header
    }

    /// Size class (256 or 4096 bytes).
    pub fn size(&self) -> ConfigSize {
        self.regs.size()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.regs.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    /// Current register contents.
    pub fn bytes(&self) -> &[u8] {
        self.regs.bytes()
    }

    /// The register model with its mask tables.
    pub fn registers(&self) -> &RegisterFile {
        &self.regs
    }

    /// Identification registers.
    pub fn ids(&self) -> DeviceIds {
        DeviceIds::from_bytes(self.bytes()).unwrap_or_default()
    }

    /// Command register.
    pub fn command(&self) -> Command {
        Command(self.regs.get(offset::COMMAND as usize, 2) as u16)
    }

    /// Status register.
    pub fn status(&self) -> Status {
        Status(self.regs.get(offset::STATUS as usize, 2) as u16)
    }

    // ----- guest accesses ----------------------------------------------------------------

    /// Guest read of 1, 2 or 4 bytes at any offset (see the [crate docs](crate) for the
    /// semantics of unaligned accesses). On error `buf` is filled with `0xff`.
    #[inline(always)]
    pub fn read(&self, offset: u16, buf: &mut [u8]) -> Result<(), AccessError> {
        self.regs.read(offset, buf)
    }

    /// Guest byte read.
    pub fn read_u8(&self, offset: u16) -> Result<u8, AccessError> {
        let mut b = [0u8; 1];
        self.read(offset, &mut b).map(|_| b[0])
    }

    /// Guest word read.
    #[inline]
    pub fn read_u16(&self, offset: u16) -> Result<u16, AccessError> {
        match self.regs.read_n::<2>(offset) {
            Some(v) => Ok(v as u16),
            None => Err(Self::refused(offset, 2, self)),
        }
    }

    /// Guest dword read.
    #[inline]
    pub fn read_u32(&self, offset: u16) -> Result<u32, AccessError> {
        match self.regs.read_n::<4>(offset) {
            Some(v) => Ok(v),
            None => Err(Self::refused(offset, 4, self)),
        }
    }

    /// The error of a refused `len`-byte read at `offset`: cold and out of line, so that the
    /// inlined reads above stay a range check, one load and a return.
    #[cold]
    #[inline(never)]
    fn refused(offset: u16, len: usize, space: &Self) -> AccessError {
        let mut b = [0u8; 4];
        match space.regs.read(offset, &mut b[..len]) {
            Err(e) => e,
            // `read_n` refuses only what `read` refuses; this keeps the error total.
            Ok(()) => AccessError::OutOfRange {
                offset,
                len,
                size: space.regs.len(),
            },
        }
    }

    /// Guest write of 1, 2 or 4 bytes at any offset, through the masks; returns its side
    /// effects (see [Events](Self#events)). A refused access changes nothing.
    ///
    /// [`write_with`](Self::write_with) is the same write handing each event to a closure,
    /// which saves building and copying the [`ConfigEvents`] array on every access.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Result<ConfigEvents, AccessError> {
        let mut events = ConfigEvents::new();
        self.write_with(offset, data, |e| events.push(e))?;
        Ok(events)
    }

    /// Guest write of 1, 2 or 4 bytes at any offset, through the masks; calls `on_event` with
    /// each side effect, in order (see [Events](Self#events)). A refused access changes nothing
    /// and reports nothing.
    #[inline(always)]
    pub fn write_with(
        &mut self,
        offset: u16,
        data: &[u8],
        mut on_event: impl FnMut(ConfigEvent),
    ) -> Result<(), AccessError> {
        let size = self.regs.len();
        write_by_width(self, offset, data, size, &mut on_event)
    }
}

impl WriteN for ConfigSpace {
    /// A guest write of the `N` bytes `val` (little-endian) at `at`, checked to be inside the
    /// space: [`write_fast`](Self::write_fast), else [`write_general`](Self::write_general).
    #[inline(always)]
    fn write_n<const N: usize>(
        &mut self,
        at: usize,
        val: u32,
        on_event: &mut impl FnMut(ConfigEvent),
    ) {
        if !self.write_fast::<N>(at, val, on_event) {
            self.write_general(at, val, N, on_event);
        }
    }
}

impl ConfigSpace {
    /// The writes a guest makes most, inlined: a write to no register with side effects, a
    /// whole BAR dword, the Command word. Returns false, having done nothing, for any other
    /// write (`N` bytes `val` at `at`, checked to be inside the space): those take
    /// [`write_general`](Self::write_general), out of line, with the rule of every register.
    /// Each fast path gives exactly what the general rules give (`fast_path_tests.rs`).
    #[inline(always)]
    pub(crate) fn write_fast<const N: usize>(
        &mut self,
        at: usize,
        val: u32,
        on_event: &mut impl FnMut(ConfigEvent),
    ) -> bool {
        let watched = self.watches_n::<N>(at);
        if watched == 0 {
            self.regs.write_n::<N>(at, val);
            return true;
        }
        if let Some(index) = side_effects::whole_bar_dword(watched, at, N) {
            self.regs.write_n::<N>(at, val);
            self.bar_dword_written(index, at, val, on_event);
            return true;
        }
        if side_effects::is_command_word(watched, at, N) {
            let (before, after) = self.regs.write_n::<N>(at, val);
            Self::command_changed((before ^ after) as u16, Command(after as u16), on_event);
            return true;
        }
        false
    }

    /// Any write of the `len` (1, 2 or 4) bytes `val` at `start`, checked to be inside the
    /// space: through the masks, then the side-effect rules of each register it touched.
    #[inline(never)]
    pub(crate) fn write_general(
        &mut self,
        start: usize,
        val: u32,
        len: usize,
        on_event: &mut impl FnMut(ConfigEvent),
    ) {
        let (watched, (before, after)) = match len {
            1 => (
                self.watches_n::<1>(start),
                self.regs.write_n::<1>(start, val),
            ),
            2 => (
                self.watches_n::<2>(start),
                self.regs.write_n::<2>(start, val),
            ),
            _ => (
                self.watches_n::<4>(start),
                self.regs.write_n::<4>(start, val),
            ),
        };
        let write = Written {
            start,
            len,
            data: val,
            changed: before ^ after,
        };
        self.react_all(watched, &write, on_event);
    }

    /// Guest byte write.
    pub fn write_u8(&mut self, offset: u16, v: u8) -> Result<ConfigEvents, AccessError> {
        self.write(offset, &[v])
    }

    /// Guest word write.
    pub fn write_u16(&mut self, offset: u16, v: u16) -> Result<ConfigEvents, AccessError> {
        self.write(offset, &v.to_le_bytes())
    }

    /// Guest dword write.
    pub fn write_u32(&mut self, offset: u16, v: u32) -> Result<ConfigEvents, AccessError> {
        self.write(offset, &v.to_le_bytes())
    }

    // ----- device-side setup --------------------------------------------------------------

    /// Device-side store bypassing the masks (initialisation, or hardware setting a status bit
    /// such as [`Status::INTERRUPT`]). Produces no events; BAR/ROM committed addresses follow
    /// the stored value. Reserved bits stay zero.
    pub fn set(&mut self, offset: u16, bytes: &[u8]) -> Result<(), AccessError> {
        self.regs.set(offset, bytes)?;
        self.resync();
        Ok(())
    }

    /// Device-side byte store (see [`set`](Self::set)).
    pub fn set_u8(&mut self, offset: u16, v: u8) -> Result<(), AccessError> {
        self.set(offset, &[v])
    }

    /// Device-side word store (see [`set`](Self::set)).
    pub fn set_u16(&mut self, offset: u16, v: u16) -> Result<(), AccessError> {
        self.set(offset, &v.to_le_bytes())
    }

    /// Device-side dword store (see [`set`](Self::set)).
    pub fn set_u32(&mut self, offset: u16, v: u32) -> Result<(), AccessError> {
        self.set(offset, &v.to_le_bytes())
    }

    /// Changes what the bits in `mask` (little-endian bytes at `offset`) do on writes, e.g. to
    /// make a device-specific register writable. Do not use it on BAR or ROM registers: their
    /// masks come from [`set_bar`](Self::set_bar).
    pub fn set_bits(&mut self, offset: u16, mask: &[u8], kind: BitKind) -> Result<(), AccessError> {
        self.regs.set_bits(offset, mask, kind)
    }

    /// Sets or clears the multi-function bit of the header type register.
    pub fn set_multifunction(&mut self, on: bool) {
        let v = self.header.register_value() | if on { 0x80 } else { 0 };
        let _ = self.regs.set(offset::HEADER_TYPE, &[v]);
    }
}

/// A space that takes a guest write of `N` bytes (1, 2 or 4), already checked to be inside it,
/// with `N` known at compile time: [`ConfigSpace`] and the view over it, which share
/// [`write_by_width`].
pub(crate) trait WriteN {
    /// Writes the `N` bytes `val` (little-endian) at `at`, calling `on_event` with each event.
    fn write_n<const N: usize>(
        &mut self,
        at: usize,
        val: u32,
        on_event: &mut impl FnMut(ConfigEvent),
    );
}

/// A guest write of `data` (1, 2 or 4 bytes) at `offset` of a space of `size` bytes, handed to
/// `target.write_n::<N>` after one dispatch on the width, so that every path below works on a
/// width known at compile time: single loads and stores, no run-time-length copies. Anything
/// else is refused, and nothing is written.
#[inline(always)]
pub(crate) fn write_by_width(
    target: &mut impl WriteN,
    offset: u16,
    data: &[u8],
    size: usize,
    on_event: &mut impl FnMut(ConfigEvent),
) -> Result<(), AccessError> {
    let at = offset as usize;
    if at + data.len() <= size {
        if let Ok(v) = <[u8; 4]>::try_from(data) {
            target.write_n::<4>(at, u32::from_le_bytes(v), on_event);
            return Ok(());
        }
        if let Ok(v) = <[u8; 2]>::try_from(data) {
            target.write_n::<2>(at, u16::from_le_bytes(v) as u32, on_event);
            return Ok(());
        }
        if let [v] = data {
            target.write_n::<1>(at, *v as u32, on_event);
            return Ok(());
        }
    }
    Err(refused(offset, data.len(), size))
}

/// The error of a guest access that is not 1, 2 or 4 bytes inside a space of `size` bytes.
#[cold]
#[inline(never)]
pub(crate) fn refused(offset: u16, len: usize, size: usize) -> AccessError {
    match check_access(offset, len, size) {
        Err(e) => e,
        // Unreachable: the access paths take every valid access. Keeps the error total.
        Ok(()) => AccessError::OutOfRange { offset, len, size },
    }
}
