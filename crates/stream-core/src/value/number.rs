//! Numbers and MongoDB's numeric promotion: int32 → int64 → double, and decimal when
//! either operand is a decimal. Integer overflow promotes to the next wider type
//! (int32 → int64 → double), exactly as MongoDB's `$add`, `$multiply` and `$sum` do.

use super::{Decimal128, Value};
use std::cmp::Ordering;

/// A numeric value, copied out of a [`Value`] for arithmetic.
#[derive(Clone, Copy, Debug)]
pub enum Number {
    /// int32
    Int32(i32),
    /// int64
    Int64(i64),
    /// double
    Double(f64),
    /// decimal128
    Decimal(Decimal128),
}

// `add`/`sub`/`mul`/`div` are named after the operators they implement but follow
// MongoDB's promotion rules (and `div` can fail), so they are not `std::ops` impls.
#[allow(clippy::should_implement_trait)]
impl Number {
    /// The number inside a value, if it is numeric.
    #[inline]
    pub fn from_value(v: &Value) -> Option<Number> {
        match v {
            Value::Int32(n) => Some(Number::Int32(*n)),
            Value::Int64(n) => Some(Number::Int64(*n)),
            Value::Double(n) => Some(Number::Double(*n)),
            Value::Decimal(n) => Some(Number::Decimal(*n)),
            _ => None,
        }
    }

    /// Back into a value.
    #[inline]
    pub fn to_value(self) -> Value {
        match self {
            Number::Int32(n) => Value::Int32(n),
            Number::Int64(n) => Value::Int64(n),
            Number::Double(n) => Value::Double(n),
            Number::Decimal(n) => Value::Decimal(n),
        }
    }

    /// As a double (lossy for large longs and for decimals).
    pub fn to_f64(self) -> f64 {
        match self {
            Number::Int32(n) => n as f64,
            Number::Int64(n) => n as f64,
            Number::Double(n) => n,
            Number::Decimal(d) => decimal_to_f64(d),
        }
    }

    /// As a decimal128 (doubles keep 15 significant digits, as MongoDB converts them).
    pub fn to_decimal(self) -> Decimal128 {
        match self {
            Number::Int32(n) => Decimal128::from(n),
            Number::Int64(n) => Decimal128::from(n),
            Number::Double(n) => f64_to_decimal(n),
            Number::Decimal(d) => d,
        }
    }

