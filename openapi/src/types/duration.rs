//! Go-style durations ("720h", "1h30m", "90m", "1.5s"), as `time.ParseDuration` reads them.

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("duration is empty")]
    Empty,
    /// The duration is negative.
    #[error("duration {0:?} is negative")]
    Negative(String),
    /// A number has no unit, e.g. "10".
    #[error("duration {0:?} is missing a unit (h, m, s, ms, us, ns)")]
    MissingUnit(String),
    /// A unit is not one of h, m, s, ms, us, µs, ns.
    #[error("duration {0:?} has an unknown unit (use h, m, s, ms, us, ns)")]
    UnknownUnit(String),
    /// Anything else that does not read as a duration.
    #[error("duration {0:?} is not a duration such as 720h, 90m or 1h30m")]
    Syntax(String),
    /// Above 2^63-1 nanoseconds (about 292 years), Go's limit.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Nanoseconds per unit.
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        // Go accepts both micro signs as well as "us".
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return None,
    })
}

/// Parses a duration the way Go's `time.ParseDuration` does: a sequence of decimal numbers, each
/// with an optional fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. "720h",
/// "1h30m", "1.5s"; "0" alone needs no unit. Negative durations are errors here, as is anything
/// above 2^63-1 nanoseconds. Fractions of a nanosecond are dropped.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(input.to_owned());
    let too_large = || DurationError::TooLarge(input.to_owned());

    let mut rest = match input.as_bytes().first() {
        None => return Err(DurationError::Empty),
        Some(b'-') => return Err(DurationError::Negative(input.to_owned())),
        Some(b'+') => &input[1..],
        Some(_) => input,
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(syntax());
    }

    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(syntax());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(input.to_owned()));
        }
        let unit = unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit(input.to_owned()))?;

        // Beyond 20 digits the value is past the limit whatever the unit (leading zeros aside).
        let int_digits = int_digits.trim_start_matches('0');
        if int_digits.len() > 20 {
            return Err(too_large());
        }
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| syntax())?
        };
        let mut nanos = int.checked_mul(unit).ok_or_else(too_large)?;
        // Digits past the 20th cannot change whole nanoseconds (the largest unit is below
        // 10^13 ns); ignoring them keeps the arithmetic in range.
        let frac_digits = &frac_digits[..frac_digits.len().min(20)];
        if !frac_digits.is_empty() {
            let frac: u128 = frac_digits.parse().map_err(|_| syntax())?;
            let scale = 10u128.pow(frac_digits.len() as u32);
            nanos += frac * unit / scale;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        if total > i64::MAX as u128 {
            return Err(too_large());
        }
        rest = after;
    }
    // total <= i64::MAX, so seconds and the remainder fit.
    Ok(Duration::new(
        (total / 1_000_000_000) as u64,
        (total % 1_000_000_000) as u32,
    ))
}

/// Kubernetes' short age format (`5s`, `3m20s`, `4h`, `2d3h`, `1y`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let m = s / 60;
    let h = m / 60;
    let d = h / 24;
    let y = d / 365;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{y}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input and the error variant it must produce.
    type BadCase = (&'static str, fn(String) -> DurationError);

    #[test]
    fn parses_go_durations() {
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("90m", Duration::from_secs(90 * 60)),
            ("720h", Duration::from_secs(720 * 3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h30m15s", Duration::from_secs(5415)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("100ms", Duration::from_millis(100)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("10μs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1.0000000001s", Duration::from_secs(1)),
            ("2h2h", Duration::from_secs(4 * 3600)),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
            (
                "9223372036854775807ns",
                Duration::from_nanos(i64::MAX as u64),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        use DurationError::*;
        let cases: &[BadCase] = &[
            ("-1h", Negative),
            ("10", MissingUnit),
            ("1h30", MissingUnit),
            ("1d", UnknownUnit),
            ("1 h", UnknownUnit),
            ("1H", UnknownUnit),
            ("h", Syntax),
            (".", Syntax),
            ("+", Syntax),
            (".h", Syntax),
            ("1..5h", MissingUnit),
            ("9223372036854775808ns", TooLarge),
            ("2562048h", TooLarge),
            ("100000000000000000000000h", TooLarge),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_duration(input),
                Err(want((*input).to_owned())),
                "{input}"
            );
        }
        assert_eq!(parse_duration(""), Err(Empty));
    }
}
