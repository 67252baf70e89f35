//! The register model: configuration bytes plus one table of per-bit masks.
//!
//! Like QEMU's `PCIDevice` (`config`, `wmask`, `w1cmask`), the behaviour of every bit is data:
//! a bit is read-only, read-write, write-1-to-clear or reserved according to the masks, and the
//! read and write paths contain no register-specific code. Register-specific *side effects*
//! (BAR moves, decode changes) live one level up, in [`ConfigSpace`](crate::ConfigSpace).
//!
//! # Access semantics
//!
//! - An access is 1, 2 or 4 bytes wide at any byte offset, little-endian, and must end inside the
//!   space; anything else is an [`AccessError`] and changes nothing.
//! - Unaligned and cross-register accesses are allowed: each byte is handled on its own through
//!   its masks, exactly as if the host bridge had split the access into byte-enabled dword
//!   transactions (PCI Local Bus 3.0 §3.2.2.3.2: configuration transactions carry byte enables,
//!   and a register is affected only in the bytes that are enabled).
//! - Read-only and reserved bits ignore writes. Reserved bits always read as zero.
//! - Write-1-to-clear bits are cleared by writing 1 and unchanged by writing 0.

use crate::error::AccessError;

/// How large a configuration space is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigSize {
    /// 256 bytes: conventional PCI (PCI Local Bus 3.0 §6.1).
    Conventional,
    /// 4096 bytes: PCI Express, with the extended capability area from 0x100.
    Extended,
}

impl ConfigSize {
    /// Number of bytes.
    pub const fn bytes(self) -> usize {
        match self {
            ConfigSize::Conventional => 256,
            ConfigSize::Extended => 4096,
        }
    }

    /// The size of a snapshot of `len` bytes, if it is one of the two valid sizes.
    pub const fn from_len(len: usize) -> Option<Self> {
        match len {
            256 => Some(ConfigSize::Conventional),
            4096 => Some(ConfigSize::Extended),
            _ => None,
        }
    }
}

/// What a bit does when software writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BitKind {
    /// Hardware-defined; writes are ignored.
    ReadOnly,
    /// Software-writable.
    ReadWrite,
    /// Status bit cleared by writing 1 (RW1C); writing 0 has no effect.
    WriteOneToClear,
    /// Reserved: reads as zero, writes are ignored (RsvdZ).
    Reserved,
}

/// The byte lanes of a `len`-byte access (1, 2 or 4) in a little-endian `u32`.
#[inline(always)]
pub(crate) const fn lanes(len: usize) -> u32 {
    if len >= 4 {
        u32::MAX
    } else {
        (1 << (8 * len)) - 1
    }
}

/// The `len` bytes (1, 2 or 4) of `bytes` at `at`, little-endian, read with one load of that
/// width. The access paths use these instead of copying a run-time number of bytes: a copy of
/// unknown length is a `memcpy` call, and bytes stored one by one then read back as a word stall
/// the load on store forwarding. The caller has checked the range.
#[inline(always)]
pub(crate) fn load_le(bytes: &[u8], at: usize, len: usize) -> u32 {
    match len {
        1 => bytes[at] as u32,
        // Copies into a fixed-size array: one load, where building the array byte by byte can
        // leave one load per byte.
        2 => {
            let mut b = [0; 2];
            b.copy_from_slice(&bytes[at..at + 2]);
            u16::from_le_bytes(b) as u32
        }
        _ => {
            let mut b = [0; 4];
            b.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(b)
        }
    }
}

/// Stores the low `len` bytes (1, 2 or 4) of `v` at `at`, little-endian, with one store of that
/// width (see [`load_le`]).
#[inline(always)]
pub(crate) fn store_le(bytes: &mut [u8], at: usize, len: usize, v: u32) {
    match len {
        1 => bytes[at] = v as u8,
        2 => bytes[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes()),
        _ => bytes[at..at + 4].copy_from_slice(&v.to_le_bytes()),
    }
}

