//! The Identify data structures (NVMe 1.4, figures 247 and 249), the few fields the test needs.

/// Identify Controller, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI vendor ID.
    pub vid: u16,
    /// Serial number (ASCII, space padded).
    pub serial: [u8; 20],
    /// Model number.
    pub model: [u8; 40],
    /// Firmware revision.
    pub firmware: [u8; 8],
    /// Maximum data transfer size (2^MDTS minimum pages, 0 = no limit).
    pub mdts: u8,
    /// RTD3 Entry Latency (bytes 91:88), microseconds: the typical time from CC.SHN to
    /// CSTS.SHST = complete (0: not reported). What [`Controller::shutdown`](super::Controller::shutdown) waits for.
    pub rtd3e_us: u32,
    /// Number of namespaces.
    pub namespaces: u32,
}

impl IdentifyController {
    /// Decodes the 4 KiB structure (only the first 520 bytes are read).
    pub fn decode(b: &[u8; 520]) -> Self {
        IdentifyController {
            vid: u16::from_le_bytes([b[0], b[1]]),
            serial: b[4..24].try_into().unwrap_or([0; 20]),
            model: b[24..64].try_into().unwrap_or([0; 40]),
            firmware: b[64..72].try_into().unwrap_or([0; 8]),
            mdts: b[77],
            rtd3e_us: u32::from_le_bytes([b[88], b[89], b[90], b[91]]),
            namespaces: u32::from_le_bytes([b[516], b[517], b[518], b[519]]),
        }
    }
}

/// Identify Namespace, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in blocks.
    pub size_blocks: u64,
    /// Formatted LBA size index (FLBAS bits 3:0, and bits 6:5 above them: NVMe 2.0).
    pub lba_format: u8,
    /// Block size in bytes of that format (2^LBADS); 0 when the format is past the 16 that
    /// these bytes describe, or its LBADS is out of range.
    pub block_size: u64,
    /// Metadata bytes per block of that format (LBAF bits 15:0); this driver's commands carry
    /// no metadata pointer, so it needs 0 (otherwise the controller would move metadata to and
    /// from guest address 0).
    pub metadata_bytes: u16,
}

impl IdentifyNamespace {
    /// Decodes the first 192 bytes (16 LBA formats at 128).
    pub fn decode(b: &[u8; 192]) -> Self {
        let lba_format = (b[26] & 0xf) | ((b[26] >> 5) & 0b11) << 4;
        let (metadata_bytes, lbads) = match b.get(128 + 4 * usize::from(lba_format)..) {
            Some(&[ms0, ms1, lbads, ..]) => (u16::from_le_bytes([ms0, ms1]), lbads),
            _ => (0, 0),
        };
        IdentifyNamespace {
            size_blocks: u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8])),
            lba_format,
            block_size: if !(9..=31).contains(&lbads) {
                0
            } else {
                1 << lbads
            },
            metadata_bytes,
        }
    }
}

/// An ASCII field without its padding (trailing spaces and NULs); `"?"` if it is not ASCII.
pub fn ascii_field(bytes: &[u8]) -> &str {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    match core::str::from_utf8(&bytes[..end]) {
        Ok(s) if s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => s,
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller() {
        let mut b = [0u8; 520];
        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        b[4..24].copy_from_slice(b"REFVMM-TESTBED-0001 ");
        b[24..64].copy_from_slice(b"QEMU NVMe Ctrl                          ");
        b[64..72].copy_from_slice(b"7.2.0   ");
        b[77] = 7;
        b[88..92].copy_from_slice(&8_000_000u32.to_le_bytes());
        b[516] = 1;
        let c = IdentifyController::decode(&b);
        assert_eq!(c.vid, 0x1b36);
        assert_eq!(ascii_field(&c.serial), "REFVMM-TESTBED-0001");
        assert_eq!(ascii_field(&c.model), "QEMU NVMe Ctrl");
        assert_eq!(ascii_field(&c.firmware), "7.2.0");
        assert_eq!((c.mdts, c.namespaces, c.rtd3e_us), (7, 1, 8_000_000));
    }

    #[test]
    fn namespace() {
        let mut b = [0u8; 192];
        b[0..8].copy_from_slice(&131072u64.to_le_bytes());
        b[26] = 1; // format 1
        b[128 + 2] = 9;
        b[132 + 2] = 12;
        let n = IdentifyNamespace::decode(&b);
        assert_eq!(
            (n.size_blocks, n.lba_format, n.block_size),
            (131072, 1, 4096)
        );
        b[26] = 0;
        assert_eq!(IdentifyNamespace::decode(&b).block_size, 512);
        b[130] = 0;
        assert_eq!(IdentifyNamespace::decode(&b).block_size, 0);
        // 512 + 8 bytes of metadata.
        b[130] = 9;
        b[128] = 8;
        assert_eq!(IdentifyNamespace::decode(&b).metadata_bytes, 8);
        // Format 16 (FLBAS bits 6:5 = 01b) is past the 16 formats of these bytes.
        b[26] = 0b0010_0000;
        let n = IdentifyNamespace::decode(&b);
        assert_eq!((n.lba_format, n.block_size), (16, 0));
    }

    #[test]
    fn ascii() {
        assert_eq!(ascii_field(b"   "), "");
        assert_eq!(ascii_field(b"A B\0\0"), "A B");
        assert_eq!(ascii_field(b"\xff"), "?");
    }
}
