//! `$group` accumulators (also used by `$bucket`, `$bucketAuto` and `$setWindowFields`).
//!
//! An accumulator expression such as `{"$sum": "$amount"}` compiles once into an
//! [`AccumulatorSpec`]; each group gets its own state from [`AccumulatorSpec::start`],
//! fed one document at a time through [`Accumulator::update`].
//!
//! Stages that must not leave a group half-updated when a document fails use the
//! two-phase form: [`AccumulatorSpec::eval_input`] evaluates the argument of every
//! accumulator first (this is where evaluation errors happen), then
//! [`Accumulator::add_input`] folds the evaluated inputs in, which cannot fail.
//!
//! Semantics follow MongoDB's accumulators: `$sum`/`$avg` ignore non-numeric values and
//! widen int → long → double (decimal when any input is decimal) using a double-double
//! compensated sum; `$min`/`$max` ignore null and missing; `$first`/`$last` turn missing
//! into null; `$push`/`$addToSet` skip missing values; `$topN`-style accumulators take an
//! `n` that is a constant or an expression of the group key.

use crate::error::{path_key, CompileError, EvalError};
use crate::expr::{
    compile_expr, doc_path, named_args, parse_field_path, CompileCtx, Ctx, Env, Expr,
};
use crate::value::{compare_values, Decimal128, Document, HashableValue, Str, Value, ValueHashSet};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

/// Running state of one accumulator for one group.
pub trait Accumulator: Send + fmt::Debug {
    /// Adds the document in `ctx` (the accumulator evaluates its own argument expressions).
    fn update(&mut self, ctx: &Ctx<'_>) -> Result<(), EvalError>;

    /// The result so far. May be called more than once (streaming update mode emits
    /// intermediate results).
    fn result(&self) -> Value;

    /// Adds an input produced by [`AccumulatorSpec::eval_input`] for this accumulator
    /// (two-phase update; cannot fail). Only called when `eval_input` returned `Some`.
    fn add_input(&mut self, _input: Cow<'_, Value>) {}

    /// The state as a value for a checkpoint, or `None` when it cannot be exported.
    fn save_state(&self) -> Option<Value> {
        None
    }

    /// Restores a state produced by [`Accumulator::save_state`] of the same accumulator.
    fn restore_state(&mut self, _state: &Value) -> Result<(), EvalError> {
        Err(EvalError::new(
            "this accumulator cannot restore checkpointed state",
        ))
    }
}

/// A compiled accumulator: creates fresh per-group state.
pub trait AccumulatorFactory: Send + Sync + fmt::Debug {
    /// New empty state for one group.
    fn start(&self) -> Box<dyn Accumulator>;

    /// New empty state for the group whose `_id` is `key`: accumulators whose `n` is an
    /// expression evaluate it here, against the key (its fields when it is a document).
    fn start_for_group(&self, _key: &Value, _env: &Env) -> Result<Box<dyn Accumulator>, EvalError> {
        Ok(self.start())
    }

    /// Evaluates this accumulator's input for one document without touching any state;
    /// `None` when the accumulator only supports [`Accumulator::update`].
    fn eval_input<'a>(&'a self, _ctx: &Ctx<'a>) -> Result<Option<Cow<'a, Value>>, EvalError> {
        Ok(None)
    }

    /// The expression whose value is this accumulator's whole input, when it is one
    /// (`{$sum: "$x"}`): [`AccumulatorSpec::eval_input`] then evaluates it directly,
    /// without the dynamic call, on the path every grouped document takes.
    fn plain_input(&self) -> Option<&Expr> {
        None
    }

    /// True when starting a group evaluates an expression of the group key (an `n` that
    /// is not a constant).
    fn uses_group_key(&self) -> bool {
        false
    }

    /// Like [`AccumulatorFactory::start_for_group`], but common accumulators return an
    /// unboxed state (see [`GroupAcc`]) so that a stage can keep all its groups' states
    /// in one contiguous vector.
    fn start_group_acc(&self, key: &Value, env: &Env) -> Result<GroupAcc, EvalError> {
        self.start_for_group(key, env).map(GroupAcc::Boxed)
    }

    /// Like [`AccumulatorFactory::start`], unboxed where possible (see [`GroupAcc`]).
    fn start_plain_group_acc(&self) -> GroupAcc {
        GroupAcc::Boxed(self.start())
    }
}

/// A compiled accumulator expression.
#[derive(Debug, Clone)]
pub struct AccumulatorSpec {
    /// Operator name, e.g. `$sum`.
    pub name: &'static str,
    factory: Arc<dyn AccumulatorFactory>,
    /// The factory's [`AccumulatorFactory::plain_input`].
    plain_input: Option<Expr>,
}

impl AccumulatorSpec {
    /// Wraps a factory.
    pub fn new(name: &'static str, factory: Arc<dyn AccumulatorFactory>) -> Self {
        let plain_input = factory.plain_input().cloned();
        AccumulatorSpec {
            name,
            factory,
            plain_input,
        }
    }

    /// New empty state for one group.
    pub fn start(&self) -> Box<dyn Accumulator> {
        self.factory.start()
    }

    /// New empty state for the group with `_id` `key` (see
    /// [`AccumulatorFactory::start_for_group`]).
    pub fn start_for_group(
        &self,
        key: &Value,
        env: &Env,
    ) -> Result<Box<dyn Accumulator>, EvalError> {
        self.factory.start_for_group(key, env)
    }

    /// Evaluates the input of one document for a later [`Accumulator::add_input`].
    pub fn eval_input<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Option<Cow<'a, Value>>, EvalError> {
        match &self.plain_input {
            Some(e) => e.eval(ctx).map(Some),
            None => self.factory.eval_input(ctx),
        }
    }

    /// True when per-group state depends on the group key (see
    /// [`AccumulatorFactory::uses_group_key`]).
    pub fn uses_group_key(&self) -> bool {
        self.factory.uses_group_key()
    }

    /// New empty state for the group with `_id` `key`, unboxed for the common
    /// accumulators (see [`GroupAcc`]).
    pub fn start_group_acc(&self, key: &Value, env: &Env) -> Result<GroupAcc, EvalError> {
        self.factory.start_group_acc(key, env)
    }

    /// New empty state (as [`AccumulatorSpec::start`]), unboxed where possible.
    pub fn start_plain_group_acc(&self) -> GroupAcc {
        self.factory.start_plain_group_acc()
    }
}

/// One accumulator state of one group, stored inline for the common accumulators
/// (`$sum`, `$avg`, `$count`, `$min`, `$max`, `$first`, `$last`) and boxed for the others.
/// A grouping stage with many groups keeps these in one vector: no allocation per state,
/// and a group's states sit next to each other in memory.
///
/// Inline states come only from the built-in factories, whose
/// [`AccumulatorSpec::eval_input`] always returns `Some`: they are fed through
/// [`Accumulator::add_input`], never [`Accumulator::update`].
#[derive(Debug)]
pub enum GroupAcc {
    /// `$sum`, `$avg`, `$count`.
    Sum(SumFold),
    /// `$min`, `$max`.
    MinMax(MinMaxFold),
    /// `$first`, `$last`.
    FirstLast(FirstLastFold),
    /// Any other accumulator.
    Boxed(Box<dyn Accumulator>),
}

impl Accumulator for GroupAcc {
    fn update(&mut self, ctx: &Ctx<'_>) -> Result<(), EvalError> {
        match self {
            GroupAcc::Boxed(a) => a.update(ctx),
            _ => Err(EvalError::new(
                "internal error: an inline accumulator state must be fed evaluated inputs",
            )),
        }
    }

