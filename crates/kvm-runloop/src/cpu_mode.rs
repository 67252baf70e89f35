//! Putting a vCPU straight into real, 32-bit protected or 64-bit long mode, for small guests that
//! have no firmware.
//!
//! Protected and long mode need a GDT in guest memory (the CPU reads it on `iret` and on
//! interrupt delivery), and long mode needs page tables. [`SystemTables`] lays them out in
//! [`SYSTEM_TABLES_SIZE`] bytes of guest RAM at an address the caller picks:
//!
//! | offset  | what |
//! |---------|------|
//! | 0x0000  | GDT (selectors below) |
//! | 0x1000  | IDT, 256 gates, all absent until [`SystemTables::set_interrupt_gate`] |
//! | 0x2000  | PML4 |
//! | 0x3000  | PDPT |
//! | 0x4000  | 4 page directories: 2 MiB pages identity-mapping the first 4 GiB |
//!
//! Every page-table entry has the user bit set, so the same tables serve ring-0 and ring-3
//! guests. A ring-3 guest also gets `RFLAGS.IOPL = 3` so that `in`/`out` work without a TSS I/O
//! bitmap; it has no TSS, so it cannot take interrupts or exceptions (an exception becomes a
//! triple fault, reported as [`VcpuStop::Shutdown`](crate::VcpuStop::Shutdown)). Ring 3 matters
//! on hosts where ring-0 guest code is interpreted (see the crate README).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

/// Bytes of guest RAM [`SystemTables`] occupies.
pub const SYSTEM_TABLES_SIZE: u64 = 0x8000;

/// GDT selector of the 64-bit ring-0 code segment.
pub const KERNEL_CODE64: u16 = 0x08;
/// GDT selector of the ring-0 data segment.
pub const KERNEL_DATA: u16 = 0x10;
/// GDT selector of the 32-bit ring-0 code segment.
pub const KERNEL_CODE32: u16 = 0x18;
/// GDT selector (with RPL 3) of the 64-bit ring-3 code segment.
pub const USER_CODE64: u16 = 0x20 | 3;
/// GDT selector (with RPL 3) of the ring-3 data segment.
pub const USER_DATA: u16 = 0x28 | 3;
/// GDT selector (with RPL 3) of the 32-bit ring-3 code segment.
pub const USER_CODE32: u16 = 0x30 | 3;

const GDT: [u64; 7] = [
    0,                     // null
    0x00af_9b00_0000_ffff, // 0x08: code, DPL 0, L=1 (64-bit)
    0x00cf_9300_0000_ffff, // 0x10: data, DPL 0, 4 GiB flat
    0x00cf_9b00_0000_ffff, // 0x18: code, DPL 0, D=1 (32-bit), 4 GiB flat
    0x00af_fb00_0000_ffff, // 0x20: code, DPL 3, L=1
    0x00cf_f300_0000_ffff, // 0x28: data, DPL 3, 4 GiB flat
    0x00cf_fb00_0000_ffff, // 0x30: code, DPL 3, D=1, 4 GiB flat
];

const IDT_OFFSET: u64 = 0x1000;
const PML4_OFFSET: u64 = 0x2000;
const PDPT_OFFSET: u64 = 0x3000;
const PD_OFFSET: u64 = 0x4000;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;
const RFLAGS_IOPL3: u64 = 3 << 12;

/// The mode a guest starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// 16-bit real mode, CS base 0: code and data in the first 64 KiB.
    Real,
    /// 32-bit protected mode, flat 4 GiB segments, no paging.
    Protected,
    /// 64-bit long mode, first 4 GiB identity-mapped.
    Long,
}

/// The privilege level a guest starts at (protected and long mode only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Ring 0.
    Kernel,
    /// Ring 3, with IOPL 3 so port IO works; no interrupts (there is no TSS).
    User,
}

/// Where the entry point, stack and system tables of a small guest are.
#[derive(Debug, Clone, Copy)]
pub struct GuestEntry {
    /// The mode.
    pub mode: CpuMode,
    /// Ring 0 or 3 (ignored in real mode).
    pub privilege: Privilege,
    /// First instruction (guest physical, which is also virtual).
    pub entry: u64,
    /// Initial stack pointer.
    pub stack: u64,
    /// Base of the [`SystemTables`] (page aligned; unused in real mode).
    pub tables: u64,
}

/// The GDT, IDT and page tables of a small guest; see the module docs for the layout.
#[derive(Debug, Clone, Copy)]
pub struct SystemTables {
    base: u64,
    mode: CpuMode,
}

impl SystemTables {
    /// Writes the GDT (and for long mode the page tables) at `base` and returns the layout.
    pub fn write(mem: &GuestMemoryMmap, base: u64, mode: CpuMode) -> Result<Self> {
        if base % 0x1000 != 0 {
            return Err(Error::Unaligned {
                what: "system tables base",
                value: base,
            });
        }
        let mut gdt = [0u8; 8 * GDT.len()];
        for (chunk, d) in gdt.chunks_exact_mut(8).zip(GDT) {
            chunk.copy_from_slice(&d.to_le_bytes());
        }
        write(mem, base, &gdt)?;
        write(mem, base + IDT_OFFSET, &[0u8; 0x1000])?;
        if mode == CpuMode::Long {
            const PRESENT_RW_USER: u64 = 0b111;
            const HUGE: u64 = 1 << 7;
            write(
                mem,
                base + PML4_OFFSET,
                &((base + PDPT_OFFSET) | PRESENT_RW_USER).to_le_bytes(),
            )?;
            for i in 0..4u64 {
                let pd = base + PD_OFFSET + i * 0x1000;
                write(
                    mem,
                    base + PDPT_OFFSET + i * 8,
                    &(pd | PRESENT_RW_USER).to_le_bytes(),
                )?;
                let mut entries = vec![0u8; 0x1000];
                for (j, e) in entries.chunks_exact_mut(8).enumerate() {
                    let phys = (i << 30) | ((j as u64) << 21);
                    e.copy_from_slice(&(phys | PRESENT_RW_USER | HUGE).to_le_bytes());
                }
                write(mem, pd, &entries)?;
            }
        }
        Ok(SystemTables { base, mode })
    }

