//! Register behaviour of `ConfigSpace`: header, Command/Status, BARs, ROM, events, capabilities.

mod common;

use common::msix_in_bar0;
use pci_config::capability::{
    BarOffset, CapabilityError, ExpressCapability, MsiCapability, MsixCapability, PortType,
    PowerManagement, VendorCapability,
};
use pci_config::header::offset;
use pci_config::{
    AccessError, BarDef, BarError, BarKind, BridgeWindow, CapId, CapabilityId, Command,
    ConfigError, ConfigEvent, ConfigSize, ConfigSpace, DeviceIds, ExtCapabilityId, HeaderType,
    RomDef, Status,
};

fn ids() -> DeviceIds {
    DeviceIds {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
        revision: 2,
        class_code: 0x010802,
    }
}

/// An NVMe-like endpoint: 64-bit BAR0, I/O BAR4, 32-bit prefetchable BAR5, ROM, MSI-X, PM, MSI.
fn device() -> ConfigSpace {
    let mut c = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids());
    c.set_bar(0, BarDef::memory64(0x4000).at(0xfebd_0000))
        .unwrap();
    c.set_bar(4, BarDef::io(32).at(0xc000)).unwrap();
    c.set_bar(5, BarDef::memory32(0x10_0000).prefetchable())
        .unwrap();
    c.set_rom(RomDef::new(0x8_0000)).unwrap();
    c
}

fn events(e: pci_config::ConfigEvents) -> Vec<ConfigEvent> {
    e.to_vec()
}

#[test]
fn identification_registers_are_read_only() {
    let mut c = device();
    assert_eq!(c.read_u32(0).unwrap(), 0x0010_1b36);
    assert_eq!(c.read_u32(8).unwrap(), 0x0108_0202);
    c.write_u32(0, 0xffff_ffff).unwrap();
    c.write_u32(8, 0).unwrap();
    c.write_u32(0x2c, 0).unwrap();
    assert_eq!(c.read_u32(0).unwrap(), 0x0010_1b36);
    assert_eq!(c.read_u32(8).unwrap(), 0x0108_0202);
    assert_eq!(c.read_u32(0x2c).unwrap(), 0x1100_1af4);
    assert_eq!(c.ids(), ids());
}

#[test]
fn command_events_and_reserved_bits() {
    let mut c = device();
    let e = events(
        c.write_u16(offset::COMMAND, Command::MEMORY | Command::BUS_MASTER)
            .unwrap(),
    );
    assert_eq!(
        e,
        [
            ConfigEvent::DecodeChanged {
                memory: true,
                io: false
            },
            ConfigEvent::BusMasterChanged { enabled: true }
        ]
    );
    // rewriting the same value reports nothing
    assert!(
        c.write_u16(offset::COMMAND, Command::MEMORY | Command::BUS_MASTER)
            .unwrap()
            .is_empty()
    );
    let e = events(c.write_u16(offset::COMMAND, 0xffff).unwrap());
    assert_eq!(
        e,
        [
            ConfigEvent::DecodeChanged {
                memory: true,
                io: true
            },
            ConfigEvent::IntxDisableChanged { disabled: true }
        ]
    );
    // reserved bits 15:11 and 7, read-only bit 3
    assert_eq!(c.read_u16(offset::COMMAND).unwrap(), 0x0777);
    let e = events(c.write_u8(offset::COMMAND + 1, 0).unwrap());
    assert_eq!(e, [ConfigEvent::IntxDisableChanged { disabled: false }]);
}

