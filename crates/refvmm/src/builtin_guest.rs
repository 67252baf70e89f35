//! The guest `refvmm run` boots when no `--guest` is given: a few hundred bytes of x86-64 that
//! list PCI bus 0 through configuration mechanism #1 on COM1 and report status 0 on port 0x501,
//! so `refvmm run [--device ...]` shows the machine without building anything:
//!
//! ```text
//! refvmm built-in guest: PCI bus 0 via 0xcf8/0xcfc
//!   00:00.0 1b36:0008 class 060000
//!   00:01.0 1b36:0010 class 010802
//! ```
//!
//! It runs in 64-bit ring 0 like any `--guest` (loaded at [`BASE`], entry after its data), uses
//! only the stack the loader gives it, and ends with `hlt` after the status byte. The machine
//! code is written out below with its assembly, as the bytes are few and fixed.

/// Where the image is loaded (the same 1 MiB floor as ELF guests).
pub const BASE: u64 = 0x10_0000;

/// The image and its entry point.
pub struct Image {
    /// Bytes to copy to [`BASE`].
    pub bytes: Vec<u8>,
    /// Guest address of the first instruction.
    pub entry: u64,
}

/// Appends machine code, knowing the guest address of each byte.
struct Code {
    bytes: Vec<u8>,
}

impl Code {
    fn here(&self) -> u32 {
        BASE as u32 + self.bytes.len() as u32
    }