    #[inline]
    fn result(&self) -> Value {
        match self {
            GroupAcc::Sum(f) => f.value(),
            GroupAcc::MinMax(f) => f.value(),
            GroupAcc::FirstLast(f) => f.value(),
            GroupAcc::Boxed(a) => a.result(),
        }
    }

    #[inline]
    fn add_input(&mut self, input: Cow<'_, Value>) {
        match self {
            GroupAcc::Sum(f) => f.add(input),
            GroupAcc::MinMax(f) => f.add(input),
            GroupAcc::FirstLast(f) => f.add(input),
            GroupAcc::Boxed(a) => a.add_input(input),
        }
    }

    fn save_state(&self) -> Option<Value> {
        match self {
            GroupAcc::Sum(f) => Some(f.save()),
            GroupAcc::MinMax(f) => Some(f.save()),
            GroupAcc::FirstLast(f) => Some(f.save()),
            GroupAcc::Boxed(a) => a.save_state(),
        }
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        fn load<F: Fold>(f: &mut F, state: &Value) -> Result<(), EvalError> {
            let mut fold = f.clone();
            fold.load(state).ok_or_else(|| invalid_acc_state(state))?;
            *f = fold;
            Ok(())
        }
        match self {
            GroupAcc::Sum(f) => load(f, state),
            GroupAcc::MinMax(f) => load(f, state),
            GroupAcc::FirstLast(f) => load(f, state),
            GroupAcc::Boxed(a) => a.restore_state(state),
        }
    }
}

impl<A: Accumulator + ?Sized> Accumulator for Box<A> {
    fn update(&mut self, ctx: &Ctx<'_>) -> Result<(), EvalError> {
        (**self).update(ctx)
    }
    fn result(&self) -> Value {
        (**self).result()
    }
    fn add_input(&mut self, input: Cow<'_, Value>) {
        (**self).add_input(input)
    }
    fn save_state(&self) -> Option<Value> {
        (**self).save_state()
    }
    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        (**self).restore_state(state)
    }
}

fn invalid_acc_state(state: &Value) -> EvalError {
    EvalError::new(format!(
        "invalid checkpointed accumulator state {}",
        state.to_json()
    ))
}

/// Compiles the argument of one accumulator operator found at `path` (`...total.$sum`).
type AccCompileFn = fn(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError>;

const ACCUMULATORS: &[(&str, AccCompileFn)] = &[
    ("$sum", compile_sum),
    ("$avg", compile_avg),
    ("$min", compile_min_max),
    ("$max", compile_min_max),
    ("$count", compile_count),
    ("$push", compile_push),
    ("$addToSet", compile_add_to_set),
    ("$first", compile_first_last),
    ("$last", compile_first_last),
    ("$mergeObjects", compile_merge_objects),
    ("$stdDevPop", compile_std_dev),
    ("$stdDevSamp", compile_std_dev),
    ("$top", compile_top_bottom),
    ("$bottom", compile_top_bottom),
    ("$topN", compile_top_bottom),
    ("$bottomN", compile_top_bottom),
    ("$firstN", compile_n),
    ("$lastN", compile_n),
    ("$maxN", compile_n),
    ("$minN", compile_n),
];

/// True when `name` (with its `$`) is a known accumulator.
pub fn is_accumulator(name: &str) -> bool {
    ACCUMULATORS.iter().any(|(n, _)| *n == name)
}

/// Compiles an accumulator object `{"$op": argument}` found at `path`
/// (e.g. `pipeline[1].$group.total`).
pub fn compile_accumulator(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    let Value::Document(d) = spec else {
        return Err(CompileError::new(
            path,
            format!(
                "expected an accumulator object like {{\"$sum\": \"$amount\"}}, found {}",
                spec.to_json()
            ),
        ));
    };
    let mut fields = d.iter();
    let (op, arg) = match (fields.next(), fields.next()) {
        (Some(first), None) => first,
        _ => {
            return Err(CompileError::new(
                path,
                format!(
                    "an accumulator object must have exactly one field (the accumulator), found {}",
                    d.len()
                ),
            ))
        }
    };
    if !op.starts_with('$') {
        return Err(CompileError::new(
            path,
            format!(
                "expected an accumulator object like {{\"$sum\": \"$amount\"}}, found field '{op}'"
            ),
        ));
    }
    match ACCUMULATORS.iter().find(|(n, _)| *n == op.as_str()) {
        Some((name, f)) => f(name, arg, &path_key(path, op), cx),
        None => Err(CompileError::new(
            path,
            format!("unknown accumulator '{op}'"),
        )),
    }
}

// ---------------------------------------------------------------------------------
// Generic machinery: an input expression plus a fold over evaluated inputs.
// ---------------------------------------------------------------------------------

/// One `sortBy` field: its path and whether it sorts descending.
type SortField = (Arc<[Str]>, bool);

/// How an accumulator reads its input from a document.
#[derive(Debug)]
enum Input {
    /// One expression.
    Plain(Expr),
    /// `$mergeObjects`: null/missing are skipped, anything else must be a document.
    Objects(Expr),
    /// `$top`-style: `[output, sortKey...]` (missing output becomes null).
    Sorted { output: Expr, sort: Vec<SortField> },
}

impl Input {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        match self {
            Input::Plain(e) => e.eval(ctx),
            Input::Objects(e) => {
                let v = e.eval(ctx)?;
                if v.is_nullish() || matches!(*v, Value::Document(_)) {
                    Ok(v)
                } else {
                    Err(EvalError::new(format!(
                        "$mergeObjects requires object inputs, but input {} is of type {}",
                        v.to_json(),
                        v.type_name()
                    )))
                }
            }
            Input::Sorted { output, sort } => {
                let out = output.eval(ctx)?;
                let mut items = Vec::with_capacity(1 + sort.len());
                items.push(if out.is_missing() {
                    Value::Null
                } else {
                    out.into_owned()
                });
                for (path, desc) in sort {
                    items.push(sort_key(doc_path(ctx.current, path), *desc));
                }
                Ok(Cow::Owned(Value::Array(items)))
            }
        }
    }
}

