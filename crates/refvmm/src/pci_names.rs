//! Vendor, device and class names from the PCI ID database (the `pci-ids` crate, which carries
//! pci.ids), so refvmm shows devices as `lspci` does: `Non-Volatile memory controller: Red Hat,
//! Inc. QEMU NVM Express Controller [1b36:0010]` rather than bare numbers.

/// `Vendor Device [vvvv:dddd]`, as `lspci -nn` prints a function; unknown IDs are shown the way
/// lspci shows them (`Device 0042`, `Device [abcd:0042]` when the vendor is unknown too).
pub fn vendor_device(vendor: u16, device: u16) -> String {
    let ids = format!("[{vendor:04x}:{device:04x}]");
    if let Some(d) = pci_ids::Device::from_vid_pid(vendor, device) {
        return format!("{} {} {ids}", d.vendor().name(), d.name());
    }
    match pci_ids::Vendors::iter().find(|v| v.id() == vendor) {
        Some(v) => format!("{} Device {device:04x} {ids}", v.name()),
        None => format!("Device {ids}"),
    }
}

/// The class name of a base class and subclass (`Non-Volatile memory controller`), or of the
/// base class alone when the subclass is not listed (`Unassigned class` for 0xff), if known.
pub fn class_name(base: u8, subclass: u8) -> Option<&'static str> {
    pci_ids::Subclass::from_cid_sid(base, subclass)
        .map(|s| s.name())
        .or_else(|| {
            pci_ids::Classes::iter()
                .find(|c| c.id() == base)
                .map(|c| c.name())
        })
}

/// Reads the IDs and class of a function on refvmm's bus and describes it as [`describe`] does.
pub fn describe_function(function: &mut dyn pci_config::PciFunction) -> String {
    let mut ids = [0u8; 4];
    function.config_read(0x00, &mut ids);
    let mut class = [0u8; 4];
    function.config_read(0x08, &mut class);
    describe(
        u16::from_le_bytes([ids[0], ids[1]]),
        u16::from_le_bytes([ids[2], ids[3]]),
        class[3],
        class[2],
    )
}

/// `Class: Vendor Device [vvvv:dddd]`, one line as lspci prints a function.
pub fn describe(vendor: u16, device: u16, base: u8, subclass: u8) -> String {
    let class = class_name(base, subclass)
        .map(str::to_string)
        .unwrap_or_else(|| format!("Class {base:02x}{subclass:02x}"));
    format!("{class}: {}", vendor_device(vendor, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_lspci_shows_them() {
        assert_eq!(
            describe(0x1b36, 0x0010, 0x01, 0x08),
            "Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller [1b36:0010]"
        );
        assert_eq!(
            vendor_device(0x8086, 0x1237),
            "Intel Corporation 440FX - 82441FX PMC [Natoma] [8086:1237]"
        );
        assert_eq!(
            vendor_device(0x1b36, 0xfffe),
            "Red Hat, Inc. Device fffe [1b36:fffe]"
        );
        let unknown = (1..=0xfffe_u16)
            .find(|&v| pci_ids::Vendors::iter().all(|known| known.id() != v))
            .unwrap();
        assert_eq!(
            vendor_device(unknown, 0x0042),
            format!("Device [{unknown:04x}:0042]")
        );
        assert_eq!(class_name(0x06, 0x00), Some("Host bridge"));
        assert_eq!(class_name(0xff, 0x00), Some("Unassigned class"));
    }
}
