//! One trace line per trapped access: time since start, vCPU, device, region and offset, width,
//! read or write, value, and the register's name from `pci_regnames`.
//!
//! `    0.001234 vcpu0 0000:00:01.0 bar0+0x1018 4 W 0x00000008 SQ3TDBL (tail 8)`

use std::fmt;
use std::time::Duration;

use pci_config::Bdf;
use pci_regnames::Location;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// The guest read.
    Read,
    /// The guest wrote.
    Write,
}

impl AccessKind {
    /// `R` or `W`.
    pub fn letter(self) -> char {
        match self {
            AccessKind::Read => 'R',
            AccessKind::Write => 'W',
        }
    }
}

/// One trapped access.
#[derive(Debug, Clone, Copy)]
pub struct TraceEvent {
    /// Time since the VM started.
    pub elapsed: Duration,
    /// The vCPU that made it.
    pub vcpu: u32,
    /// The device.
    pub device: Bdf,
    /// Region and offset.
    pub at: Location,
    /// Width in bytes (1, 2, 4 or 8).
    pub width: u8,
    /// Read or write.
    pub kind: AccessKind,
    /// The value read or written.
    pub value: u64,
}

/// The line for `event`, named `name` (`SQ3TDBL (tail 8)`, or the location when nothing names
/// it); no newline.
pub fn format_line(event: &TraceEvent, name: &dyn fmt::Display) -> String {
    let width = event.width.clamp(1, 8) as usize;
    let mask = if width == 8 {
        u64::MAX
    } else {
        (1u64 << (width * 8)) - 1
    };
    format!(
        "{:>4}.{:06} vcpu{} {} {} {} {} {:#0digits$x} {name}",
        event.elapsed.as_secs(),
        event.elapsed.subsec_micros(),
        event.vcpu,
        event.device,
        event.at,
        width,
        event.kind.letter(),
        event.value & mask,
        digits = 2 + 2 * width,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci_regnames::Region;

    #[test]
    fn line_format() {
        let e = TraceEvent {
            elapsed: Duration::from_micros(1_001_234),
            vcpu: 0,
            device: "00:01.0".parse().unwrap(),
            at: Location::new(Region::Bar(0), 0x1018),
            width: 4,
            kind: AccessKind::Write,
            value: 8,
        };
        assert_eq!(
            format_line(&e, &"SQ3TDBL (tail 8)"),
            "   1.001234 vcpu0 0000:00:01.0 bar0+0x1018 4 W 0x00000008 SQ3TDBL (tail 8)"
        );
        let r = TraceEvent {
            width: 2,
            kind: AccessKind::Read,
            value: 0xdead_0507,
            at: Location::new(Region::Config, 4),
            ..e
        };
        assert_eq!(
            format_line(&r, &"COMMAND"),
            "   1.001234 vcpu0 0000:00:01.0 config+0x4 2 R 0x0507 COMMAND"
        );
    }
}
