//! Type operators: `$type`, `$isNumber`, `$convert` and its shorthands `$toString`,
//! `$toInt`, `$toLong`, `$toDouble`, `$toDecimal`, `$toBool`, `$toDate`, `$toObjectId`.
//!
//! The conversion table is MongoDB's: numbers truncate toward zero into integers and
//! fail when out of range, strings must hold a base-10 number (no hex, no spaces),
//! dates convert to and from epoch milliseconds, ObjectIds to their creation time, and
//! every value converts to bool. Null or missing input gives null (or `onNull`); a
//! failed conversion is an error unless `$convert` has `onError`.

use super::datetime::{self, TimeZone};
use super::{compile_expr, compile_fn, named_args, CompileCtx, CompileFn, Ctx, Expr, Operator};
use crate::error::{path_key, CompileError, EvalError};
use crate::value::{Decimal128, Number, ObjectId, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$type", compile_type),
    ("$isNumber", compile_is_number),
    ("$convert", compile_convert),
    ("$toString", |a, p, cx| {
        compile_to("$toString", Target::String, a, p, cx)
    }),
    ("$toInt", |a, p, cx| {
        compile_to("$toInt", Target::Int, a, p, cx)
    }),
    ("$toLong", |a, p, cx| {
        compile_to("$toLong", Target::Long, a, p, cx)
    }),
    ("$toDouble", |a, p, cx| {
        compile_to("$toDouble", Target::Double, a, p, cx)
    }),
    ("$toDecimal", |a, p, cx| {
        compile_to("$toDecimal", Target::Decimal, a, p, cx)
    }),
    ("$toBool", |a, p, cx| {
        compile_to("$toBool", Target::Bool, a, p, cx)
    }),
    ("$toDate", |a, p, cx| {
        compile_to("$toDate", Target::Date, a, p, cx)
    }),
    ("$toObjectId", |a, p, cx| {
        compile_to("$toObjectId", Target::ObjectId, a, p, cx)
    }),
];

fn compile_type(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    compile_fn("$type", args, 1, 1, path, cx, |a| {
        Ok(Value::string(a[0].type_name()))
    })
}

fn compile_is_number(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    compile_fn("$isNumber", args, 1, 1, path, cx, |a| {
        Ok(Value::Bool(a[0].is_number()))
    })
}

/// A target type of `$convert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Double,
    String,
    ObjectId,
    Bool,
    Date,
    Int,
    Long,
    Decimal,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Double => "double",
            Target::String => "string",
            Target::ObjectId => "objectId",
            Target::Bool => "bool",
            Target::Date => "date",
            Target::Int => "int",
            Target::Long => "long",
            Target::Decimal => "decimal",
        }
    }

    /// The target named by a `to` value: a type name or a BSON type number.
    /// `Ok(None)` for null/missing (the conversion then yields null).
    fn from_value(v: &Value) -> Result<Option<Target>, String> {
        let t = match v {
            v if v.is_nullish() => return Ok(None),
            Value::String(s) => match s.as_str() {
                "double" => Target::Double,
                "string" => Target::String,
                "objectId" => Target::ObjectId,
                "bool" => Target::Bool,
                "date" => Target::Date,
                "int" => Target::Int,
                "long" => Target::Long,
                "decimal" => Target::Decimal,
                other => {
                    return Err(format!(
                        "unknown target type '{other}' in 'to': use one of double, string, objectId, bool, date, int, long, decimal"
                    ))
                }
            },
            // MongoDB 8's `{type: ..., subtype: ...}` form; the subtype only matters for binData.
            Value::Document(d) if d.contains_key("type") && d.keys().all(|k| k == "type" || k == "subtype") => {
                return match d.get("type") {
                    Some(t) if !matches!(t, Value::Document(_)) => Target::from_value(t),
                    _ => Err("'to.type' must be a type name string or a BSON type number".into()),
                };
            }
            v if v.is_number() => match v.as_i64_exact() {
                Some(1) => Target::Double,
                Some(2) => Target::String,
                Some(7) => Target::ObjectId,
                Some(8) => Target::Bool,
                Some(9) => Target::Date,
                Some(16) => Target::Int,
                Some(18) => Target::Long,
                Some(19) => Target::Decimal,
                Some(n) => return Err(format!("'to' names BSON type {n}, which is not a supported conversion target (1, 2, 7, 8, 9, 16, 18 or 19)")),
                None => return Err(format!("'to' must be an integral BSON type number, found {v}")),
            },
            other => {
                return Err(format!(
                    "'to' must be a type name string or a BSON type number, found {}",
                    other.type_name()
                ))
            }
        };
        Ok(Some(t))
    }
}

/// The `to` argument: known at compile time or computed per document.
#[derive(Debug)]
enum To {
    Fixed(Option<Target>),
    Dynamic(Expr),
}

