//! Where a register lives: configuration space, a BAR, or the expansion ROM; and the
//! `REGION+OFFSET` text both the CLI and the trace use (`bar0+0x1018`, `config+0x4`).

use std::fmt;
use std::str::FromStr;

/// A register space of a PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    /// Configuration space (256 or 4096 bytes).
    Config,
    /// Base address register n (0..=5).
    Bar(u8),
    /// Expansion ROM.
    Rom,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::Config => f.write_str("config"),
            Region::Bar(n) => write!(f, "bar{n}"),
            Region::Rom => f.write_str("rom"),
        }
    }
}

/// Why a region or location text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Not one of the region names.
    #[error("`{0}` is not a region: use config, bar0 to bar5, or rom")]
    Region(String),
    /// The offset is not a number.
    #[error("`{0}` is not an offset: use hex (0x1018) or decimal")]
    Offset(String),
}

impl FromStr for Region {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "config" | "cfg" => return Ok(Region::Config),
            "rom" => return Ok(Region::Rom),
            _ => {}
        }
        lower
            .strip_prefix("bar")
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|n| *n < 6)
            .map(Region::Bar)
            .ok_or_else(|| LocationError::Region(s.trim().to_string()))
    }
}

/// Parses an offset: `0x1018`, `1018h` is not accepted; decimal without a prefix.
pub fn parse_offset(s: &str) -> Result<u64, LocationError> {
    let t = s.trim().replace('_', "");
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse::<u64>(),
    };
    parsed.map_err(|_| LocationError::Offset(s.trim().to_string()))
}

/// A byte in a region: what `bar0+0x1018` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// The region.
    pub region: Region,
    /// Byte offset inside it.
    pub offset: u64,
}

impl Location {
    /// A location.
    pub fn new(region: Region, offset: u64) -> Self {
        Location { region, offset }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.region, self.offset)
    }
}

impl FromStr for Location {
    type Err = LocationError;

    /// `bar0+0x1018`, `config+4`, or a region alone (offset 0).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('+') {
            Some((region, offset)) => Ok(Location::new(region.parse()?, parse_offset(offset)?)),
            None => Ok(Location::new(s.parse()?, 0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_round_trip() {
        for r in [Region::Config, Region::Rom, Region::Bar(0), Region::Bar(5)] {
            assert_eq!(r.to_string().parse::<Region>(), Ok(r));
        }
        assert_eq!("BAR3".parse::<Region>(), Ok(Region::Bar(3)));
        assert!(matches!(
            "bar6".parse::<Region>(),
            Err(LocationError::Region(_))
        ));
    }

    #[test]
    fn locations() {
        let l: Location = "bar0+0x1018".parse().unwrap();
        assert_eq!(l, Location::new(Region::Bar(0), 0x1018));
        assert_eq!(l.to_string(), "bar0+0x1018");
        assert_eq!("config+4".parse(), Ok(Location::new(Region::Config, 4)));
        assert_eq!("rom".parse(), Ok(Location::new(Region::Rom, 0)));
        assert_eq!(
            "bar0+zz".parse::<Location>(),
            Err(LocationError::Offset("zz".into()))
        );
    }
}
