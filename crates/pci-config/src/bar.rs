//! Base address registers and the expansion ROM BAR: definitions, encoding, decoding and the
//! sizing-probe rule.
//!
//! PCI Local Bus 3.0 §6.2.5: a BAR's low bits say what it decodes (bit 0: I/O; bits 2:1: 32/64-bit
//! memory; bit 3: prefetchable) and are read-only; the address bits below the region size are
//! hardwired to zero, which is what makes the size discoverable (write all ones, read back, the
//! zero bits give the size) and keeps every programmed address naturally aligned. Here those
//! properties come entirely from the write mask installed by [`BarDef`]: the read/write paths
//! have no BAR code.

use thiserror::Error;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// I/O space (bit 0 set).
    Io,
    /// 32-bit memory space.
    Memory32,
    /// 64-bit memory space; occupies this BAR and the next one.
    Memory64,
}

impl BarKind {
    /// True for the memory kinds.
    pub const fn is_memory(self) -> bool {
        !matches!(self, BarKind::Io)
    }
}

impl std::fmt::Display for BarKind {
    /// `I/O`, `mem32` or `mem64`, as plans and error messages print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BarKind::Io => "I/O",
            BarKind::Memory32 => "mem32",
            BarKind::Memory64 => "mem64",
        })
    }
}

/// BAR register flag bits.
pub mod flags {
    /// Bit 0: the BAR decodes I/O space.
    pub const IO_SPACE: u32 = 0x1;
    /// Bits 2:1 = 0b10: 64-bit memory BAR.
    pub const MEM_TYPE_64: u32 = 0x4;
    /// Bits 2:1 = 0b01: legacy "below 1 MiB" memory BAR (PCI 2.x).
    pub const MEM_TYPE_1M: u32 = 0x2;
    /// Bits 2:1 mask.
    pub const MEM_TYPE_MASK: u32 = 0x6;
    /// Bit 3: prefetchable memory.
    pub const MEM_PREFETCH: u32 = 0x8;
    /// Address bits of a memory BAR.
    pub const MEM_ADDRESS_MASK: u32 = !0xf;
    /// Address bits of an I/O BAR.
    pub const IO_ADDRESS_MASK: u32 = !0x3;
    /// Address bits of the expansion ROM BAR.
    pub const ROM_ADDRESS_MASK: u32 = !0x7ff;
    /// Bit 0 of the ROM BAR: address decode enable.
    pub const ROM_ENABLE: u32 = 0x1;
}

/// An invalid BAR or ROM definition.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BarError {
    /// BAR index beyond the header's BARs.
    #[error("BAR {index} does not exist; a type {header} header has {count} BARs (0..{count})")]
    NoSuchBar {
        /// Requested index.
        index: usize,
        /// Header type number (0 or 1).
        header: u8,
        /// Number of BARs in this header.
        count: usize,
    },
    /// A 64-bit BAR in the last slot has no upper half.
    #[error("BAR {index} is 64-bit but is the last BAR; a 64-bit BAR needs BAR {index} and BAR {next}", next = index + 1)]
    NoRoomForUpperHalf {
        /// Requested index.
        index: usize,
    },
    /// The slot is the upper half of a 64-bit BAR.
    #[error(
        "BAR {index} is the upper half of 64-bit BAR {lower}; define or clear BAR {lower} instead"
    )]
    UpperHalf {
        /// Requested index.
        index: usize,
        /// The 64-bit BAR that owns this slot.
        lower: usize,
    },
    /// Size is not a power of two or outside what the BAR kind allows.
    #[error(
        "BAR {index}: size {size:#x} is invalid for a {kind:?} BAR; it must be a power of two \
         between {min:#x} and {max:#x}"
    )]
    BadSize {
        /// BAR index (6 means the expansion ROM).
        index: usize,
        /// Requested size.
        size: u64,
        /// BAR kind.
        kind: BarKind,
        /// Smallest allowed size.
        min: u64,
        /// Largest allowed size.
        max: u64,
    },
    /// The address is not naturally aligned to the size or does not fit the BAR.
    #[error(
        "BAR {index}: address {address:#x} is not aligned to the BAR size {size:#x} or does not \
         fit a {kind:?} BAR"
    )]
    BadAddress {
        /// BAR index (6 means the expansion ROM).
        index: usize,
        /// Requested address.
        address: u64,
        /// BAR size.
        size: u64,
        /// BAR kind.
        kind: BarKind,
    },
    /// I/O BARs cannot be prefetchable.
    #[error("BAR {index}: an I/O BAR cannot be prefetchable")]
    PrefetchableIo {
        /// BAR index.
        index: usize,
    },
}

