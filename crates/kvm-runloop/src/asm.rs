//! A tiny x86-64 encoder for test and demo guests: the dozen instructions they need, each
//! method documented with the AT&T mnemonic it emits. 64-bit mode only; only the eight legacy
//! registers; jumps go backwards to a [`Label`] bound earlier.
//!
//! ```
//! use kvm_runloop::asm::{Asm, Reg};
//! let mut a = Asm::new();
//! a.mov_imm(Reg::Rax, 7); // mov $7, %rax
//! a.hlt();                // hlt
//! assert_eq!(a.finish(), [0x48, 0xc7, 0xc0, 7, 0, 0, 0, 0xf4]);
//! ```

/// A 64-bit general register (only the eight that need no REX.B/R bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// `%rax`
    Rax = 0,
    /// `%rcx`
    Rcx = 1,
    /// `%rdx`
    Rdx = 2,
    /// `%rbx`
    Rbx = 3,
    /// `%rsp`
    Rsp = 4,
    /// `%rbp`
    Rbp = 5,
    /// `%rsi`
    Rsi = 6,
    /// `%rdi`
    Rdi = 7,
}

/// Operand width of an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// 1 byte (`b`).
    W1,
    /// 2 bytes (`w`).
    W2,
    /// 4 bytes (`l`).
    W4,
    /// 8 bytes (`q`).
    W8,
}

impl Width {
    /// Width in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Width::W1 => 1,
            Width::W2 => 2,
            Width::W4 => 4,
            Width::W8 => 8,
        }
    }

    /// All four widths.
    pub const ALL: [Width; 4] = [Width::W1, Width::W2, Width::W4, Width::W8];
}

/// A position in the code that a later jump can target.
#[derive(Debug, Clone, Copy)]
pub struct Label(usize);

/// The encoder: append instructions, then [`finish`](Asm::finish).
#[derive(Debug, Default, Clone)]
pub struct Asm {
    code: Vec<u8>,
}

impl Asm {
    /// Empty code.
    pub fn new() -> Self {
        Self::default()
    }

    /// Current offset from the start of the code.
    pub fn offset(&self) -> usize {
        self.code.len()
    }

    /// A label at the current offset.
    pub fn label(&self) -> Label {
        Label(self.code.len())
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.code
    }

    /// `mov $imm, %reg` (sign-extended 32-bit immediate, `REX.W C7 /0`).
    pub fn mov_imm(&mut self, reg: Reg, imm: i32) -> &mut Self {
        self.raw(&[0x48, 0xc7, 0xc0 | reg as u8]);
        self.raw(&imm.to_le_bytes())
    }

    /// `movabs $imm, %reg` (64-bit immediate, `REX.W B8+r`).
    pub fn movabs(&mut self, reg: Reg, imm: u64) -> &mut Self {
        self.raw(&[0x48, 0xb8 | reg as u8]);
        self.raw(&imm.to_le_bytes())
    }

    /// `mov %src, %dst` (64-bit).
    pub fn mov_reg(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.raw(&[0x48, 0x89, 0xc0 | (src as u8) << 3 | dst as u8])
    }

    /// `out %al/%ax/%eax, $port`. Panics for [`Width::W8`] (port IO has no 8-byte form), as
    /// every port-IO method does.
    pub fn out_imm(&mut self, width: Width, port: u8) -> &mut Self {
        self.port_io(width, &[], 0xe6).raw(&[port])
    }

    /// `in $port, %al/%ax/%eax`.
    pub fn in_imm(&mut self, width: Width, port: u8) -> &mut Self {
        self.port_io(width, &[], 0xe4).raw(&[port])
    }

    /// `out %al/%ax/%eax, (%dx)`.
    pub fn out_dx(&mut self, width: Width) -> &mut Self {
        self.port_io(width, &[], 0xee)
    }

    /// `in (%dx), %al/%ax/%eax`.
    pub fn in_dx(&mut self, width: Width) -> &mut Self {
        self.port_io(width, &[], 0xec)
    }

    /// `rep outsb/outsw/outsl`: `%rcx` elements from `(%rsi)` to port `%dx`.
    pub fn rep_outs(&mut self, width: Width) -> &mut Self {
        self.port_io(width, &[0xf3], 0x6e)
    }

