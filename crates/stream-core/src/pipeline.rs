//! The rule-engine API: compile a pipeline once, then evaluate one document or a finite
//! batch. Streaming runs use the same [`PipelineRun`] incrementally.

use crate::error::{CompileError, EvalError, StageError};
use crate::expr::{CompileCtx, Env};
use crate::functions::FunctionRegistry;
use crate::stages::{compile_stages, Stage};
use crate::deps::input_fields;
use crate::value::{parse_value, Document, ExtJsonError, Str, Value};
use std::sync::Arc;

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
    pub fn compile_with(stages: &Value, functions: Arc<FunctionRegistry>) -> Result<Pipeline, CompileError> {
        let stages = match stages {
            Value::Document(d) if d.len() == 1 && d.contains_key("pipeline") => d.get("pipeline").unwrap_or(stages),
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

    /// Parses and compiles pipeline JSON text.
    pub fn compile_json(text: &str) -> Result<Pipeline, PipelineError> {
        Self::compile_json_with(text, Arc::new(FunctionRegistry::new()))
    }

    /// Parses and compiles pipeline JSON text with a function registry.
    pub fn compile_json_with(text: &str, functions: Arc<FunctionRegistry>) -> Result<Pipeline, PipelineError> {
        Ok(Self::compile_with(&parse_value(text)?, functions)?)
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
            bufs: self.stages.iter().map(|_| Vec::new()).collect(),
            stages: self.stages.iter().map(|s| s.fresh()).collect(),
            env,
        }
    }

    /// Runs a finite batch to completion. A document that fails in a stage is reported in
    /// [`BatchResult::errors`] and does not affect the others.
    pub fn run(&self, docs: impl IntoIterator<Item = Document>) -> BatchResult {
        let mut run = self.start();
        let mut result = BatchResult::default();
        for doc in docs {
            run.push(doc, &mut result.documents, &mut result.errors);
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
    /// One reusable output buffer per stage, so pushing a document does not allocate.
    bufs: Vec<Vec<Document>>,
    env: Env,
}

impl PipelineRun {
    /// Pushes one document through every stage; outputs of the last stage go to `out`.
    /// Errors (at most one per derived document) go to `errors`.
    pub fn push(&mut self, doc: Document, out: &mut Vec<Document>, errors: &mut Vec<StageError>) {
        push_from(&mut self.stages, &mut self.bufs, 0, doc, &self.env, out, errors);
    }

    /// Ends the input: flushes blocking stages in order through the rest of the pipeline.
    pub fn finish(&mut self, out: &mut Vec<Document>, errors: &mut Vec<StageError>) {
        for i in 0..self.stages.len() {
            let mut local = std::mem::take(&mut self.bufs[i]);
            if let Err(e) = self.stages[i].finish(&self.env, &mut local) {
                errors.push(stage_error(&*self.stages[i], i, e));
            }
            let (_, rest_stages) = self.stages.split_at_mut(i + 1);
            let (_, rest_bufs) = self.bufs.split_at_mut(i + 1);
            for d in local.drain(..) {
                push_from(rest_stages, rest_bufs, i + 1, d, &self.env, out, errors);
            }
            self.bufs[i] = local;
        }
    }

    /// The run environment.
    pub fn env(&self) -> &Env {
        &self.env
    }
}

fn stage_error(stage: &dyn Stage, index: usize, error: EvalError) -> StageError {
    StageError {
        stage_index: index,
        stage: stage.name().to_string(),
        error,
    }
}

fn push_from(
    stages: &mut [Box<dyn Stage>],
    bufs: &mut [Vec<Document>],
    index: usize,
    doc: Document,
    env: &Env,
    out: &mut Vec<Document>,
    errors: &mut Vec<StageError>,
) {
    let (Some((stage, rest_stages)), Some((buf, rest_bufs))) = (stages.split_first_mut(), bufs.split_first_mut()) else {
        out.push(doc);
        return;
    };
    let mut local = std::mem::take(buf);
    if let Err(e) = stage.process(doc, env, &mut local) {
        errors.push(stage_error(&**stage, index, e));
    }
    for d in local.drain(..) {
        push_from(rest_stages, rest_bufs, index + 1, d, env, out, errors);
    }
    *buf = local;
}
