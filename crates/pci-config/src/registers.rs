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

/// Bytes in the largest space (PCI Express).
pub(crate) const MAX_BYTES: usize = 4096;

/// Length of the per-byte tables: the largest space whatever the space's size, plus 3 bytes of
/// padding (always zero) so that an access of up to 4 bytes at any offset below [`MAX_BYTES`]
/// is inside the table by construction. An access checked against the space's size then needs
/// no other bounds check: its offset, masked with [`in_table`], is provably in range.
pub(crate) const TABLE_BYTES: usize = MAX_BYTES + 3;

/// `at`, an offset already checked to be inside the space (so below [`MAX_BYTES`]), in a form
/// the compiler can see is inside a table of [`TABLE_BYTES`] with room for 4 bytes: the mask
/// changes nothing and saves a second bounds check on every access.
#[inline(always)]
pub(crate) const fn in_table(at: usize) -> usize {
    at & (MAX_BYTES - 1)
}

/// The register bytes and their masks, each table the size of the largest space so that an
/// access checked against the space's size needs no further bounds checks, and all four tables
/// in one allocation: one pointer to load, each table at a fixed distance from it. Indexed by
/// [`DATA`], [`WMASK`], [`W1CMASK`] and [`RSVDMASK`].
type Tables = [[u8; TABLE_BYTES]; 4];
/// The register bytes in [`Tables`].
const DATA: usize = 0;
/// The read-write mask in [`Tables`].
const WMASK: usize = 1;
/// The write-1-to-clear mask in [`Tables`].
const W1CMASK: usize = 2;
/// The reserved mask in [`Tables`].
const RSVDMASK: usize = 3;

/// `N` (1, 2 or 4) bytes of `table` at `at` as a little-endian number, one load of that width;
/// `None` past the end of the table.
#[inline(always)]
pub(crate) fn get_le<const N: usize>(table: &[u8], at: usize) -> Option<u32> {
    let at = in_table(at);
    let bytes: [u8; N] = table.get(at..at + N)?.try_into().ok()?;
    Some(match N {
        1 => bytes[0] as u32,
        2 => u16::from_le_bytes([bytes[0], bytes[1]]) as u32,
        _ => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
    })
}

/// Configuration bytes with their read-write, write-1-to-clear and reserved masks.
///
/// Bits in none of the masks are read-only. The masks are disjoint by construction.
#[derive(Clone, PartialEq, Eq)]
pub struct RegisterFile {
    /// Size of the space in bytes (256 or 4096); the tables past it stay zero.
    len: usize,
    tables: Box<Tables>,
}

impl std::fmt::Debug for RegisterFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterFile")
            .field("data", &self.bytes())
            .field("wmask", &self.wmask())
            .field("w1cmask", &self.w1cmask())
            .field("rsvdmask", &self.rsvdmask())
            .finish()
    }
}

impl RegisterFile {
    /// A space of the given size with every bit read-only and zero.
    pub fn new(size: ConfigSize) -> Self {
        // Zeroed on the heap, not built on the stack and moved (16 KiB).
        let tables: Box<Tables> = vec![[0; TABLE_BYTES]; 4]
            .into_boxed_slice()
            .try_into()
            .unwrap_or_else(|_| unreachable!("a vector of 4 tables"));
        RegisterFile {
            len: size.bytes(),
            tables,
        }
    }

    /// Size in bytes (256 or 4096).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a configuration space has at least 256 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size class of this space.
    pub fn size(&self) -> ConfigSize {
        if self.len == 4096 {
            ConfigSize::Extended
        } else {
            ConfigSize::Conventional
        }
    }

    /// The raw register contents.
    pub fn bytes(&self) -> &[u8] {
        &self.tables[DATA][..self.len]
    }

