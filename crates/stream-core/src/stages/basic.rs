//! Document-at-a-time stages: `$match`, `$limit`, `$skip`, `$project`, `$addFields` /
//! `$set`, `$unset`, `$replaceRoot`, `$replaceWith`, `$count`, `$unwind`, `$redact`.

mod projection;
mod reshape;

use super::{RefOutcome, Stage, StageCompileFn, StageState};
use crate::error::{CompileError, EvalError};
use crate::expr::{CompileCtx, Env};
use crate::query::Query;
use crate::value::{Document, Value};
use std::sync::Arc;

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] = &[
    ("$match", compile_match),
    ("$limit", compile_limit),
    ("$skip", compile_skip),
    ("$project", projection::compile_project),
    ("$addFields", projection::compile_add_fields),
    ("$set", projection::compile_set),
    ("$unset", projection::compile_unset),
    ("$replaceRoot", reshape::compile_replace_root),
    ("$replaceWith", reshape::compile_replace_with),
    ("$count", reshape::compile_count),
    ("$unwind", reshape::compile_unwind),
    ("$redact", reshape::compile_redact),
];

#[derive(Debug, Clone)]
struct Match {
    query: Arc<Query>,
}

impl Stage for Match {
    fn name(&self) -> &'static str {
        "$match"
    }
    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        if self.query.matches(&doc, env)? {
            out.push(doc);
        }
        Ok(())
    }
    fn process_ref(
        &mut self,
        doc: &Document,
        env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<RefOutcome, EvalError> {
        Ok(if self.query.matches(doc, env)? {
            RefOutcome::PassThrough
        } else {
            RefOutcome::Emitted
        })
    }
    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(self.clone())
    }
}

fn compile_match(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    Ok(Box::new(Match {
        query: Arc::new(Query::compile(spec, path, cx)?),
    }))
}

/// A positive integer stage argument (`$limit`, `$skip`, `$sample.size`).
pub(crate) fn positive_count(
    name: &str,
    spec: &Value,
    path: &str,
    allow_zero: bool,
) -> Result<u64, CompileError> {
    match spec.as_i64_exact() {
        Some(n) if n > 0 || (allow_zero && n == 0) => Ok(n as u64),
        _ => Err(CompileError::new(
            path,
            format!(
                "{name} expects a {} integer, found {}",
                if allow_zero {
                    "non-negative"
                } else {
                    "positive"
                },
                spec.to_json()
            ),
        )),
    }
}

#[derive(Debug, Clone)]
struct Limit {
    limit: u64,
    seen: u64,
}

impl Limit {
    /// Counts a document; true while fewer than `limit` have passed.
    fn admit(&mut self) -> bool {
        let pass = self.seen < self.limit;
        self.seen += u64::from(pass);
        pass
    }
}

impl Stage for Limit {
    fn name(&self) -> &'static str {
        "$limit"
    }
    fn process(
        &mut self,
        doc: Document,
        _env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        if self.admit() {
            out.push(doc);
        }
        Ok(())
    }
    fn process_ref(
        &mut self,
        _doc: &Document,
        _env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<RefOutcome, EvalError> {
        Ok(if self.admit() {
            RefOutcome::PassThrough
        } else {
            RefOutcome::Emitted
        })
    }
    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(Limit {
            limit: self.limit,
            seen: 0,
        })
    }
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        Ok(StageState::State(Value::Int64(self.seen as i64)))
    }
    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        self.seen = restore_counter("$limit", state)?;
        Ok(())
    }
}

fn compile_limit(
    spec: &Value,
    path: &str,
    _cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    Ok(Box::new(Limit {
        limit: positive_count("$limit", spec, path, false)?,
        seen: 0,
    }))
}

#[derive(Debug, Clone)]
struct Skip {
    skip: u64,
    seen: u64,
}

impl Skip {
    /// Counts a document; true once the first `skip` have been dropped.
    fn admit(&mut self) -> bool {
        let drop = self.seen < self.skip;
        self.seen += u64::from(drop);
        !drop
    }
}

impl Stage for Skip {
    fn name(&self) -> &'static str {
        "$skip"
    }
    fn process(
        &mut self,
        doc: Document,
        _env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        if self.admit() {
            out.push(doc);
        }
        Ok(())
    }
    fn process_ref(
        &mut self,
        _doc: &Document,
        _env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<RefOutcome, EvalError> {
        Ok(if self.admit() {
            RefOutcome::PassThrough
        } else {
            RefOutcome::Emitted
        })
    }
    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(Skip {
            skip: self.skip,
            seen: 0,
        })
    }
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        Ok(StageState::State(Value::Int64(self.seen as i64)))
    }
    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        self.seen = restore_counter("$skip", state)?;
        Ok(())
    }
}

/// Restores a document counter saved as a checkpoint state.
pub(crate) fn restore_counter(stage: &str, state: &Value) -> Result<u64, EvalError> {
    state
        .as_i64_exact()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            EvalError::new(format!(
                "{stage}: invalid checkpoint state {}, expected a count",
                state.to_json()
            ))
        })
}

fn compile_skip(
    spec: &Value,
    path: &str,
    _cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    Ok(Box::new(Skip {
        skip: positive_count("$skip", spec, path, true)?,
        seen: 0,
    }))
}
