//! Byte counts as Kubernetes quantities ("1Mi", "500k", "1G", "1048576").

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity is not a byte count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty.
    #[error("quantity is empty")]
    Empty,
    /// The quantity does not follow the Kubernetes quantity syntax.
    #[error("quantity {0:?} is not a valid quantity (e.g. 1048576, 1Mi, 500k, 1G)")]
    Syntax(String),
    /// The quantity is below zero.
    #[error("quantity {0:?} is negative")]
    Negative(String),
    /// The quantity has a fractional part, e.g. "1.5" or "100m".
    #[error("quantity {0:?} is not a whole number of bytes")]
    Fraction(String),
    /// The quantity exceeds 2^63-1, the largest a Kubernetes quantity may be.
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// The multiplier a suffix stands for.
enum Scale {
    /// 1024^n.
    Binary(u32),
    /// 10^n, n may be negative ("m" is 10^-3).
    Decimal(i64),
}

/// The multiplier of a suffix: binary-SI, decimal-SI or a decimal exponent (`e3`, `E-2`).
/// `None` if it is none of those.
fn suffix_scale(suffix: &str) -> Option<Scale> {
    let scale = match suffix {
        "" => Scale::Decimal(0),
        "m" => Scale::Decimal(-3),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        "Ki" => Scale::Binary(1),
        "Mi" => Scale::Binary(2),
        "Gi" => Scale::Binary(3),
        "Ti" => Scale::Binary(4),
        "Pi" => Scale::Binary(5),
        "Ei" => Scale::Binary(6),
        _ => {
            // A decimal exponent: e or E, an optional sign, digits.
            let rest = suffix.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Exponents beyond i64 are absurd; saturating keeps them out of range below.
            let exp = rest.parse::<i64>().unwrap_or(if rest.starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            });
            Scale::Decimal(exp)
        }
    };
    Some(scale)
}

/// Parses a quantity of bytes: plain integers, decimal-SI (`k`, `M`, `G`, `T`, `P`, `E`),
/// binary-SI (`Ki` … `Ei`) suffixes and decimal exponents (`1e6`). Fractions are accepted only
/// when the result is a whole number of bytes (`1.5Ki` is 1536). Negative values, values that
/// are not whole bytes and values above 2^63-1 are errors.
pub fn parse_bytes(input: &str) -> Result<u64, QuantityError> {
    if input.is_empty() {
        return Err(QuantityError::Empty);
    }
    let syntax = || QuantityError::Syntax(input.to_owned());

    let (negative, unsigned) = match input.as_bytes()[0] {
        b'-' => (true, &input[1..]),
        b'+' => (false, &input[1..]),
        _ => (false, input),
    };
    let number_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(syntax());
    }
    let scale = suffix_scale(suffix).ok_or_else(syntax)?;

    // The value is digits × 10^-frac_len × scale, computed exactly. Leading zeros and
    // trailing fractional zeros carry no value; dropping them keeps the digits small.
    let frac_part = frac_part.trim_end_matches('0');
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        // Zero, whatever the sign or suffix.
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(input.to_owned()));
    }
    let too_large = || QuantityError::TooLarge(input.to_owned());
    let fraction = || QuantityError::Fraction(input.to_owned());
    // 38 digits always fit in u128; more cannot be a byte count below 2^63 anyway unless
    // they are fractional zeros, which were trimmed.
    if digits.len() > 38 {
        return Err(too_large());
    }
    let mantissa: u128 = digits.parse().map_err(|_| syntax())?;
    let frac_len = frac_part.len() as i64;

    let value = match scale {
        Scale::Binary(power) => {
            let numerator = mantissa
                .checked_mul(1u128 << (10 * power))
                .ok_or_else(too_large)?;
            divide_exact(numerator, frac_len).ok_or_else(fraction)?
        }
        Scale::Decimal(exp) => {
            let exp = exp.saturating_sub(frac_len);
            if exp >= 0 {
                let factor = u32::try_from(exp)
                    .ok()
                    .and_then(|e| 10u128.checked_pow(e))
                    .ok_or_else(too_large)?;
                mantissa.checked_mul(factor).ok_or_else(too_large)?
            } else {
                divide_exact(mantissa, exp.saturating_neg()).ok_or_else(fraction)?
            }
        }
    };
    u64::try_from(value)
        .ok()
        .filter(|v| i64::try_from(*v).is_ok())
        .ok_or_else(too_large)
}

