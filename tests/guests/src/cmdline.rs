//! The guest command line: space-separated `key=value` words and bare flags.
//!
//! Both loaders can pass one: the 64-bit entry takes its address in RDI, and under multiboot
//! (QEMU `-kernel ... -append '...'`) it comes from the multiboot information (whose first word,
//! the kernel's file name, is skipped). Numbers are decimal or `0x` hexadecimal, with an optional
//! `K`, `M` or `G` suffix (powers of 1024).
//!
//! ```
//! use guests::Cmdline;
//! let c = Cmdline::new(b"serial=ABC lba=0x64 mem=64M dma-fault");
//! assert_eq!(c.value("serial"), Some("ABC"));
//! assert_eq!(c.number("lba"), Ok(Some(100)));
//! assert_eq!(c.number("mem"), Ok(Some(64 << 20)));
//! assert!(c.flag("dma-fault"));
//! assert_eq!(c.number("absent"), Ok(None));
//! assert!(c.number("serial").is_err());
//! assert_eq!(c.unknown(&["serial", "lba", "mem", "dma-fault"]), None);
//! assert_eq!(c.unknown(&["serial"]), Some("lba"));
//! ```

use core::fmt;

/// Longest command line the guest reads, in bytes.
pub const MAX_LEN: usize = 1024;

/// A parsed view of a command line (borrowed bytes; non-ASCII words are ignored).
#[derive(Clone, Copy)]
pub struct Cmdline<'a> {
    bytes: &'a [u8],
}

/// A value that is not a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadNumber<'a> {
    /// The key.
    pub key: &'a str,
    /// The value that did not parse.
    pub value: &'a str,
}

impl fmt::Display for BadNumber<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command line: {}={} is not a number (use decimal or 0x hex, optional K/M/G suffix)",
            self.key, self.value
        )
    }
}

impl<'a> Cmdline<'a> {
    /// A command line over `bytes` (stops at the first NUL).
    pub fn new(bytes: &'a [u8]) -> Self {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Cmdline {
            bytes: &bytes[..end.min(MAX_LEN)],
        }
    }

    /// An empty command line.
    pub const fn empty() -> Self {
        Cmdline { bytes: &[] }
    }

    /// The same command line without its first word (multiboot loaders put the kernel path there).
    pub fn skip_first_word(self) -> Self {
        let trimmed = self
            .bytes
            .iter()
            .position(|&b| b != b' ')
            .map_or(&[][..], |i| &self.bytes[i..]);
        let rest = trimmed
            .iter()
            .position(|&b| b == b' ')
            .map_or(&[][..], |i| &trimmed[i..]);
        Cmdline { bytes: rest }
    }

    /// The whole text (empty if it is not UTF-8).
    pub fn as_str(&self) -> &'a str {
        core::str::from_utf8(self.bytes).unwrap_or("").trim()
    }

    /// Every word as `(key, value)`; a bare flag has no value.
    pub fn words(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        self.as_str()
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (w, None),
            })
    }

    /// The value of the last `key=value` word.
    pub fn value(&self, key: &str) -> Option<&'a str> {
        self.words()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, v)| v)
            .last()
    }

    /// Whether the bare flag `key` is present (`key=0`/`key=no` count as absent).
    pub fn flag(&self, key: &str) -> bool {
        self.words()
            .filter(|(k, _)| *k == key)
            .last()
            .is_some_and(|(_, v)| !matches!(v, Some("0" | "no" | "off" | "false")))
    }

    /// The number in `key=value`, if the key is present.
    pub fn number(&self, key: &'a str) -> Result<Option<u64>, BadNumber<'a>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => parse_number(v).map(Some).ok_or(BadNumber { key, value: v }),
        }
    }

    /// The first key that is not in `known`, if any.
    pub fn unknown(&self, known: &[&str]) -> Option<&'a str> {
        self.words().map(|(k, _)| k).find(|k| !known.contains(k))
    }
}

impl fmt::Debug for Cmdline<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Parses `123`, `0x7b`, `64K`, `2M`, `1G`.
pub fn parse_number(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("0xC0000000"), Some(0xc000_0000));
        assert_eq!(parse_number("4k"), Some(4096));
        assert_eq!(parse_number("1G"), Some(1 << 30));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("K"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("12z"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("99999999999999999999"), None);
        assert_eq!(parse_number("0xffffffffffffffffG"), None);
    }

    #[test]
    fn words_and_nul() {
        let c = Cmdline::new(b"  a=1   b  c=x=y \0ignored=1");
        let w: Vec<_> = c.words().collect();
        assert_eq!(w, vec![("a", Some("1")), ("b", None), ("c", Some("x=y"))]);
        assert_eq!(c.value("ignored"), None);
        assert!(c.flag("b"));
        assert!(!c.flag("a") || c.value("a") == Some("1"));
    }

    #[test]
    fn last_wins_and_flag_off() {
        let c = Cmdline::new(b"lba=1 lba=2 dma-fault=0");
        assert_eq!(c.number("lba"), Ok(Some(2)));
        assert!(!c.flag("dma-fault"));
    }

    #[test]
    fn multiboot_first_word() {
        let c = Cmdline::new(b"/path/to/nvme_e2e.elf serial=X").skip_first_word();
        assert_eq!(c.as_str(), "serial=X");
        assert_eq!(Cmdline::new(b"/only/path").skip_first_word().as_str(), "");
        assert_eq!(Cmdline::new(b"").skip_first_word().as_str(), "");
    }

    #[test]
    fn not_utf8_is_empty() {
        let c = Cmdline::new(b"a=\xff");
        assert_eq!(c.words().count(), 0);
    }

    #[test]
    fn bad_number_message_names_key() {
        let c = Cmdline::new(b"mmio=zz");
        let e = c.number("mmio").unwrap_err();
        assert!(e.to_string().contains("mmio=zz"));
    }
}
