//! The ACPI tables Linux finds the machine by (built with rust-vmm's `acpi_tables`).
//!
//! Why ACPI and not an MP table: an MP table describes CPUs, the IOAPIC and ISA interrupts well
//! enough, but a Linux without ACPI has no way to power the machine off (`poweroff` ends in
//! `machine_halt`, every CPU in `hlt` with interrupts off, which a VMM cannot tell from an idle
//! guest). With ACPI Linux powers off through the FADT's sleep control register and resets
//! through its reset register, both plain port writes refvmm sees. Once ACPI is there, Linux
//! scans PCI only through the DSDT's host bridges (arch/x86/pci/acpi.c: `pci_acpi_init` returns
//! 0, so `pci_legacy_init` never runs), so the DSDT must describe the root bridge too. The
//! tables are the fewest that do all of this:
//!
//! | table | what Linux takes from it |
//! |---|---|
//! | RSDP | the XSDT (also in the zero page's `acpi_rsdp_addr`) |
//! | XSDT | FADT, MADT, MCFG |
//! | FADT | hardware-reduced ACPI (no PM1 blocks, SCI, PM timer or legacy PIC: Linux then skips the PIT and 8259, `acpi_generic_reduced_hw_init`), the sleep control/status registers, the reset register, no 8042 or VGA, and no CMOS RTC for Linux's `rtc_cmos` (the CMOS ports answer; see `IAPC_BOOT_ARCH`) |
//! | DSDT | `\_SB.PCI0` (PNP0A08, bus 0, its I/O and memory windows: the windows refvmm places BARs in, so Linux claims those BARs as they are and does not move them; `_PRT`: the INTx wiring), `\_SB.COM1` (PNP0501 with its port and IRQ 4), and `\_S5` |
//! | MADT | one local APIC per vCPU (APIC ID = vCPU id), the IOAPIC at 0xFEC0_0000 with GSIs 0-23; no overrides: KVM's default routing sends ISA IRQ n to IOAPIC pin n, which is also Linux's default |
//! | MCFG | ECAM at [`ECAM_BASE`] for bus 0 (the one bus; see [`LAST_BUS`]), reserved in e820 so Linux accepts it. Linux then reads and writes the first 256 bytes of each function through conf1 (arch/x86/pci/common.c: type 1 is preferred for the base space when it works) and the extended space through ECAM; without the MCFG it would have no extended space |

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Interrupt, Name, Package, Path,
    ResourceTemplate,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};

use crate::pci::{CONF1_PORT, ECAM_BASE, IO_WINDOW, MEM32_WINDOW, intx_gsi};
use crate::serial::{COM1_GSI, COM1_PORT};

use super::ACPI_TABLES;
use super::power::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLP_TYP_S5};

const OEM_ID: [u8; 6] = *b"REFVMM";
const OEM_TABLE_ID: [u8; 8] = *b"REFVMM  ";
const OEM_REVISION: u32 = 1;
/// The local APICs' MMIO base (every vCPU's, as on real hardware).
pub const LAPIC_BASE: u32 = 0xfee0_0000;
/// The IOAPIC's MMIO base and the ID refvmm gives it (QEMU's too).
pub const IOAPIC_BASE: u32 = 0xfec0_0000;
const IOAPIC_ID: u8 = 0;
/// FADT `IAPC_BOOT_ARCH` (ACPI 6.5, 5.2.9.3): bit 2 VGA not present, bit 4 PCIe ASPM
/// controls (the OS must not touch ASPM), bit 5 CMOS RTC not present. Bit 1 (8042) stays clear.
///
/// The CMOS at 0x70/0x71 does answer (its NVRAM and time registers, `crate::cmos`), but it is
/// not offered to Linux as an RTC: its `rtc_cmos` driver would take IRQ 8 for alarms and update
/// interrupts, which this machine never raises, so `hwclock` would wait for them until it times
/// out. Linux under KVM takes its wall clock from kvmclock; with bit 5 set it registers no
/// `rtc_cmos` platform device (arch/x86/kernel/acpi/boot.c, `ACPI_FADT_NO_CMOS_RTC`).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 4) | (1 << 5);

/// The tables, laid out for [`ACPI_TABLES`]: the RSDP first, each table 16-byte aligned.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// The bytes to copy to [`ACPI_TABLES`].
    pub bytes: Vec<u8>,
    /// Guest physical address of each table, by signature ("RSD PTR " for the RSDP).
    pub addresses: Vec<([u8; 4], u64)>,
}

