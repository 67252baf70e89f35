//! What the lspci parser extracts for one device.

use crate::bar::{BarDef, BarKind, RomDef, decode_bars, flags};
use crate::bdf::Bdf;
use crate::capability::{BarOffset, CapId};
use crate::header::{Command, HeaderType, Status};
use crate::space::ConfigSpace;

use super::LspciError;

/// One `Region N:` line (a BAR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LspciBar {
    /// BAR index (from `Region N:`, or counted in `-v` output that omits it).
    pub index: u8,
    /// Memory (32/64-bit) or I/O.
    pub kind: BarKind,
    /// `prefetchable` (memory BARs).
    pub prefetchable: bool,
    /// Base address; `None` for `<unassigned>`, `<ignored>` and similar.
    pub address: Option<u64>,
    /// `[size=...]`, when lspci could tell.
    pub size: Option<u64>,
    /// `[disabled]` (decode for this space off in the Command register).
    pub disabled: bool,
    /// `[virtual]`: the OS reports a resource the device's register does not hold (e.g. SR-IOV
    /// VFs, or fixed legacy resources).
    pub is_virtual: bool,
}

impl LspciBar {
    /// An I/O BAR.
    pub fn is_io(&self) -> bool {
        self.kind == BarKind::Io
    }

    /// A 64-bit memory BAR (it also occupies BAR `index + 1`).
    pub fn is_64bit(&self) -> bool {
        self.kind == BarKind::Memory64
    }

    /// An address is assigned (not `<unassigned>`/`<ignored>`).
    pub fn is_assigned(&self) -> bool {
        self.address.is_some()
    }
}

/// The `Expansion ROM at ...` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LspciRom {
    /// Base address, if assigned.
    pub address: Option<u64>,
    /// `[size=...]`.
    pub size: Option<u64>,
    /// `[disabled]` or `[disabled by cmd]`.
    pub disabled: bool,
    /// `[virtual]`.
    pub is_virtual: bool,
}

/// One `Capabilities: [off] ...` line with its indented detail lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LspciCapability {
    /// Offset in configuration space.
    pub offset: u16,
    /// Capability ID, when the name is one lspci prints for a known ID.
    pub id: Option<CapId>,
    /// Version of an extended capability (`[100 v2]`).
    pub version: Option<u8>,
    /// The text after `] `, e.g. `MSI-X: Enable+ Count=65 Masked-`.
    pub text: String,
    /// The indented lines that follow, trimmed.
    pub details: Vec<String>,
}

/// The MSI-X facts of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LspciMsix {
    /// Capability offset.
    pub offset: u16,
    /// `Enable+`.
    pub enabled: bool,
    /// `Masked+` (function mask).
    pub function_masked: bool,
    /// `Count=N`: number of table entries.
    pub table_size: u16,
    /// `Vector table: BAR=b offset=o` (only printed with `-vv`).
    pub table: Option<BarOffset>,
    /// `PBA: BAR=b offset=o` (only printed with `-vv`).
    pub pba: Option<BarOffset>,
}

/// The MSI facts of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LspciMsi {
    /// Capability offset.
    pub offset: u16,
    /// `Enable+`.
    pub enabled: bool,
    /// `Count=enabled/capable`: vectors enabled.
    pub vectors_enabled: u8,
    /// `Count=enabled/capable`: vectors the function can request.
    pub vectors_capable: u8,
    /// `Maskable+`: per-vector masking.
    pub maskable: bool,
    /// `64bit+`.
    pub is_64bit: bool,
    /// `Address: ...` (with `-vv`).
    pub address: Option<u64>,
    /// `Data: ...` (with `-vv`).
    pub data: Option<u16>,
}

