//! `--trace WHAT`: which trapped accesses become trace lines.
//!
//! WHAT is `[BDF:]REGION[+START[..END]]` with REGION one of `config`, `msix` (the MSI-X table
//! and PBA, wherever they are), `bar0`..`bar5`, `rom` or `all`: `bar0`, `00:01.0:bar0`,
//! `bar0+0x1000..0x2000` (END exclusive), `bar0+0x1018` (the accesses touching that byte).

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use pci_config::Bdf;
use pci_regnames::{Region, parse_offset};

/// The part of a device a spec selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceRegion {
    /// Every trapped access.
    All,
    /// The MSI-X table and PBA.
    Msix,
    /// One region: config space, a BAR, or the ROM.
    Region(Region),
}

/// One `--trace` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSpec {
    /// Only this device, when given.
    pub device: Option<Bdf>,
    /// Which part.
    pub region: TraceRegion,
    /// Only accesses touching these offsets, when given.
    pub range: Option<Range<u64>>,
}

/// Why a `--trace` argument is not a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--trace {given}: {why} (use config, msix, bar0..bar5, rom or all, optionally after a device \
     (00:01.0:bar0) and with an offset range (bar0+0x1000..0x2000))"
)]
pub struct TraceSpecError {
    /// The argument.
    pub given: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for TraceSpec {
    type Err = TraceSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |why: String| TraceSpecError {
            given: s.to_string(),
            why,
        };
        let text = s.trim();
        let (what, range_text) = match text.split_once('+') {
            Some((w, r)) => (w, Some(r)),
            None => (text, None),
        };
        // A BDF has colons of its own; the region is after the last one.
        let (device, region_text) = match what.rsplit_once(':') {
            Some((bdf, region)) => {
                let bdf: Bdf = bdf
                    .parse()
                    .map_err(|e| fail(format!("`{bdf}` is not a PCI address: {e}")))?;
                (Some(bdf), region)
            }
            None => (None, what),
        };
        let region = match region_text.trim().to_ascii_lowercase().as_str() {
            "all" => TraceRegion::All,
            "msix" => TraceRegion::Msix,
            other => TraceRegion::Region(
                other
                    .parse::<Region>()
                    .map_err(|_| fail(format!("`{region_text}` is not a region")))?,
            ),
        };
        let range = match range_text {
            None => None,
            Some(r) => {
                if !matches!(region, TraceRegion::Region(_)) {
                    return Err(fail(format!(
                        "an offset range needs one region, not `{region_text}`"
                    )));
                }
                let (start, end) = match r.split_once("..") {
                    Some((a, b)) => {
                        let a = parse_offset(a).map_err(|e| fail(e.to_string()))?;
                        (a, parse_offset(b).map_err(|e| fail(e.to_string()))?)
                    }
                    None => {
                        let a = parse_offset(r).map_err(|e| fail(e.to_string()))?;
                        (a, a.saturating_add(1))
                    }
                };
                if start >= end {
                    return Err(fail(format!("the range {start:#x}..{end:#x} is empty")));
                }
                Some(start..end)
            }
        };
        Ok(TraceSpec {
            device,
            region,
            range,
        })
    }
}

impl fmt::Display for TraceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = self.device {
            write!(f, "{d}:")?;
        }
        match self.region {
            TraceRegion::All => f.write_str("all")?,
            TraceRegion::Msix => f.write_str("msix")?,
            TraceRegion::Region(r) => write!(f, "{r}")?,
        }
        if let Some(r) = &self.range {
            write!(f, "+{:#x}..{:#x}", r.start, r.end)?;
        }
        Ok(())
    }
}

/// What one trapped access is, as far as choosing goes.
#[derive(Debug, Clone, Copy)]
pub struct AccessSite {
    /// The device.
    pub device: Bdf,
    /// The region.
    pub region: Region,
    /// Offset in the region.
    pub offset: u64,
    /// Width in bytes.
    pub width: u8,
    /// True when the access lands in the MSI-X table or PBA.
    pub in_msix: bool,
}

