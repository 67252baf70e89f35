//! Sizes on the command line: `4096`, `64K`, `512M`, `512MiB`, `2G`, `1T` (binary units, any
//! case). One parser, so every option that takes a size accepts the same forms and explains a
//! bad one the same way.

/// Parses a size in bytes; a number too large for 64 bits says so.
pub fn parse_bytes(arg: &str) -> Result<u64, String> {
    let text = arg.trim();
    if text.contains('=') {
        return Err(format!(
            "{arg:?}: give the size alone, such as 512M or 2G (not cloud-hypervisor's size=...)"
        ));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{arg:?}: expected a size in bytes or with a K, M, G or T suffix, such as 512M or 2G"
        ));
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => return Err(format!("{arg:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let too_large = || format!("{arg:?}: too large (more than 16 EiB)");
    // Only digits are left, so a parse error is an overflow.
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    number.checked_mul(1u64 << shift).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert!(parse_bytes("2X").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("G").unwrap_err().contains("expected a size"));
        assert!(parse_bytes("-1").unwrap_err().contains("expected a size"));
        assert!(
            parse_bytes("size=1G")
                .unwrap_err()
                .contains("give the size alone")
        );
    }

    #[test]
    fn too_large_says_so() {
        assert!(
            parse_bytes("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_bytes("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
    }
}
