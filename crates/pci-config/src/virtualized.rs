//! A configuration space in front of a real device: each bit is either emulated (served from
//! our [`ConfigSpace`]) or passed through to the device behind a [`ConfigBackend`], like the
//! per-bit `emulated_config_bits` mask of QEMU's `hw/vfio/pci.c`.
//!
//! # Semantics
//!
//! - **Reads** merge: emulated bits come from the model, the others from the backend.
//!   The backend is not called when every byte of the access is fully emulated.
//! - **Writes** always go through the model first, so its masks apply and its
//!   [`ConfigEvent`]s are produced for every bit (for passthrough bits
//!   the model is a shadow: it tracks, say, Command.Memory so that `DecodeChanged` is reported,
//!   while the guest reads the device's value). Then the bytes holding passthrough bits are
//!   forwarded to the backend. Emulated bits never reach the device: in a byte that mixes both,
//!   the emulated positions carry the device's current value (read first), except
//!   write-1-to-clear positions, which carry 0, so forwarding cannot change or clear a bit the
//!   guest does not own.
//! - Backend accesses are split into naturally aligned 1-, 2- and 4-byte pieces, so a backend
//!   (e.g. a VFIO config region) never sees an unaligned or 3-byte access.
//!
//! # Backend errors
//!
//! A device that fails a config access (surprise removal, reset in progress) looks to the guest
//! like a device that fell off the bus: failed reads return all-ones for the passthrough bits
//! (emulated bits are still served), failed writes are dropped. Either way the view logs a
//! warning and counts the failure ([`backend_errors`](VirtualizedConfig::backend_errors)); the
//! guest access itself still succeeds, because a guest must never be able to turn a device
//! error into a VMM error.
//!
//! # Passthrough defaults
//!
//! [`VirtualizedConfig::passthrough`] sets up what a VFIO passthrough device needs, as QEMU
//! does: BARs and the expansion ROM are emulated (the guest's addresses must never reach the
//! real device; the VMM maps BARs where the guest puts them, told by `BarMoved`), so are the
//! interrupt line and pin, the multi-function bit (cleared: the guest sees one function), the
//! capability list pointers and headers (so capabilities can be hidden), and the whole MSI and
//! MSI-X capabilities (interrupt routing is the VMM's job; the guest must not program the
//! device's real MSI address). Everything else — Command and Status, IDs, the PCI Express
//! capability, vendor registers — is passed through.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::capability::{self, CapId, CapabilityError, CapabilityId, HiddenCapability};
use crate::error::AccessError;
use crate::events::{ConfigEvent, ConfigEvents};
use crate::header::{Status, offset};
use crate::registers::{TABLE_BYTES, get_le, lanes, load_le};
use crate::space::{ConfigSpace, WriteN, write_by_width};

