#![no_main]
//! The lspci text parser on arbitrary input: never panics or loops; whatever parses and has a
//! hex dump builds a configuration space that renders and parses back.
use libfuzzer_sys::fuzz_target;
use pci_config::lspci::{self, HexDump, RenderOptions};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = lspci::parse_hex_dump(&text);
    let Ok(devices) = lspci::parse_devices(&text) else {
        return;
    };
    for d in &devices {
        let _ = (
            d.bdf(),
            d.vendor_id(),
            d.bars(),
            d.msix(),
            d.msi(),
            d.capabilities(),
            d.rom(),
        );
        let _ = lspci::find_device(&text, d.bdf());
        if let Ok(space) = d.to_config_space() {
            let opts = RenderOptions {
                hex: HexDump::Extended,
                kernel_driver: None,
            };
            let rendered = lspci::render(&space, d.bdf(), &opts);
            let back = lspci::parse_devices(&rendered).expect("rendered text parses");
            assert_eq!(back.len(), 1);
            let again = back[0].to_config_space().expect("rendered text rebuilds");
            assert_eq!(again.bytes(), space.bytes());
        }
    }
});
