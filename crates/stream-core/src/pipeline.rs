//! The rule-engine API: compile a pipeline once, then evaluate one document or a finite
//! batch. Streaming runs use the same [`PipelineRun`] incrementally.

use crate::deps::input_fields;
use crate::error::{CompileError, EvalError, StageError};
use crate::expr::{CompileCtx, Env};
use crate::functions::FunctionRegistry;
use crate::prefetch::prefetching;
use crate::stages::{compile_stages, RefOutcome, Stage, StageState};
use crate::value::{parse_value, Document, ExtJsonError, Str, Value};
use std::sync::Arc;

/// Stages whose output for a document depends on that document alone (no state kept
/// between documents).
const STATELESS_STAGES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
    "$unwind",
    "$redact",
];

/// Failure of the `*_json` conveniences: bad JSON, an invalid pipeline, or a document
/// that failed in a stage.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The text is not valid (Extended) JSON.
    #[error(transparent)]
    Json(#[from] ExtJsonError),
    /// The pipeline is invalid.
    #[error("invalid pipeline: {0}")]
    Compile(#[from] CompileError),
    /// A document failed in a stage.
    #[error(transparent)]
    Stage(#[from] StageError),
}

/// A compiled aggregation pipeline.
///
/// ```
/// use stream_core::Pipeline;
/// use stream_core::value::parse_document;
///
/// let pipeline = Pipeline::compile_json(r#"[
///     {"$match": {"status": "PAID"}},
///     {"$group": {"_id": "$customerId", "total": {"$sum": "$amount"}}},
///     {"$sort": {"_id": 1}}
/// ]"#).unwrap();
///
/// let docs = [
///     r#"{"customerId": "c1", "status": "PAID", "amount": 10}"#,
///     r#"{"customerId": "c2", "status": "NEW",  "amount": 99}"#,
///     r#"{"customerId": "c1", "status": "PAID", "amount": 5}"#,
/// ].map(|s| parse_document(s).unwrap());
///
/// let result = pipeline.run(docs);
/// assert!(result.errors.is_empty());
/// assert_eq!(result.documents[0].to_json(), r#"{"_id":"c1","total":15}"#);
/// ```
#[derive(Debug)]
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    input_fields: Option<Arc<[Str]>>,
}

impl Clone for Pipeline {
    fn clone(&self) -> Self {
        Pipeline {
            stages: self.stages.iter().map(|s| s.fresh()).collect(),
            input_fields: self.input_fields.clone(),
        }
    }
}

/// Outputs and per-document errors of a batch run.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Documents emitted by the last stage, in order.
    pub documents: Vec<Document>,
    /// One entry per document that failed; the others were unaffected.
    pub errors: Vec<StageError>,
}

impl Pipeline {
    /// Compiles a pipeline: a JSON array of stages, or `{"pipeline": [...]}`.
    pub fn compile(stages: &Value) -> Result<Pipeline, CompileError> {
        Self::compile_with(stages, Arc::new(FunctionRegistry::new()))
    }

    /// Compiles with a registry of Rust functions for `$function`.
    pub fn compile_with(
        stages: &Value,
        functions: Arc<FunctionRegistry>,
    ) -> Result<Pipeline, CompileError> {
        let stages = match stages {
            Value::Document(d) if d.len() == 1 && d.contains_key("pipeline") => {
                d.get("pipeline").unwrap_or(stages)
            }
            other => other,
        };
        let mut cx = CompileCtx::new(functions);
        let compiled = compile_stages(stages, "pipeline", &mut cx)?;
        Ok(Pipeline {
            stages: compiled,
            input_fields: stages.as_array().and_then(input_fields).map(Arc::from),
        })
    }

    /// The top-level input fields the pipeline can observe, or `None` when it may read
    /// any. Readers may parse only these ([`crate::value::parse_document_fields`]): the
    /// results are the same, and parsing is faster.
    pub fn input_fields(&self) -> Option<&[Str]> {
        self.input_fields.as_deref()
    }

    /// A pipeline of already compiled stages (window inner pipelines, the fluent API).
    pub(crate) fn from_stages(stages: Vec<Box<dyn Stage>>) -> Pipeline {
        Pipeline {
            stages,
            input_fields: None,
        }
    }

    /// Parses and compiles pipeline JSON text.
    pub fn compile_json(text: &str) -> Result<Pipeline, PipelineError> {
        Self::compile_json_with(text, Arc::new(FunctionRegistry::new()))
    }