/// The per-group fold of evaluated inputs.
trait Fold: Clone + Send + Sync + fmt::Debug + 'static {
    fn add(&mut self, v: Cow<'_, Value>);
    fn value(&self) -> Value;
    /// Per-group initialisation against the group key's fields (only when `needs_init`).
    fn init(&mut self, _key: &Document, _env: &Env) -> Result<(), EvalError> {
        Ok(())
    }
    fn needs_init(&self) -> bool {
        false
    }
    /// The state for a checkpoint.
    fn save(&self) -> Value;
    /// Restores [`Fold::save`]; `None` when the value is not a valid state.
    fn load(&mut self, v: &Value) -> Option<()>;
    /// This fold as an unboxed [`GroupAcc`] state, for the folds that have one (they
    /// never need [`Fold::init`]).
    fn inline(&self) -> Option<GroupAcc> {
        None
    }
}

/// `Some(v)` as `[v]`, `None` as `[]` (checkpoints cannot hold a bare missing value).
fn save_opt(v: &Option<Value>) -> Value {
    Value::Array(v.iter().cloned().collect())
}

fn load_opt(v: &Value) -> Option<Option<Value>> {
    match v.as_array()? {
        [] => Some(None),
        [x] => Some(Some(x.clone())),
        _ => None,
    }
}

fn load_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Double(x) => Some(*x),
        _ => None,
    }
}

#[derive(Debug)]
struct Factory<F: Fold> {
    input: Arc<Input>,
    proto: F,
}

#[derive(Debug)]
struct State<F: Fold> {
    input: Arc<Input>,
    fold: F,
    /// An `n` that failed to evaluate in [`AccumulatorFactory::start`]: reported by `update`.
    pending: Option<EvalError>,
}

impl<F: Fold> Accumulator for State<F> {
    fn update(&mut self, ctx: &Ctx<'_>) -> Result<(), EvalError> {
        if let Some(e) = &self.pending {
            return Err(e.clone());
        }
        let v = self.input.eval(ctx)?;
        self.fold.add(v);
        Ok(())
    }

    fn result(&self) -> Value {
        self.fold.value()
    }

    fn add_input(&mut self, input: Cow<'_, Value>) {
        if self.pending.is_none() {
            self.fold.add(input);
        }
    }

    fn save_state(&self) -> Option<Value> {
        match self.pending {
            Some(_) => None,
            None => Some(self.fold.save()),
        }
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        let mut fold = self.fold.clone();
        fold.load(state).ok_or_else(|| invalid_acc_state(state))?;
        self.fold = fold;
        self.pending = None;
        Ok(())
    }
}

impl<F: Fold> AccumulatorFactory for Factory<F> {
    fn start(&self) -> Box<dyn Accumulator> {
        let mut fold = self.proto.clone();
        let pending = if fold.needs_init() {
            fold.init(&Document::new(), &Env::now()).err()
        } else {
            None
        };
        Box::new(State {
            input: Arc::clone(&self.input),
            fold,
            pending,
        })
    }

    fn start_for_group(&self, key: &Value, env: &Env) -> Result<Box<dyn Accumulator>, EvalError> {
        let mut fold = self.proto.clone();
        if fold.needs_init() {
            match key {
                Value::Document(d) => fold.init(d, env)?,
                _ => fold.init(&Document::new(), env)?,
            }
        }
        Ok(Box::new(State {
            input: Arc::clone(&self.input),
            fold,
            pending: None,
        }))
    }

    fn eval_input<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Option<Cow<'a, Value>>, EvalError> {
        self.input.eval(ctx).map(Some)
    }

    fn plain_input(&self) -> Option<&Expr> {
        match &*self.input {
            Input::Plain(e) => Some(e),
            _ => None,
        }
    }

    fn uses_group_key(&self) -> bool {
        self.proto.needs_init()
    }

    fn start_group_acc(&self, key: &Value, env: &Env) -> Result<GroupAcc, EvalError> {
        match self.proto.inline() {
            Some(acc) => Ok(acc),
            None => self.start_for_group(key, env).map(GroupAcc::Boxed),
        }
    }

    fn start_plain_group_acc(&self) -> GroupAcc {
        self.proto
            .inline()
            .unwrap_or_else(|| GroupAcc::Boxed(self.start()))
    }
}

