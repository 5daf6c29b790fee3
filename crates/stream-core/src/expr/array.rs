//! Array expression operators: element access (`$arrayElemAt`, `$first`, `$last`,
//! `$slice`, `$firstN`, `$lastN`), the higher-order operators that bind variables
//! (`$filter`, `$map`, `$reduce`), search (`$in`, `$indexOfArray`), construction
//! (`$concatArrays`, `$range`, `$reverseArray`, `$zip`), and ordering (`$sortArray`,
//! `$maxN`, `$minN`).

use super::string::integral_i32;
use super::{
    compile_expr, compile_fn, fn_op, named_args, CompileCtx, CompileFn, Ctx, Expr, Operator, VarId,
};
use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::value::{compare_values, Str, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$size", |a, p, cx| {
        compile_fn("$size", a, 1, 1, p, cx, eval_size)
    }),
    ("$arrayElemAt", |a, p, cx| {
        compile_fn("$arrayElemAt", a, 2, 2, p, cx, eval_array_elem_at)
    }),
    ("$first", |a, p, cx| {
        compile_fn("$first", a, 1, 1, p, cx, eval_first)
    }),
    ("$last", |a, p, cx| {
        compile_fn("$last", a, 1, 1, p, cx, eval_last)
    }),
    ("$filter", compile_filter),
    ("$map", compile_map),
    ("$reduce", compile_reduce),
    ("$in", |a, p, cx| compile_fn("$in", a, 2, 2, p, cx, eval_in)),
    ("$slice", |a, p, cx| {
        compile_fn("$slice", a, 2, 3, p, cx, eval_slice)
    }),
    ("$concatArrays", |a, p, cx| {
        compile_fn("$concatArrays", a, 0, usize::MAX, p, cx, eval_concat_arrays)
    }),
    ("$isArray", |a, p, cx| {
        compile_fn("$isArray", a, 1, 1, p, cx, eval_is_array)
    }),
    ("$reverseArray", |a, p, cx| {
        compile_fn("$reverseArray", a, 1, 1, p, cx, eval_reverse_array)
    }),
    ("$range", |a, p, cx| {
        compile_fn("$range", a, 2, 3, p, cx, eval_range)
    }),
    ("$indexOfArray", |a, p, cx| {
        compile_fn("$indexOfArray", a, 2, 4, p, cx, eval_index_of_array)
    }),
    ("$sortArray", compile_sort_array),
    ("$zip", compile_zip),
    ("$maxN", |a, p, cx| compile_n("$maxN", a, p, cx, eval_max_n)),
    ("$minN", |a, p, cx| compile_n("$minN", a, p, cx, eval_min_n)),
    ("$firstN", |a, p, cx| {
        compile_n("$firstN", a, p, cx, eval_first_n)
    }),
    ("$lastN", |a, p, cx| {
        compile_n("$lastN", a, p, cx, eval_last_n)
    }),
];

fn err(msg: String) -> EvalError {
    EvalError::new(msg)
}

fn index_value(i: usize) -> Value {
    i32::try_from(i).map_or(Value::Int64(i as i64), Value::Int32)
}