impl TraceSpec {
    /// True when the spec selects the access.
    pub fn selects(&self, site: &AccessSite) -> bool {
        if self.device.is_some_and(|d| d != site.device) {
            return false;
        }
        let region = match self.region {
            TraceRegion::All => true,
            TraceRegion::Msix => site.in_msix,
            TraceRegion::Region(r) => r == site.region,
        };
        let end = site.offset.saturating_add(site.width.max(1) as u64);
        region
            && self
                .range
                .as_ref()
                .is_none_or(|r| site.offset < r.end && r.start < end)
    }
}

/// Every `--trace` given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceFilter {
    specs: Vec<TraceSpec>,
}

impl TraceFilter {
    /// A filter selecting what any of `specs` selects.
    pub fn new(specs: Vec<TraceSpec>) -> Self {
        TraceFilter { specs }
    }

    /// True when any spec selects the access.
    pub fn selects(&self, site: &AccessSite) -> bool {
        self.specs.iter().any(|s| s.selects(site))
    }

    /// True when some spec could select accesses of `device` (so its handlers need wrapping).
    pub fn covers_device(&self, device: Bdf) -> bool {
        self.specs
            .iter()
            .any(|s| s.device.is_none_or(|d| d == device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> TraceSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn site(device: &str, region: Region, offset: u64, width: u8, in_msix: bool) -> AccessSite {
        AccessSite {
            device: device.parse().unwrap(),
            region,
            offset,
            width,
            in_msix,
        }
    }

    #[test]
    fn forms() {
        assert_eq!(spec("bar0").region, TraceRegion::Region(Region::Bar(0)));
        assert_eq!(spec("all").region, TraceRegion::All);
        assert_eq!(spec("msix").region, TraceRegion::Msix);
        assert_eq!(spec("config").region, TraceRegion::Region(Region::Config));
        assert_eq!(spec("rom").region, TraceRegion::Region(Region::Rom));
        let per_device = spec("00:01.0:bar0");
        assert_eq!(per_device.device, Some("00:01.0".parse().unwrap()));
        assert_eq!(per_device.to_string(), "0000:00:01.0:bar0");
        let full = spec("0000:00:01.0:bar0+0x1000..0x2000");
        assert_eq!(full.range, Some(0x1000..0x2000));
        assert_eq!(full.to_string(), "0000:00:01.0:bar0+0x1000..0x2000");
        assert_eq!(spec("bar0+0x1018").range, Some(0x1018..0x1019));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| s.parse::<TraceSpec>().unwrap_err().to_string();
        assert!(err("bar6").contains("`bar6` is not a region"));
        assert!(err("zz:bar0").contains("`zz` is not a PCI address"));
        assert!(err("msix+0..4").contains("an offset range needs one region"));
        assert!(err("bar0+0x2000..0x1000").contains("is empty"));
        assert!(err("bar0+x").contains("is not an offset"));
    }

    #[test]
    fn selection() {
        let f = TraceFilter::new(vec![spec("00:01.0:bar0+0x1000..0x2000"), spec("msix")]);
        assert!(f.selects(&site("00:01.0", Region::Bar(0), 0x1018, 4, false)));
        // Touching the range's last byte.
        assert!(f.selects(&site("00:01.0", Region::Bar(0), 0xffe, 4, false)));
        assert!(!f.selects(&site("00:01.0", Region::Bar(0), 0x2000, 4, false)));
        assert!(!f.selects(&site("00:02.0", Region::Bar(0), 0x1018, 4, false)));
        assert!(f.selects(&site("00:02.0", Region::Bar(3), 0x0c, 4, true)));
        assert!(!f.selects(&site("00:02.0", Region::Config, 0x04, 2, false)));
        assert!(f.covers_device("00:02.0".parse().unwrap()));
        assert!(
            !TraceFilter::new(vec![spec("00:01.0:bar0")]).covers_device("00:02.0".parse().unwrap())
        );
    }
}
