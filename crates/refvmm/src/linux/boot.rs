//! Loading Linux by the x86 boot protocol (Documentation/arch/x86/boot.rst, "64-bit boot
//! protocol"): linux-loader copies the kernel, refvmm places the initramfs and command line and
//! fills the zero page (`struct boot_params`) that RSI points at on entry.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use kvm_runloop::Vm;
use kvm_runloop::reexports::vm_memory::{Bytes, GuestAddress};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::bootparam::{XLF_KERNEL_64, boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;

use super::e820::E820Entry;
use super::{CMDLINE_ADDR, HIGHMEM_START, LinuxError, LinuxSpec, ZERO_PAGE};

/// Room for the command line at [`CMDLINE_ADDR`], without its NUL. Linux's own limit
/// (`COMMAND_LINE_SIZE`, 2048 on x86) is lower; a bzImage states it in `cmdline_size`.
pub const MAX_CMDLINE: usize = 4095;
/// `COMMAND_LINE_SIZE` of x86 Linux, for an ELF vmlinux that carries no setup header.
const ELF_CMDLINE_SIZE: usize = 2047;
/// "HdrS", the setup header's magic at offset 0x202 of a bzImage.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature the header repeats at 0x1FE.
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` for a boot loader without an assigned ID.
const LOADER_UNDEFINED: u8 = 0xff;
/// Where the 64-bit entry (`startup_64`) sits in a bzImage's protected-mode part.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
/// `initrd_addr_max` of every x86-64 kernel (and of an ELF vmlinux, which has no header).
const INITRD_ADDR_MAX_64: u64 = 0x7fff_ffff;
/// `kernel_alignment` of x86-64 kernels (`CONFIG_PHYSICAL_ALIGN`), for an ELF vmlinux.
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// What was loaded, for the zero page and vCPU 0.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: u64,
    /// The setup header to put in the zero page (the bzImage's, or one built for an ELF).
    pub header: setup_header,
    /// End of everything the kernel occupies while it boots (decompression included).
    pub end: u64,
}

/// Loads the kernel, the initramfs and the command line of `spec` into `vm`'s low RAM.
pub fn load(vm: &Vm, spec: &LinuxSpec, ram: &[(u64, u64)]) -> Result<LoadedKernel, LinuxError> {
    let low_ram_end = ram[0].0 + ram[0].1;
    let mut kernel = load_kernel(vm, &spec.kernel, low_ram_end)?;
    let max_cmdline = if kernel.header.version >= 0x206 {
        (kernel.header.cmdline_size as usize).min(MAX_CMDLINE)
    } else {
        ELF_CMDLINE_SIZE
    };
    if spec.cmdline.len() > max_cmdline || spec.cmdline.contains('\0') {
        return Err(LinuxError::Cmdline {
            len: spec.cmdline.len(),
            max: max_cmdline,
        });
    }
    let mut bytes = spec.cmdline.as_bytes().to_vec();
    bytes.push(0);
    vm.write_memory(CMDLINE_ADDR, &bytes)?;
    kernel.header.cmd_line_ptr = CMDLINE_ADDR as u32;
    kernel.header.cmdline_size = spec.cmdline.len() as u32;

    if let Some(path) = &spec.initramfs {
        let (addr, size) = load_initramfs(vm, path, &kernel, low_ram_end)?;
        kernel.header.ramdisk_image = addr as u32;
        kernel.header.ramdisk_size = size as u32;
    }
    Ok(kernel)
}

fn open(what: &'static str, path: &Path) -> Result<File, LinuxError> {
    File::open(path).map_err(|source| LinuxError::Open {
        what,
        path: path.into(),
        source,
    })
}

fn load_kernel(vm: &Vm, path: &Path, low_ram_end: u64) -> Result<LoadedKernel, LinuxError> {
    let mut file = open("kernel", path)?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut file, &mut head).map_err(|source| LinuxError::Open {
        what: "kernel",
        path: path.into(),
        source,
    })?;
    let head = &head[..n];
    let not_a_kernel = |detail: String| LinuxError::NotAKernel {
        path: path.into(),
        detail,
    };
    let too_big = |needed: u64| LinuxError::KernelTooBig {
        path: path.into(),
        needed,
        ram: low_ram_end,
    };
    let _ = file.seek(SeekFrom::Start(0));

    if head.len() >= 0x206 && head[0x202..0x206] == HDRS_MAGIC.to_le_bytes() {
        // Check the size before linux-loader copies it: a file larger than RAM would otherwise
        // fail as an unreadable image.
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if HIGHMEM_START + file_len > low_ram_end {
            return Err(too_big(HIGHMEM_START + file_len));
        }
        let result = BzImage::load(
            vm.memory(),
            None,
            &mut file,
            Some(GuestAddress(HIGHMEM_START)),
        )
        .map_err(|e| not_a_kernel(format!("a bzImage header, but linux-loader says: {e}")))?;
        let header = result
            .setup_header
            .ok_or_else(|| not_a_kernel("a bzImage without a setup header".into()))?;
        if header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(not_a_kernel(
                "a bzImage without a 64-bit entry point (XLF_KERNEL_64): a 32-bit kernel".into(),
            ));
        }
        // The decompressor runs in place at the load address and writes the kernel at
        // `pref_address` (relocatable kernels) over `init_size` bytes (boot.rst, "init_size").
        let run_base = if header.relocatable_kernel != 0 {
            header.pref_address.max(result.kernel_load.0)
        } else {
            result.kernel_load.0
        };
        let end = result
            .kernel_end
            .max(run_base + u64::from(header.init_size));
        if end > low_ram_end {
            return Err(too_big(end));
        }
        return Ok(LoadedKernel {
            entry: result.kernel_load.0 + BZIMAGE_ENTRY64_OFFSET,
            header,
            end,
        });
    }
    if head.starts_with(b"\x7fELF") {
        let result = Elf::load(
            vm.memory(),
            None,
            &mut file,
            Some(GuestAddress(HIGHMEM_START)),
        )
        .map_err(|e| match e {
            linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage) => {
                too_big(low_ram_end + 1)
            }
            e => not_a_kernel(format!("an ELF file, but linux-loader says: {e}")),
        })?;
        if result.kernel_end > low_ram_end {
            return Err(too_big(result.kernel_end));
        }
        let header = setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            kernel_alignment: KERNEL_ALIGNMENT,
            initrd_addr_max: INITRD_ADDR_MAX_64 as u32,
            ..Default::default()
        };
        return Ok(LoadedKernel {
            entry: result.kernel_load.0,
            header,
            end: result.kernel_end,
        });
    }
    Err(not_a_kernel(
        "neither \"HdrS\" at offset 0x202 nor an ELF magic".into(),
    ))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Puts the initramfs as high as the kernel allows (boot.rst: "as high as possible, below
/// initrd_addr_max"), page aligned, above the kernel; its address and size.
fn load_initramfs(
    vm: &Vm,
    path: &Path,
    kernel: &LoadedKernel,
    low_ram_end: u64,
) -> Result<(u64, u64), LinuxError> {
    let mut file = open("initramfs", path)?;
    let size = file
        .metadata()
        .map_err(|source| LinuxError::Open {
            what: "initramfs",
            path: path.into(),
            source,
        })?
        .len();
    let addr_max = if kernel.header.version >= 0x203 && kernel.header.initrd_addr_max != 0 {
        u64::from(kernel.header.initrd_addr_max)
    } else {
        INITRD_ADDR_MAX_64
    };
    let limit = low_ram_end.min(addr_max + 1);
    let kernel_end = kernel.end.next_multiple_of(4096);
    let room = limit.saturating_sub(kernel_end);
    if size > room {
        return Err(LinuxError::InitramfsTooBig {
            path: path.into(),
            size,
            room,
            kernel_end,
            limit,
        });
    }
    let addr = (limit - size) & !0xfff;
    vm.memory()
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| LinuxError::Open {
            what: "initramfs",
            path: path.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}

/// The zero page for `kernel`: its setup header (with the loader's fields filled in), the e820
/// map and the RSDP address.
pub fn zero_page(kernel: &LoadedKernel, map: &[E820Entry], rsdp: u64) -> boot_params {
    let mut params = boot_params {
        hdr: kernel.header,
        // Boot protocol 2.14: where the RSDP is, so Linux need not scan the BIOS area for it.
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

/// Writes [`zero_page`] at [`ZERO_PAGE`] with linux-loader's configurator.
pub fn write_zero_page(
    vm: &Vm,
    kernel: &LoadedKernel,
    map: &[E820Entry],
    rsdp: u64,
) -> Result<(), LinuxError> {
    let params = zero_page(kernel, map, rsdp);
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        vm.memory(),
    )
    .map_err(LinuxError::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::e820::memory_map;
    use crate::run::ram_layout;

    /// A bzImage setup header (boot protocol 2.15, 64-bit, relocatable to 16 MiB, 32 MiB
    /// `init_size`) and a 512-byte protected-mode part of 0xCC.
    fn fake_bzimage() -> Vec<u8> {
        let mut f = vec![0u8; 1024];
        f[0x1f1] = 1;
        f[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        f[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        f[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        f[0x211] = 1;
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        f[0x234] = 1;
        f[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        f[0x260..0x264].copy_from_slice(&(32u32 << 20).to_le_bytes());
        f.extend_from_slice(&[0xcc; 512]);
        f
    }

    #[test]
    fn bzimage_initramfs_and_cmdline_land_where_the_zero_page_says() {
        let Some(_kvm) = kvm_runloop::testing::kvm_or_skip() else {
            return;
        };
        let ram = ram_layout(64 << 20);
        let vm = Vm::new(&kvm_runloop::VmConfig {
            ram: ram.iter().map(|&(b, s)| (b, s as usize)).collect(),
            ..Default::default()
        })
        .unwrap();
        let dir = std::env::temp_dir();
        let kernel = dir.join(format!("refvmm-boot-test-bz-{}", std::process::id()));
        let initramfs = dir.join(format!("refvmm-boot-test-initrd-{}", std::process::id()));
        std::fs::write(&kernel, fake_bzimage()).unwrap();
        std::fs::write(&initramfs, vec![0x5a; 5000]).unwrap();
        let spec = LinuxSpec {
            kernel: kernel.clone(),
            initramfs: Some(initramfs.clone()),
            cmdline: "console=ttyS0 panic=-1".into(),
            cpus: 1,
            mem64_window: crate::pci::MEM64_WINDOW,
        };
        let loaded = load(&vm, &spec, &ram);
        std::fs::remove_file(&kernel).ok();
        std::fs::remove_file(&initramfs).ok();
        let loaded = loaded.unwrap();

        // The protected-mode part at 1 MiB, entered at startup_64 (+0x200).
        assert_eq!(loaded.entry, 0x10_0200);
        let mut byte = [0u8; 1];
        vm.read_memory(0x10_0000, &mut byte).unwrap();
        assert_eq!(byte[0], 0xcc);
        // Room for decompression: pref_address + init_size.
        assert_eq!(loaded.end, 0x100_0000 + (32 << 20));
        // The initramfs at the top of RAM, page aligned.
        let h = loaded.header;
        assert_eq!({ h.ramdisk_size }, 5000);
        assert_eq!(u64::from(h.ramdisk_image), ((64 << 20) - 5000) & !0xfff);
        vm.read_memory(u64::from(h.ramdisk_image) + 4999, &mut byte)
            .unwrap();
        assert_eq!(byte[0], 0x5a);
        // The command line, NUL-terminated.
        assert_eq!(u64::from(h.cmd_line_ptr), CMDLINE_ADDR);
        let mut cmdline = [0u8; 23];
        vm.read_memory(CMDLINE_ADDR, &mut cmdline).unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 panic=-1\0");

        let map = memory_map(&ram);
        let zp = zero_page(&loaded, &map, 0xe_0000);
        assert_eq!(zp.hdr.type_of_loader, LOADER_UNDEFINED);
        assert_eq!({ zp.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ zp.hdr.header }, HDRS_MAGIC);
        assert_eq!(
            { zp.hdr.version },
            0x20f,
            "the kernel's own header is passed on"
        );
        assert_eq!({ zp.hdr.ramdisk_image }, { h.ramdisk_image });
        assert_eq!({ zp.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(zp.e820_entries as usize, map.len());
        for (e, want) in zp.e820_table.iter().zip(&map) {
            assert_eq!(
                ({ e.addr }, { e.size }, { e.r#type }),
                (want.addr, want.size, want.kind as u32)
            );
        }
        // Written by linux-loader's configurator at the zero page address.
        write_zero_page(&vm, &loaded, &map, 0xe_0000).unwrap();
        let mut magic = [0u8; 4];
        vm.read_memory(ZERO_PAGE + 0x202, &mut magic).unwrap();
        assert_eq!(&magic, b"HdrS");
        vm.read_memory(ZERO_PAGE + 0x1e8, &mut byte).unwrap();
        assert_eq!(byte[0] as usize, map.len(), "e820_entries");
    }
}