fn spec<F: Fold>(name: &'static str, input: Input, proto: F) -> AccumulatorSpec {
    AccumulatorSpec::new(
        name,
        Arc::new(Factory {
            input: Arc::new(input),
            proto,
        }),
    )
}

/// The single expression argument of a unary accumulator (an array is rejected, as
/// MongoDB does: `$sum: ["$a", "$b"]` is not valid in `$group`).
fn unary(name: &str, arg: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    if let Value::Array(_) = arg {
        return Err(CompileError::new(
            path,
            format!("{name} is a unary accumulator: pass one expression, not an array (combine values first, e.g. {{\"{name}\": {{\"$add\": [\"$a\", \"$b\"]}}}})"),
        ));
    }
    compile_expr(arg, path, cx)
}

// ---------------------------------------------------------------------------------
// $sum, $avg, $count
// ---------------------------------------------------------------------------------

/// MongoDB's `DoubleDoubleSummation`: a compensated sum kept as an unevaluated pair of
/// doubles (exact for long series of 64-bit integers).
#[derive(Clone, Copy, Debug, Default)]
struct DoubleDouble {
    sum: f64,
    addend: f64,
    /// Plain sum, returned when the compensated one became NaN through infinities.
    special: f64,
}

impl DoubleDouble {
    fn add_double(&mut self, x: f64) {
        self.special += x;
        // Fast2Sum of x and the addend, then 2Sum with the running sum.
        let s = x + self.addend;
        let z = s - x;
        let t = self.addend - z;
        let (x, addend) = (s, t);
        let s = self.sum + x;
        let a_prime = s - x;
        let b_prime = s - a_prime;
        let delta_a = self.sum - a_prime;
        let delta_b = x - b_prime;
        self.sum = s;
        self.addend = addend + (delta_a + delta_b);
    }

    fn add_long(&mut self, x: i64) {
        let high = x / (1i64 << 32) * (1i64 << 32);
        let low = x - high;
        self.add_double(low as f64);
        self.add_double(high as f64);
    }

    fn get_double(&self) -> f64 {
        if self.sum.is_nan() {
            self.special
        } else {
            self.sum
        }
    }

    fn fits_long(&self) -> bool {
        const MIN: f64 = i64::MIN as f64;
        const MAX: f64 = i64::MAX as f64; // 2^63
        if self.sum > MIN && self.sum < MAX {
            return true;
        }
        if self.sum == MAX {
            return self.addend < -0.5;
        }
        if self.sum == MIN {
            return self.addend >= -0.5;
        }
        false
    }

    /// The sum rounded to the nearest integer (halves away from zero); call only when
    /// [`DoubleDouble::fits_long`].
    fn get_long(&self) -> i64 {
        if self.sum == i64::MAX as f64 {
            return (self.addend.round() as i64).wrapping_sub(i64::MIN);
        }
        let sum = self.sum.round() as i64;
        sum.wrapping_add(((self.sum - sum as f64) + self.addend).round() as i64)
    }

    fn get_decimal(&self) -> Decimal128 {
        if !self.sum.is_finite() {
            f64_to_decimal34(self.special)
        } else {
            f64_to_decimal34(self.sum) + f64_to_decimal34(self.addend)
        }
    }
}

/// A double as a decimal with up to 34 significant digits (the exact binary value,
/// rounded), as MongoDB converts partial sums.
fn f64_to_decimal34(x: f64) -> Decimal128 {
    if x.is_nan() {
        return Decimal128::NAN;
    }
    if x.is_infinite() {
        let s = if x > 0.0 { "Infinity" } else { "-Infinity" };
        return s.parse().unwrap_or(Decimal128::NAN);
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".parse().unwrap_or(Decimal128::ZERO)
        } else {
            Decimal128::ZERO
        };
    }
    let text = if x.fract() == 0.0 && x.abs() < 1e34 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.33e}");
        match s.split_once('e') {
            Some((mant, exp)) => {
                let mant = if mant.contains('.') {
                    mant.trim_end_matches('0').trim_end_matches('.')
                } else {
                    mant
                };
                format!("{mant}E{exp}")
            }
            None => s,
        }
    };
    text.parse().unwrap_or(Decimal128::NAN)
}

/// Widest numeric type seen: int < long < double < decimal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
enum NumType {
    #[default]
    Int,
    Long,
    Double,
    Decimal,
}

/// The state of an inline [`GroupAcc`].
#[derive(Clone, Debug)]
pub struct SumFold {
    avg: bool,
    ty: NumType,
    total: DoubleDouble,
    decimal: Decimal128,
    count: i64,
}

impl SumFold {
    fn new(avg: bool) -> Self {
        SumFold {
            avg,
            ty: NumType::Int,
            total: DoubleDouble::default(),
            decimal: Decimal128::ZERO,
            count: 0,
        }
    }
}

impl Fold for SumFold {
    fn inline(&self) -> Option<GroupAcc> {
        Some(GroupAcc::Sum(self.clone()))
    }

    fn add(&mut self, v: Cow<'_, Value>) {
        match *v {
            Value::Int32(n) => self.total.add_double(n as f64),
            Value::Int64(n) => {
                self.ty = self.ty.max(NumType::Long);
                self.total.add_long(n);
            }
            Value::Double(n) => {
                self.ty = self.ty.max(NumType::Double);
                self.total.add_double(n);
            }
            Value::Decimal(d) => {
                self.ty = NumType::Decimal;
                self.decimal += d;
            }
            _ => return,
        }
        self.count += 1;
    }

