//! Arithmetic operators. Numeric promotion follows [`crate::value::Number`].

use super::{compile_fn, CompileCtx, CompileFn, Expr};
use crate::error::{CompileError, EvalError};
use crate::value::Value;
use std::borrow::Cow;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[("$add", compile_add)];

fn compile_add(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    compile_fn("$add", args, 0, usize::MAX, path, cx, eval_add)
}

/// `$add`: numbers, plus at most one date (date + millis → date). Null/missing → null.
fn eval_add(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut total = crate::value::Number::Int32(0);
    let mut date: Option<i64> = None;
    for a in args {
        match a.as_ref() {
            v if v.is_nullish() => return Ok(Value::Null),
            Value::Date(ms) => {
                if date.replace(*ms).is_some() {
                    return Err(EvalError::new("$add: only one date allowed in an $add expression"));
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
                return Err(EvalError::new("$add: cannot add a non-finite number to a date"));
            }
            Value::Date(ms.wrapping_add(add.round() as i64))
        }
        None => total.to_value(),
    })
}
