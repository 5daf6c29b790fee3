//! `$literal`, `$let` and `$function`.

use super::{
    compile_args, compile_expr, named_args, CompileCtx, CompileFn, Ctx, Expr, Operator, VarId,
};
use crate::error::{path_key, CompileError, EvalError};
use crate::functions::UserFunction;
use crate::value::Value;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$literal", compile_literal),
    ("$let", compile_let),
    ("$function", compile_function),
];

fn compile_literal(args: &Value, _path: &str, _cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    Ok(Expr::Literal(args.clone()))
}

#[derive(Debug)]
struct Let {
    vars: Vec<(VarId, Expr)>,
    body: Expr,
}

impl Operator for Let {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        // Every variable is evaluated in the outer scope, as MongoDB does.
        let values = self
            .vars
            .iter()
            .map(|(_, e)| e.eval_owned(ctx))
            .collect::<Result<Vec<_>, _>>()?;
        bind_all(ctx, &self.vars, &values, &self.body)
    }
}

fn bind_all<'a>(
    ctx: &Ctx<'_>,
    vars: &[(VarId, Expr)],
    values: &[Value],
    body: &Expr,
) -> Result<Cow<'a, Value>, EvalError> {
    match (vars.split_first(), values.split_first()) {
        (Some(((id, _), rest_vars)), Some((v, rest_vals))) => {
            ctx.with_var(*id, v, |inner| bind_all(inner, rest_vars, rest_vals, body))
        }
        _ => body.eval_owned(ctx).map(Cow::Owned),
    }
}

fn compile_let(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args("$let", args, &["vars", "in"], &[], path)?;
    let Value::Document(vars) = a["vars"] else {
        return Err(CompileError::new(
            path_key(path, "vars"),
            "$let: 'vars' must be an object",
        ));
    };
    let vars_path = path_key(path, "vars");
    let mut compiled = Vec::with_capacity(vars.len());
    for (name, e) in vars.iter() {
        compiled.push(compile_expr(e, &path_key(&vars_path, name), cx)?);
    }
    let mut bound = Vec::with_capacity(vars.len());
    for ((name, _), e) in vars.iter().zip(compiled) {
        let id = cx.bind(name, &path_key(&vars_path, name));
        match id {
            Ok(id) => bound.push((id, e)),
            Err(err) => {
                cx.unbind(bound.len());
                return Err(err);
            }
        }
    }
    let body = compile_expr(a["in"], &path_key(path, "in"), cx);
    cx.unbind(bound.len());
    Ok(Expr::Op(Arc::new(Let {
        vars: bound,
        body: body?,
    })))
}

struct Function {
    name: String,
    f: UserFunction,
    args: Vec<Expr>,
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("$function")
            .field("name", &self.name)
            .field("args", &self.args)
            .finish()
    }
}

impl Operator for Function {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let args = self
            .args
            .iter()
            .map(|a| {
                a.eval(ctx).map(|v| {
                    if v.is_missing() {
                        Value::Null
                    } else {
                        v.into_owned()
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        (self.f)(&args).map(Cow::Owned).map_err(|e| {
            let message = format!("$function '{}': {}", self.name, e.message);
            if e.transient {
                EvalError::transient(message)
            } else {
                EvalError::new(message)
            }
        })
    }
}

/// `{"$function": {"name": "f", "args": [...]}}`; `body` is accepted as an alias of
/// `name` and `lang` is ignored, so MongoDB-shaped definitions port with one edit.
fn compile_function(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args(
        "$function",
        args,
        &["args"],
        &["name", "body", "lang"],
        path,
    )?;
    let name = a
        .get("name")
        .or_else(|| a.get("body"))
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            CompileError::new(path, "$function: 'name' must be the name of a registered Rust function (JavaScript bodies are not supported)")
        })?;
    let f = cx.functions().get(name).cloned().ok_or_else(|| {
        let known = cx.functions().names().join(", ");
        CompileError::new(
            path_key(path, "name"),
            format!("$function: no function registered under '{name}' (registered: [{known}])"),
        )
    })?;
    let fn_args = compile_args(
        "$function",
        a["args"],
        0,
        usize::MAX,
        &path_key(path, "args"),
        cx,
    )?;
    Ok(Expr::Op(Arc::new(Function {
        name: name.to_string(),
        f,
        args: fn_args,
    })))
}