    fn value(&self) -> Value {
        if self.avg {
            if self.count == 0 {
                return Value::Null;
            }
            if self.ty == NumType::Decimal {
                let total = self.decimal + self.total.get_decimal();
                return Value::Decimal(total / Decimal128::from(self.count));
            }
            return Value::Double(self.total.get_double() / self.count as f64);
        }
        match self.ty {
            NumType::Int | NumType::Long if self.total.fits_long() => {
                let n = self.total.get_long();
                match i32::try_from(n) {
                    Ok(small) if self.ty == NumType::Int => Value::Int32(small),
                    _ => Value::Int64(n),
                }
            }
            NumType::Int | NumType::Long | NumType::Double => {
                Value::Double(self.total.get_double())
            }
            NumType::Decimal => Value::Decimal(self.decimal + self.total.get_decimal()),
        }
    }

    fn save(&self) -> Value {
        Value::Array(vec![
            Value::Int32(self.ty as i32),
            Value::Double(self.total.sum),
            Value::Double(self.total.addend),
            Value::Double(self.total.special),
            Value::Decimal(self.decimal),
            Value::Int64(self.count),
        ])
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        let [ty, sum, addend, special, Value::Decimal(decimal), Value::Int64(count)] =
            v.as_array()?
        else {
            return None;
        };
        self.ty = match ty {
            Value::Int32(0) => NumType::Int,
            Value::Int32(1) => NumType::Long,
            Value::Int32(2) => NumType::Double,
            Value::Int32(3) => NumType::Decimal,
            _ => return None,
        };
        self.total = DoubleDouble {
            sum: load_f64(sum)?,
            addend: load_f64(addend)?,
            special: load_f64(special)?,
        };
        self.decimal = *decimal;
        self.count = *count;
        Some(())
    }
}

fn compile_sum(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    Ok(spec(
        name,
        Input::Plain(unary(name, arg, path, cx)?),
        SumFold::new(false),
    ))
}

fn compile_avg(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    Ok(spec(
        name,
        Input::Plain(unary(name, arg, path, cx)?),
        SumFold::new(true),
    ))
}

