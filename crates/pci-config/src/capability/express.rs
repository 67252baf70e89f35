//! PCI Express capability (PCI Express Base 4.0 §7.5.3), version 1 (0x14 bytes for endpoints)
//! or version 2 (0x3c bytes).

use super::{CapabilityError, CapabilityId, check_header, rd16, rd32};
use crate::registers::{BitKind, RegisterFile};

/// Device/port type (PCI Express Capabilities register bits 7:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortType {
    /// PCI Express endpoint.
    Endpoint,
    /// Legacy PCI Express endpoint.
    LegacyEndpoint,
    /// Root port of a root complex.
    RootPort,
    /// Upstream port of a switch.
    UpstreamPort,
    /// Downstream port of a switch.
    DownstreamPort,
    /// PCI Express to PCI/PCI-X bridge.
    PcieToPciBridge,
    /// PCI/PCI-X to PCI Express bridge.
    PciToPcieBridge,
    /// Root complex integrated endpoint.
    RootComplexIntegratedEndpoint,
    /// Root complex event collector.
    RootComplexEventCollector,
    /// Any other encoding.
    Unknown(u8),
}

impl PortType {
    /// Decodes the 4-bit field.
    pub fn from_bits(v: u8) -> Self {
        match v & 0xf {
            0 => PortType::Endpoint,
            1 => PortType::LegacyEndpoint,
            4 => PortType::RootPort,
            5 => PortType::UpstreamPort,
            6 => PortType::DownstreamPort,
            7 => PortType::PcieToPciBridge,
            8 => PortType::PciToPcieBridge,
            9 => PortType::RootComplexIntegratedEndpoint,
            10 => PortType::RootComplexEventCollector,
            x => PortType::Unknown(x),
        }
    }

    /// Encodes the 4-bit field.
    pub fn bits(self) -> u8 {
        match self {
            PortType::Endpoint => 0,
            PortType::LegacyEndpoint => 1,
            PortType::RootPort => 4,
            PortType::UpstreamPort => 5,
            PortType::DownstreamPort => 6,
            PortType::PcieToPciBridge => 7,
            PortType::PciToPcieBridge => 8,
            PortType::RootComplexIntegratedEndpoint => 9,
            PortType::RootComplexEventCollector => 10,
            PortType::Unknown(x) => x & 0xf,
        }
    }

    /// The words lspci prints after `Express (vN) `.
    pub fn lspci_name(self) -> String {
        match self {
            PortType::Endpoint => "Endpoint".into(),
            PortType::LegacyEndpoint => "Legacy Endpoint".into(),
            PortType::RootPort => "Root Port".into(),
            PortType::UpstreamPort => "Upstream Port".into(),
            PortType::DownstreamPort => "Downstream Port".into(),
            PortType::PcieToPciBridge => "PCI-Express to PCI/PCI-X Bridge".into(),
            PortType::PciToPcieBridge => "PCI/PCI-X to PCI-Express Bridge".into(),
            PortType::RootComplexIntegratedEndpoint => "Root Complex Integrated Endpoint".into(),
            PortType::RootComplexEventCollector => "Root Complex Event Collector".into(),
            PortType::Unknown(x) => format!("Unknown type {x}"),
        }
    }

    /// True for the types that have a link (all but root complex integrated devices).
    pub fn has_link(self) -> bool {
        !matches!(
            self,
            PortType::RootComplexIntegratedEndpoint | PortType::RootComplexEventCollector
        )
    }
}

/// A decoded PCI Express capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExpressCapability {
    /// Offset of the capability header.
    pub offset: u16,
    /// PCI Express Capabilities register (+0x02).
    pub flags: u16,
    /// Device Capabilities (+0x04).
    pub device_capabilities: u32,
    /// Device Control (+0x08).
    pub device_control: u16,
    /// Device Status (+0x0a).
    pub device_status: u16,
    /// Link Capabilities (+0x0c).
    pub link_capabilities: u32,
    /// Link Control (+0x10).
    pub link_control: u16,
    /// Link Status (+0x12).
    pub link_status: u16,
    /// Device Capabilities 2 (+0x24, version 2 only).
    pub device_capabilities2: u32,
    /// Device Control 2 (+0x28, version 2 only).
    pub device_control2: u16,
    /// Link Capabilities 2 (+0x2c, version 2 only).
    pub link_capabilities2: u32,
    /// Link Control 2 (+0x30, version 2 only).
    pub link_control2: u16,
}

impl ExpressCapability {
    /// Device Capabilities bit 15: role-based error reporting.
    pub const DEVCAP_RBER: u32 = 1 << 15;
    /// Device Capabilities bit 28: function level reset capable.
    pub const DEVCAP_FLR: u32 = 1 << 28;

