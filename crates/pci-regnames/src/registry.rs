//! The [`RegisterDecoder`] trait and the [`Registry`] that asks decoders in turn.

use crate::device::DeviceFacts;
use crate::field::{Decoded, Field, Part};
use crate::region::Location;

/// Names the registers of one kind of device (or of one structure every device may have).
///
/// A decoder is pure: it looks only at the [`DeviceFacts`] it is given. To add a device, write
/// one file with a type implementing this trait and register it with [`Registry::with`].
pub trait RegisterDecoder: Send + Sync {
    /// The decoder's name, used as the prefix of register queries (`nvme:SQ3TDBL`).
    fn name(&self) -> &'static str;

    /// True when the decoder describes this device (by class code, vendor:device, or a
    /// structure the device has).
    fn applies_to(&self, device: &DeviceFacts) -> bool;

    /// The field holding byte `at`, if this decoder names it.
    fn field_at(&self, device: &DeviceFacts, at: Location) -> Option<Field>;

    /// The field called `name` (case-insensitive), if this decoder has one.
    fn field_named(&self, device: &DeviceFacts, name: &str) -> Option<Field>;
}

/// Why a register name could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    /// The prefix names no decoder.
    #[error("`{prefix}` is not a decoder (known: {known})")]
    UnknownDecoder {
        /// The prefix given.
        prefix: String,
        /// The decoders registered.
        known: String,
    },
    /// The decoder exists but does not describe this device.
    #[error("the {decoder} decoder does not describe this device ({why})")]
    NotThisDevice {
        /// The decoder.
        decoder: &'static str,
        /// What the device is.
        why: String,
    },
    /// No applicable decoder has a register of that name.
    #[error("no register called `{name}` on this device (decoders asked: {asked})")]
    NoSuchRegister {
        /// The name.
        name: String,
        /// The decoders asked.
        asked: String,
    },
}

/// The decoders, asked in order: the first that names a byte wins.
pub struct Registry {
    decoders: Vec<Box<dyn RegisterDecoder>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.decoders.iter().map(|d| d.name()))
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// No decoders.
    pub fn empty() -> Self {
        Registry {
            decoders: Vec::new(),
        }
    }

    /// The decoders of this crate: MSI-X table and PBA first (they sit inside device BARs and
    /// take precedence over the device's own map), then the device decoders (NVMe), then
    /// configuration space.
    pub fn builtin() -> Self {
        Self::empty()
            .with(crate::msix::MsixDecoder)
            .with(crate::nvme::NvmeDecoder)
            .with(crate::config::ConfigDecoder)
    }

    /// The same registry with `decoder` asked after the ones already there.
    pub fn with(mut self, decoder: impl RegisterDecoder + 'static) -> Self {
        self.decoders.push(Box::new(decoder));
        self
    }

    /// The names of the decoders, in the order they are asked.
    pub fn decoder_names(&self) -> Vec<&'static str> {
        self.decoders.iter().map(|d| d.name()).collect()
    }

    /// The names of the decoders that describe `device`.
    pub fn applicable(&self, device: &DeviceFacts) -> Vec<&'static str> {
        self.decoders
            .iter()
            .filter(|d| d.applies_to(device))
            .map(|d| d.name())
            .collect()
    }

    /// The field holding byte `at`, from the first applicable decoder that names it.
    pub fn field_at(&self, device: &DeviceFacts, at: Location) -> Option<Field> {
        self.decoders
            .iter()
            .filter(|d| d.applies_to(device))
            .find_map(|d| {
                d.field_at(device, at).map(|mut f| {
                    f.decoder = d.name();
                    f
                })
            })
    }

    /// Names an access of `width` bytes (1..=8) at `at`, with `value` when known.
    pub fn decode(
        &self,
        device: &DeviceFacts,
        at: Location,
        width: u8,
        value: Option<u64>,
    ) -> Decoded {
        let width = width.clamp(1, 8);
        let end = at.offset.saturating_add(width as u64);
        let mut parts = Vec::new();
        let mut offset = at.offset;
        while offset < end {
            let Some(field) = self.field_at(device, Location::new(at.region, offset)) else {
                offset += 1;
                continue;
            };
            let first = offset.max(field.location.offset);
            let last = end.min(field.end());
            let bytes = (first - field.location.offset) as u8..(last - field.location.offset) as u8;
            let whole = bytes.start == 0 && bytes.end == field.size;
            let part_value = value.filter(|_| whole).map(|v| {
                let shift = (field.location.offset - at.offset) * 8;
                let v = v.checked_shr(shift as u32).unwrap_or(0);
                if field.size >= 8 {
                    v
                } else {
                    v & ((1u64 << (field.size as u32 * 8)) - 1)
                }
            });
            offset = last.max(offset + 1);
            parts.push(Part {
                field,
                bytes,
                value: part_value,
            });
        }
        Decoded {
            location: at,
            width,
            value,
            parts,
        }
    }

    /// Finds a register by name: `SQ3TDBL` asks every applicable decoder, `nvme:SQ3TDBL` only
    /// the NVMe one.
    pub fn find(&self, device: &DeviceFacts, query: &str) -> Result<Field, FindError> {
        let (prefix, name) = match query.split_once(':') {
            Some((p, n)) => (Some(p.trim()), n.trim()),
            None => (None, query.trim()),
        };
        let candidates: Vec<&dyn RegisterDecoder> = match prefix {
            Some(p) => {
                let Some(d) = self
                    .decoders
                    .iter()
                    .find(|d| d.name().eq_ignore_ascii_case(p))
                else {
                    return Err(FindError::UnknownDecoder {
                        prefix: p.to_string(),
                        known: self.decoder_names().join(", "),
                    });
                };
                if !d.applies_to(device) {
                    return Err(FindError::NotThisDevice {
                        decoder: d.name(),
                        why: describe(device),
                    });
                }
                vec![d.as_ref()]
            }
            None => self
                .decoders
                .iter()
                .filter(|d| d.applies_to(device))
                .map(|d| d.as_ref())
                .collect(),
        };
        candidates
            .iter()
            .find_map(|d| {
                d.field_named(device, name).map(|mut f| {
                    f.decoder = d.name();
                    f
                })
            })
            .ok_or_else(|| FindError::NoSuchRegister {
                name: name.to_string(),
                asked: candidates
                    .iter()
                    .map(|d| d.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

fn describe(device: &DeviceFacts) -> String {
    let ids = match (device.vendor_id(), device.device_id()) {
        (Some(v), Some(d)) => format!("{v:04x}:{d:04x}"),
        _ => "IDs unknown".to_string(),
    };
    match device.class_code() {
        Some(c) => format!("{ids}, class {c:06x}"),
        None => format!("{ids}, class unknown"),
    }
}
