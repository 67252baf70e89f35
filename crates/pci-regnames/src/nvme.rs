//! NVMe controller registers in BAR0 (NVM Express Base 1.4 §3.1, "Controller Registers"):
//! CAP..CMBSTS, the PMR block at 0xE00, and the doorbells from 0x1000: `SQyTDBL` at
//! `0x1000 + (2y) * (4 << CAP.DSTRD)`, `CQyHDBL` at `0x1000 + (2y + 1) * (4 << CAP.DSTRD)`.
//!
//! The doorbell stride comes from CAP.DSTRD when the device's CAP was read
//! ([`DeviceFacts::with_value`] at `bar0+0x0`); otherwise 0 is assumed (what QEMU's and most
//! controllers report) and every doorbell field says so.

use crate::device::DeviceFacts;
use crate::field::{Field, ValueFormatter, bits, flag};
use crate::region::{Location, Region};
use crate::registry::RegisterDecoder;

/// Names NVMe BAR0 registers; applies to class code 01:08:02 (NVM Express I/O controller)
/// and 01:08:03 (administrative controller).
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmeDecoder;

/// Where the doorbells start.
pub const DOORBELL_BASE: u64 = 0x1000;
/// The largest queue identifier (QID is 16 bits).
const MAX_QID: u64 = 0xffff;

type Row = (u64, u8, &'static str, &'static str, Option<ValueFormatter>);

const REGISTERS: &[Row] = &[
    (0x00, 8, "CAP", "Controller Capabilities", Some(cap)),
    (0x08, 4, "VS", "Version", Some(vs)),
    (0x0c, 4, "INTMS", "Interrupt Mask Set", Some(vectors)),
    (0x10, 4, "INTMC", "Interrupt Mask Clear", Some(vectors)),
    (0x14, 4, "CC", "Controller Configuration", Some(cc)),
    (0x1c, 4, "CSTS", "Controller Status", Some(csts)),
    (0x20, 4, "NSSR", "NVM Subsystem Reset", Some(nssr)),
    (0x24, 4, "AQA", "Admin Queue Attributes", Some(aqa)),
    (0x28, 8, "ASQ", "Admin Submission Queue Base Address", None),
    (0x30, 8, "ACQ", "Admin Completion Queue Base Address", None),
    (0x38, 4, "CMBLOC", "Controller Memory Buffer Location", None),
    (0x3c, 4, "CMBSZ", "Controller Memory Buffer Size", None),
    (0x40, 4, "BPINFO", "Boot Partition Information", None),
    (0x44, 4, "BPRSEL", "Boot Partition Read Select", None),
    (
        0x48,
        8,
        "BPMBL",
        "Boot Partition Memory Buffer Location",
        None,
    ),
    (
        0x50,
        8,
        "CMBMSC",
        "Controller Memory Buffer Memory Space Control",
        None,
    ),
    (0x58, 4, "CMBSTS", "Controller Memory Buffer Status", None),
    (0xe00, 4, "PMRCAP", "Persistent Memory Capabilities", None),
    (0xe04, 4, "PMRCTL", "Persistent Memory Region Control", None),
    (0xe08, 4, "PMRSTS", "Persistent Memory Region Status", None),
    (
        0xe0c,
        4,
        "PMREBS",
        "Persistent Memory Region Elasticity Buffer Size",
        None,
    ),
    (
        0xe10,
        4,
        "PMRSWTP",
        "Persistent Memory Region Sustained Write Throughput",
        None,
    ),
    (
        0xe14,
        4,
        "PMRMSCL",
        "Persistent Memory Region Controller Memory Space Control Lower",
        None,
    ),
    (
        0xe18,
        4,
        "PMRMSCU",
        "Persistent Memory Region Controller Memory Space Control Upper",
        None,
    ),
];

/// The doorbell stride exponent and the words that say where it came from.
fn dstrd(device: &DeviceFacts) -> (u32, String) {
    match device.value(Location::new(Region::Bar(0), 0)) {
        Some(cap) => {
            let d = bits(cap, 32, 35) as u32;
            (
                d,
                format!(
                    "CAP.DSTRD={d} read from the device (stride {} bytes)",
                    4u64 << d
                ),
            )
        }
        None => (
            0,
            "CAP.DSTRD=0 assumed (CAP not read; 0 is what QEMU and most controllers report): \
             stride 4 bytes"
                .to_string(),
        ),
    }
}

fn register(row: &Row) -> Field {
    let (offset, size, name, what, formatter) = *row;
    let f = Field::new(Location::new(Region::Bar(0), offset), size, name, what);
    match formatter {
        Some(fmt) => f.formatted(fmt),
        None => f,
    }
}