/// The definition of one BAR of an emulated function: its kind, size and initial address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarDef {
    /// What the BAR decodes.
    pub kind: BarKind,
    /// Region size in bytes, a power of two.
    pub size: u64,
    /// Prefetchable (memory BARs only).
    pub prefetchable: bool,
    /// Initial base address (0 = unassigned).
    pub address: u64,
}

impl BarDef {
    /// An I/O BAR of `size` bytes (4..=256, PCI 3.0 §6.2.5.1).
    pub fn io(size: u32) -> Self {
        BarDef {
            kind: BarKind::Io,
            size: size as u64,
            prefetchable: false,
            address: 0,
        }
    }

    /// A 32-bit non-prefetchable memory BAR.
    pub fn memory32(size: u32) -> Self {
        BarDef {
            kind: BarKind::Memory32,
            size: size as u64,
            prefetchable: false,
            address: 0,
        }
    }

    /// A 64-bit non-prefetchable memory BAR.
    pub fn memory64(size: u64) -> Self {
        BarDef {
            kind: BarKind::Memory64,
            size,
            prefetchable: false,
            address: 0,
        }
    }

    /// Marks the BAR prefetchable.
    pub fn prefetchable(mut self) -> Self {
        self.prefetchable = true;
        self
    }

    /// Sets the initial base address.
    pub fn at(mut self, address: u64) -> Self {
        self.address = address;
        self
    }

    /// Smallest and largest sizes for this kind.
    fn size_limits(&self) -> (u64, u64) {
        match self.kind {
            // §6.2.5.1: I/O BARs request at most 256 bytes; the minimum decode is a dword.
            BarKind::Io => (4, 256),
            // Memory BARs decode at least 16 bytes (bits 3:0 are flags).
            BarKind::Memory32 => (16, 1 << 31),
            BarKind::Memory64 => (16, 1 << 63),
        }
    }

    /// Checks size, alignment and flags.
    pub fn validate(&self, index: usize) -> Result<(), BarError> {
        let (min, max) = self.size_limits();
        if !self.size.is_power_of_two() || self.size < min || self.size > max {
            return Err(BarError::BadSize {
                index,
                size: self.size,
                kind: self.kind,
                min,
                max,
            });
        }
        if self.kind == BarKind::Io && self.prefetchable {
            return Err(BarError::PrefetchableIo { index });
        }
        let fits = match self.kind {
            BarKind::Io | BarKind::Memory32 => self.address <= u32::MAX as u64,
            BarKind::Memory64 => true,
        };
        if !fits || self.address & (self.size - 1) != 0 {
            return Err(BarError::BadAddress {
                index,
                address: self.address,
                size: self.size,
                kind: self.kind,
            });
        }
        Ok(())
    }

    /// Read-only flag bits of the low dword.
    pub fn flag_bits(&self) -> u32 {
        match self.kind {
            BarKind::Io => flags::IO_SPACE,
            BarKind::Memory32 => {
                if self.prefetchable {
                    flags::MEM_PREFETCH
                } else {
                    0
                }
            }
            BarKind::Memory64 => {
                flags::MEM_TYPE_64
                    | if self.prefetchable {
                        flags::MEM_PREFETCH
                    } else {
                        0
                    }
            }
        }
    }