    /// `rep insb/insw/insl`: `%rcx` elements from port `%dx` to `(%rdi)`.
    pub fn rep_ins(&mut self, width: Width) -> &mut Self {
        self.port_io(width, &[0xf3], 0x6c)
    }

    /// Port-IO opcodes come in pairs: `op8` moves a byte, `op8 + 1` a doubleword, or a word with
    /// the 0x66 operand-size prefix (which goes before `rep`, as GNU as emits it).
    fn port_io(&mut self, width: Width, prefix: &[u8], op8: u8) -> &mut Self {
        match width {
            Width::W1 => self.raw(prefix).raw(&[op8]),
            Width::W2 => self.raw(&[0x66]).raw(prefix).raw(&[op8 + 1]),
            Width::W4 => self.raw(prefix).raw(&[op8 + 1]),
            Width::W8 => panic!("port IO has no 8-byte form"),
        }
    }

    /// `mov %src, disp8(%base)` with the given width (`movb/movw/movl/movq`).
    pub fn store(&mut self, width: Width, base: Reg, disp: i8, src: Reg) -> &mut Self {
        self.mem_op(width, 0x88, 0x89, base, disp, src)
    }

    /// `mov disp8(%base), %dst` with the given width.
    pub fn load(&mut self, width: Width, dst: Reg, base: Reg, disp: i8) -> &mut Self {
        self.mem_op(width, 0x8a, 0x8b, base, disp, dst)
    }

    fn mem_op(
        &mut self,
        width: Width,
        op8: u8,
        op: u8,
        base: Reg,
        disp: i8,
        reg: Reg,
    ) -> &mut Self {
        match width {
            // A REX prefix makes registers 4-7 mean %spl..%dil instead of %ah..%bh.
            Width::W1 if reg as u8 >= 4 => self.raw(&[0x40, op8]),
            Width::W1 => self.raw(&[op8]),
            Width::W2 => self.raw(&[0x66, op]),
            Width::W4 => self.raw(&[op]),
            Width::W8 => self.raw(&[0x48, op]),
        };
        // mod=01 (disp8) always: it also covers %rbp, whose mod=00 form means RIP-relative.
        self.raw(&[0x40 | (reg as u8) << 3 | base as u8]);
        if base == Reg::Rsp {
            self.raw(&[0x24]); // SIB: base=%rsp, no index
        }
        self.raw(&[disp as u8])
    }

    /// `add $imm8, %reg` (64-bit).
    pub fn add_imm(&mut self, reg: Reg, imm: i8) -> &mut Self {
        self.raw(&[0x48, 0x83, 0xc0 | reg as u8, imm as u8])
    }

    /// `cmp %b, %a` (flags of `a - b`, 64-bit).
    pub fn cmp(&mut self, a: Reg, b: Reg) -> &mut Self {
        self.raw(&[0x48, 0x39, 0xc0 | (b as u8) << 3 | a as u8])
    }

    /// `dec %reg` (64-bit).
    pub fn dec(&mut self, reg: Reg) -> &mut Self {
        self.raw(&[0x48, 0xff, 0xc8 | reg as u8])
    }

    /// `push %reg`.
    pub fn push(&mut self, reg: Reg) -> &mut Self {
        self.raw(&[0x50 | reg as u8])
    }

    /// `pop %reg`.
    pub fn pop(&mut self, reg: Reg) -> &mut Self {
        self.raw(&[0x58 | reg as u8])
    }

    /// `jmp label`.
    pub fn jmp(&mut self, target: Label) -> &mut Self {
        self.branch(target, &[0xeb], &[0xe9])
    }

    /// `jnz label`.
    pub fn jnz(&mut self, target: Label) -> &mut Self {
        self.branch(target, &[0x75], &[0x0f, 0x85])
    }

    /// `jb label` (unsigned below).
    pub fn jb(&mut self, target: Label) -> &mut Self {
        self.branch(target, &[0x72], &[0x0f, 0x82])
    }

    fn branch(&mut self, target: Label, short: &[u8], near: &[u8]) -> &mut Self {
        let rel8 = target.0 as i64 - (self.code.len() + short.len() + 1) as i64;
        if let Ok(r) = i8::try_from(rel8) {
            self.raw(short).raw(&[r as u8])
        } else {
            let rel32 = target.0 as i64 - (self.code.len() + near.len() + 4) as i64;
            let r = i32::try_from(rel32).expect("jump target within 2 GiB");
            self.raw(near).raw(&r.to_le_bytes())
        }
    }

