//! Arithmetic operators. Numeric promotion follows [`crate::value::Number`]; where an
//! operator has its own result-type rule (`$divide`, `$mod`, `$pow`, `$round`, ...) it is
//! MongoDB's, documented on the evaluation function.

use super::{compile_fn, CompileCtx, CompileFn, Expr};
use crate::error::{CompileError, EvalError};
use crate::value::{Decimal128, Number, Value};
use dec::{Context, Decimal, Rounding};
use std::borrow::Cow;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$add", compile_add),
    ("$subtract", compile_subtract),
    ("$multiply", compile_multiply),
    ("$divide", compile_divide),
    ("$mod", compile_mod),
    ("$abs", compile_abs),
    ("$ceil", compile_ceil),
    ("$floor", compile_floor),
    ("$round", compile_round),
    ("$trunc", compile_trunc),
    ("$pow", compile_pow),
    ("$sqrt", compile_sqrt),
    ("$exp", compile_exp),
    ("$ln", compile_ln),
    ("$log10", compile_log10),
    ("$log", compile_log),
];

/// Defines a compile function for an operator whose arguments are all evaluated first.
macro_rules! fn_operator {
    ($compile:ident, $name:literal, $min:expr, $max:expr, $eval:ident) => {
        fn $compile(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
            compile_fn($name, args, $min, $max, path, cx, $eval)
        }
    };
}

fn_operator!(compile_add, "$add", 0, usize::MAX, eval_add);
fn_operator!(compile_subtract, "$subtract", 2, 2, eval_subtract);
fn_operator!(compile_multiply, "$multiply", 0, usize::MAX, eval_multiply);
fn_operator!(compile_divide, "$divide", 2, 2, eval_divide);
fn_operator!(compile_mod, "$mod", 2, 2, eval_mod);
fn_operator!(compile_abs, "$abs", 1, 1, eval_abs);
fn_operator!(compile_ceil, "$ceil", 1, 1, eval_ceil);
fn_operator!(compile_floor, "$floor", 1, 1, eval_floor);
fn_operator!(compile_round, "$round", 1, 2, eval_round);
fn_operator!(compile_trunc, "$trunc", 1, 2, eval_trunc);
fn_operator!(compile_pow, "$pow", 2, 2, eval_pow);
fn_operator!(compile_sqrt, "$sqrt", 1, 1, eval_sqrt);
fn_operator!(compile_exp, "$exp", 1, 1, eval_exp);
fn_operator!(compile_ln, "$ln", 1, 1, eval_ln);
fn_operator!(compile_log10, "$log10", 1, 1, eval_log10);
fn_operator!(compile_log, "$log", 2, 2, eval_log);

// ---------------------------------------------------------------------------------
// Argument helpers.
// ---------------------------------------------------------------------------------

/// The two arguments of a binary operator (the count is checked at compile time).
fn two<'v>(op: &str, args: &'v [Cow<'_, Value>]) -> Result<(&'v Value, &'v Value), EvalError> {
    match args {
        [a, b] => Ok((a.as_ref(), b.as_ref())),
        _ => Err(EvalError::new(format!(
            "{op}: expected 2 arguments, found {}",
            args.len()
        ))),
    }
}