    /// Writable bits of the whole BAR (64 bits for `Memory64`, else the low 32): the address bits
    /// at and above the size. This single mask gives natural alignment and the sizing protocol.
    pub fn write_mask(&self) -> u64 {
        let addr_mask = !(self.size - 1);
        match self.kind {
            BarKind::Io => addr_mask & flags::IO_ADDRESS_MASK as u64 & 0xffff_ffff,
            BarKind::Memory32 => addr_mask & flags::MEM_ADDRESS_MASK as u64 & 0xffff_ffff,
            BarKind::Memory64 => addr_mask & !0xf,
        }
    }

    /// Register value(s) encoding `address` (low dword, high dword).
    pub fn encode(&self, address: u64) -> (u32, u32) {
        let v = (address & self.write_mask()) | self.flag_bits() as u64;
        (v as u32, (v >> 32) as u32)
    }
}

/// The definition of the expansion ROM BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RomDef {
    /// ROM size in bytes, a power of two, at least 2 KiB (PCI 3.0 §6.2.5.2).
    pub size: u32,
    /// Initial base address.
    pub address: u32,
    /// Initial state of the ROM address decode enable bit.
    pub enabled: bool,
}

impl RomDef {
    /// A disabled, unassigned ROM of `size` bytes.
    pub fn new(size: u32) -> Self {
        RomDef {
            size,
            address: 0,
            enabled: false,
        }
    }

    /// Sets the initial base address.
    pub fn at(mut self, address: u32) -> Self {
        self.address = address;
        self
    }

    /// Checks size and alignment.
    pub fn validate(&self) -> Result<(), BarError> {
        if !self.size.is_power_of_two() || self.size < 0x800 {
            return Err(BarError::BadSize {
                index: 6,
                size: self.size as u64,
                kind: BarKind::Memory32,
                min: 0x800,
                max: 1 << 31,
            });
        }
        if self.address & (self.size - 1) != 0 {
            return Err(BarError::BadAddress {
                index: 6,
                address: self.address as u64,
                size: self.size as u64,
                kind: BarKind::Memory32,
            });
        }
        Ok(())
    }

    /// Writable bits: the address bits at and above the size, and the enable bit.
    pub fn write_mask(&self) -> u32 {
        (!(self.size - 1) & flags::ROM_ADDRESS_MASK) | flags::ROM_ENABLE
    }
}

/// A BAR as decoded from raw register bytes (no size: the registers alone cannot tell it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawBar {
    /// BAR index.
    pub index: usize,
    /// What it decodes.
    pub kind: BarKind,
    /// Prefetchable flag.
    pub prefetchable: bool,
    /// Base address (flag bits removed; both halves for 64-bit BARs).
    pub address: u64,
    /// The raw low dword.
    pub raw: u32,
}

