//! Window functions of `$setWindowFields` outputs: the `$group` accumulators evaluated
//! over a window, and the window-only operators (`$rank`, `$denseRank`,
//! `$documentNumber`, `$shift`, `$locf`, `$linearFill`, `$derivative`, `$integral`, `$expMovingAvg`,
//! `$covariancePop`, `$covarianceSamp`, `$first`, `$last`).

use super::bounds::{parse_unit, unit_millis, Bound, Bounds};
use super::{sort_key, SortSpec};
use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::expr::{compile_expr, doc_path, CompileCtx, Ctx, Env, Expr};
use crate::stages::accumulators::{compile_accumulator, AccumulatorSpec};
use crate::value::{compare_values, Decimal128, Document, Number, Str, Value};
use std::cmp::Ordering;
use std::sync::Arc;

/// `$group` accumulators that MongoDB also accepts as window functions.
const ACCUMULATORS: &[&str] = &[
    "$sum",
    "$avg",
    "$min",
    "$max",
    "$count",
    "$push",
    "$addToSet",
    "$stdDevPop",
    "$stdDevSamp",
    "$minN",
    "$maxN",
    "$firstN",
    "$lastN",
    "$top",
    "$bottom",
    "$topN",
    "$bottomN",
    "$median",
    "$percentile",
    "$mergeObjects",
];

/// Window functions implemented here rather than by a `$group` accumulator.
const WINDOW_ONLY: &[&str] = &[
    "$rank",
    "$denseRank",
    "$documentNumber",
    "$first",
    "$last",
    "$shift",
    "$locf",
    "$linearFill",
    "$expMovingAvg",
    "$derivative",
    "$integral",
    "$covariancePop",
    "$covarianceSamp",
];

fn is_window_function(name: &str) -> bool {
    ACCUMULATORS.contains(&name) || WINDOW_ONLY.contains(&name)
}

/// A compiled window function.
#[derive(Debug, Clone)]
pub(super) enum WindowFn {
    /// A `$group` accumulator fed the documents of the window.
    Accumulator(AccumulatorSpec),
    /// `$first` / `$last`: the expression on the first / last document of the window.
    Edge { input: Expr, last: bool },
    /// `$rank`, `$denseRank` or `$documentNumber`, with the sortBy direction.
    Rank(RankKind, bool),
    /// `$shift`: the expression on the document `by` positions away.
    Shift {
        output: Expr,
        by: i64,
        default: Value,
    },
    /// `$locf`: the last non-null value so far.
    Locf(Expr),
    /// `$linearFill`: nulls interpolated between the surrounding values.
    LinearFill(Expr),
    /// `$derivative`: rise over run between the ends of the window.
    Derivative { input: Expr, unit_ms: Option<i64> },
    /// `$integral`: trapezoidal rule over the window.
    Integral { input: Expr, unit_ms: Option<i64> },
    /// `$expMovingAvg` with its smoothing factor.
    ExpMovingAvg { input: Expr, alpha: Decimal128 },
    /// `$covariancePop` / `$covarianceSamp`.
    Covariance { x: Expr, y: Expr, sample: bool },
}

/// The rank-like functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RankKind {
    Rank,
    Dense,
    DocumentNumber,
}

/// One compiled `output` field.
#[derive(Debug, Clone)]
pub(super) struct Output {
    /// Where the result goes (dotted path).
    pub path: Arc<[Str]>,
    /// The function.
    pub func: WindowFn,
    /// Its window (implicit for functions that take none).
    pub bounds: Bounds,
}

fn err(path: impl Into<String>, msg: impl Into<String>) -> CompileError {
    CompileError::new(path, msg)
}

