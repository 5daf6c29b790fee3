//! Comparison operators (`$cmp`, `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`) and boolean
//! operators (`$and`, `$or`, `$not`).
//!
//! Comparisons use MongoDB's total order across types ([`compare_values`]): numbers
//! compare by value whatever their type, a missing field sorts below `null`, and values
//! of different types compare by type rank (so `{$gt: ["a", 1]}` is `true`).

use super::{compile_args, compile_fn, CompileCtx, CompileFn, Ctx, Expr, Operator};
use crate::error::{CompileError, EvalError};
use crate::value::{compare_values, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$cmp", compile_cmp),
    ("$eq", compile_eq),
    ("$ne", compile_ne),
    ("$gt", compile_gt),
    ("$gte", compile_gte),
    ("$lt", compile_lt),
    ("$lte", compile_lte),
    ("$and", compile_and),
    ("$or", compile_or),
    ("$not", compile_not),
];

/// Defines a two-argument comparison operator returning `$result(ordering)`.
macro_rules! comparison {
    ($compile:ident, $eval:ident, $name:literal, |$o:ident| $result:expr) => {
        fn $eval(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
            let [a, b] = args else {
                return Err(EvalError::new(concat!($name, ": expected 2 arguments")));
            };
            let $o = compare_values(a, b);
            Ok($result)
        }

        fn $compile(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
            compile_fn($name, args, 2, 2, path, cx, $eval)
        }
    };
}

comparison!(compile_cmp, eval_cmp, "$cmp", |o| Value::Int32(match o {
    Ordering::Less => -1,
    Ordering::Equal => 0,
    Ordering::Greater => 1,
}));
comparison!(compile_eq, eval_eq, "$eq", |o| Value::Bool(
    o == Ordering::Equal
));
comparison!(compile_ne, eval_ne, "$ne", |o| Value::Bool(
    o != Ordering::Equal
));
comparison!(compile_gt, eval_gt, "$gt", |o| Value::Bool(
    o == Ordering::Greater
));
comparison!(compile_gte, eval_gte, "$gte", |o| Value::Bool(
    o != Ordering::Less
));
comparison!(compile_lt, eval_lt, "$lt", |o| Value::Bool(
    o == Ordering::Less
));
comparison!(compile_lte, eval_lte, "$lte", |o| Value::Bool(
    o != Ordering::Greater
));

/// `$and` / `$or`: evaluates its arguments left to right and stops at the first one
/// that decides the result (short circuit). No arguments → `true` / `false`.
#[derive(Debug)]
struct Logical {
    /// True for `$and`, false for `$or`.
    is_and: bool,
    args: Vec<Expr>,
}

impl Operator for Logical {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        for a in &self.args {
            // `$and` stops at the first falsy argument, `$or` at the first truthy one.
            if a.eval(ctx)?.is_truthy() != self.is_and {
                return Ok(Cow::Owned(Value::Bool(!self.is_and)));
            }
        }
        Ok(Cow::Owned(Value::Bool(self.is_and)))
    }
}

fn compile_logical(
    name: &'static str,
    is_and: bool,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let args = compile_args(name, args, 0, usize::MAX, path, cx)?;
    let op = Logical { is_and, args };
    if op.args.iter().all(|a| a.as_literal().is_some()) {
        // Constant arguments cannot fail: fold to the answer.
        let answer = op
            .args
            .iter()
            .filter_map(Expr::as_literal)
            .any(|v| v.is_truthy() != is_and);
        return Ok(Expr::Literal(Value::Bool(answer != is_and)));
    }
    Ok(Expr::Op(Arc::new(op)))
}

fn compile_and(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    compile_logical("$and", true, args, path, cx)
}

fn compile_or(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    compile_logical("$or", false, args, path, cx)
}

/// `$not`: the boolean opposite of its argument's truthiness (null/missing → `true`).
fn eval_not(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    match args {
        [a] => Ok(Value::Bool(!a.is_truthy())),
        _ => Err(EvalError::new("$not: expected 1 argument")),
    }
}

fn compile_not(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    compile_fn("$not", args, 1, 1, path, cx, eval_not)
}

#[cfg(test)]
mod tests {
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value, Value};

    fn eval(expr: &str, doc: &str) -> Value {
        let e = Expression::compile(&parse_value(expr).expect("expr json")).expect("compiles");
        e.evaluate(&parse_document(doc).expect("doc json"))
            .expect("evaluates")
    }

    #[test]
    fn comparisons_cross_types() {
        assert_eq!(eval(r#"{"$cmp": [1, 1.0]}"#, "{}").to_json(), "0");
        assert_eq!(eval(r#"{"$gt": ["a", 1]}"#, "{}").to_json(), "true");
        assert_eq!(eval(r#"{"$eq": ["$x", null]}"#, "{}").to_json(), "false");
        assert_eq!(eval(r#"{"$lt": ["$x", null]}"#, "{}").to_json(), "true");
        assert_eq!(eval(r#"{"$eq": ["$a", "$b"]}"#, "{}").to_json(), "true");
    }

    #[test]
    fn and_or_short_circuit() {
        // The second argument would fail ($divide by zero) if it were evaluated.
        let div = r#"{"$divide": [1, "$z"]}"#;
        let and = format!(r#"{{"$and": ["$f", {div}]}}"#);
        let or = format!(r#"{{"$or": ["$t", {div}]}}"#);
        assert_eq!(eval(&and, r#"{"f": 0, "z": 0}"#).to_json(), "false");
        assert_eq!(eval(&or, r#"{"t": [], "z": 0}"#).to_json(), "true");
        assert_eq!(eval(r#"{"$and": []}"#, "{}").to_json(), "true");
        assert_eq!(eval(r#"{"$or": []}"#, "{}").to_json(), "false");
        assert_eq!(eval(r#"{"$not": [null]}"#, "{}").to_json(), "true");
    }
}
