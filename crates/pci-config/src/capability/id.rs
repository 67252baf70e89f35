//! Capability IDs and their names (PCI Code and ID Assignment Specification 1.11 §2 and §3;
//! names as `lspci` prints them).

use std::fmt;

/// A standard (conventional) capability ID, found in the chain starting at offset 0x34.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapabilityId(pub u8);

impl CapabilityId {
    /// PCI Power Management.
    pub const POWER_MANAGEMENT: Self = Self(0x01);
    /// AGP.
    pub const AGP: Self = Self(0x02);
    /// Vital Product Data.
    pub const VPD: Self = Self(0x03);
    /// Slot identification.
    pub const SLOT_ID: Self = Self(0x04);
    /// Message Signaled Interrupts.
    pub const MSI: Self = Self(0x05);
    /// CompactPCI hot swap.
    pub const COMPACT_PCI_HOT_SWAP: Self = Self(0x06);
    /// PCI-X.
    pub const PCIX: Self = Self(0x07);
    /// HyperTransport.
    pub const HYPERTRANSPORT: Self = Self(0x08);
    /// Vendor specific.
    pub const VENDOR_SPECIFIC: Self = Self(0x09);
    /// Debug port.
    pub const DEBUG_PORT: Self = Self(0x0a);
    /// CompactPCI central resource control.
    pub const COMPACT_PCI_CRC: Self = Self(0x0b);
    /// PCI hot-plug.
    pub const HOT_PLUG: Self = Self(0x0c);
    /// Bridge subsystem vendor/device ID.
    pub const SUBSYSTEM_VENDOR: Self = Self(0x0d);
    /// AGP 8x.
    pub const AGP3: Self = Self(0x0e);
    /// Secure device.
    pub const SECURE_DEVICE: Self = Self(0x0f);
    /// PCI Express.
    pub const EXPRESS: Self = Self(0x10);
    /// MSI-X.
    pub const MSIX: Self = Self(0x11);
    /// Serial ATA data/index configuration.
    pub const SATA: Self = Self(0x12);
    /// Advanced features (conventional PCI FLR).
    pub const ADVANCED_FEATURES: Self = Self(0x13);
    /// Enhanced allocation.
    pub const ENHANCED_ALLOCATION: Self = Self(0x14);

    /// The name lspci gives this capability, if the ID is assigned.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x01 => "Power Management",
            0x02 => "AGP",
            0x03 => "Vital Product Data",
            0x04 => "Slot ID",
            0x05 => "MSI",
            0x06 => "CompactPCI hot-swap",
            0x07 => "PCI-X",
            0x08 => "HyperTransport",
            0x09 => "Vendor Specific Information",
            0x0a => "Debug port",
            0x0b => "CompactPCI central resource control",
            0x0c => "Hot-plug capable",
            0x0d => "Subsystem",
            0x0e => "AGP3",
            0x0f => "Secure device",
            0x10 => "Express",
            0x11 => "MSI-X",
            0x12 => "SATA HBA",
            0x13 => "PCI Advanced Features",
            0x14 => "Enhanced Allocation (EA)",
            _ => return None,
        })
    }
}

impl fmt::Debug for CapabilityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapabilityId({:#04x})", self.0)
    }
}

impl fmt::Display for CapabilityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} capability (ID {:#04x})", self.0),
            None => write!(f, "capability ID {:#04x}", self.0),
        }
    }
}

/// A PCI Express extended capability ID, found in the chain starting at offset 0x100.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtCapabilityId(pub u16);

impl ExtCapabilityId {
    /// Null capability (ID 0): a placeholder that only carries a next pointer.
    pub const NULL: Self = Self(0x0000);
    /// Advanced Error Reporting.
    pub const AER: Self = Self(0x0001);
    /// Virtual Channel.
    pub const VIRTUAL_CHANNEL: Self = Self(0x0002);
    /// Device Serial Number.
    pub const DEVICE_SERIAL_NUMBER: Self = Self(0x0003);
    /// Power Budgeting.
    pub const POWER_BUDGETING: Self = Self(0x0004);
    /// Vendor-Specific Extended Capability.
    pub const VENDOR_SPECIFIC: Self = Self(0x000b);
    /// Access Control Services.
    pub const ACS: Self = Self(0x000d);
    /// Alternative Routing-ID Interpretation.
    pub const ARI: Self = Self(0x000e);
    /// Address Translation Services.
    pub const ATS: Self = Self(0x000f);
    /// Single Root I/O Virtualization.
    pub const SRIOV: Self = Self(0x0010);
    /// Page Request Interface.
    pub const PRI: Self = Self(0x0013);
    /// Resizable BAR.
    pub const RESIZABLE_BAR: Self = Self(0x0015);
    /// Latency Tolerance Reporting.
    pub const LTR: Self = Self(0x0018);
    /// Secondary PCI Express.
    pub const SECONDARY_PCIE: Self = Self(0x0019);
    /// Process Address Space ID.
    pub const PASID: Self = Self(0x001b);
    /// Downstream Port Containment.
    pub const DPC: Self = Self(0x001d);
    /// L1 PM Substates.
    pub const L1_PM_SUBSTATES: Self = Self(0x001e);
    /// Precision Time Measurement.
    pub const PTM: Self = Self(0x001f);
    /// Designated Vendor-Specific Extended Capability.
    pub const DVSEC: Self = Self(0x0023);
    /// VF Resizable BAR: the Resizable BAR capability for the VF BARs of an SR-IOV function.
    pub const VF_RESIZABLE_BAR: Self = Self(0x0024);

