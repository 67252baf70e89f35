//! What a decoder says about a register ([`Field`]) and what the registry says about one access
//! ([`Decoded`]): the names, and the value decoded where that helps.

use std::fmt;

use crate::region::Location;

/// Turns a register's value into words (`Mem+ BusMaster-`, `tail 8`).
pub type ValueFormatter = fn(u64) -> String;

/// A named register (or a named field of one) in a region.
#[derive(Debug, Clone)]
pub struct Field {
    /// Where the register starts.
    pub location: Location,
    /// Its size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// The short name an engineer of that device uses: `SQ3TDBL`, `COMMAND`, `MSIX[3].CTRL`.
    pub name: String,
    /// What it is, in words: `Submission Queue 3 Tail Doorbell`.
    pub description: String,
    /// How to read its value, when a decoder knows.
    pub formatter: Option<ValueFormatter>,
    /// What the decoder assumed to name it (e.g. the NVMe doorbell stride), when it had to.
    pub assumption: Option<String>,
    /// The decoder that named it (`pci-config`, `msix`, `nvme`).
    pub decoder: &'static str,
}

impl Field {
    /// A field without a value formatter or assumption.
    pub fn new(
        location: Location,
        size: u8,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Field {
            location,
            size,
            name: name.into(),
            description: description.into(),
            formatter: None,
            assumption: None,
            decoder: "",
        }
    }

    /// The same field with a value formatter.
    pub fn formatted(mut self, formatter: ValueFormatter) -> Self {
        self.formatter = Some(formatter);
        self
    }

    /// The same field with the assumption made to name it.
    pub fn assuming(mut self, assumption: impl Into<String>) -> Self {
        self.assumption = Some(assumption.into());
        self
    }

    /// True when the field holds byte `offset` of its region.
    pub fn contains(&self, offset: u64) -> bool {
        offset >= self.location.offset && offset - self.location.offset < self.size as u64
    }

    /// Last offset plus one.
    pub fn end(&self) -> u64 {
        self.location.offset + self.size as u64
    }

    /// The value in words, when the field has a formatter.
    pub fn format(&self, value: u64) -> Option<String> {
        self.formatter.map(|f| f(value))
    }
}

/// One field an access touched.
#[derive(Debug, Clone)]
pub struct Part {
    /// The field.
    pub field: Field,
    /// The bytes of the field the access covered, relative to the field's start: `0..size`
    /// when the access covered all of it.
    pub bytes: std::ops::Range<u8>,
    /// The field's value, when the access carried one and covered the whole field.
    pub value: Option<u64>,
}

impl Part {
    /// True when the access covered the whole field.
    pub fn whole(&self) -> bool {
        self.bytes.start == 0 && self.bytes.end == self.field.size
    }

    /// `SQ3TDBL`, or `CAP[4..8]` for part of a field.
    pub fn name(&self) -> String {
        if self.whole() {
            self.field.name.clone()
        } else {
            format!(
                "{}[{}..{}]",
                self.field.name, self.bytes.start, self.bytes.end
            )
        }
    }
}

/// What the registry makes of one access: the fields it touched, in offset order.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Where the access starts.
    pub location: Location,
    /// Its width in bytes.
    pub width: u8,
    /// The value written or read, when known.
    pub value: Option<u64>,
    /// The named fields it touched; empty when no decoder names these bytes.
    pub parts: Vec<Part>,
}

impl Decoded {
    /// True when a decoder named at least one byte.
    pub fn is_named(&self) -> bool {
        !self.parts.is_empty()
    }

    /// The name of what was accessed: `SQ3TDBL`, `COMMAND/STATUS`, or `bar0+0x1a0` when nothing
    /// names it.
    pub fn name(&self) -> String {
        if self.parts.is_empty() {
            return self.location.to_string();
        }
        let names: Vec<String> = self.parts.iter().map(Part::name).collect();
        names.join("/")
    }

    /// The decoded value, for the fields with a formatter that the access covered whole:
    /// `tail 8`, or `COMMAND: Mem+ BusMaster+; STATUS: Cap+` for several.
    pub fn value_text(&self) -> Option<String> {
        let texts: Vec<(String, String)> = self
            .parts
            .iter()
            .filter_map(|p| Some((p.name(), p.field.format(p.value?)?)))
            .collect();
        match texts.len() {
            0 => None,
            1 if self.parts.len() == 1 => Some(texts[0].1.clone()),
            _ => Some(
                texts
                    .iter()
                    .map(|(n, t)| format!("{n}: {t}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        }
    }
}

impl fmt::Display for Decoded {
    /// `SQ3TDBL` or `SQ3TDBL (tail 8)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(text) = self.value_text() {
            write!(f, " ({text})")?;
        }
        Ok(())
    }
}

/// Bits `lo..=hi` of `v`.
pub(crate) fn bits(v: u64, lo: u32, hi: u32) -> u64 {
    (v >> lo) & ((1u64 << (hi - lo + 1)) - 1)
}

/// `Name+` or `Name-` for one bit, as lspci writes flags.
pub(crate) fn flag(v: u64, bit: u32, name: &str) -> String {
    format!("{name}{}", if v >> bit & 1 == 1 { '+' } else { '-' })
}
