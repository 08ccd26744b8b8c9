//! Resource quantities (`500m`, `2Gi`, `1e3`): parsing, comparison and the canonical form
//! the API server stores.
//!
//! Owns apimachinery's `resource.Quantity` rules at nano precision. Pure code.

use std::cmp::Ordering;
use std::fmt;

/// The decode error apimachinery reports for a malformed quantity.
pub const FORMAT_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
/// The decode error for an unknown suffix.
pub const SUFFIX_ERROR: &str = "unable to parse quantity's suffix";

const NANO: i128 = 1_000_000_000;

/// How a quantity is written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `k`, `M`, `m`, ... (and no suffix).
    DecimalSi,
    /// `Ki`, `Mi`, ...
    BinarySi,
    /// `1e3`.
    DecimalExponent,
}

/// A parsed quantity, exact to 10^-9 (smaller fractions round up, as the API server does).
#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.nanos.cmp(&other.nanos))
    }
}

impl Quantity {
    /// Parses apimachinery's quantity syntax.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let bytes = s.as_bytes();
        let mut i = 0;
        let negative = match bytes.first() {
            Some(b'-') => {
                i = 1;
                true
            }
            Some(b'+') => {
                i = 1;
                false
            }
            _ => false,
        };
        let num_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[num_start..i];
        let suffix = &s[i..];
        if number.is_empty() || number.matches('.').count() > 1 || number == "." {
            return Err(FORMAT_ERROR);
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        // digits as an integer scaled by 10^frac_len
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return Err(FORMAT_ERROR);
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| FORMAT_ERROR)?
        };
        let frac_len = u32::try_from(frac_part.len()).map_err(|_| FORMAT_ERROR)?;
        let (format, factor) = parse_suffix(suffix)?;
        // value = mantissa / 10^frac_len * factor, in nanos = mantissa * factor * 1e9 / 10^frac_len
        let nanos = factor.scale(mantissa, frac_len).ok_or(FORMAT_ERROR)?;
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }

    /// True when the quantity is below zero.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The value in units of 10^-9.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// The canonical string the API server stores and prints.
    pub fn canonical(&self) -> String {
        let v = self.nanos;
        if v == 0 {
            return "0".to_owned();
        }
        let sign = if v < 0 { "-" } else { "" };
        let abs = v.abs();
        if self.format == Format::BinarySi && abs >= 1024 * NANO && abs % NANO == 0 {
            let mut n = abs / NANO;
            let mut k = 0;
            while k < 6 && n % 1024 == 0 {
                n /= 1024;
                k += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][k];
            return format!("{sign}{n}{suffix}");
        }
        // Largest exponent (a multiple of 3, from 10^18 down to 10^-9) without precision loss.
        let mut exp: i32 = 18;
        loop {
            let divisor = 10i128.pow(u32::try_from(exp + 9).unwrap_or(0));
            if abs % divisor == 0 || exp == -9 {
                let n = abs / divisor;
                let suffix = match (self.format, exp) {
                    (Format::DecimalExponent, 0) => String::new(),
                    (Format::DecimalExponent, e) => format!("e{e}"),
                    (_, e) => decimal_suffix(e).to_owned(),
                };
                return format!("{sign}{n}{suffix}");
            }
            exp -= 3;
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

fn decimal_suffix(exp: i32) -> &'static str {
    match exp {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => "",
    }
}

/// A multiplier: 2^(10k) or 10^e.
enum Factor {
    Binary(u32),
    Decimal(i32),
}

impl Factor {
    /// `mantissa / 10^frac_len * self`, in nanos, rounding up any remainder.
    fn scale(&self, mantissa: i128, frac_len: u32) -> Option<i128> {
        let (num, den) = match *self {
            Factor::Binary(k) => (
                mantissa
                    .checked_mul(1i128.checked_shl(10 * k)?)?
                    .checked_mul(NANO)?,
                10i128.checked_pow(frac_len)?,
            ),
            Factor::Decimal(e) => {
                let e = e + 9 - i32::try_from(frac_len).ok()?;
                if e >= 0 {
                    (
                        mantissa.checked_mul(10i128.checked_pow(u32::try_from(e).ok()?)?)?,
                        1,
                    )
                } else {
                    (mantissa, 10i128.checked_pow(u32::try_from(-e).ok()?)?)
                }
            }
        };
        let q = num / den;
        Some(if num % den != 0 { q + 1 } else { q })
    }
}

fn parse_suffix(s: &str) -> Result<(Format, Factor), &'static str> {
    let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if let Some(k) = binary.iter().position(|b| *b == s) {
        return Ok((
            Format::BinarySi,
            Factor::Binary(u32::try_from(k + 1).unwrap_or(0)),
        ));
    }
    let decimal = match s {
        "" => Some(0),
        "n" => Some(-9),
        "u" => Some(-6),
        "m" => Some(-3),
        "k" => Some(3),
        "M" => Some(6),
        "G" => Some(9),
        "T" => Some(12),
        "P" => Some(15),
        "E" => Some(18),
        _ => None,
    };
    if let Some(e) = decimal {
        return Ok((Format::DecimalSi, Factor::Decimal(e)));
    }
    if let Some(rest) = s.strip_prefix('e').or_else(|| s.strip_prefix('E')) {
        let e: i32 = rest.parse().map_err(|_| SUFFIX_ERROR)?;
        if !(-40..=40).contains(&e) {
            return Err(SUFFIX_ERROR);
        }
        return Ok((Format::DecimalExponent, Factor::Decimal(e)));
    }
    if s.chars().all(|c| "eEinumkKMGTP+-0123456789".contains(c)) {
        Err(SUFFIX_ERROR)
    } else {
        Err(FORMAT_ERROR)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn canon(s: &str) -> String {
        Quantity::parse(s).unwrap().canonical()
    }

    #[test]
    fn canonical_forms_match_apimachinery() {
        assert_eq!(canon("0.5"), "500m");
        assert_eq!(canon("2000m"), "2");
        assert_eq!(canon("1.5Gi"), "1536Mi");
        assert_eq!(canon("1024Mi"), "1Gi");
        assert_eq!(canon("1500"), "1500");
        assert_eq!(canon("2000"), "2k");
        assert_eq!(canon("512"), "512");
        assert_eq!(canon("0.5Ki"), "512");
        assert_eq!(canon("100Mi"), "100Mi");
        assert_eq!(canon("1e3"), "1e3");
        assert_eq!(canon("-1"), "-1");
        assert_eq!(canon("0.0000000001"), "1n");
        assert_eq!(canon("12"), "12");
    }

    #[test]
    fn malformed_quantities_are_rejected() {
        assert_eq!(Quantity::parse(""), Err(FORMAT_ERROR));
        assert_eq!(Quantity::parse("abc"), Err(FORMAT_ERROR));
        assert_eq!(Quantity::parse("1.2.3"), Err(FORMAT_ERROR));
        assert_eq!(Quantity::parse("1Qi"), Err(FORMAT_ERROR));
        assert_eq!(Quantity::parse("1Kb"), Err(FORMAT_ERROR));
        assert_eq!(Quantity::parse("1KK"), Err(SUFFIX_ERROR));
    }

    #[test]
    fn comparison_crosses_formats() {
        assert!(Quantity::parse("1Gi").unwrap() > Quantity::parse("1G").unwrap());
        assert!(Quantity::parse("500m").unwrap() < Quantity::parse("1").unwrap());
        assert_eq!(
            Quantity::parse("1000m").unwrap(),
            Quantity::parse("1").unwrap()
        );
    }

    proptest! {
        #[test]
        fn canonical_form_parses_to_the_same_value(n in 0i64..1_000_000, suffix in prop::sample::select(vec!["", "m", "k", "M", "Ki", "Mi", "Gi"])) {
            let q = Quantity::parse(&format!("{n}{suffix}")).unwrap();
            let back = Quantity::parse(&q.canonical()).unwrap();
            prop_assert_eq!(q.nanos(), back.nanos());
        }
    }
}