    /// The name lspci gives this capability, if the ID is assigned.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "Null",
            0x01 => "Advanced Error Reporting",
            0x02 | 0x09 => "Virtual Channel",
            0x03 => "Device Serial Number",
            0x04 => "Power Budgeting",
            0x05 => "Root Complex Link",
            0x06 => "Root Complex Internal Link",
            0x07 => "Root Complex Event Collector",
            0x08 => "Multi-Function Virtual Channel",
            0x0a => "Root Complex Register Block",
            0x0b => "Vendor Specific Information",
            0x0c => "Configuration Access Correlation",
            0x0d => "Access Control Services",
            0x0e => "Alternative Routing-ID Interpretation (ARI)",
            0x0f => "Address Translation Service (ATS)",
            0x10 => "Single Root I/O Virtualization (SR-IOV)",
            0x11 => "Multi-Root I/O Virtualization",
            0x12 => "Multicast",
            0x13 => "Page Request Interface (PRI)",
            0x15 => "Physical Resizable BAR",
            0x16 => "Dynamic Power Allocation",
            0x17 => "Transaction Processing Hints",
            0x18 => "Latency Tolerance Reporting",
            0x19 => "Secondary PCI Express",
            0x1a => "Protocol Multiplexing",
            0x1b => "Process Address Space ID (PASID)",
            0x1c => "LN Requester",
            0x1d => "Downstream Port Containment",
            0x1e => "L1 PM Substates",
            0x1f => "Precision Time Measurement",
            0x20 => "PCI Express over M_PHY",
            0x21 => "FRS Queueing",
            0x22 => "Readiness Time Reporting",
            0x23 => "Designated Vendor-Specific",
            0x24 => "VF Resizable BAR",
            0x25 => "Data Link Feature",
            0x26 => "Physical Layer 16.0 GT/s",
            0x27 => "Lane Margining at the Receiver",
            0x28 => "Hierarchy ID",
            0x29 => "Native PCIe Enclosure Management",
            _ => return None,
        })
    }
}

impl fmt::Debug for ExtCapabilityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtCapabilityId({:#06x})", self.0)
    }
}

impl fmt::Display for ExtCapabilityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} extended capability (ID {:#06x})", self.0),
            None => write!(f, "extended capability ID {:#06x}", self.0),
        }
    }
}

/// A capability ID from either chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapId {
    /// From the standard chain (0x34).
    Standard(CapabilityId),
    /// From the extended chain (0x100).
    Extended(ExtCapabilityId),
}

impl CapId {
    /// The lspci name, if assigned.
    pub fn name(self) -> Option<&'static str> {
        match self {
            CapId::Standard(id) => id.name(),
            CapId::Extended(id) => id.name(),
        }
    }

    /// True for extended capabilities.
    pub fn is_extended(self) -> bool {
        matches!(self, CapId::Extended(_))
    }
}

impl fmt::Display for CapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapId::Standard(id) => id.fmt(f),
            CapId::Extended(id) => id.fmt(f),
        }
    }
}

impl From<CapabilityId> for CapId {
    fn from(id: CapabilityId) -> Self {
        CapId::Standard(id)
    }
}

impl From<ExtCapabilityId> for CapId {
    fn from(id: ExtCapabilityId) -> Self {
        CapId::Extended(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_display() {
        assert_eq!(CapabilityId::MSIX.name(), Some("MSI-X"));
        assert_eq!(CapabilityId::MSIX.to_string(), "MSI-X capability (ID 0x11)");
        assert_eq!(CapabilityId(0x42).to_string(), "capability ID 0x42");
        assert_eq!(
            ExtCapabilityId::AER.name(),
            Some("Advanced Error Reporting")
        );
        assert_eq!(
            ExtCapabilityId::SRIOV.name(),
            Some("Single Root I/O Virtualization (SR-IOV)")
        );
        assert_eq!(
            ExtCapabilityId::RESIZABLE_BAR.name(),
            Some("Physical Resizable BAR")
        );
        assert_eq!(
            ExtCapabilityId::ARI.name(),
            Some("Alternative Routing-ID Interpretation (ARI)")
        );
        assert_eq!(
            CapId::from(ExtCapabilityId(0x7777)).to_string(),
            "extended capability ID 0x7777"
        );
    }
}