/// Doorbell `index` (2y for SQy, 2y+1 for CQy).
fn doorbell(device: &DeviceFacts, index: u64) -> Field {
    let (d, assumption) = dstrd(device);
    let qid = index / 2;
    let queue = if qid == 0 {
        "admin queue".to_string()
    } else {
        format!("I/O queue {qid}")
    };
    let (name, what, formatter): (_, _, ValueFormatter) = if index % 2 == 0 {
        (
            format!("SQ{qid}TDBL"),
            format!("Submission Queue {qid} Tail Doorbell ({queue})"),
            sq_tail,
        )
    } else {
        (
            format!("CQ{qid}HDBL"),
            format!("Completion Queue {qid} Head Doorbell ({queue})"),
            cq_head,
        )
    };
    Field::new(
        Location::new(Region::Bar(0), DOORBELL_BASE + index * (4u64 << d)),
        4,
        name,
        what,
    )
    .formatted(formatter)
    .assuming(assumption)
}

fn parse_doorbell(name: &str) -> Option<u64> {
    let upper = name.trim().to_ascii_uppercase();
    let (qid, sq) = if let Some(rest) = upper.strip_prefix("SQ") {
        (rest.strip_suffix("TDBL")?, true)
    } else {
        (upper.strip_prefix("CQ")?.strip_suffix("HDBL")?, false)
    };
    let qid: u64 = qid.parse().ok().filter(|q| *q <= MAX_QID)?;
    Some(qid * 2 + if sq { 0 } else { 1 })
}

impl RegisterDecoder for NvmeDecoder {
    fn name(&self) -> &'static str {
        "nvme"
    }

    fn applies_to(&self, device: &DeviceFacts) -> bool {
        matches!(device.class_code(), Some(0x010802 | 0x010803))
    }

    fn field_at(&self, device: &DeviceFacts, at: Location) -> Option<Field> {
        if at.region != Region::Bar(0) {
            return None;
        }
        if at.offset < DOORBELL_BASE {
            return REGISTERS
                .iter()
                .map(register)
                .find(|f| f.contains(at.offset));
        }
        let stride = 4u64 << dstrd(device).0;
        let rel = at.offset - DOORBELL_BASE;
        let index = rel / stride;
        // Bytes between doorbells when the stride is wider than 4 are reserved.
        (rel % stride < 4 && index / 2 <= MAX_QID).then(|| doorbell(device, index))
    }

    fn field_named(&self, device: &DeviceFacts, name: &str) -> Option<Field> {
        if let Some(index) = parse_doorbell(name) {
            return Some(doorbell(device, index));
        }
        REGISTERS
            .iter()
            .find(|r| r.2.eq_ignore_ascii_case(name.trim()))
            .map(register)
    }
}

fn cap(v: u64) -> String {
    format!(
        "MQES={} entries, CQR{}, TO={} ms, DSTRD={} (stride {} bytes), {}, CSS={:#x}, \
         MPSMIN={}K, MPSMAX={}K, {}, {}",
        bits(v, 0, 15) + 1,
        if v >> 16 & 1 == 1 { '+' } else { '-' },
        bits(v, 24, 31) * 500,
        bits(v, 32, 35),
        4u64 << bits(v, 32, 35),
        flag(v, 36, "NSSRS"),
        bits(v, 37, 44),
        4u64 << bits(v, 48, 51),
        4u64 << bits(v, 52, 55),
        flag(v, 56, "PMRS"),
        flag(v, 57, "CMBS"),
    )
}

fn vs(v: u64) -> String {
    format!(
        "NVMe {}.{}.{}",
        bits(v, 16, 31),
        bits(v, 8, 15),
        bits(v, 0, 7)
    )
}

fn vectors(v: u64) -> String {
    if v == 0 {
        return "no vectors".to_string();
    }
    let list: Vec<String> = (0..32)
        .filter(|b| v >> b & 1 == 1)
        .map(|b| b.to_string())
        .collect();
    format!("vectors {}", list.join(","))
}

fn cc(v: u64) -> String {
    let shn = [
        "no shutdown",
        "normal shutdown",
        "abrupt shutdown",
        "reserved SHN",
    ][bits(v, 14, 15) as usize];
    format!(
        "{} CSS={} MPS={}K AMS={} {shn} IOSQES={} IOCQES={}",
        flag(v, 0, "EN"),
        bits(v, 4, 6),
        4u64 << bits(v, 7, 10),
        bits(v, 11, 13),
        1u64 << bits(v, 16, 19),
        1u64 << bits(v, 20, 23),
    )
}