/// Takes the elements of an evaluated array: moved out when owned, cloned when borrowed.
fn into_items(v: Cow<'_, Value>) -> Vec<Value> {
    match v {
        Cow::Owned(Value::Array(items)) => items,
        Cow::Borrowed(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------
// $size / $isArray / $reverseArray / $concatArrays
// ---------------------------------------------------------------------------------

/// `$size`: the argument must be an array (null and missing are errors).
fn eval_size(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    match args[0].as_ref() {
        Value::Array(items) => Ok(index_value(items.len())),
        other => Err(err(format!(
            "The argument to $size must be an array. Type of argument is: {}",
            other.type_name()
        ))),
    }
}

fn eval_is_array(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(Value::Bool(matches!(args[0].as_ref(), Value::Array(_))))
}

/// `$reverseArray`: null or missing → null.
fn eval_reverse_array(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    match args[0].as_ref() {
        Value::Array(items) => Ok(Value::Array(items.iter().rev().cloned().collect())),
        v if v.is_nullish() => Ok(Value::Null),
        other => Err(err(format!(
            "The argument to $reverseArray must be an array, but was of type: {}",
            other.type_name()
        ))),
    }
}

/// `$concatArrays`: null or missing anywhere → null.
fn eval_concat_arrays(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut out = Vec::new();
    for a in args {
        match a.as_ref() {
            Value::Array(items) => out.extend(items.iter().cloned()),
            v if v.is_nullish() => return Ok(Value::Null),
            other => {
                return Err(err(format!(
                    "$concatArrays only supports arrays, not {}",
                    other.type_name()
                )))
            }
        }
    }
    Ok(Value::Array(out))
}

// ---------------------------------------------------------------------------------
// $arrayElemAt / $first / $last
// ---------------------------------------------------------------------------------

/// Element at a possibly negative index; missing when out of range.
fn element_at(items: &[Value], index: i64) -> Value {
    let i = if index < 0 {
        items.len() as i64 + index
    } else {
        index
    };
    usize::try_from(i)
        .ok()
        .and_then(|i| items.get(i))
        .cloned()
        .unwrap_or(Value::Missing)
}

/// `$arrayElemAt: [array, index]`: null or missing → null; out of range → missing.
fn eval_array_elem_at(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (array, index) = (args[0].as_ref(), args[1].as_ref());
    if array.is_nullish() || index.is_nullish() {
        return Ok(Value::Null);
    }
    let Value::Array(items) = array else {
        return Err(err(format!(
            "$arrayElemAt's first argument must be an array, but is {}",
            array.type_name()
        )));
    };
    if !index.is_number() {
        return Err(err(format!(
            "$arrayElemAt's second argument must be a numeric value, but is {}",
            index.type_name()
        )));
    }
    let i = integral_i32(index).ok_or_else(|| {
        err(format!(
            "$arrayElemAt's second argument must be representable as a 32-bit integer: {}",
            index.to_json()
        ))
    })?;
    Ok(element_at(items, i as i64))
}

/// `$first`/`$last`: null or missing → null; empty array → missing.
fn first_last(op: &str, v: &Value, last: bool) -> Result<Value, EvalError> {
    match v {
        Value::Array(items) => Ok(element_at(items, if last { -1 } else { 0 })),
        v if v.is_nullish() => Ok(Value::Null),
        other => Err(err(format!(
            "{op}'s argument must be an array, but is {}",
            other.type_name()
        ))),
    }
}

fn eval_first(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    first_last("$first", &args[0], false)
}

fn eval_last(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    first_last("$last", &args[0], true)
}

// ---------------------------------------------------------------------------------
// $slice
// ---------------------------------------------------------------------------------

fn slice_int(which: &str, v: &Value) -> Result<i32, EvalError> {
    if !v.is_number() {
        return Err(err(format!(
            "{which} argument to $slice must be a numeric value, but is of type: {}",
            v.type_name()
        )));
    }
    integral_i32(v).ok_or_else(|| {
        err(format!(
            "{which} argument to $slice can't be represented as a 32-bit integer: {}",
            v.to_json()
        ))
    })
}

/// `$slice: [array, n]` or `[array, position, n]`; null or missing anywhere → null.
fn eval_slice(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    if args.iter().any(|a| a.is_nullish()) {
        return Ok(Value::Null);
    }
    let Value::Array(items) = args[0].as_ref() else {
        return Err(err(format!(
            "First argument to $slice must be an array, but is of type: {}",
            args[0].type_name()
        )));
    };
    let len = items.len() as i64;
    let second = slice_int("Second", &args[1])? as i64;
    let (start, end) = match args.get(2) {
        None if second >= 0 => (0, second.min(len)),
        None => ((len + second).max(0), len),
        Some(n) => {
            let n = slice_int("Third", n)? as i64;
            if n <= 0 {
                return Err(err(format!(
                    "Third argument to $slice must be positive: {n}"
                )));
            }
            let start = if second < 0 {
                (len + second).max(0)
            } else {
                second.min(len)
            };
            (start, (start + n).min(len))
        }
    };
    Ok(Value::Array(items[start as usize..end as usize].to_vec()))
}

// ---------------------------------------------------------------------------------
// $in / $indexOfArray
// ---------------------------------------------------------------------------------

/// `$in: [value, array]`: the second argument must be an array.
fn eval_in(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let Value::Array(items) = args[1].as_ref() else {
        return Err(err(format!(
            "$in requires an array as a second argument, found: {}",
            args[1].type_name()
        )));
    };
    let needle = args[0].as_ref();
    Ok(Value::Bool(
        items
            .iter()
            .any(|v| compare_values(v, needle) == Ordering::Equal),
    ))
}

fn array_index_arg(which: &str, v: &Value) -> Result<usize, EvalError> {
    let n = integral_i32(v).ok_or_else(|| {
        err(format!(
            "$indexOfArray requires an integral {which} index, found a value of type: {}, with value: {}",
            v.type_name(),
            v.to_json()
        ))
    })?;
    usize::try_from(n).map_err(|_| {
        err(format!(
            "$indexOfArray requires a nonnegative {which} index, found: {n}"
        ))
    })
}

/// `$indexOfArray: [array, value, start?, end?]` → index or -1; null array → null.
fn eval_index_of_array(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let items = match args[0].as_ref() {
        Value::Array(items) => items,
        v if v.is_nullish() => return Ok(Value::Null),
        other => {
            return Err(err(format!(
                "$indexOfArray requires an array as a first argument, found: {}",
                other.type_name()
            )))
        }
    };
    let start = match args.get(2) {
        Some(v) => array_index_arg("starting", v)?,
        None => 0,
    };
    let end = match args.get(3) {
        Some(v) => array_index_arg("ending", v)?.min(items.len()),
        None => items.len(),
    };
    if start >= end {
        return Ok(Value::Int32(-1));
    }
    let needle = args[1].as_ref();
    Ok(items[start..end]
        .iter()
        .position(|v| compare_values(v, needle) == Ordering::Equal)
        .map_or(Value::Int32(-1), |i| index_value(start + i)))
}

// ---------------------------------------------------------------------------------
// $range
// ---------------------------------------------------------------------------------

/// MongoDB refuses a `$range` that would need more than 64 MiB (16 bytes per value).
const RANGE_MAX_ELEMENTS: i64 = 64 * 1024 * 1024 / 16;

fn range_arg(what: &str, article: &str, v: &Value) -> Result<i64, EvalError> {
    if !v.is_number() {
        return Err(err(format!(
            "$range requires a numeric {what} value, found value of type: {}",
            v.type_name()
        )));
    }
    integral_i32(v).map(i64::from).ok_or_else(|| {
        err(format!(
            "$range requires {article} {what} value that can be represented as a 32-bit integer, found value: {}",
            v.to_json()
        ))
    })
}

/// `$range: [start, end, step?]`: int32 values from start towards end (exclusive).
fn eval_range(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let start = range_arg("starting", "a", &args[0])?;
    let end = range_arg("ending", "an", &args[1])?;
    let step = match args.get(2) {
        Some(v) => range_arg("step", "a", v)?,
        None => 1,
    };
    if step == 0 {
        return Err(err("$range requires a non-zero step value".to_string()));
    }
    let count = if (step > 0 && end > start) || (step < 0 && end < start) {
        ((end - start).abs() + step.abs() - 1) / step.abs()
    } else {
        0
    };
    if count > RANGE_MAX_ELEMENTS {
        return Err(err(format!(
            "$range would produce {count} values, more than the limit of {RANGE_MAX_ELEMENTS}"
        )));
    }
    Ok(Value::Array(
        (0..count)
            .map(|i| Value::Int32((start + i * step) as i32))
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------
// $filter / $map / $reduce
// ---------------------------------------------------------------------------------

/// The variable name in `as` (default `this`).
fn as_name<'v>(
    op: &str,
    a: &std::collections::HashMap<&str, &'v Value>,
    path: &str,
) -> Result<&'v str, CompileError> {
    match a.get("as") {
        None => Ok("this"),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(other) => Err(CompileError::new(
            path_key(path, "as"),
            format!(
                "{op}: 'as' must be a variable name string, found {}",
                other.type_name()
            ),
        )),
    }
}

/// Compiles `body` with `name` bound; returns the variable and the compiled body.
fn compile_bound(
    name: &str,
    body: &Value,
    var_path: &str,
    body_path: &str,
    cx: &mut CompileCtx,
) -> Result<(VarId, Expr), CompileError> {
    let id = cx.bind(name, var_path)?;
    let body = compile_expr(body, body_path, cx);
    cx.unbind(1);
    Ok((id, body?))
}

#[derive(Debug)]
struct Filter {
    input: Expr,
    var: VarId,
    cond: Expr,
    limit: Option<Expr>,
}

/// Checks a `$filter` limit: `Ok(None)` for null (no limit).
fn filter_limit(v: &Value) -> Result<Option<usize>, EvalError> {
    if v.is_nullish() {
        return Ok(None);
    }
    let n = integral_i32(v).ok_or_else(|| {
        err(format!(
            "$filter: limit must be represented as a 32-bit integral value: {}",
            v.to_json()
        ))
    })?;
    if n < 1 {
        return Err(err(format!("$filter: limit must be greater than 0: {n}")));
    }
    Ok(Some(n as usize))
}

fn compile_filter(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args("$filter", args, &["input", "cond"], &["as", "limit"], path)?;
    let input = compile_expr(a["input"], &path_key(path, "input"), cx)?;
    let limit = match a.get("limit") {
        Some(l) => {
            let lp = path_key(path, "limit");
            let e = compile_expr(l, &lp, cx)?;
            if let Some(v) = e.as_literal() {
                filter_limit(v).map_err(|e| CompileError::new(lp, e.message))?;
            }
            Some(e)
        }
        None => None,
    };
    let name = as_name("$filter", &a, path)?;
    let (var, cond) = compile_bound(
        name,
        a["cond"],
        &path_key(path, "as"),
        &path_key(path, "cond"),
        cx,
    )?;
    Ok(Expr::Op(Arc::new(Filter {
        input,
        var,
        cond,
        limit,
    })))
}

impl Operator for Filter {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let input = self.input.eval(ctx)?;
        match input.as_ref() {
            Value::Array(_) => {}
            v if v.is_nullish() => return Ok(Cow::Owned(Value::Null)),
            other => {
                return Err(err(format!(
                    "input to $filter must be an array not {}",
                    other.type_name()
                )))
            }
        }
        let limit = match &self.limit {
            Some(l) => filter_limit(l.eval(ctx)?.as_ref())?,
            None => None,
        }
        .unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for item in into_items(input) {
            if out.len() >= limit {
                break;
            }
            let keep = ctx.with_var(self.var, &item, |c| {
                self.cond.eval(c).map(|v| v.is_truthy())
            })?;
            if keep {
                out.push(item);
            }
        }
        Ok(Cow::Owned(Value::Array(out)))
    }
}

#[derive(Debug)]
struct Map {
    input: Expr,
    var: VarId,
    body: Expr,
}

fn compile_map(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args("$map", args, &["input", "in"], &["as"], path)?;
    let input = compile_expr(a["input"], &path_key(path, "input"), cx)?;
    let name = as_name("$map", &a, path)?;
    let (var, body) = compile_bound(
        name,
        a["in"],
        &path_key(path, "as"),
        &path_key(path, "in"),
        cx,
    )?;
    Ok(Expr::Op(Arc::new(Map { input, var, body })))
}

impl Operator for Map {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let input = self.input.eval(ctx)?;
        let Value::Array(items) = input.as_ref() else {
            if input.is_nullish() {
                return Ok(Cow::Owned(Value::Null));
            }
            return Err(err(format!(
                "input to $map must be an array not {}",
                input.type_name()
            )));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let v = ctx.with_var(self.var, item, |c| self.body.eval_owned(c))?;
            out.push(if v.is_missing() { Value::Null } else { v });
        }
        Ok(Cow::Owned(Value::Array(out)))
    }
}

#[derive(Debug)]
struct Reduce {
    input: Expr,
    initial: Expr,
    this: VarId,
    value: VarId,
    body: Expr,
}

fn compile_reduce(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args("$reduce", args, &["input", "initialValue", "in"], &[], path)?;
    let input = compile_expr(a["input"], &path_key(path, "input"), cx)?;
    let initial = compile_expr(a["initialValue"], &path_key(path, "initialValue"), cx)?;
    let this = cx.bind("this", path)?;
    let value = match cx.bind("value", path) {
        Ok(id) => id,
        Err(e) => {
            cx.unbind(1);
            return Err(e);
        }
    };
    let body = compile_expr(a["in"], &path_key(path, "in"), cx);
    cx.unbind(2);
    Ok(Expr::Op(Arc::new(Reduce {
        input,
        initial,
        this,
        value,
        body: body?,
    })))
}

impl Operator for Reduce {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let input = self.input.eval(ctx)?;
        let Value::Array(items) = input.as_ref() else {
            if input.is_nullish() {
                return Ok(Cow::Owned(Value::Null));
            }
            return Err(err(format!(
                "$reduce requires that 'input' be an array, found: {}",
                input.to_json()
            )));
        };
        let mut acc = self.initial.eval_owned(ctx)?;
        for item in items {
            acc = ctx.with_var(self.this, item, |c| {
                c.with_var(self.value, &acc, |c| self.body.eval_owned(c))
            })?;
        }
        Ok(Cow::Owned(acc))
    }
}

// ---------------------------------------------------------------------------------
// $sortArray
// ---------------------------------------------------------------------------------

#[derive(Debug)]
enum SortSpec {
    /// Sort the elements themselves; `true` for descending.
    Value(bool),
    /// Sort by field paths (no array traversal); `true` for descending.
    Fields(Vec<(Vec<Str>, bool)>),
}

#[derive(Debug)]
struct SortArray {
    input: Expr,
    spec: SortSpec,
}

fn sort_direction(v: &Value) -> Option<bool> {
    match integral_i32(v) {
        Some(1) => Some(false),
        Some(-1) => Some(true),
        _ => None,
    }
}

fn compile_sort_array(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args("$sortArray", args, &["input", "sortBy"], &[], path)?;
    let input = compile_expr(a["input"], &path_key(path, "input"), cx)?;
    let sp = path_key(path, "sortBy");
    let spec = match a["sortBy"] {
        Value::Document(d) if !d.is_empty() => {
            let mut fields = Vec::with_capacity(d.len());
            for (k, v) in d.iter() {
                let desc = sort_direction(v).ok_or_else(|| {
                    CompileError::new(
                        path_key(&sp, k),
                        format!("$sortArray: the sort direction of '{k}' must be 1 or -1, found {}", v.to_json()),
                    )
                })?;
                if k.is_empty() || k.split('.').any(|s| s.is_empty() || s.starts_with('$')) {
                    return Err(CompileError::new(
                        path_key(&sp, k),
                        format!("$sortArray: '{k}' is not a valid field path to sort by"),
                    ));
                }
                fields.push((k.split('.').map(Str::from).collect(), desc));
            }
            SortSpec::Fields(fields)
        }
        v => match sort_direction(v) {
            Some(desc) => SortSpec::Value(desc),
            None => {
                return Err(CompileError::new(
                    sp,
                    format!(
                        "$sortArray: sortBy must be 1, -1 or a non-empty document of field: 1|-1 pairs, found {}",
                        v.to_json()
                    ),
                ))
            }
        },
    };
    Ok(Expr::Op(Arc::new(SortArray { input, spec })))
}

/// Value at a dotted path through embedded documents only (missing sorts as null).
fn sort_key<'v>(v: &'v Value, path: &[Str]) -> &'v Value {
    let mut cur = v;
    for seg in path {
        match cur {
            Value::Document(d) => match d.get(seg) {
                Some(next) => cur = next,
                None => return &Value::Null,
            },
            _ => return &Value::Null,
        }
    }
    cur
}