#[test]
fn status_w1c_and_capability_bit_read_only() {
    let mut c = device();
    c.add_capability(PowerManagement::new(true)).unwrap();
    let bits = Status::REC_MASTER_ABORT | Status::DETECTED_PARITY | Status::INTERRUPT;
    c.set_u16(offset::STATUS, c.status().0 | bits).unwrap();
    let st = c.status();
    assert!(st.has_capabilities() && st.interrupt());
    // A dword write to 0x04 writes Command and Status together: clear one error bit.
    c.write_u32(offset::COMMAND, (Status::DETECTED_PARITY as u32) << 16)
        .unwrap();
    let st = c.status().0;
    assert_eq!(st & Status::DETECTED_PARITY, 0);
    assert_ne!(st & Status::REC_MASTER_ABORT, 0);
    assert_ne!(st & Status::CAP_LIST, 0);
    // writing zeros or all-ones to the RO bits changes nothing
    c.write_u16(offset::STATUS, !Status::W1C).unwrap();
    assert_eq!(c.status().0, st);
    c.write_u16(offset::STATUS, 0xffff).unwrap();
    assert_eq!(c.status().0, Status::CAP_LIST | Status::INTERRUPT);
}

#[test]
fn unaligned_and_cross_register_accesses() {
    let mut c = device();
    // 4-byte write at 0x02: device ID (RO) + Command (RW) low byte is 0x04..0x05
    let e = events(c.write(0x02, &[0xaa, 0xbb, 0x02, 0x00]).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::DecodeChanged {
            memory: true,
            io: false
        }]
    );
    assert_eq!(c.read_u16(0x02).unwrap(), 0x0010);
    assert_eq!(c.command().0, Command::MEMORY);
    // 4-byte read at 0x03 crosses device ID / command / status
    let mut b = [0u8; 4];
    c.read(0x03, &mut b).unwrap();
    assert_eq!(b, [0x00, 0x02, 0x00, 0x00]);
    // 2-byte write at 0x13/0x14 straddles BAR0 lo and BAR0 hi of the 64-bit BAR
    let e = events(c.write(0x13, &[0x12, 0x34]).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::BarMoved {
            bar: 0,
            old: 0xfebd_0000,
            new: 0x34_12bd_0000
        }]
    );
    // dword write at 0x23 straddles BAR4 (I/O, byte 3) and BAR5 (1 MiB: bits 31:20 writable)
    let e = events(c.write(0x23, &[0x01, 0xff, 0xff, 0x40]).unwrap());
    assert_eq!(
        e,
        [
            ConfigEvent::BarMoved {
                bar: 4,
                old: 0xc000,
                new: 0x0100_c000
            },
            ConfigEvent::BarMoved {
                bar: 5,
                old: 0,
                new: 0x0040_0000
            },
        ]
    );
    assert_eq!(c.read_u32(0x24).unwrap(), 0x0040_0008);
}

#[test]
fn out_of_range_and_bad_widths_never_panic() {
    let mut c = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, ids());
    let before = c.bytes().to_vec();
    let mut b = [0u8; 4];
    assert_eq!(
        c.read(0xfe, &mut b),
        Err(AccessError::OutOfRange {
            offset: 0xfe,
            len: 4,
            size: 256
        })
    );
    assert_eq!(b, [0xff; 4]);
    assert!(c.read(0x100, &mut b[..1]).is_err());
    assert!(c.write(0xff, &[1, 2]).is_err());
    assert!(c.write(0xffff, &[1]).is_err());
    assert_eq!(
        c.write(0x10, &[1, 2, 3]),
        Err(AccessError::BadWidth {
            offset: 0x10,
            len: 3
        })
    );
    assert!(c.write(0x10, &[]).is_err());
    assert!(c.write(0x10, &[0; 8]).is_err());
    assert_eq!(c.bytes(), &before[..]);
    let e = c.read_u32(0x1000).unwrap_err();
    assert!(e.to_string().contains("0x1000"), "{e}");
}

