//! Editing capability chains: finding room for a new capability, linking it in, and hiding one
//! by rewriting next pointers (what passthrough does to keep a guest away from a capability the
//! VMM cannot or will not virtualize, as QEMU's vfio does for e.g. SR-IOV or vendor caps).

use super::chain::{Capability, capabilities_lenient, layout_known};
use super::error::CapabilityError;
use crate::header::{Status, offset};

/// What [`hide_capability`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenCapability {
    /// The capability that is no longer reachable.
    pub capability: Capability,
    /// Bytes from `capability.offset` that belong to it and must be hidden with it: its
    /// structure when this crate knows the ID's layout ([`Capability::len`]); otherwise
    /// everything up to the next capability in address order, or to the end of the area
    /// (0x100 for the standard chain, the end of the space for the extended one) when it is the
    /// last. Without the layout that is the only bound that keeps the guest off every register
    /// of the capability.
    pub len: u16,
    /// Byte ranges `(offset, len)` that were rewritten to unlink it.
    pub patched: Vec<(u16, u16)>,
}

/// Unlinks the capability starting at `offset` from its chain in `config` by rewriting the
/// pointer that leads to it. The capability's own bytes are left alone (blank them too if the
/// guest must not find them by scanning).
///
/// The first extended capability (at 0x100) cannot be skipped by a pointer, since the chain
/// starts there by definition; it is replaced by a Null capability header (ID 0, version 0)
/// whose next pointer skips it, which software treats as "nothing here" (PCIe 4.0 §7.6.3), or
/// by a zero header when it was the only one.
///
/// Works on the part of each chain that parses, so a capability before a broken link can still
/// be hidden.
pub fn hide_capability(
    config: &mut [u8],
    offset: u16,
) -> Result<HiddenCapability, CapabilityError> {
    let (caps, _) = capabilities_lenient(config);
    let Some(idx) = caps.iter().position(|c| c.offset == offset) else {
        return Err(CapabilityError::NotFound { offset });
    };
    let cap = caps[idx];
    let len = hidden_len(config, &caps, &cap);
    let chain: Vec<&Capability> = caps
        .iter()
        .filter(|c| c.id.is_extended() == cap.id.is_extended())
        .collect();
    let pos = chain.iter().position(|c| c.offset == offset).unwrap_or(0);
    let mut patched = Vec::new();
    if cap.id.is_extended() {
        if pos == 0 {
            let header: u32 = if cap.next == 0 {
                0
            } else {
                (cap.next as u32) << 20
            };
            config[0x100..0x104].copy_from_slice(&header.to_le_bytes());
            patched.push((0x100, 4));
        } else {
            let prev = chain[pos - 1].offset as usize;
            let old = u32::from_le_bytes([
                config[prev],
                config[prev + 1],
                config[prev + 2],
                config[prev + 3],
            ]);
            let new = (old & 0x000f_ffff) | (cap.next as u32) << 20;
            config[prev..prev + 4].copy_from_slice(&new.to_le_bytes());
            patched.push((prev as u16 + 2, 2));
        }
    } else {
        let at = if pos == 0 {
            offset::CAPABILITY_LIST
        } else {
            chain[pos - 1].offset + 1
        };
        config[at as usize] = cap.next as u8;
        patched.push((at, 1));
    }
    Ok(HiddenCapability {
        capability: cap,
        len,
        patched,
    })
}

/// See [`HiddenCapability::len`]. `caps` are the capabilities of `config`, `cap` one of them.
fn hidden_len(config: &[u8], caps: &[Capability], cap: &Capability) -> u16 {
    if layout_known(config, cap) {
        return cap.len;
    }
    let area_end = if cap.id.is_extended() {
        config.len().min(4096)
    } else {
        config.len().min(0x100)
    } as u16;
    let end = caps
        .iter()
        .filter(|c| c.id.is_extended() == cap.id.is_extended() && c.offset > cap.offset)
        .map(|c| c.offset)
        .min()
        .unwrap_or(area_end);
    end.saturating_sub(cap.offset).max(cap.len)
}