fn csts(v: u64) -> String {
    let shst = [
        "normal operation",
        "shutdown in progress",
        "shutdown complete",
        "reserved SHST",
    ][bits(v, 2, 3) as usize];
    format!(
        "{} {} {shst} {} {}",
        flag(v, 0, "RDY"),
        flag(v, 1, "CFS"),
        flag(v, 4, "NSSRO"),
        flag(v, 5, "PP")
    )
}

fn nssr(v: u64) -> String {
    // NVMe 1.4 §3.1.6: writing "NVMe" (0x4E564D65) starts an NVM subsystem reset.
    if v & 0xffff_ffff == 0x4e56_4d65 {
        "\"NVMe\": NVM subsystem reset".to_string()
    } else {
        "not \"NVMe\" (0x4e564d65): no effect".to_string()
    }
}

fn aqa(v: u64) -> String {
    format!(
        "ASQS={} ACQS={} entries",
        bits(v, 0, 11) + 1,
        bits(v, 16, 27) + 1
    )
}

fn sq_tail(v: u64) -> String {
    format!("tail {}", v & 0xffff)
}

fn cq_head(v: u64) -> String {
    format!("head {}", v & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    fn nvme() -> DeviceFacts {
        DeviceFacts::new()
            .with_ids(0x1b36, 0x0010)
            .with_class(0x010802)
    }

    #[test]
    fn doorbells_with_assumed_stride() {
        let r = Registry::builtin();
        let d = nvme();
        let at = |o| Location::new(Region::Bar(0), o);
        let sq3 = r.decode(&d, at(0x1018), 4, Some(8));
        assert_eq!(sq3.to_string(), "SQ3TDBL (tail 8)");
        let field = &sq3.parts[0].field;
        assert!(
            field
                .assumption
                .as_ref()
                .unwrap()
                .contains("DSTRD=0 assumed")
        );
        assert_eq!(r.decode(&d, at(0x101c), 4, None).name(), "CQ3HDBL");
        assert_eq!(r.decode(&d, at(0x1000), 4, None).name(), "SQ0TDBL");
        assert_eq!(r.find(&d, "nvme:SQ3TDBL").unwrap().location, at(0x1018));
        assert_eq!(r.find(&d, "cq0hdbl").unwrap().location, at(0x1004));
    }

    #[test]
    fn stride_from_a_live_cap() {
        let r = Registry::builtin();
        // DSTRD=2: 16-byte stride.
        let d = nvme().with_value(Location::new(Region::Bar(0), 0), 2 << 32);
        let at = |o| Location::new(Region::Bar(0), o);
        assert_eq!(r.find(&d, "SQ3TDBL").unwrap().location, at(0x1060));
        assert_eq!(r.decode(&d, at(0x1060), 4, None).name(), "SQ3TDBL");
        // Inside the stride but past the 4-byte doorbell: reserved.
        assert!(!r.decode(&d, at(0x1064), 4, None).is_named());
        let f = r.field_at(&d, at(0x1070)).unwrap();
        assert_eq!(f.name, "CQ3HDBL");
        assert!(f.assumption.unwrap().contains("read from the device"));
    }

    #[test]
    fn controller_registers() {
        let r = Registry::builtin();
        let d = nvme();
        let at = |o| Location::new(Region::Bar(0), o);
        assert_eq!(
            r.decode(&d, at(0x14), 4, Some(0x0046_0001)).to_string(),
            "CC (EN+ CSS=0 MPS=4K AMS=0 no shutdown IOSQES=64 IOCQES=16)"
        );
        assert_eq!(
            r.decode(&d, at(0x08), 4, Some(0x0001_0400)).to_string(),
            "VS (NVMe 1.4.0)"
        );
        assert_eq!(
            r.decode(&d, at(0x04), 4, None).name(),
            "CAP[4..8]",
            "the upper half of CAP"
        );
        assert_eq!(
            r.decode(&d, at(0x24), 4, Some(0x001f_001f)).to_string(),
            "AQA (ASQS=32 ACQS=32 entries)"
        );
        assert!(
            !r.decode(&d, at(0x18), 4, None).is_named(),
            "0x18 is reserved"
        );
        assert!(r.find(&d, "nvme:NOPE").is_err());
    }

    #[test]
    fn only_for_nvme_class() {
        let r = Registry::builtin();
        let nic = DeviceFacts::new().with_class(0x020000);
        assert!(!r.applicable(&nic).contains(&"nvme"));
        assert!(matches!(
            r.find(&nic, "nvme:SQ3TDBL"),
            Err(crate::FindError::NotThisDevice { .. })
        ));
    }
}
