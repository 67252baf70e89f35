//! The virtualized view in front of a mock device.

mod common;

use common::{MockDevice, msix_in_bar0, passthrough_view as view};
use pci_config::capability::{CapabilityId, MsiCapability, PowerManagement};
use pci_config::header::offset;
use pci_config::{
    BarDef, Command, ConfigEvent, ConfigSize, ConfigSpace, DeviceIds, ExtCapabilityId, HeaderType,
    Status, VirtualizedConfig,
};

/// A "real" device: 64-bit BAR0 at 0xfebd0000 (16K), PM, MSI, MSI-X, multi-function bit set.
fn real_device() -> ConfigSpace {
    let ids = DeviceIds {
        vendor_id: 0x8086,
        device_id: 0x10d3,
        class_code: 0x020000,
        ..Default::default()
    };
    let mut c = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
    c.set_bar(0, BarDef::memory64(0x4000).at(0xfebd_0000))
        .unwrap();
    c.add_capability(PowerManagement::new(false)).unwrap();
    c.add_capability(MsiCapability::new(1, true, false))
        .unwrap();
    c.add_capability(msix_in_bar0(5)).unwrap();
    c.set_u8(offset::INTERRUPT_PIN, 1).unwrap();
    c.set_u8(offset::INTERRUPT_LINE, 11).unwrap();
    c.set_multifunction(true);
    c
}

#[test]
fn reads_merge_device_and_model() {
    let real = real_device();
    let dev = MockDevice::new(real.bytes());
    let v = view(&dev);
    // IDs pass through: a change on the device is visible
    dev.regs.borrow_mut()[2] = 0xd4;
    assert_eq!(v.read_u32(0).unwrap(), 0x10d4_8086);
    // BARs are emulated: the guest sees the model (unassigned), not the host address
    dev.take_log();
    assert_eq!(v.read_u32(0x10).unwrap(), 0x0000_0004);
    assert!(
        dev.take_log().is_empty(),
        "fully emulated reads do not touch the device"
    );
    // multi-function bit hidden, pin/line emulated
    assert_eq!(v.read_u32(0x0c).unwrap() >> 16 & 0xff, 0);
    assert_eq!(v.model().read_u8(offset::INTERRUPT_PIN).unwrap(), 1);
}

#[test]
fn bar_writes_stay_in_the_model_and_raise_events() {
    let dev = MockDevice::new(real_device().bytes());
    let mut v = view(&dev);
    dev.take_log();
    assert!(v.write_u32(0x10, 0xffff_ffff).unwrap().is_empty());
    assert_eq!(v.read_u32(0x10).unwrap(), 0xffff_c004);
    v.write_u32(0x10, 0xc000_0004).unwrap();
    let e = v.write_u32(0x14, 0x1).unwrap();
    assert_eq!(
        e.to_vec(),
        [ConfigEvent::BarMoved {
            bar: 0,
            old: 0xc000_0000,
            new: 0x1_c000_0000
        }]
    );
    assert!(
        dev.writes().is_empty(),
        "guest BAR programming must never reach the device"
    );
    assert_eq!(
        &dev.regs.borrow()[0x10..0x18],
        &[0x04, 0, 0xbd, 0xfe, 0, 0, 0, 0]
    );
}

#[test]
fn command_is_forwarded_and_shadowed() {
    let dev = MockDevice::new(real_device().bytes());
    let mut v = view(&dev);
    dev.take_log();
    let e = v
        .write_u16(offset::COMMAND, Command::MEMORY | Command::BUS_MASTER)
        .unwrap();
    assert_eq!(
        e.to_vec(),
        [
            ConfigEvent::DecodeChanged {
                memory: true,
                io: false
            },
            ConfigEvent::BusMasterChanged { enabled: true }
        ]
    );
    assert_eq!(dev.writes(), [(4, 2)]);
    assert_eq!(
        u16::from_le_bytes([dev.regs.borrow()[4], dev.regs.borrow()[5]]),
        0x6
    );
    assert_eq!(v.read_u16(offset::COMMAND).unwrap(), 0x6);
}

#[test]
fn msi_and_msix_are_fully_emulated() {
    let dev = MockDevice::new(real_device().bytes());
    let mut v = view(&dev);
    let msix = v
        .model()
        .find_capability(CapabilityId::MSIX)
        .unwrap()
        .offset;
    let msi = v.model().find_capability(CapabilityId::MSI).unwrap().offset;
    dev.take_log();
    let e = v.write_u16(msix + 2, 0x8000).unwrap();
    assert_eq!(
        e.to_vec(),
        [ConfigEvent::MsixChanged {
            enabled: true,
            function_masked: false
        }]
    );
    v.write_u32(msi + 4, 0xfee0_0000).unwrap();
    let e = v.write_u16(msi + 2, 1).unwrap();
    assert_eq!(e.to_vec(), [ConfigEvent::MsiChanged { enabled: true }]);
    assert!(
        dev.writes().is_empty(),
        "the guest must not program the device's interrupts"
    );
    assert_eq!(v.read_u16(msix + 2).unwrap(), 0x8004);
    assert_eq!(dev.regs.borrow()[msix as usize + 3], 0);
}

