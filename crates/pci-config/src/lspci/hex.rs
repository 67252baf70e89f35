//! `lspci -x`/`-xxx`/`-xxxx` hex dumps: lines of an offset and 16 bytes, `00: 36 1b 10 00 ...`.

use std::collections::BTreeMap;

use super::LspciError;

/// Classifies one trimmed line. `None`: not a hex dump line. `Some(Err)`: looks like one but is
/// malformed (the reason). `Some(Ok)`: offset and bytes.
pub(crate) fn parse_hex_line(t: &str) -> Option<Result<(u16, [u8; 16]), &'static str>> {
    let (off, rest) = t.split_once(':')?;
    if !(2..=3).contains(&off.len()) || !off.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut tokens = rest.split_whitespace().peekable();
    let first = tokens.peek()?;
    if first.len() != 2 || !first.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let offset = match u16::from_str_radix(off, 16) {
        Ok(o) if o % 16 == 0 && o < 0x1000 => o,
        _ => {
            return Some(Err(
                "hex dump offset must be a multiple of 0x10 below 0x1000",
            ));
        }
    };
    let mut bytes = [0u8; 16];
    let mut n = 0;
    for tok in tokens {
        if n == 16 {
            return Some(Err("hex dump line has more than 16 bytes"));
        }
        if tok.len() != 2 {
            return Some(Err("hex dump bytes must be two hex digits each"));
        }
        match u8::from_str_radix(tok, 16) {
            Ok(b) => bytes[n] = b,
            Err(_) => return Some(Err("hex dump bytes must be two hex digits each")),
        }
        n += 1;
    }
    if n != 16 {
        return Some(Err("hex dump line must have exactly 16 bytes"));
    }
    Some(Ok((offset, bytes)))
}

/// Hex lines collected for one device.
#[derive(Debug, Default, Clone)]
pub(crate) struct HexLines {
    lines: BTreeMap<u16, [u8; 16]>,
}

impl HexLines {
    pub(crate) fn insert(
        &mut self,
        line: usize,
        offset: u16,
        bytes: [u8; 16],
    ) -> Result<(), LspciError> {
        if self.lines.insert(offset, bytes).is_some() {
            return Err(LspciError::DuplicateHexLine { line, offset });
        }
        Ok(())
    }

    /// The bytes, zero-padded to 64, 256 or 4096, and how many were really dumped (up to the
    /// end of the last line).
    pub(crate) fn finish(&self) -> Option<(Vec<u8>, usize)> {
        let (&last, _) = self.lines.last_key_value()?;
        let dumped = last as usize + 16;
        let len = match dumped {
            0..=64 => 64,
            65..=256 => 256,
            _ => 4096,
        };
        let mut out = vec![0u8; len];
        for (&o, b) in &self.lines {
            out[o as usize..o as usize + 16].copy_from_slice(b);
        }
        Some((out, dumped))
    }
}

/// Parses the hex dump lines of `text` (other lines are ignored) into bytes, zero-padded to 64,
/// 256 or 4096 bytes. For text with several devices use
/// [`parse_devices`](super::parse_devices), which keeps each device's dump apart.
pub fn parse_hex_dump(text: &str) -> Result<Vec<u8>, LspciError> {
    let mut lines = HexLines::default();
    for (i, raw) in text.lines().enumerate() {
        match parse_hex_line(raw.trim()) {
            None => {}
            Some(Err(what)) => {
                return Err(LspciError::BadLine {
                    line: i + 1,
                    what,
                    text: raw.trim().to_string(),
                });
            }
            Some(Ok((o, b))) => lines.insert(i + 1, o, b)?,
        }
    }
    lines
        .finish()
        .map(|(b, _)| b)
        .ok_or(LspciError::NoHexDump { bdf: None })
}

/// Renders bytes the way `lspci -x` does: one line per 16 bytes, `00: 36 1b ...`. A partial last
/// line is padded with zeros.
pub fn render_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3 + bytes.len() / 16 * 5);
    for (i, chunk) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:02x}:", i * 16));
        for j in 0..16 {
            out.push_str(&format!(" {:02x}", chunk.get(j).copied().unwrap_or(0)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_classified() {
        let ok = parse_hex_line("10: 04 00 00 fe 00 00 00 00 00 00 00 00 00 00 00 00")
            .unwrap()
            .unwrap();
        assert_eq!(ok.0, 0x10);
        assert_eq!(ok.1[0..4], [4, 0, 0, 0xfe]);
        assert!(
            parse_hex_line("100: 01 00 01 14 00 00 00 00 00 00 00 00 00 00 00 00")
                .unwrap()
                .is_ok()
        );
        assert!(parse_hex_line("00:01.0 Ethernet controller: x").is_none());
        assert!(parse_hex_line("Bad: value").is_none());
        assert!(parse_hex_line("Control: I/O+ Mem+").is_none());
        assert!(parse_hex_line("08: 00 11").unwrap().is_err());
        assert!(parse_hex_line("00: 00 11 22").unwrap().is_err());
        assert!(
            parse_hex_line("00: 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff 00")
                .unwrap()
                .is_err()
        );
        assert!(
            parse_hex_line("00: 00 1 22 33 44 55 66 77 88 99 aa bb cc dd ee ff")
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn dump_round_trip() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let text = render_hex(&bytes);
        assert!(text.starts_with("00: 00 01 02"));
        assert_eq!(parse_hex_dump(&text).unwrap(), bytes);
        let short = "00: 86 80 d3 10 00 00 00 00 00 00 00 00 00 00 00 00\n";
        assert_eq!(parse_hex_dump(short).unwrap().len(), 64);
        let dup = format!("{short}{short}");
        assert!(matches!(
            parse_hex_dump(&dup),
            Err(LspciError::DuplicateHexLine { line: 2, offset: 0 })
        ));
        assert!(parse_hex_dump("nothing here").is_err());
    }
}
