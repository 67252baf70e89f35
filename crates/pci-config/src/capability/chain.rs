//! Walking the standard (0x34) and extended (0x100) capability chains out of raw bytes.
//!
//! The bytes may come from a guest, a hostile device or a user's paste, so the walk trusts
//! nothing: it masks the reserved pointer bits, refuses pointers into the header, detects loops
//! (a visited bitmap, so it always terminates), checks that each capability's structure fits and
//! does not overlap an earlier one, and reports each problem with its offset and ID.

use super::error::CapabilityError;
use super::id::{CapId, CapabilityId, ExtCapabilityId};
use crate::header::{Status, offset};

/// One capability found in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capability {
    /// Offset of the capability header.
    pub offset: u16,
    /// Its ID.
    pub id: CapId,
    /// Capability version (extended capabilities, bits 19:16 of the header); 0 for standard ones.
    pub version: u8,
    /// Bytes its structure occupies, as far as this crate can tell (the known register layout for
    /// recognised IDs, the header alone for unknown ones).
    pub len: u16,
    /// Offset of the next capability (0 at the end of the chain).
    pub next: u16,
}

impl Capability {
    /// True when `self` occupies `at`.
    pub fn contains(&self, at: u16) -> bool {
        at >= self.offset && (at as u32) < self.offset as u32 + self.len as u32
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([
        b.get(at).copied().unwrap_or(0),
        b.get(at + 1).copied().unwrap_or(0),
    ])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u16_at(b, at) as u32 | (u16_at(b, at + 2) as u32) << 16
}

/// Length of a standard capability's structure: [`standard_layout_len`], or the 2-byte header
/// alone for an ID whose layout this crate does not know.
pub(crate) fn standard_len(b: &[u8], at: usize, id: CapabilityId) -> Result<u16, u16> {
    Ok(standard_layout_len(b, at, id)?.unwrap_or(2))
}

/// Length of a standard capability's structure when this crate knows its layout (`None` when it
/// does not). Reads the control fields that size it (MSI flags, vendor length, Express
/// version); `Err(needed)` when those fields are themselves cut off.
fn standard_layout_len(b: &[u8], at: usize, id: CapabilityId) -> Result<Option<u16>, u16> {
    let need = |n: usize| {
        if at + n > b.len() {
            Err(n as u16)
        } else {
            Ok(())
        }
    };
    Ok(Some(match id {
        CapabilityId::POWER_MANAGEMENT => 8,
        CapabilityId::MSI => {
            need(4)?;
            super::msi::structure_len(u16_at(b, at + 2))
        }
        CapabilityId::MSIX => 12,
        CapabilityId::EXPRESS => {
            need(4)?;
            if u16_at(b, at + 2) & 0xf >= 2 {
                0x3c
            } else {
                0x14
            }
        }
        CapabilityId::VENDOR_SPECIFIC => {
            need(3)?;
            b[at + 2].max(3) as u16
        }
        CapabilityId::VPD | CapabilityId::SUBSYSTEM_VENDOR | CapabilityId::PCIX => 8,
        CapabilityId::SATA => 8,
        CapabilityId::AGP => 12,
        CapabilityId::ADVANCED_FEATURES => 6,
        CapabilityId::SLOT_ID | CapabilityId::DEBUG_PORT | CapabilityId::HYPERTRANSPORT => 4,
        CapabilityId::ENHANCED_ALLOCATION => 4,
        _ => return Ok(None),
    }))
}

/// Length of an extended capability's structure: [`extended_layout_len`], or the 4-byte header
/// alone for an ID whose layout this crate does not know.
pub(crate) fn extended_len(b: &[u8], at: usize, id: ExtCapabilityId) -> Result<u16, u16> {
    Ok(extended_layout_len(b, at, id)?.unwrap_or(4))
}

/// Length of an extended capability's structure (minimum register layout) when this crate
/// knows the ID (`None` when it does not).
fn extended_layout_len(b: &[u8], at: usize, id: ExtCapabilityId) -> Result<Option<u16>, u16> {
    let need = |n: usize| {
        if at + n > b.len() {
            Err(n as u16)
        } else {
            Ok(())
        }
    };
    Ok(Some(match id {
        // header, uncorrectable status/mask/severity, correctable status/mask, caps, header log
        ExtCapabilityId::AER => 0x2c,
        ExtCapabilityId::DEVICE_SERIAL_NUMBER => 0x0c,
        ExtCapabilityId::POWER_BUDGETING => 0x10,
        ExtCapabilityId::ACS
        | ExtCapabilityId::ARI
        | ExtCapabilityId::ATS
        | ExtCapabilityId::PASID
        | ExtCapabilityId::LTR => 8,
        ExtCapabilityId::SRIOV => 0x40,
        ExtCapabilityId::PRI | ExtCapabilityId::L1_PM_SUBSTATES => 0x10,
        ExtCapabilityId::PTM | ExtCapabilityId::SECONDARY_PCIE | ExtCapabilityId::DPC => 0x0c,
        // The VF Resizable BAR capability has the Resizable BAR layout, for the VF BARs
        // (PCIe 4.0 §9.3.7.5).
        ExtCapabilityId::RESIZABLE_BAR | ExtCapabilityId::VF_RESIZABLE_BAR => {
            need(12)?;
            // Control register of the first entry, bits 7:5: number of resizable BARs (1..6).
            let n = ((u32_at(b, at + 8) >> 5) & 0x7).clamp(1, 6) as u16;
            4 + 8 * n
        }
        ExtCapabilityId::VENDOR_SPECIFIC | ExtCapabilityId::DVSEC => {
            need(8)?;
            ((u32_at(b, at + 4) >> 20) as u16).max(8)
        }
        ExtCapabilityId::VIRTUAL_CHANNEL => 0x10,
        _ => return Ok(None),
    }))
}

/// True when this crate knows the register layout of `cap` (in `config`), so that
/// [`Capability::len`] is its whole structure and not just its header.
pub(crate) fn layout_known(config: &[u8], cap: &Capability) -> bool {
    let at = cap.offset as usize;
    match cap.id {
        CapId::Standard(id) => matches!(standard_layout_len(config, at, id), Ok(Some(_))),
        CapId::Extended(id) => matches!(extended_layout_len(config, at, id), Ok(Some(_))),
    }
}

fn check_overlap(found: &[Capability], new: &Capability) -> Result<(), CapabilityError> {
    let end = new.offset as u32 + new.len as u32;
    for c in found {
        let c_end = c.offset as u32 + c.len as u32;
        if (new.offset as u32) < c_end && (c.offset as u32) < end {
            return Err(CapabilityError::Overlap {
                offset: new.offset,
                id: new.id,
                len: new.len,
                other_offset: c.offset,
                other_id: c.id,
            });
        }
    }
    Ok(())
}

/// Walks the standard capability chain of `config` (at least 256 bytes; shorter input is treated
/// as truncated). Returns an empty list when the Status register's capabilities-list bit is clear.
pub fn standard_capabilities(config: &[u8]) -> Result<Vec<Capability>, CapabilityError> {
    match walk_standard(config) {
        (found, None) => Ok(found),
        (_, Some(e)) => Err(e),
    }
}

/// Walks the extended capability chain of a 4096-byte `config`. Returns an empty list for a
/// 256-byte space, or when the header at 0x100 is zero or all-ones (no extended capabilities, or
/// extended space not readable).
pub fn extended_capabilities(config: &[u8]) -> Result<Vec<Capability>, CapabilityError> {
    match walk_extended(config) {
        (found, None) => Ok(found),
        (_, Some(e)) => Err(e),
    }
}

/// Both chains: standard capabilities first, then extended ones.
pub fn capabilities(config: &[u8]) -> Result<Vec<Capability>, CapabilityError> {
    let mut all = standard_capabilities(config)?;
    all.extend(extended_capabilities(config)?);
    Ok(all)
}

/// The capabilities of both chains up to the first problem in each, and the first problem.
/// Used where a partly broken chain is still worth using (loading a real device's snapshot).
pub fn capabilities_lenient(config: &[u8]) -> (Vec<Capability>, Option<CapabilityError>) {
    let (mut all, e1) = walk_standard(config);
    let (ext, e2) = walk_extended(config);
    all.extend(ext);
    (all, e1.or(e2))
}

fn walk_standard(config: &[u8]) -> (Vec<Capability>, Option<CapabilityError>) {
    let mut found = Vec::new();
    if config.len() < offset::HEADER_END as usize
        || u16_at(config, offset::STATUS as usize) & Status::CAP_LIST == 0
    {
        return (found, None);
    }
    // The standard chain lives in the first 256 bytes whatever the size of the space.
    let area = &config[..config.len().min(256)];
    let mut visited = [false; 256];
    let mut at = offset::CAPABILITY_LIST;
    let mut ptr = (area[at as usize] & !3) as u16;
    let mut prev: Option<(u16, CapId)> = None;
    while ptr != 0 {
        if let Err(e) = step_standard(area, &mut visited, &mut found, at, ptr, prev) {
            return (found, Some(e));
        }
        let cap = found[found.len() - 1];
        prev = Some((cap.offset, cap.id));
        at = ptr + 1;
        ptr = cap.next;
    }
    (found, None)
}

fn step_standard(
    area: &[u8],
    visited: &mut [bool; 256],
    found: &mut Vec<Capability>,
    at: u16,
    ptr: u16,
    prev: Option<(u16, CapId)>,
) -> Result<(), CapabilityError> {
    if ptr < offset::HEADER_END {
        return Err(CapabilityError::PointerIntoHeader { at, pointer: ptr });
    }
    if ptr as usize + 2 > area.len() {
        return Err(CapabilityError::Truncated {
            offset: ptr,
            id: CapId::Standard(CapabilityId(area.get(ptr as usize).copied().unwrap_or(0))),
            needed: 2,
            available: area.len().saturating_sub(ptr as usize) as u16,
        });
    }
    if visited[ptr as usize] {
        let (offset, id) = prev.unwrap_or((at, CapId::Standard(CapabilityId(0))));
        return Err(CapabilityError::Loop {
            offset,
            id,
            target: ptr,
        });
    }
    visited[ptr as usize] = true;
    let raw_id = area[ptr as usize];
    if raw_id == 0xff {
        return Err(CapabilityError::Broken { offset: ptr });
    }
    let id = CapabilityId(raw_id);
    let cid = CapId::Standard(id);
    let len = fitting_len(standard_len(area, ptr as usize, id), area.len(), ptr, cid)?;
    let next = (area[ptr as usize + 1] & !3) as u16;
    let cap = Capability {
        offset: ptr,
        id: cid,
        version: 0,
        len,
        next,
    };
    check_overlap(found, &cap)?;
    found.push(cap);
    Ok(())
}

/// The length of the capability at `offset`, or `Truncated` when it does not fit in the
/// `space_len` bytes of the space: `len` is the length its header implies, or the bytes its
/// header needs to be read at all (`Err`).
fn fitting_len(
    len: Result<u16, u16>,
    space_len: usize,
    offset: u16,
    id: CapId,
) -> Result<u16, CapabilityError> {
    let available = (space_len - offset as usize) as u16;
    match len {
        Ok(len) if len <= available => Ok(len),
        Ok(needed) | Err(needed) => Err(CapabilityError::Truncated {
            offset,
            id,
            needed,
            available,
        }),
    }
}

fn walk_extended(config: &[u8]) -> (Vec<Capability>, Option<CapabilityError>) {
    let mut found = Vec::new();
    if config.len() < 4096 {
        return (found, None);
    }
    let config = &config[..4096];
    let mut visited = [false; 1024];
    let mut at = offset::EXTENDED_START;
    let mut prev: Option<(u16, CapId)> = None;
    loop {
        let header = u32_at(config, at as usize);
        if header == 0 || (header == u32::MAX && at == offset::EXTENDED_START) {
            break;
        }
        match step_extended(config, &mut visited, &mut found, at, header, prev) {
            Err(e) => return (found, Some(e)),
            Ok(0) => break,
            Ok(next) => {
                prev = Some((at, found[found.len() - 1].id));
                at = next;
            }
        }
    }
    (found, None)
}

fn step_extended(
    config: &[u8],
    visited: &mut [bool; 1024],
    found: &mut Vec<Capability>,
    at: u16,
    header: u32,
    prev: Option<(u16, CapId)>,
) -> Result<u16, CapabilityError> {
    if header == u32::MAX {
        return Err(CapabilityError::Broken { offset: at });
    }
    if visited[at as usize / 4] {
        let (offset, id) = prev.unwrap_or((at, CapId::Extended(ExtCapabilityId(0))));
        return Err(CapabilityError::Loop {
            offset,
            id,
            target: at,
        });
    }
    visited[at as usize / 4] = true;
    let id = ExtCapabilityId(header as u16);
    let cid = CapId::Extended(id);
    let version = ((header >> 16) & 0xf) as u8;
    let next = ((header >> 20) & !3) as u16;
    let len = fitting_len(extended_len(config, at as usize, id), config.len(), at, cid)?;
    let cap = Capability {
        offset: at,
        id: cid,
        version,
        len,
        next,
    };
    check_overlap(found, &cap)?;
    found.push(cap);
    if next != 0 && next < offset::EXTENDED_START {
        return Err(CapabilityError::PointerBelowExtended { at, pointer: next });
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[6] = Status::CAP_LIST as u8;
        b
    }

    fn link(b: &mut [u8], at: usize, id: u8, next: u8) {
        b[at] = id;
        b[at + 1] = next;
    }

    #[test]
    fn walks_a_good_chain() {
        let mut b = space();
        b[0x34] = 0x40;
        link(&mut b, 0x40, 0x11, 0x80); // MSI-X
        link(&mut b, 0x80, 0x10, 0x60); // Express v2
        b[0x82] = 0x92;
        link(&mut b, 0x60, 0x01, 0x00); // PM
        let caps = standard_capabilities(&b).unwrap();
        let offs: Vec<u16> = caps.iter().map(|c| c.offset).collect();
        assert_eq!(offs, vec![0x40, 0x80, 0x60]);
        assert_eq!(caps[1].len, 0x3c);
        assert_eq!(caps[0].next, 0x80);
    }

    #[test]
    fn capability_bit_clear_means_no_chain() {
        let mut b = space();
        b[6] = 0;
        b[0x34] = 0x40;
        assert!(standard_capabilities(&b).unwrap().is_empty());
    }

    #[test]
    fn reserved_pointer_bits_are_masked() {
        let mut b = space();
        b[0x34] = 0x43;
        link(&mut b, 0x40, 0x01, 0x00);
        assert_eq!(standard_capabilities(&b).unwrap()[0].offset, 0x40);
    }

    #[test]
    fn detects_loop_with_offset_and_id() {
        let mut b = space();
        b[0x34] = 0x40;
        link(&mut b, 0x40, 0x01, 0x50);
        link(&mut b, 0x50, 0x11, 0x40);
        let e = standard_capabilities(&b).unwrap_err();
        assert_eq!(
            e,
            CapabilityError::Loop {
                offset: 0x50,
                id: CapId::Standard(CapabilityId::MSIX),
                target: 0x40
            }
        );
        assert!(e.to_string().contains("0x50"), "{e}");
        assert!(e.to_string().contains("MSI-X"), "{e}");
        // self loop
        let mut b = space();
        b[0x34] = 0x40;
        link(&mut b, 0x40, 0x01, 0x40);
        assert!(matches!(
            standard_capabilities(&b),
            Err(CapabilityError::Loop { target: 0x40, .. })
        ));
    }

    #[test]
    fn detects_pointer_into_header() {
        let mut b = space();
        b[0x34] = 0x40;
        link(&mut b, 0x40, 0x01, 0x10);
        assert_eq!(
            standard_capabilities(&b),
            Err(CapabilityError::PointerIntoHeader {
                at: 0x41,
                pointer: 0x10
            })
        );
    }

    #[test]
    fn detects_overlap_and_truncation() {
        let mut b = space();
        b[0x34] = 0x40;
        link(&mut b, 0x40, 0x01, 0x44); // PM is 8 bytes: 0x44 overlaps
        link(&mut b, 0x44, 0x05, 0x00);
        assert!(matches!(
            standard_capabilities(&b),
            Err(CapabilityError::Overlap {
                offset: 0x44,
                other_offset: 0x40,
                ..
            })
        ));
        let mut b = space();
        b[0x34] = 0xf8;
        link(&mut b, 0xf8, 0x10, 0x00); // Express v2 at 0xf8 needs 0x3c bytes
        b[0xfa] = 2;
        assert!(matches!(
            standard_capabilities(&b),
            Err(CapabilityError::Truncated {
                offset: 0xf8,
                needed: 0x3c,
                available: 8,
                ..
            })
        ));
        // also for a 256-byte space
        assert!(standard_capabilities(&b[..256]).is_err());
        let mut b = space();
        b[0x34] = 0x40;
        link(&mut b, 0x40, 0xff, 0x00);
        assert_eq!(
            standard_capabilities(&b),
            Err(CapabilityError::Broken { offset: 0x40 })
        );
    }

    fn ext(b: &mut [u8], at: usize, id: u16, ver: u32, next: u32) {
        let h = id as u32 | ver << 16 | next << 20;
        b[at..at + 4].copy_from_slice(&h.to_le_bytes());
    }

    #[test]
    fn walks_extended_chain() {
        let mut b = space();
        ext(&mut b, 0x100, 0x0001, 2, 0x140);
        ext(&mut b, 0x140, 0x0003, 1, 0x150);
        ext(&mut b, 0x150, 0x000e, 1, 0);
        let caps = extended_capabilities(&b).unwrap();
        assert_eq!(caps.len(), 3);
        assert_eq!(caps[0].version, 2);
        assert_eq!(caps[2].id, CapId::Extended(ExtCapabilityId::ARI));
        assert!(extended_capabilities(&b[..256]).unwrap().is_empty());
        let mut none = space();
        none[0x100..0x104].fill(0xff);
        assert!(extended_capabilities(&none).unwrap().is_empty());
    }

    #[test]
    fn extended_errors() {
        let mut b = space();
        ext(&mut b, 0x100, 0x0001, 2, 0x80);
        assert_eq!(
            extended_capabilities(&b),
            Err(CapabilityError::PointerBelowExtended {
                at: 0x100,
                pointer: 0x80
            })
        );
        let mut b = space();
        ext(&mut b, 0x100, 0x0003, 1, 0x200);
        ext(&mut b, 0x200, 0x0003, 1, 0x100);
        assert!(matches!(
            extended_capabilities(&b),
            Err(CapabilityError::Loop {
                offset: 0x200,
                target: 0x100,
                ..
            })
        ));
        let mut b = space();
        ext(&mut b, 0x100, 0x0010, 1, 0xfe0); // SR-IOV is 0x40 bytes
        ext(&mut b, 0xfe0, 0x0010, 1, 0);
        assert!(matches!(
            extended_capabilities(&b),
            Err(CapabilityError::Truncated { offset: 0xfe0, .. })
        ));
        let mut b = space();
        ext(&mut b, 0x100, 0x0001, 1, 0x110); // AER is 0x2c bytes
        ext(&mut b, 0x110, 0x0003, 1, 0);
        assert!(matches!(
            extended_capabilities(&b),
            Err(CapabilityError::Overlap { offset: 0x110, .. })
        ));
    }

    #[test]
    fn lenient_keeps_the_good_prefix() {
        let mut b = space();
        b[0x34] = 0x40;
        link(&mut b, 0x40, 0x01, 0x50);
        link(&mut b, 0x50, 0x11, 0x60);
        link(&mut b, 0x60, 0x09, 0x40); // loops back
        b[0x62] = 4;
        let (caps, err) = capabilities_lenient(&b);
        assert!(err.is_some());
        assert_eq!(
            caps.iter().map(|c| c.offset).collect::<Vec<_>>(),
            vec![0x40, 0x50, 0x60]
        );
    }
}