#[test]
fn mixed_bytes_keep_emulated_bits_and_never_clear_w1c() {
    let mut real = real_device();
    real.set_u16(
        offset::STATUS,
        real.status().0 | Status::PARITY | Status::REC_MASTER_ABORT,
    )
    .unwrap();
    let dev = MockDevice::new(real.bytes());
    let mut v = view(&dev);
    // Emulate Status.PARITY (RW1C, byte 0x07 bit 0) as well, so byte 0x07 is mixed.
    v.emulate(offset::STATUS, &Status::PARITY.to_le_bytes())
        .unwrap();
    dev.take_log();
    // guest clears both error bits with one write
    v.write_u16(offset::STATUS, Status::PARITY | Status::REC_MASTER_ABORT)
        .unwrap();
    let log = dev.take_log();
    assert_eq!(
        log,
        [('r', 6, 2), ('w', 6, 2)],
        "mixed bytes are read, merged and written"
    );
    let st = u16::from_le_bytes([dev.regs.borrow()[6], dev.regs.borrow()[7]]);
    // the mock stores what it is given: the passthrough W1C bit was written as 1 (cleared on
    // real hardware), the emulated W1C bit position carried 0, the emulated CAP_LIST position
    // carried the device's current value
    assert_eq!(st & Status::REC_MASTER_ABORT, Status::REC_MASTER_ABORT);
    assert_eq!(st & Status::PARITY, 0);
    assert_eq!(st & Status::CAP_LIST, Status::CAP_LIST);
    // the emulated PARITY bit was cleared in the model
    assert_eq!(v.model().status().0 & Status::PARITY, 0);
}

#[test]
fn unaligned_guest_access_gives_aligned_backend_accesses() {
    let dev = MockDevice::new(real_device().bytes());
    let mut v = view(&dev);
    dev.take_log();
    let mut b = [0u8; 4];
    v.read(0x03, &mut b).unwrap();
    assert_eq!(dev.take_log(), [('r', 3, 1), ('r', 4, 2), ('r', 6, 1)]);
    v.write(0x02, &[0, 0, 2, 0]).unwrap();
    assert_eq!(dev.writes(), [(2, 2), (4, 2)]);
}

#[test]
fn hidden_capability_is_gone_for_the_guest() {
    let dev = MockDevice::new(real_device().bytes());
    let mut v = view(&dev);
    let pm = v
        .model()
        .find_capability(CapabilityId::POWER_MANAGEMENT)
        .unwrap()
        .offset;
    v.hide_capability(pm).unwrap();
    // walk the chain as the guest sees it
    let mut seen = Vec::new();
    let mut p = v.read_u16(0x34).unwrap() as u8 & !3;
    while p != 0 {
        seen.push(p as u16);
        p = (v.read_u16(p as u16).unwrap() >> 8) as u8 & !3;
    }
    assert!(!seen.contains(&pm));
    assert_eq!(seen.len(), 2);
    assert_eq!(v.read_u32(pm).unwrap(), 0);
    dev.take_log();
    v.write_u16(pm + 4, 3).unwrap();
    assert!(
        dev.writes().is_empty(),
        "writes to a hidden capability never reach the device"
    );
    // the device's own chain is untouched
    assert_eq!(dev.regs.borrow()[0x34], pm as u8);
}

