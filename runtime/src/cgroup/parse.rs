//! Limits as users write them: sizes (`64M`, `1G`, `512k`, `1048576`) and
//! cpu counts (`0.5`, `2`).

use super::CgroupError;

fn bad(what: &'static str, value: &str, reason: &'static str) -> CgroupError {
    CgroupError::InvalidLimit {
        what,
        value: value.to_owned(),
        reason,
    }
}

/// Bytes from a number with an optional binary unit: `b`, `k`, `m`, `g`, `t`
/// (any case, `kb`/`KiB` spellings too); a fraction is allowed with a unit
/// (`1.5G`).
pub fn parse_size(s: &str) -> Result<u64, CgroupError> {
    const WHAT: &str = "size";
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad(WHAT, s, "must start with a number, like 64M"));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad(WHAT, s, "has an unknown unit (use k, M, G or T)")),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| bad(WHAT, s, "is too large"));
    }
    if !num.contains('.') {
        return Err(bad(WHAT, s, "is too large"));
    }
    if shift == 0 {
        return Err(bad(WHAT, s, "is not a whole number of bytes"));
    }
    let f: f64 = num.parse().map_err(|_| bad(WHAT, s, "is not a number"))?;
    let bytes = (f * (1u64 << shift) as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad(WHAT, s, "is too large"));
    }
    Ok(bytes as u64)
}

/// A cpu count above zero, fractions allowed.
pub fn parse_cpus(s: &str) -> Result<f64, CgroupError> {
    const WHAT: &str = "cpus";
    let f: f64 = s
        .trim()
        .parse()
        .map_err(|_| bad(WHAT, s, "is not a number, like 0.5 or 2"))?;
    if !f.is_finite() || f <= 0.0 {
        return Err(bad(WHAT, s, "must be above zero"));
    }
    if f > 1_000_000.0 {
        return Err(bad(WHAT, s, "is too large"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("2gb").unwrap(), 2 << 30);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size(" 100b ").unwrap(), 100);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
    }

    #[test]
    fn bad_sizes_say_why() {
        for (s, why) in [
            ("", "must start with a number"),
            ("M", "must start with a number"),
            ("-1", "must start with a number"),
            ("12x", "unknown unit"),
            ("1.2.3M", "not a number"),
            ("1.2.3", "whole number"),
            ("0.3", "whole number"),
            ("99999999999999999999", "too large"),
            ("20000000T", "too large"),
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(e.to_string().contains(why), "{s:?}: {e}");
            assert!(e.to_string().contains(&format!("{s:?}")), "{s:?}: {e}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert_eq!(parse_cpus("2").unwrap(), 2.0);
        for s in ["0", "-1", "abc", "", "inf", "NaN", "1e9"] {
            let e = parse_cpus(s).unwrap_err();
            assert!(
                matches!(e, CgroupError::InvalidLimit { what: "cpus", .. }),
                "{s}: {e}"
            );
        }
    }
}