/// One device parsed from `lspci -v`/`-vv` text, with or without `-n`/`-nn` and `-x`/`-xxx`/
/// `-xxxx` hex. Facts missing from the text are filled from the hex dump when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LspciDevice {
    pub(crate) bdf: Bdf,
    pub(crate) class_name: String,
    pub(crate) class_code: Option<u16>,
    pub(crate) prog_if: Option<u8>,
    pub(crate) revision: Option<u8>,
    pub(crate) description: String,
    pub(crate) vendor_id: Option<u16>,
    pub(crate) device_id: Option<u16>,
    pub(crate) subsystem: Option<String>,
    pub(crate) subsystem_ids: Option<(u16, u16)>,
    pub(crate) command: Option<Command>,
    pub(crate) status: Option<Status>,
    pub(crate) interrupt_pin: Option<u8>,
    pub(crate) irq: Option<u32>,
    pub(crate) bars: Vec<LspciBar>,
    pub(crate) rom: Option<LspciRom>,
    pub(crate) capabilities: Vec<LspciCapability>,
    pub(crate) capabilities_access_denied: bool,
    pub(crate) msix: Option<LspciMsix>,
    pub(crate) msi: Option<LspciMsi>,
    pub(crate) kernel_driver: Option<String>,
    pub(crate) kernel_modules: Vec<String>,
    pub(crate) iommu_group: Option<u32>,
    pub(crate) physical_slot: Option<String>,
    pub(crate) config: Option<Vec<u8>>,
    pub(crate) config_dumped: usize,
}

impl LspciDevice {
    /// The device's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Class name as printed (`Non-Volatile memory controller`), empty with `-n`.
    pub fn class_name(&self) -> &str {
        &self.class_name
    }

    /// Class code, base class << 8 | sub-class (`0x0108`), from `[0108]`, `-n` output or hex.
    pub fn class_code(&self) -> Option<u16> {
        self.class_code
    }

    /// Programming interface (`prog-if 02`).
    pub fn prog_if(&self) -> Option<u8> {
        self.prog_if
    }

    /// Revision (`rev 02`); lspci omits revision 0.
    pub fn revision(&self) -> Option<u8> {
        self.revision
    }

    /// Vendor and device names as printed, without the `[vvvv:dddd]` part.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Vendor ID, from `-nn`/`-n` output or the hex dump.
    pub fn vendor_id(&self) -> Option<u16> {
        self.vendor_id
    }

    /// Device ID, from `-nn`/`-n` output or the hex dump.
    pub fn device_id(&self) -> Option<u16> {
        self.device_id
    }

    /// The `Subsystem:` text.
    pub fn subsystem(&self) -> Option<&str> {
        self.subsystem.as_deref()
    }

    /// Subsystem vendor and device IDs.
    pub fn subsystem_ids(&self) -> Option<(u16, u16)> {
        self.subsystem_ids
    }

    /// The Command register as far as the `Control:` line (or hex) tells.
    pub fn command(&self) -> Option<Command> {
        self.command
    }

    /// The Status register as far as the `Status:` line (or hex) tells.
    pub fn status(&self) -> Option<Status> {
        self.status
    }

    /// Interrupt pin, 1 = INTA# .. 4 = INTD#.
    pub fn interrupt_pin(&self) -> Option<u8> {
        self.interrupt_pin
    }

    /// The host IRQ the pin is routed to (`routed to IRQ n`).
    pub fn irq(&self) -> Option<u32> {
        self.irq
    }

    /// All BARs, by index.
    pub fn bars(&self) -> &[LspciBar] {
        &self.bars
    }

    /// BAR `index`.
    pub fn bar(&self, index: u8) -> Option<&LspciBar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The expansion ROM.
    pub fn rom(&self) -> Option<&LspciRom> {
        self.rom.as_ref()
    }

    /// The capability lines, in the order printed (standard chain, then extended).
    pub fn capabilities(&self) -> &[LspciCapability] {
        &self.capabilities
    }

    /// `Capabilities: <access denied>`: lspci was not run as root, so capabilities beyond the
    /// first 64 bytes were not read.
    pub fn capabilities_access_denied(&self) -> bool {
        self.capabilities_access_denied
    }

    /// The MSI-X capability.
    pub fn msix(&self) -> Option<&LspciMsix> {
        self.msix.as_ref()
    }

    /// The MSI capability.
    pub fn msi(&self) -> Option<&LspciMsi> {
        self.msi.as_ref()
    }

    /// `Kernel driver in use:`.
    pub fn kernel_driver(&self) -> Option<&str> {
        self.kernel_driver.as_deref()
    }

    /// `Kernel modules:`.
    pub fn kernel_modules(&self) -> &[String] {
        &self.kernel_modules
    }

    /// `IOMMU group:`.
    pub fn iommu_group(&self) -> Option<u32> {
        self.iommu_group
    }

