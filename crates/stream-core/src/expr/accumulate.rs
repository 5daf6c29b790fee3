//! The accumulator operators in expression form: `$sum`, `$avg`, `$min`, `$max`,
//! `$stdDevPop`, `$stdDevSamp` over their arguments — or, given one argument that is an
//! array, over its elements (`{"$sum": "$items.price"}`), as MongoDB does in `$project`.

use super::{compile_fn, CompileCtx, CompileFn, Expr};
use crate::error::{CompileError, EvalError};
use crate::value::{compare_values, Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$sum", |a, p, cx| compile("$sum", a, p, cx, eval_sum)),
    ("$avg", |a, p, cx| compile("$avg", a, p, cx, eval_avg)),
    ("$min", |a, p, cx| compile("$min", a, p, cx, eval_min)),
    ("$max", |a, p, cx| compile("$max", a, p, cx, eval_max)),
    ("$stdDevPop", |a, p, cx| {
        compile("$stdDevPop", a, p, cx, eval_std_dev_pop)
    }),
    ("$stdDevSamp", |a, p, cx| {
        compile("$stdDevSamp", a, p, cx, eval_std_dev_samp)
    }),
];

fn compile(
    name: &'static str,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
    f: super::EvalFn,
) -> Result<Expr, CompileError> {
    compile_fn(name, args, 0, usize::MAX, path, cx, f)
}

/// The values operated on: a lone array argument's elements, else the arguments.
fn operands<'a>(args: &'a [Cow<'_, Value>]) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
    match args {
        [one] => match one.as_ref() {
            Value::Array(items) => Box::new(items.iter()),
            v => Box::new(std::iter::once(v)),
        },
        many => Box::new(many.iter().map(|c| c.as_ref())),
    }
}

fn numbers<'a>(args: &'a [Cow<'_, Value>]) -> impl Iterator<Item = Number> + 'a {
    operands(args).filter_map(Value::as_number)
}

/// `$sum`: non-numeric values are ignored; nothing numeric gives 0.
fn eval_sum(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(numbers(args).fold(Number::Int32(0), Number::add).to_value())
}

/// `$avg`: a double (a decimal when any input is a decimal); nothing numeric gives null.
fn eval_avg(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (mut total, mut n) = (Number::Int32(0), 0i64);
    for x in numbers(args) {
        total = total.add(x);
        n += 1;
    }
    if n == 0 {
        return Ok(Value::Null);
    }
    let avg = match total {
        Number::Decimal(d) => Number::Decimal(d).div(Number::Int64(n)),
        other => Some(Number::Double(other.to_f64() / n as f64)),
    };
    Ok(avg.map_or(Value::Null, Number::to_value))
}

fn extreme(args: &[Cow<'_, Value>], keep: Ordering) -> Value {
    operands(args)
        .filter(|v| !v.is_nullish())
        .fold(None::<&Value>, |best, v| match best {
            Some(b) if compare_values(v, b) != keep => Some(b),
            _ => Some(v),
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// `$min`: the smallest value in MongoDB's order, null and missing ignored.
fn eval_min(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(extreme(args, Ordering::Less))
}

/// `$max`: the largest value in MongoDB's order, null and missing ignored.
fn eval_max(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(extreme(args, Ordering::Greater))
}

/// Standard deviation of the numeric operands (population, or sample when `sample`).
fn std_dev(args: &[Cow<'_, Value>], sample: bool) -> Value {
    // Welford's algorithm: stable for large values.
    let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
    for x in numbers(args).map(Number::to_f64) {
        n += 1.0;
        let delta = x - mean;
        mean += delta / n;
        m2 += delta * (x - mean);
    }
    let divisor = if sample { n - 1.0 } else { n };
    if divisor <= 0.0 {
        return Value::Null;
    }
    Value::Double((m2 / divisor).sqrt())
}

fn eval_std_dev_pop(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(std_dev(args, false))
}

fn eval_std_dev_samp(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(std_dev(args, true))
}