    /// Parses and compiles pipeline JSON text with a function registry.
    pub fn compile_json_with(
        text: &str,
        functions: Arc<FunctionRegistry>,
    ) -> Result<Pipeline, PipelineError> {
        Ok(Self::compile_with(&parse_value(text)?, functions)?)
    }

    /// Number of leading stages that transform each document on its own (`$match`,
    /// `$project`, `$set`, ...). A streaming runtime may run them on several threads at
    /// once, each with its own [`Pipeline::start_prefix`] run.
    pub fn stateless_prefix_len(&self) -> usize {
        self.stages
            .iter()
            .take_while(|s| STATELESS_STAGES.contains(&s.name()))
            .count()
    }

    /// A run of only the first `n` stages (see [`Pipeline::stateless_prefix_len`]).
    pub fn start_prefix(&self, n: usize, env: Env) -> PipelineRun {
        let n = n.min(self.stages.len());
        PipelineRun {
            slots: (0..n).map(|_| StageSlot::default()).collect(),
            stages: self.stages[..n].iter().map(|s| s.fresh()).collect(),
            env,
        }
    }

    /// Stage names in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Starts a run with fresh stage state; `$$NOW` is fixed at this instant.
    pub fn start(&self) -> PipelineRun {
        self.start_with_env(Env::now())
    }

    /// Starts a run with an explicit environment.
    pub fn start_with_env(&self, env: Env) -> PipelineRun {
        PipelineRun {
            slots: self.stages.iter().map(|_| StageSlot::default()).collect(),
            stages: self.stages.iter().map(|s| s.fresh()).collect(),
            env,
        }
    }

    /// Runs a finite batch to completion. A document that fails in a stage is reported in
    /// [`BatchResult::errors`] and does not affect the others.
    pub fn run(&self, docs: impl IntoIterator<Item = Document>) -> BatchResult {
        let mut run = self.start();
        let mut result = BatchResult::default();
        for doc in prefetching(docs) {
            run.push(doc, &mut result.documents, &mut result.errors);
        }
        run.finish(&mut result.documents, &mut result.errors);
        result
    }

    /// Like [`Pipeline::run`] on documents the caller keeps: the same results, without
    /// taking ownership of the inputs. Filtering stages (`$match`, `$limit`, `$skip`) test
    /// the borrowed document and an inclusion `$project` copies only the fields it keeps,
    /// so a document is never cloned whole by those stages; other stages work on a copy.
    /// Useful to evaluate events owned elsewhere, or one event against many pipelines.
    ///
    /// ```
    /// use stream_core::Pipeline;
    /// use stream_core::value::parse_document;
    ///
    /// let rules = [
    ///     Pipeline::compile_json(r#"[{"$match": {"status": "PAID"}}, {"$project": {"amount": 1, "_id": 0}}]"#).unwrap(),
    ///     Pipeline::compile_json(r#"[{"$match": {"amount": {"$gt": 100}}}]"#).unwrap(),
    /// ];
    /// let events = [
    ///     parse_document(r#"{"status": "PAID", "amount": 150}"#).unwrap(),
    ///     parse_document(r#"{"status": "NEW", "amount": 7}"#).unwrap(),
    /// ];
    /// // Every rule sees every event; the events stay with the caller.
    /// let paid = rules[0].run_ref(&events);
    /// assert_eq!(paid.documents.len(), 1);
    /// assert_eq!(paid.documents[0].to_json(), r#"{"amount":150}"#);
    /// let large = rules[1].run_ref(&events);
    /// assert_eq!(large.documents[0].to_json(), events[0].to_json());
    /// ```
    pub fn run_ref<'d>(&self, docs: impl IntoIterator<Item = &'d Document>) -> BatchResult {
        let mut run = self.start();
        let mut result = BatchResult::default();
        for doc in prefetching(docs) {
            run.push_ref(doc, &mut result.documents, &mut result.errors);
        }
        run.finish(&mut result.documents, &mut result.errors);
        result
    }

    /// Evaluates one document as a batch of one; the first error fails the call.
    pub fn eval(&self, doc: Document) -> Result<Vec<Document>, StageError> {
        let result = self.run([doc]);
        match result.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(result.documents),
        }
    }

    /// Parses one JSON document and evaluates it.
    pub fn eval_json(&self, text: &str) -> Result<Vec<Document>, PipelineError> {
        let doc = crate::value::parse_document(text)?;
        Ok(self.eval(doc)?)
    }
}