    /// `Physical Slot:`.
    pub fn physical_slot(&self) -> Option<&str> {
        self.physical_slot.as_deref()
    }

    /// The hex dump, padded with zeros to 64, 256 or 4096 bytes, if the text had one.
    pub fn config_bytes(&self) -> Option<&[u8]> {
        self.config.as_deref()
    }

    /// How many bytes the hex dump really covered (64 for `-x`, 256 for `-xxx`, 4096 for
    /// `-xxxx`; lines missing from a paste count as zero).
    pub fn config_bytes_dumped(&self) -> usize {
        self.config_dumped
    }

    /// Builds a [`ConfigSpace`] from the hex dump, with BAR and ROM sizes from the `[size=...]`
    /// text (the hex alone cannot tell sizes; BARs without a size stay read-only). A 64-byte
    /// `-x` dump is padded to 256 bytes.
    pub fn to_config_space(&self) -> Result<ConfigSpace, LspciError> {
        let bdf = self.bdf;
        let bytes = self
            .config
            .as_ref()
            .ok_or(LspciError::NoHexDump { bdf: Some(bdf) })?;
        let mut padded = bytes.clone();
        if padded.len() < 256 {
            padded.resize(256, 0);
        }
        let mut space = ConfigSpace::from_bytes(&padded)
            .map_err(|source| LspciError::Config { bdf, source })?;
        let header = space.header_type();
        let raw = decode_bars(&padded, header.bar_count());
        for bar in &self.bars {
            let Some(size) = bar.size else { continue };
            let Some(r) = raw.iter().find(|r| r.index == bar.index as usize) else {
                continue;
            };
            let def = BarDef {
                kind: r.kind,
                size,
                prefetchable: r.prefetchable,
                address: r.address,
            };
            space
                .set_bar(bar.index as usize, def)
                .map_err(|source| LspciError::Bar { bdf, source })?;
        }
        if let Some(size) = self.rom.and_then(|r| r.size) {
            let reg = header.rom_offset() as usize;
            let v = u32::from_le_bytes([
                padded[reg],
                padded[reg + 1],
                padded[reg + 2],
                padded[reg + 3],
            ]);
            let def = RomDef {
                size: size.min(u32::MAX as u64) as u32,
                address: v & flags::ROM_ADDRESS_MASK,
                enabled: v & flags::ROM_ENABLE != 0,
            };
            space
                .set_rom(def)
                .map_err(|source| LspciError::Bar { bdf, source })?;
        }
        Ok(space)
    }

    /// Fills facts the text did not give from the hex dump.
    pub(crate) fn fill_from_hex(&mut self) {
        let Some(bytes) = self.config.clone() else {
            return;
        };
        let w = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        self.vendor_id = self.vendor_id.or(Some(w(0)));
        self.device_id = self.device_id.or(Some(w(2)));
        self.class_code = self.class_code.or(Some(w(0x0a)));
        self.prog_if = self.prog_if.or(Some(bytes[9]));
        if self.revision.is_none() && bytes[8] != 0 {
            self.revision = Some(bytes[8]);
        }
        self.command = self.command.or(Some(Command(w(4))));
        self.status = self.status.or(Some(Status(w(6))));
        let header = HeaderType::from_register(bytes[0x0e]);
        if self.subsystem_ids.is_none() && header == Some(HeaderType::Endpoint) && w(0x2c) != 0 {
            self.subsystem_ids = Some((w(0x2c), w(0x2e)));
        }
        if self.interrupt_pin.is_none() && bytes[0x3d] != 0 {
            self.interrupt_pin = Some(bytes[0x3d]);
        }
        if let (true, Some(h)) = (self.bars.is_empty(), header) {
            let cmd = Command(w(4));
            for r in decode_bars(&bytes, h.bar_count()) {
                self.bars.push(LspciBar {
                    index: r.index as u8,
                    kind: r.kind,
                    prefetchable: r.prefetchable,
                    address: (r.address != 0).then_some(r.address),
                    size: None,
                    disabled: if r.kind == BarKind::Io {
                        !cmd.io()
                    } else {
                        !cmd.memory()
                    },
                    is_virtual: false,
                });
            }
        }
        if self.config_dumped > 0x40 {
            super::parse::fill_capabilities_from_hex(self, &bytes);
        }
    }
}