    /// Guest read: copies `buf.len()` bytes from `offset`.
    ///
    /// On error `buf` is filled with `0xff`.
    #[inline]
    pub fn read(&self, offset: u16, buf: &mut [u8]) -> Result<(), AccessError> {
        // Inlined into the caller: the dword and word reads a guest makes, one load and one
        // store of their width. The rest is one out-of-line call, so the inlined part needs no
        // stack frame and no saved registers (measured: 2.0 -> 1.5 ns per dword read through a
        // `dyn` call, `benches/benches/config_access.rs`).
        let at = offset as usize;
        if at + buf.len() <= self.len
            && (Self::copy_out::<4>(&self.tables[DATA], at, buf)
                || Self::copy_out::<2>(&self.tables[DATA], at, buf))
        {
            return Ok(());
        }
        Self::read_byte_or_refuse(offset, buf, self)
    }

    /// Guest read of `N` (2 or 4) bytes at `offset`, by value; `None` past the end of the
    /// space.
    #[inline(always)]
    pub fn read_n<const N: usize>(&self, offset: u16) -> Option<u32> {
        let at = offset as usize;
        if at + N <= self.len {
            get_le::<N>(&self.tables[DATA], at)
        } else {
            None
        }
    }

    /// What [`read`](Self::read) does not inline: byte reads (rare: a guest reads header
    /// bytes and capability pointers while it enumerates) and refused accesses. `regs` comes
    /// last so that `offset` and `buf` stay in the argument registers `read` got them in: the
    /// inlined fast path then moves nothing before its width checks.
    #[inline(never)]
    fn read_byte_or_refuse(offset: u16, buf: &mut [u8], regs: &Self) -> Result<(), AccessError> {
        let at = offset as usize;
        if at + buf.len() <= regs.len && Self::copy_out::<1>(&regs.tables[DATA], at, buf) {
            return Ok(());
        }
        Err(Self::read_refused(offset, buf, regs.len))
    }

    /// Copies the `N` bytes of `table` at `at` to `buf`, if `buf` is `N` bytes long and the
    /// table has them.
    #[inline(always)]
    pub(crate) fn copy_out<const N: usize>(
        table: &[u8; TABLE_BYTES],
        at: usize,
        buf: &mut [u8],
    ) -> bool {
        let Ok(dst) = <&mut [u8; N]>::try_from(buf) else {
            return false;
        };
        let at = in_table(at);
        dst.copy_from_slice(&table[at..at + N]);
        true
    }

    /// The error of a read [`read`](Self::read) refused; fills `buf` with all-ones.
    #[cold]
    #[inline(never)]
    pub(crate) fn read_refused(offset: u16, buf: &mut [u8], size: usize) -> AccessError {
        buf.fill(0xff);
        match check_access(offset, buf.len(), size) {
            Err(e) => e,
            // Unreachable: `read` takes every valid access. Keeps the error total.
            Ok(()) => AccessError::OutOfRange {
                offset,
                len: buf.len(),
                size,
            },
        }
    }

    /// The `len` (1, 2 or 4) register bytes at `offset` as a little-endian number; the range has
    /// been checked.
    #[inline(always)]
    pub(crate) fn load(&self, offset: usize, len: usize) -> u32 {
        load_le(&self.tables[DATA], offset, len)
    }

    /// The `N` register bytes at `at` (checked to be in the space) as a little-endian number.
    #[inline(always)]
    pub(crate) fn load_n<const N: usize>(&self, at: usize) -> u32 {
        get_le::<N>(&self.tables[DATA], at).unwrap_or(0)
    }

    /// The 8 register bytes at `at` (checked to be in the space) as a little-endian number:
    /// both dwords of a 64-bit BAR with one load.
    #[inline(always)]
    pub(crate) fn load_u64(&self, at: usize) -> u64 {
        match self.tables[DATA].get(at..at + 8) {
            Some(b) => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            None => 0,
        }
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
        let at = offset as usize;
        let val = load_le(buf, 0, buf.len());
        match buf.len() {
            1 => self.write_n::<1>(at, val),
            2 => self.write_n::<2>(at, val),
            _ => self.write_n::<4>(at, val),
        }
    }