/// Compiles the specification of one output field found at `path`.
pub(super) fn compile_output(
    field: Arc<[Str]>,
    spec: &Value,
    path: &str,
    sort: &SortSpec,
    cx: &mut CompileCtx,
) -> Result<Output, CompileError> {
    let Value::Document(d) = spec else {
        return Err(err(
            path,
            format!("an output field must be an object like {{\"$sum\": \"$x\", \"window\": {{...}}}}, found {}", spec.type_name()),
        ));
    };
    // The function is found first (as MongoDB does), then the other fields are checked.
    let Some((name, args)) = d.iter().find(|(k, _)| k.starts_with('$')) else {
        return Err(err(
            path,
            match d.keys().next() {
                Some(k) => format!("expected a $-prefixed window function, found '{k}'"),
                None => "expected a $-prefixed window function such as $sum or $rank".to_string(),
            },
        ));
    };
    let name = name.as_str();
    if !is_window_function(name) {
        return Err(err(
            path_key(path, name),
            format!("unrecognized window function, {name}"),
        ));
    }
    let mut window: Option<&Value> = None;
    for (k, v) in d.iter() {
        if k == "window" {
            window = Some(v);
        } else if k.starts_with('$') {
            if k != name {
                return Err(err(
                    path_key(path, k),
                    "cannot specify two functions in window function spec",
                ));
            }
        } else {
            return Err(err(
                path_key(path, k),
                format!("window function {name} found an unknown argument: '{k}'"),
            ));
        }
    }
    let fpath = path_key(path, name);
    let wpath = path_key(path, "window");
    let has_sort = !sort.is_empty();
    let no_window = |what: &str| -> Result<(), CompileError> {
        match window {
            Some(_) => Err(err(
                &wpath,
                format!("'window' field is not allowed in {what}"),
            )),
            None => Ok(()),
        }
    };
    let parse_window = |cx: &mut CompileCtx| -> Result<Option<Bounds>, CompileError> {
        window
            .map(|w| Bounds::parse(w, &wpath, sort, has_sort, cx))
            .transpose()
    };
    let (func, bounds) = match name {
        "$rank" | "$denseRank" | "$documentNumber" => {
            if d.len() != 1 {
                return Err(err(
                    path,
                    format!(
                        "{name}: rank style window functions take no other arguments (no 'window')"
                    ),
                ));
            }
            if !matches!(args, Value::Document(a) if a.is_empty()) {
                return Err(err(
                    &fpath,
                    format!("{name} must be specified with '{{}}' as the value"),
                ));
            }
            if sort.len() != 1 {
                return Err(err(
                    &fpath,
                    format!("{name} must be specified with a top level sortBy expression with exactly one element"),
                ));
            }
            let kind = match name {
                "$rank" => RankKind::Rank,
                "$denseRank" => RankKind::Dense,
                _ => RankKind::DocumentNumber,
            };
            (WindowFn::Rank(kind, sort[0].1), Bounds::TO_CURRENT)
        }
        "$first" | "$last" => {
            let input = compile_expr(args, &fpath, cx)?;
            let bounds = parse_window(cx)?.unwrap_or(Bounds::WHOLE);
            (
                WindowFn::Edge {
                    input,
                    last: name == "$last",
                },
                bounds,
            )
        }
        "$shift" => {
            no_window("$shift")?;
            if !has_sort {
                return Err(err(&fpath, "$shift requires a sortBy"));
            }
            compile_shift(args, &fpath, cx)?
        }
        "$locf" => {
            no_window("$locf")?;
            (
                WindowFn::Locf(compile_expr(args, &fpath, cx)?),
                Bounds::TO_CURRENT,
            )
        }
        "$linearFill" => {
            no_window("$linearFill")?;
            if sort.len() != 1 {
                return Err(err(
                    &fpath,
                    "$linearFill must be specified with a top level sortBy expression with exactly one element",
                ));
            }
            (
                WindowFn::LinearFill(compile_expr(args, &fpath, cx)?),
                Bounds::WHOLE,
            )
        }
        "$expMovingAvg" => {
            no_window("$expMovingAvg")?;
            if !has_sort {
                return Err(err(&fpath, "$expMovingAvg requires an explicit 'sortBy'"));
            }
            compile_ema(args, &fpath, cx)?
        }
        "$derivative" | "$integral" => {
            if sort.len() != 1 {
                return Err(err(
                    &fpath,
                    format!(
                        "{name} requires a sortBy with exactly one field (the time or position)"
                    ),
                ));
            }
            let (input, unit_ms) = compile_with_unit(name, args, &fpath, cx)?;
            let bounds = parse_window(cx)?;
            if name == "$derivative" {
                let Some(bounds) = bounds else {
                    return Err(err(path, "$derivative requires explicit window bounds"));
                };
                (WindowFn::Derivative { input, unit_ms }, bounds)
            } else {
                (
                    WindowFn::Integral { input, unit_ms },
                    bounds.unwrap_or(Bounds::WHOLE),
                )
            }
        }
        "$covariancePop" | "$covarianceSamp" => {
            let list = match args {
                Value::Array(items) if items.len() == 2 => items,
                other => {
                    return Err(err(
                        &fpath,
                        format!(
                            "{name} expects an array of two expressions, found {}",
                            other.to_json()
                        ),
                    ))
                }
            };
            let x = compile_expr(&list[0], &path_index(&fpath, 0), cx)?;
            let y = compile_expr(&list[1], &path_index(&fpath, 1), cx)?;
            let bounds = parse_window(cx)?.unwrap_or(Bounds::WHOLE);
            (
                WindowFn::Covariance {
                    x,
                    y,
                    sample: name == "$covarianceSamp",
                },
                bounds,
            )
        }
        _ => {
            let bounds = parse_window(cx)?.unwrap_or(Bounds::WHOLE);
            if name == "$mergeObjects" && !bounds.lower_unbounded() {
                return Err(err(
                    &wpath,
                    "$mergeObjects is only supported with windows whose lower bound is 'unbounded'",
                ));
            }
            let mut acc_doc = Document::with_capacity(1);
            acc_doc.insert(name, args.clone());
            let spec = compile_accumulator(&Value::Document(acc_doc), path, cx)?;
            (WindowFn::Accumulator(spec), bounds)
        }
    };
    Ok(Output {
        path: field,
        func,
        bounds,
    })
}