/// Checks that an access of `len` bytes at `offset` is valid for a space of `size` bytes.
#[inline(always)]
pub(crate) fn check_access(offset: u16, len: usize, size: usize) -> Result<(), AccessError> {
    if !matches!(len, 1 | 2 | 4) {
        return Err(AccessError::BadWidth { offset, len });
    }
    if offset as usize + len > size {
        return Err(AccessError::OutOfRange { offset, len, size });
    }
    Ok(())
}

/// Checks a range used by setup code (any length, must fit).
pub(crate) fn check_range(offset: u16, len: usize, size: usize) -> Result<(), AccessError> {
    if offset as usize + len > size {
        return Err(AccessError::OutOfRange { offset, len, size });
    }
    Ok(())
}

/// Configuration bytes with their read-write, write-1-to-clear and reserved masks.
///
/// Bits in none of the masks are read-only. The masks are disjoint by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterFile {
    data: Box<[u8]>,
    wmask: Box<[u8]>,
    w1cmask: Box<[u8]>,
    rsvdmask: Box<[u8]>,
}

impl RegisterFile {
    /// A space of the given size with every bit read-only and zero.
    pub fn new(size: ConfigSize) -> Self {
        let len = size.bytes();
        RegisterFile {
            data: vec![0; len].into_boxed_slice(),
            wmask: vec![0; len].into_boxed_slice(),
            w1cmask: vec![0; len].into_boxed_slice(),
            rsvdmask: vec![0; len].into_boxed_slice(),
        }
    }

    /// Size in bytes (256 or 4096).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Always false: a configuration space has at least 256 bytes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The size class of this space.
    pub fn size(&self) -> ConfigSize {
        if self.data.len() == 4096 {
            ConfigSize::Extended
        } else {
            ConfigSize::Conventional
        }
    }

    /// The raw register contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Guest read: copies `buf.len()` bytes from `offset`.
    ///
    /// On error `buf` is filled with `0xff`.
    #[inline]
    pub fn read(&self, offset: u16, buf: &mut [u8]) -> Result<(), AccessError> {
        if let Err(e) = check_access(offset, buf.len(), self.len()) {
            buf.fill(0xff);
            return Err(e);
        }
        let at = offset as usize;
        // One dispatch on the width, then a load and a store of that width.
        match buf.len() {
            1 => store_le(buf, 0, 1, load_le(&self.data, at, 1)),
            2 => store_le(buf, 0, 2, load_le(&self.data, at, 2)),
            _ => store_le(buf, 0, 4, load_le(&self.data, at, 4)),
        }
        Ok(())
    }

    /// The `len` (1, 2 or 4) register bytes at `offset` as a little-endian number; the range has
    /// been checked.
    #[inline(always)]
    pub(crate) fn load(&self, offset: usize, len: usize) -> u32 {
        load_le(&self.data, offset, len)
    }

    /// Guest write through the masks.
    pub fn write(&mut self, offset: u16, buf: &[u8]) -> Result<(), AccessError> {
        check_access(offset, buf.len(), self.len())?;
        self.apply_write(offset, buf);
        Ok(())
    }

    /// Applies a write that has already been checked (1, 2 or 4 bytes, in range). Every bit
    /// goes through its own masks, so doing all the bytes at once in one word is the same as
    /// doing them one by one: each byte is affected only where it is written. Returns the
    /// register bytes before and after, little-endian (the side-effect rules need both).
    #[inline(always)]
    pub(crate) fn apply_write(&mut self, offset: u16, buf: &[u8]) -> (u32, u32) {
        let (at, len) = (offset as usize, buf.len());
        let val = load_le(buf, 0, len);
        let w = load_le(&self.wmask, at, len);
        let c = load_le(&self.w1cmask, at, len);
        let old = load_le(&self.data, at, len);
        let new = ((old & !w) | (val & w)) & !(val & c);
        store_le(&mut self.data, at, len, new);
        (old, new)
    }