/// One run of a pipeline: feed documents with [`PipelineRun::push`], end the input
/// with [`PipelineRun::finish`].
#[derive(Debug)]
pub struct PipelineRun {
    stages: Vec<Box<dyn Stage>>,
    slots: Vec<StageSlot>,
    env: Env,
}

/// Per-stage run bookkeeping: a reusable output buffer (so pushing a document does not
/// allocate) and the stage's counters.
#[derive(Debug, Default)]
struct StageSlot {
    buf: Vec<Document>,
    stats: StageStats,
}

/// Counters of one stage in a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StageStats {
    /// Documents received.
    pub documents_in: u64,
    /// Documents emitted.
    pub documents_out: u64,
    /// Documents that failed in this stage.
    pub errors: u64,
    /// Estimated processing time in nanoseconds (one call in [`TIME_SAMPLE`] is timed).
    pub nanos: u64,
    /// Input documents dropped (or side-output) as too late for their windows.
    pub late_events: u64,
    /// Entries of state held now (open windows, keyed-state keys).
    pub state_entries: u64,
}

/// Only one call in this many is timed: reading the clock per document would cost more
/// than the cheap stages themselves.
pub const TIME_SAMPLE: u64 = 32;

impl PipelineRun {
    /// Pushes one document through every stage; outputs of the last stage go to `out`.
    /// Errors (at most one per derived document) go to `errors`.
    pub fn push(&mut self, doc: Document, out: &mut Vec<Document>, errors: &mut Vec<StageError>) {
        push_from(
            &mut self.stages,
            &mut self.slots,
            0,
            doc,
            &self.env,
            out,
            errors,
        );
    }

    /// Like [`PipelineRun::push`] for a document the caller keeps (see
    /// [`Pipeline::run_ref`]); the outputs and errors are the same.
    pub fn push_ref(
        &mut self,
        doc: &Document,
        out: &mut Vec<Document>,
        errors: &mut Vec<StageError>,
    ) {
        push_ref_from(
            &mut self.stages,
            &mut self.slots,
            0,
            doc,
            &self.env,
            out,
            errors,
        );
    }

    /// Pushes a document that already went through the first `start` stages (in a
    /// [`Pipeline::start_prefix`] run) into the rest of the pipeline.
    pub fn push_at(
        &mut self,
        start: usize,
        doc: Document,
        out: &mut Vec<Document>,
        errors: &mut Vec<StageError>,
    ) {
        let start = start.min(self.stages.len());
        let (_, stages) = self.stages.split_at_mut(start);
        let (_, slots) = self.slots.split_at_mut(start);
        push_from(stages, slots, start, doc, &self.env, out, errors);
    }

    /// Counters per stage, in pipeline order, with the stage names.
    pub fn stage_stats(&self) -> Vec<(&'static str, StageStats)> {
        self.stages
            .iter()
            .zip(&self.slots)
            .map(|(s, slot)| {
                let mut stats = slot.stats;
                stats.late_events = s.late_events();
                stats.state_entries = s.state_entries();
                (s.name(), stats)
            })
            .collect()
    }

    /// Sets the event time of the documents pushed next (see [`Env::event_time`]).
    pub fn set_event_time(&mut self, event_time: Option<i64>) {
        self.env.event_time = event_time;
    }

    /// True when some stage needs event time and watermarks (an event-time window).
    pub fn uses_event_time(&self) -> bool {
        self.stages.iter().any(|s| s.uses_event_time())
    }

    /// Advances event time: window stages emit the windows the watermark closed, and
    /// their results run through the rest of the pipeline.
    pub fn advance_watermark(
        &mut self,
        watermark: i64,
        out: &mut Vec<Document>,
        errors: &mut Vec<StageError>,
    ) {
        self.emit_from_each(out, errors, |s, env, local| {
            s.on_watermark(watermark, env, local)
        });
    }

    /// Advances processing time: processing-time windows close, `idleTimeout`s expire.
    pub fn advance_processing_time(
        &mut self,
        now: i64,
        out: &mut Vec<Document>,
        errors: &mut Vec<StageError>,
    ) {
        self.emit_from_each(out, errors, |s, env, local| {
            s.on_processing_time(now, env, local)
        });
    }

    /// Late input documents set aside by window stages for the side output.
    pub fn take_late(&mut self, out: &mut Vec<Document>) {
        for s in &mut self.stages {
            s.take_late(out);
        }
    }

