//! The lspci text parser against the output variants users paste.

#![cfg(feature = "lspci")]

use pci_config::capability::{BarOffset, CapId, CapabilityId, ExtCapabilityId};
use pci_config::lspci::{self, LspciError};
use pci_config::{BarKind, Bdf};

/// `lspci -vv` as a non-root user on a QEMU q35 guest: names only, no IDs, capabilities denied.
const NON_ROOT_NAMES: &str = "\
00:00.0 Host bridge: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller
\tSubsystem: Red Hat, Inc. QEMU Virtual Machine
\tControl: I/O+ Mem+ BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR+ FastB2B- DisINTx-
\tStatus: Cap- 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-

00:01.0 Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller (rev 02) (prog-if 02 [NVM Express])
\tSubsystem: Red Hat, Inc. Device 1100
\tControl: I/O+ Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR+ FastB2B- DisINTx+
\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
\tLatency: 0
\tInterrupt: pin A routed to IRQ 11
\tRegion 0: Memory at febd0000 (64-bit, non-prefetchable) [size=16K]
\tCapabilities: <access denied>
\tKernel driver in use: nvme
\tKernel modules: nvme

00:1f.2 SATA controller: Intel Corporation 82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode] (rev 02) (prog-if 01 [AHCI 1.0])
\tSubsystem: Red Hat, Inc. QEMU Virtual Machine
\tControl: I/O+ Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx+
\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
\tLatency: 0
\tInterrupt: pin A routed to IRQ 30
\tRegion 4: I/O ports at c040 [size=32]
\tRegion 5: Memory at febd5000 (32-bit, non-prefetchable) [size=4K]
\tCapabilities: <access denied>
\tKernel driver in use: ahci
";

/// `lspci -vvnn` as root on a host with a GPU (vfio-bound) and a NIC with MSI-X in BAR 3.
const ROOT_NN: &str = "\
3b:00.0 3D controller [0302]: NVIDIA Corporation TU104GL [Tesla T4] [10de:1eb8] (rev a1)
\tSubsystem: NVIDIA Corporation Device [10de:12a2]
\tPhysical Slot: 2
\tControl: I/O- Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx+
\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
\tLatency: 0
\tInterrupt: pin A routed to IRQ 255
\tNUMA node: 0
\tIOMMU group: 22
\tRegion 0: Memory at d1000000 (32-bit, non-prefetchable) [size=16M]
\tRegion 1: Memory at 2ff00000000 (64-bit, prefetchable) [size=256M]
\tRegion 3: Memory at 2ff10000000 (64-bit, prefetchable)
\tRegion 5: I/O ports at <unassigned> [disabled]
\tExpansion ROM at d2000000 [virtual] [disabled] [size=512K]
\tCapabilities: [60] Power Management version 3
\t\tFlags: PMEClk- DSI- D1- D2- AuxCurrent=0mA PME(D0+,D1-,D2-,D3hot+,D3cold-)
\t\tStatus: D0 NoSoftRst+ PME-Enable- DSel=0 DScale=0 PME-
\tCapabilities: [68] MSI: Enable- Count=1/1 Maskable- 64bit+
\t\tAddress: 0000000000000000  Data: 0000
\tCapabilities: [78] Express (v2) Endpoint, MSI 00
\t\tDevCap:\tMaxPayload 256 bytes, PhantFunc 0, Latency L0s unlimited, L1 <64us
\t\t\tExtTag+ AttnBtn- AttnInd- PwrInd- RBE+ FLReset+ SlotPowerLimit 75.000W
\t\tLnkSta:\tSpeed 8GT/s (ok), Width x16 (ok)
\tCapabilities: [c8] MSI-X: Enable+ Count=6 Masked-
\t\tVector table: BAR=0 offset=00b90000
\t\tPBA: BAR=0 offset=00ba0000
\tCapabilities: [100 v1] Virtual Channel
\t\tCaps:\tLPEVC=0 RefClk=100ns PATEntryBits=1
\tCapabilities: [128 v1] Power Budgeting <?>
\tCapabilities: [420 v2] Advanced Error Reporting
\t\tUESta:\tDLP- SDES- TLP- FCP- CmpltTO- CmpltAbrt- UnxCmplt- RxOF- MalfTLP- ECRC- UnsupReq- ACSViol-
\tCapabilities: [600 v1] Vendor Specific Information: ID=0001 Rev=1 Len=024 <?>
\tCapabilities: [900 v1] Secondary PCI Express
\tCapabilities: [bb0 v1] Physical Resizable BAR
\t\tBAR 1: current size: 256MB, supported: 256MB 512MB 1GB 2GB 4GB 8GB 16GB
\tCapabilities: [bcc v1] Single Root I/O Virtualization (SR-IOV)
\tCapabilities: [c14 v1] Alternative Routing-ID Interpretation (ARI)
\tKernel driver in use: vfio-pci
\tKernel modules: nvidiafb, nouveau

