#![no_main]
//! Capability-chain parsing of arbitrary bytes: the walkers, the typed views, hiding and the
//! lspci renderer must never panic or loop, and hiding a capability of a valid chain must leave
//! a valid chain without it.
use libfuzzer_sys::fuzz_target;
use pci_config::capability::{
    self, CapId, CapabilityId, ExpressCapability, ExtCapabilityId, MsiCapability, MsixCapability,
    PowerManagement, VendorCapability,
};
use pci_config::lspci::{self, HexDump, RenderOptions};
use pci_config::{Bdf, ConfigSpace};

fuzz_target!(|data: &[u8]| {
    // The raw slice as given (any length), then as a full 256- or 4096-byte space.
    let _ = capability::capabilities(data);
    let _ = capability::capabilities_lenient(data);
    let len = if data.len() > 256 { 4096 } else { 256 };
    let mut bytes = vec![0u8; len];
    let n = data.len().min(len);
    bytes[..n].copy_from_slice(&data[..n]);

    let strict = capability::capabilities(&bytes);
    let (caps, _) = capability::capabilities_lenient(&bytes);
    for c in &caps {
        assert!(c.offset as usize + c.len as usize <= bytes.len());
        match c.id {
            CapId::Standard(CapabilityId::MSI) => drop(MsiCapability::parse(&bytes, c.offset)),
            CapId::Standard(CapabilityId::MSIX) => drop(MsixCapability::parse(&bytes, c.offset)),
            CapId::Standard(CapabilityId::POWER_MANAGEMENT) => {
                drop(PowerManagement::parse(&bytes, c.offset))
            }
            CapId::Standard(CapabilityId::EXPRESS) => {
                drop(ExpressCapability::parse(&bytes, c.offset))
            }
            CapId::Standard(CapabilityId::VENDOR_SPECIFIC) => {
                drop(VendorCapability::parse(&bytes, c.offset))
            }
            _ => {}
        }
    }
    if let Ok(valid) = strict {
        // Null extended capabilities (ID 0) are placeholders: hiding may add or drop them.
        let real = |v: &[capability::Capability]| -> Vec<u16> {
            v.iter()
                .filter(|c| c.id != CapId::Extended(ExtCapabilityId::NULL))
                .map(|c| c.offset)
                .collect()
        };
        for c in valid.iter().take(8) {
            let mut copy = bytes.clone();
            capability::hide_capability(&mut copy, c.offset).expect("hiding a listed capability");
            let after = capability::capabilities(&copy).expect("hiding keeps the chain valid");
            let expected: Vec<u16> = real(&valid)
                .into_iter()
                .filter(|&o| o != c.offset)
                .collect();
            assert_eq!(
                real(&after),
                expected,
                "hiding {:#x} lost or kept the wrong capabilities",
                c.offset
            );
        }
    }

    // Anything a snapshot can hold must also load, render and parse back.
    bytes[0x0e] &= 0x81;
    if let Ok(space) = ConfigSpace::from_bytes(&bytes) {
        let opts = RenderOptions {
            hex: HexDump::Extended,
            kernel_driver: None,
        };
        let text = lspci::render(&space, Bdf::new(0, 1, 0), &opts);
        let dev = lspci::parse_devices(&text).expect("rendered text parses");
        assert_eq!(dev[0].config_bytes(), Some(space.bytes()));
    }
});
