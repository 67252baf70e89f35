//! What a mapper has mapped, for diagnostics: ranges, total bytes, and the mapping count
//! against the host's limit.

use std::fmt;

use crate::mapper::{DmaMapping, HostIommuLimits};
use crate::range::{ByteSize, IovaRange};

/// A snapshot of one mapper's mappings. `Display` prints a table such as:
///
/// ```text
/// software IOMMU 'doc': 2 mappings (limit 65535), 2 GiB mapped
///   host limits: valid IOVA ranges 0x0-0xfedfffff, 0xfef00000-0x7fffffffff; ...
///   IOVA                                      size        perm  host address
///   0x0-0x7fffffff                            2 GiB       rw    0x7f3a00000000
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingReport {
    /// The mapper's name.
    pub mapper: String,
    /// The host's limits.
    pub limits: HostIommuLimits,
    /// Every mapping, sorted by IOVA.
    pub mappings: Vec<DmaMapping>,
}

impl MappingReport {
    /// A report of `mappings` in `mapper`.
    pub fn new(mapper: &str, limits: HostIommuLimits, mut mappings: Vec<DmaMapping>) -> Self {
        mappings.sort_by_key(|m| m.iova);
        MappingReport {
            mapper: mapper.to_string(),
            limits,
            mappings,
        }
    }

    /// Bytes mapped in all.
    pub fn total_bytes(&self) -> u64 {
        self.mappings.iter().map(|m| m.size).sum()
    }

    /// The IOVA ranges mapped, with adjacent mappings merged (what a device can reach).
    pub fn reachable_ranges(&self) -> Vec<IovaRange> {
        let mut out: Vec<IovaRange> = Vec::new();
        for r in self.mappings.iter().filter_map(DmaMapping::iova_range) {
            match out.last_mut() {
                Some(prev) if prev.last().checked_add(1) == Some(r.start()) => {
                    *prev = IovaRange::from_inclusive(prev.start(), r.last()).expect("ordered");
                }
                _ => out.push(r),
            }
        }
        out
    }
}

impl fmt::Display for MappingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total_bytes();
        write!(f, "{}: {} mapping", self.mapper, self.mappings.len())?;
        if self.mappings.len() != 1 {
            f.write_str("s")?;
        }
        match self.limits.max_mappings() {
            Some(limit) => write!(f, " (limit {limit})")?,
            None => f.write_str(" (no limit reported)")?,
        }
        writeln!(f, ", {} mapped ({total:#x} bytes)", ByteSize(total))?;
        writeln!(f, "  host limits: {}", self.limits)?;
        if self.mappings.is_empty() {
            return writeln!(f, "  (nothing mapped)");
        }
        writeln!(
            f,
            "  {:<41} {:<11} {:<5} host address",
            "IOVA", "size", "perm"
        )?;
        for m in &self.mappings {
            let range = m
                .iova_range()
                .map_or_else(|| format!("{:#x}+{:#x}", m.iova, m.size), |r| r.to_string());
            writeln!(
                f,
                "  {:<41} {:<11} {:<5} {:#x}",
                range,
                ByteSize(m.size).to_string(),
                m.perm.to_string(),
                m.host_addr
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::DmaPerm;

    #[test]
    fn report_reads_well() {
        let r = MappingReport::new(
            "software IOMMU 't'",
            HostIommuLimits::x86_vtd(),
            vec![
                DmaMapping {
                    iova: 0x1_0000_0000,
                    size: 0x1000,
                    host_addr: 0x7f00_0010_0000,
                    perm: DmaPerm::ReadOnly,
                },
                DmaMapping {
                    iova: 0,
                    size: 0x8000_0000,
                    host_addr: 0x7f00_0000_0000,
                    perm: DmaPerm::ReadWrite,
                },
            ],
        );
        let text = r.to_string();
        assert!(text.starts_with(
            "software IOMMU 't': 2 mappings (limit 65535), 2.00 GiB mapped (0x80001000 bytes)\n"
        ));
        assert!(text.contains("0x0-0x7fffffff"), "{text}");
        assert!(text.contains("0x100000000-0x100000fff"), "{text}");
        assert!(text.contains("r-"), "{text}");
        assert_eq!(r.reachable_ranges().len(), 2);
    }
}
