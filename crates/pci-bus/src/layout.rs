//! A default guest-physical layout for the bus (x86, QEMU q35-like). A VMM with its own memory
//! map passes its own windows to [`BarAllocator::with_windows`](crate::BarAllocator::with_windows)
//! and registers [`Ecam`](crate::Ecam) wherever it wants; these constants are only the defaults.
//!
//! | range | what |
//! |---|---|
//! | `0` .. `min(RAM, 0xB000_0000)` | low RAM |
//! | `0xB000_0000` .. `0xC000_0000` | ECAM, 256 MiB: buses 0-255, 4 KiB per function (only bus 0 is populated) |
//! | `0xC000_0000` .. `0xFEC0_0000` | 32-bit BAR window |
//! | `0xFEC0_0000` .. `0xFF00_0000` | IOAPIC and local APIC (never given to a BAR) |
//! | `4 GiB` .. | the rest of RAM, if more than 2.75 GiB |
//! | `0x80_0000_0000` .. `0x100_0000_0000` | 64-bit BAR window (512 GiB), or [`mem64_window`] for the guest's RAM and the host's physical address width |
//! | ports `0xC000` .. `0x1_0000` | I/O BAR window |

/// Guest physical base of the ECAM window.
pub const ECAM_BASE: u64 = 0xb000_0000;
/// Size of the ECAM window: 256 buses × 32 devices × 8 functions × 4 KiB.
pub const ECAM_SIZE: u64 = 256 << 20;
/// The 32-bit BAR window `[base, end)`.
pub const MEM32_WINDOW: (u64, u64) = (0xc000_0000, 0xfec0_0000);
/// The 64-bit BAR window `[base, end)`.
pub const MEM64_WINDOW: (u64, u64) = (0x80_0000_0000, 0x100_0000_0000);
/// Alignment of the base of [`mem64_window`]: the largest x86-64 page, so a BAR of 1 GiB or
/// more placed at the base can be mapped by KVM with 1 GiB pages.
pub const MEM64_ALIGN: u64 = 1 << 30;

/// The 64-bit BAR window `[base, end)` for a guest whose RAM ends at `ram_end` (exclusive), on
/// a host whose CPU has `phys_bits` physical address bits (CPUID 0x80000008 EAX bits 7:0, AMD64
/// APM vol. 3 / Intel SDM vol. 2A "CPUID"): from the first 1 GiB boundary at or above both the
/// end of RAM and 4 GiB, up to the last address the CPU can put on the bus. The allocator fills
/// it from the base up, so the part in use is as large as the devices' BARs need
/// ([`BarAllocator::mem64_in_use`](crate::BarAllocator::mem64_in_use)); the limit keeps every
/// BAR where the guest's page tables and the host's EPT/NPT can reach it.
pub fn mem64_window(ram_end: u64, phys_bits: u8) -> Option<(u64, u64)> {
    let base = ram_end.max(1 << 32).checked_next_multiple_of(MEM64_ALIGN)?;
    let end = 1u64.checked_shl(u32::from(phys_bits.min(63)))?;
    (base < end).then_some((base, end))
}

/// The I/O BAR window `[base, end)`.
pub const IO_WINDOW: (u64, u64) = (0xc000, 0x1_0000);
/// First port of configuration mechanism #1 (0xCF8 address, 0xCFC-0xCFF data): register
/// [`Conf1`](crate::Conf1) on [`CONF1_PORTS`] ports from here.
pub const CONF1_PORT: u16 = 0xcf8;
/// How many ports [`Conf1`](crate::Conf1) decodes from [`CONF1_PORT`].
pub const CONF1_PORTS: u16 = 8;
/// Where RAM must end below 4 GiB: the start of the ECAM window.
pub const LOW_RAM_END: u64 = ECAM_BASE;