/// `value / 10^power` if that is a whole number.
fn divide_exact(value: u128, power: i64) -> Option<u128> {
    // value is non-zero and below 10^39, so no power above 38 divides it.
    let divisor = u32::try_from(power)
        .ok()
        .and_then(|p| 10u128.checked_pow(p))?;
    value.is_multiple_of(divisor).then(|| value / divisor)
}

/// [`parse_bytes`] of a [`Quantity`].
pub fn quantity_bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    parse_bytes(&quantity.0)
}

/// Formats a byte count in the canonical form used by this API: a binary-SI suffix
/// (`Ki` … `Ei`) if a multiple of 1Ki, a decimal-SI suffix (`k` … `E`) if a multiple of 1k,
/// else a plain number. Each suffix is the largest that divides the count exactly, and when
/// both kinds do, the one leaving the smaller number wins (binary on a tie): 1048576 is "1Mi",
/// 1000 is "1k", 1536 is "1536", but 10000000000 is "10G", not "9765625Ki" (it is a multiple of
/// 1Ki too) — as Kubernetes puts the largest possible suffix, and so a "10G" quota reads back
/// as written.
///
/// A count above 2^63-1 (the most a Kubernetes quantity holds, and what [`parse_bytes`]
/// accepts) is written as 2^63-1, so whatever is written parses back.
pub fn format_bytes(bytes: u64) -> String {
    let bytes = bytes.min(i64::MAX as u64);
    if bytes == 0 {
        return "0".to_owned();
    }
    const BINARY: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    const DECIMAL: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    // The largest unit of each kind that divides `bytes`, as (mantissa, suffix).
    let binary = (1..=6u32)
        .rev()
        .map(|power| (1u64 << (10 * power), BINARY[power as usize - 1]))
        .find(|(unit, _)| bytes.is_multiple_of(*unit))
        .map(|(unit, suffix)| (bytes / unit, suffix));
    let decimal = (1..=6u32)
        .rev()
        .map(|power| (1000u64.pow(power), DECIMAL[power as usize - 1]))
        .find(|(unit, _)| bytes.is_multiple_of(*unit))
        .map(|(unit, suffix)| (bytes / unit, suffix));
    let best = match (binary, decimal) {
        (Some(b), Some(d)) => Some(if b.0 <= d.0 { b } else { d }),
        (b, d) => b.or(d),
    };
    match best {
        Some((mantissa, suffix)) => format!("{mantissa}{suffix}"),
        None => bytes.to_string(),
    }
}

/// A byte count for people, as `kubectl top` and `df -h` print one: `512`, `16.4Mi`,
/// `8.1Gi`, `123Mi` (one decimal below 100, none above; binary units). Lossy: for tables,
/// never for values that are read back.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let suffix = UNITS[unit.saturating_sub(1)];
    let text = if value >= 99.95 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{suffix}")
}

