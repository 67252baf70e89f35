//! Golden tests: the register map the registry gives for the hand-written dumps of
//! `pci-config`'s tests (QEMU NVMe, Intel 82574L with MSI-X in BAR3 of its own, a T4-like GPU),
//! compared with `tests/data/*.regmap.txt`.
//!
//! Set `UPDATE_GOLDEN=1` to rewrite them after an intended change, and review the diff.

use std::fmt::Write;
use std::path::PathBuf;

use pci_config::lspci;
use pci_regnames::{DeviceFacts, Location, Region, Registry};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../pci-config/tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every named field of configuration space with its value, then `probes` in the BARs.
fn regmap(file: &str, probes: &[(&str, u8)]) -> String {
    let text = fixture(file);
    let devices = lspci::parse_devices(&text).expect("fixture parses");
    let config = devices[0].config_bytes().expect("fixture has a hex dump");
    let facts = DeviceFacts::from_config(config);
    let registry = Registry::builtin();
    let mut out = format!(
        "# {file}: decoders {}\n",
        registry.applicable(&facts).join(", ")
    );
    let mut offset = 0u64;
    while offset < config.len() as u64 {
        let at = Location::new(Region::Config, offset);
        match registry.field_at(&facts, at) {
            Some(f) => {
                let value = facts.config_value(offset as u16, f.size).unwrap_or(0);
                let d = registry.decode(&facts, at, f.size, Some(value));
                writeln!(
                    out,
                    "{at:<14} {}  {:#0w$x}  {d}  -- {}",
                    f.size,
                    value,
                    f.description,
                    w = 2 + 2 * f.size as usize
                )
                .unwrap();
                offset = f.end();
            }
            None => offset += 1,
        }
    }
    for (probe, width) in probes {
        let at: Location = probe.parse().unwrap();
        let d = registry.decode(&facts, at, *width, None);
        let what: Vec<String> = d
            .parts
            .iter()
            .map(|p| {
                let mut s = format!("{} [{}] {}", p.name(), p.field.decoder, p.field.description);
                if let Some(a) = &p.field.assumption {
                    write!(s, " ({a})").unwrap();
                }
                s
            })
            .collect();
        writeln!(
            out,
            "{at:<14} {width}  {}",
            if what.is_empty() {
                "-".into()
            } else {
                what.join("; ")
            }
        )
        .unwrap();
    }
    out
}

fn check(file: &str, golden: &str, probes: &[(&str, u8)]) {
    let got = regmap(file, probes);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(got, want, "{golden} differs; UPDATE_GOLDEN=1 rewrites it");
}

#[test]
fn qemu_nvme() {
    check(
        "qemu-nvme-1b36-0010.txt",
        "qemu-nvme.regmap.txt",
        &[
            ("bar0+0x0", 8),
            ("bar0+0x4", 4),
            ("bar0+0x14", 4),
            ("bar0+0x1c", 4),
            ("bar0+0x18", 4),
            ("bar0+0x1000", 4),
            ("bar0+0x1004", 4),
            ("bar0+0x1018", 4),
            ("bar0+0x101c", 4),
            ("bar0+0x2000", 8),
            ("bar0+0x200c", 4),
            ("bar0+0x240c", 4),
            ("bar0+0x2410", 4),
            ("bar0+0x3000", 8),
            ("bar0+0x3008", 8),
            ("bar0+0x3010", 4),
            ("bar2+0x0", 4),
        ],
    );
}

#[test]
fn intel_82574l_msix_in_bar3() {
    check(
        "intel-82574l-8086-10d3.txt",
        "intel-82574l.regmap.txt",
        &[
            ("bar0+0x0", 4),
            ("bar3+0x0", 4),
            ("bar3+0xc", 4),
            ("bar3+0x4c", 4),
            ("bar3+0x50", 4),
            ("bar3+0x2000", 8),
            ("bar3+0x2008", 4),
            ("rom+0x0", 4),
        ],
    );
}

#[test]
fn gpu_extended_capabilities() {
    check(
        "nvidia-t4-10de-1eb8.txt",
        "nvidia-t4.regmap.txt",
        &[("bar0+0x0", 4)],
    );
}