0000:05:00.0 Ethernet controller [0200]: Intel Corporation 82574L Gigabit Network Connection [8086:10d3]
\tSubsystem: Intel Corporation Gigabit CT Desktop Adapter [8086:a01f]
\tControl: I/O+ Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx+
\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
\tRegion 0: Memory at f7c00000 (32-bit, non-prefetchable) [size=128K]
\tRegion 1: Memory at f7b00000 (32-bit, non-prefetchable) [size=512K]
\tRegion 2: I/O ports at e000 [size=32]
\tRegion 3: Memory at f7c20000 (32-bit, non-prefetchable) [size=16K]
\tExpansion ROM at f7a00000 [disabled] [size=512K]
\tCapabilities: [c8] Power Management version 2
\tCapabilities: [d0] MSI: Enable- Count=1/1 Maskable- 64bit+
\tCapabilities: [e0] Express (v1) Endpoint, MSI 00
\tCapabilities: [a0] MSI-X: Enable+ Count=5 Masked-
\t\tVector table: BAR=3 offset=00000000
\t\tPBA: BAR=3 offset=00002000
\tCapabilities: [100 v1] Advanced Error Reporting
\tCapabilities: [140 v1] Device Serial Number 00-1b-21-ff-ff-4c-2b-aa
\tKernel driver in use: e1000e
";

#[test]
fn non_root_names_only() {
    let devs = lspci::parse_devices(NON_ROOT_NAMES).unwrap();
    assert_eq!(devs.len(), 3);
    let nvme = &devs[1];
    assert_eq!(nvme.bdf(), Bdf::new(0, 1, 0));
    assert_eq!(nvme.class_name(), "Non-Volatile memory controller");
    assert_eq!(
        nvme.description(),
        "Red Hat, Inc. QEMU NVM Express Controller"
    );
    assert_eq!(nvme.vendor_id(), None, "names-only output carries no IDs");
    assert_eq!(nvme.revision(), Some(2));
    assert_eq!(nvme.prog_if(), Some(2));
    assert!(nvme.capabilities_access_denied());
    assert!(nvme.capabilities().is_empty());
    assert!(nvme.msix().is_none());
    assert_eq!(nvme.interrupt_pin(), Some(1));
    assert_eq!(nvme.irq(), Some(11));
    let cmd = nvme.command().unwrap();
    assert!(cmd.memory() && cmd.io() && cmd.bus_master() && cmd.intx_disabled());
    assert!(nvme.status().unwrap().has_capabilities());
    let bar = nvme.bar(0).unwrap();
    assert_eq!(bar.kind, BarKind::Memory64);
    assert!(!bar.prefetchable);
    assert_eq!(bar.address, Some(0xfebd_0000));
    assert_eq!(bar.size, Some(0x4000));
    assert!(bar.is_64bit() && bar.is_assigned() && !bar.is_io());
    assert_eq!(nvme.kernel_driver(), Some("nvme"));
    assert_eq!(nvme.kernel_modules(), ["nvme".to_string()]);
    assert!(nvme.config_bytes().is_none());
    assert!(matches!(
        nvme.to_config_space(),
        Err(LspciError::NoHexDump { bdf: Some(_) })
    ));

    let sata = &devs[2];
    assert_eq!(sata.bdf(), "00:1f.2".parse().unwrap());
    assert_eq!(sata.bars().len(), 2);
    let io = sata.bar(4).unwrap();
    assert_eq!(
        (io.kind, io.address, io.size),
        (BarKind::Io, Some(0xc040), Some(32))
    );
    assert_eq!(sata.bar(5).unwrap().size, Some(4096));
    // "[AHCI mode]" in the name is not mistaken for IDs
    assert!(sata.description().ends_with("[AHCI mode]"));
}