impl Operator for SortArray {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let input = self.input.eval(ctx)?;
        match input.as_ref() {
            Value::Array(_) => {}
            v if v.is_nullish() => return Ok(Cow::Owned(Value::Null)),
            other => {
                return Err(err(format!(
                    "$sortArray requires the input to be an array, found: {}",
                    other.type_name()
                )))
            }
        }
        let mut items = into_items(input);
        match &self.spec {
            SortSpec::Value(desc) => items.sort_by(|a, b| {
                let o = compare_values(a, b);
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            }),
            SortSpec::Fields(fields) => items.sort_by(|a, b| {
                for (path, desc) in fields {
                    let o = compare_values(sort_key(a, path), sort_key(b, path));
                    let o = if *desc { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            }),
        }
        Ok(Cow::Owned(Value::Array(items)))
    }
}

// ---------------------------------------------------------------------------------
// $zip
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Zip {
    inputs: Vec<Expr>,
    longest: bool,
    defaults: Option<Vec<Expr>>,
}

fn compile_zip(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args(
        "$zip",
        args,
        &["inputs"],
        &["useLongestLength", "defaults"],
        path,
    )?;
    let ip = path_key(path, "inputs");
    let Value::Array(raw_inputs) = a["inputs"] else {
        return Err(CompileError::new(
            ip,
            "$zip: 'inputs' must be an array of expressions",
        ));
    };
    if raw_inputs.is_empty() {
        return Err(CompileError::new(
            ip,
            "$zip: 'inputs' must contain at least one array expression",
        ));
    }
    let inputs = raw_inputs
        .iter()
        .enumerate()
        .map(|(i, e)| compile_expr(e, &path_index(&ip, i), cx))
        .collect::<Result<Vec<_>, _>>()?;
    let longest = match a.get("useLongestLength") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(CompileError::new(
                path_key(path, "useLongestLength"),
                format!(
                    "$zip: 'useLongestLength' must be a boolean, found {}",
                    other.type_name()
                ),
            ))
        }
    };
    let defaults = match a.get("defaults") {
        None => None,
        Some(d) => {
            let dp = path_key(path, "defaults");
            let Value::Array(raw) = d else {
                return Err(CompileError::new(
                    dp,
                    "$zip: 'defaults' must be an array of expressions",
                ));
            };
            if !longest {
                return Err(CompileError::new(
                    dp,
                    "$zip: 'defaults' requires 'useLongestLength' to be true",
                ));
            }
            if raw.len() != inputs.len() {
                return Err(CompileError::new(
                    dp,
                    format!(
                        "$zip: 'defaults' and 'inputs' must have the same length ({} vs {})",
                        raw.len(),
                        inputs.len()
                    ),
                ));
            }
            Some(
                raw.iter()
                    .enumerate()
                    .map(|(i, e)| compile_expr(e, &path_index(&dp, i), cx))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
    };
    Ok(Expr::Op(Arc::new(Zip {
        inputs,
        longest,
        defaults,
    })))
}

impl Operator for Zip {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let mut arrays = Vec::with_capacity(self.inputs.len());
        for e in &self.inputs {
            let v = e.eval(ctx)?;
            if v.is_nullish() {
                return Ok(Cow::Owned(Value::Null));
            }
            if !matches!(v.as_ref(), Value::Array(_)) {
                return Err(err(format!(
                    "$zip found a non-array expression in input: {}",
                    v.to_json()
                )));
            }
            arrays.push(v);
        }
        let defaults = match &self.defaults {
            Some(ds) => ds
                .iter()
                .map(|d| {
                    d.eval_owned(ctx)
                        .map(|v| if v.is_missing() { Value::Null } else { v })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![Value::Null; arrays.len()],
        };
        let lens = arrays
            .iter()
            .map(|a| a.as_array().map_or(0, <[Value]>::len));
        let len = if self.longest { lens.max() } else { lens.min() }.unwrap_or(0);
        let out = (0..len)
            .map(|i| {
                Value::Array(
                    arrays
                        .iter()
                        .zip(&defaults)
                        .map(|(a, d)| a.as_array().and_then(|a| a.get(i)).unwrap_or(d).clone())
                        .collect(),
                )
            })
            .collect();
        Ok(Cow::Owned(Value::Array(out)))
    }
}

// ---------------------------------------------------------------------------------
// $firstN / $lastN / $maxN / $minN (array forms)
// ---------------------------------------------------------------------------------

fn compile_n(
    name: &'static str,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
    f: super::EvalFn,
) -> Result<Expr, CompileError> {
    let a = named_args(name, args, &["n", "input"], &[], path)?;
    let np = path_key(path, "n");
    let n = compile_expr(a["n"], &np, cx)?;
    if let Some(v) = n.as_literal() {
        n_arg(name, v).map_err(|e| CompileError::new(np, e.message))?;
    }
    let input = compile_expr(a["input"], &path_key(path, "input"), cx)?;
    Ok(fn_op(name, vec![n, input], f))
}

fn n_arg(op: &str, v: &Value) -> Result<usize, EvalError> {
    match integral_i32(v) {
        Some(n) if n > 0 => Ok(n as usize),
        _ => Err(err(format!(
            "{op}: 'n' must be a positive integer, found {}",
            v.to_json()
        ))),
    }
}

/// `n` and the input array of an `N` operator.
fn n_args<'v>(op: &str, args: &'v [Cow<'_, Value>]) -> Result<(usize, &'v [Value]), EvalError> {
    let n = n_arg(op, &args[0])?;
    match args[1].as_ref() {
        Value::Array(items) => Ok((n, items)),
        other => Err(err(format!(
            "{op}: 'input' must be an array, found {}",
            other.type_name()
        ))),
    }
}

fn eval_first_n(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (n, items) = n_args("$firstN", args)?;
    Ok(Value::Array(items[..n.min(items.len())].to_vec()))
}

fn eval_last_n(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (n, items) = n_args("$lastN", args)?;
    Ok(Value::Array(
        items[items.len().saturating_sub(n)..].to_vec(),
    ))
}

/// The `n` largest (or smallest) non-null values, best first.
fn extreme_n(op: &str, args: &[Cow<'_, Value>], max: bool) -> Result<Value, EvalError> {
    let (n, items) = n_args(op, args)?;
    let mut vals: Vec<&Value> = items.iter().filter(|v| !v.is_nullish()).collect();
    vals.sort_by(|a, b| {
        let o = compare_values(a, b);
        if max {
            o.reverse()
        } else {
            o
        }
    });
    vals.truncate(n);
    Ok(Value::Array(vals.into_iter().cloned().collect()))
}

fn eval_max_n(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    extreme_n("$maxN", args, true)
}

fn eval_min_n(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    extreme_n("$minN", args, false)
}

#[cfg(test)]
mod tests {
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value};

    fn eval(expr: &str, doc: &str) -> Result<String, String> {
        let e = Expression::compile(&parse_value(expr).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let d = parse_document(doc).map_err(|e| e.to_string())?;
        e.evaluate(&d)
            .map(|v| v.to_json())
            .map_err(|e| e.to_string())
    }

    fn ok(expr: &str, want: &str) {
        assert_eq!(
            eval(expr, r#"{"a": [1, 2, 3], "s": "x"}"#).as_deref(),
            Ok(want),
            "{expr}"
        );
    }

    fn fails(expr: &str, want: &str) {
        match eval(expr, r#"{"a": [1, 2, 3], "s": "x"}"#) {
            Err(e) => assert!(e.contains(want), "{expr}: {e}"),
            Ok(v) => panic!("{expr}: expected error {want:?}, got {v}"),
        }
    }

    #[test]
    fn access() {
        ok(r#"{"$size": "$a"}"#, "3");
        fails(r#"{"$size": "$nope"}"#, "Type of argument is: missing");
        ok(r#"{"$arrayElemAt": ["$a", -1]}"#, "3");
        ok(r#"{"$arrayElemAt": ["$a", 1.0]}"#, "2");
        ok(r#"{"$arrayElemAt": ["$nope", 1]}"#, "null");
        fails(r#"{"$arrayElemAt": ["$a", 1.5]}"#, "32-bit integer");
        ok(r#"{"$first": "$a"}"#, "1");
        ok(r#"{"$last": [[1, 2]]}"#, "2");
        ok(r#"{"$first": "$nope"}"#, "null");
        ok(r#"{"$isArray": [[1]]}"#, "true");
        ok(r#"{"$isArray": "$s"}"#, "false");
        ok(r#"{"$reverseArray": "$a"}"#, "[3,2,1]");
        ok(r#"{"$concatArrays": ["$a", [4]]}"#, "[1,2,3,4]");
        ok(r#"{"$concatArrays": ["$a", "$nope"]}"#, "null");
    }

    #[test]
    fn slice_range_index() {
        ok(r#"{"$slice": ["$a", 2]}"#, "[1,2]");
        ok(r#"{"$slice": ["$a", -2]}"#, "[2,3]");
        ok(r#"{"$slice": ["$a", -5, 2]}"#, "[1,2]");
        ok(r#"{"$slice": ["$a", 5, 2]}"#, "[]");
        fails(
            r#"{"$slice": ["$a", 0, 0]}"#,
            "Third argument to $slice must be positive: 0",
        );
        ok(r#"{"$range": [0, 10, 3]}"#, "[0,3,6,9]");
        ok(r#"{"$range": [5, 0, -2]}"#, "[5,3,1]");
        ok(r#"{"$range": [0, -1]}"#, "[]");
        fails(r#"{"$range": [0, 5, 0]}"#, "non-zero step");
        fails(
            r#"{"$range": [0, 1.5]}"#,
            "$range requires an ending value that can be represented as a 32-bit integer",
        );
        ok(r#"{"$indexOfArray": ["$a", 2]}"#, "1");
        ok(r#"{"$indexOfArray": ["$a", 2, 2]}"#, "-1");
        ok(r#"{"$in": [2.0, "$a"]}"#, "true");
        fails(
            r#"{"$in": [2, "$nope"]}"#,
            "$in requires an array as a second argument, found: missing",
        );
    }

    #[test]
    fn higher_order() {
        ok(
            r#"{"$filter": {"input": "$a", "cond": {"$in": ["$$this", [1, 3]]}}}"#,
            "[1,3]",
        );
        ok(
            r#"{"$filter": {"input": "$a", "as": "x", "cond": {"$in": ["$$x", [1, 3]]}, "limit": 1}}"#,
            "[1]",
        );
        fails(
            r#"{"$filter": {"input": "$a", "cond": true, "limit": 0}}"#,
            "expression.$filter.limit: $filter: limit must be greater than 0",
        );
        ok(
            r#"{"$map": {"input": "$a", "as": "x", "in": {"$concatArrays": [["$$x"], ["$s"]]}}}"#,
            r#"[[1,"x"],[2,"x"],[3,"x"]]"#,
        );
        ok(
            r#"{"$map": {"input": "$a", "in": "$$this.nope"}}"#,
            "[null,null,null]",
        );
        ok(
            r#"{"$reduce": {"input": "$a", "initialValue": [], "in": {"$concatArrays": ["$$value", ["$$this"]]}}}"#,
            "[1,2,3]",
        );
        ok(
            r#"{"$reduce": {"input": [], "initialValue": 7, "in": 0}}"#,
            "7",
        );
        fails(
            r#"{"$map": {"input": "$a", "in": "$$y"}}"#,
            "undefined variable",
        );
        fails(
            r#"{"$map": {"input": "$a", "as": "Bad", "in": 1}}"#,
            "invalid variable name",
        );
    }

    #[test]
    fn ordering() {
        ok(
            r#"{"$sortArray": {"input": [3, 1, "a", 2], "sortBy": 1}}"#,
            r#"[1,2,3,"a"]"#,
        );
        ok(
            r#"{"$sortArray": {"input": [{"x": 2}, {"x": 1}, {"y": 0}], "sortBy": {"x": -1}}}"#,
            r#"[{"x":2},{"x":1},{"y":0}]"#,
        );
        fails(
            r#"{"$sortArray": {"input": [], "sortBy": 2}}"#,
            "sortBy must be 1, -1",
        );
        ok(r#"{"$zip": {"inputs": [[1, 2], ["a"]]}}"#, r#"[[1,"a"]]"#);
        ok(
            r#"{"$zip": {"inputs": [[1, 2], ["a"]], "useLongestLength": true, "defaults": [0, "z"]}}"#,
            r#"[[1,"a"],[2,"z"]]"#,
        );
        fails(
            r#"{"$zip": {"inputs": [[1]], "defaults": [0]}}"#,
            "requires 'useLongestLength'",
        );
        ok(r#"{"$maxN": {"n": 2, "input": [3, null, 7, 1]}}"#, "[7,3]");
        ok(r#"{"$minN": {"n": 2, "input": [3, null, 7, 1]}}"#, "[1,3]");
        ok(r#"{"$firstN": {"n": 2, "input": "$a"}}"#, "[1,2]");
        ok(r#"{"$lastN": {"n": 5, "input": "$a"}}"#, "[1,2,3]");
        fails(
            r#"{"$lastN": {"n": 0, "input": "$a"}}"#,
            "'n' must be a positive integer",
        );
    }
}