/// `{$count: {}}`: the number of documents, like `{$sum: 1}`.
fn compile_count(
    name: &'static str,
    arg: &Value,
    path: &str,
    _cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    match arg {
        Value::Document(d) if d.is_empty() => Ok(spec(
            name,
            Input::Plain(Expr::Literal(Value::Int32(1))),
            SumFold::new(false),
        )),
        other => Err(CompileError::new(
            path,
            format!(
                "$count takes no arguments: write {{\"$count\": {{}}}}, found {}",
                other.to_json()
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------
// $stdDevPop, $stdDevSamp
// ---------------------------------------------------------------------------------

/// Welford's online algorithm over doubles, exactly as MongoDB computes it.
#[derive(Clone, Debug)]
struct StdDevFold {
    sample: bool,
    count: i64,
    mean: f64,
    m2: f64,
}

impl Fold for StdDevFold {
    fn add(&mut self, v: Cow<'_, Value>) {
        let Some(x) = v.as_f64() else { return };
        self.count += 1;
        let delta = x - self.mean;
        if delta != 0.0 {
            self.mean += delta / self.count as f64;
            self.m2 += delta * (x - self.mean);
        }
    }

    fn value(&self) -> Value {
        let n = if self.sample {
            self.count - 1
        } else {
            self.count
        };
        if n <= 0 {
            return Value::Null;
        }
        Value::Double((self.m2 / n as f64).sqrt())
    }

    fn save(&self) -> Value {
        Value::Array(vec![
            Value::Int64(self.count),
            Value::Double(self.mean),
            Value::Double(self.m2),
        ])
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        let [Value::Int64(count), mean, m2] = v.as_array()? else {
            return None;
        };
        (self.count, self.mean, self.m2) = (*count, load_f64(mean)?, load_f64(m2)?);
        Some(())
    }
}

fn compile_std_dev(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    let fold = StdDevFold {
        sample: name == "$stdDevSamp",
        count: 0,
        mean: 0.0,
        m2: 0.0,
    };
    Ok(spec(name, Input::Plain(unary(name, arg, path, cx)?), fold))
}

// ---------------------------------------------------------------------------------
// $min, $max, $first, $last, $push, $addToSet, $mergeObjects
// ---------------------------------------------------------------------------------

/// The state of an inline [`GroupAcc`].
#[derive(Clone, Debug)]
pub struct MinMaxFold {
    max: bool,
    val: Option<Value>,
}

impl Fold for MinMaxFold {
    fn inline(&self) -> Option<GroupAcc> {
        Some(GroupAcc::MinMax(self.clone()))
    }

    fn add(&mut self, v: Cow<'_, Value>) {
        if v.is_nullish() {
            return;
        }
        let better = match &self.val {
            None => true,
            Some(cur) => {
                let o = compare_values(&v, cur);
                if self.max {
                    o == Ordering::Greater
                } else {
                    o == Ordering::Less
                }
            }
        };
        if better {
            self.val = Some(v.into_owned());
        }
    }

    fn value(&self) -> Value {
        self.val.clone().unwrap_or(Value::Null)
    }

    fn save(&self) -> Value {
        save_opt(&self.val)
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        self.val = load_opt(v)?;
        Some(())
    }
}

/// `$min` and `$max`: one fold, told which extreme to keep.
fn compile_min_max(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    let fold = MinMaxFold {
        max: name == "$max",
        val: None,
    };
    Ok(spec(name, Input::Plain(unary(name, arg, path, cx)?), fold))
}

/// The state of an inline [`GroupAcc`].
#[derive(Clone, Debug)]
pub struct FirstLastFold {
    last: bool,
    val: Option<Value>,
}

impl Fold for FirstLastFold {
    fn inline(&self) -> Option<GroupAcc> {
        Some(GroupAcc::FirstLast(self.clone()))
    }

    fn add(&mut self, v: Cow<'_, Value>) {
        if self.last || self.val.is_none() {
            self.val = Some(if v.is_missing() {
                Value::Null
            } else {
                v.into_owned()
            });
        }
    }

    fn value(&self) -> Value {
        self.val.clone().unwrap_or(Value::Null)
    }

    fn save(&self) -> Value {
        save_opt(&self.val)
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        self.val = load_opt(v)?;
        Some(())
    }
}

/// `$first` and `$last`: one fold, told which end to keep.
fn compile_first_last(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    let fold = FirstLastFold {
        last: name == "$last",
        val: None,
    };
    Ok(spec(name, Input::Plain(unary(name, arg, path, cx)?), fold))
}

#[derive(Clone, Debug, Default)]
struct PushFold(Vec<Value>);

impl Fold for PushFold {
    fn add(&mut self, v: Cow<'_, Value>) {
        if !v.is_missing() {
            self.0.push(v.into_owned());
        }
    }

    fn value(&self) -> Value {
        Value::Array(self.0.clone())
    }

    fn save(&self) -> Value {
        self.value()
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        self.0 = v.as_array()?.to_vec();
        Some(())
    }
}

fn compile_push(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    Ok(spec(
        name,
        Input::Plain(unary(name, arg, path, cx)?),
        PushFold::default(),
    ))
}

/// Distinct values (MongoDB equality: `1` and `1.0` are the same) in first-seen order.
#[derive(Clone, Debug, Default)]
struct AddToSetFold {
    seen: ValueHashSet,
    items: Vec<Value>,
}

impl Fold for AddToSetFold {
    fn add(&mut self, v: Cow<'_, Value>) {
        if v.is_missing() {
            return;
        }
        let key = HashableValue(v.into_owned());
        if !self.seen.contains(&key) {
            self.items.push(key.0.clone());
            self.seen.insert(key);
        }
    }

    fn value(&self) -> Value {
        Value::Array(self.items.clone())
    }

    fn save(&self) -> Value {
        self.value()
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        self.items = v.as_array()?.to_vec();
        self.seen = self.items.iter().cloned().map(HashableValue).collect();
        Some(())
    }
}

fn compile_add_to_set(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    Ok(spec(
        name,
        Input::Plain(unary(name, arg, path, cx)?),
        AddToSetFold::default(),
    ))
}

#[derive(Clone, Debug, Default)]
struct MergeFold(Document);

impl Fold for MergeFold {
    fn add(&mut self, v: Cow<'_, Value>) {
        match v {
            Cow::Owned(Value::Document(d)) => {
                for (k, val) in d {
                    self.0.insert(k, val);
                }
            }
            Cow::Borrowed(Value::Document(d)) => {
                for (k, val) in d.iter() {
                    self.0.insert(k.clone(), val.clone());
                }
            }
            _ => {}
        }
    }

    fn value(&self) -> Value {
        Value::Document(self.0.clone())
    }

    fn save(&self) -> Value {
        self.value()
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        self.0 = v.as_document()?.clone();
        Some(())
    }
}

fn compile_merge_objects(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    Ok(spec(
        name,
        Input::Objects(unary(name, arg, path, cx)?),
        MergeFold::default(),
    ))
}

// ---------------------------------------------------------------------------------
// n-valued accumulators: $firstN, $lastN, $maxN, $minN, $topN, $bottomN, $top, $bottom
// ---------------------------------------------------------------------------------

/// How many values an n-accumulator keeps: a constant, or an expression evaluated per
/// group against the group key.
#[derive(Clone, Debug)]
struct NCount {
    name: &'static str,
    n: usize,
    expr: Option<Arc<Expr>>,
}

impl NCount {
    fn compile(
        name: &'static str,
        v: &Value,
        path: &str,
        cx: &mut CompileCtx,
    ) -> Result<NCount, CompileError> {
        let e = compile_expr(v, path, cx)?;
        match e.as_literal() {
            Some(lit) => {
                let n = validate_n(name, lit).map_err(|m| CompileError::new(path, m))?;
                Ok(NCount {
                    name,
                    n,
                    expr: None,
                })
            }
            None => Ok(NCount {
                name,
                n: 0,
                expr: Some(Arc::new(e)),
            }),
        }
    }

    fn save(&self) -> Value {
        Value::Int64(i64::try_from(self.n).unwrap_or(i64::MAX))
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        let Value::Int64(n) = v else { return None };
        self.n = usize::try_from(*n).ok()?;
        Some(())
    }

    fn init(&mut self, key: &Document, env: &Env) -> Result<(), EvalError> {
        if let Some(e) = &self.expr {
            let v = e.eval(&Ctx::new(key, env))?;
            self.n = validate_n(self.name, &v).map_err(EvalError::new)?;
        }
        Ok(())
    }
}

/// `n` must be a positive integral number.
fn validate_n(name: &str, v: &Value) -> Result<usize, String> {
    match v.as_i64_exact() {
        Some(n) if n > 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => Err(format!("{name}: 'n' must be greater than 0, found {n}")),
        None => Err(format!(
            "{name}: 'n' must be a positive integer, found {}",
            v.to_json()
        )),
    }
}

#[derive(Clone, Debug)]
struct FirstLastNFold {
    n: NCount,
    last: bool,
    items: VecDeque<Value>,
}

impl Fold for FirstLastNFold {
    fn add(&mut self, v: Cow<'_, Value>) {
        if self.items.len() >= self.n.n {
            if self.last {
                self.items.pop_front();
            } else {
                return;
            }
        }
        self.items.push_back(if v.is_missing() {
            Value::Null
        } else {
            v.into_owned()
        });
    }

    fn value(&self) -> Value {
        Value::Array(self.items.iter().cloned().collect())
    }

    fn save(&self) -> Value {
        Value::Array(vec![self.n.save(), self.value()])
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        let [n, Value::Array(items)] = v.as_array()? else {
            return None;
        };
        self.n.load(n)?;
        self.items = items.iter().cloned().collect();
        Some(())
    }

    fn init(&mut self, key: &Document, env: &Env) -> Result<(), EvalError> {
        self.n.init(key, env)
    }

    fn needs_init(&self) -> bool {
        self.n.expr.is_some()
    }
}

/// The `n` smallest (or largest) non-null values, kept sorted ascending.
#[derive(Clone, Debug)]
struct MinMaxNFold {
    n: NCount,
    max: bool,
    items: Vec<Value>,
}

impl Fold for MinMaxNFold {
    fn add(&mut self, v: Cow<'_, Value>) {
        if v.is_nullish() || self.n.n == 0 {
            return;
        }
        if self.items.len() >= self.n.n {
            if self.max {
                match self.items.first() {
                    Some(lowest) if compare_values(lowest, &v) == Ordering::Less => {
                        self.items.remove(0);
                    }
                    _ => return,
                }
            } else {
                match self.items.last() {
                    Some(highest) if compare_values(highest, &v) == Ordering::Greater => {
                        self.items.pop();
                    }
                    _ => return,
                }
            }
        }
        let pos = self
            .items
            .partition_point(|x| compare_values(x, &v) != Ordering::Greater);
        self.items.insert(pos, v.into_owned());
    }

    fn value(&self) -> Value {
        if self.max {
            Value::Array(self.items.iter().rev().cloned().collect())
        } else {
            Value::Array(self.items.clone())
        }
    }

    fn save(&self) -> Value {
        Value::Array(vec![self.n.save(), Value::Array(self.items.clone())])
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        let [n, Value::Array(items)] = v.as_array()? else {
            return None;
        };
        self.n.load(n)?;
        self.items = items.clone();
        Some(())
    }

    fn init(&mut self, key: &Document, env: &Env) -> Result<(), EvalError> {
        self.n.init(key, env)
    }

    fn needs_init(&self) -> bool {
        self.n.expr.is_some()
    }
}

fn compile_n(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    let a = named_args(name, arg, &["n", "input"], &[], path)?;
    let n = NCount::compile(name, a["n"], &path_key(path, "n"), cx)?;
    let input = Input::Plain(compile_expr(a["input"], &path_key(path, "input"), cx)?);
    Ok(match name {
        "$firstN" | "$lastN" => spec(
            name,
            input,
            FirstLastNFold {
                n,
                last: name == "$lastN",
                items: VecDeque::new(),
            },
        ),
        _ => spec(
            name,
            input,
            MinMaxNFold {
                n,
                max: name == "$maxN",
                items: Vec::new(),
            },
        ),
    })
}

/// The sort key of one `sortBy` field: missing sorts as null, an empty array below
/// null, and an array by its smallest element ascending or its largest descending.
fn sort_key(v: Cow<'_, Value>, desc: bool) -> Value {
    match v.as_ref() {
        Value::Missing => Value::Null,
        Value::Array(items) if items.is_empty() => Value::Undefined,
        Value::Array(items) => {
            let mut best = &items[0];
            for item in &items[1..] {
                let o = compare_values(item, best);
                if (desc && o == Ordering::Greater) || (!desc && o == Ordering::Less) {
                    best = item;
                }
            }
            best.clone()
        }
        _ => v.into_owned(),
    }
}

/// Compares two sort keys under the `sortBy` directions (`true` = descending).
fn compare_keys(a: &[Value], b: &[Value], desc: &[bool]) -> Ordering {
    for ((x, y), d) in a.iter().zip(b).zip(desc) {
        let o = compare_values(x, y);
        if o != Ordering::Equal {
            return if *d { o.reverse() } else { o };
        }
    }
    Ordering::Equal
}

/// `$top`/`$bottom`/`$topN`/`$bottomN`: entries kept in ascending `sortBy` order; ties
/// keep the value seen first (as MongoDB does).
#[derive(Clone, Debug)]
struct TopBottomFold {
    n: NCount,
    bottom: bool,
    single: bool,
    desc: Arc<[bool]>,
    items: Vec<(Vec<Value>, Value)>,
}

impl Fold for TopBottomFold {
    fn add(&mut self, v: Cow<'_, Value>) {
        let Value::Array(mut parts) = v.into_owned() else {
            return;
        };
        if parts.is_empty() || self.n.n == 0 {
            return;
        }
        let output = parts.remove(0);
        let key = parts;
        if self.items.len() >= self.n.n {
            if self.bottom {
                match self.items.first() {
                    Some((k, _)) if compare_keys(&key, k, &self.desc) == Ordering::Greater => {
                        self.items.remove(0);
                    }
                    _ => return,
                }
            } else {
                match self.items.last() {
                    Some((k, _)) if compare_keys(k, &key, &self.desc) == Ordering::Greater => {
                        self.items.pop();
                    }
                    _ => return,
                }
            }
        }
        let pos = self
            .items
            .partition_point(|(k, _)| compare_keys(k, &key, &self.desc) != Ordering::Greater);
        self.items.insert(pos, (key, output));
    }

    fn value(&self) -> Value {
        if self.single {
            return self
                .items
                .first()
                .map(|(_, v)| v.clone())
                .unwrap_or(Value::Null);
        }
        Value::Array(self.items.iter().map(|(_, v)| v.clone()).collect())
    }

    fn save(&self) -> Value {
        let items = self
            .items
            .iter()
            .map(|(k, v)| Value::Array(vec![Value::Array(k.clone()), v.clone()]))
            .collect();
        Value::Array(vec![self.n.save(), Value::Array(items)])
    }

    fn load(&mut self, v: &Value) -> Option<()> {
        let [n, Value::Array(items)] = v.as_array()? else {
            return None;
        };
        self.n.load(n)?;
        let mut loaded = Vec::with_capacity(items.len());
        for item in items {
            let [Value::Array(k), out] = item.as_array()? else {
                return None;
            };
            loaded.push((k.clone(), out.clone()));
        }
        self.items = loaded;
        Some(())
    }

    fn init(&mut self, key: &Document, env: &Env) -> Result<(), EvalError> {
        self.n.init(key, env)
    }

    fn needs_init(&self) -> bool {
        self.n.expr.is_some()
    }
}

/// Parses a `sortBy` object: `{field: 1 | -1, ...}`.
fn compile_sort_by(name: &str, v: &Value, path: &str) -> Result<Vec<SortField>, CompileError> {
    let Value::Document(d) = v else {
        return Err(CompileError::new(
            path,
            format!(
                "{name}: 'sortBy' must be an object like {{\"score\": -1}}, found {}",
                v.to_json()
            ),
        ));
    };
    if d.is_empty() {
        return Err(CompileError::new(
            path,
            format!("{name}: 'sortBy' must have at least one field"),
        ));
    }
    let mut out = Vec::with_capacity(d.len());
    for (k, dir) in d.iter() {
        let p = path_key(path, k);
        let segs = parse_field_path(k, &p)?;
        let order = dir.as_f64();
        let desc = match order {
            _ if order == Some(1.0) => false,
            _ if order == Some(-1.0) => true,
            _ if matches!(dir, Value::Document(m) if m.contains_key("$meta")) => {
                return Err(CompileError::new(
                    p,
                    format!("{name}: sorting by {{\"$meta\": ...}} is not supported"),
                ));
            }
            _ => {
                return Err(CompileError::new(
                    p,
                    format!(
                        "{name}: sort order must be 1 (ascending) or -1 (descending), found {}",
                        dir.to_json()
                    ),
                ));
            }
        };
        out.push((segs, desc));
    }
    Ok(out)
}

fn compile_top_bottom(
    name: &'static str,
    arg: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<AccumulatorSpec, CompileError> {
    let single = matches!(name, "$top" | "$bottom");
    let required: &[&str] = if single {
        &["sortBy", "output"]
    } else {
        &["n", "sortBy", "output"]
    };
    let a = named_args(name, arg, required, &[], path)?;
    let n = if single {
        NCount {
            name,
            n: 1,
            expr: None,
        }
    } else {
        NCount::compile(name, a["n"], &path_key(path, "n"), cx)?
    };
    let sort = compile_sort_by(name, a["sortBy"], &path_key(path, "sortBy"))?;
    let output = compile_expr(a["output"], &path_key(path, "output"), cx)?;
    let desc: Arc<[bool]> = sort.iter().map(|(_, d)| *d).collect();
    let fold = TopBottomFold {
        n,
        bottom: name.starts_with("$bottom"),
        single,
        desc,
        items: Vec::new(),
    };
    Ok(spec(name, Input::Sorted { output, sort }, fold))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_value;

    fn run(acc: &str, docs: &[&str]) -> Value {
        let mut cx = CompileCtx::default();
        let spec = compile_accumulator(&parse_value(acc).unwrap(), "acc", &mut cx).unwrap();
        let env = Env::at(0);
        let mut state = spec.start();
        for d in docs {
            let doc = crate::value::parse_document(d).unwrap();
            state.update(&Ctx::new(&doc, &env)).unwrap();
        }
        state.result()
    }

    #[test]
    fn sum_widens_types() {
        assert!(run(
            r#"{"$sum": "$a"}"#,
            &[r#"{"a": 2147483647}"#, r#"{"a": 1}"#]
        )
        .identical(&Value::Int64(2147483648)));
        assert!(
            run(r#"{"$sum": "$a"}"#, &[r#"{"a": 1}"#, r#"{"a": 2}"#]).identical(&Value::Int32(3))
        );
        assert!(run(r#"{"$sum": "$a"}"#, &[r#"{"a": "x"}"#]).identical(&Value::Int32(0)));
        let big = r#"{"a": {"$numberLong": "9223372036854775807"}}"#;
        assert!(matches!(
            run(r#"{"$sum": "$a"}"#, &[big, big]),
            Value::Double(_)
        ));
        assert_eq!(
            run(r#"{"$sum": "$a"}"#, &[r#"{"a": 0.1}"#, r#"{"a": 0.2}"#]).to_json(),
            "0.30000000000000004"
        );
    }

    #[test]
    fn decimal_sum_keeps_scale() {
        let v = run(
            r#"{"$sum": "$a"}"#,
            &[r#"{"a": {"$numberDecimal": "1.50"}}"#, r#"{"a": 2}"#],
        );
        assert_eq!(v.to_json(), r#"{"$numberDecimal":"3.50"}"#);
    }

    #[test]
    fn double_to_decimal34() {
        assert_eq!(
            f64_to_decimal34(0.1).to_string(),
            "0.1000000000000000055511151231257827"
        );
        assert_eq!(f64_to_decimal34(2.5).to_string(), "2.5");
        assert_eq!(f64_to_decimal34(3.0).to_string(), "3");
    }

    #[test]
    fn unknown_accumulator_names_path() {
        let mut cx = CompileCtx::default();
        let e = compile_accumulator(
            &parse_value(r#"{"$summ": 1}"#).unwrap(),
            "pipeline[1].$group.total",
            &mut cx,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pipeline[1].$group.total: unknown accumulator '$summ'"
        );
    }

    #[test]
    fn n_from_group_key() {
        let mut cx = CompileCtx::default();
        let spec = compile_accumulator(
            &parse_value(r#"{"$firstN": {"n": "$k", "input": "$v"}}"#).unwrap(),
            "a",
            &mut cx,
        )
        .unwrap();
        assert!(spec.uses_group_key());
        let env = Env::at(0);
        let key = parse_value(r#"{"k": 2}"#).unwrap();
        let mut st = spec.start_for_group(&key, &env).unwrap();
        for i in 0..5 {
            let d = crate::doc! {"v" => i};
            st.update(&Ctx::new(&d, &env)).unwrap();
        }
        assert_eq!(st.result().to_json(), "[0,1]");
        assert!(spec.start_for_group(&Value::Int32(1), &env).is_err());
    }
}
