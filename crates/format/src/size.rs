//! Human-readable byte sizes: `512M`, `4G`, `1.5GiB`, `1048576`.

/// A size string that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "'{0}' is not a size (expected a number with an optional K, M, G or T suffix, e.g. \"4G\")"
)]
pub struct SizeParseError(pub String);

/// Parses a size. Suffixes are binary (K = 1024); `B`, `iB` after them are accepted.
pub fn parse_size(s: &str) -> Result<u64, SizeParseError> {
    let err = || SizeParseError(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last().ok_or_else(err)? {
        'K' | 'k' => (&t[..t.len() - 1], 1u64 << 10),
        'M' | 'm' => (&t[..t.len() - 1], 1 << 20),
        'G' | 'g' => (&t[..t.len() - 1], 1 << 30),
        'T' | 't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    if num.is_empty() || num.starts_with('-') || num.starts_with('+') {
        return Err(err());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(err);
    }
    let f: f64 = num.parse().map_err(|_| err())?;
    if !f.is_finite() || f < 0.0 || f * mult as f64 > u64::MAX as f64 {
        return Err(err());
    }
    Ok((f * mult as f64) as u64)
}

/// Formats a byte count with a binary unit, e.g. `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two or any non-zero number).
pub fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "G", "-1G", "4X", "abc", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(align_up(1, 4096), 4096);
        assert_eq!(align_up(8192, 4096), 8192);
    }
}
