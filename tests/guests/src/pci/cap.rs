//! The capability list (PCI Local Bus 3.0, 6.7): a chain of `(ID, next)` headers starting at the
//! pointer at 0x34, inside the device-specific area 0x40-0xFF.

use core::fmt;

use super::{Bdf, ConfigSpace, reg};

/// Most capabilities that fit in 0x40-0xFF (each takes at least 4 bytes): more means a loop.
const MAX_CAPABILITIES: usize = (256 - 0x40) / 4;

/// One entry of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID (0x05 MSI, 0x10 PCI Express, 0x11 MSI-X, ...).
    pub id: u8,
    /// Its offset in configuration space.
    pub offset: u8,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#04x} {} at {:#04x}",
            self.id,
            capability_name(self.id),
            self.offset
        )
    }
}

/// A malformed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapError {
    /// A pointer outside 0x40-0xFC.
    BadPointer {
        /// Where the pointer was read (0x34 or a capability offset + 1).
        at: u8,
        /// The pointer.
        pointer: u8,
    },
    /// More entries than can fit: the list loops.
    Loop {
        /// The offset where the walk stopped.
        at: u8,
    },
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CapError::BadPointer { at, pointer } => {
                write!(
                    f,
                    "capability pointer {pointer:#04x} at {at:#04x} is outside 0x40-0xfc"
                )
            }
            CapError::Loop { at } => write!(f, "capability list loops (still going at {at:#04x})"),
        }
    }
}

/// The name of a capability ID.
pub fn capability_name(id: u8) -> &'static str {
    match id {
        0x01 => "power-management",
        0x05 => "msi",
        0x09 => "vendor-specific",
        0x10 => "pci-express",
        0x11 => "msi-x",
        0x12 => "sata",
        0x13 => "advanced-features",
        _ => "other",
    }
}

/// Calls `found` for every capability in list order. Reads each header as one 16-bit access.
/// Returns how many there were.
pub fn capabilities(
    cfg: &mut impl ConfigSpace,
    bdf: Bdf,
    mut found: impl FnMut(Capability),
) -> Result<usize, CapError> {
    if cfg.read16(bdf, reg::STATUS) & reg::STATUS_CAPABILITIES == 0 {
        return Ok(0);
    }
    let mut at = reg::CAPABILITIES_POINTER as u8;
    let mut pointer = cfg.read8(bdf, reg::CAPABILITIES_POINTER) & !0x3;
    let mut count = 0;
    while pointer != 0 {
        if pointer < 0x40 {
            return Err(CapError::BadPointer { at, pointer });
        }
        if count == MAX_CAPABILITIES {
            return Err(CapError::Loop { at: pointer });
        }
        let header = cfg.read16(bdf, u16::from(pointer));
        found(Capability {
            id: header as u8,
            offset: pointer,
        });
        count += 1;
        at = pointer + 1;
        pointer = (header >> 8) as u8 & !0x3;
    }
    Ok(count)
}

/// The offset of the first capability with `id`.
pub fn find_capability(
    cfg: &mut impl ConfigSpace,
    bdf: Bdf,
    id: u8,
) -> Result<Option<u8>, CapError> {
    let mut hit = None;
    capabilities(cfg, bdf, |c| {
        if c.id == id && hit.is_none() {
            hit = Some(c.offset);
        }
    })?;
    Ok(hit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::{FakeBus, FakeFunction};

    fn with_caps() -> (FakeBus, Bdf) {
        let mut bus = FakeBus::default();
        let bdf = Bdf::new(0, 1, 0);
        let mut f = FakeFunction::new(0x1b36, 0x0010, 0x010802);
        f.add_capability(0x40, 0x01, &[0; 6]);
        f.add_capability(0x50, 0x11, &[0; 10]);
        f.add_capability(0x80, 0x10, &[0; 6]);
        bus.add(bdf, f);
        (bus, bdf)
    }

    #[test]
    fn walks_in_order() {
        let (mut bus, bdf) = with_caps();
        let mut caps = Vec::new();
        assert_eq!(capabilities(&mut bus, bdf, |c| caps.push(c)), Ok(3));
        assert_eq!(
            caps.iter().map(|c| (c.id, c.offset)).collect::<Vec<_>>(),
            [(1, 0x40), (0x11, 0x50), (0x10, 0x80)]
        );
        assert_eq!(find_capability(&mut bus, bdf, 0x11), Ok(Some(0x50)));
        assert_eq!(find_capability(&mut bus, bdf, 0x05), Ok(None));
        assert_eq!(caps[1].to_string(), "0x11 msi-x at 0x50");
    }

    #[test]
    fn no_list_without_status_bit() {
        let mut bus = FakeBus::default();
        let bdf = Bdf::new(0, 2, 0);
        let mut f = FakeFunction::new(1, 2, 0x020000);
        f.config[0x34] = 0x40; // pointer set, but the status bit says there is no list
        bus.add(bdf, f);
        assert_eq!(
            capabilities(&mut bus, bdf, |_| panic!("no capability expected")),
            Ok(0)
        );
    }

    #[test]
    fn loop_and_bad_pointer_are_errors() {
        let (mut bus, bdf) = with_caps();
        bus.get(bdf).config[0x81] = 0x40; // last entry points back to the first
        assert!(matches!(
            capabilities(&mut bus, bdf, |_| {}),
            Err(CapError::Loop { .. })
        ));
        bus.get(bdf).config[0x81] = 0x20; // into the header
        let e = capabilities(&mut bus, bdf, |_| {}).unwrap_err();
        assert_eq!(
            e,
            CapError::BadPointer {
                at: 0x81,
                pointer: 0x20
            }
        );
        assert!(e.to_string().contains("0x20"));
    }
}