#[test]
fn bar_sizing_protocol_reports_nothing() {
    let mut c = device();
    c.write_u16(offset::COMMAND, Command::MEMORY | Command::IO)
        .unwrap();
    // 64-bit BAR0, sized while memory decode is on (no events, committed address kept)
    assert!(c.write_u32(0x10, 0xffff_ffff).unwrap().is_empty());
    assert_eq!(c.read_u32(0x10).unwrap(), 0xffff_c004);
    assert!(c.bar(0).unwrap().sizing);
    assert_eq!(c.bar(0).unwrap().address, 0xfebd_0000);
    assert!(c.write_u32(0x10, 0xfebd_0004).unwrap().is_empty());
    assert!(c.write_u32(0x14, 0xffff_ffff).unwrap().is_empty());
    assert_eq!(c.read_u32(0x14).unwrap(), 0xffff_ffff);
    assert!(c.write_u32(0x14, 0).unwrap().is_empty());
    assert!(!c.bar(0).unwrap().sizing);
    // both halves probed at once, then restored in the other order
    assert!(c.write_u32(0x10, !0).unwrap().is_empty());
    assert!(c.write_u32(0x14, !0).unwrap().is_empty());
    assert!(c.write_u32(0x14, 0).unwrap().is_empty());
    assert!(c.write_u32(0x10, 0xfebd_0000).unwrap().is_empty());
    // I/O BAR: size 32 -> mask 0xffffffe0 | 1
    assert!(c.write_u32(0x20, !0).unwrap().is_empty());
    assert_eq!(c.read_u32(0x20).unwrap(), 0xffff_ffe1);
    assert!(c.write_u32(0x20, 0xc000).unwrap().is_empty());
    // 32-bit prefetchable 1 MiB BAR5
    c.write_u32(0x24, !0).unwrap();
    assert_eq!(c.read_u32(0x24).unwrap(), 0xfff0_0008);
    // unimplemented BARs read back zero after a probe
    c.write_u32(0x18, !0).unwrap();
    assert_eq!(c.read_u32(0x18).unwrap(), 0);
}

#[test]
fn sizing_probe_then_new_address_reports_one_move() {
    let mut c = device();
    c.write_u32(0x24, !0).unwrap();
    let e = events(c.write_u32(0x24, 0xe000_0000).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::BarMoved {
            bar: 5,
            old: 0,
            new: 0xe000_0000
        }]
    );
}

#[test]
fn bar_addresses_stay_naturally_aligned() {
    let mut c = device();
    c.write_u32(0x10, 0x1234_5678).unwrap();
    assert_eq!(c.read_u32(0x10).unwrap(), 0x1234_4004);
    assert_eq!(c.bar(0).unwrap().address, 0x1234_4000);
    c.write_u32(0x20, 0x1234_5678).unwrap();
    assert_eq!(c.read_u32(0x20).unwrap(), 0x1234_5661);
}

#[test]
fn sixty_four_bit_bar_programmed_half_at_a_time() {
    let mut c = device();
    // Linux's pci_std_update_resource: decode off, lo, hi, decode on
    c.write_u16(offset::COMMAND, Command::MEMORY).unwrap();
    let e = events(c.write_u16(offset::COMMAND, 0).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::DecodeChanged {
            memory: false,
            io: false
        }]
    );
    let e = events(c.write_u32(0x10, 0x0000_4004).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::BarMoved {
            bar: 0,
            old: 0xfebd_0000,
            new: 0x4000
        }]
    );
    let e = events(c.write_u32(0x14, 0x0000_0080).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::BarMoved {
            bar: 0,
            old: 0x4000,
            new: 0x80_0000_4000
        }]
    );
    let e = events(c.write_u16(offset::COMMAND, Command::MEMORY).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::DecodeChanged {
            memory: true,
            io: false
        }]
    );
    assert_eq!(c.bar(0).unwrap().address, 0x80_0000_4000);
    // writing the same value again is not a move
    assert!(c.write_u32(0x14, 0x80).unwrap().is_empty());
}

