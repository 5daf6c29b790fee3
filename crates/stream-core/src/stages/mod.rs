//! Aggregation stages. Each stage is compiled once into a [`Stage`] prototype; a
//! pipeline run takes a [`Stage::fresh`] copy per run so compiled configuration is
//! shared and run state is not.
//!
//! A stage receives documents one at a time through [`Stage::process`] and may emit any
//! number of documents; blocking stages (`$group`, `$sort`, ...) buffer and emit from
//! [`Stage::finish`] when the input ends. Window stages emit when event time advances
//! ([`Stage::on_watermark`]) or processing time does ([`Stage::on_processing_time`]).
//! Each family of stages lives in its own module and exports a `STAGES` table of
//! `(name, compile function)`.

mod basic;
mod bucket;
mod facet;
mod group;
mod sort;
mod window;
mod window_fields;

pub mod accumulators;

pub(crate) use window::time_millis;

use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::expr::{CompileCtx, Env};
use crate::value::{Document, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// A compiled stage with its run state.
pub trait Stage: Send + fmt::Debug {
    /// The stage name, e.g. `$group`.
    fn name(&self) -> &'static str;

    /// Processes one input document, appending any outputs to `out`. An error affects
    /// only this document.
    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError>;

    /// Processes one input document the caller keeps (see [`crate::Pipeline::run_ref`]).
    /// A stage that keeps the document unchanged (a filter that lets it through) returns
    /// [`RefOutcome::PassThrough`] and the caller forwards the same reference, so nothing
    /// is cloned; other outputs are appended to `out`. The default clones the document
    /// and calls [`Stage::process`]; stages override it when they can do better (`$match`
    /// filters by reference, an inclusion `$project` clones only the fields it keeps).
    /// The results must be exactly those of [`Stage::process`].
    fn process_ref(
        &mut self,
        doc: &Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<RefOutcome, EvalError> {
        self.process(doc.clone(), env, out)?;
        Ok(RefOutcome::Emitted)
    }

    /// The input has ended: emit whatever is buffered.
    fn finish(&mut self, _env: &Env, _out: &mut Vec<Document>) -> Result<(), EvalError> {
        Ok(())
    }

    /// A copy with the same compiled configuration and empty run state.
    fn fresh(&self) -> Box<dyn Stage>;

    /// True when the stage emits only at [`Stage::finish`] (it needs the whole input).
    fn is_blocking(&self) -> bool {
        false
    }

    /// The run state to store in a checkpoint. By default a blocking stage cannot be
    /// checkpointed and any other stage keeps no state across documents.
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        Ok(if self.is_blocking() {
            StageState::Unsupported
        } else {
            StageState::Stateless
        })
    }

    /// Restores state produced by [`Stage::checkpoint_state`].
    fn restore_state(&mut self, _state: &Value) -> Result<(), EvalError> {
        Err(EvalError::new(format!(
            "{} cannot restore checkpointed state",
            self.name()
        )))
    }

    /// True when the stage can emit intermediate results at a streaming trigger
    /// (an unwindowed `$group` on an unbounded input).
    fn supports_trigger(&self) -> bool {
        false
    }

    /// Emits results at a streaming trigger: the results changed since the previous
    /// trigger, or every result when `complete`.
    fn on_trigger(
        &mut self,
        _complete: bool,
        _env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        Ok(())
    }

    /// True when the stage needs event time and watermarks (an event-time window).
    fn uses_event_time(&self) -> bool {
        false
    }

    /// Event time has advanced to `watermark` (epoch milliseconds): no more input is
    /// expected with an earlier event time. A window stage emits the windows that ended.
    fn on_watermark(
        &mut self,
        _watermark: i64,
        _env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        Ok(())
    }

    /// Processing time is now `now` (epoch milliseconds): processing-time windows close
    /// and `idleTimeout`s expire.
    fn on_processing_time(
        &mut self,
        _now: i64,
        _env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        Ok(())
    }

    /// Input documents dropped as too late so far (a metric).
    fn late_events(&self) -> u64 {
        0
    }

    /// Entries of state the stage holds now (open windows, keyed-state keys): a metric.
    fn state_entries(&self) -> u64 {
        0
    }

    /// Moves the late input documents set aside for the side output into `out`.
    fn take_late(&mut self, _out: &mut Vec<Document>) {}
}

/// What [`Stage::process_ref`] did with a borrowed input document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefOutcome {
    /// The stage's outputs (possibly none) were appended to `out`.
    Emitted,
    /// The stage emits the input document itself, unchanged, as its only output; the
    /// caller passes the borrowed document on instead of a copy.
    PassThrough,
}

/// A stage's contribution to a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum StageState {
    /// Nothing to store.
    Stateless,
    /// The state to store.
    State(Value),
    /// The stage keeps state it cannot export; a pipeline with such a stage is
    /// checkpointed only when its input has ended.
    Unsupported,
}

/// Compiles a stage's specification (the value under its name) found at `path`.
pub type StageCompileFn =
    fn(spec: &Value, path: &str, cx: &mut CompileCtx) -> Result<Box<dyn Stage>, CompileError>;

fn stage_table() -> &'static HashMap<&'static str, StageCompileFn> {
    static TABLE: OnceLock<HashMap<&'static str, StageCompileFn>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut m = HashMap::new();
        for table in [
            basic::STAGES,
            group::STAGES,
            sort::STAGES,
            bucket::STAGES,
            facet::STAGES,
            window_fields::STAGES,
            window::STAGES,
        ] {
            for (name, f) in table {
                m.insert(*name, *f);
            }
        }
        m
    })
}

/// Stages that need a database; rejected with a pointer to connectors.
const DATABASE_STAGES: &[&str] = &["$lookup", "$graphLookup", "$merge", "$out", "$unionWith"];

/// Compiles one stage object `{"$name": spec}` found at `path` (e.g. `pipeline[1]`).
pub fn compile_stage(
    stage: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let Value::Document(d) = stage else {
        return Err(CompileError::new(
            path,
            format!(
                "a stage must be an object like {{\"$match\": {{...}}}}, found {}",
                stage.type_name()
            ),
        ));
    };
    if d.len() != 1 {
        return Err(CompileError::new(
            path,
            format!(
                "a stage object must have exactly one field (the stage name), found {}",
                d.len()
            ),
        ));
    }
    let (name, spec) = d.iter().next().expect("one field");
    let stage_path = path_key(path, name);
    if DATABASE_STAGES.contains(&name.as_str()) {
        return Err(CompileError::new(
            stage_path,
            format!("{name} needs a database and is not supported inside a pipeline; read from or write to a database with a source or sink connector instead"),
        ));
    }
    match stage_table().get(name.as_str()) {
        Some(f) => f(spec, &stage_path, cx),
        None => Err(CompileError::new(
            stage_path,
            format!("unknown stage '{name}'"),
        )),
    }
}

/// Compiles an array of stages found at `path`.
pub fn compile_stages(
    stages: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Vec<Box<dyn Stage>>, CompileError> {
    let Value::Array(items) = stages else {
        return Err(CompileError::new(
            path,
            format!(
                "a pipeline must be an array of stages, found {}",
                stages.type_name()
            ),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, s)| compile_stage(s, &path_index(path, i), cx))
        .collect()
}

/// Names of every supported stage, sorted (for documentation and tooling).
pub fn stage_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = stage_table().keys().copied().collect();
    names.sort_unstable();
    names
}

/// True when `name` is a known stage.
pub fn is_stage(name: &str) -> bool {
    stage_table().contains_key(name)
}