    fn emit(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    fn imm32(&mut self, op: &[u8], v: u32) -> &mut Self {
        self.emit(op).emit(&v.to_le_bytes())
    }

    /// `call target` (rel32).
    fn call(&mut self, target: u32) -> &mut Self {
        let next = self.here() + 5;
        self.imm32(&[0xe8], target.wrapping_sub(next))
    }

    /// `mov $addr, %esi; mov $len, %ecx; mov $0x3f8, %dx; rep outsb`.
    fn print(&mut self, (addr, len): (u32, u32)) -> &mut Self {
        self.imm32(&[0xbe], addr)
            .imm32(&[0xb9], len)
            .emit(&[0x66, 0xba, 0xf8, 0x03])
            .emit(&[0xf3, 0x6e])
    }

    /// `mov %r12d, %eax; shl $11, %eax; or $(0x80000000 | reg), %eax; out %eax, $0xcf8;
    /// in $0xcfc, %eax`: configuration dword `reg` of device %r12 on bus 0, function 0.
    fn config_read(&mut self, reg: u8) -> &mut Self {
        self.emit(&[0x44, 0x89, 0xe0, 0xc1, 0xe0, 0x0b])
            .imm32(&[0x0d], 0x8000_0000 | u32::from(reg))
            .emit(&[0x66, 0xba, 0xf8, 0x0c, 0xef])
            .emit(&[0x66, 0xba, 0xfc, 0x0c, 0xed])
    }
}

/// Builds the image.
pub fn image() -> Image {
    // Data first, so every address is known before the code that uses it.
    let mut data: Vec<u8> = Vec::new();
    let mut put = |s: &[u8]| {
        let at = (BASE as u32 + data.len() as u32, s.len() as u32);
        data.extend_from_slice(s);
        at
    };
    let hex_digits = put(b"0123456789abcdef").0;
    let banner = put(b"refvmm built-in guest: PCI bus 0 via 0xcf8/0xcfc\n");
    let prefix = put(b"  00:");
    let func = put(b".0 ");
    let colon = put(b":");
    let class = put(b" class ");
    let newline = put(b"\n");
    while data.len() % 16 != 0 {
        data.push(0);
    }
    let mut c = Code { bytes: data };

    // hex: print the top %ecx nibbles of %ebx. Clobbers eax, ebx, ecx, edx.
    let hex = c.here();
    c.emit(&[0x56]) //                              push %rsi
        .imm32(&[0xbe], hex_digits) //              mov $digits, %esi
        .emit(&[0x66, 0xba, 0xf8, 0x03]); //        mov $0x3f8, %dx
    let hex_loop = c.bytes.len();
    c.emit(&[0xc1, 0xc3, 0x04]) //                  rol $4, %ebx
        .emit(&[0x89, 0xd8]) //                     mov %ebx, %eax
        .emit(&[0x83, 0xe0, 0x0f]) //               and $0xf, %eax
        .emit(&[0x8a, 0x04, 0x06]) //               mov (%rsi,%rax), %al
        .emit(&[0xee]) //                           out %al, (%dx)
        .emit(&[0xff, 0xc9]); //                    dec %ecx
    let back = hex_loop as i64 - (c.bytes.len() as i64 + 2);
    c.emit(&[0x75, back as i8 as u8]) //            jnz hex_loop
        .emit(&[0x5e, 0xc3]); //                    pop %rsi; ret

    // main
    let entry = c.here();
    c.print(banner).emit(&[0x45, 0x31, 0xe4]); //  xor %r12d, %r12d (device 0)
    let scan = c.bytes.len();
    c.config_read(0x00).emit(&[0x83, 0xf8, 0xff]); // cmp $-1, %eax
    let je_at = c.bytes.len();
    c.emit(&[0x0f, 0x84, 0, 0, 0, 0]); //           je absent (patched below)
    c.emit(&[0x41, 0x89, 0xc5]) //                  mov %eax, %r13d (vendor | device << 16)
        .print(prefix)
        .emit(&[0x44, 0x89, 0xe3, 0xc1, 0xe3, 0x18]) // mov %r12d, %ebx; shl $24, %ebx
        .imm32(&[0xb9], 2)
        .call(hex)
        .print(func)
        .emit(&[0x44, 0x89, 0xeb, 0xc1, 0xe3, 0x10]) // mov %r13d, %ebx; shl $16, %ebx
        .imm32(&[0xb9], 4)
        .call(hex)
        .print(colon)
        .emit(&[0x44, 0x89, 0xeb]) //               mov %r13d, %ebx
        .imm32(&[0xb9], 4)
        .call(hex)
        .print(class)
        .config_read(0x08)
        .emit(&[0x89, 0xc3]) //                     mov %eax, %ebx (class in bits 31:8)
        .imm32(&[0xb9], 6)
        .call(hex)
        .print(newline);
    let absent = c.bytes.len();
    let rel = (absent - (je_at + 6)) as u32;
    c.bytes[je_at + 2..je_at + 6].copy_from_slice(&rel.to_le_bytes());
    c.emit(&[0x49, 0xff, 0xc4]) //                  inc %r12
        .emit(&[0x49, 0x83, 0xfc, 0x20]); //        cmp $32, %r12
    let back = scan as i64 - (c.bytes.len() as i64 + 6);
    c.imm32(&[0x0f, 0x82], back as i32 as u32) //   jb scan
        .emit(&[0x66, 0xba, 0x01, 0x05]) //         mov $0x501, %dx
        .emit(&[0x31, 0xc0, 0xee]); //              xor %eax, %eax; out %al, (%dx)
    let halt = c.bytes.len();
    c.emit(&[0xf4]); //                             hlt
    let back = halt as i64 - (c.bytes.len() as i64 + 2);
    c.emit(&[0xeb, back as i8 as u8]); //           jmp halt
    Image {
        bytes: c.bytes,
        entry: u64::from(entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_small_and_starts_after_its_data() {
        let img = image();
        assert!(img.bytes.len() < 512, "{} bytes", img.bytes.len());
        assert!(img.entry > BASE && img.entry < BASE + img.bytes.len() as u64);
        assert_eq!(&img.bytes[..16], b"0123456789abcdef");
        assert_eq!(*img.bytes.last().unwrap(), 0xfd, "ends with `jmp hlt`");
    }
}