impl AcpiTables {
    /// The tables for `cpus` vCPUs with APIC IDs 0..cpus, and the 64-bit PCI window
    /// `[base, end)` the BARs are placed in.
    pub fn build(cpus: u32, mem64_window: (u64, u64)) -> AcpiTables {
        let mut t = AcpiTables {
            bytes: vec![0; 64],
            addresses: vec![(*b"RSD ", ACPI_TABLES)],
        };
        let dsdt = t.push(*b"DSDT", &dsdt(mem64_window));
        let fadt = t.push(*b"FACP", &fadt(dsdt));
        let madt = t.push(*b"APIC", &madt(cpus));
        let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        mcfg.add_ecam(ECAM_BASE, 0, 0, LAST_BUS);
        let mcfg = t.push(*b"MCFG", &mcfg);
        let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        for table in [fadt, madt, mcfg] {
            xsdt.add_entry(table);
        }
        let xsdt = t.push(*b"XSDT", &xsdt);
        let mut rsdp = Vec::new();
        Rsdp::new(OEM_ID, xsdt).to_aml_bytes(&mut rsdp);
        t.bytes[..rsdp.len()].copy_from_slice(&rsdp);
        t
    }

    /// Appends `table` 16-byte aligned; its guest physical address.
    fn push(&mut self, signature: [u8; 4], table: &dyn Aml) -> u64 {
        self.bytes.resize(self.bytes.len().next_multiple_of(16), 0);
        let addr = ACPI_TABLES + self.bytes.len() as u64;
        table.to_aml_bytes(&mut self.bytes);
        self.addresses.push((signature, addr));
        addr
    }
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::Headless);
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.reset_reg = io_gas(RESET_PORT);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = io_gas(SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_gas(SLEEP_STATUS_PORT);
    b.finalize()
}

fn madt(cpus: u32) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_BASE),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(
            id as u8,
            id as u8,
            EnabledStatus::Enabled,
        ));
    }
    madt.add_structure(IoApic::new(IOAPIC_ID, IOAPIC_BASE, 0));
    madt
}

/// `_PRT` entries (ACPI 6.5, 6.2.13 "_PRT (PCI Routing Table)"): (address `slot << 16 | 0xFFFF`,
/// pin 0-3 for INTA-INTD, source 0 = a GSI, the GSI). refvmm wires the INTx of the device in
/// slot d to one GSI whatever pin it uses ([`crate::pci::intx_gsi`]); the table says the
/// same for every pin of slots 1-31, so Linux routes an INTx-only device (with MSI or MSI-X it
/// needs none). Direct GSIs are level-triggered and active-low by the spec; KVM's IOAPIC takes
/// the line level as it is raised, whatever polarity the guest programs.
fn prt_entries() -> Vec<(u32, u8, u8, u32)> {
    (1u8..32)
        .flat_map(|slot| {
            (0u8..4).map(move |pin| (u32::from(slot) << 16 | 0xffff, pin, 0u8, intx_gsi(slot)))
        })
        .collect()
}

