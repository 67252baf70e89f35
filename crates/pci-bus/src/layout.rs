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
//! | `0x80_0000_0000` .. `0x100_0000_0000` | 64-bit BAR window (512 GiB) |
//! | ports `0xC000` .. `0x1_0000` | I/O BAR window |

/// Guest physical base of the ECAM window.
pub const ECAM_BASE: u64 = 0xb000_0000;
/// Size of the ECAM window: 256 buses × 32 devices × 8 functions × 4 KiB.
pub const ECAM_SIZE: u64 = 256 << 20;
/// The 32-bit BAR window `[base, end)`.
pub const MEM32_WINDOW: (u64, u64) = (0xc000_0000, 0xfec0_0000);
/// The 64-bit BAR window `[base, end)`.
pub const MEM64_WINDOW: (u64, u64) = (0x80_0000_0000, 0x100_0000_0000);
/// The I/O BAR window `[base, end)`.
pub const IO_WINDOW: (u64, u64) = (0xc000, 0x1_0000);
/// First port of configuration mechanism #1 (0xCF8 address, 0xCFC-0xCFF data): register
/// [`Conf1`](crate::Conf1) on [`CONF1_PORTS`] ports from here.
pub const CONF1_PORT: u16 = 0xcf8;
/// How many ports [`Conf1`](crate::Conf1) decodes from [`CONF1_PORT`].
pub const CONF1_PORTS: u16 = 8;
/// Where RAM must end below 4 GiB: the start of the ECAM window.
pub const LOW_RAM_END: u64 = ECAM_BASE;