/// The single argument of a unary operator as a number; `None` when it is null or missing.
fn unary_number(op: &str, args: &[Cow<'_, Value>]) -> Result<Option<Number>, EvalError> {
    let Some(v) = args.first() else {
        return Err(EvalError::new(format!(
            "{op}: expected 1 argument, found none"
        )));
    };
    if v.is_nullish() {
        return Ok(None);
    }
    match v.as_number() {
        Some(n) => Ok(Some(n)),
        None => Err(EvalError::new(format!(
            "{op}: only supports numeric types, not {}",
            v.type_name()
        ))),
    }
}

/// A double formatted as MongoDB prints it in error messages (`-1`, `0.5`).
fn show_f64(x: f64) -> String {
    format!("{x}")
}

fn decimal_is_negative(d: Decimal128) -> bool {
    !d.is_nan() && !d.is_zero() && d.is_negative()
}

fn decimal_is_positive(d: Decimal128) -> bool {
    !d.is_nan() && !d.is_zero() && !d.is_negative()
}

/// Evaluates a decNumber function at decimal128 precision (34 digits) and rounds the
/// result into a decimal128.
fn dec_math(
    d: Decimal128,
    f: impl FnOnce(&mut Context<Decimal<12>>, &mut Decimal<12>),
) -> Decimal128 {
    let mut cx = Context::<Decimal<12>>::default();
    // The transcendental functions require bounded exponents; these are decimal128's.
    let _ = cx.set_precision(34);
    let _ = cx.set_max_exponent(6144);
    let _ = cx.set_min_exponent(-6143);
    let mut x = Decimal::<12>::from(d);
    f(&mut cx, &mut x);
    Context::<Decimal128>::default().from_decimal(&x)
}

/// Rounds a decimal to an integer (ties to even) and converts it to an i64, as
/// MongoDB's `Decimal128::toLong` does. `None` for NaN, infinities and overflow.
fn decimal_to_i64_round_even(d: Decimal128) -> Option<i64> {
    if !d.is_finite() {
        return None;
    }
    decimal_integer_to_i64(quantize(d, Decimal128::from(0i32), Rounding::HalfEven))
}

/// An integral decimal as an i64, whatever its exponent (`2E+1` → 20). `None` when it
/// is not integral or does not fit.
fn decimal_integer_to_i64(d: Decimal128) -> Option<i64> {
    // Bring the exponent to 0 (exact for an integral value of at most 34 digits):
    // `Number::to_i64_exact` only accepts decimals written with exponent 0.
    let mut cx = Context::<Decimal128>::default();
    let q = cx.quantize(d, Decimal128::from(0i32));
    if q.is_nan() || cx.status().inexact() {
        return None;
    }
    Number::Decimal(q).to_i64_exact()
}

/// Quantizes `d` to the exponent of `quantum` with the given rounding. When the
/// result does not fit 34 digits (the value is already integral at that precision, or
/// the precision asks for more digits than a decimal128 holds), `d` is kept unchanged.
fn quantize(d: Decimal128, quantum: Decimal128, rounding: Rounding) -> Decimal128 {
    let mut cx = Context::<Decimal128>::default();
    cx.set_rounding(rounding);
    let out = cx.quantize(d, quantum);
    if out.is_nan() && !d.is_nan() {
        d
    } else {
        out
    }
}

/// A double as a decimal128 with up to 34 significant digits (the exact binary value
/// correctly rounded), as MongoDB's `Decimal128(double, kRoundTo34Digits)`.
fn f64_to_decimal34(x: f64) -> Decimal128 {
    format!("{x:.33e}")
        .parse()
        .unwrap_or_else(|_| Number::Double(x).to_decimal())
}

// ---------------------------------------------------------------------------------
// $add, $subtract, $multiply, $divide, $mod
// ---------------------------------------------------------------------------------

/// `$add`: numbers, plus at most one date (date + millis → date). Null/missing → null.
fn eval_add(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut total = crate::value::Number::Int32(0);
    let mut date: Option<i64> = None;
    for a in args {
        match a.as_ref() {
            v if v.is_nullish() => return Ok(Value::Null),
            Value::Date(ms) => {
                if date.replace(*ms).is_some() {
                    return Err(EvalError::new(
                        "$add: only one date allowed in an $add expression",
                    ));
                }
            }
            v => match v.as_number() {
                Some(n) => total = total.add(n),
                None => {
                    return Err(EvalError::new(format!(
                        "$add: only supports numeric or date types, not {}",
                        v.type_name()
                    )))
                }
            },
        }
    }
    Ok(match date {
        Some(ms) => {
            let add = total.to_f64();
            if !add.is_finite() {
                return Err(EvalError::new(
                    "$add: cannot add a non-finite number to a date",
                ));
            }
            Value::Date(ms.wrapping_add(add.round() as i64))
        }
        None => total.to_value(),
    })
}

/// `$subtract`: number − number (promotion and overflow as [`Number::sub`]),
/// date − date → long milliseconds, date − number → date (doubles rounded half away
/// from zero, decimals half to even). Null/missing → null.
fn eval_subtract(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (a, b) = two("$subtract", args)?;
    if let (Some(x), Some(y)) = (a.as_number(), b.as_number()) {
        return Ok(x.sub(y).to_value());
    }
    if a.is_nullish() || b.is_nullish() {
        return Ok(Value::Null);
    }
    let overflow = || EvalError::new("$subtract: date overflow");
    match (a, b) {
        (Value::Date(l), Value::Date(r)) => Ok(Value::Int64(l.wrapping_sub(*r))),
        (Value::Date(l), r) => {
            let millis = match r.as_number() {
                Some(Number::Int32(n)) => n as i64,
                Some(Number::Int64(n)) => n,
                Some(Number::Double(d)) => {
                    if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&d) {
                        return Err(overflow());
                    }
                    d.round() as i64
                }
                Some(Number::Decimal(d)) => decimal_to_i64_round_even(d).ok_or_else(overflow)?,
                None => {
                    return Err(EvalError::new(format!(
                        "$subtract: cannot subtract {} from date (only a date or a number can be subtracted from a date)",
                        r.type_name()
                    )))
                }
            };
            l.checked_sub(millis).map(Value::Date).ok_or_else(overflow)
        }
        _ => Err(EvalError::new(format!(
            "$subtract: cannot subtract {} from {} (operands must be numbers, or a date minus a date or a number)",
            b.type_name(),
            a.type_name()
        ))),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Width {
    Int,
    Long,
    Double,
    Decimal,
}

fn width(n: Number) -> Width {
    match n {
        Number::Int32(_) => Width::Int,
        Number::Int64(_) => Width::Long,
        Number::Double(_) => Width::Double,
        Number::Decimal(_) => Width::Decimal,
    }
}

/// `$multiply`: the narrowest type that holds the exact product. As in MongoDB, a
/// double product is kept alongside the integer one and used once a double appears or
/// the long product overflows. Null/missing → null. No arguments → 1.
fn eval_multiply(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut ty = Width::Int;
    let mut dbl = 1.0f64;
    let mut long: i64 = 1;
    let mut decimal = Decimal128::from(1i32);
    for a in args {
        if a.is_nullish() {
            return Ok(Value::Null);
        }
        let Some(n) = a.as_number() else {
            return Err(EvalError::new(format!(
                "$multiply: only supports numeric types, not {}",
                a.type_name()
            )));
        };
        let old = ty;
        ty = ty.max(width(n));
        if ty == Width::Decimal {
            if old != Width::Decimal {
                decimal = if old == Width::Double {
                    Number::Double(dbl).to_decimal()
                } else {
                    Decimal128::from(long)
                };
            }
            decimal *= n.to_decimal();
        } else {
            dbl *= n.to_f64();
            if ty != Width::Double {
                let factor = match n {
                    Number::Int32(v) => v as i64,
                    Number::Int64(v) => v,
                    _ => 0,
                };
                match long.checked_mul(factor) {
                    Some(p) => long = p,
                    None => ty = Width::Double,
                }
            }
        }
    }
    Ok(match ty {
        Width::Int => int_or_long(long),
        Width::Long => Value::Int64(long),
        Width::Double => Value::Double(dbl),
        Width::Decimal => Value::Decimal(decimal),
    })
}

/// An int when the value fits 32 bits, a long otherwise.
fn int_or_long(n: i64) -> Value {
    match i32::try_from(n) {
        Ok(i) => Value::Int32(i),
        Err(_) => Value::Int64(n),
    }
}

/// `$divide`: a double, or a decimal when either operand is a decimal. Dividing by
/// zero is an error. Null/missing → null.
fn eval_divide(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (a, b) = two("$divide", args)?;
    match (a.as_number(), b.as_number()) {
        (Some(x), Some(y)) => x
            .div(y)
            .map(Number::to_value)
            .ok_or_else(|| EvalError::new("$divide: cannot divide by zero")),
        _ if a.is_nullish() || b.is_nullish() => Ok(Value::Null),
        _ => Err(EvalError::new(format!(
            "$divide: only supports numeric types, not {} and {}",
            a.type_name(),
            b.type_name()
        ))),
    }
}

/// `$mod`: decimal when either operand is a decimal, else double when either is a
/// double (C `fmod`), else long when either is a long, else int. The result takes the
/// sign of the dividend. Zero divisor is an error. Null/missing → null.
fn eval_mod(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (a, b) = two("$mod", args)?;
    let (x, y) = match (a.as_number(), b.as_number()) {
        (Some(x), Some(y)) => (x, y),
        _ if a.is_nullish() || b.is_nullish() => return Ok(Value::Null),
        _ => {
            return Err(EvalError::new(format!(
                "$mod: only supports numeric types, not {} and {}",
                a.type_name(),
                b.type_name()
            )))
        }
    };
    if y.is_zero() {
        return Err(EvalError::new("$mod: cannot take a remainder by zero"));
    }
    Ok(match (x, y) {
        (Number::Decimal(_), _) | (_, Number::Decimal(_)) => {
            Value::Decimal(x.to_decimal() % y.to_decimal())
        }
        (Number::Double(_), _) | (_, Number::Double(_)) => Value::Double(x.to_f64() % y.to_f64()),
        (Number::Int32(l), Number::Int32(r)) => Value::Int32(l.wrapping_rem(r)),
        _ => Value::Int64(integer(x).wrapping_rem(integer(y))),
    })
}

/// The value of an int or long (callers have excluded doubles and decimals).
fn integer(n: Number) -> i64 {
    match n {
        Number::Int32(v) => v as i64,
        Number::Int64(v) => v,
        Number::Double(v) => v as i64,
        Number::Decimal(_) => n.to_f64() as i64,
    }
}

// ---------------------------------------------------------------------------------
// $abs, $ceil, $floor, $round, $trunc
// ---------------------------------------------------------------------------------

/// `$abs`: same type, except that the absolute value of the smallest int is a long;
/// the smallest long has no absolute value (error). Null/missing → null.
fn eval_abs(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let Some(n) = unary_number("$abs", args)? else {
        return Ok(Value::Null);
    };
    Ok(match n {
        Number::Int32(v) => int_or_long((v as i64).abs()),
        Number::Int64(v) => match v.checked_abs() {
            Some(a) => Value::Int64(a),
            None => {
                return Err(EvalError::new(format!(
                    "$abs: cannot take the absolute value of the smallest long ({v}): it does not fit a long"
                )))
            }
        },
        Number::Double(v) => Value::Double(v.abs()),
        Number::Decimal(d) => Value::Decimal(Context::<Decimal128>::default().abs(d)),
    })
}

fn ceil_floor(op: &str, args: &[Cow<'_, Value>], rounding: Rounding) -> Result<Value, EvalError> {
    let Some(n) = unary_number(op, args)? else {
        return Ok(Value::Null);
    };
    Ok(match n {
        Number::Double(v) => Value::Double(if rounding == Rounding::Ceiling {
            v.ceil()
        } else {
            v.floor()
        }),
        Number::Decimal(d) if d.is_finite() => {
            Value::Decimal(quantize(d, Decimal128::from(0i32), rounding))
        }
        other => other.to_value(),
    })
}

/// `$ceil`: the smallest integer ≥ the argument, in the argument's type. Null → null.
fn eval_ceil(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    ceil_floor("$ceil", args, Rounding::Ceiling)
}

/// `$floor`: the largest integer ≤ the argument, in the argument's type. Null → null.
fn eval_floor(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    ceil_floor("$floor", args, Rounding::Floor)
}

/// `$round` (half to even) and `$trunc` (toward zero) to `place` decimal places
/// (default 0, range -20..=100; negative places round to tens, hundreds, ...).
/// The result keeps the argument's type; ints and longs are unchanged by a place ≥ 0,
/// and an int whose rounded value no longer fits 32 bits becomes a long. Doubles are
/// rounded through their exact 34-digit decimal value, as MongoDB does.
fn round_or_trunc(
    op: &str,
    args: &[Cow<'_, Value>],
    rounding: Rounding,
) -> Result<Value, EvalError> {
    let Some(n) = unary_number(op, args)? else {
        return Ok(Value::Null);
    };
    let mut place: i64 = 0;
    if let Some(p) = args.get(1) {
        if p.is_nullish() {
            return Ok(Value::Null);
        }
        let Some(pn) = p.as_number() else {
            return Err(EvalError::new(format!(
                "{op}: the place argument must be numeric, not {}",
                p.type_name()
            )));
        };
        let integral = match pn {
            Number::Decimal(d) => decimal_integer_to_i64(d),
            other => other.to_i64_exact(),
        };
        place = integral.ok_or_else(|| {
            EvalError::new(format!(
                "{op}: the place argument must be an integral value, not {}",
                show_f64(pn.to_f64())
            ))
        })?;
        if !(-20..=100).contains(&place) {
            return Err(EvalError::new(format!(
                "{op}: cannot apply with place value {place}; it must be in [-20, 100]"
            )));
        }
    }
    // 1E-place: the exponent every result is quantized to.
    let quantum = Context::<Decimal128>::default()
        .scaleb(Decimal128::from(1i32), Decimal128::from(-(place as i32)));
    Ok(match n {
        Number::Decimal(d) if d.is_infinite() => Value::Decimal(d),
        Number::Decimal(d) => Value::Decimal(quantize(d, quantum, rounding)),
        Number::Double(v) if !v.is_finite() => Value::Double(v),
        Number::Double(v) => {
            let d = quantize(f64_to_decimal34(v), quantum, rounding);
            Value::Double(Number::Decimal(d).to_f64())
        }
        Number::Int32(_) | Number::Int64(_) if place >= 0 => n.to_value(),
        Number::Int32(v) => {
            let d = quantize(Decimal128::from(v), quantum, rounding);
            int_or_long(decimal_integer_to_i64(d).unwrap_or_default())
        }
        Number::Int64(v) => {
            let d = quantize(Decimal128::from(v), quantum, rounding);
            Value::Int64(decimal_integer_to_i64(d).ok_or_else(|| {
                EvalError::new(format!(
                    "{op}: the result of rounding {v} to place {place} does not fit a long"
                ))
            })?)
        }
    })
}

/// `$round`: see [`round_or_trunc`]; ties go to the even neighbour (`2.5` → `2`).
fn eval_round(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    round_or_trunc("$round", args, Rounding::HalfEven)
}

/// `$trunc`: see [`round_or_trunc`]; rounds toward zero.
fn eval_trunc(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    round_or_trunc("$trunc", args, Rounding::Down)
}

// ---------------------------------------------------------------------------------
// $pow, $sqrt, $exp, $ln, $log10, $log
// ---------------------------------------------------------------------------------

/// `$pow`: decimal when either operand is a decimal, else double when either is a
/// double; two integers give an exact int (or long when either is a long or the
/// result needs 64 bits), or a double when the result does not fit a long or the
/// exponent is negative. `0` to a negative power is an error. Null/missing → null.
fn eval_pow(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (a, b) = two("$pow", args)?;
    if a.is_nullish() || b.is_nullish() {
        return Ok(Value::Null);
    }
    let base = a.as_number().ok_or_else(|| {
        EvalError::new(format!(
            "$pow: the base must be numeric, not {}",
            a.type_name()
        ))
    })?;
    let exp = b.as_number().ok_or_else(|| {
        EvalError::new(format!(
            "$pow: the exponent must be numeric, not {}",
            b.type_name()
        ))
    })?;
    let zero_to_negative = || EvalError::new("$pow: cannot raise 0 to a negative exponent");
    let (bw, ew) = (width(base), width(exp));
    if bw == Width::Decimal || ew == Width::Decimal {
        let (bd, ed) = (base.to_decimal(), exp.to_decimal());
        if bd.is_zero() && decimal_is_negative(ed) {
            return Err(zero_to_negative());
        }
        let ed = Decimal::<12>::from(ed);
        return Ok(Value::Decimal(dec_math(bd, |cx, x| cx.pow(x, &ed))));
    }
    let (bf, ef) = (base.to_f64(), exp.to_f64());
    if bf == 0.0 && ef < 0.0 {
        return Err(zero_to_negative());
    }
    if bw == Width::Double || ew == Width::Double {
        return Ok(Value::Double(bf.powf(ef)));
    }
    let any_long = bw == Width::Long || ew == Width::Long;
    let result = |r: i64| {
        if any_long {
            Value::Int64(r)
        } else {
            int_or_long(r)
        }
    };
    let (bl, el) = (integer(base), integer(exp));
    Ok(match bl {
        0 => result(if el == 0 { 1 } else { 0 }),
        1 => result(1),
        -1 => result(if el % 2 == 0 { 1 } else { -1 }),
        _ => match u32::try_from(el).ok().and_then(|e| bl.checked_pow(e)) {
            Some(r) => result(r),
            None => Value::Double(bf.powf(ef)),
        },
    })
}

/// `$sqrt`: a double, or a decimal for a decimal. Negative arguments are an error
/// (NaN gives NaN). Null/missing → null.
fn eval_sqrt(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let Some(n) = unary_number("$sqrt", args)? else {
        return Ok(Value::Null);
    };
    let negative = || EvalError::new("$sqrt: the argument must be greater than or equal to 0");
    match n {
        Number::Decimal(d) => {
            if decimal_is_negative(d) {
                return Err(negative());
            }
            Ok(Value::Decimal(dec_math(d, |cx, x| cx.sqrt(x))))
        }
        _ => {
            let v = n.to_f64();
            if v < 0.0 {
                return Err(negative());
            }
            Ok(Value::Double(v.sqrt()))
        }
    }
}

/// `$exp`: e to the power of the argument; a double, or a decimal for a decimal.
fn eval_exp(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(match unary_number("$exp", args)? {
        None => Value::Null,
        Some(Number::Decimal(d)) => Value::Decimal(dec_math(d, |cx, x| cx.exp(x))),
        Some(n) => Value::Double(n.to_f64().exp()),
    })
}

/// Shared by `$ln` and `$log10`: a decimal for a positive decimal, otherwise a double;
/// the argument must be positive (NaN gives NaN).
fn logarithm(
    op: &str,
    args: &[Cow<'_, Value>],
    dec_f: fn(&mut Context<Decimal<12>>, &mut Decimal<12>),
    f: fn(f64) -> f64,
) -> Result<Value, EvalError> {
    let Some(n) = unary_number(op, args)? else {
        return Ok(Value::Null);
    };
    if let Number::Decimal(d) = n {
        if decimal_is_positive(d) {
            return Ok(Value::Decimal(dec_math(d, dec_f)));
        }
    }
    let v = n.to_f64();
    if !(v > 0.0 || v.is_nan()) {
        return Err(EvalError::new(format!(
            "{op}: the argument must be a positive number, but is {}",
            show_f64(v)
        )));
    }
    Ok(Value::Double(f(v)))
}

/// `$ln`: natural logarithm, see [`logarithm`].
fn eval_ln(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    logarithm("$ln", args, |cx, x| cx.ln(x), f64::ln)
}

/// `$log10`: base-10 logarithm, see [`logarithm`].
fn eval_log10(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    logarithm("$log10", args, |cx, x| cx.log10(x), f64::log10)
}

/// `$log: [number, base]`: decimal when either is a decimal, else double. The number
/// must be positive and the base positive and not 1 (NaN gives NaN). Null → null.
fn eval_log(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (a, b) = two("$log", args)?;
    if a.is_nullish() || b.is_nullish() {
        return Ok(Value::Null);
    }
    let x = a.as_number().ok_or_else(|| {
        EvalError::new(format!(
            "$log: the argument must be numeric, not {}",
            a.type_name()
        ))
    })?;
    let base = b.as_number().ok_or_else(|| {
        EvalError::new(format!(
            "$log: the base must be numeric, not {}",
            b.type_name()
        ))
    })?;
    if matches!(x, Number::Decimal(_)) || matches!(base, Number::Decimal(_)) {
        let (xd, bd) = (x.to_decimal(), base.to_decimal());
        if decimal_is_positive(xd) && decimal_is_positive(bd) && bd != Decimal128::from(1i32) {
            let ln = |d| dec_math(d, |cx, v| cx.ln(v));
            return Ok(Value::Decimal(ln(xd) / ln(bd)));
        }
    }
    let (xf, bf) = (x.to_f64(), base.to_f64());
    if !(xf > 0.0 || xf.is_nan()) {
        return Err(EvalError::new(format!(
            "$log: the argument must be a positive number, but is {}",
            show_f64(xf)
        )));
    }
    if !((bf > 0.0 && bf != 1.0) || bf.is_nan()) {
        return Err(EvalError::new(format!(
            "$log: the base must be a positive number not equal to 1, but is {}",
            show_f64(bf)
        )));
    }
    Ok(Value::Double(xf.ln() / bf.ln()))
}

#[cfg(test)]
mod tests {
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value, ExtJsonMode};

    /// Evaluates `expr` against `doc` and returns the canonical Extended JSON of the
    /// result (type-exact), or `error: ...`.
    fn run(expr: &str, doc: &str) -> String {
        let e = Expression::compile(&parse_value(expr).expect("expr json")).expect("compiles");
        match e.evaluate(&parse_document(doc).expect("doc json")) {
            Ok(v) => v.to_json_mode(ExtJsonMode::Canonical),
            Err(e) => format!("error: {e}"),
        }
    }

    fn check(expr: &str, expected: &str) {
        let want = parse_value(expected).expect("expected json");
        assert_eq!(
            run(expr, "{}"),
            want.to_json_mode(ExtJsonMode::Canonical),
            "{expr}"
        );
    }

    fn check_err(expr: &str, needle: &str) {
        let got = run(expr, "{}");
        assert!(
            got.starts_with("error: ") && got.contains(needle),
            "{expr}: {got}"
        );
    }

    const D: &str = r#"{"$date": "2024-01-01T00:00:00Z"}"#;

    #[test]
    fn subtract() {
        check(r#"{"$subtract": [5, 7]}"#, "-2");
        check(
            r#"{"$subtract": [-2147483648, 1]}"#,
            r#"{"$numberLong": "-2147483649"}"#,
        );
        check(r#"{"$subtract": [5, 1.5]}"#, "3.5");
        check(
            &format!(r#"{{"$subtract": [{D}, {D}]}}"#),
            r#"{"$numberLong": "0"}"#,
        );
        check(
            &format!(r#"{{"$subtract": [{D}, 1000]}}"#),
            r#"{"$date": "2023-12-31T23:59:59Z"}"#,
        );
        check(
            &format!(r#"{{"$subtract": [{D}, 0.5]}}"#),
            r#"{"$date": "2023-12-31T23:59:59.999Z"}"#,
        );
        check(&format!(r#"{{"$subtract": [{D}, null]}}"#), "null");
        check(r#"{"$subtract": ["a", null]}"#, "null");
        check_err(
            &format!(r#"{{"$subtract": [1, {D}]}}"#),
            "cannot subtract date from int",
        );
        check_err(
            &format!(r#"{{"$subtract": [{D}, "x"]}}"#),
            "string from date",
        );
    }

    #[test]
    fn multiply_divide_mod() {
        check(r#"{"$multiply": []}"#, "1");
        check(
            r#"{"$multiply": [2147483647, 2]}"#,
            r#"{"$numberLong": "4294967294"}"#,
        );
        check(
            r#"{"$multiply": [{"$numberLong": "9223372036854775807"}, 2]}"#,
            "1.8446744073709552e19",
        );
        check(
            r#"{"$multiply": [2, 1.5, {"$numberDecimal": "2"}]}"#,
            r#"{"$numberDecimal": "6.00000000000000"}"#,
        );
        check(r#"{"$multiply": [2, "$x"]}"#, "null");
        check_err(r#"{"$multiply": [2, "x"]}"#, "not string");
        check(r#"{"$divide": [9, 2]}"#, "4.5");
        check(
            r#"{"$divide": [{"$numberDecimal": "1"}, 4]}"#,
            r#"{"$numberDecimal": "0.25"}"#,
        );
        check_err(r#"{"$divide": [1, 0]}"#, "divide by zero");
        check(r#"{"$mod": [-5, 3]}"#, "-2");
        check(
            r#"{"$mod": [5, {"$numberLong": "3"}]}"#,
            r#"{"$numberLong": "2"}"#,
        );
        check(r#"{"$mod": [5.5, 2]}"#, "1.5");
        check(
            r#"{"$mod": [{"$numberDecimal": "5.5"}, 2]}"#,
            r#"{"$numberDecimal": "1.5"}"#,
        );
        check(r#"{"$mod": [-2147483648, -1]}"#, "0");
        check_err(r#"{"$mod": [5, 0.0]}"#, "by zero");
    }

    #[test]
    fn abs_ceil_floor() {
        check(
            r#"{"$abs": -2147483648}"#,
            r#"{"$numberLong": "2147483648"}"#,
        );
        check(r#"{"$abs": -1.5}"#, "1.5");
        check(
            r#"{"$abs": {"$numberDecimal": "-2.50"}}"#,
            r#"{"$numberDecimal": "2.50"}"#,
        );
        check_err(
            r#"{"$abs": {"$numberLong": "-9223372036854775808"}}"#,
            "smallest long",
        );
        check(r#"{"$ceil": -1.5}"#, "-1.0");
        check(r#"{"$floor": -1.5}"#, "-2.0");
        check(r#"{"$ceil": 7}"#, "7");
        check(
            r#"{"$ceil": {"$numberDecimal": "1.01"}}"#,
            r#"{"$numberDecimal": "2"}"#,
        );
        check(
            r#"{"$floor": {"$numberDecimal": "-1.01"}}"#,
            r#"{"$numberDecimal": "-2"}"#,
        );
        check(
            r#"{"$floor": {"$numberDecimal": "1E+40"}}"#,
            r#"{"$numberDecimal": "1E+40"}"#,
        );
        check(r#"{"$floor": null}"#, "null");
    }

    #[test]
    fn round_and_trunc() {
        check(r#"{"$round": [2.5]}"#, "2.0");
        check(r#"{"$round": [3.5, 0]}"#, "4.0");
        check(r#"{"$round": [-2.5, 0]}"#, "-2.0");
        check(r#"{"$round": [19.25, 1]}"#, "19.2");
        check(r#"{"$round": [1234, -2]}"#, "1200");
        check(r#"{"$round": [1250, -2]}"#, "1200");
        check(r#"{"$round": [1350, -2]}"#, "1400");
        check(
            r#"{"$round": [2147483647, -1]}"#,
            r#"{"$numberLong": "2147483650"}"#,
        );
        check(
            r#"{"$round": [{"$numberLong": "15"}, -1]}"#,
            r#"{"$numberLong": "20"}"#,
        );
        check(r#"{"$round": [7, 3]}"#, "7");
        check(
            r#"{"$round": [{"$numberDecimal": "10.5"}]}"#,
            r#"{"$numberDecimal": "10"}"#,
        );
        check(
            r#"{"$round": [{"$numberDecimal": "1.2345"}, 2]}"#,
            r#"{"$numberDecimal": "1.23"}"#,
        );
        check(r#"{"$round": [1e300, 0]}"#, "1e300");
        check(r#"{"$round": [1.5, null]}"#, "null");
        check_err(r#"{"$round": [1.5, 1.5]}"#, "integral");
        check(r#"{"$round": [1.25, {"$numberDecimal": "1.0"}]}"#, "1.2");
        check_err(r#"{"$round": [1.5, 101]}"#, "[-20, 100]");
        check_err(r#"{"$round": ["x", 1]}"#, "numeric");
        check(r#"{"$trunc": [-1.7]}"#, "-1.0");
        check(r#"{"$trunc": [1234.5678, 2]}"#, "1234.56");
        check(r#"{"$trunc": [1299, -2]}"#, "1200");
        check(
            r#"{"$trunc": [{"$numberDecimal": "-7.89"}, 1]}"#,
            r#"{"$numberDecimal": "-7.8"}"#,
        );
    }

    #[test]
    fn pow_sqrt_exp_logs() {
        check(r#"{"$pow": [2, 10]}"#, "1024");
        check(
            r#"{"$pow": [2, 40]}"#,
            r#"{"$numberLong": "1099511627776"}"#,
        );
        check(
            r#"{"$pow": [2, {"$numberLong": "3"}]}"#,
            r#"{"$numberLong": "8"}"#,
        );
        check(r#"{"$pow": [2, 64]}"#, "1.8446744073709552e19");
        check(r#"{"$pow": [2, -1]}"#, "0.5");
        check(r#"{"$pow": [-1, -3]}"#, "-1");
        check(r#"{"$pow": [4, 0.5]}"#, "2.0");
        check(
            r#"{"$pow": [{"$numberDecimal": "1.5"}, 2]}"#,
            r#"{"$numberDecimal": "2.25"}"#,
        );
        check_err(r#"{"$pow": [0, -2]}"#, "negative exponent");
        check(r#"{"$sqrt": 25}"#, "5.0");
        check(
            r#"{"$sqrt": {"$numberDecimal": "2.25"}}"#,
            r#"{"$numberDecimal": "1.5"}"#,
        );
        check_err(r#"{"$sqrt": -1}"#, "greater than or equal to 0");
        check(r#"{"$exp": 0}"#, "1.0");
        check(
            r#"{"$exp": {"$numberDecimal": "0"}}"#,
            r#"{"$numberDecimal": "1"}"#,
        );
        check(r#"{"$ln": 1}"#, "0.0");
        check_err(r#"{"$ln": 0}"#, "positive number, but is 0");
        check(r#"{"$log10": 100}"#, "2.0");
        check(
            r#"{"$log10": {"$numberDecimal": "1000"}}"#,
            r#"{"$numberDecimal": "3"}"#,
        );
        check(r#"{"$log": [8, 2]}"#, "3.0");
        check(
            r#"{"$log": [100, {"$numberDecimal": "10"}]}"#,
            r#"{"$numberDecimal": "2"}"#,
        );
        check_err(r#"{"$log": [8, 1]}"#, "not equal to 1");
        check(r#"{"$log": [null, "x"]}"#, "null");
    }
}
