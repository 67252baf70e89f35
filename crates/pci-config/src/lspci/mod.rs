//! `lspci` interoperability: parse `lspci -vv` text and `-xxx`/`-xxxx` hex dumps that users paste
//! from real machines, and render any [`ConfigSpace`](crate::ConfigSpace) the way `lspci -vv`
//! does.
//!
//! # Parsing
//!
//! ```
//! use pci_config::lspci;
//!
//! let text = "\
//! 00:01.0 Non-Volatile memory controller [0108]: Red Hat, Inc. QEMU NVM Express Controller [1b36:0010] (rev 02) (prog-if 02 [NVM Express])
//! \tSubsystem: Red Hat, Inc. Device [1af4:1100]
//! \tControl: I/O+ Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR+ FastB2B- DisINTx+
//! \tRegion 0: Memory at febd0000 (64-bit, non-prefetchable) [size=16K]
//! \tCapabilities: [40] MSI-X: Enable+ Count=65 Masked-
//! \t\tVector table: BAR=0 offset=00002000
//! \t\tPBA: BAR=0 offset=00003000
//! \tKernel driver in use: nvme
//! ";
//! let dev = lspci::find_device(text, "0000:00:01.0".parse()?)?;
//! assert_eq!((dev.vendor_id(), dev.device_id()), (Some(0x1b36), Some(0x0010)));
//! let bar0 = dev.bar(0).unwrap();
//! assert_eq!((bar0.address, bar0.size), (Some(0xfebd_0000), Some(16 * 1024)));
//! let msix = dev.msix().unwrap();
//! assert_eq!(msix.table_size, 65);
//! assert_eq!(msix.table.unwrap().offset, 0x2000);
//! assert_eq!(dev.kernel_driver(), Some("nvme"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Accepted input: `lspci -v`/`-vv`/`-vvv`, with or without `-n`/`-nn` (IDs are only known with
//! one of them, or from a hex dump), `-D`, `-k`, and `-x`/`-xxx`/`-xxxx` hex. Several devices may
//! be in one text. Variants seen in the wild are understood: `Memory at <unassigned>`,
//! `[disabled]`, `[virtual]`, `[size=16K]`, 64-bit addresses such as `2ff00000000`,
//! `Capabilities: <access denied>` (non-root runs), `Kernel driver in use:`, `IOMMU group:`.
//! With a hex dump, [`LspciDevice::to_config_space`] gives a full [`ConfigSpace`](crate::ConfigSpace)
//! whose BAR sizes come from the `[size=...]` text.
//!
//! # Rendering
//!
//! [`render`] prints the lines `lspci -vvnn` prints for the header, BARs, ROM and the MSI, MSI-X,
//! Power Management, Express (device and link registers), vendor-specific and extended
//! capabilities (names and headers). Vendor/device names need pci.ids, which this crate does not
//! carry, so they print as `Device [vvvv:dddd]`; lines for registers it does not decode (e.g. AER
//! status bits) are left out. The output parses back with [`parse_devices`].

mod device;
mod hex;
mod lines;
mod names;
mod parse;
mod render;
mod render_caps;

pub use device::{LspciBar, LspciCapability, LspciDevice, LspciMsi, LspciMsix, LspciRom};
pub use hex::{parse_hex_dump, render_hex};
pub use names::class_name;
pub use parse::{find_device, parse_devices};
pub use render::{HexDump, RenderOptions, render};

use thiserror::Error;

use crate::bar::BarError;
use crate::bdf::Bdf;
use crate::error::ConfigError;

/// Why lspci text could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LspciError {
    /// No line starts with a slot address.
    #[error(
        "no PCI device found: expected a line starting with a slot address, such as \
         `00:01.0 Ethernet controller: ...` (paste the output of `lspci -vv`, ideally \
         `sudo lspci -vvnn -xxx`)"
    )]
    NoDevices,
    /// The requested device is not in the text.
    #[error("device {bdf} is not in the lspci text; it lists: {available}")]
    DeviceNotFound {
        /// Requested address.
        bdf: Bdf,
        /// Addresses that are in the text.
        available: String,
    },
    /// A line the parser knows could not be decoded.
    #[error("line {line}: {what}: `{text}`")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: &'static str,
        /// The line, trimmed.
        text: String,
    },
    /// The same hex dump offset appears twice for one device.
    #[error("line {line}: hex dump offset {offset:#x} appears twice for the same device")]
    DuplicateHexLine {
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The offset.
        offset: u16,
    },
    /// A configuration space was asked for but the text has no hex dump.
    #[error(
        "{}: no hex dump in the lspci text; run `sudo lspci -vv -xxx` (or -xxxx for the PCI \
         Express extended space) to get the configuration bytes",
        bdf.map_or("input".to_string(), |b| format!("device {b}"))
    )]
    NoHexDump {
        /// The device, when known.
        bdf: Option<Bdf>,
    },
    /// The hex dump is not a usable configuration space.
    #[error("device {bdf}: hex dump is not a usable configuration space: {source}")]
    Config {
        /// The device.
        bdf: Bdf,
        /// Why.
        source: ConfigError,
    },
    /// A BAR's text and hex disagree (e.g. the address is not aligned to the size).
    #[error("device {bdf}: {source}")]
    Bar {
        /// The device.
        bdf: Bdf,
        /// Why.
        source: BarError,
    },
}