    /// [`apply_write`](Self::apply_write) of the `N` bytes `val` (little-endian) at `at`,
    /// checked to be in the space: loads of the register and its two masks, one store.
    #[inline(always)]
    pub(crate) fn write_n<const N: usize>(&mut self, at: usize, val: u32) -> (u32, u32) {
        let t = &mut *self.tables;
        let (Some(w), Some(c), Some(old)) = (
            get_le::<N>(&t[WMASK], at),
            get_le::<N>(&t[W1CMASK], at),
            get_le::<N>(&t[DATA], at),
        ) else {
            return (0, 0);
        };
        let new = ((old & !w) | (val & w)) & !(val & c);
        if let Some(dst) = t[DATA].get_mut(at..at + N) {
            dst.copy_from_slice(&new.to_le_bytes()[..N]);
        }
        (old, new)
    }

    /// Device-side store that bypasses the masks (what the hardware itself does when it sets a
    /// status bit or when a model is initialised). Reserved bits stay zero.
    pub fn set(&mut self, offset: u16, bytes: &[u8]) -> Result<(), AccessError> {
        check_range(offset, bytes.len(), self.len())?;
        let start = offset as usize;
        let t = &mut *self.tables;
        for (i, &b) in bytes.iter().enumerate() {
            t[DATA][start + i] = b & !t[RSVDMASK][start + i];
        }
        Ok(())
    }

    /// Raw little-endian read of up to 4 bytes for internal decoding; out-of-range bytes read 0.
    #[inline]
    pub(crate) fn get(&self, offset: usize, len: usize) -> u32 {
        if matches!(len, 1 | 2 | 4) && offset + len <= self.len {
            return load_le(&self.tables[DATA], offset, len);
        }
        let mut v = 0u32;
        for i in 0..len.min(4) {
            let b = self.bytes().get(offset + i).copied().unwrap_or(0);
            v |= (b as u32) << (8 * i);
        }
        v
    }

    /// Marks the bits set in `mask` (little-endian bytes at `offset`) as `kind`, removing them from
    /// the other masks. Marking bits [`BitKind::Reserved`] also clears their value.
    pub fn set_bits(&mut self, offset: u16, mask: &[u8], kind: BitKind) -> Result<(), AccessError> {
        check_range(offset, mask.len(), self.len())?;
        let start = offset as usize;
        let t = &mut *self.tables;
        for (i, &m) in mask.iter().enumerate() {
            let at = start + i;
            t[WMASK][at] &= !m;
            t[W1CMASK][at] &= !m;
            t[RSVDMASK][at] &= !m;
            match kind {
                BitKind::ReadOnly => {}
                BitKind::ReadWrite => t[WMASK][at] |= m,
                BitKind::WriteOneToClear => t[W1CMASK][at] |= m,
                BitKind::Reserved => {
                    t[RSVDMASK][at] |= m;
                    t[DATA][at] &= !m;
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
        let t = &self.tables;
        Some(if t[WMASK][at] & m != 0 {
            BitKind::ReadWrite
        } else if t[W1CMASK][at] & m != 0 {
            BitKind::WriteOneToClear
        } else if t[RSVDMASK][at] & m != 0 {
            BitKind::Reserved
        } else {
            BitKind::ReadOnly
        })
    }

    /// Read-write mask table.
    pub fn wmask(&self) -> &[u8] {
        &self.tables[WMASK][..self.len]
    }

    /// Write-1-to-clear mask table.
    pub fn w1cmask(&self) -> &[u8] {
        &self.tables[W1CMASK][..self.len]
    }

    /// Reserved-bit mask table.
    pub fn rsvdmask(&self) -> &[u8] {
        &self.tables[RSVDMASK][..self.len]
    }

    /// Makes every bit in `offset..offset+len` read-only and sets it to zero (used to blank a
    /// hidden capability).
    pub(crate) fn blank(&mut self, offset: usize, len: usize) {
        let end = (offset + len).min(self.len());
        for table in self.tables.iter_mut() {
            table[offset.min(end)..end].fill(0);
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