#[test]
fn rom_enable_move_and_linux_probe() {
    let mut c = device();
    let e = events(c.write_u32(0x30, 0xfeb0_0001).unwrap());
    assert_eq!(
        e,
        [
            ConfigEvent::RomMoved {
                old: 0,
                new: 0xfeb0_0000
            },
            ConfigEvent::RomEnableChanged { enabled: true }
        ]
    );
    assert!(c.rom().unwrap().enabled);
    // Linux sizes the ROM with `l | PCI_ROM_ADDRESS_MASK`, keeping the enable bit
    assert!(c.write_u32(0x30, 0xffff_f801).unwrap().is_empty());
    assert_eq!(c.read_u32(0x30).unwrap(), 0xfff8_0001);
    assert!(c.rom().unwrap().sizing);
    assert!(c.write_u32(0x30, 0xfeb0_0001).unwrap().is_empty());
    let e = events(c.write_u8(0x30, 0).unwrap());
    assert_eq!(e, [ConfigEvent::RomEnableChanged { enabled: false }]);
    assert_eq!(c.rom().unwrap().size, 0x8_0000);
}

#[test]
fn bar_definition_errors() {
    let mut c = device();
    assert_eq!(
        c.set_bar(1, BarDef::io(4)),
        Err(BarError::UpperHalf { index: 1, lower: 0 })
    );
    assert_eq!(
        c.set_bar(5, BarDef::memory64(0x1000)),
        Err(BarError::NoRoomForUpperHalf { index: 5 })
    );
    assert!(matches!(
        c.set_bar(6, BarDef::io(4)),
        Err(BarError::NoSuchBar { index: 6, .. })
    ));
    // replacing a 64-bit BAR by a 32-bit one frees the upper slot
    c.set_bar(0, BarDef::memory32(0x1000)).unwrap();
    c.set_bar(1, BarDef::io(16)).unwrap();
    assert_eq!(c.bar(1).unwrap().kind, BarKind::Io);
    c.clear_bar(1);
    assert!(c.bar(1).is_none());
    assert_eq!(c.read_u32(0x14).unwrap(), 0);
    let mut bridge = ConfigSpace::new(HeaderType::Bridge, ConfigSize::Conventional, ids());
    assert!(matches!(
        bridge.set_bar(2, BarDef::io(4)),
        Err(BarError::NoSuchBar { count: 2, .. })
    ));
    let e = BarDef::memory32(0x3000).validate(2).unwrap_err();
    assert!(e.to_string().contains("BAR 2"), "{e}");
}

#[test]
fn bridge_header() {
    let mut b = ConfigSpace::new(HeaderType::Bridge, ConfigSize::Extended, ids());
    b.set_bar(0, BarDef::memory64(0x1000)).unwrap();
    b.set_rom(RomDef::new(0x800)).unwrap();
    assert_eq!(b.read_u8(offset::HEADER_TYPE).unwrap(), 1);
    let e = events(b.write_u32(0x20, 0xfe10_fe00).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::BridgeWindowChanged {
            window: BridgeWindow::Memory
        }]
    );
    let e = events(b.write_u16(0x1c, 0xe0d0).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::BridgeWindowChanged {
            window: BridgeWindow::Io
        }]
    );
    assert_eq!(b.read_u16(0x1c).unwrap(), 0xe0d0);
    let e = events(b.write_u32(0x38, 0x1234_5801).unwrap());
    assert_eq!(e.len(), 2);
    assert_eq!(b.read_u32(0x38).unwrap(), 0x1234_5801);
    b.write_u32(0x18, 0x0005_0100).unwrap();
    assert_eq!(b.read_u32(0x18).unwrap(), 0x0005_0100);
}

