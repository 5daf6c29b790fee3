//! `$group` accumulators (also used by `$bucket`, `$bucketAuto` and `$setWindowFields`).
//!
//! An accumulator expression such as `{"$sum": "$amount"}` compiles once into an
//! [`AccumulatorSpec`]; each group gets its own state from [`AccumulatorSpec::start`],
//! fed one document at a time through [`Accumulator::update`].

use crate::error::{CompileError, EvalError};
use crate::expr::{CompileCtx, Ctx};
use crate::value::Value;
use std::fmt;
use std::sync::Arc;

/// Running state of one accumulator for one group.
pub trait Accumulator: Send + fmt::Debug {
    /// Adds the document in `ctx` (the accumulator evaluates its own argument expressions).
    fn update(&mut self, ctx: &Ctx<'_>) -> Result<(), EvalError>;

    /// The result so far. May be called more than once (streaming update mode emits
    /// intermediate results).
    fn result(&self) -> Value;
}

/// A compiled accumulator: creates fresh per-group state.
pub trait AccumulatorFactory: Send + Sync + fmt::Debug {
    /// New empty state for one group.
    fn start(&self) -> Box<dyn Accumulator>;
}

/// A compiled accumulator expression.
#[derive(Debug, Clone)]
pub struct AccumulatorSpec {
    /// Operator name, e.g. `$sum`.
    pub name: &'static str,
    factory: Arc<dyn AccumulatorFactory>,
}

impl AccumulatorSpec {
    /// Wraps a factory.
    pub fn new(name: &'static str, factory: Arc<dyn AccumulatorFactory>) -> Self {
        AccumulatorSpec { name, factory }
    }

    /// New empty state for one group.
    pub fn start(&self) -> Box<dyn Accumulator> {
        self.factory.start()
    }
}

/// Compiles an accumulator object `{"$op": argument}` found at `path`
/// (e.g. `pipeline[1].$group.total`).
pub fn compile_accumulator(spec: &Value, path: &str, _cx: &mut CompileCtx) -> Result<AccumulatorSpec, CompileError> {
    Err(CompileError::new(path, format!("accumulators not implemented yet: {}", spec.to_json())))
}