    /// Calls `emit` on every stage in order and pushes what each emits through the
    /// stages after it.
    fn emit_from_each(
        &mut self,
        out: &mut Vec<Document>,
        errors: &mut Vec<StageError>,
        mut emit: impl FnMut(&mut dyn Stage, &Env, &mut Vec<Document>) -> Result<(), EvalError>,
    ) {
        for i in 0..self.stages.len() {
            let mut local = std::mem::take(&mut self.slots[i].buf);
            if let Err(e) = emit(&mut *self.stages[i], &self.env, &mut local) {
                self.slots[i].stats.errors += 1;
                errors.push(stage_error(&*self.stages[i], i, e));
            }
            self.slots[i].stats.documents_out += local.len() as u64;
            let (_, rest_stages) = self.stages.split_at_mut(i + 1);
            let (_, rest_slots) = self.slots.split_at_mut(i + 1);
            for d in local.drain(..) {
                push_from(rest_stages, rest_slots, i + 1, d, &self.env, out, errors);
            }
            self.slots[i].buf = local;
        }
    }

    /// Ends the input: flushes blocking stages in order through the rest of the pipeline.
    pub fn finish(&mut self, out: &mut Vec<Document>, errors: &mut Vec<StageError>) {
        self.emit_from_each(out, errors, |s, env, local| s.finish(env, local));
    }

    /// The run environment.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// State of every stage for a checkpoint (`null` for stateless stages), or `None`
    /// when some stage cannot export its state.
    pub fn checkpoint_state(&self) -> Result<Option<Vec<Value>>, StageError> {
        let mut states = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            match stage
                .checkpoint_state()
                .map_err(|e| stage_error(&**stage, i, e))?
            {
                StageState::Stateless => states.push(Value::Null),
                StageState::State(v) => states.push(v),
                StageState::Unsupported => return Ok(None),
            }
        }
        Ok(Some(states))
    }

    /// Restores the states saved by [`PipelineRun::checkpoint_state`].
    pub fn restore_state(&mut self, states: &[Value]) -> Result<(), StageError> {
        if states.len() != self.stages.len() {
            return Err(StageError {
                stage_index: 0,
                stage: "pipeline".into(),
                error: EvalError::new(format!(
                    "the checkpoint holds state for {} stages but the pipeline has {}; the pipeline changed since the checkpoint (run with --reset to start over)",
                    states.len(),
                    self.stages.len()
                )),
            });
        }
        for (i, (stage, state)) in self.stages.iter_mut().zip(states).enumerate() {
            if !matches!(state, Value::Null) {
                stage
                    .restore_state(state)
                    .map_err(|e| stage_error(&**stage, i, e))?;
            }
        }
        Ok(())
    }

    /// Index of the first stage that emits at triggers, if any.
    fn trigger_stage(&self) -> Option<usize> {
        self.stages.iter().position(|s| s.supports_trigger())
    }

    /// Why this pipeline cannot run on an unbounded input, if it cannot: a blocking stage
    /// that is not preceded by a stage emitting at triggers would never emit.
    pub fn unbounded_input_problem(&self) -> Option<String> {
        let limit = self.trigger_stage().unwrap_or(self.stages.len());
        self.stages[..limit].iter().enumerate().find(|(_, s)| s.is_blocking()).map(|(i, s)| {
            format!(
                "pipeline[{i}]: {} needs the whole input and would never emit on an unbounded source; put it after a $group, inside a window, or use a bounded source / the availableNow trigger",
                s.name()
            )
        })
    }

    /// A streaming trigger: the first trigger-capable stage emits its changed (or, when
    /// `complete`, all) results, which run through fresh copies of the later stages as a
    /// finite batch.
    pub fn trigger(
        &mut self,
        complete: bool,
        out: &mut Vec<Document>,
        errors: &mut Vec<StageError>,
    ) {
        let Some(k) = self.trigger_stage() else {
            return;
        };
        let mut rows = Vec::new();
        if let Err(e) = self.stages[k].on_trigger(complete, &self.env, &mut rows) {
            errors.push(stage_error(&*self.stages[k], k, e));
        }
        let mut tail = PipelineRun {
            stages: self.stages[k + 1..].iter().map(|s| s.fresh()).collect(),
            slots: self.stages[k + 1..]
                .iter()
                .map(|_| StageSlot::default())
                .collect(),
            env: self.env.clone(),
        };
        let mut tail_errors = Vec::new();
        let emitted = rows.len() as u64;
        for row in rows {
            tail.push(row, out, &mut tail_errors);
        }
        tail.finish(out, &mut tail_errors);
        errors.extend(tail_errors.into_iter().map(|mut e| {
            e.stage_index += k + 1;
            e
        }));
        // The rows and the tail's work count towards this run's stage metrics.
        self.slots[k].stats.documents_out += emitted;
        for (slot, done) in self.slots[k + 1..].iter_mut().zip(&tail.slots) {
            let (s, d) = (&mut slot.stats, done.stats);
            s.documents_in += d.documents_in;
            s.documents_out += d.documents_out;
            s.errors += d.errors;
            s.nanos += d.nanos;
        }
    }
}