#[test]
fn root_nn_gpu() {
    let gpu = lspci::find_device(ROOT_NN, "0000:3b:00.0".parse().unwrap()).unwrap();
    assert_eq!(
        (gpu.vendor_id(), gpu.device_id()),
        (Some(0x10de), Some(0x1eb8))
    );
    assert_eq!(gpu.description(), "NVIDIA Corporation TU104GL [Tesla T4]");
    assert_eq!(gpu.class_code(), Some(0x0302));
    assert_eq!(gpu.class_name(), "3D controller");
    assert_eq!(gpu.revision(), Some(0xa1));
    assert_eq!(gpu.subsystem_ids(), Some((0x10de, 0x12a2)));
    assert_eq!(gpu.iommu_group(), Some(22));
    assert_eq!(gpu.physical_slot(), Some("2"));
    // Status of the PM capability must not overwrite the device Status line
    assert!(gpu.status().unwrap().has_capabilities());
    let bar1 = gpu.bar(1).unwrap();
    assert_eq!(bar1.kind, BarKind::Memory64);
    assert!(bar1.prefetchable);
    assert_eq!(bar1.address, Some(0x2ff_0000_0000));
    assert_eq!(bar1.size, Some(256 << 20));
    let bar3 = gpu.bar(3).unwrap();
    assert_eq!((bar3.address, bar3.size), (Some(0x2ff_1000_0000), None));
    let bar5 = gpu.bar(5).unwrap();
    assert_eq!(
        (bar5.kind, bar5.address, bar5.disabled),
        (BarKind::Io, None, true)
    );
    let rom = gpu.rom().unwrap();
    assert_eq!(rom.address, Some(0xd200_0000));
    assert!(rom.disabled && rom.is_virtual);
    assert_eq!(rom.size, Some(512 << 10));

    let offs: Vec<u16> = gpu.capabilities().iter().map(|c| c.offset).collect();
    assert_eq!(
        offs,
        [
            0x60, 0x68, 0x78, 0xc8, 0x100, 0x128, 0x420, 0x600, 0x900, 0xbb0, 0xbcc, 0xc14
        ]
    );
    let ids: Vec<Option<CapId>> = gpu.capabilities().iter().map(|c| c.id).collect();
    use CapId::{Extended as E, Standard as S};
    assert_eq!(
        ids,
        [
            Some(S(CapabilityId::POWER_MANAGEMENT)),
            Some(S(CapabilityId::MSI)),
            Some(S(CapabilityId::EXPRESS)),
            Some(S(CapabilityId::MSIX)),
            Some(E(ExtCapabilityId::VIRTUAL_CHANNEL)),
            Some(E(ExtCapabilityId::POWER_BUDGETING)),
            Some(E(ExtCapabilityId::AER)),
            Some(E(ExtCapabilityId::VENDOR_SPECIFIC)),
            Some(E(ExtCapabilityId::SECONDARY_PCIE)),
            Some(E(ExtCapabilityId::RESIZABLE_BAR)),
            Some(E(ExtCapabilityId::SRIOV)),
            Some(E(ExtCapabilityId::ARI)),
        ]
    );
    assert_eq!(gpu.capabilities()[6].version, Some(2));
    assert_eq!(gpu.capabilities()[0].details.len(), 2);
    assert_eq!(gpu.capabilities()[2].details.len(), 3);
    let msix = gpu.msix().unwrap();
    assert_eq!(msix.offset, 0xc8);
    assert!(msix.enabled && !msix.function_masked);
    assert_eq!(msix.table_size, 6);
    assert_eq!(
        msix.table,
        Some(BarOffset {
            bir: 0,
            offset: 0xb9_0000
        })
    );
    assert_eq!(
        msix.pba,
        Some(BarOffset {
            bir: 0,
            offset: 0xba_0000
        })
    );
    let msi = gpu.msi().unwrap();
    assert!(!msi.enabled && msi.is_64bit && !msi.maskable);
    assert_eq!((msi.vectors_enabled, msi.vectors_capable), (1, 1));
    assert_eq!((msi.address, msi.data), (Some(0), Some(0)));
    assert_eq!(gpu.kernel_driver(), Some("vfio-pci"));
    assert_eq!(
        gpu.kernel_modules(),
        ["nvidiafb".to_string(), "nouveau".to_string()]
    );
}

