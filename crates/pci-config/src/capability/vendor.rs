//! Vendor-specific capability (PCI Local Bus 3.0 §6.7, ID 0x09): ID, next pointer, a length byte
//! and vendor-defined contents.

use super::{CapId, CapabilityError, CapabilityId, check_header};

/// A decoded vendor-specific capability.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VendorCapability {
    /// Offset of the capability header.
    pub offset: u16,
    /// Contents after the 3-byte header (ID, next, length).
    pub data: Vec<u8>,
}

impl VendorCapability {
    /// A vendor capability carrying `data`; at most 253 bytes fit the 8-bit length field.
    pub fn new(data: &[u8]) -> Self {
        VendorCapability {
            offset: 0,
            data: data[..data.len().min(253)].to_vec(),
        }
    }

    /// Decodes the capability at `offset`.
    pub fn parse(config: &[u8], offset: u16) -> Result<Self, CapabilityError> {
        check_header(config, offset, CapabilityId::VENDOR_SPECIFIC, 3)?;
        let o = offset as usize;
        let len = config[o + 2];
        if len < 3 {
            return Err(CapabilityError::Malformed {
                offset,
                id: CapId::Standard(CapabilityId::VENDOR_SPECIFIC),
                what: format!("length byte is {len}, smaller than the 3-byte header"),
            });
        }
        check_header(config, offset, CapabilityId::VENDOR_SPECIFIC, len as u16)?;
        Ok(VendorCapability {
            offset,
            data: config[o + 3..o + len as usize].to_vec(),
        })
    }

    /// The length byte: header plus data.
    pub fn len(&self) -> u8 {
        (self.data.len() + 3) as u8
    }

    /// Always false: the header alone is 3 bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The structure's bytes (next pointer 0).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![CapabilityId::VENDOR_SPECIFIC.0, 0, self.len()];
        b.extend_from_slice(&self.data);
        b
    }
}
