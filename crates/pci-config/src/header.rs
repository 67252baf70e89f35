//! The predefined header: register offsets, Command/Status bits, header types and the default
//! masks of type 0 (endpoint) and type 1 (PCI-to-PCI bridge) headers.
//!
//! References: PCI Local Bus 3.0 §6.2 (type 0), PCI-to-PCI Bridge Architecture 1.2 §3.2
//! (type 1), PCI Express Base 4.0 §7.5.1 (what PCIe hardwires).

use crate::registers::{BitKind, RegisterFile};

/// Register offsets of the predefined header.
pub mod offset {
    /// Vendor ID (16 bits, read-only).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits, read-only).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface, low byte of the class code.
    pub const CLASS_PROG: u16 = 0x09;
    /// Sub-class code.
    pub const SUB_CLASS: u16 = 0x0a;
    /// Base class code.
    pub const BASE_CLASS: u16 = 0x0b;
    /// Cache line size (8 bits, read-write).
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    /// Latency timer (8 bits).
    pub const LATENCY_TIMER: u16 = 0x0d;
    /// Header type; bit 7 is the multi-function bit.
    pub const HEADER_TYPE: u16 = 0x0e;
    /// Built-in self test.
    pub const BIST: u16 = 0x0f;
    /// First base address register.
    pub const BAR0: u16 = 0x10;
    /// Type 0: CardBus CIS pointer.
    pub const CARDBUS_CIS: u16 = 0x28;
    /// Type 0: subsystem vendor ID.
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Type 0: subsystem ID.
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Type 0: expansion ROM base address.
    pub const ROM_ADDRESS: u16 = 0x30;
    /// Capabilities pointer (both header types).
    pub const CAPABILITY_LIST: u16 = 0x34;
    /// Interrupt line (8 bits, read-write, no hardware effect).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin: 0 none, 1..4 INTA#..INTD#.
    pub const INTERRUPT_PIN: u16 = 0x3d;
    /// Type 0: Min_Gnt.
    pub const MIN_GNT: u16 = 0x3e;
    /// Type 0: Max_Lat.
    pub const MAX_LAT: u16 = 0x3f;
    /// Type 1: primary bus number.
    pub const PRIMARY_BUS: u16 = 0x18;
    /// Type 1: secondary bus number.
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Type 1: subordinate bus number.
    pub const SUBORDINATE_BUS: u16 = 0x1a;
    /// Type 1: secondary latency timer.
    pub const SEC_LATENCY_TIMER: u16 = 0x1b;
    /// Type 1: I/O base (bits 7:4 = address 15:12).
    pub const IO_BASE: u16 = 0x1c;
    /// Type 1: I/O limit.
    pub const IO_LIMIT: u16 = 0x1d;
    /// Type 1: secondary status.
    pub const SEC_STATUS: u16 = 0x1e;
    /// Type 1: memory base (bits 15:4 = address 31:20).
    pub const MEMORY_BASE: u16 = 0x20;
    /// Type 1: memory limit.
    pub const MEMORY_LIMIT: u16 = 0x22;
    /// Type 1: prefetchable memory base.
    pub const PREF_MEMORY_BASE: u16 = 0x24;
    /// Type 1: prefetchable memory limit.
    pub const PREF_MEMORY_LIMIT: u16 = 0x26;
    /// Type 1: prefetchable base, upper 32 bits.
    pub const PREF_BASE_UPPER32: u16 = 0x28;
    /// Type 1: prefetchable limit, upper 32 bits.
    pub const PREF_LIMIT_UPPER32: u16 = 0x2c;
    /// Type 1: I/O base, upper 16 bits.
    pub const IO_BASE_UPPER16: u16 = 0x30;
    /// Type 1: I/O limit, upper 16 bits.
    pub const IO_LIMIT_UPPER16: u16 = 0x32;
    /// Type 1: expansion ROM base address.
    pub const ROM_ADDRESS1: u16 = 0x38;
    /// Type 1: bridge control.
    pub const BRIDGE_CONTROL: u16 = 0x3e;
    /// End of the predefined header; capabilities live at or above this offset.
    pub const HEADER_END: u16 = 0x40;
    /// Start of the PCI Express extended capability area.
    pub const EXTENDED_START: u16 = 0x100;
}