fn compile_shift(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<(WindowFn, Bounds), CompileError> {
    let Value::Document(a) = args else {
        return Err(err(
            path,
            format!(
                "argument to $shift must be an object, found {}",
                args.type_name()
            ),
        ));
    };
    let (mut output, mut by, mut default) = (None, None, Value::Null);
    for (k, v) in a.iter() {
        let p = path_key(path, k);
        match k.as_str() {
            "output" => output = Some(compile_expr(v, &p, cx)?),
            "by" => {
                // A number written in the spec, not an expression.
                match v.as_i64_exact() {
                    Some(n) => by = Some(n),
                    None => {
                        return Err(err(
                            &p,
                            format!(
                                "$shift requires 'by' as an integer value, found {}",
                                v.to_json()
                            ),
                        ))
                    }
                }
            }
            "default" => match compile_expr(v, &p, cx)?.as_literal() {
                Some(c) => {
                    default = if c.is_missing() {
                        Value::Null
                    } else {
                        c.clone()
                    }
                }
                None => {
                    return Err(err(
                        &p,
                        "$shift requires 'default' expression to be constant",
                    ))
                }
            },
            _ => return Err(err(&p, format!("$shift got unexpected argument: {k}"))),
        }
    }
    let Some(output) = output else {
        return Err(err(path, "$shift requires an 'output' expression"));
    };
    let Some(by) = by else {
        return Err(err(
            path,
            "$shift requires a 'by' field (an integer offset)",
        ));
    };
    Ok((
        WindowFn::Shift {
            output,
            by,
            default,
        },
        Bounds::WHOLE,
    ))
}

fn compile_ema(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<(WindowFn, Bounds), CompileError> {
    let usage =
        "$expMovingAvg takes an object with exactly two fields: 'input', and either 'N' or 'alpha'";
    let Value::Document(a) = args else {
        return Err(err(path, usage));
    };
    let Some(input) = a.get("input") else {
        return Err(err(path, usage));
    };
    if a.len() != 2 {
        return Err(err(path, usage));
    }
    let input = compile_expr(input, &path_key(path, "input"), cx)?;
    let alpha = if let Some(n) = a.get("N") {
        let p = path_key(path, "N");
        let Some(num) = n.as_number() else {
            return Err(err(
                &p,
                format!(
                    "'N' field must be an integer, but found type {}",
                    n.type_name()
                ),
            ));
        };
        let Some(n) = num.to_i64_exact() else {
            return Err(err(&p, format!("'N' field must be an integer, but found {}; to use a non-integer, use the 'alpha' argument instead", n.to_json())));
        };
        if n <= 0 {
            return Err(err(&p, format!("'N' must be greater than zero, found {n}")));
        }
        Decimal128::from(2) / (Decimal128::from(n) + Decimal128::from(1))
    } else if let Some(alpha) = a.get("alpha") {
        let p = path_key(path, "alpha");
        let Some(num) = alpha.as_number() else {
            return Err(err(
                &p,
                format!("'alpha' must be a number, found {}", alpha.type_name()),
            ));
        };
        let d = num.to_decimal();
        if !(d > Decimal128::from(0) && d < Decimal128::from(1)) {
            return Err(err(
                &p,
                format!(
                    "'alpha' must be between 0 and 1 (exclusive), found {}",
                    alpha.to_json()
                ),
            ));
        }
        d
    } else {
        return Err(err(path, usage));
    };
    Ok((WindowFn::ExpMovingAvg { input, alpha }, Bounds::TO_CURRENT))
}

fn compile_with_unit(
    name: &str,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<(Expr, Option<i64>), CompileError> {
    let Value::Document(a) = args else {
        return Err(err(
            path,
            format!(
                "{name} expects an object like {{input: <expr>, unit: <unit>}}, found {}",
                args.type_name()
            ),
        ));
    };
    let (mut input, mut unit_ms) = (None, None);
    for (k, v) in a.iter() {
        let p = path_key(path, k);
        match k.as_str() {
            "input" => input = Some(compile_expr(v, &p, cx)?),
            "unit" => {
                let unit = parse_unit(v, &p)?;
                match unit_millis(unit) {
                    Some(ms) => unit_ms = Some(ms),
                    None => return Err(err(&p, format!("{name}: unit must be 'week' or smaller"))),
                }
            }
            _ => return Err(err(&p, format!("{name} got unexpected argument: {k}"))),
        }
    }
    match input {
        Some(input) => Ok((input, unit_ms)),
        None => Err(err(path, format!("{name} requires an 'input' expression"))),
    }
}

/// A result per document of a partition.
type Results = Vec<Result<Value, EvalError>>;

impl Output {
    /// Computes this output for every document of a sorted partition.
    pub(super) fn compute(&self, docs: &[Document], sort_path: &[Str], env: &Env) -> Results {
        match &self.func {
            WindowFn::Accumulator(spec) => self.accumulate(spec, docs, sort_path, env),
            WindowFn::Edge { input, last } => (0..docs.len())
                .map(|i| match self.bounds.endpoints(i, docs, sort_path) {
                    None => Ok(Value::Null),
                    Some((lo, hi)) => {
                        let doc = &docs[if *last { hi } else { lo }];
                        let v = input.eval_owned(&Ctx::new(doc, env))?;
                        Ok(if v.is_missing() { Value::Null } else { v })
                    }
                })
                .collect(),
            WindowFn::Rank(kind, asc) => rank(*kind, *asc, docs, sort_path),
            WindowFn::Shift {
                output,
                by,
                default,
            } => (0..docs.len())
                .map(|i| {
                    let j = i as i64 + by;
                    if j < 0 || j >= docs.len() as i64 {
                        return Ok(default.clone());
                    }
                    // A missing value on the shifted document also yields the default.
                    let v = output.eval_owned(&Ctx::new(&docs[j as usize], env))?;
                    Ok(if v.is_missing() { default.clone() } else { v })
                })
                .collect(),
            WindowFn::Locf(input) => {
                let mut last = Value::Null;
                docs.iter()
                    .map(|doc| {
                        let v = input.eval(&Ctx::new(doc, env))?;
                        if !v.is_nullish() {
                            last = v.into_owned();
                        }
                        Ok(last.clone())
                    })
                    .collect()
            }
            WindowFn::LinearFill(input) => linear_fill(input, docs, sort_path, env),
            WindowFn::Derivative { input, unit_ms } => (0..docs.len())
                .map(|i| match self.bounds.endpoints(i, docs, sort_path) {
                    None => Ok(Value::Null),
                    Some((lo, hi)) => {
                        derivative(input, *unit_ms, &docs[lo], &docs[hi], sort_path, env)
                    }
                })
                .collect(),
            WindowFn::Integral { input, unit_ms } => (0..docs.len())
                .map(|i| match self.bounds.endpoints(i, docs, sort_path) {
                    None => Ok(Value::Null),
                    Some((lo, hi)) => integral(input, *unit_ms, &docs[lo..=hi], sort_path, env),
                })
                .collect(),
            WindowFn::ExpMovingAvg { input, alpha } => exp_moving_avg(input, *alpha, docs, env),
            WindowFn::Covariance { x, y, sample } => (0..docs.len())
                .map(|i| match self.bounds.endpoints(i, docs, sort_path) {
                    None => Ok(Value::Null),
                    Some((lo, hi)) => covariance(x, y, *sample, &docs[lo..=hi], env),
                })
                .collect(),
        }
    }

    fn accumulate(
        &self,
        spec: &AccumulatorSpec,
        docs: &[Document],
        sort_path: &[Str],
        env: &Env,
    ) -> Results {
        let run = |window: &[Document]| -> Result<Value, EvalError> {
            let mut acc = spec.start();
            for doc in window {
                acc.update(&Ctx::new(doc, env))?;
            }
            Ok(null_if_missing(acc.result()))
        };
        match &self.bounds {
            Bounds::Documents(Bound::Unbounded, Bound::Unbounded) => {
                let r = run(docs);
                vec![r; docs.len()]
            }
            bounds if bounds.lower_unbounded() => {
                // The window only grows: feed one running accumulator.
                let mut acc = spec.start();
                let (mut added, mut failed) = (0, None::<EvalError>);
                (0..docs.len())
                    .map(|i| {
                        let end = self
                            .bounds
                            .endpoints(i, docs, sort_path)
                            .map_or(0, |(_, hi)| hi + 1);
                        while added < end {
                            if failed.is_none() {
                                failed = acc.update(&Ctx::new(&docs[added], env)).err();
                            }
                            added += 1;
                        }
                        match &failed {
                            Some(e) => Err(e.clone()),
                            None => Ok(null_if_missing(acc.result())),
                        }
                    })
                    .collect()
            }
            bounds => (0..docs.len())
                .map(|i| match bounds.endpoints(i, docs, sort_path) {
                    None => run(&[]),
                    Some((lo, hi)) => run(&docs[lo..=hi]),
                })
                .collect(),
        }
    }
}

/// A window function over an empty window, or over missing values, yields null.
fn null_if_missing(v: Value) -> Value {
    if v.is_missing() {
        Value::Null
    } else {
        v
    }
}

fn int_value(n: usize) -> Value {
    match i32::try_from(n) {
        Ok(n) => Value::Int32(n),
        Err(_) => Value::Int64(n as i64),
    }
}

fn rank(kind: RankKind, asc: bool, docs: &[Document], sort_path: &[Str]) -> Results {
    let mut out = Vec::with_capacity(docs.len());
    let (mut rank, mut dense) = (0usize, 0usize);
    let mut prev: Option<Value> = None;
    for (i, doc) in docs.iter().enumerate() {
        // Ties compare as the sort does: null and missing are equal, arrays by their
        // sort key.
        let key = if kind == RankKind::DocumentNumber {
            Value::Null
        } else {
            sort_key(doc, sort_path, asc)
        };
        let tie = prev
            .as_ref()
            .is_some_and(|p| compare_values(p, &key) == Ordering::Equal);
        if !tie {
            rank = i + 1;
            dense += 1;
        }
        prev = Some(key);
        out.push(Ok(int_value(match kind {
            RankKind::Rank => rank,
            RankKind::Dense => dense,
            RankKind::DocumentNumber => i + 1,
        })));
    }
    out
}

/// `a - b` for the sortBy positions of `$derivative` / `$integral`: numbers, or dates
/// (milliseconds, as an int64).
fn position_diff(a: &Value, b: &Value) -> Option<Number> {
    match (a, b) {
        (Value::Date(x), Value::Date(y)) => Some(Number::Int64(x.wrapping_sub(*y))),
        _ => Some(a.as_number()?.sub(b.as_number()?)),
    }
}

fn check_position(name: &str, v: &Value, unit_ms: Option<i64>) -> Result<(), EvalError> {
    match (unit_ms, v) {
        (Some(_), Value::Date(_)) => Ok(()),
        (Some(_), other) => Err(EvalError::new(format!(
            "{name} with 'unit' expects the sortBy field to be a date, found {}",
            other.type_name()
        ))),
        (None, Value::Date(_)) => Err(EvalError::new(format!(
            "{name} where the sortBy is a date requires a 'unit'"
        ))),
        (None, other) if other.is_number() => Ok(()),
        (None, other) => Err(EvalError::new(format!(
            "{name} (with no 'unit') expects the sortBy field to be numeric, found {}",
            other.type_name()
        ))),
    }
}

fn linear_fill(input: &Expr, docs: &[Document], sort_path: &[Str], env: &Env) -> Results {
    // (x, y) of every document, checked as MongoDB does: y numeric or nullish, x numeric
    // or a date, x strictly increasing and of one kind.
    let mut points: Vec<Result<(Value, Option<Number>), EvalError>> =
        Vec::with_capacity(docs.len());
    let mut last_x: Option<Value> = None;
    for doc in docs {
        let point = (|| {
            let y = input.eval(&Ctx::new(doc, env))?;
            let y = match y.as_number() {
                Some(n) => Some(n),
                None if y.is_nullish() => None,
                None => {
                    return Err(EvalError::new(format!(
                        "$linearFill: the value to fill must be numeric or null, found {}",
                        y.type_name()
                    )))
                }
            };
            let x = doc_path(doc, sort_path).into_owned();
            if !x.is_number() && !matches!(x, Value::Date(_)) {
                return Err(EvalError::new(format!(
                    "$linearFill: the sortBy field must be numeric or a date, found {}",
                    x.type_name()
                )));
            }
            if let Some(prev) = &last_x {
                if compare_values(prev, &x) == Ordering::Equal {
                    return Err(EvalError::new(
                        "$linearFill: there can be no repeated values in the sortBy field",
                    ));
                }
                if prev.is_number() != x.is_number() {
                    return Err(EvalError::new(format!(
                        "$linearFill: conflicting sortBy value types, {} and {}",
                        prev.type_name(),
                        x.type_name()
                    )));
                }
            }
            last_x = Some(x.clone());
            Ok((x, y))
        })();
        points.push(point);
    }
    let known = |j: usize| match &points[j] {
        Ok((x, Some(y))) => Some((x, *y)),
        _ => None,
    };
    (0..docs.len())
        .map(|i| {
            let (x, y) = points[i].as_ref().map_err(Clone::clone)?;
            if let Some(y) = y {
                return Ok(y.to_value());
            }
            let before = (0..i).rev().find_map(known);
            let after = (i + 1..docs.len()).find_map(known);
            let (Some((x1, y1)), Some((x2, y2))) = (before, after) else {
                return Ok(Value::Null);
            };
            // y1 + (x - x1) * ((y2 - y1) / (x2 - x1))
            let filled = position_diff(x2, x1)
                .and_then(|run| y2.sub(y1).div(run))
                .zip(position_diff(x, x1))
                .map(|(slope, dx)| y1.add(dx.mul(slope)));
            Ok(filled.map_or(Value::Null, Number::to_value))
        })
        .collect()
}

fn derivative(
    input: &Expr,
    unit_ms: Option<i64>,
    left: &Document,
    right: &Document,
    sort_path: &[Str],
    env: &Env,
) -> Result<Value, EvalError> {
    let (xl, xr) = (doc_path(left, sort_path), doc_path(right, sort_path));
    check_position("$derivative", &xl, unit_ms)?;
    check_position("$derivative", &xr, unit_ms)?;
    let run = position_diff(&xr, &xl).unwrap_or(Number::Int32(0));
    let yl = input.eval(&Ctx::new(left, env))?;
    let yr = input.eval(&Ctx::new(right, env))?;
    if yl.is_nullish() || yr.is_nullish() {
        return Err(EvalError::new(
            "$derivative input must not be null or missing",
        ));
    }
    let Some(rise) = position_diff(&yr, &yl) else {
        return Err(EvalError::new(format!(
            "$derivative input must be numeric, found {} and {}",
            yl.type_name(),
            yr.type_name()
        )));
    };
    let Some(result) = rise.div(run) else {
        // A window of one document (or equal positions) has no slope.
        return Ok(Value::Null);
    };
    Ok(match unit_ms {
        Some(ms) => result.mul(Number::Int64(ms)).to_value(),
        None => result.to_value(),
    })
}

fn integral(
    input: &Expr,
    unit_ms: Option<i64>,
    window: &[Document],
    sort_path: &[Str],
    env: &Env,
) -> Result<Value, EvalError> {
    let mut areas = Vec::with_capacity(window.len());
    let mut nan = false;
    let mut prev: Option<(Value, Number)> = None;
    for doc in window {
        let x = doc_path(doc, sort_path).into_owned();
        let y = input.eval(&Ctx::new(doc, env))?;
        let Some(y) = y.as_number() else {
            return Err(EvalError::new(format!(
                "$integral: the input must evaluate to a number, found {}",
                y.type_name()
            )));
        };
        check_position("$integral", &x, unit_ms)?;
        nan |= y.is_nan() || x.as_number().is_some_and(Number::is_nan);
        if let Some((px, py)) = &prev {
            if let Some(dx) = position_diff(&x, px) {
                let area = py.add(y).mul(dx).div(Number::Double(2.0));
                areas.push(area.unwrap_or(Number::Int32(0)));
            }
        }
        prev = Some((x, y));
    }
    if nan {
        return Ok(Value::Double(f64::NAN));
    }
    let sum = sum_numbers(&areas);
    Ok(match unit_ms {
        Some(ms) => sum.div(Number::Int64(ms)).unwrap_or(sum).to_value(),
        None => sum.to_value(),
    })
}

/// The sum of the trapezoid areas: int32 0 when there are none, a decimal when any is
/// a decimal, otherwise a compensated (Neumaier) double sum, close to MongoDB's
/// double-double summation.
fn sum_numbers(values: &[Number]) -> Number {
    if values.is_empty() {
        return Number::Int32(0);
    }
    if values.iter().any(|n| matches!(n, Number::Decimal(_))) {
        return values.iter().fold(Number::Int32(0), |acc, n| acc.add(*n));
    }
    let (mut sum, mut comp) = (0.0f64, 0.0f64);
    for n in values {
        let x = n.to_f64();
        let t = sum + x;
        if sum.abs() >= x.abs() {
            comp += (sum - t) + x;
        } else {
            comp += (x - t) + sum;
        }
        sum = t;
    }
    Number::Double(sum + comp)
}

fn exp_moving_avg(input: &Expr, alpha: Decimal128, docs: &[Document], env: &Env) -> Results {
    let one_minus = Decimal128::from(1) - alpha;
    let mut current: Option<Decimal128> = None;
    let mut decimal = false;
    docs.iter()
        .map(|doc| {
            let v = input.eval(&Ctx::new(doc, env))?;
            if let Some(n) = v.as_number() {
                decimal |= matches!(n, Number::Decimal(_));
                let d = n.to_decimal();
                current = Some(match current {
                    None => d,
                    Some(c) => d * alpha + c * one_minus,
                });
            }
            Ok(match current {
                None => Value::Null,
                Some(c) if decimal => Value::Decimal(c),
                Some(c) => Value::Double(Number::Decimal(c).to_f64()),
            })
        })
        .collect()
}

fn covariance(
    x: &Expr,
    y: &Expr,
    sample: bool,
    window: &[Document],
    env: &Env,
) -> Result<Value, EvalError> {
    let mut points = Vec::with_capacity(window.len());
    for doc in window {
        let ctx = Ctx::new(doc, env);
        let (a, b) = (x.eval(&ctx)?, y.eval(&ctx)?);
        if let (Some(a), Some(b)) = (a.as_f64(), b.as_f64()) {
            points.push((a, b));
        }
    }
    let n = points.len();
    if n == 0 || (sample && n < 2) {
        return Ok(Value::Null);
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let c: f64 = points
        .iter()
        .map(|(a, b)| (a - mean_x) * (b - mean_y))
        .sum();
    let denom = if sample { n - 1 } else { n } as f64;
    Ok(Value::Double(c / denom))
}