    /// Device-side store that bypasses the masks (what the hardware itself does when it sets a
    /// status bit or when a model is initialised). Reserved bits stay zero.
    pub fn set(&mut self, offset: u16, bytes: &[u8]) -> Result<(), AccessError> {
        check_range(offset, bytes.len(), self.len())?;
        let start = offset as usize;
        for (i, &b) in bytes.iter().enumerate() {
            self.data[start + i] = b & !self.rsvdmask[start + i];
        }
        Ok(())
    }

    /// Raw little-endian read of up to 4 bytes for internal decoding; out-of-range bytes read 0.
    #[inline]
    pub(crate) fn get(&self, offset: usize, len: usize) -> u32 {
        if matches!(len, 1 | 2 | 4) && offset + len <= self.data.len() {
            return load_le(&self.data, offset, len);
        }
        let mut v = 0u32;
        for i in 0..len.min(4) {
            let b = self.data.get(offset + i).copied().unwrap_or(0);
            v |= (b as u32) << (8 * i);
        }
        v
    }

    /// Marks the bits set in `mask` (little-endian bytes at `offset`) as `kind`, removing them from
    /// the other masks. Marking bits [`BitKind::Reserved`] also clears their value.
    pub fn set_bits(&mut self, offset: u16, mask: &[u8], kind: BitKind) -> Result<(), AccessError> {
        check_range(offset, mask.len(), self.len())?;
        let start = offset as usize;
        for (i, &m) in mask.iter().enumerate() {
            let at = start + i;
            self.wmask[at] &= !m;
            self.w1cmask[at] &= !m;
            self.rsvdmask[at] &= !m;
            match kind {
                BitKind::ReadOnly => {}
                BitKind::ReadWrite => self.wmask[at] |= m,
                BitKind::WriteOneToClear => self.w1cmask[at] |= m,
                BitKind::Reserved => {
                    self.rsvdmask[at] |= m;
                    self.data[at] &= !m;
                }
            }
        }
        Ok(())
    }

    /// [`set_bits`](Self::set_bits) for a 16-bit register.
    pub fn set_bits_u16(
        &mut self,
        offset: u16,
        mask: u16,
        kind: BitKind,
    ) -> Result<(), AccessError> {
        self.set_bits(offset, &mask.to_le_bytes(), kind)
    }

    /// [`set_bits`](Self::set_bits) for a 32-bit register.
    pub fn set_bits_u32(
        &mut self,
        offset: u16,
        mask: u32,
        kind: BitKind,
    ) -> Result<(), AccessError> {
        self.set_bits(offset, &mask.to_le_bytes(), kind)
    }

    /// What bit `bit` (0..8) of the byte at `offset` does on writes.
    pub fn bit_kind(&self, offset: u16, bit: u8) -> Option<BitKind> {
        let at = offset as usize;
        if at >= self.len() || bit > 7 {
            return None;
        }
        let m = 1u8 << bit;
        Some(if self.wmask[at] & m != 0 {
            BitKind::ReadWrite
        } else if self.w1cmask[at] & m != 0 {
            BitKind::WriteOneToClear
        } else if self.rsvdmask[at] & m != 0 {
            BitKind::Reserved
        } else {
            BitKind::ReadOnly
        })
    }

    /// Read-write mask table.
    pub fn wmask(&self) -> &[u8] {
        &self.wmask
    }

    /// Write-1-to-clear mask table.
    pub fn w1cmask(&self) -> &[u8] {
        &self.w1cmask
    }

    /// Reserved-bit mask table.
    pub fn rsvdmask(&self) -> &[u8] {
        &self.rsvdmask
    }