#[derive(Debug)]
struct Convert {
    name: &'static str,
    input: Expr,
    to: To,
    on_error: Option<Expr>,
    on_null: Option<Expr>,
}

impl Operator for Convert {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let target = match &self.to {
            To::Fixed(t) => *t,
            To::Dynamic(e) => {
                let v = e.eval(ctx)?;
                Target::from_value(&v).map_err(|m| EvalError::new(format!("{}: {m}", self.name)))?
            }
        };
        let input = self.input.eval(ctx)?;
        if input.is_nullish() {
            return match &self.on_null {
                Some(e) => e.eval(ctx),
                None => Ok(Cow::Owned(Value::Null)),
            };
        }
        let Some(target) = target else {
            return Ok(Cow::Owned(Value::Null));
        };
        match convert(input, target) {
            Ok(v) => Ok(v),
            Err(msg) => match &self.on_error {
                Some(e) => e.eval(ctx),
                None => Err(EvalError::new(format!("{}: {msg}", self.name))),
            },
        }
    }
}

fn compile_convert(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args(
        "$convert",
        args,
        &["input", "to"],
        &["onError", "onNull"],
        path,
    )?;
    let input = compile_expr(a["input"], &path_key(path, "input"), cx)?;
    let to_path = path_key(path, "to");
    let to = match compile_expr(a["to"], &to_path, cx)? {
        Expr::Literal(v) => To::Fixed(
            Target::from_value(&v)
                .map_err(|m| CompileError::new(&to_path, format!("$convert: {m}")))?,
        ),
        e => To::Dynamic(e),
    };
    let opt = |k: &str, cx: &mut CompileCtx| -> Result<Option<Expr>, CompileError> {
        a.get(k)
            .map(|v| compile_expr(v, &path_key(path, k), cx))
            .transpose()
    };
    let on_error = opt("onError", cx)?;
    let on_null = opt("onNull", cx)?;
    Ok(Expr::Op(Arc::new(Convert {
        name: "$convert",
        input,
        to,
        on_error,
        on_null,
    })))
}

fn compile_to(
    name: &'static str,
    target: Target,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let mut exprs = super::compile_args(name, args, 1, 1, path, cx)?;
    let input = exprs.remove(0);
    Ok(Expr::Op(Arc::new(Convert {
        name,
        input,
        to: To::Fixed(Some(target)),
        on_error: None,
        on_null: None,
    })))
}

fn unsupported(v: &Value, t: Target) -> String {
    format!(
        "unsupported conversion from {} to {}",
        v.type_name(),
        t.name()
    )
}

