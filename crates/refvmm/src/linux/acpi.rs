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
//! | FADT | hardware-reduced ACPI (no PM1 blocks, SCI, PM timer or legacy PIC: Linux then skips the PIT and 8259, `acpi_generic_reduced_hw_init`), the sleep control/status registers, the reset register, no 8042, VGA or CMOS RTC |
//! | DSDT | `\_SB.PCI0` (PNP0A08, bus 0-255, its I/O and memory windows: the windows refvmm places BARs in, so Linux claims those BARs as they are and does not move them), and `\_S5` |
//! | MADT | one local APIC per vCPU (APIC ID = vCPU id), the IOAPIC at 0xFEC0_0000 with GSIs 0-23; no overrides: KVM's default routing sends ISA IRQ n to IOAPIC pin n, which is also Linux's default |
//! | MCFG | ECAM at [`ECAM_BASE`] for bus 0-255 (reserved in e820, so Linux uses it) |

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Name, Package, Path,
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

use crate::pci::{CONF1_PORT, ECAM_BASE, IO_WINDOW, MEM32_WINDOW, MEM64_WINDOW};

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
    /// The tables for `cpus` vCPUs with APIC IDs 0..cpus.
    pub fn build(cpus: u32) -> AcpiTables {
        let mut t = AcpiTables {
            bytes: vec![0; 64],
            addresses: vec![(*b"RSD ", ACPI_TABLES)],
        };
        let dsdt = t.push(*b"DSDT", &dsdt());
        let fadt = t.push(*b"FACP", &fadt(dsdt));
        let madt = t.push(*b"APIC", &madt(cpus));
        let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        mcfg.add_ecam(ECAM_BASE, 0, 0, 255);
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

/// The DSDT's AML: `\_SB.PCI0` and `\_S5`.
fn dsdt() -> Sdt {
    let mut sdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // The root bridge's windows: bus numbers, the conf1 ports it decodes, I/O below and above
    // them (ISA devices such as COM1 sit there too, as on a PC) and the two BAR windows.
    let buses = AddressSpace::new_bus_number(0u16, 0xff);
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
        MEM64_WINDOW.0,
        MEM64_WINDOW.1 - 1,
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
    Device::new(
        Path::new("_SB_.PCI0"),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs],
    )
    .to_aml_bytes(&mut sdt);
    // \_S5: SLP_TYPa, SLP_TYPb (ACPI 6.5, 7.4.2 "\_Sx (System States)").
    let slp_typ = SLP_TYP_S5;
    Name::new("_S5_".into(), &Package::new(vec![&slp_typ, &slp_typ])).to_aml_bytes(&mut sdt);
    sdt.update_checksum();
    sdt
}