#[test]
fn root_nn_nic_with_msix_in_bar3() {
    let nic = lspci::find_device(ROOT_NN, "05:00.0".parse().unwrap()).unwrap();
    assert_eq!(nic.bdf().to_string(), "0000:05:00.0");
    assert_eq!(
        (nic.vendor_id(), nic.device_id()),
        (Some(0x8086), Some(0x10d3))
    );
    assert_eq!(nic.revision(), None, "lspci omits revision 0");
    assert_eq!(nic.bars().len(), 4);
    assert_eq!(nic.bar(2).unwrap().kind, BarKind::Io);
    let m = nic.msix().unwrap();
    assert_eq!(m.table_size, 5);
    assert_eq!(m.table.unwrap().bir, 3);
    assert_eq!(
        m.pba.unwrap(),
        BarOffset {
            bir: 3,
            offset: 0x2000
        }
    );
    assert_eq!(
        nic.capabilities().last().unwrap().id,
        Some(CapId::Extended(ExtCapabilityId::DEVICE_SERIAL_NUMBER))
    );
}

#[test]
fn numeric_and_single_v_forms() {
    let text = "\
00:02.0 0200: 8086:10d3
\tSubsystem: 8086:0000
\tFlags: bus master, fast devsel, latency 0, IRQ 22
\tMemory at feb80000 (32-bit, non-prefetchable) [size=128K]
\tMemory at feba0000 (32-bit, non-prefetchable) [size=128K]
\tI/O ports at c000 [size=32]
\tMemory at febd4000 (32-bit, non-prefetchable) [size=16K]
\t[virtual] Expansion ROM at feb40000 [disabled] [size=256K]
\tCapabilities: [a0] MSI-X: Enable+ Count=5 Masked-
";
    let d = &lspci::parse_devices(text).unwrap()[0];
    assert_eq!((d.vendor_id(), d.device_id()), (Some(0x8086), Some(0x10d3)));
    assert_eq!(d.class_code(), Some(0x0200));
    assert_eq!(d.subsystem_ids(), Some((0x8086, 0)));
    assert!(d.command().unwrap().bus_master());
    assert_eq!(d.irq(), Some(22));
    let idx: Vec<u8> = d.bars().iter().map(|b| b.index).collect();
    assert_eq!(
        idx,
        [0, 1, 2, 3],
        "-v output without `Region N:` is numbered in order"
    );
    assert!(d.rom().unwrap().is_virtual);
    let m = d.msix().unwrap();
    assert_eq!(m.table_size, 5);
    assert_eq!(m.table, None, "-v does not print the vector table line");
}

#[test]
fn unknown_ids_and_odd_lines() {
    let text = "\
$ sudo lspci -vvv -s 01:00.0
01:00.0 Class [ff00]: Device [1234:abcd] (rev 01)
\tControl: I/O- Mem- BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx-
\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=slow >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx+
\tRegion 0: Memory at <unassigned> (64-bit, non-prefetchable) [disabled] [size=1M]
\tRegion 2: Memory at <ignored> (low-1M, prefetchable) [disabled]
\tCapabilities: [40] #21 [0000]
\tCapabilities: [50] <chain looped>
\tSomething new in lspci 9.9: ignored
";
    let d = &lspci::parse_devices(text).unwrap()[0];
    assert_eq!((d.vendor_id(), d.device_id()), (Some(0x1234), Some(0xabcd)));
    assert_eq!(d.status().unwrap().0 & (3 << 9), 2 << 9);
    assert!(d.status().unwrap().interrupt());
    let b0 = d.bar(0).unwrap();
    assert_eq!(
        (b0.address, b0.size, b0.disabled),
        (None, Some(1 << 20), true)
    );
    assert_eq!(d.bar(2).unwrap().kind, BarKind::Memory32);
    assert_eq!(d.capabilities().len(), 1);
    assert_eq!(
        d.capabilities()[0].id,
        Some(CapId::Standard(CapabilityId(0x21)))
    );
}