    /// Makes every bit in `offset..offset+len` read-only and sets it to zero (used to blank a
    /// hidden capability).
    pub(crate) fn blank(&mut self, offset: usize, len: usize) {
        let end = (offset + len).min(self.len());
        for at in offset.min(end)..end {
            self.data[at] = 0;
            self.wmask[at] = 0;
            self.w1cmask[at] = 0;
            self.rsvdmask[at] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_and_ranges_are_checked() {
        let mut r = RegisterFile::new(ConfigSize::Conventional);
        let mut b3 = [0u8; 3];
        assert_eq!(
            r.read(0, &mut b3),
            Err(AccessError::BadWidth { offset: 0, len: 3 })
        );
        assert_eq!(b3, [0xff; 3]);
        let mut b4 = [0u8; 4];
        assert_eq!(
            r.read(0xfe, &mut b4),
            Err(AccessError::OutOfRange {
                offset: 0xfe,
                len: 4,
                size: 256
            })
        );
        assert_eq!(b4, [0xff; 4]);
        assert!(r.write(0x100, &[1]).is_err());
        assert!(r.read(0xfc, &mut b4).is_ok());
        let mut x = RegisterFile::new(ConfigSize::Extended);
        assert!(x.write(0xffc, &[1, 2, 3, 4]).is_ok());
        assert!(x.write(0xffd, &[1, 2, 3, 4]).is_err());
    }

    #[test]
    fn each_bit_kind_behaves() {
        let mut r = RegisterFile::new(ConfigSize::Conventional);
        r.set(0x40, &[0b1010_1010]).unwrap();
        r.set_bits(0x40, &[0b0000_0011], BitKind::ReadWrite)
            .unwrap();
        r.set_bits(0x40, &[0b0000_1100], BitKind::WriteOneToClear)
            .unwrap();
        r.set_bits(0x40, &[0b0011_0000], BitKind::Reserved).unwrap();
        // reserved bit 5 was 1 and is now cleared
        assert_eq!(r.bytes()[0x40], 0b1000_1010);
        r.write(0x40, &[0xff]).unwrap();
        // RW bits 0,1 -> 1; W1C bit 3 cleared (bit 2 was already 0); reserved stay 0; RO 6,7 kept
        assert_eq!(r.bytes()[0x40], 0b1000_0011);
        r.write(0x40, &[0x00]).unwrap();
        assert_eq!(r.bytes()[0x40], 0b1000_0000);
        assert_eq!(r.bit_kind(0x40, 0), Some(BitKind::ReadWrite));
        assert_eq!(r.bit_kind(0x40, 2), Some(BitKind::WriteOneToClear));
        assert_eq!(r.bit_kind(0x40, 4), Some(BitKind::Reserved));
        assert_eq!(r.bit_kind(0x40, 7), Some(BitKind::ReadOnly));
        assert_eq!(r.bit_kind(0x100, 0), None);
        // device-side set cannot set reserved bits
        r.set(0x40, &[0xff]).unwrap();
        assert_eq!(r.bytes()[0x40], 0b1100_1111);
    }

    #[test]
    fn unaligned_cross_register_write_touches_each_byte_through_its_mask() {
        let mut r = RegisterFile::new(ConfigSize::Conventional);
        r.set_bits_u32(0x40, 0x0000_ffff, BitKind::ReadWrite)
            .unwrap();
        r.set_bits_u32(0x44, 0xffff_0000, BitKind::ReadWrite)
            .unwrap();
        // 4-byte write at 0x42 covers the read-only upper half of 0x40 and lower half of 0x44
        r.write(0x42, &[1, 2, 3, 4]).unwrap();
        assert_eq!(&r.bytes()[0x40..0x48], &[0, 0, 0, 0, 0, 0, 0, 0]);
        // 4-byte write at 0x41 covers one writable byte of 0x40 only
        r.write(0x41, &[0xaa, 0xbb, 0xcc, 0xdd]).unwrap();
        assert_eq!(&r.bytes()[0x40..0x48], &[0, 0xaa, 0, 0, 0, 0, 0, 0]);
        // 2-byte write at 0x45 covers byte 0x46 (writable) and 0x45 (read-only)
        r.write(0x45, &[0x11, 0x22]).unwrap();
        assert_eq!(&r.bytes()[0x44..0x48], &[0, 0, 0x22, 0]);
        let mut b = [0u8; 4];
        r.read(0x43, &mut b).unwrap();
        assert_eq!(b, [0, 0, 0, 0x22]);
    }
}
