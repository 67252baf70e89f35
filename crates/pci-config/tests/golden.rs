//! Golden tests on hand-written dumps of three real device types (see `tests/data/README.md`):
//! `lspci -vv -xxx` text -> facts; hex -> `ConfigSpace` (BAR sizes from the text) -> facts;
//! `ConfigSpace` -> rendered `lspci -vv` text (compared with a golden file) -> parsed -> the same
//! facts and the same bytes.
//!
//! Set `UPDATE_GOLDEN=1` to rewrite the `*.render.txt` files after an intended change.

#![cfg(feature = "lspci")]

use std::path::PathBuf;

use pci_config::capability::{BarOffset, CapId, CapabilityId, ExtCapabilityId};
use pci_config::lspci::{self, HexDump, LspciDevice, RenderOptions};
use pci_config::{BarKind, ConfigSize, ConfigSpace};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The facts a VMM (and `refvmm plan`) takes from lspci output.
#[derive(Debug, PartialEq)]
struct Facts {
    bdf: String,
    ids: (Option<u16>, Option<u16>),
    subsystem: Option<(u16, u16)>,
    class: Option<u16>,
    revision: Option<u8>,
    command: Option<u16>,
    status: Option<u16>,
    bars: Vec<lspci::LspciBar>,
    rom: Option<(Option<u64>, Option<u64>, bool)>,
    caps: Vec<(u16, Option<CapId>, Option<u8>)>,
    msix: Option<lspci::LspciMsix>,
    msi: Option<lspci::LspciMsi>,
}

fn facts(d: &LspciDevice) -> Facts {
    Facts {
        bdf: d.bdf().to_string(),
        ids: (d.vendor_id(), d.device_id()),
        subsystem: d.subsystem_ids(),
        class: d.class_code(),
        revision: d.revision(),
        command: d.command().map(|c| c.0),
        status: d.status().map(|s| s.0),
        bars: d.bars().to_vec(),
        rom: d.rom().map(|r| (r.address, r.size, r.disabled)),
        caps: d
            .capabilities()
            .iter()
            .map(|c| (c.offset, c.id, c.version))
            .collect(),
        msix: d.msix().copied(),
        msi: d.msi().copied(),
    }
}

struct Expect {
    file: &'static str,
    ids: (u16, u16),
    size: ConfigSize,
    bars: &'static [(u8, BarKind, bool, u64, u64)],
    rom: Option<(u64, u64)>,
    caps: &'static [(u16, CapId)],
    msix: (u16, u16, BarOffset, BarOffset),
}

use CapId::{Extended as E, Standard as S};

const NVME: Expect = Expect {
    file: "qemu-nvme-1b36-0010",
    ids: (0x1b36, 0x0010),
    size: ConfigSize::Conventional,
    bars: &[(0, BarKind::Memory64, false, 0xfebd_0000, 0x4000)],
    rom: None,
    caps: &[
        (0x40, S(CapabilityId::MSIX)),
        (0x80, S(CapabilityId::EXPRESS)),
        (0x60, S(CapabilityId::POWER_MANAGEMENT)),
    ],
    msix: (
        0x40,
        65,
        BarOffset {
            bir: 0,
            offset: 0x2000,
        },
        BarOffset {
            bir: 0,
            offset: 0x3000,
        },
    ),
};

const NIC: Expect = Expect {
    file: "intel-82574l-8086-10d3",
    ids: (0x8086, 0x10d3),
    size: ConfigSize::Extended,
    bars: &[
        (0, BarKind::Memory32, false, 0xfeb8_0000, 128 << 10),
        (1, BarKind::Memory32, false, 0xfeba_0000, 128 << 10),
        (2, BarKind::Io, false, 0xc000, 32),
        (3, BarKind::Memory32, false, 0xfebd_4000, 16 << 10),
    ],
    rom: Some((0xfeb4_0000, 256 << 10)),
    caps: &[
        (0xc8, S(CapabilityId::POWER_MANAGEMENT)),
        (0xd0, S(CapabilityId::MSI)),
        (0xe0, S(CapabilityId::EXPRESS)),
        (0xa0, S(CapabilityId::MSIX)),
        (0x100, E(ExtCapabilityId::AER)),
        (0x140, E(ExtCapabilityId::DEVICE_SERIAL_NUMBER)),
    ],
    msix: (
        0xa0,
        5,
        BarOffset { bir: 3, offset: 0 },
        BarOffset {
            bir: 3,
            offset: 0x2000,
        },
    ),
};