    /// `hlt`.
    pub fn hlt(&mut self) -> &mut Self {
        self.raw(&[0xf4])
    }

    /// `sti`.
    pub fn sti(&mut self) -> &mut Self {
        self.raw(&[0xfb])
    }

    /// `cli`.
    pub fn cli(&mut self) -> &mut Self {
        self.raw(&[0xfa])
    }

    /// `iretq`.
    pub fn iretq(&mut self) -> &mut Self {
        self.raw(&[0x48, 0xcf])
    }

    /// `nop`.
    pub fn nop(&mut self) -> &mut Self {
        self.raw(&[0x90])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes checked against GNU as (x86-64, AT&T syntax).
    #[test]
    fn encodings_match_gnu_as() {
        let mut a = Asm::new();
        a.store(Width::W1, Reg::Rdi, 0, Reg::Rax); // mov %al,0x0(%rdi)
        a.store(Width::W2, Reg::Rdi, 2, Reg::Rax); // mov %ax,0x2(%rdi)
        a.store(Width::W4, Reg::Rdi, 4, Reg::Rbx); // mov %ebx,0x4(%rdi)
        a.store(Width::W8, Reg::Rdi, 8, Reg::Rax); // mov %rax,0x8(%rdi)
        a.load(Width::W8, Reg::Rax, Reg::Rsp, 8); // mov 0x8(%rsp),%rax
        a.store(Width::W1, Reg::Rbp, -1, Reg::Rsi); // mov %sil,-0x1(%rbp)
        assert_eq!(
            a.finish(),
            [
                0x88, 0x47, 0x00, //
                0x66, 0x89, 0x47, 0x02, //
                0x89, 0x5f, 0x04, //
                0x48, 0x89, 0x47, 0x08, //
                0x48, 0x8b, 0x44, 0x24, 0x08, //
                0x40, 0x88, 0x75, 0xff,
            ]
        );
    }

    #[test]
    fn backward_branches_pick_short_or_near() {
        let mut a = Asm::new();
        let top = a.label();
        a.dec(Reg::Rcx); // dec %rcx
        a.jnz(top); // jnz top
        assert_eq!(a.clone().finish(), [0x48, 0xff, 0xc9, 0x75, 0xfb]);
        for _ in 0..200 {
            a.nop();
        }
        a.jmp(top);
        let code = a.finish();
        let n = code.len();
        assert_eq!(code[n - 5], 0xe9);
        assert_eq!(
            i32::from_le_bytes(code[n - 4..].try_into().unwrap()),
            -(n as i32)
        );
    }

    #[test]
    fn misc_encodings() {
        let mut a = Asm::new();
        a.movabs(Reg::Rdi, 0xfee0_00b0); // movabs $0xfee000b0,%rdi
        a.cmp(Reg::Rdi, Reg::Rsi); // cmp %rsi,%rdi
        a.add_imm(Reg::Rdi, 64); // add $0x40,%rdi
        a.mov_reg(Reg::Rax, Reg::Rbx); // mov %rbx,%rax
        a.out_imm(Width::W2, 0x10); // out %ax,$0x10
        a.in_dx(Width::W4); // in (%dx),%eax
        a.rep_outs(Width::W2); // rep outsw
        a.in_imm(Width::W1, 0x71); // in $0x71,%al
        a.out_dx(Width::W2); // out %ax,(%dx)
        a.rep_ins(Width::W4); // rep insl (%dx),%es:(%rdi)
        assert_eq!(
            a.finish(),
            [
                0x48, 0xbf, 0xb0, 0x00, 0xe0, 0xfe, 0, 0, 0, 0, //
                0x48, 0x39, 0xf7, //
                0x48, 0x83, 0xc7, 0x40, //
                0x48, 0x89, 0xd8, //
                0x66, 0xe7, 0x10, //
                0xed, //
                0x66, 0xf3, 0x6f, //
                0xe4, 0x71, //
                0x66, 0xef, //
                0xf3, 0x6d,
            ]
        );
    }
}
