//! The MSI-X vector table and Pending Bit Array, wherever the capability puts them (PCI Local
//! Bus 3.0 §6.8.2.6 to §6.8.2.10): entry N's `ADDR_LO`, `ADDR_HI`, `DATA`, `CTRL`, and the PBA
//! as 64-bit words.

use crate::device::DeviceFacts;
use crate::field::Field;
use crate::region::{Location, Region};
use crate::registry::RegisterDecoder;

/// Names the MSI-X table and PBA of any device with an MSI-X capability.
#[derive(Debug, Clone, Copy, Default)]
pub struct MsixDecoder;

const ENTRY_WORDS: [(&str, &str); 4] = [
    ("ADDR_LO", "Message Address"),
    ("ADDR_HI", "Message Upper Address"),
    ("DATA", "Message Data"),
    ("CTRL", "Vector Control"),
];

fn entry_field(table: Location, entry: u64, word: usize) -> Field {
    let (name, what) = ENTRY_WORDS[word];
    let f = Field::new(
        Location::new(table.region, table.offset + entry * 16 + word as u64 * 4),
        4,
        format!("MSIX[{entry}].{name}"),
        format!("MSI-X table entry {entry}: {what}"),
    );
    if word == 3 {
        f.formatted(vector_control)
    } else {
        f
    }
}

fn pba_field(pba: Location, word: u64, vectors: u64) -> Field {
    let first = word * 64;
    let last = (first + 63).min(vectors.saturating_sub(1));
    Field::new(
        Location::new(pba.region, pba.offset + word * 8),
        8,
        format!("PBA[{word}]"),
        format!("MSI-X Pending Bit Array: pending bits of vectors {first}..={last}"),
    )
    .formatted(pending)
}

impl RegisterDecoder for MsixDecoder {
    fn name(&self) -> &'static str {
        "msix"
    }

    fn applies_to(&self, device: &DeviceFacts) -> bool {
        device.msix().is_some()
    }

    fn field_at(&self, device: &DeviceFacts, at: Location) -> Option<Field> {
        let m = device.msix()?;
        let vectors = m.table_size as u64;
        let table = Location::new(Region::Bar(m.table.bir), m.table.offset as u64);
        if at.region == table.region
            && at.offset >= table.offset
            && at.offset - table.offset < vectors * 16
        {
            let rel = at.offset - table.offset;
            return Some(entry_field(table, rel / 16, (rel % 16 / 4) as usize));
        }
        let pba = Location::new(Region::Bar(m.pba.bir), m.pba.offset as u64);
        let pba_len = vectors.div_ceil(64) * 8;
        if at.region == pba.region && at.offset >= pba.offset && at.offset - pba.offset < pba_len {
            return Some(pba_field(pba, (at.offset - pba.offset) / 8, vectors));
        }
        None
    }

    fn field_named(&self, device: &DeviceFacts, name: &str) -> Option<Field> {
        let m = device.msix()?;
        let upper = name.trim().to_ascii_uppercase();
        let vectors = m.table_size as u64;
        if let Some(rest) = upper.strip_prefix("MSIX[") {
            let (n, word) = rest.split_once("].")?;
            let entry: u64 = n.parse().ok().filter(|e| *e < vectors)?;
            let word = ENTRY_WORDS.iter().position(|(w, _)| *w == word)?;
            let table = Location::new(Region::Bar(m.table.bir), m.table.offset as u64);
            return Some(entry_field(table, entry, word));
        }
        let n = upper.strip_prefix("PBA[")?.strip_suffix(']')?;
        let word: u64 = n.parse().ok().filter(|w| *w < vectors.div_ceil(64))?;
        let pba = Location::new(Region::Bar(m.pba.bir), m.pba.offset as u64);
        Some(pba_field(pba, word, vectors))
    }
}

fn vector_control(v: u64) -> String {
    if v & 1 == 1 { "masked" } else { "unmasked" }.to_string()
}

fn pending(v: u64) -> String {
    if v == 0 {
        return "none pending".to_string();
    }
    let bits: Vec<String> = (0..64)
        .filter(|b| v >> b & 1 == 1)
        .map(|b| b.to_string())
        .collect();
    format!("pending bits {}", bits.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use pci_config::capability::{BarOffset, MsixCapability};

    fn nic() -> DeviceFacts {
        // 82574L: 5 vectors, table at BAR3+0, PBA at BAR3+0x2000.
        let m = MsixCapability::new(
            5,
            BarOffset { bir: 3, offset: 0 },
            BarOffset {
                bir: 3,
                offset: 0x2000,
            },
        );
        DeviceFacts::new().with_msix(m)
    }

    #[test]
    fn table_entries_and_pba() {
        let r = Registry::builtin();
        let d = nic();
        let at = |o| Location::new(Region::Bar(3), o);
        assert_eq!(
            r.decode(&d, at(0x3c), 4, Some(1)).to_string(),
            "MSIX[3].CTRL (masked)"
        );
        assert_eq!(
            r.decode(&d, at(0x10), 8, None).name(),
            "MSIX[1].ADDR_LO/MSIX[1].ADDR_HI"
        );
        assert_eq!(
            r.decode(&d, at(0x2000), 8, Some(0b10010)).to_string(),
            "PBA[0] (pending bits 1,4)"
        );
        // Past the 5th entry and past the PBA: nothing.
        assert!(!r.decode(&d, at(0x50), 4, None).is_named());
        assert!(!r.decode(&d, at(0x2008), 4, None).is_named());
        assert!(
            !r.decode(&d, Location::new(Region::Bar(0), 0), 4, None)
                .is_named()
        );
    }

    #[test]
    fn find_by_name() {
        let r = Registry::builtin();
        let d = nic();
        let f = r.find(&d, "msix:MSIX[4].data").unwrap();
        assert_eq!(f.location, Location::new(Region::Bar(3), 0x48));
        assert_eq!(f.decoder, "msix");
        assert!(r.find(&d, "MSIX[5].DATA").is_err());
        assert_eq!(
            r.find(&d, "PBA[0]").unwrap().location,
            Location::new(Region::Bar(3), 0x2000)
        );
    }
}