fn stage_error(stage: &dyn Stage, index: usize, error: EvalError) -> StageError {
    StageError {
        stage_index: index,
        stage: stage.name().to_string(),
        error,
    }
}

/// [`push_from`] for a borrowed document: it stays borrowed while stages pass it through
/// ([`RefOutcome::PassThrough`]); the outputs of the first stage that emits continue owned.
fn push_ref_from(
    stages: &mut [Box<dyn Stage>],
    slots: &mut [StageSlot],
    index: usize,
    doc: &Document,
    env: &Env,
    out: &mut Vec<Document>,
    errors: &mut Vec<StageError>,
) {
    let (Some((stage, rest_stages)), Some((slot, rest_slots))) =
        (stages.split_first_mut(), slots.split_first_mut())
    else {
        out.push(doc.clone());
        return;
    };
    let mut local = std::mem::take(&mut slot.buf);
    let timed = slot.stats.documents_in % TIME_SAMPLE == 0;
    let started = timed.then(std::time::Instant::now);
    slot.stats.documents_in += 1;
    let outcome = stage.process_ref(doc, env, &mut local);
    if let Some(t) = started {
        slot.stats.nanos += t.elapsed().as_nanos() as u64 * TIME_SAMPLE;
    }
    match outcome {
        Ok(RefOutcome::PassThrough) => {
            slot.stats.documents_out += 1;
            push_ref_from(rest_stages, rest_slots, index + 1, doc, env, out, errors);
        }
        Ok(RefOutcome::Emitted) => {}
        Err(e) => {
            slot.stats.errors += 1;
            errors.push(stage_error(&**stage, index, e));
        }
    }
    if !local.is_empty() {
        slot.stats.documents_out += local.len() as u64;
        for d in local.drain(..) {
            push_from(rest_stages, rest_slots, index + 1, d, env, out, errors);
        }
    }
    slot.buf = local;
}

fn push_from(
    stages: &mut [Box<dyn Stage>],
    slots: &mut [StageSlot],
    index: usize,
    doc: Document,
    env: &Env,
    out: &mut Vec<Document>,
    errors: &mut Vec<StageError>,
) {
    let (Some((stage, rest_stages)), Some((slot, rest_slots))) =
        (stages.split_first_mut(), slots.split_first_mut())
    else {
        out.push(doc);
        return;
    };
    let mut local = std::mem::take(&mut slot.buf);
    let timed = slot.stats.documents_in % TIME_SAMPLE == 0;
    let started = timed.then(std::time::Instant::now);
    slot.stats.documents_in += 1;
    if let Err(e) = stage.process(doc, env, &mut local) {
        slot.stats.errors += 1;
        errors.push(stage_error(&**stage, index, e));
    }
    if let Some(t) = started {
        slot.stats.nanos += t.elapsed().as_nanos() as u64 * TIME_SAMPLE;
    }
    if !local.is_empty() {
        slot.stats.documents_out += local.len() as u64;
        for d in local.drain(..) {
            push_from(rest_stages, rest_slots, index + 1, d, env, out, errors);
        }
    }
    slot.buf = local;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_document;

    #[test]
    fn trigger_output_counts_in_stage_stats() {
        let p = Pipeline::compile_json(
            r#"[{"$group": {"_id": "$k", "n": {"$count": {}}}}, {"$match": {"n": {"$gte": 2}}}]"#,
        )
        .unwrap();
        let mut run = p.start();
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        for k in ["a", "a", "b"] {
            let doc = parse_document(&format!(r#"{{"k": "{k}"}}"#)).unwrap();
            run.push(doc, &mut out, &mut errors);
        }
        run.trigger(true, &mut out, &mut errors);
        assert_eq!(out.len(), 1);
        let stats = run.stage_stats();
        assert_eq!((stats[0].1.documents_in, stats[0].1.documents_out), (3, 2));
        assert_eq!((stats[1].1.documents_in, stats[1].1.documents_out), (2, 1));
    }
}