#[test]
fn crlf_and_space_indentation() {
    let text = "00:03.0 Ethernet controller [0200]: Red Hat, Inc. Virtio network device [1af4:1000]\r\n        Region 0: I/O ports at c060 [size=32]\r\n        Capabilities: [98] MSI-X: Enable+ Count=3 Masked-\r\n                Vector table: BAR=4 offset=00000000\r\n                PBA: BAR=4 offset=00000800\r\n        Kernel driver in use: virtio-pci\r\n";
    let d = &lspci::parse_devices(text).unwrap()[0];
    assert_eq!(d.vendor_id(), Some(0x1af4));
    assert_eq!(d.msix().unwrap().pba.unwrap().offset, 0x800);
    assert_eq!(d.kernel_driver(), Some("virtio-pci"));
}

#[test]
fn errors_name_the_line() {
    assert_eq!(
        lspci::parse_devices("no devices here\n"),
        Err(LspciError::NoDevices)
    );
    let e = lspci::find_device(ROOT_NN, "00:1f.0".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("0000:3b:00.0, 0000:05:00.0"), "{e}");
    let bad = "00:01.0 Foo: Bar\n\tRegion 0: Memory at xyz (32-bit, non-prefetchable)\n";
    match lspci::parse_devices(bad) {
        Err(LspciError::BadLine { line: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    let bad = "00:01.0 Foo: Bar\n\tRegion 9: Memory at 1000 (32-bit, non-prefetchable)\n";
    assert!(matches!(
        lspci::parse_devices(bad),
        Err(LspciError::BadLine { line: 2, .. })
    ));
    let bad = "00:01.0 Foo: Bar\n\tCapabilities: [zz] MSI\n";
    assert!(matches!(
        lspci::parse_devices(bad),
        Err(LspciError::BadLine { line: 2, .. })
    ));
    let bad = "00: 86 80 d3 10 07 04 10 00 00 00 00 02 00 00 00 00\n";
    assert!(matches!(
        lspci::parse_devices(bad),
        Err(LspciError::BadLine { line: 1, .. })
    ));
    let bad = "00:01.0 Foo: Bar\n00: 86 80 d3 10 07 04 10 00 00 00 00 02 00 00 00\n";
    let e = lspci::parse_devices(bad).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("line 2: hex dump line must have exactly 16 bytes"),
        "{e}"
    );
}

#[test]
fn hex_fills_what_text_lacks() {
    // `lspci -x` as non-root: only 64 bytes, text without IDs.
    let text = "\
00:02.0 Ethernet controller: Intel Corporation 82574L Gigabit Network Connection
\tCapabilities: <access denied>
00: 86 80 d3 10 07 05 10 00 00 00 00 02 00 00 00 00
10: 00 00 b8 fe 00 00 ba fe 01 c0 00 00 00 40 bd fe
20: 00 00 00 00 00 00 00 00 00 00 00 00 86 80 00 00
30: 00 00 b4 fe c8 00 00 00 00 00 00 00 0a 01 00 00
";
    let d = &lspci::parse_devices(text).unwrap()[0];
    assert_eq!((d.vendor_id(), d.device_id()), (Some(0x8086), Some(0x10d3)));
    assert_eq!(d.config_bytes().unwrap().len(), 64);
    assert_eq!(d.config_bytes_dumped(), 64);
    assert_eq!(
        d.bars().len(),
        4,
        "BARs come from the hex when the text has none"
    );
    assert_eq!(d.bar(3).unwrap().address, Some(0xfebd_4000));
    assert_eq!(d.bar(2).unwrap().kind, BarKind::Io);
    assert!(
        d.capabilities().is_empty(),
        "a 64-byte dump holds no capabilities"
    );
    let space = d.to_config_space().unwrap();
    assert_eq!(space.len(), 256);
    assert_eq!(space.ids().device_id, 0x10d3);
}