/// COM1 as an ACPI device. Hardware-reduced ACPI has no legacy PIC, and Linux then sets up no
/// ISA IRQ by itself (`mp_config_acpi_legacy_irqs` covers `nr_legacy_irqs()`, which is 0 without
/// the PIC): IRQ 4 reaches the IOAPIC only when a device's `_CRS` names it, as here (what
/// cloud-hypervisor does too). Without it the 8250 driver's transmit interrupt never comes and
/// everything written to the console through the tty layer (all of user space) stalls; only
/// printk's polled writes get out.
fn com1(sink: &mut dyn AmlSink) {
    let hid = EISAName::new("PNP0501");
    let zero = 0u8;
    let irq = Interrupt::new(true, true, false, false, COM1_GSI);
    let ports = IO::new(COM1_PORT, COM1_PORT, 0, 8);
    let crs = ResourceTemplate::new(vec![&irq, &ports]);
    let hid = Name::new("_HID".into(), &hid);
    let uid = Name::new("_UID".into(), &zero);
    let crs = Name::new("_CRS".into(), &crs);
    Device::new(Path::new("_SB_.COM1"), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

/// The last bus number the tables give the root bridge and the ECAM window: refvmm has bus 0 and
/// no bridges. Not 255: x86 Linux takes the MCFG's last bus as the highest bus to probe for peer
/// host bridges, and reads a vendor ID from 32 functions of every bus up to it through conf1
/// (arch/x86/pci/legacy.c, `pcibios_fixup_peer_bridges`): about 16,000 exits at boot for buses
/// that do not exist. cloud-hypervisor's MCFG gives each segment bus 0 only as well.
const LAST_BUS: u8 = 0;

/// The DSDT's AML: `\_SB.PCI0`, `\_SB.COM1` and `\_S5`.
fn dsdt(mem64_window: (u64, u64)) -> Sdt {
    let mut sdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // The root bridge's windows: bus numbers, the conf1 ports it decodes, I/O below and above
    // them (ISA devices such as COM1 sit there too, as on a PC) and the two BAR windows.
    let buses = AddressSpace::new_bus_number(0u16, u16::from(LAST_BUS));
    let conf1 = IO::new(CONF1_PORT, CONF1_PORT, 1, 8);
    let io_low = AddressSpace::new_io(0u16, CONF1_PORT - 1, None);
    let io_high = AddressSpace::new_io(CONF1_PORT + 8, (IO_WINDOW.1 - 1) as u16, None);
    let mem32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        MEM32_WINDOW.0 as u32,
        (MEM32_WINDOW.1 - 1) as u32,
        None,
    );
    let mem64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mem64_window.0,
        mem64_window.1 - 1,
        None,
    );
    let crs = ResourceTemplate::new(vec![&buses, &conf1, &io_low, &io_high, &mem32, &mem64]);
    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let zero = 0u8;
    let hid = Name::new("_HID".into(), &hid);
    let cid = Name::new("_CID".into(), &cid);
    let adr = Name::new("_ADR".into(), &zero);
    let seg = Name::new("_SEG".into(), &zero);
    let uid = Name::new("_UID".into(), &zero);
    let bbn = Name::new("_BBN".into(), &zero);
    let crs = Name::new("_CRS".into(), &crs);
    let prt_entries = prt_entries();
    let prt_packages: Vec<Package> = prt_entries
        .iter()
        .map(|(addr, pin, source, gsi)| Package::new(vec![addr, pin, source, gsi]))
        .collect();
    let prt = Package::new(prt_packages.iter().map(|p| p as &dyn Aml).collect());
    let prt = Name::new("_PRT".into(), &prt);
    Device::new(
        Path::new("_SB_.PCI0"),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs, &prt],
    )
    .to_aml_bytes(&mut sdt);
    com1(&mut sdt);
    // \_S5: SLP_TYPa, SLP_TYPb (ACPI 6.5, 7.4.2 "\_Sx (System States)").
    let slp_typ = SLP_TYP_S5;
    Name::new("_S5_".into(), &Package::new(vec![&slp_typ, &slp_typ])).to_aml_bytes(&mut sdt);
    sdt.update_checksum();
    sdt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::MEM64_WINDOW;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The table at guest address `addr`: checked to lie inside the blob, with a sane length and
    /// a zero checksum.
    fn table(t: &AcpiTables, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let at = (addr - ACPI_TABLES) as usize;
        assert_eq!(&t.bytes[at..at + 4], signature, "table at {addr:#x}");
        let len = u32_at(&t.bytes, at + 4) as usize;
        assert!(
            len >= 36 && at + len <= t.bytes.len(),
            "{signature:?} length {len}"
        );
        let b = t.bytes[at..at + len].to_vec();
        assert_eq!(sum(&b), 0, "{signature:?} checksum");
        b
    }

    #[test]
    fn every_pointer_resolves_and_every_checksum_holds() {
        let t = AcpiTables::build(2, MEM64_WINDOW);
        let rsdp = &t.bytes[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: XSDT");
        let xsdt = table(&t, u64_at(rsdp, 24), b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        assert_eq!(entries.len(), 3);
        let fadt = table(&t, entries[0], b"FACP");
        table(&t, entries[1], b"APIC");
        table(&t, entries[2], b"MCFG");
        table(&t, u64_at(&fadt, 140), b"DSDT");
        assert_eq!(u32_at(&fadt, 40), 0, "the 32-bit DSDT pointer is unused");
        // Everything fits in the reserved BIOS area the e820 map keeps from Linux.
        assert!(ACPI_TABLES + t.bytes.len() as u64 <= super::super::HIGHMEM_START);
        let listed: Vec<&[u8; 4]> = t.addresses.iter().map(|(s, _)| s).collect();
        assert_eq!(
            listed,
            [b"RSD ", b"DSDT", b"FACP", b"APIC", b"MCFG", b"XSDT"]
        );
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let t = AcpiTables::build(1, MEM64_WINDOW);
        let fadt = table(&t, t.addresses[2].1, b"FACP");
        assert_eq!(fadt.len(), 276, "ACPI 6.5 FADT");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(
            u16::from_le_bytes([fadt[109], fadt[110]]),
            0x34,
            "IAPC_BOOT_ARCH"
        );
        // Generic address structures: system I/O, 8 bits, offset 0, byte access, the port.
        let gas = |at: usize| (fadt[at..at + 4].to_vec(), u64_at(&fadt, at + 4));
        assert_eq!(gas(116), (vec![1, 8, 0, 1], 0x602), "RESET_REG");
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(gas(244), (vec![1, 8, 0, 1], 0x600), "SLEEP_CONTROL_REG");
        assert_eq!(gas(256), (vec![1, 8, 0, 1], 0x601), "SLEEP_STATUS_REG");
    }

    #[test]
    fn madt_golden_bytes() {
        let t = AcpiTables::build(2, MEM64_WINDOW);
        let madt = table(&t, t.addresses[3].1, b"APIC");
        assert_eq!(u32_at(&madt, 36), LAPIC_BASE);
        assert_eq!(
            &madt[44..],
            &[
                0, 8, 0, 0, 1, 0, 0, 0, // local APIC: UID 0, APIC ID 0, enabled
                0, 8, 1, 1, 1, 0, 0, 0, // local APIC: UID 1, APIC ID 1, enabled
                1, 12, 0, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0,
                0, // IOAPIC 0 at 0xfec00000, GSI 0
            ]
        );
    }

    #[test]
    fn mcfg_names_the_ecam_window() {
        let t = AcpiTables::build(1, MEM64_WINDOW);
        let mcfg = table(&t, t.addresses[4].1, b"MCFG");
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(u64_at(&mcfg, 44), ECAM_BASE);
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 0], "segment 0, bus 0 only");
    }

    #[test]
    fn dsdt_has_the_root_bridge_its_windows_and_s5() {
        let t = AcpiTables::build(1, MEM64_WINDOW);
        let dsdt = table(&t, t.addresses[1].1, b"DSDT");
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        // Name(_S5_, Package(2) { 5, 5 }).
        assert!(has(&[
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x0a, 5, 0x0a, 5
        ]));
        assert!(has(b"PCI0"));
        // _PRT: slot 1 INTA on GSI 17 (DWord address 0x1FFFF, Zero pin, Zero source, BytePrefix
        // 17), slot 31 INTD on GSI 19.
        assert!(has(b"_PRT"));
        assert!(has(&[
            0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x0a, 17
        ]));
        assert!(has(&[
            0x12, 0x0c, 0x04, 0x0c, 0xff, 0xff, 0x1f, 0x00, 0x0a, 3, 0x00, 0x0a, 19
        ]));
        // COM1: _HID EISAID("PNP0501"); Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {4};
        // IO(Decode16, 0x3F8, 0x3F8, 0, 8).
        assert!(has(b"COM1"));
        assert!(has(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00]));
        assert!(has(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08]));
        // _HID EISAID("PNP0A08"), _CID EISAID("PNP0A03") as DWords.
        assert!(has(&[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x08]));
        assert!(has(&[b'_', b'C', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03]));
        // The 32-bit window: DWord memory descriptor's min and max.
        let mut mem32 = (MEM32_WINDOW.0 as u32).to_le_bytes().to_vec();
        mem32.extend_from_slice(&((MEM32_WINDOW.1 - 1) as u32).to_le_bytes());
        assert!(has(&mem32));
        let mut mem64 = MEM64_WINDOW.0.to_le_bytes().to_vec();
        mem64.extend_from_slice(&(MEM64_WINDOW.1 - 1).to_le_bytes());
        assert!(has(&mem64));
        // The I/O window refvmm places I/O BARs in lies in the high I/O range.
        assert!(has(&[0x00, 0x0d, 0xff, 0xff]), "WordIO 0x0d00-0xffff");
        // WordBusNumber: descriptor 0x88, resource type 2 (bus numbers), then granularity 0,
        // minimum 0, maximum 0, translation 0, length 1: bus 0 only.
        let bus = dsdt.windows(4).position(|w| w[0] == 0x88 && w[3] == 2);
        let bus = &dsdt[bus.expect("a WordBusNumber descriptor") + 6..][..10];
        assert_eq!(bus, &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "bus 0 only");
    }
}
