//! `$bucket` and `$bucketAuto`.
//!
//! `$bucket` puts each document in the bucket `[boundaries[i], boundaries[i+1])` that
//! holds its `groupBy` value (or in the `default` bucket) and emits the non-empty buckets
//! sorted by `_id`, as MongoDB's `$group` + `$sort: {_id: 1}` expansion does. A value
//! outside every bucket with no `default` is a runtime error for that document.
//!
//! `$bucketAuto` sorts the documents by `groupBy` (missing is null) and cuts them into at
//! most `buckets` buckets of about `round(count / buckets)` documents, never splitting
//! equal values, following MongoDB's algorithm; `granularity` rounds the boundaries to a
//! preferred-number series. Accumulators see each bucket's documents in `groupBy` order
//! (ties in input order).

use super::group::{invalid_state, is_path_or_operator, OutputFields};
use super::{Stage, StageCompileFn, StageState};
use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::expr::{compile_expr, CompileCtx, Ctx, Env, Expr};
use crate::value::{canonical_rank, compare_values, Decimal128, Document, Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] = &[
    ("$bucket", compile_bucket),
    ("$bucketAuto", compile_bucket_auto),
];

/// Compiles the `output` object of a bucket stage (default `{count: {$sum: 1}}`).
fn compile_output(
    stage: &str,
    output: Option<&Value>,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<OutputFields, CompileError> {
    let Some(output) = output else {
        return OutputFields::count(&path_key(path, "output"), cx);
    };
    let out_path = path_key(path, "output");
    let Value::Document(d) = output else {
        return Err(CompileError::new(
            out_path,
            format!("{stage}: 'output' must be an object of accumulators like {{\"total\": {{\"$sum\": \"$x\"}}}}, found {}", output.type_name()),
        ));
    };
    let mut fields = OutputFields::default();
    for (name, acc) in d.iter() {
        let p = path_key(&out_path, name);
        if name == "_id" {
            return Err(CompileError::new(
                p,
                format!("{stage}: 'output' cannot define '_id' (it holds the bucket bounds)"),
            ));
        }
        fields.add(stage, name, acc, &p, cx)?;
    }
    Ok(fields)
}

fn compile_group_by(
    stage: &str,
    v: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    if !is_path_or_operator(v) {
        return Err(CompileError::new(
            path,
            format!("{stage}: 'groupBy' must be a field path like \"$price\" or an expression object, found {}", v.to_json()),
        ));
    }
    compile_expr(v, path, cx)
}

/// The fields of a stage's object argument, rejecting unknown ones.
fn stage_args<'v>(
    stage: &str,
    spec: &'v Value,
    known: &[&str],
    path: &str,
) -> Result<&'v Document, CompileError> {
    let Value::Document(d) = spec else {
        return Err(CompileError::new(
            path,
            format!(
                "{stage} expects an object argument, found {}",
                spec.type_name()
            ),
        ));
    };
    for k in d.keys() {
        if !known.contains(&k.as_str()) {
            return Err(CompileError::new(
                path_key(path, k),
                format!(
                    "{stage}: unknown option '{k}' (expected one of: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------
// $bucket
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct BucketConfig {
    group_by: Expr,
    boundaries: Vec<Value>,
    default: Option<Value>,
    fields: OutputFields,
}

#[derive(Debug)]
struct Bucket {
    config: Arc<BucketConfig>,
    /// One slot per bucket, then one for `default`.
    rows: Vec<Option<Vec<Box<dyn super::accumulators::Accumulator>>>>,
}

impl Bucket {
    fn new(config: Arc<BucketConfig>) -> Self {
        let slots = config.boundaries.len();
        Bucket {
            config,
            rows: (0..slots).map(|_| None).collect(),
        }
    }
}

impl BucketConfig {
    /// The slot of a `groupBy` value: `i` for `[b[i], b[i+1])`, the last slot for default.
    fn slot(&self, v: &Value) -> Result<usize, EvalError> {
        let b = &self.boundaries;
        let below = compare_values(v, &b[0]) == Ordering::Less;
        let above = compare_values(v, &b[b.len() - 1]) != Ordering::Less;
        if below || above {
            return match self.default {
                Some(_) => Ok(b.len() - 1),
                None => Err(EvalError::new(format!(
                    "$bucket: the 'groupBy' value {} is not within any bucket [{}, {}) and no 'default' is specified",
                    if v.is_missing() { "missing".to_string() } else { v.to_json() },
                    b[0].to_json(),
                    b[b.len() - 1].to_json()
                ))),
            };
        }
        Ok(b.partition_point(|x| compare_values(x, v) != Ordering::Greater) - 1)
    }

    fn slot_id(&self, slot: usize) -> Value {
        if slot + 1 == self.boundaries.len() {
            self.default.clone().unwrap_or(Value::Null)
        } else {
            self.boundaries[slot].clone()
        }
    }
}

impl Stage for Bucket {
    fn name(&self) -> &'static str {
        "$bucket"
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let ctx = Ctx::new(&doc, env);
        let config = &*self.config;
        let slot = config.slot(config.group_by.eval(&ctx)?.as_ref())?;
        let mut inputs = config.fields.new_inputs();
        config.fields.eval_inputs(&ctx, &mut inputs)?;
        let row = match &mut self.rows[slot] {
            Some(row) => row,
            empty => empty.insert(config.fields.start(&config.slot_id(slot), env)?),
        };
        OutputFields::apply(row, &mut inputs, &ctx)
    }

    fn finish(&mut self, _env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        let config = &*self.config;
        let mut docs: Vec<Document> = Vec::new();
        for (slot, row) in self.rows.iter_mut().enumerate() {
            if let Some(row) = row.take() {
                docs.push(config.fields.output(config.slot_id(slot), &row));
            }
        }
        // The default bucket sorts among the others by its _id, as `$sort: {_id: 1}` does.
        docs.sort_by(|a, b| {
            compare_values(
                a.get("_id").unwrap_or(&Value::Null),
                b.get("_id").unwrap_or(&Value::Null),
            )
        });
        out.append(&mut docs);
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(Bucket::new(Arc::clone(&self.config)))
    }

    /// One entry per bucket (the default bucket last): null, or its accumulator states.
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        let mut slots = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            match row {
                None => slots.push(Value::Null),
                Some(row) => match OutputFields::save_row(row) {
                    Some(states) => slots.push(states),
                    None => return Ok(StageState::Unsupported),
                },
            }
        }
        Ok(StageState::State(Value::Array(slots)))
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        let slots = state
            .as_array()
            .filter(|s| s.len() == self.rows.len())
            .ok_or_else(|| invalid_state("$bucket", state))?;
        let mut rows = Vec::with_capacity(slots.len());
        for slot in slots {
            rows.push(match slot {
                Value::Null => None,
                states => Some(self.config.fields.restore_row("$bucket", states)?),
            });
        }
        self.rows = rows;
        Ok(())
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

/// A constant (literal or constant-folded) value of a `$bucket` option.
fn constant(what: &str, v: &Value, path: &str, cx: &mut CompileCtx) -> Result<Value, CompileError> {
    match compile_expr(v, path, cx)? {
        Expr::Literal(v) if !v.is_missing() => Ok(v),
        _ => Err(CompileError::new(
            path,
            format!("$bucket: {what} must be a constant, found {}", v.to_json()),
        )),
    }
}

fn compile_bucket(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let d = stage_args(
        "$bucket",
        spec,
        &["groupBy", "boundaries", "default", "output"],
        path,
    )?;
    let (Some(group_by), Some(bounds)) = (d.get("groupBy"), d.get("boundaries")) else {
        return Err(CompileError::new(
            path,
            "$bucket requires 'groupBy' and 'boundaries'",
        ));
    };
    let group_by = compile_group_by("$bucket", group_by, &path_key(path, "groupBy"), cx)?;
    let bounds_path = path_key(path, "boundaries");
    let Value::Array(items) = bounds else {
        return Err(CompileError::new(
            bounds_path,
            format!(
                "$bucket: 'boundaries' must be an array of at least 2 sorted values, found {}",
                bounds.type_name()
            ),
        ));
    };
    let mut boundaries = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        boundaries.push(constant(
            "'boundaries' elements",
            item,
            &path_index(&bounds_path, i),
            cx,
        )?);
    }
    if boundaries.len() < 2 {
        return Err(CompileError::new(
            bounds_path,
            format!(
                "$bucket: 'boundaries' must have at least 2 values, found {}",
                boundaries.len()
            ),
        ));
    }
    for i in 1..boundaries.len() {
        let (lower, upper) = (&boundaries[i - 1], &boundaries[i]);
        if canonical_rank(lower) != canonical_rank(upper) {
            return Err(CompileError::new(
                path_index(&bounds_path, i),
                format!(
                    "$bucket: all 'boundaries' must have the same type, found {} and {}",
                    lower.type_name(),
                    upper.type_name()
                ),
            ));
        }
        if compare_values(lower, upper) != Ordering::Less {
            return Err(CompileError::new(
                path_index(&bounds_path, i),
                format!(
                    "$bucket: 'boundaries' must be sorted in ascending order without duplicates, but {} is not less than {}",
                    lower.to_json(),
                    upper.to_json()
                ),
            ));
        }
    }
    let default = match d.get("default") {
        None => None,
        Some(v) => {
            let p = path_key(path, "default");
            let v = constant("'default'", v, &p, cx)?;
            let (first, last) = (&boundaries[0], &boundaries[boundaries.len() - 1]);
            if canonical_rank(&v) == canonical_rank(first)
                && compare_values(&v, first) != Ordering::Less
                && compare_values(&v, last) == Ordering::Less
            {
                return Err(CompileError::new(
                    p,
                    "$bucket: 'default' must be less than the lowest boundary or greater than or equal to the highest boundary",
                ));
            }
            Some(v)
        }
    };
    let fields = compile_output("$bucket", d.get("output"), path, cx)?;
    let config = BucketConfig {
        group_by,
        boundaries,
        default,
        fields,
    };
    Ok(Box::new(Bucket::new(Arc::new(config))))
}

// ---------------------------------------------------------------------------------
// $bucketAuto
// ---------------------------------------------------------------------------------

/// A preferred-number series for `granularity`.
#[derive(Debug, Clone, Copy)]
enum Granularity {
    Series(&'static [f64]),
    PowersOf2,
}

const R5: &[f64] = &[10.0, 16.0, 25.0, 40.0, 63.0];
const R10: &[f64] = &[
    100.0, 125.0, 160.0, 200.0, 250.0, 315.0, 400.0, 500.0, 630.0, 800.0,
];
const R20: &[f64] = &[
    100.0, 112.0, 125.0, 140.0, 160.0, 180.0, 200.0, 224.0, 250.0, 280.0, 315.0, 355.0, 400.0,
    450.0, 500.0, 560.0, 630.0, 710.0, 800.0, 900.0,
];
const R40: &[f64] = &[
    100.0, 106.0, 112.0, 118.0, 125.0, 132.0, 140.0, 150.0, 160.0, 170.0, 180.0, 190.0, 200.0,
    212.0, 224.0, 236.0, 250.0, 265.0, 280.0, 300.0, 315.0, 355.0, 375.0, 400.0, 425.0, 450.0,
    475.0, 500.0, 530.0, 560.0, 600.0, 630.0, 670.0, 710.0, 750.0, 800.0, 850.0, 900.0, 950.0,
];
const R80: &[f64] = &[
    103.0, 109.0, 115.0, 122.0, 128.0, 136.0, 145.0, 155.0, 165.0, 175.0, 185.0, 195.0, 206.0,
    218.0, 230.0, 243.0, 258.0, 272.0, 290.0, 307.0, 325.0, 345.0, 365.0, 387.0, 412.0, 437.0,
    462.0, 487.0, 515.0, 545.0, 575.0, 615.0, 650.0, 690.0, 730.0, 775.0, 825.0, 875.0, 925.0,
    975.0,
];
const S125: &[f64] = &[10.0, 20.0, 50.0];
const E6: &[f64] = &[10.0, 15.0, 22.0, 33.0, 47.0, 68.0];
const E12: &[f64] = &[
    10.0, 12.0, 15.0, 18.0, 22.0, 27.0, 33.0, 39.0, 47.0, 56.0, 68.0, 82.0,
];
const E24: &[f64] = &[
    10.0, 11.0, 12.0, 13.0, 15.0, 16.0, 18.0, 20.0, 22.0, 24.0, 27.0, 30.0, 33.0, 36.0, 39.0, 43.0,
    47.0, 51.0, 56.0, 62.0, 68.0, 75.0, 82.0, 91.0,
];
const E48: &[f64] = &[
    100.0, 105.0, 110.0, 115.0, 121.0, 127.0, 133.0, 140.0, 147.0, 154.0, 162.0, 169.0, 178.0,
    187.0, 196.0, 205.0, 215.0, 226.0, 237.0, 249.0, 261.0, 274.0, 287.0, 301.0, 316.0, 332.0,
    348.0, 365.0, 383.0, 402.0, 422.0, 442.0, 464.0, 487.0, 511.0, 536.0, 562.0, 590.0, 619.0,
    649.0, 681.0, 715.0, 750.0, 787.0, 825.0, 866.0, 909.0, 953.0,
];
const E96: &[f64] = &[
    100.0, 102.0, 105.0, 107.0, 110.0, 113.0, 115.0, 118.0, 121.0, 124.0, 127.0, 130.0, 133.0,
    137.0, 140.0, 143.0, 147.0, 150.0, 154.0, 158.0, 162.0, 165.0, 169.0, 174.0, 178.0, 182.0,
    187.0, 191.0, 196.0, 200.0, 205.0, 210.0, 215.0, 221.0, 226.0, 232.0, 237.0, 243.0, 249.0,
    255.0, 261.0, 267.0, 274.0, 280.0, 287.0, 294.0, 301.0, 309.0, 316.0, 324.0, 332.0, 340.0,
    348.0, 357.0, 365.0, 374.0, 383.0, 392.0, 402.0, 412.0, 422.0, 432.0, 442.0, 453.0, 464.0,
    475.0, 487.0, 499.0, 511.0, 523.0, 536.0, 549.0, 562.0, 576.0, 590.0, 604.0, 619.0, 634.0,
    649.0, 665.0, 681.0, 698.0, 715.0, 732.0, 750.0, 768.0, 787.0, 806.0, 825.0, 845.0, 866.0,
    887.0, 909.0, 931.0, 953.0, 976.0,
];
const E192: &[f64] = &[
    100.0, 101.0, 102.0, 104.0, 105.0, 106.0, 107.0, 109.0, 110.0, 111.0, 113.0, 114.0, 115.0,
    117.0, 118.0, 120.0, 121.0, 123.0, 124.0, 126.0, 127.0, 129.0, 130.0, 132.0, 133.0, 135.0,
    137.0, 138.0, 140.0, 142.0, 143.0, 145.0, 147.0, 149.0, 150.0, 152.0, 154.0, 156.0, 158.0,
    160.0, 162.0, 164.0, 165.0, 167.0, 169.0, 172.0, 174.0, 176.0, 178.0, 180.0, 182.0, 184.0,
    187.0, 189.0, 191.0, 193.0, 196.0, 198.0, 200.0, 203.0, 205.0, 208.0, 210.0, 213.0, 215.0,
    218.0, 221.0, 223.0, 226.0, 229.0, 232.0, 234.0, 237.0, 240.0, 243.0, 246.0, 249.0, 252.0,
    255.0, 258.0, 261.0, 264.0, 267.0, 271.0, 274.0, 277.0, 280.0, 284.0, 287.0, 291.0, 294.0,
    298.0, 301.0, 305.0, 309.0, 312.0, 316.0, 320.0, 324.0, 328.0, 332.0, 336.0, 340.0, 344.0,
    348.0, 352.0, 357.0, 361.0, 365.0, 370.0, 374.0, 379.0, 383.0, 388.0, 392.0, 397.0, 402.0,
    407.0, 412.0, 417.0, 422.0, 427.0, 432.0, 437.0, 442.0, 448.0, 453.0, 459.0, 464.0, 470.0,
    475.0, 481.0, 487.0, 493.0, 499.0, 505.0, 511.0, 517.0, 523.0, 530.0, 536.0, 542.0, 549.0,
    556.0, 562.0, 569.0, 576.0, 583.0, 590.0, 597.0, 604.0, 612.0, 619.0, 626.0, 634.0, 642.0,
    649.0, 657.0, 665.0, 673.0, 681.0, 690.0, 698.0, 706.0, 715.0, 723.0, 732.0, 741.0, 750.0,
    759.0, 768.0, 777.0, 787.0, 796.0, 806.0, 816.0, 825.0, 835.0, 845.0, 856.0, 866.0, 876.0,
    887.0, 898.0, 909.0, 920.0, 931.0, 942.0, 953.0, 965.0, 976.0, 988.0,
];

const GRANULARITIES: &[(&str, Granularity)] = &[
    ("R5", Granularity::Series(R5)),
    ("R10", Granularity::Series(R10)),
    ("R20", Granularity::Series(R20)),
    ("R40", Granularity::Series(R40)),
    ("R80", Granularity::Series(R80)),
    ("1-2-5", Granularity::Series(S125)),
    ("E6", Granularity::Series(E6)),
    ("E12", Granularity::Series(E12)),
    ("E24", Granularity::Series(E24)),
    ("E48", Granularity::Series(E48)),
    ("E96", Granularity::Series(E96)),
    ("E192", Granularity::Series(E192)),
    ("POWERSOF2", Granularity::PowersOf2),
];

/// `$pow(2, exp)` with an int exponent: int when it fits, then long, then double.
fn pow2(exp: i32) -> Value {
    match exp {
        0..=30 => Value::Int32(1 << exp),
        31..=62 => Value::Int64(1i64 << exp),
        _ => Value::Double(2f64.powi(exp)),
    }
}

/// A double result in the type of the input: decimal inputs give decimals.
fn same_kind(input: &Value, x: f64) -> Value {
    match input {
        Value::Decimal(_) => Value::Decimal(Number::Double(x).to_decimal()),
        _ => Value::Double(x),
    }
}

fn decimal_pow2(exp: i32) -> Value {
    let v = if (0..=62).contains(&exp) {
        Decimal128::from(1i64 << exp)
    } else {
        Number::Double(2f64.powi(exp)).to_decimal()
    };
    Value::Decimal(v)
}

impl Granularity {
    /// The smallest series value strictly greater than `v` (zero stays zero).
    /// `v` is a non-negative number (checked when documents arrive).
    fn round_up(self, v: &Value) -> Value {
        let x = v.as_f64().unwrap_or(0.0);
        if x == 0.0 {
            return v.clone();
        }
        match self {
            Granularity::PowersOf2 => match v {
                Value::Int32(_) | Value::Int64(_) => {
                    let n = v.as_i64_exact().unwrap_or(0);
                    pow2(64 - n.leading_zeros() as i32)
                }
                Value::Decimal(_) => decimal_pow2(x.log2().floor() as i32 + 1),
                _ => pow2(x.log2().floor() as i32 + 1),
            },
            Granularity::Series(series) => {
                let (first, last) = (series[0], series[series.len() - 1]);
                let mut mult = 1.0f64;
                while x >= last * mult {
                    mult *= 10.0;
                }
                while x < first * mult {
                    let previous_min = first * mult;
                    mult /= 10.0;
                    if x >= last * mult {
                        return same_kind(v, previous_min);
                    }
                }
                let i = series.partition_point(|s| x >= s * mult);
                same_kind(v, series[i.min(series.len() - 1)] * mult)
            }
        }
    }

    /// The largest series value strictly less than `v` (zero stays zero).
    fn round_down(self, v: &Value) -> Value {
        let x = v.as_f64().unwrap_or(0.0);
        if x == 0.0 {
            return v.clone();
        }
        match self {
            Granularity::PowersOf2 => match v {
                Value::Int32(_) | Value::Int64(_) => {
                    let n = v.as_i64_exact().unwrap_or(0);
                    let (lz, tz) = (n.leading_zeros() as i32, n.trailing_zeros() as i32);
                    pow2(if lz + tz == 63 { 63 - lz - 1 } else { 63 - lz })
                }
                Value::Decimal(_) => decimal_pow2(x.log2().ceil() as i32 - 1),
                _ => pow2(x.log2().ceil() as i32 - 1),
            },
            Granularity::Series(series) => {
                let (first, last) = (series[0], series[series.len() - 1]);
                let mut mult = 1.0f64;
                while x <= first * mult {
                    mult /= 10.0;
                }
                while x > last * mult {
                    let previous_max = last * mult;
                    mult *= 10.0;
                    if x <= first * mult {
                        return same_kind(v, previous_max);
                    }
                }
                let i = series.partition_point(|s| s * mult < x);
                same_kind(v, series[i.saturating_sub(1)] * mult)
            }
        }
    }
}

#[derive(Debug)]
struct AutoConfig {
    group_by: Expr,
    buckets: usize,
    granularity: Option<Granularity>,
    fields: OutputFields,
}

/// One buffered document: its `groupBy` key and its evaluated accumulator inputs.
#[derive(Debug)]
struct Entry {
    key: Value,
    inputs: Vec<Option<Value>>,
    /// Kept only for accumulators without two-phase input evaluation.
    doc: Option<Document>,
}

#[derive(Debug)]
struct BucketAuto {
    config: Arc<AutoConfig>,
    entries: Vec<Entry>,
}

impl Stage for BucketAuto {
    fn name(&self) -> &'static str {
        "$bucketAuto"
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let config = &*self.config;
        let ctx = Ctx::new(&doc, env);
        let key = config.group_by.eval(&ctx)?;
        if config.granularity.is_some() {
            match key.as_f64() {
                None => {
                    return Err(EvalError::new(format!(
                        "$bucketAuto: 'granularity' needs numeric 'groupBy' values, found {}",
                        key.type_name()
                    )))
                }
                Some(x) if x.is_nan() => {
                    return Err(EvalError::new(
                        "$bucketAuto: 'granularity' needs numeric 'groupBy' values, found NaN",
                    ))
                }
                Some(x) if x < 0.0 => {
                    return Err(EvalError::new(format!(
                        "$bucketAuto: 'granularity' needs non-negative 'groupBy' values, found {}",
                        key.to_json()
                    )))
                }
                Some(_) => {}
            }
        }
        let key = if key.is_missing() {
            Value::Null
        } else {
            key.into_owned()
        };
        let mut inputs = config.fields.new_inputs();
        config.fields.eval_inputs(&ctx, &mut inputs)?;
        let inputs: Vec<Option<Value>> = inputs
            .as_mut_slice()
            .iter_mut()
            .map(|i| i.take().map(Cow::into_owned))
            .collect();
        let keep_doc = inputs.iter().any(Option::is_none);
        self.entries.push(Entry {
            key,
            inputs,
            doc: keep_doc.then_some(doc),
        });
        Ok(())
    }

    fn finish(&mut self, env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        let config = Arc::clone(&self.config);
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by(|a, b| compare_values(&a.key, &b.key));
        let n = entries.len();
        let approx = ((n as f64 / config.buckets as f64).round() as usize).max(1);
        let mut start = 0usize;
        let mut bucket = 0usize;
        let mut previous_max: Option<Value> = None;
        let mut result = Ok(());
        while bucket < config.buckets && start < n {
            bucket += 1;
            let mut end = if bucket == config.buckets {
                n
            } else {
                (start + approx).min(n)
            };
            let max = match config.granularity {
                Some(g) => {
                    let boundary = g.round_up(&entries[end - 1].key);
                    while end < n
                        && (compare_values(&boundary, &entries[end].key) == Ordering::Greater
                            || compare_values(&entries[end - 1].key, &entries[end].key)
                                == Ordering::Equal)
                    {
                        end += 1;
                    }
                    if boundary.as_f64() == Some(0.0) && end < n {
                        g.round_down(&entries[end].key)
                    } else {
                        boundary
                    }
                }
                None => {
                    while end < n
                        && compare_values(&entries[end - 1].key, &entries[end].key)
                            == Ordering::Equal
                    {
                        end += 1;
                    }
                    if end < n {
                        entries[end].key.clone()
                    } else {
                        entries[end - 1].key.clone()
                    }
                }
            };
            let min = match (config.granularity, previous_max.take()) {
                (Some(_), Some(prev)) => prev,
                (Some(g), None) => g.round_down(&entries[start].key),
                (None, _) => entries[start].key.clone(),
            };
            previous_max = Some(max.clone());
            match self.fold_bucket(&config, &mut entries[start..end], env) {
                Ok(row) => {
                    let id = Value::Document(crate::doc! {"min" => min, "max" => max});
                    out.push(config.fields.output(id, &row));
                }
                Err(e) => result = Err(e),
            }
            start = end;
        }
        result
    }

    /// `[[key, [input per accumulator], document or null], ...]` in input order, where an
    /// input is `[value]`, `[]` for a missing value, or null when the accumulator reads the
    /// document itself.
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let inputs = e
                    .inputs
                    .iter()
                    .map(|i| match i {
                        None => Value::Null,
                        Some(Value::Missing) => Value::Array(Vec::new()),
                        Some(v) => Value::Array(vec![v.clone()]),
                    })
                    .collect();
                let doc = e.doc.clone().map(Value::Document).unwrap_or(Value::Null);
                Value::Array(vec![e.key.clone(), Value::Array(inputs), doc])
            })
            .collect();
        Ok(StageState::State(Value::Array(entries)))
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        let invalid = |v: &Value| invalid_state("$bucketAuto", v);
        let items = state.as_array().ok_or_else(|| invalid(state))?;
        let mut entries = Vec::with_capacity(items.len());
        for item in items {
            let Some([key, Value::Array(inputs), doc]) = item.as_array() else {
                return Err(invalid(item));
            };
            if inputs.len() != self.config.fields.specs.len() {
                return Err(invalid(item));
            }
            let inputs = inputs
                .iter()
                .map(|i| match i {
                    Value::Null => Ok(None),
                    Value::Array(a) if a.is_empty() => Ok(Some(Value::Missing)),
                    Value::Array(a) if a.len() == 1 => Ok(Some(a[0].clone())),
                    _ => Err(invalid(item)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let doc = match doc {
                Value::Null => None,
                Value::Document(d) => Some(d.clone()),
                _ => return Err(invalid(item)),
            };
            entries.push(Entry {
                key: key.clone(),
                inputs,
                doc,
            });
        }
        self.entries = entries;
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(BucketAuto {
            config: Arc::clone(&self.config),
            entries: Vec::new(),
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

impl BucketAuto {
    /// Accumulates one bucket's entries (initialisers see no group key, as in MongoDB).
    fn fold_bucket(
        &self,
        config: &AutoConfig,
        entries: &mut [Entry],
        env: &Env,
    ) -> Result<Vec<Box<dyn super::accumulators::Accumulator>>, EvalError> {
        let mut row = config.fields.start(&Value::Null, env)?;
        for entry in entries {
            for (i, (acc, input)) in row.iter_mut().zip(entry.inputs.iter_mut()).enumerate() {
                match input.take() {
                    Some(v) => acc.add_input(Cow::Owned(v)),
                    None => {
                        if let Some(doc) = &entry.doc {
                            acc.update(&Ctx::new(doc, env)).map_err(|e| {
                                EvalError::new(format!(
                                    "$bucketAuto output field '{}': {e}",
                                    config.fields.names[i]
                                ))
                            })?;
                        }
                    }
                }
            }
        }
        Ok(row)
    }
}

fn compile_bucket_auto(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let d = stage_args(
        "$bucketAuto",
        spec,
        &["groupBy", "buckets", "output", "granularity"],
        path,
    )?;
    let (Some(group_by), Some(buckets)) = (d.get("groupBy"), d.get("buckets")) else {
        return Err(CompileError::new(
            path,
            "$bucketAuto requires 'groupBy' and 'buckets'",
        ));
    };
    let group_by = compile_group_by("$bucketAuto", group_by, &path_key(path, "groupBy"), cx)?;
    let buckets_path = path_key(path, "buckets");
    let buckets = match buckets.as_i64_exact() {
        Some(b) if b > 0 && b <= i32::MAX as i64 => b as usize,
        Some(b) if b <= 0 => {
            return Err(CompileError::new(
                buckets_path,
                format!("$bucketAuto: 'buckets' must be greater than 0, found {b}"),
            ))
        }
        _ => {
            return Err(CompileError::new(
                buckets_path,
                format!(
                    "$bucketAuto: 'buckets' must be a positive 32-bit integer, found {}",
                    buckets.to_json()
                ),
            ))
        }
    };
    let granularity = match d.get("granularity") {
        None => None,
        Some(g) => {
            let p = path_key(path, "granularity");
            let found = g
                .as_str()
                .and_then(|s| GRANULARITIES.iter().find(|(n, _)| *n == s));
            match found {
                Some((_, gr)) => Some(*gr),
                None => {
                    let names: Vec<&str> = GRANULARITIES.iter().map(|(n, _)| *n).collect();
                    return Err(CompileError::new(
                        p,
                        format!(
                            "$bucketAuto: unknown 'granularity' {} (expected one of: {})",
                            g.to_json(),
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
    };
    let fields = compile_output("$bucketAuto", d.get("output"), path, cx)?;
    for (name, spec) in fields.names.iter().zip(&fields.specs) {
        if spec.uses_group_key() {
            return Err(CompileError::new(
                path_key(&path_key(path, "output"), name),
                format!(
                    "$bucketAuto: {} cannot refer to the group key: 'n' must be a constant",
                    spec.name
                ),
            ));
        }
    }
    Ok(Box::new(BucketAuto {
        config: Arc::new(AutoConfig {
            group_by,
            buckets,
            granularity,
            fields,
        }),
        entries: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{parse_document, parse_value, ExtJsonMode};

    /// Output of `stage` over `docs`, uninterrupted and with a checkpoint after `split`.
    fn round_trip(stage: &str, docs: &[&str], split: usize) -> (Vec<String>, Vec<String>) {
        let spec = parse_value(stage).unwrap();
        let d = spec.as_document().unwrap();
        let (name, arg) = d.iter().next().unwrap();
        let compile = STAGES.iter().find(|(n, _)| n == name).unwrap().1;
        let proto = compile(arg, "p", &mut CompileCtx::default()).unwrap();
        let env = Env::at(0);
        let docs: Vec<Document> = docs.iter().map(|d| parse_document(d).unwrap()).collect();
        let show = |out: Vec<Document>| -> Vec<String> {
            out.iter()
                .map(|d| d.to_json_mode(ExtJsonMode::Canonical))
                .collect()
        };
        let mut out = Vec::new();
        let mut whole = proto.fresh();
        for d in &docs {
            whole.process(d.clone(), &env, &mut out).unwrap();
        }
        whole.finish(&env, &mut out).unwrap();
        let expected = show(std::mem::take(&mut out));
        let mut first = proto.fresh();
        for d in &docs[..split] {
            first.process(d.clone(), &env, &mut out).unwrap();
        }
        let StageState::State(state) = first.checkpoint_state().unwrap() else {
            panic!("no state")
        };
        let mut second = proto.fresh();
        second
            .restore_state(&parse_value(&state.to_json_mode(ExtJsonMode::Canonical)).unwrap())
            .unwrap();
        for d in &docs[split..] {
            second.process(d.clone(), &env, &mut out).unwrap();
        }
        second.finish(&env, &mut out).unwrap();
        (expected, show(out))
    }

    #[test]
    fn bucket_stages_checkpoint() {
        let docs = [
            r#"{"v": 3, "p": 1.5}"#,
            r#"{"v": 12}"#,
            r#"{"p": 2}"#,
            r#"{"v": 7, "p": {"$numberLong": "4"}}"#,
            r#"{"v": 3}"#,
        ];
        let stages = [
            r#"{"$bucket": {"groupBy": "$v", "boundaries": [0, 5, 10], "default": "other", "output": {"n": {"$sum": 1}, "p": {"$push": "$p"}}}}"#,
            r#"{"$bucketAuto": {"groupBy": "$v", "buckets": 2, "output": {"n": {"$sum": 1}, "p": {"$push": "$p"}}}}"#,
        ];
        for stage in stages {
            for split in 0..=docs.len() {
                let (expected, restored) = round_trip(stage, &docs, split);
                assert_eq!(expected, restored, "{stage} split at {split}");
            }
        }
    }

    #[test]
    fn granularity_rounding_follows_the_series() {
        let r = |g: Granularity, v: Value| (g.round_up(&v).to_json(), g.round_down(&v).to_json());
        assert_eq!(
            r(Granularity::Series(E6), Value::Double(0.8)),
            ("1.0".into(), "0.68".into())
        );
        assert_eq!(
            r(Granularity::PowersOf2, Value::Int32(4)),
            ("8".into(), "2".into())
        );
        assert_eq!(
            r(Granularity::PowersOf2, Value::Double(0.3)),
            ("0.5".into(), "0.25".into())
        );
        assert_eq!(
            r(Granularity::Series(S125), Value::Int32(0)),
            ("0".into(), "0".into())
        );
    }
}
