//! Conditional operators: `$cond`, `$ifNull` and `$switch`. Only the branch that is
//! taken is evaluated, so an error in another branch does not affect the result.

use super::{compile_args, compile_expr, named_args, CompileCtx, CompileFn, Ctx, Expr, Operator};
use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::value::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$cond", compile_cond),
    ("$ifNull", compile_if_null),
    ("$switch", compile_switch),
];

/// `$cond`: `then` when `if` is truthy, `else` otherwise.
#[derive(Debug)]
struct Cond {
    cond: Expr,
    then: Expr,
    otherwise: Expr,
}

impl Operator for Cond {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        if self.cond.eval(ctx)?.is_truthy() {
            self.then.eval(ctx)
        } else {
            self.otherwise.eval(ctx)
        }
    }
}

/// `{$cond: [if, then, else]}` or `{$cond: {if, then, else}}`.
fn compile_cond(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let (cond, then, otherwise) = if let Value::Document(_) = args {
        let a = named_args("$cond", args, &["if", "then", "else"], &[], path)?;
        (
            compile_expr(a["if"], &path_key(path, "if"), cx)?,
            compile_expr(a["then"], &path_key(path, "then"), cx)?,
            compile_expr(a["else"], &path_key(path, "else"), cx)?,
        )
    } else {
        let mut list = compile_args("$cond", args, 3, 3, path, cx)?.into_iter();
        match (list.next(), list.next(), list.next()) {
            (Some(c), Some(t), Some(e)) => (c, t, e),
            _ => return Err(CompileError::new(path, "$cond takes exactly 3 arguments")),
        }
    };
    // A constant condition selects its branch once and for all.
    if let Some(c) = cond.as_literal() {
        return Ok(if c.is_truthy() { then } else { otherwise });
    }
    Ok(Expr::Op(Arc::new(Cond {
        cond,
        then,
        otherwise,
    })))
}

/// `$ifNull`: the first argument that is not null, undefined or missing; when all but
/// the last are, the last argument's value (whatever it is).
#[derive(Debug)]
struct IfNull {
    /// At least two expressions.
    args: Vec<Expr>,
}

impl Operator for IfNull {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let Some((last, rest)) = self.args.split_last() else {
            return Ok(Cow::Owned(Value::Null));
        };
        for a in rest {
            let v = a.eval(ctx)?;
            if !v.is_nullish() {
                return Ok(v);
            }
        }
        last.eval(ctx)
    }
}

fn compile_if_null(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let args = compile_args("$ifNull", args, 2, usize::MAX, path, cx)?;
    Ok(Expr::Op(Arc::new(IfNull { args })))
}

/// `$switch`: the `then` of the first branch whose `case` is truthy, else `default`;
/// with no matching branch and no default, a runtime error.
#[derive(Debug)]
struct Switch {
    branches: Vec<(Expr, Expr)>,
    default: Option<Expr>,
}

impl Operator for Switch {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        for (case, then) in &self.branches {
            if case.eval(ctx)?.is_truthy() {
                return then.eval(ctx);
            }
        }
        match &self.default {
            Some(d) => d.eval(ctx),
            None => Err(EvalError::new(
                "$switch: no branch matched and no default was specified (add a 'default')",
            )),
        }
    }
}

/// `{$switch: {branches: [{case, then}, ...], default}}`.
fn compile_switch(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let Value::Document(d) = args else {
        return Err(CompileError::new(
            path,
            format!(
                "$switch requires an object as an argument ({{branches: [...], default: ...}}), found {}",
                args.type_name()
            ),
        ));
    };
    let mut branches = Vec::new();
    let mut default = None;
    for (key, v) in d.iter() {
        let p = path_key(path, key);
        match key.as_str() {
            "branches" => {
                let Value::Array(items) = v else {
                    return Err(CompileError::new(
                        p,
                        format!(
                            "$switch expects an array for 'branches', found {}",
                            v.type_name()
                        ),
                    ));
                };
                for (i, item) in items.iter().enumerate() {
                    branches.push(compile_branch(item, &path_index(&p, i), cx)?);
                }
            }
            "default" => default = Some(compile_expr(v, &p, cx)?),
            _ => {
                return Err(CompileError::new(
                    p,
                    format!(
                        "$switch: unknown argument '{key}' (expected 'branches' and 'default')"
                    ),
                ))
            }
        }
    }
    if branches.is_empty() {
        return Err(CompileError::new(
            path,
            "$switch requires at least one branch",
        ));
    }
    Ok(Expr::Op(Arc::new(Switch { branches, default })))
}

fn compile_branch(
    v: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<(Expr, Expr), CompileError> {
    let Value::Document(d) = v else {
        return Err(CompileError::new(
            path,
            format!(
                "$switch expects each branch to be an object {{case, then}}, found {}",
                v.type_name()
            ),
        ));
    };
    let (mut case, mut then) = (None, None);
    for (key, e) in d.iter() {
        let p = path_key(path, key);
        match key.as_str() {
            "case" => case = Some(compile_expr(e, &p, cx)?),
            "then" => then = Some(compile_expr(e, &p, cx)?),
            _ => {
                return Err(CompileError::new(
                    p,
                    format!(
                    "$switch: unknown argument '{key}' in a branch (expected 'case' and 'then')"
                ),
                ))
            }
        }
    }
    match (case, then) {
        (Some(c), Some(t)) => Ok((c, t)),
        (None, _) => Err(CompileError::new(
            path,
            "$switch requires each branch to have a 'case' expression",
        )),
        (_, None) => Err(CompileError::new(
            path,
            "$switch requires each branch to have a 'then' expression",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value, Value};

    fn eval(expr: &str, doc: &str) -> Result<Value, String> {
        let e = Expression::compile(&parse_value(expr).expect("expr json"))
            .map_err(|e| e.to_string())?;
        e.evaluate(&parse_document(doc).expect("doc json"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn cond_forms() {
        let arr = r#"{"$cond": [{"$gte": ["$q", 250]}, 30, 20]}"#;
        assert_eq!(
            eval(arr, r#"{"q": 300}"#).map(|v| v.to_json()),
            Ok("30".into())
        );
        let obj = r#"{"$cond": {"if": "$b", "then": "y", "else": "n"}}"#;
        assert_eq!(
            eval(obj, r#"{"b": 0}"#).map(|v| v.to_json()),
            Ok("\"n\"".into())
        );
        assert!(eval(r#"{"$cond": {"if": 1, "then": 2}}"#, "{}").is_err());
        assert!(eval(r#"{"$cond": [1, 2]}"#, "{}").is_err());
    }

    #[test]
    fn if_null_and_switch() {
        let e = r#"{"$ifNull": ["$a", "$b", "fallback"]}"#;
        assert_eq!(eval(e, r#"{"b": 2}"#).map(|v| v.to_json()), Ok("2".into()));
        assert_eq!(
            eval(r#"{"$ifNull": ["$a", "$b"]}"#, "{}").map(|v| v.is_missing()),
            Ok(true)
        );
        let sw = r#"{"$switch": {"branches": [{"case": {"$lt": ["$x", 0]}, "then": "neg"}]}}"#;
        assert_eq!(
            eval(sw, r#"{"x": -1}"#).map(|v| v.to_json()),
            Ok("\"neg\"".into())
        );
        assert!(eval(sw, r#"{"x": 1}"#).is_err_and(|e| e.contains("no default")));
    }
}