    /// The integral value when it is exact and fits an i64.
    pub fn to_i64_exact(self) -> Option<i64> {
        match self {
            Number::Int32(n) => Some(n as i64),
            Number::Int64(n) => Some(n),
            Number::Double(n) => {
                // Every f64 in [-2^63, 2^63) with no fraction is exactly an i64.
                if n.fract() == 0.0
                    && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&n)
                {
                    Some(n as i64)
                } else {
                    None
                }
            }
            Number::Decimal(d) if d.is_finite() => dec_integer_string(d)?.parse().ok(),
            Number::Decimal(_) => None,
        }
    }

    /// True for NaN doubles and decimals.
    pub fn is_nan(self) -> bool {
        match self {
            Number::Double(n) => n.is_nan(),
            Number::Decimal(d) => d.is_nan(),
            _ => false,
        }
    }

    /// True when the number is zero.
    pub fn is_zero(self) -> bool {
        match self {
            Number::Int32(n) => n == 0,
            Number::Int64(n) => n == 0,
            Number::Double(n) => n == 0.0,
            Number::Decimal(d) => d.is_zero(),
        }
    }

    /// Addition with MongoDB's promotion and overflow rules.
    pub fn add(self, other: Number) -> Number {
        use Number::*;
        match (self, other) {
            (Decimal(_), _) | (_, Decimal(_)) => Decimal(self.to_decimal() + other.to_decimal()),
            (Double(_), _) | (_, Double(_)) => Double(self.to_f64() + other.to_f64()),
            (Int32(a), Int32(b)) => match a.checked_add(b) {
                Some(r) => Int32(r),
                None => Int64(a as i64 + b as i64),
            },
            _ => {
                let (a, b) = (self.as_i64_unchecked(), other.as_i64_unchecked());
                match a.checked_add(b) {
                    Some(r) => Int64(r),
                    None => Double(a as f64 + b as f64),
                }
            }
        }
    }

    /// Subtraction with MongoDB's promotion and overflow rules.
    pub fn sub(self, other: Number) -> Number {
        use Number::*;
        match (self, other) {
            (Decimal(_), _) | (_, Decimal(_)) => Decimal(self.to_decimal() - other.to_decimal()),
            (Double(_), _) | (_, Double(_)) => Double(self.to_f64() - other.to_f64()),
            (Int32(a), Int32(b)) => match a.checked_sub(b) {
                Some(r) => Int32(r),
                None => Int64(a as i64 - b as i64),
            },
            _ => {
                let (a, b) = (self.as_i64_unchecked(), other.as_i64_unchecked());
                match a.checked_sub(b) {
                    Some(r) => Int64(r),
                    None => Double(a as f64 - b as f64),
                }
            }
        }
    }

    /// Multiplication with MongoDB's promotion and overflow rules.
    pub fn mul(self, other: Number) -> Number {
        use Number::*;
        match (self, other) {
            (Decimal(_), _) | (_, Decimal(_)) => Decimal(self.to_decimal() * other.to_decimal()),
            (Double(_), _) | (_, Double(_)) => Double(self.to_f64() * other.to_f64()),
            (Int32(a), Int32(b)) => match a.checked_mul(b) {
                Some(r) => Int32(r),
                None => Int64(a as i64 * b as i64),
            },
            _ => {
                let (a, b) = (self.as_i64_unchecked(), other.as_i64_unchecked());
                match a.checked_mul(b) {
                    Some(r) => Int64(r),
                    None => Double(a as f64 * b as f64),
                }
            }
        }
    }

    /// Division: always a double, or a decimal when either side is decimal.
    /// Returns `None` when dividing by zero (MongoDB raises an error).
    pub fn div(self, other: Number) -> Option<Number> {
        if other.is_zero() {
            return None;
        }
        Some(match (self, other) {
            (Number::Decimal(_), _) | (_, Number::Decimal(_)) => {
                Number::Decimal(self.to_decimal() / other.to_decimal())
            }
            _ => Number::Double(self.to_f64() / other.to_f64()),
        })
    }

    /// The narrowest integer type wins only among integers; used after an integer
    /// operation to keep int32 results int32 where MongoDB does.
    fn as_i64_unchecked(self) -> i64 {
        match self {
            Number::Int32(n) => n as i64,
            Number::Int64(n) => n,
            Number::Double(n) => n as i64,
            Number::Decimal(d) => decimal_to_f64(d) as i64,
        }
    }

    /// Numeric comparison across types. NaN is equal to NaN and lower than every other
    /// number (MongoDB's sort order).
    pub fn cmp_total(self, other: Number) -> Ordering {
        use Number::*;
        match (self, other) {
            (Int32(a), Int32(b)) => a.cmp(&b),
            (Int32(a), Int64(b)) => (a as i64).cmp(&b),
            (Int64(a), Int32(b)) => a.cmp(&(b as i64)),
            (Int64(a), Int64(b)) => a.cmp(&b),
            (Decimal(_), _) | (_, Decimal(_)) => {
                let (a, b) = (self.to_decimal(), other.to_decimal());
                match (a.is_nan(), b.is_nan()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
                }
            }
            (Double(a), Double(b)) => cmp_f64(a, b),
            (Double(a), Int32(b)) => cmp_f64(a, b as f64),
            (Int32(a), Double(b)) => cmp_f64(a as f64, b),
            (Double(a), Int64(b)) => cmp_f64_i64(a, b),
            (Int64(a), Double(b)) => cmp_f64_i64(b, a).reverse(),
        }
    }
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Exact comparison of a double with a long (no rounding of the long through f64).
fn cmp_f64_i64(a: f64, b: i64) -> Ordering {
    if a.is_nan() {
        return Ordering::Less;
    }
    // 2^63 as f64 is exact; every f64 at or above it exceeds any i64.
    if a >= 9.223_372_036_854_776e18 {
        return Ordering::Greater;
    }
    if a < -9.223_372_036_854_776e18 {
        return Ordering::Less;
    }
    let t = a.trunc() as i64; // exact: |a| < 2^63
    match t.cmp(&b) {
        Ordering::Equal => {
            let frac = a - a.trunc();
            cmp_f64(frac, 0.0)
        }
        o => o,
    }
}

/// Decimal to double through its shortest text form (exact for representable values).
pub(crate) fn decimal_to_f64(d: Decimal128) -> f64 {
    if d.is_nan() {
        return f64::NAN;
    }
    if d.is_infinite() {
        return if d.is_negative() {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    d.to_string().parse::<f64>().unwrap_or(f64::NAN)
}

/// Double to decimal the way MongoDB converts it: 15 significant digits.
pub(crate) fn f64_to_decimal(n: f64) -> Decimal128 {
    if n.is_nan() {
        return "NaN".parse().unwrap_or_default();
    }
    if n.is_infinite() {
        let s = if n > 0.0 { "Infinity" } else { "-Infinity" };
        return s.parse().unwrap_or_default();
    }
    format!("{:.14e}", n).parse().unwrap_or_default()
}

/// The integer digits of an integral finite decimal (`2E+1` → `20`, `5.00` → `5`);
/// `None` when it has a non-zero fraction or is too large to write out.
fn dec_integer_string(d: Decimal128) -> Option<String> {
    if d.exponent() > 20 {
        return None; // beyond any i64
    }
    let s = d.to_standard_notation_string();
    if s.contains(['E', 'e']) {
        return None;
    }
    let s = match s.split_once('.') {
        Some((int, frac)) if frac.chars().all(|c| c == '0') => int.to_string(),
        Some(_) => return None,
        None => s,
    };
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_decimals_convert_exactly() {
        let d = |s: &str| Number::Decimal(s.parse().unwrap());
        assert_eq!(d("2E+1").to_i64_exact(), Some(20));
        assert_eq!(d("5.00").to_i64_exact(), Some(5));
        assert_eq!(d("-7").to_i64_exact(), Some(-7));
        assert_eq!(d("5.5").to_i64_exact(), None);
        assert_eq!(d("1E+30").to_i64_exact(), None);
        assert_eq!(d("NaN").to_i64_exact(), None);
        assert_eq!(Number::Double(3.0).to_i64_exact(), Some(3));
        assert_eq!(Number::Double(9.3e18).to_i64_exact(), None);
    }
}