macro_rules! flag_fns {
    ($ty:ident { $($(#[$m:meta])* $name:ident = $bit:expr;)* }) => {
        impl $ty {
            $(
                $(#[$m])*
                pub const $name: u16 = $bit;
            )*
        }
    };
}

/// The Command register (offset 0x04).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Command(pub u16);

flag_fns!(Command {
    /// I/O space decode enable.
    IO = 1 << 0;
    /// Memory space decode enable.
    MEMORY = 1 << 1;
    /// Bus master enable: the function may issue DMA.
    BUS_MASTER = 1 << 2;
    /// Special cycles (hardwired 0 on PCIe).
    SPECIAL_CYCLES = 1 << 3;
    /// Memory write and invalidate enable.
    MWI = 1 << 4;
    /// VGA palette snoop.
    VGA_PALETTE = 1 << 5;
    /// Parity error response.
    PARITY = 1 << 6;
    /// IDSEL stepping (reserved since PCI 3.0).
    STEPPING = 1 << 7;
    /// SERR# enable.
    SERR = 1 << 8;
    /// Fast back-to-back enable.
    FAST_BACK = 1 << 9;
    /// INTx emulation disable (PCI 2.3).
    INTX_DISABLE = 1 << 10;
});

impl Command {
    /// Memory space decode is on.
    pub fn memory(self) -> bool {
        self.0 & Self::MEMORY != 0
    }
    /// I/O space decode is on.
    pub fn io(self) -> bool {
        self.0 & Self::IO != 0
    }
    /// Bus mastering (DMA) is on.
    pub fn bus_master(self) -> bool {
        self.0 & Self::BUS_MASTER != 0
    }
    /// INTx is disabled.
    pub fn intx_disabled(self) -> bool {
        self.0 & Self::INTX_DISABLE != 0
    }
}

/// The Status register (offset 0x06).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

flag_fns!(Status {
    /// Immediate readiness (PCIe).
    IMMEDIATE_READINESS = 1 << 0;
    /// INTx is asserted (read-only, set by the device).
    INTERRUPT = 1 << 3;
    /// A capability list is present at offset 0x34.
    CAP_LIST = 1 << 4;
    /// 66 MHz capable.
    MHZ66 = 1 << 5;
    /// User-definable features (obsolete).
    UDF = 1 << 6;
    /// Fast back-to-back capable.
    FAST_BACK = 1 << 7;
    /// Master data parity error (RW1C).
    PARITY = 1 << 8;
    /// DEVSEL timing field.
    DEVSEL_MASK = 0b11 << 9;
    /// Signaled target abort (RW1C).
    SIG_TARGET_ABORT = 1 << 11;
    /// Received target abort (RW1C).
    REC_TARGET_ABORT = 1 << 12;
    /// Received master abort (RW1C).
    REC_MASTER_ABORT = 1 << 13;
    /// Signaled system error (RW1C).
    SIG_SYSTEM_ERROR = 1 << 14;
    /// Detected parity error (RW1C).
    DETECTED_PARITY = 1 << 15;
});

impl Status {
    /// All write-1-to-clear error bits.
    pub const W1C: u16 = Self::PARITY
        | Self::SIG_TARGET_ABORT
        | Self::REC_TARGET_ABORT
        | Self::REC_MASTER_ABORT
        | Self::SIG_SYSTEM_ERROR
        | Self::DETECTED_PARITY;

    /// A capability list is present.
    pub fn has_capabilities(self) -> bool {
        self.0 & Self::CAP_LIST != 0
    }
    /// INTx is currently asserted.
    pub fn interrupt(self) -> bool {
        self.0 & Self::INTERRUPT != 0
    }
}

/// Header layout (offset 0x0e, bits 6:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderType {
    /// Type 0: an endpoint with six BARs.
    Endpoint,
    /// Type 1: a PCI-to-PCI bridge (or PCIe root/switch port) with two BARs and windows.
    Bridge,
}

impl HeaderType {
    /// The header type encoded in the register's low 7 bits.
    pub fn from_register(value: u8) -> Option<Self> {
        match value & 0x7f {
            0 => Some(HeaderType::Endpoint),
            1 => Some(HeaderType::Bridge),
            _ => None,
        }
    }

    /// The register encoding (without the multi-function bit).
    pub fn register_value(self) -> u8 {
        match self {
            HeaderType::Endpoint => 0,
            HeaderType::Bridge => 1,
        }
    }

    /// Number of BARs: 6 for type 0, 2 for type 1.
    pub fn bar_count(self) -> usize {
        match self {
            HeaderType::Endpoint => 6,
            HeaderType::Bridge => 2,
        }
    }

    /// Offset of the expansion ROM BAR: 0x30 for type 0, 0x38 for type 1.
    pub fn rom_offset(self) -> u16 {
        match self {
            HeaderType::Endpoint => offset::ROM_ADDRESS,
            HeaderType::Bridge => offset::ROM_ADDRESS1,
        }
    }
}

/// Identification registers of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeviceIds {
    /// Vendor ID (e.g. 0x8086 Intel, 0x1b36 Red Hat/QEMU).
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem vendor ID (type 0 only).
    pub subsystem_vendor_id: u16,
    /// Subsystem ID (type 0 only).
    pub subsystem_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// 24-bit class code: base class << 16 | sub-class << 8 | programming interface.
    pub class_code: u32,
}

impl DeviceIds {
    /// Reads the identification registers out of raw configuration bytes (at least 64).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 0x40 {
            return None;
        }
        let w = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let type0 = bytes[0x0e] & 0x7f == 0;
        Some(DeviceIds {
            vendor_id: w(0),
            device_id: w(2),
            subsystem_vendor_id: if type0 { w(0x2c) } else { 0 },
            subsystem_id: if type0 { w(0x2e) } else { 0 },
            revision: bytes[8],
            class_code: u32::from_le_bytes([bytes[9], bytes[10], bytes[11], 0]),
        })
    }
}

