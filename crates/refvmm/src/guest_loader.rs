//! Loading a bare-metal ELF guest and starting its vCPU the way `tests/guests/README.md`'s boot
//! contract says: every `PT_LOAD` copied to its physical address by linux-loader, 64-bit long
//! mode in ring 0 with the first 4 GiB identity-mapped (kvm-runloop's tables), RIP = `e_entry`,
//! RDI = the address of the NUL-terminated command line (0 for none), interrupts off.
//!
//! Low memory used by the loader (all below the 1 MiB that ELF images may not load into):
//!
//! | address | what |
//! |---|---|
//! | `0x1_0000` | GDT, IDT and page tables (kvm-runloop `SystemTables`, 32 KiB) |
//! | `0x1_F000` | initial stack top (the test guests switch to their own at once) |
//! | `0x2_0000` | the command line, at most [`MAX_CMDLINE`] bytes plus the NUL |

use std::fs::File;
use std::path::{Path, PathBuf};

use kvm_runloop::reexports::vm_memory::{GuestAddress, GuestMemoryMmap};
use kvm_runloop::{CpuMode, GuestEntry, Privilege, Vcpu, Vm};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::Elf;
use thiserror::Error;

/// Base of the loader's system tables.
pub const TABLES_ADDR: u64 = 0x1_0000;
/// Initial stack pointer.
pub const STACK_TOP: u64 = 0x1_f000;
/// Where the command line goes.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line, without its NUL (what the test guests accept).
pub const MAX_CMDLINE: usize = 1023;
/// ELF segments must load at or above this address (everything below is the loader's).
pub const HIGHMEM_START: u64 = 0x10_0000;

/// Why a guest could not be loaded or started.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The image file cannot be opened.
    #[error(
        "cannot open guest image {path}; give the path of a 64-bit ELF guest (tests/guests/build.sh \
         DIR builds the test guests), or leave --guest out to run the built-in one"
    )]
    Open {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// linux-loader refused it.
    #[error(
        "cannot load {path} as a 64-bit ELF guest ({reason}); it must be an x86-64 ELF whose \
         PT_LOAD segments and entry point lie at or above {HIGHMEM_START:#x} and inside guest \
         RAM ({}; raise --memory if the image is larger)",
        trap_map::view::human_size(*ram)
    )]
    Elf {
        /// The path given.
        path: PathBuf,
        /// RAM size.
        ram: u64,
        /// What linux-loader found wrong, once: its errors repeat their inner error in their
        /// own message, so the chain is not kept as a source.
        reason: String,
    },
    /// The image's memory size (with .bss) runs past RAM.
    #[error(
        "{path} needs guest RAM up to {end:#x} but the VM has {} below the PCI hole; raise \
         --memory",
        trap_map::view::human_size(*ram)
    )]
    TooBig {
        /// The path given.
        path: PathBuf,
        /// End of the image in memory.
        end: u64,
        /// RAM size below the ECAM window.
        ram: u64,
    },
    /// The command line is too long or holds a NUL.
    #[error(
        "the guest command line is {len} bytes; it must be at most {MAX_CMDLINE} bytes without NUL characters"
    )]
    Cmdline {
        /// Its length.
        len: usize,
    },
    /// Writing guest memory or vCPU registers failed.
    #[error("setting up the guest's memory or vCPU")]
    Vcpu(#[from] kvm_runloop::Error),
}

/// What was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedGuest {
    /// The entry point (RIP).
    pub entry: u64,
    /// Guest address of the command line, or 0.
    pub cmdline: u64,
}

/// Loads `path` into `vm`'s RAM (whose first `low_ram` bytes start at 0) and places `cmdline`.
pub fn load(vm: &Vm, path: &Path, cmdline: &str, low_ram: u64) -> Result<LoadedGuest, LoadError> {
    check_cmdline(cmdline)?;
    // A directory opens fine on Linux and fails only at the first read, which linux-loader
    // reports as a bad ELF header; say what it is instead.
    if path.is_dir() {
        return Err(LoadError::Open {
            path: path.into(),
            source: std::io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    let mut file = File::open(path).map_err(|source| LoadError::Open {
        path: path.into(),
        source,
    })?;
    let mem: &GuestMemoryMmap = vm.memory();
    let result =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIGHMEM_START))).map_err(|source| {
            LoadError::Elf {
                path: path.into(),
                ram: low_ram,
                reason: loader_reason(&source),
            }
        })?;
    if result.kernel_end > low_ram {
        return Err(LoadError::TooBig {
            path: path.into(),
            end: result.kernel_end,
            ram: low_ram,
        });
    }
    Ok(LoadedGuest {
        entry: result.kernel_load.0,
        cmdline: place_cmdline(vm, cmdline)?,
    })
}

/// The innermost cause of a linux-loader error, without its "Kernel Loader: " prefix.
fn loader_reason(error: &linux_loader::loader::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    let text = innermost.to_string();
    text.strip_prefix("Kernel Loader: ")
        .unwrap_or(&text)
        .to_string()
}

/// Loads refvmm's built-in guest ([`crate::builtin_guest`]) and places `cmdline`.
pub fn load_builtin(vm: &Vm, cmdline: &str) -> Result<LoadedGuest, LoadError> {
    check_cmdline(cmdline)?;
    let image = crate::builtin_guest::image();
    vm.write_memory(crate::builtin_guest::BASE, &image.bytes)?;
    Ok(LoadedGuest {
        entry: image.entry,
        cmdline: place_cmdline(vm, cmdline)?,
    })
}

fn check_cmdline(cmdline: &str) -> Result<(), LoadError> {
    if cmdline.len() > MAX_CMDLINE || cmdline.contains('\0') {
        return Err(LoadError::Cmdline { len: cmdline.len() });
    }
    Ok(())
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`]; its address, or 0 when empty.
fn place_cmdline(vm: &Vm, cmdline: &str) -> Result<u64, LoadError> {
    if cmdline.is_empty() {
        return Ok(0);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    vm.write_memory(CMDLINE_ADDR, &bytes)?;
    Ok(CMDLINE_ADDR)
}

/// Puts `vcpu` at the guest's entry in 64-bit ring 0 with RDI = the command line.
pub fn start_vcpu(vm: &Vm, vcpu: &Vcpu, guest: &LoadedGuest) -> Result<(), LoadError> {
    vcpu.setup(
        vm.memory(),
        &GuestEntry {
            mode: CpuMode::Long,
            privilege: Privilege::Kernel,
            entry: guest.entry,
            stack: STACK_TOP,
            tables: TABLES_ADDR,
        },
    )?;
    let mut regs = vcpu.regs()?;
    regs.rdi = guest.cmdline;
    vcpu.set_regs(&regs)?;
    Ok(())
}