/// Issue 12 item 5: a hidden extended capability is hidden whole, not only its header: VF
/// Resizable BAR (its layout now known), an ID whose layout this crate does not know (hidden up
/// to the next capability), and an unknown one at the end of the chain (hidden up to the end
/// of the space). The capability after them stays the device's.
#[test]
fn hidden_extended_capabilities_are_hidden_whole() {
    let ids = DeviceIds {
        vendor_id: 0x15b3,
        device_id: 0x101b,
        class_code: 0x020000,
        ..Default::default()
    };
    let real = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
    // The extended chain as the device has it, every byte after 0x100 non-zero.
    let (vf_rebar, multicast, dsn, last) = (0x140u16, 0x160u16, 0x1a0u16, 0x1b0u16);
    let mut bytes = real.bytes().to_vec();
    for (i, b) in bytes[0x100..].iter_mut().enumerate() {
        *b = 0xa0 | (i % 16) as u8;
    }
    for (at, id, next) in [
        (0x100, ExtCapabilityId::AER.0, vf_rebar),
        (vf_rebar, ExtCapabilityId::VF_RESIZABLE_BAR.0, multicast),
        (multicast, 0x0012, dsn),
        (dsn, ExtCapabilityId::DEVICE_SERIAL_NUMBER.0, last),
        (last, 0x0029, 0),
    ] {
        let header = id as u32 | 1 << 16 | (next as u32) << 20;
        bytes[at as usize..at as usize + 4].copy_from_slice(&header.to_le_bytes());
    }
    // VF Resizable BAR with two entries: Control bits 7:5 of the first entry.
    bytes[vf_rebar as usize + 8] = 2 << 5;
    let dev = MockDevice::new(&bytes);
    let mut v = view(&dev);
    let hidden = [
        (vf_rebar, 20usize),
        (multicast, (dsn - multicast) as usize),
        (last, 4096 - last as usize),
    ];
    for (at, len) in hidden {
        assert_eq!(v.hide_capability(at).unwrap().len as usize, len, "{at:#x}");
    }
    dev.take_log();
    for (at, len) in hidden {
        for o in (at..at + len as u16).step_by(4) {
            assert_eq!(v.read_u32(o).unwrap(), 0, "hidden byte at {o:#x} reads");
            v.write_u32(o, 0xffff_ffff).unwrap();
            assert_eq!(
                v.read_u32(o).unwrap(),
                0,
                "hidden byte at {o:#x} took a write"
            );
        }
    }
    assert_eq!(
        dev.writes(),
        [],
        "writes to a hidden capability never reach the device"
    );
    // The guest's chain: AER, DSN; DSN's registers are still the device's.
    let mut seen = Vec::new();
    let mut at = 0x100u16;
    while at != 0 {
        let header = v.read_u32(at).unwrap();
        seen.push((at, header as u16));
        at = (header >> 20) as u16 & !3;
    }
    assert_eq!(seen, [(0x100, 0x0001), (dsn, 0x0003)]);
    assert_eq!(v.read_u32(dsn + 4).unwrap(), 0xa7a6_a5a4);
}

#[test]
fn failing_backend_reads_all_ones_and_drops_writes() {
    let dev = MockDevice::new(real_device().bytes());
    let mut v = view(&dev);
    dev.fail.set(true);
    // passthrough bits all-ones, emulated BAR still served
    assert_eq!(v.read_u32(0).unwrap(), 0xffff_ffff);
    assert_eq!(v.read_u32(0x10).unwrap(), 0x4);
    // status: CAP_LIST is emulated (1), the rest reads ones
    assert_eq!(v.read_u16(offset::STATUS).unwrap(), 0xffff);
    let e = v.write_u16(offset::COMMAND, Command::MEMORY).unwrap();
    assert_eq!(
        e.to_vec(),
        [ConfigEvent::DecodeChanged {
            memory: true,
            io: false
        }]
    );
    assert_eq!(
        v.backend_errors(),
        3,
        "two failed reads and one dropped write"
    );
    dev.fail.set(false);
    assert_eq!(v.read_u32(0).unwrap(), 0x10d3_8086);
    // out-of-range guest access: error, buffer all-ones, no backend access
    dev.take_log();
    let mut b = [0u8; 4];
    assert!(v.read(0xffe, &mut b).is_err());
    assert_eq!(b, [0xff; 4]);
    assert!(v.write(0x1000, &[0]).is_err());
    assert!(dev.take_log().is_empty());
}

#[test]
fn custom_emulation_mask() {
    let dev = MockDevice::new(real_device().bytes());
    let mut v = VirtualizedConfig::new(
        ConfigSpace::from_bytes(&dev.regs.borrow().clone()).unwrap(),
        &dev,
    );
    assert!(v.emulated_mask().iter().all(|&m| m == 0));
    v.emulate(0, &[0xff, 0xff]).unwrap();
    v.model_mut().set_u16(0, 0x1af4).unwrap();
    assert_eq!(
        v.read_u32(0).unwrap(),
        0x10d3_1af4,
        "vendor ID overridden, device ID passed through"
    );
    assert!(v.is_emulated(0, 3) && !v.is_emulated(2, 0));
    v.pass_through(0, &[0xff]).unwrap();
    assert_eq!(v.read_u16(0).unwrap(), 0x1a86);
    assert!(v.emulate(0xfff, &[1, 2]).is_err());
    let (model, _) = v.into_parts();
    assert_eq!(model.read_u16(0).unwrap(), 0x1af4);
}