#[test]
fn capabilities_add_parse_and_write() {
    let mut c = device();
    let pm = c.add_capability(PowerManagement::new(true)).unwrap();
    let msi = c.add_capability(MsiCapability::new(4, true, true)).unwrap();
    let msix = c.add_capability(msix_in_bar0(65)).unwrap();
    let exp = c
        .add_capability(ExpressCapability::new(PortType::Endpoint))
        .unwrap();
    let ven = c
        .add_capability(VendorCapability::new(&[1, 2, 3, 4, 5]))
        .unwrap();
    assert_eq!((pm, msi, msix, exp, ven), (0x40, 0x48, 0x60, 0x6c, 0xa8));
    assert!(c.status().has_capabilities());
    let caps = c.capabilities().unwrap();
    assert_eq!(
        caps.iter().map(|c| c.offset).collect::<Vec<_>>(),
        [0x40, 0x48, 0x60, 0x6c, 0xa8]
    );
    assert_eq!(c.msix().unwrap().table_size, 65);
    assert_eq!(c.express().unwrap().port_type(), PortType::Endpoint);

    // MSI: enable + 4 vectors, address with reserved low bits, mask bits of implemented vectors
    let e = events(c.write_u16(msi + 2, 0x0021).unwrap());
    assert_eq!(e, [ConfigEvent::MsiChanged { enabled: true }]);
    c.write_u32(msi + 4, 0xfee0_1003).unwrap();
    c.write_u32(msi + 8, 0x1).unwrap();
    c.write_u16(msi + 12, 0x4041).unwrap();
    c.write_u32(msi + 16, 0xffff_ffff).unwrap();
    let m = c.msi().unwrap();
    assert!(m.enabled() && m.is_64bit() && m.per_vector_masking());
    assert_eq!((m.vectors_capable(), m.vectors_enabled()), (4, 4));
    assert_eq!(m.address, 0x1_fee0_1000);
    assert_eq!(m.data, 0x4041);
    assert_eq!(m.mask_bits, Some(0xf));
    assert!(m.is_masked(3) && !m.is_masked(4));
    // Multiple Message Capable is read-only
    c.write_u16(msi + 2, 0x00ff).unwrap();
    assert_eq!(c.msi().unwrap().vectors_capable(), 4);
    // writing the same MSI value again reports nothing
    assert!(c.write_u32(msi + 4, 0xfee0_1000).unwrap().is_empty());

    // MSI-X: enable and function mask
    let e = events(c.write_u16(msix + 2, 0xc000).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::MsixChanged {
            enabled: true,
            function_masked: true
        }]
    );
    let e = events(c.write_u8(msix + 3, 0x80).unwrap());
    assert_eq!(
        e,
        [ConfigEvent::MsixChanged {
            enabled: true,
            function_masked: false
        }]
    );
    c.write_u32(msix + 4, 0xffff_ffff).unwrap();
    assert_eq!(
        c.msix().unwrap().table,
        BarOffset {
            bir: 0,
            offset: 0x2000
        }
    );
    assert_eq!(c.read_u16(msix + 2).unwrap() & 0x7ff, 64);

    // PM: state writable, PME status RW1C
    c.write_u16(pm + 4, 0x0003).unwrap();
    assert_eq!(c.power_management().unwrap().power_state(), 3);
    c.set_u16(pm + 4, 0x8008).unwrap();
    c.write_u16(pm + 4, 0x8000).unwrap();
    assert!(!c.power_management().unwrap().pme_status());
}

#[test]
fn hiding_capabilities() {
    let mut c = device();
    let pm = c.add_capability(PowerManagement::new(false)).unwrap();
    let msi = c
        .add_capability(MsiCapability::new(1, false, false))
        .unwrap();
    let msix = c
        .add_capability(MsixCapability::new(
            8,
            BarOffset { bir: 0, offset: 0 },
            BarOffset {
                bir: 0,
                offset: 0x800,
            },
        ))
        .unwrap();
    let h = c.hide_capability(msi).unwrap();
    assert_eq!(h.capability.id, CapId::Standard(CapabilityId::MSI));
    let caps = c.capabilities().unwrap();
    assert_eq!(
        caps.iter().map(|c| c.offset).collect::<Vec<_>>(),
        [pm, msix]
    );
    assert!(c.msi().is_none());
    // the hidden bytes are zero and read-only, and writing them has no side effect
    assert_eq!(c.read_u32(msi).unwrap(), 0);
    assert!(c.write_u16(msi + 2, 1).unwrap().is_empty());
    assert_eq!(c.read_u32(msi).unwrap(), 0);
    assert_eq!(
        c.hide_capability(msi),
        Err(CapabilityError::NotFound { offset: msi })
    );
    c.hide_capability(pm).unwrap();
    c.hide_capability(msix).unwrap();
    assert!(c.capabilities().unwrap().is_empty());
}