    /// A version 2 capability of `port_type`, shaped like QEMU's `pcie_endpoint_cap_init`:
    /// 128-byte max payload, role-based error reporting, FLR, and (when the type has a link)
    /// an x1 2.5 GT/s link that is up at x1 2.5 GT/s.
    pub fn new(port_type: PortType) -> Self {
        let link = port_type.has_link();
        ExpressCapability {
            offset: 0,
            flags: 0x2 | ((port_type.bits() as u16) << 4),
            device_capabilities: Self::DEVCAP_RBER | Self::DEVCAP_FLR,
            device_control: 0x2810, // PCIe reset value: MaxReadReq 512, RlxdOrd+, NoSnoop+
            device_status: 0,
            link_capabilities: if link { 0x0000_0411 } else { 0 }, // x1, 2.5GT/s, L0s
            link_control: 0,
            link_status: if link { 0x0011 } else { 0 },
            device_capabilities2: 0,
            device_control2: 0,
            link_capabilities2: if link { 0x2 } else { 0 },
            link_control2: if link { 0x1 } else { 0 },
        }
    }

    /// Decodes the capability at `offset`.
    pub fn parse(config: &[u8], offset: u16) -> Result<Self, CapabilityError> {
        check_header(config, offset, CapabilityId::EXPRESS, 4)?;
        let o = offset as usize;
        let flags = rd16(config, o + 2);
        let v2 = flags & 0xf >= 2;
        check_header(
            config,
            offset,
            CapabilityId::EXPRESS,
            if v2 { 0x3c } else { 0x14 },
        )?;
        let mut c = ExpressCapability {
            offset,
            flags,
            device_capabilities: rd32(config, o + 4),
            device_control: rd16(config, o + 8),
            device_status: rd16(config, o + 0xa),
            link_capabilities: rd32(config, o + 0xc),
            link_control: rd16(config, o + 0x10),
            link_status: rd16(config, o + 0x12),
            ..Default::default()
        };
        if v2 {
            c.device_capabilities2 = rd32(config, o + 0x24);
            c.device_control2 = rd16(config, o + 0x28);
            c.link_capabilities2 = rd32(config, o + 0x2c);
            c.link_control2 = rd16(config, o + 0x30);
        }
        Ok(c)
    }

    /// Capability version (1 or 2).
    pub fn version(&self) -> u8 {
        (self.flags & 0xf) as u8
    }

    /// Device/port type.
    pub fn port_type(&self) -> PortType {
        PortType::from_bits((self.flags >> 4) as u8)
    }

    /// Slot implemented (ports only).
    pub fn slot_implemented(&self) -> bool {
        self.flags & (1 << 8) != 0
    }

    /// Interrupt message number (bits 13:9).
    pub fn interrupt_message_number(&self) -> u8 {
        ((self.flags >> 9) & 0x1f) as u8
    }

    /// Max payload size supported, in bytes.
    pub fn max_payload_supported(&self) -> u32 {
        128 << (self.device_capabilities & 0x7).min(5)
    }

    /// Function level reset supported.
    pub fn flr_capable(&self) -> bool {
        self.device_capabilities & Self::DEVCAP_FLR != 0
    }

    /// Structure length: 0x3c for version 2, 0x14 for version 1.
    pub fn len(&self) -> u16 {
        if self.version() >= 2 { 0x3c } else { 0x14 }
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The structure's bytes (next pointer 0).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len() as usize];
        b[0] = CapabilityId::EXPRESS.0;
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.device_capabilities.to_le_bytes());
        b[8..10].copy_from_slice(&self.device_control.to_le_bytes());
        b[0xa..0xc].copy_from_slice(&self.device_status.to_le_bytes());
        b[0xc..0x10].copy_from_slice(&self.link_capabilities.to_le_bytes());
        b[0x10..0x12].copy_from_slice(&self.link_control.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&self.link_status.to_le_bytes());
        if self.version() >= 2 {
            b[0x24..0x28].copy_from_slice(&self.device_capabilities2.to_le_bytes());
            b[0x28..0x2a].copy_from_slice(&self.device_control2.to_le_bytes());
            b[0x2c..0x30].copy_from_slice(&self.link_capabilities2.to_le_bytes());
            b[0x30..0x32].copy_from_slice(&self.link_control2.to_le_bytes());
        }
        b
    }
}

/// Device Control and Link Control are writable (the initiate-FLR bit 15 excepted: FLR is a
/// reset the VMM performs, not a register state), Device Status error bits are RW1C.
pub(crate) fn install_masks(regs: &mut RegisterFile, offset: u16, flags: u16) {
    let _ = regs.set_bits_u16(offset + 0x08, 0x7fff, BitKind::ReadWrite);
    let _ = regs.set_bits_u16(offset + 0x0a, 0x000f, BitKind::WriteOneToClear);
    let _ = regs.set_bits_u16(offset + 0x10, 0x0ffb, BitKind::ReadWrite);
    if flags & 0xf >= 2 {
        let _ = regs.set_bits_u16(offset + 0x28, 0xe7ff, BitKind::ReadWrite);
        let _ = regs.set_bits_u16(offset + 0x30, 0x1fff, BitKind::ReadWrite);
    }
}