const GPU: Expect = Expect {
    file: "nvidia-t4-10de-1eb8",
    ids: (0x10de, 0x1eb8),
    size: ConfigSize::Extended,
    bars: &[
        (0, BarKind::Memory32, false, 0xd100_0000, 16 << 20),
        (1, BarKind::Memory64, true, 0x2ff_0000_0000, 256 << 20),
        (3, BarKind::Memory64, true, 0x2ff_1000_0000, 32 << 20),
    ],
    rom: Some((0xd200_0000, 512 << 10)),
    caps: &[
        (0x60, S(CapabilityId::POWER_MANAGEMENT)),
        (0x68, S(CapabilityId::MSI)),
        (0x78, S(CapabilityId::EXPRESS)),
        (0xc8, S(CapabilityId::MSIX)),
        (0x100, E(ExtCapabilityId::VIRTUAL_CHANNEL)),
        (0x128, E(ExtCapabilityId::POWER_BUDGETING)),
        (0x420, E(ExtCapabilityId::AER)),
        (0x600, E(ExtCapabilityId::VENDOR_SPECIFIC)),
        (0x900, E(ExtCapabilityId::SECONDARY_PCIE)),
        (0xbb0, E(ExtCapabilityId::RESIZABLE_BAR)),
    ],
    msix: (
        0xc8,
        6,
        BarOffset {
            bir: 0,
            offset: 0xb9_0000,
        },
        BarOffset {
            bir: 0,
            offset: 0xba_0000,
        },
    ),
};

fn check(e: &Expect) {
    let text = std::fs::read_to_string(data(&format!("{}.txt", e.file))).unwrap();
    let devs = lspci::parse_devices(&text).unwrap();
    assert_eq!(devs.len(), 1);
    let dev = &devs[0];

    // 1. facts from the text
    assert_eq!(
        (dev.vendor_id(), dev.device_id()),
        (Some(e.ids.0), Some(e.ids.1))
    );
    let bars: Vec<_> = dev
        .bars()
        .iter()
        .map(|b| {
            (
                b.index,
                b.kind,
                b.prefetchable,
                b.address.unwrap(),
                b.size.unwrap(),
            )
        })
        .collect();
    assert_eq!(bars, e.bars);
    assert_eq!(
        dev.rom().map(|r| (r.address.unwrap(), r.size.unwrap())),
        e.rom
    );
    let caps: Vec<_> = dev
        .capabilities()
        .iter()
        .map(|c| (c.offset, c.id.unwrap()))
        .collect();
    assert_eq!(caps, e.caps);
    let m = dev.msix().unwrap();
    assert_eq!(
        (m.offset, m.table_size, m.table.unwrap(), m.pba.unwrap()),
        e.msix
    );

    // 2. facts from the configuration space built from the hex
    let space = dev.to_config_space().unwrap();
    assert_eq!(space.size(), e.size);
    assert_eq!((space.ids().vendor_id, space.ids().device_id), e.ids);
    let bars: Vec<_> = space
        .bars()
        .iter()
        .map(|b| (b.index, b.kind, b.prefetchable, b.address, b.size))
        .collect();
    assert_eq!(bars, e.bars);
    assert_eq!(
        space.rom().map(|r| (r.address as u64, r.size as u64)),
        e.rom
    );
    let caps: Vec<_> = space
        .capabilities()
        .unwrap()
        .iter()
        .map(|c| (c.offset, c.id))
        .collect();
    assert_eq!(caps, e.caps);
    let mx = space.msix().unwrap();
    assert_eq!((mx.offset, mx.table_size, mx.table, mx.pba), e.msix);
    assert_eq!(space.bytes(), &dev.config_bytes().unwrap()[..space.len()]);

    // 3. render and compare with the golden rendering
    let hex = if e.size == ConfigSize::Extended {
        HexDump::Extended
    } else {
        HexDump::Standard
    };
    let rendered = lspci::render(
        &space,
        dev.bdf(),
        &RenderOptions {
            hex,
            kernel_driver: None,
        },
    );
    let golden = data(&format!("{}.render.txt", e.file));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert!(
        rendered == want,
        "rendering of {} changed:\n{rendered}",
        e.file
    );

    // 4. the rendering parses back to the same facts and bytes
    let back = lspci::parse_devices(&rendered).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(facts(&back[0]), facts(dev));
    let again: ConfigSpace = back[0].to_config_space().unwrap();
    assert_eq!(again.bytes(), space.bytes());
    assert_eq!(again.bars(), space.bars());
}

#[test]
fn golden_qemu_nvme() {
    check(&NVME);
}

#[test]
fn golden_intel_82574l_msix_in_bar3() {
    check(&NIC);
}

#[test]
fn golden_gpu_64bit_prefetchable_and_rom() {
    check(&GPU);
}
