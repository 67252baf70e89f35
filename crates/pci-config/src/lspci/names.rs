//! Class names as pci.ids (and so lspci) spells them. Vendor and device names are not carried:
//! pci.ids is large and changes weekly.

/// The lspci name of a class code (base class << 8 | sub-class), falling back to the base
/// class name for unknown sub-classes.
pub fn class_name(class: u16) -> Option<&'static str> {
    let exact = match class {
        0x0000 => "Non-VGA unclassified device",
        0x0001 => "VGA compatible unclassified device",
        0x0100 => "SCSI storage controller",
        0x0101 => "IDE interface",
        0x0102 => "Floppy disk controller",
        0x0104 => "RAID bus controller",
        0x0105 => "ATA controller",
        0x0106 => "SATA controller",
        0x0107 => "Serial Attached SCSI controller",
        0x0108 => "Non-Volatile memory controller",
        0x0180 => "Mass storage controller",
        0x0200 => "Ethernet controller",
        0x0207 => "Infiniband controller",
        0x0280 => "Network controller",
        0x0300 => "VGA compatible controller",
        0x0302 => "3D controller",
        0x0380 => "Display controller",
        0x0401 => "Multimedia audio controller",
        0x0403 => "Audio device",
        0x0480 => "Multimedia controller",
        0x0500 => "RAM memory",
        0x0580 => "Memory controller",
        0x0600 => "Host bridge",
        0x0601 => "ISA bridge",
        0x0604 => "PCI bridge",
        0x0680 => "Bridge",
        0x0700 => "Serial controller",
        0x0780 => "Communication controller",
        0x0800 => "PIC",
        0x0805 => "SD Host controller",
        0x0806 => "IOMMU",
        0x0880 => "System peripheral",
        0x0c03 => "USB controller",
        0x0c05 => "SMBus",
        0x0c80 => "Serial bus controller",
        0x1080 => "Encryption controller",
        0x1101 => "Performance counters",
        0x1180 => "Signal processing controller",
        0x1200 => "Processing accelerators",
        0xff00 => "Unassigned class",
        _ => "",
    };
    if !exact.is_empty() {
        return Some(exact);
    }
    Some(match class >> 8 {
        0x00 => "Unclassified device",
        0x01 => "Mass storage controller",
        0x02 => "Network controller",
        0x03 => "Display controller",
        0x04 => "Multimedia controller",
        0x05 => "Memory controller",
        0x06 => "Bridge",
        0x07 => "Communication controller",
        0x08 => "Generic system peripheral",
        0x09 => "Input device controller",
        0x0a => "Docking station",
        0x0b => "Processor",
        0x0c => "Serial bus controller",
        0x0d => "Wireless controller",
        0x0e => "Intelligent controller",
        0x0f => "Satellite communications controller",
        0x10 => "Encryption controller",
        0x11 => "Signal processing controller",
        0x12 => "Processing accelerators",
        0x13 => "Non-Essential Instrumentation",
        0x40 => "Coprocessor",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(
            super::class_name(0x0108),
            Some("Non-Volatile memory controller")
        );
        assert_eq!(super::class_name(0x0299), Some("Network controller"));
        assert_eq!(super::class_name(0x7777), None);
    }
}