/// Decodes the BAR registers of a header with `count` BARs out of raw configuration bytes.
/// Unimplemented BARs (register reads as zero) are skipped; the upper half of a 64-bit BAR is
/// folded into its lower half.
pub fn decode_bars(bytes: &[u8], count: usize) -> Vec<RawBar> {
    let dword = |i: usize| -> u32 {
        let o = 0x10 + 4 * i;
        bytes
            .get(o..o + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < count {
        let raw = dword(i);
        if raw & flags::IO_SPACE != 0 {
            out.push(RawBar {
                index: i,
                kind: BarKind::Io,
                prefetchable: false,
                address: (raw & flags::IO_ADDRESS_MASK) as u64,
                raw,
            });
            i += 1;
            continue;
        }
        let prefetchable = raw & flags::MEM_PREFETCH != 0;
        if raw & flags::MEM_TYPE_MASK == flags::MEM_TYPE_64 && i + 1 < count {
            let hi = dword(i + 1) as u64;
            out.push(RawBar {
                index: i,
                kind: BarKind::Memory64,
                prefetchable,
                address: (hi << 32) | (raw & flags::MEM_ADDRESS_MASK) as u64,
                raw,
            });
            i += 2;
            continue;
        }
        if raw != 0 {
            out.push(RawBar {
                index: i,
                kind: BarKind::Memory32,
                prefetchable,
                address: (raw & flags::MEM_ADDRESS_MASK) as u64,
                raw,
            });
        }
        i += 1;
    }
    out
}

/// The bits of a BAR dword that make up its address field (what a sizing probe sets to one).
pub(crate) fn probe_field(kind: Option<BarKind>, upper_half: bool) -> u32 {
    if upper_half {
        return u32::MAX;
    }
    match kind {
        Some(BarKind::Io) => flags::IO_ADDRESS_MASK,
        Some(BarKind::Memory32 | BarKind::Memory64) => flags::MEM_ADDRESS_MASK,
        None => flags::ROM_ADDRESS_MASK,
    }
}

/// Formats a size the way lspci does (`16K`, `1M`, `256`).
pub fn format_size(size: u64) -> String {
    const SUFFIX: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut x = size;
    let mut i = 0;
    while i < SUFFIX.len() - 1 && x >= 1024 && x % 1024 == 0 {
        x /= 1024;
        i += 1;
    }
    format!("{x}{}", SUFFIX[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_print_as_plans_name_them() {
        let names = [BarKind::Io, BarKind::Memory32, BarKind::Memory64].map(|k| k.to_string());
        assert_eq!(names, ["I/O", "mem32", "mem64"]);
    }

    #[test]
    fn validation() {
        assert!(BarDef::memory64(0x4000).validate(0).is_ok());
        assert!(BarDef::memory64(0x4000).at(0xfe00_4000).validate(0).is_ok());
        assert!(matches!(
            BarDef::memory64(0x3000).validate(0),
            Err(BarError::BadSize { .. })
        ));
        assert!(matches!(
            BarDef::io(512).validate(0),
            Err(BarError::BadSize { .. })
        ));
        assert!(matches!(
            BarDef::io(2).validate(0),
            Err(BarError::BadSize { .. })
        ));
        assert!(matches!(
            BarDef::memory32(0x1000).at(0x800).validate(1),
            Err(BarError::BadAddress { .. })
        ));
        assert!(matches!(
            BarDef::memory32(0x1000).at(0x1_0000_0000).validate(1),
            Err(BarError::BadAddress { .. })
        ));
        let mut io = BarDef::io(32);
        io.prefetchable = true;
        assert_eq!(io.validate(4), Err(BarError::PrefetchableIo { index: 4 }));
        assert!(RomDef::new(0x80000).validate().is_ok());
        assert!(RomDef::new(0x400).validate().is_err());
        assert!(RomDef::new(0x80000).at(0x1000).validate().is_err());
    }

    #[test]
    fn masks_and_encoding() {
        let b = BarDef::memory64(0x4000).prefetchable();
        assert_eq!(b.write_mask(), 0xffff_ffff_ffff_c000);
        assert_eq!(b.encode(0x2ff_0000_0000), (0x0000_000c, 0x2ff));
        assert_eq!(BarDef::io(32).write_mask(), 0xffff_ffe0);
        assert_eq!(BarDef::io(32).encode(0xe000), (0xe001, 0));
        assert_eq!(RomDef::new(0x80000).write_mask(), 0xfff8_0001);
    }

    #[test]
    fn decode_raw() {
        let mut b = [0u8; 64];
        b[0x10..0x14].copy_from_slice(&0xfe00_0004u32.to_le_bytes());
        b[0x14..0x18].copy_from_slice(&0x1u32.to_le_bytes());
        b[0x18..0x1c].copy_from_slice(&0xe001u32.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&0xfd00_0008u32.to_le_bytes());
        let bars = decode_bars(&b, 6);
        assert_eq!(bars.len(), 3);
        assert_eq!(bars[0].kind, BarKind::Memory64);
        assert_eq!(bars[0].address, 0x1_fe00_0000);
        assert_eq!(bars[1].kind, BarKind::Io);
        assert_eq!(bars[1].address, 0xe000);
        assert_eq!(bars[2].index, 4);
        assert!(bars[2].prefetchable);
    }

    #[test]
    fn sizes_format_like_lspci() {
        assert_eq!(format_size(16 * 1024), "16K");
        assert_eq!(format_size(1 << 20), "1M");
        assert_eq!(format_size(256), "256");
        assert_eq!(format_size(1 << 34), "16G");
        assert_eq!(format_size(1536), "1536");
    }
}