/// [`format_bytes`] as a [`Quantity`].
pub fn bytes_quantity(bytes: u64) -> Quantity {
    Quantity(format_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input and the error variant it must produce.
    type BadCase = (&'static str, fn(String) -> QuantityError);

    #[test]
    fn parses_plain_and_suffixed() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("+12", 12),
            ("1048576", 1_048_576),
            ("1Ki", 1024),
            ("1Mi", 1 << 20),
            ("3Gi", 3 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("500k", 500_000),
            ("1M", 1_000_000),
            ("1G", 1_000_000_000),
            ("2T", 2_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1e3", 1000),
            ("1E3", 1000),
            ("12e+2", 1200),
            ("1000e-3", 1),
            ("1.5Ki", 1536),
            ("1.5k", 1500),
            ("0.5Mi", 524_288),
            ("2.000", 2),
            ("1000m", 1),
            ("007", 7),
            (".5k", 500),
            ("5.", 5),
            ("0.0", 0),
            ("-0", 0),
            ("0Mi", 0),
            ("9223372036854775807", i64::MAX as u64),
            ("7Ei", 7 << 60),
        ];
        for (input, want) in cases {
            assert_eq!(parse_bytes(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        use QuantityError::*;
        let cases: &[BadCase] = &[
            ("-1", Negative),
            ("-1Mi", Negative),
            ("1.5", Fraction),
            ("100m", Fraction),
            ("1.0001k", Fraction),
            ("1e-1", Fraction),
            ("1500e-3", Fraction),
            ("1e-400", Fraction),
            ("8Ei", TooLarge),
            ("9223372036854775808", TooLarge),
            ("1e19", TooLarge),
            ("1e99999999999999999999", TooLarge),
            ("123456789012345678901234567890123456789", TooLarge),
            ("abc", Syntax),
            ("1Kb", Syntax),
            ("1ki", Syntax),
            ("1 Mi", Syntax),
            (" 1", Syntax),
            ("1.2.3", Syntax),
            (".", Syntax),
            ("Mi", Syntax),
            ("1e", Syntax),
            ("1e+", Syntax),
            ("--1", Syntax),
            ("0x10", Syntax),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_bytes(input),
                Err(want((*input).to_owned())),
                "{input}"
            );
        }
        assert_eq!(parse_bytes(""), Err(Empty));
    }

    #[test]
    fn quantity_wrapper() {
        assert_eq!(quantity_bytes(&Quantity("2Ki".into())), Ok(2048));
        assert_eq!(bytes_quantity(2048), Quantity("2Ki".into()));
    }

    #[test]
    fn formats_canonically() {
        let cases: &[(u64, &str)] = &[
            (0, "0"),
            (1, "1"),
            (999, "999"),
            (1000, "1k"),
            (1024, "1Ki"),
            (1536, "1536"),
            (2048, "2Ki"),
            (1_048_576, "1Mi"),
            (1_000_000, "1M"),
            (1_500_000, "1500k"),
            (3 << 30, "3Gi"),
            (1 << 60, "1Ei"),
            (1_000_000_000_000_000_000, "1E"),
            (u64::MAX, "9223372036854775807"),
            // Multiples of both 1Ki and 1k: the smaller number wins, binary on a tie.
            (1_024_000, "1000Ki"),
            (3_072_000, "3000Ki"),
            (10_000_000_000, "10G"),
            (1_000_000_000_000, "1T"),
            (1 << 40, "1Ti"),
        ];
        for (bytes, want) in cases {
            assert_eq!(format_bytes(*bytes), *want, "{bytes}");
        }
    }

    #[test]
    fn format_then_parse_round_trips() {
        for bytes in [
            0u64,
            1,
            999,
            1000,
            1024,
            1536,
            5 << 20,
            7_000_000,
            i64::MAX as u64,
        ] {
            assert_eq!(parse_bytes(&format_bytes(bytes)), Ok(bytes));
        }
    }

    #[test]
    fn human_sizes() {
        for (n, want) in [
            (0u64, "0"),
            (1023, "1023"),
            (1024, "1Ki"),
            (17_196_646, "16.4Mi"),
            (8_493_466, "8.1Mi"),
            (123 << 20, "123Mi"),
            (3 << 30, "3Gi"),
            (u64::MAX, "16Ei"),
        ] {
            assert_eq!(human_bytes(n), want, "{n}");
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// Any text: a byte count or an error, never a panic.
        #[test]
        fn any_text_parses_or_is_refused(s in ".{0,40}") {
            let _ = parse_bytes(&s);
        }

        /// Suffixed numbers as a client writes them: no panic, and a value that parses
        /// formats back to the same count.
        #[test]
        fn numbers_with_suffixes_round_trip(
            n in "[+-]?[0-9]{1,22}(\\.[0-9]{0,4})?(e[0-9]{1,2}|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?"
        ) {
            if let Ok(bytes) = parse_bytes(&n) {
                prop_assert_eq!(parse_bytes(&format_bytes(bytes)).expect("re-parse"), bytes);
            }
        }

        /// Every count formats to a quantity that parses back to it (past 2^63-1: to
        /// 2^63-1).
        #[test]
        fn every_count_round_trips(bytes in any::<u64>()) {
            prop_assert_eq!(
                parse_bytes(&format_bytes(bytes)).expect("parse"),
                bytes.min(i64::MAX as u64)
            );
        }
    }
}