/// The device behind a [`VirtualizedConfig`]: its configuration space, e.g. the VFIO config
/// region (`pread`/`pwrite` at the region offset plus `offset`).
///
/// Accesses are 1, 2 or 4 bytes wide and naturally aligned.
pub trait ConfigBackend {
    /// Reads `data.len()` bytes at `offset`.
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`.
    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()>;
}

impl<T: ConfigBackend + ?Sized> ConfigBackend for &T {
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        (**self).read(offset, data)
    }
    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        (**self).write(offset, data)
    }
}

impl<T: ConfigBackend + ?Sized> ConfigBackend for Box<T> {
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        (**self).read(offset, data)
    }
    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        (**self).write(offset, data)
    }
}

impl<T: ConfigBackend + ?Sized> ConfigBackend for std::sync::Arc<T> {
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        (**self).read(offset, data)
    }
    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        (**self).write(offset, data)
    }
}

/// Calls `f(offset, range)` for naturally aligned pieces of 4, 2 or 1 bytes covering
/// `start..start + len` (relative ranges into the access buffer).
fn aligned_pieces(start: u16, len: usize, mut f: impl FnMut(u16, std::ops::Range<usize>)) {
    let mut i = 0;
    while i < len {
        let at = start as usize + i;
        let left = len - i;
        let size = [4usize, 2, 1]
            .into_iter()
            .find(|&s| s <= left && at % s == 0)
            .unwrap_or(1);
        f(at as u16, i..i + size);
        i += size;
    }
}

/// A configuration space whose bits are each emulated or passed through.
#[derive(Debug)]
pub struct VirtualizedConfig<B> {
    model: ConfigSpace,
    /// One byte per config byte, the size of the largest space whatever the model's, so that an
    /// access checked against the model's size needs no further bounds check (see
    /// `RegisterFile`).
    emulated: Box<[u8; TABLE_BYTES]>,
    backend: B,
    backend_errors: AtomicU64,
}

impl<B: ConfigBackend> VirtualizedConfig<B> {
    /// A view where every bit is passed through; `model` is the shadow (typically
    /// [`ConfigSpace::from_bytes`] of the device's current config). Mark bits emulated with
    /// [`emulate`](Self::emulate).
    pub fn new(model: ConfigSpace, backend: B) -> Self {
        VirtualizedConfig {
            model,
            emulated: Box::new([0; TABLE_BYTES]),
            backend,
            backend_errors: AtomicU64::new(0),
        }
    }

    /// A view with the passthrough defaults described in the [module docs](self). Define the
    /// BARs and ROM in `model` (sizes from the VFIO region info) before or after; their
    /// registers are emulated either way.
    pub fn passthrough(mut model: ConfigSpace, backend: B) -> Self {
        model.set_multifunction(false);
        let mut v = Self::new(model, backend);
        let header = v.model.header_type();
        let bar_bytes = 4 * header.bar_count();
        v.emulate_range(offset::BAR0, bar_bytes);
        v.emulate_range(header.rom_offset(), 4);
        v.emulate_range(offset::INTERRUPT_LINE, 2);
        let _ = v.emulate(offset::HEADER_TYPE, &[0x80]);
        v.emulate_range(offset::CAPABILITY_LIST, 1);
        let _ = v.emulate(offset::STATUS, &Status::CAP_LIST.to_le_bytes());
        let (caps, _) = capability::capabilities_lenient(v.model.bytes());
        for c in &caps {
            match c.id {
                CapId::Standard(CapabilityId::MSI) | CapId::Standard(CapabilityId::MSIX) => {
                    v.emulate_range(c.offset, c.len as usize)
                }
                CapId::Standard(_) => v.emulate_range(c.offset + 1, 1),
                CapId::Extended(_) => v.emulate_range(c.offset, 4),
            }
        }
        v
    }

    /// Marks the bits set in `mask` (little-endian bytes at `offset`) as emulated.
    pub fn emulate(&mut self, offset: u16, mask: &[u8]) -> Result<(), AccessError> {
        crate::registers::check_range(offset, mask.len(), self.model.len())?;
        for (i, m) in mask.iter().enumerate() {
            self.emulated[offset as usize + i] |= m;
        }
        Ok(())
    }

    /// Marks the bits set in `mask` as passed through.
    pub fn pass_through(&mut self, offset: u16, mask: &[u8]) -> Result<(), AccessError> {
        crate::registers::check_range(offset, mask.len(), self.model.len())?;
        for (i, m) in mask.iter().enumerate() {
            self.emulated[offset as usize + i] &= !m;
        }
        Ok(())
    }

    fn emulate_range(&mut self, offset: u16, len: usize) {
        let start = (offset as usize).min(self.model.len());
        let end = (offset as usize + len).min(self.model.len());
        self.emulated[start..end].fill(0xff);
    }

    /// The per-bit emulation mask (1 = emulated), one byte per config byte.
    pub fn emulated_mask(&self) -> &[u8] {
        &self.emulated[..self.model.len()]
    }

    /// True when bit `bit` of the byte at `offset` is emulated.
    pub fn is_emulated(&self, offset: u16, bit: u8) -> bool {
        bit < 8
            && self
                .emulated
                .get(offset as usize)
                .is_some_and(|m| m & (1 << bit) != 0)
    }

    /// The model (emulated registers and shadow).
    pub fn model(&self) -> &ConfigSpace {
        &self.model
    }

    /// The model, mutable: define BARs, relocate the MSI-X table, set device-side bits.
    pub fn model_mut(&mut self) -> &mut ConfigSpace {
        &mut self.model
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Splits the view into its model and backend.
    pub fn into_parts(self) -> (ConfigSpace, B) {
        (self.model, self.backend)
    }

    /// Number of backend accesses that failed so far.
    pub fn backend_errors(&self) -> u64 {
        self.backend_errors.load(Ordering::Relaxed)
    }

    #[cold]
    fn backend_failed(&self, what: &str, offset: u16, len: usize, e: &io::Error) {
        self.backend_errors.fetch_add(1, Ordering::Relaxed);
        log::warn!("pci-config: backend {what} of {len} bytes at {offset:#x} failed: {e}");
    }

    /// Hides the capability at `offset` from the guest: unlinks it in the model (see
    /// [`ConfigSpace::hide_capability`]) and emulates all its bytes
    /// ([`HiddenCapability::len`]) and the rewritten pointers, so the guest reads zeros there
    /// and its writes never reach the device.
    pub fn hide_capability(&mut self, offset: u16) -> Result<HiddenCapability, CapabilityError> {
        let hidden = self.model.hide_capability(offset)?;
        self.emulate_range(hidden.capability.offset, hidden.len as usize);
        for &(o, l) in &hidden.patched {
            self.emulate_range(o, l as usize);
        }
        Ok(hidden)
    }

    /// Guest read of 1, 2 or 4 bytes. On an access error `buf` is all-ones.
    #[inline(always)]
    pub fn read(&self, offset: u16, buf: &mut [u8]) -> Result<(), AccessError> {
        let at = offset as usize;
        // One dispatch on the width (see `ConfigSpace::write_with`), then the accesses a guest
        // makes nearly always: inside the space, and either all emulated or naturally aligned.
        if at + buf.len() <= self.model.len() {
            if let Ok(b) = <&mut [u8; 4]>::try_from(&mut *buf) {
                if let Some(v) = self.read_n::<4>(at) {
                    *b = v.to_le_bytes();
                    return Ok(());
                }
            } else if let Ok(b) = <&mut [u8; 2]>::try_from(&mut *buf) {
                if let Some(v) = self.read_n::<2>(at) {
                    *b = (v as u16).to_le_bytes();
                    return Ok(());
                }
            } else if let [b] = buf {
                if let Some(v) = self.read_n::<1>(at) {
                    *b = v as u8;
                    return Ok(());
                }
            }
        }
        self.read_general(offset, buf)
    }

    /// The `N` bytes at `at` (checked to be in the space) as the guest sees them: the model's
    /// emulated bits, the device's passthrough bits, the device read with one access of `N`
    /// bytes; the device is not asked when every bit is emulated. `None` for an access that
    /// is not naturally aligned and has passthrough bits (see
    /// [`read_general`](Self::read_general)).
    #[inline(always)]
    fn read_n<const N: usize>(&self, at: usize) -> Option<u32> {
        let emulated = get_le::<N>(&self.emulated[..], at).unwrap_or(0);
        let model = self.model.registers().load_n::<N>(at);
        if emulated == lanes(N) {
            return Some(model);
        }
        if at & (N - 1) != 0 {
            return None;
        }
        let mut dev = [0u8; N];
        let device = match self.backend.read(at as u16, &mut dev) {
            Ok(()) => load_le(&dev, 0, N),
            Err(e) => {
                self.backend_failed("read", at as u16, N, &e);
                u32::MAX
            }
        };
        Some((model & emulated) | (device & !emulated))
    }

    /// [`read`](Self::read) of the accesses [`read_n`](Self::read_n) does not take: refused
    /// ones, and unaligned ones with passthrough bits, whose device bytes are read in naturally
    /// aligned pieces (failed pieces read as all-ones).
    #[cold]
    #[inline(never)]
    pub(crate) fn read_general(&self, offset: u16, buf: &mut [u8]) -> Result<(), AccessError> {
        self.model.read(offset, buf)?;
        let len = buf.len();
        let emulated = load_le(&self.emulated[..], offset as usize, len);
        if emulated == lanes(len) {
            return Ok(());
        }
        let model = load_le(buf, 0, len);
        let device = self.read_device_pieces(offset, len);
        let value = (model & emulated) | (device & !emulated);
        buf.copy_from_slice(&value.to_le_bytes()[..len]);
        Ok(())
    }

    /// [`read_device`](Self::read_device) of an unaligned access, split into aligned pieces.
    #[inline(never)]
    fn read_device_pieces(&self, offset: u16, len: usize) -> u32 {
        let mut dev = [0u8; 4];
        aligned_pieces(offset, len, |at, r| {
            if let Err(e) = self.backend.read(at, &mut dev[r.clone()]) {
                self.backend_failed("read", at, r.len(), &e);
                dev[r].fill(0xff);
            }
        });
        load_le(&dev, 0, len)
    }

    /// Guest dword read, by value (the same as [`read`](Self::read) of 4 bytes).
    #[inline]
    pub fn read_u32(&self, offset: u16) -> Result<u32, AccessError> {
        let at = offset as usize;
        // In range first: `read_n` may ask the device.
        if at + 4 <= self.model.len() {
            if let Some(v) = self.read_n::<4>(at) {
                return Ok(v);
            }
        }
        self.read_by_bytes::<4>(offset)
    }

    /// Guest word read, by value (the same as [`read`](Self::read) of 2 bytes).
    #[inline]
    pub fn read_u16(&self, offset: u16) -> Result<u16, AccessError> {
        let at = offset as usize;
        // In range first: `read_n` may ask the device.
        if at + 2 <= self.model.len() {
            if let Some(v) = self.read_n::<2>(at) {
                return Ok(v as u16);
            }
        }
        self.read_by_bytes::<2>(offset).map(|v| v as u16)
    }

    /// What [`read_u32`](Self::read_u32) and [`read_u16`](Self::read_u16) do not inline:
    /// [`read_general`](Self::read_general) into a buffer.
    #[cold]
    #[inline(never)]
    fn read_by_bytes<const N: usize>(&self, offset: u16) -> Result<u32, AccessError> {
        let mut b = [0u8; 4];
        self.read_general(offset, &mut b[..N])?;
        Ok(u32::from_le_bytes(b))
    }

    /// Guest write of 1, 2 or 4 bytes; returns the model's events (see the
    /// [module docs](self) for how the write is split).
    ///
    /// [`write_with`](Self::write_with) is the same write handing each event to a closure.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Result<ConfigEvents, AccessError> {
        let mut events = ConfigEvents::new();
        self.write_with(offset, data, |e| events.push(e))?;
        Ok(events)
    }

    /// Guest write of 1, 2 or 4 bytes; calls `on_event` with each of the model's events, in
    /// order (see the [module docs](self) for how the write is split).
    #[inline(always)]
    pub fn write_with(
        &mut self,
        offset: u16,
        data: &[u8],
        mut on_event: impl FnMut(ConfigEvent),
    ) -> Result<(), AccessError> {
        let size = self.model.len();
        write_by_width(self, offset, data, size, &mut on_event)
    }
}

impl<B: ConfigBackend> WriteN for VirtualizedConfig<B> {
    /// A guest write of the `N` bytes `val` at `at` (checked to be in the space): through the
    /// model, then what holds passthrough bits to the device. The model's fast paths and an
    /// aligned access with no emulated bit (Command, most device registers) or only emulated
    /// ones (BARs) are inline; the rest is [`write_general`](Self::write_general).
    #[inline(always)]
    fn write_n<const N: usize>(
        &mut self,
        at: usize,
        val: u32,
        on_event: &mut impl FnMut(ConfigEvent),
    ) {
        if !self.model.write_fast::<N>(at, val, on_event) {
            self.write_general(at, val, N, on_event);
            return;
        }
        let emulated = get_le::<N>(&self.emulated[..], at).unwrap_or(0);
        if emulated == lanes(N) {
            return;
        }
        let offset = at as u16;
        if emulated == 0 && at & (N - 1) == 0 {
            if let Err(e) = self.backend.write(offset, &val.to_le_bytes()[..N]) {
                self.backend_failed("write", offset, N, &e);
            }
        } else {
            self.forward(offset, val, N, emulated);
        }
    }
}

impl<B: ConfigBackend> VirtualizedConfig<B> {
    /// [`write_n`](Self::write_n) of a write the model's fast paths do not take, out of line.
    #[inline(never)]
    pub(crate) fn write_general(
        &mut self,
        at: usize,
        val: u32,
        len: usize,
        on_event: &mut impl FnMut(ConfigEvent),
    ) {
        self.model.write_general(at, val, len, on_event);
        let emulated = load_le(&self.emulated[..], at, len);
        if emulated != lanes(len) {
            self.forward(at as u16, val, len, emulated);
        }
    }

    /// Forwards the bytes of a guest write (`value`, `len` bytes at `offset`) that hold
    /// passthrough bits (`emulated` is the access's emulation mask).
    #[inline(never)]
    fn forward(&self, offset: u16, mut value: u32, len: usize, emulated: u32) {
        let bytes = (0..len).map(|i| (emulated >> (8 * i)) as u8);
        if bytes.clone().any(|m| m != 0 && m != 0xff) {
            // A byte mixes both kinds: its emulated positions carry the device's value, except
            // write-1-to-clear ones, which carry 0.
            let mut dev = [0u8; 4];
            let mut failed = false;
            aligned_pieces(offset, len, |at, r| {
                if let Err(e) = self.backend.read(at, &mut dev[r.clone()]) {
                    self.backend_failed("read-before-write", at, r.len(), &e);
                    failed = true;
                }
            });
            if failed {
                return;
            }
            let w1c = load_le(self.model.registers().w1cmask(), offset as usize, len);
            value = (value & !emulated) | (load_le(&dev, 0, len) & emulated & !w1c);
        }
        let value = value.to_le_bytes();
        if emulated == 0 && offset as usize % len == 0 {
            // One naturally aligned access, all passed through: forward it as it is.
            if let Err(e) = self.backend.write(offset, &value[..len]) {
                self.backend_failed("write", offset, len, &e);
            }
            return;
        }
        // Forward each run of bytes that holds passthrough bits.
        let mut i = 0;
        while i < len {
            if (emulated >> (8 * i)) as u8 == 0xff {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < len && (emulated >> (8 * i)) as u8 != 0xff {
                i += 1;
            }
            aligned_pieces(offset + run_start as u16, i - run_start, |at, r| {
                let r = r.start + run_start..r.end + run_start;
                if let Err(e) = self.backend.write(at, &value[r.clone()]) {
                    self.backend_failed("write", at, r.len(), &e);
                }
            });
        }
    }

    /// Guest dword write.
    pub fn write_u32(&mut self, offset: u16, v: u32) -> Result<ConfigEvents, AccessError> {
        self.write(offset, &v.to_le_bytes())
    }

    /// Guest word write.
    pub fn write_u16(&mut self, offset: u16, v: u16) -> Result<ConfigEvents, AccessError> {
        self.write(offset, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::aligned_pieces;

    #[test]
    fn pieces_are_aligned() {
        let mut v = Vec::new();
        aligned_pieces(0x43, 4, |at, r| v.push((at, r.len())));
        assert_eq!(v, [(0x43, 1), (0x44, 2), (0x46, 1)]);
        v.clear();
        aligned_pieces(0x40, 4, |at, r| v.push((at, r.len())));
        assert_eq!(v, [(0x40, 4)]);
        v.clear();
        aligned_pieces(0x41, 3, |at, r| v.push((at, r.len())));
        assert_eq!(v, [(0x41, 1), (0x42, 2)]);
    }
}