#[test]
fn extended_capabilities() {
    let mut c = device();
    let aer = c
        .add_extended_capability(ExtCapabilityId::AER, 2, &[])
        .unwrap();
    let ari = c
        .add_extended_capability(ExtCapabilityId::ARI, 1, &[0, 0, 0, 0])
        .unwrap();
    let rebar = c
        .add_extended_capability(
            ExtCapabilityId::RESIZABLE_BAR,
            1,
            &[0, 0xf0, 0, 0, 0x20, 0, 0, 0],
        )
        .unwrap();
    let sriov = c
        .add_extended_capability(ExtCapabilityId::SRIOV, 1, &[])
        .unwrap();
    assert_eq!((aer, ari, rebar, sriov), (0x100, 0x12c, 0x134, 0x140));
    let caps = c.capabilities().unwrap();
    let names: Vec<_> = caps.iter().map(|c| c.id.name().unwrap()).collect();
    assert_eq!(
        names,
        [
            "Advanced Error Reporting",
            "Alternative Routing-ID Interpretation (ARI)",
            "Physical Resizable BAR",
            "Single Root I/O Virtualization (SR-IOV)"
        ]
    );
    assert_eq!(caps[0].version, 2);
    // AER uncorrectable status is RW1C
    c.set_u32(aer + 4, 0x0000_1010).unwrap();
    c.write_u32(aer + 4, 0x10).unwrap();
    assert_eq!(c.read_u32(aer + 4).unwrap(), 0x1000);
    // hiding the head of the extended chain leaves a Null capability
    c.hide_capability(0x100).unwrap();
    let caps = c.capabilities().unwrap();
    assert_eq!(caps[0].id, CapId::Extended(ExtCapabilityId::NULL));
    assert_eq!(caps.len(), 4);
    let mut small = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, ids());
    let e = small
        .add_extended_capability(ExtCapabilityId::AER, 1, &[])
        .unwrap_err();
    assert!(matches!(
        e,
        CapabilityError::NoExtendedSpace { size: 256, .. }
    ));
}

#[test]
fn snapshots() {
    assert_eq!(
        ConfigSpace::from_bytes(&[0; 100]),
        Err(ConfigError::BadSnapshotLength { len: 100 })
    );
    let mut b = vec![0u8; 256];
    b[0x0e] = 0x82;
    assert_eq!(
        ConfigSpace::from_bytes(&b),
        Err(ConfigError::UnsupportedHeaderType { header_type: 2 })
    );
    let dev = device();
    let copy = ConfigSpace::from_bytes(dev.bytes()).unwrap();
    assert_eq!(copy.bytes(), dev.bytes());
    assert!(copy.bar(0).is_none(), "snapshots do not know BAR sizes");
    let mut copy = copy;
    copy.write_u32(0x10, !0).unwrap();
    assert_eq!(
        copy.read_u32(0x10).unwrap(),
        0xfebd_0004,
        "BARs without a size are read-only"
    );
}

#[test]
fn device_side_set_updates_committed_bar() {
    let mut c = device();
    c.set_u32(0x20, 0xd001).unwrap();
    assert_eq!(c.bar(4).unwrap().address, 0xd000);
    assert!(c.write_u32(0x20, 0xd000).unwrap().is_empty());
}
