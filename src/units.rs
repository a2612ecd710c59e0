//! Units: durations and byte sizes, parsed and printed in one place.
//!
//! The bottom of the crate: it imports nothing from it. `config` and
//! `schedule` parse every duration here (`30s`, `2m30s`, `500ms`, a plain
//! number of seconds), bounded by [`MAX_DURATION`] so that instant
//! arithmetic never overflows; sizes are printed with binary units.

use std::time::Duration;

/// No duration (timeout, interval, `@every`) is longer: beyond it, instant
/// arithmetic could overflow, and no real setting comes near.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86400);

/// Parse "30s", "2m30s", "1h", "500ms" or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = s.parse::<u64>() {
        if n > MAX_DURATION.as_secs() {
            return Err(format!("bad duration {s:?}: longer than 10 years"));
        }
        return Ok(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_alphabetic() {
                unit.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("bad duration {s:?} (examples: 30s, 2m30s, 1h)"))?;
        num.clear();
        let too_long = || format!("bad duration {s:?}: too long");
        let secs = |mul: u64| {
            n.checked_mul(mul)
                .map(Duration::from_secs)
                .ok_or_else(too_long)
        };
        let d = match unit.as_str() {
            "ms" => Duration::from_millis(n),
            "s" => secs(1)?,
            "m" => secs(60)?,
            "h" => secs(3600)?,
            "d" => secs(86400)?,
            _ => {
                return Err(format!(
                    "bad duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d)"
                ));
            }
        };
        total = total.checked_add(d).ok_or_else(too_long)?;
        any = true;
    }
    if total > MAX_DURATION {
        return Err(format!("bad duration {s:?}: longer than 10 years"));
    }
    if !num.is_empty() || !any {
        return Err(format!(
            "bad duration {s:?}: a number needs a unit (examples: 30s, 2m30s, 1h)"
        ));
    }
    Ok(total)
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2m30s").unwrap(), Duration::from_secs(150));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("5m3").is_err());
        assert!(parse_duration("").is_err());
        // found by fuzzing: overflow panicked (debug) or wrapped (release)
        assert!(
            parse_duration("9999999999999999999m30s")
                .unwrap_err()
                .contains("too long")
        );
        assert!(parse_duration("18446744073709551615d").is_err());
        assert!(parse_duration("3700d").unwrap_err().contains("10 years"));
        assert!(
            parse_duration("99999999999")
                .unwrap_err()
                .contains("10 years")
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }
}