/// Converts a non-null value to `target`, borrowing when it already has that type.
fn convert(input: Cow<'_, Value>, target: Target) -> Result<Cow<'_, Value>, String> {
    let v = input.as_ref();
    let out = match target {
        Target::Double => Value::Double(to_double(v)?),
        Target::String => match v {
            Value::String(_) => return Ok(input),
            _ => Value::string(to_string(v)?),
        },
        Target::ObjectId => match v {
            Value::ObjectId(_) => return Ok(input),
            Value::String(s) => Value::ObjectId(
                ObjectId::parse_hex(s)
                    .ok_or_else(|| format!("cannot convert '{s}' to objectId: it must be a string of 24 hexadecimal digits"))?,
            ),
            _ => return Err(unsupported(v, target)),
        },
        Target::Bool => Value::Bool(match v {
            Value::Bool(b) => *b,
            Value::Int32(n) => *n != 0,
            Value::Int64(n) => *n != 0,
            Value::Double(n) => *n != 0.0,
            Value::Decimal(d) => !d.is_zero(),
            _ => true,
        }),
        Target::Date => Value::Date(to_date(v)?),
        Target::Int => {
            let n = to_integer(v, target, i32::MIN as i64, i32::MAX as i64)?;
            Value::Int32(n as i32)
        }
        Target::Long => match v {
            Value::Date(ms) => Value::Int64(*ms),
            _ => Value::Int64(to_integer(v, target, i64::MIN, i64::MAX)?),
        },
        Target::Decimal => Value::Decimal(to_decimal(v)?),
    };
    Ok(Cow::Owned(out))
}

fn overflow(v: &Value, t: Target) -> String {
    format!(
        "cannot convert {v} to {}: the value is out of range",
        t.name()
    )
}

/// Double/decimal/string/bool/int/long → integer in `[min, max]`, truncating toward zero.
fn to_integer(v: &Value, t: Target, min: i64, max: i64) -> Result<i64, String> {
    let n: i64 = match v {
        Value::Bool(b) => *b as i64,
        Value::Int32(n) => *n as i64,
        Value::Int64(n) => *n,
        Value::Double(d) => {
            if d.is_nan() {
                return Err(format!("cannot convert NaN to {}", t.name()));
            }
            if d.is_infinite() {
                return Err(format!("cannot convert infinity to {}", t.name()));
            }
            // Both bounds are exact as doubles for int; for long the upper bound is 2^63.
            let ok = if t == Target::Int {
                *d >= min as f64 && *d <= max as f64
            } else {
                *d >= -9.223_372_036_854_776e18 && *d < 9.223_372_036_854_776e18
            };
            if !ok {
                return Err(overflow(v, t));
            }
            d.trunc() as i64
        }
        Value::Decimal(d) => decimal_trunc(*d, v, t)?,
        Value::String(s) => parse_integer(s).ok_or_else(|| {
            format!(
                "cannot convert '{s}' to {}: it must be a base-10 integer in range",
                t.name()
            )
        })?,
        _ => return Err(unsupported(v, t)),
    };
    if n < min || n > max {
        return Err(overflow(v, t));
    }
    Ok(n)
}

/// The integral part of a finite decimal as an i64.
fn decimal_trunc(d: Decimal128, v: &Value, t: Target) -> Result<i64, String> {
    if d.is_nan() {
        return Err(format!("cannot convert NaN to {}", t.name()));
    }
    if d.is_infinite() {
        return Err(format!("cannot convert infinity to {}", t.name()));
    }
    let coef = d.coefficient();
    let exp = d.exponent();
    let n: i128 = if exp >= 0 {
        if coef == 0 {
            0
        } else if exp > 19 {
            return Err(overflow(v, t));
        } else {
            coef.checked_mul(10i128.pow(exp as u32))
                .ok_or_else(|| overflow(v, t))?
        }
    } else if exp < -38 {
        0
    } else {
        coef / 10i128.pow((-exp) as u32)
    };
    i64::try_from(n).map_err(|_| overflow(v, t))
}

/// A base-10 integer with an optional sign, nothing else.
fn parse_integer(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn to_double(v: &Value) -> Result<f64, String> {
    Ok(match v {
        Value::Double(d) => *d,
        Value::Bool(b) => *b as i32 as f64,
        Value::Int32(n) => *n as f64,
        Value::Int64(n) => *n as f64,
        Value::Date(ms) => *ms as f64,
        Value::Decimal(d) => {
            let f = Number::Decimal(*d).to_f64();
            if f.is_infinite() && d.is_finite() {
                return Err(overflow(v, Target::Double));
            }
            f
        }
        Value::String(s) => parse_double(s).ok_or_else(|| {
            format!("cannot convert '{s}' to double: it must be a base-10 number in range")
        })?,
        _ => return Err(unsupported(v, Target::Double)),
    })
}

fn is_special_float(s: &str) -> bool {
    let t = s.strip_prefix(['-', '+']).unwrap_or(s).to_ascii_lowercase();
    matches!(t.as_str(), "inf" | "infinity" | "nan")
}

/// A base-10 floating-point number (`-5.5`, `1e10`, `Infinity`, `NaN`); hexadecimal,
/// surrounding spaces and out-of-range magnitudes are rejected.
fn parse_double(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if body.is_empty() || body.starts_with(['x', 'X']) || s.starts_with("0x") || s.starts_with("0X")
    {
        return None;
    }
    if !body
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.')
    {
        return None;
    }
    let f: f64 = s.parse().ok()?;
    if f.is_infinite() && !is_special_float(s) {
        return None;
    }
    Some(f)
}

fn to_decimal(v: &Value) -> Result<Decimal128, String> {
    Ok(match v {
        Value::Decimal(d) => *d,
        Value::Bool(b) => Decimal128::from(*b as i32),
        Value::Int32(n) => Decimal128::from(*n),
        Value::Int64(n) => Decimal128::from(*n),
        Value::Double(_) => Number::from_value(v)
            .map(Number::to_decimal)
            .unwrap_or_default(),
        Value::Date(ms) => Decimal128::from(*ms),
        Value::String(s) => {
            let body = s.strip_prefix(['-', '+']).unwrap_or(s);
            let bad = || format!("cannot convert '{s}' to decimal: it must be a base-10 number");
            if body.is_empty()
                || s.starts_with("0x")
                || s.starts_with("0X")
                || s.trim() != s.as_str()
            {
                return Err(bad());
            }
            s.parse::<Decimal128>().map_err(|_| bad())?
        }
        _ => return Err(unsupported(v, Target::Decimal)),
    })
}

fn to_date(v: &Value) -> Result<i64, String> {
    Ok(match v {
        Value::Date(ms) => *ms,
        Value::Int64(n) => *n,
        Value::Double(_) | Value::Decimal(_) => to_integer(v, Target::Date, i64::MIN, i64::MAX)?,
        Value::Timestamp(t) => t.t as i64 * 1000,
        Value::ObjectId(o) => o.timestamp_secs() as i64 * 1000,
        Value::String(s) => datetime::parse_date(s, &TimeZone::Utc, None)?,
        _ => return Err(unsupported(v, Target::Date)),
    })
}

fn to_string(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::String(s) => s.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int32(n) => n.to_string(),
        Value::Int64(n) => n.to_string(),
        Value::Double(d) => format_double(*d),
        Value::Decimal(d) => d.to_string(),
        Value::ObjectId(o) => o.to_hex(),
        Value::Date(ms) => datetime::iso_string(*ms)?,
        _ => return Err(unsupported(v, Target::String)),
    })
}