/// First dword-aligned offset where `len` bytes fit without overlapping `caps` (and, for the
/// standard area, below 0x100). An empty extended chain must start at 0x100.
pub(crate) fn find_free(size: usize, caps: &[Capability], len: u16, extended: bool) -> Option<u16> {
    let (start, end) = if extended {
        (0x100usize, size)
    } else {
        (0x40usize, size.min(0x100))
    };
    let must_be_head = extended && !caps.iter().any(|c| c.id.is_extended());
    let mut o = start;
    while o + len as usize <= end {
        let clash = caps.iter().find(|c| {
            (o as u32) < c.offset as u32 + c.len as u32 && (c.offset as usize) < o + len as usize
        });
        match clash {
            None => return Some(o as u16),
            Some(_) if must_be_head => return None,
            Some(c) => o = (c.offset as usize + c.len as usize).next_multiple_of(4),
        }
    }
    None
}

/// Appends a standard capability already written at `at` to the end of the chain and sets the
/// Status capabilities-list bit.
pub(crate) fn link_standard(config: &mut [u8], caps: &[Capability], at: u16) {
    match caps.iter().rfind(|c| !c.id.is_extended()) {
        Some(last) => config[last.offset as usize + 1] = at as u8,
        None => config[offset::CAPABILITY_LIST as usize] = at as u8,
    }
    config[offset::STATUS as usize] |= Status::CAP_LIST as u8;
}

/// Appends an extended capability already written at `at` to the end of the extended chain.
pub(crate) fn link_extended(config: &mut [u8], caps: &[Capability], at: u16) {
    if let Some(last) = caps.iter().rfind(|c| c.id.is_extended()) {
        let p = last.offset as usize;
        let old = u32::from_le_bytes([config[p], config[p + 1], config[p + 2], config[p + 3]]);
        let new = (old & 0x000f_ffff) | (at as u32) << 20;
        config[p..p + 4].copy_from_slice(&new.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{CapId, ExtCapabilityId, extended_capabilities, standard_capabilities};

    fn space() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[6] = 0x10;
        b[0x34] = 0x40;
        b[0x40] = 0x01;
        b[0x41] = 0x50;
        b[0x50] = 0x11;
        b[0x51] = 0x60;
        b[0x60] = 0x09;
        b[0x62] = 4;
        let ext = |b: &mut Vec<u8>, at: usize, id: u32, next: u32| {
            b[at..at + 4].copy_from_slice(&(id | 1 << 16 | next << 20).to_le_bytes())
        };
        ext(&mut b, 0x100, 0x01, 0x140);
        ext(&mut b, 0x140, 0x03, 0x150);
        ext(&mut b, 0x150, 0x0e, 0);
        b
    }

    fn offsets(v: &[Capability]) -> Vec<u16> {
        v.iter().map(|c| c.offset).collect()
    }

    #[test]
    fn hides_standard_first_middle_last() {
        for (hide, left) in [
            (0x40, [0x50, 0x60]),
            (0x50, [0x40, 0x60]),
            (0x60, [0x40, 0x50]),
        ] {
            let mut b = space();
            let h = hide_capability(&mut b, hide).unwrap();
            assert_eq!(h.capability.offset, hide);
            assert_eq!(offsets(&standard_capabilities(&b).unwrap()), left.to_vec());
        }
    }

    #[test]
    fn hides_extended_head_with_null_header() {
        let mut b = space();
        let h = hide_capability(&mut b, 0x100).unwrap();
        assert_eq!(h.patched, vec![(0x100, 4)]);
        let caps = extended_capabilities(&b).unwrap();
        assert_eq!(caps[0].id, CapId::Extended(ExtCapabilityId::NULL));
        assert_eq!(offsets(&caps), vec![0x100, 0x140, 0x150]);
        let mut b = space();
        hide_capability(&mut b, 0x140).unwrap();
        assert_eq!(
            offsets(&extended_capabilities(&b).unwrap()),
            vec![0x100, 0x150]
        );
        assert_eq!(
            hide_capability(&mut b, 0x140),
            Err(CapabilityError::NotFound { offset: 0x140 })
        );
    }

    #[test]
    fn free_space_skips_existing_caps() {
        let b = space();
        let (caps, _) = capabilities_lenient(&b);
        assert_eq!(find_free(4096, &caps, 8, false), Some(0x48));
        assert_eq!(find_free(4096, &caps, 12, false), Some(0x64));
        assert_eq!(find_free(4096, &caps, 8, true), Some(0x12c));
        assert_eq!(find_free(4096, &[], 8, true), Some(0x100));
        assert_eq!(find_free(4096, &caps, 0x100, false), None);
    }
}