/// Installs the default masks of a header of type `header` into `regs`, PCI Express style:
/// the bits software may change are writable, the error bits of Status are RW1C, reserved bits
/// read as zero, and everything else is read-only. BAR and ROM masks come from their definitions
/// (see [`ConfigSpace::set_bar`](crate::ConfigSpace::set_bar)); until then BARs are read-only.
pub fn install_default_masks(regs: &mut RegisterFile, header: HeaderType) {
    use offset::*;
    // Offsets are constants inside the 64-byte header, so these calls cannot fail.
    let rw16 = |regs: &mut RegisterFile, off: u16, m: u16, k: BitKind| {
        let _ = regs.set_bits_u16(off, m, k);
    };
    let cmd_rw = Command::IO
        | Command::MEMORY
        | Command::BUS_MASTER
        | Command::MWI
        | Command::VGA_PALETTE
        | Command::PARITY
        | Command::SERR
        | Command::FAST_BACK
        | Command::INTX_DISABLE;
    rw16(regs, COMMAND, cmd_rw, BitKind::ReadWrite);
    // bits 15:11 reserved; bit 7 (stepping) reserved since PCI 3.0; bit 3 read-only
    rw16(regs, COMMAND, 0xf800 | Command::STEPPING, BitKind::Reserved);
    rw16(regs, STATUS, Status::W1C, BitKind::WriteOneToClear);
    rw16(regs, STATUS, 0b0000_0000_0000_0110, BitKind::Reserved);
    let _ = regs.set_bits(CACHE_LINE_SIZE, &[0xff], BitKind::ReadWrite);
    let _ = regs.set_bits(LATENCY_TIMER, &[0xff], BitKind::ReadWrite);
    let _ = regs.set_bits(INTERRUPT_LINE, &[0xff], BitKind::ReadWrite);
    match header {
        HeaderType::Endpoint => {
            // 0x35..0x3b reserved (PCI 3.0 §6.1 figure 6-1)
            let _ = regs.set_bits(CAPABILITY_LIST + 1, &[0xff; 7], BitKind::Reserved);
        }
        HeaderType::Bridge => {
            let _ = regs.set_bits(PRIMARY_BUS, &[0xff, 0xff, 0xff, 0xff], BitKind::ReadWrite);
            // I/O base/limit: bits 7:4 writable, 3:0 encode 16/32-bit decoding (read-only)
            let _ = regs.set_bits(IO_BASE, &[0xf0, 0xf0], BitKind::ReadWrite);
            rw16(regs, SEC_STATUS, Status::W1C, BitKind::WriteOneToClear);
            rw16(regs, MEMORY_BASE, 0xfff0, BitKind::ReadWrite);
            rw16(regs, MEMORY_LIMIT, 0xfff0, BitKind::ReadWrite);
            rw16(regs, MEMORY_BASE, 0x000f, BitKind::Reserved);
            rw16(regs, MEMORY_LIMIT, 0x000f, BitKind::Reserved);
            rw16(regs, PREF_MEMORY_BASE, 0xfff0, BitKind::ReadWrite);
            rw16(regs, PREF_MEMORY_LIMIT, 0xfff0, BitKind::ReadWrite);
            let _ = regs.set_bits(PREF_BASE_UPPER32, &[0xff; 8], BitKind::ReadWrite);
            let _ = regs.set_bits(IO_BASE_UPPER16, &[0xff; 4], BitKind::ReadWrite);
            let _ = regs.set_bits(CAPABILITY_LIST + 1, &[0xff; 3], BitKind::Reserved);
            // Bridge control: parity, SERR, ISA, VGA, VGA16, master abort, secondary bus
            // reset, fast b2b, discard timers (bits 11:0); 15:12 reserved.
            rw16(regs, BRIDGE_CONTROL, 0x0fff, BitKind::ReadWrite);
            rw16(regs, BRIDGE_CONTROL, 0xf000, BitKind::Reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::ConfigSize;

    #[test]
    fn command_status_masks() {
        let mut r = RegisterFile::new(ConfigSize::Conventional);
        r.set(
            offset::STATUS,
            &(Status::CAP_LIST | Status::DETECTED_PARITY | Status::REC_MASTER_ABORT).to_le_bytes(),
        )
        .unwrap();
        install_default_masks(&mut r, HeaderType::Endpoint);
        r.write(offset::COMMAND, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(r.get(4, 2) as u16, 0x0777);
        // clear one W1C bit, try to clear the read-only capabilities-list bit
        r.write(
            offset::STATUS,
            &(Status::DETECTED_PARITY | Status::CAP_LIST).to_le_bytes(),
        )
        .unwrap();
        assert_eq!(
            r.get(6, 2) as u16,
            Status::CAP_LIST | Status::REC_MASTER_ABORT
        );
        r.write(offset::STATUS, &0u16.to_le_bytes()).unwrap();
        assert_eq!(
            r.get(6, 2) as u16,
            Status::CAP_LIST | Status::REC_MASTER_ABORT
        );
    }

    #[test]
    fn bridge_windows_are_writable_where_the_spec_says() {
        let mut r = RegisterFile::new(ConfigSize::Conventional);
        install_default_masks(&mut r, HeaderType::Bridge);
        r.write(offset::IO_BASE, &[0xff, 0xff]).unwrap();
        assert_eq!(r.get(0x1c, 2), 0xf0f0);
        r.write(offset::MEMORY_BASE, &[0xff, 0xff, 0xff, 0xff])
            .unwrap();
        assert_eq!(r.get(0x20, 4), 0xfff0_fff0);
        r.write(offset::PRIMARY_BUS, &[0, 1, 5, 0]).unwrap();
        assert_eq!(r.get(0x18, 4), 0x0005_0100);
    }

    #[test]
    fn ids_from_bytes() {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&[0x36, 0x1b, 0x10, 0x00]);
        b[8..12].copy_from_slice(&[0x02, 0x02, 0x08, 0x01]);
        b[0x2c..0x30].copy_from_slice(&[0xf4, 0x1a, 0x00, 0x11]);
        let ids = DeviceIds::from_bytes(&b).unwrap();
        assert_eq!(ids.vendor_id, 0x1b36);
        assert_eq!(ids.device_id, 0x0010);
        assert_eq!(ids.class_code, 0x010802);
        assert_eq!(ids.subsystem_vendor_id, 0x1af4);
        assert_eq!(ids.subsystem_id, 0x1100);
        assert!(DeviceIds::from_bytes(&b[..10]).is_none());
    }
}