/// A double as MongoDB's `$toString` writes it: the shortest round-trip digits, in
/// fixed notation for decimal exponents -4 <= e < 16 and `1e+16` style otherwise;
/// `NaN`, `Infinity`, `-Infinity`, `-0`.
pub(crate) fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // Shortest round-trip digits and decimal exponent from Rust's `{:e}`.
    let sci = format!("{:e}", d.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if d < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value};

    fn eval(expr: &str, doc: &str) -> Result<Value, String> {
        let e = Expression::compile(&parse_value(expr).unwrap()).map_err(|e| e.to_string())?;
        e.evaluate(&parse_document(doc).unwrap())
            .map_err(|e| e.to_string())
    }

    fn json(expr: &str) -> String {
        match eval(expr, "{}") {
            Ok(v) => v.to_json(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn doubles_format_like_mongodb() {
        assert_eq!(format_double(1.0), "1");
        assert_eq!(format_double(2.5), "2.5");
        assert_eq!(format_double(-0.0001), "-0.0001");
        assert_eq!(format_double(0.00001), "1e-05");
        assert_eq!(format_double(1e15), "1000000000000000");
        assert_eq!(format_double(1e16), "1e+16");
        assert_eq!(format_double(123456.789), "123456.789");
        assert_eq!(format_double(1.5e300), "1.5e+300");
    }

    #[test]
    fn conversions() {
        assert_eq!(json(r#"{"$toInt": "42"}"#), "42");
        assert_eq!(json(r#"{"$toInt": 2.9}"#), "2");
        assert_eq!(json(r#"{"$toInt": -2.9}"#), "-2");
        assert_eq!(json(r#"{"$toInt": {"$numberDecimal": "-5.7"}}"#), "-5");
        assert!(json(r#"{"$toInt": "abc"}"#).starts_with("error: $toInt: cannot convert 'abc'"));
        assert!(json(r#"{"$toInt": 3e10}"#).contains("out of range"));
        assert_eq!(
            json(r#"{"$toLong": {"$date": "1970-01-01T00:00:01Z"}}"#),
            "1000"
        );
        assert_eq!(
            json(r#"{"$toDecimal": 2.5}"#),
            r#"{"$numberDecimal":"2.50000000000000"}"#
        );
        assert_eq!(json(r#"{"$toDouble": "-5.5"}"#), "-5.5");
        assert!(json(r#"{"$toDouble": "0x6400"}"#).starts_with("error"));
        assert_eq!(json(r#"{"$toBool": ""}"#), "true");
        assert_eq!(json(r#"{"$toBool": 0.0}"#), "false");
        assert_eq!(
            json(r#"{"$toString": {"$date": "2018-03-27T16:58:51.538Z"}}"#),
            r#""2018-03-27T16:58:51.538Z""#
        );
        assert_eq!(
            json(r#"{"$toDate": "2018-03-20T12:00:00+0500"}"#),
            r#"{"$date":"2018-03-20T07:00:00Z"}"#
        );
        assert_eq!(
            json(r#"{"$toDate": {"$oid": "5ab9cbfa31c2ab715d42129e"}}"#),
            r#"{"$date":"2018-03-27T04:43:38Z"}"#
        );
        assert!(json(r#"{"$toDate": 5}"#).contains("unsupported conversion from int to date"));
        assert_eq!(json(r#"{"$toString": null}"#), "null");
        assert_eq!(json(r#"{"$type": "$nope"}"#), r#""missing""#);
        assert_eq!(json(r#"{"$isNumber": {"$numberLong": "5"}}"#), "true");
        assert_eq!(
            json(r#"{"$convert": {"input": "x", "to": "int", "onError": -1}}"#),
            "-1"
        );
        assert_eq!(
            json(r#"{"$convert": {"input": "$n", "to": 16, "onNull": 0}}"#),
            "0"
        );
        assert_eq!(json(r#"{"$convert": {"input": 1, "to": "$n"}}"#), "null");
        assert!(eval(r#"{"$convert": {"input": 1, "to": "bogus"}}"#, "{}")
            .unwrap_err()
            .contains("expression.$convert.to"));
    }
}