    /// Points IDT entry `vector` at `handler` (an interrupt gate: interrupts stay disabled in the
    /// handler; return with `iret`/`iretq`). The handler runs in ring 0.
    pub fn set_interrupt_gate(
        &self,
        mem: &GuestMemoryMmap,
        vector: u8,
        handler: u64,
    ) -> Result<()> {
        let gate_type_present: u64 = 0x8e; // P=1, DPL=0, type 0xE (interrupt gate)
        match self.mode {
            CpuMode::Long => {
                let lo = (handler & 0xffff)
                    | (u64::from(KERNEL_CODE64) << 16)
                    | (gate_type_present << 40)
                    | ((handler >> 16) & 0xffff) << 48;
                let hi = handler >> 32;
                let at = self.base + IDT_OFFSET + u64::from(vector) * 16;
                write(mem, at, &lo.to_le_bytes())?;
                write(mem, at + 8, &hi.to_le_bytes())
            }
            CpuMode::Protected | CpuMode::Real => {
                let d = (handler & 0xffff)
                    | (u64::from(KERNEL_CODE32) << 16)
                    | (gate_type_present << 40)
                    | ((handler >> 16) & 0xffff) << 48;
                write(
                    mem,
                    self.base + IDT_OFFSET + u64::from(vector) * 8,
                    &d.to_le_bytes(),
                )
            }
        }
    }
}

fn write(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory {
            addr,
            len: bytes.len(),
            source,
        })
}

fn segment(selector: u16, code: bool, long: bool) -> kvm_segment {
    let dpl = (selector & 3) as u8;
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 }, // execute/read accessed, read/write accessed
        present: 1,
        dpl,
        db: u8::from(!(code && long)),
        s: 1,
        l: u8::from(code && long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A real-mode segment with selector and base 0 (the reset state, CS included).
fn real_mode_segment(code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Sets the registers of `vcpu` so that it starts at `guest.entry` in `guest.mode`. For
/// protected and long mode, writes [`SystemTables`] at `guest.tables` and returns them (to add
/// interrupt gates); real mode returns `None`. May be called again on the same vCPU, in any mode.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    vcpu_id: u32,
    mem: &GuestMemoryMmap,
    guest: &GuestEntry,
) -> Result<Option<SystemTables>> {
    let regs_err = |op| {
        move |source| Error::VcpuRegisters {
            op,
            vcpu: vcpu_id,
            source,
        }
    };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(regs_err("KVM_GET_SREGS"))?;
    // Start from no paging and no long mode, whatever an earlier set-up of this vCPU left:
    // KVM_SET_SREGS refuses EFER.LMA without CR0.PG, and real mode needs both off.
    sregs.efer &= !(EFER_LME | EFER_LMA);
    sregs.cr4 &= !CR4_PAE;
    let mut rflags = RFLAGS_RESERVED;
    let tables = match guest.mode {
        CpuMode::Real => {
            sregs.cr0 &= !(CR0_PE | CR0_PG);
            // The interrupt vector table at 0, as after reset.
            sregs.idt.base = 0;
            sregs.idt.limit = 0xffff;
            sregs.cs = real_mode_segment(true);
            let data_seg = real_mode_segment(false);
            sregs.ds = data_seg;
            sregs.es = data_seg;
            sregs.fs = data_seg;
            sregs.gs = data_seg;
            sregs.ss = data_seg;
            None
        }
        CpuMode::Protected | CpuMode::Long => {
            let long = guest.mode == CpuMode::Long;
            let tables = SystemTables::write(mem, guest.tables, guest.mode)?;
            let (code, data) = match (guest.privilege, long) {
                (Privilege::Kernel, true) => (KERNEL_CODE64, KERNEL_DATA),
                (Privilege::Kernel, false) => (KERNEL_CODE32, KERNEL_DATA),
                (Privilege::User, true) => (USER_CODE64, USER_DATA),
                (Privilege::User, false) => (USER_CODE32, USER_DATA),
            };
            if guest.privilege == Privilege::User {
                rflags |= RFLAGS_IOPL3;
            }
            sregs.cs = segment(code, true, long);
            let data_seg = segment(data, false, long);
            sregs.ds = data_seg;
            sregs.es = data_seg;
            sregs.fs = data_seg;
            sregs.gs = data_seg;
            sregs.ss = data_seg;
            sregs.gdt.base = guest.tables;
            sregs.gdt.limit = (8 * GDT.len() - 1) as u16;
            sregs.idt.base = guest.tables + IDT_OFFSET;
            sregs.idt.limit = if long { 256 * 16 - 1 } else { 256 * 8 - 1 };
            sregs.cr0 = CR0_PE | CR0_ET | CR0_NE;
            if long {
                sregs.cr3 = guest.tables + PML4_OFFSET;
                sregs.cr4 |= CR4_PAE;
                sregs.cr0 |= CR0_PG;
                sregs.efer |= EFER_LME | EFER_LMA;
            }
            Some(tables)
        }
    };
    vcpu.set_sregs(&sregs).map_err(regs_err("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: guest.entry,
        rsp: guest.stack,
        rflags,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(regs_err("KVM_SET_REGS"))?;
    Ok(tables)
}
