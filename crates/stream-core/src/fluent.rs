//! The fluent Rust API: build a pipeline with method calls instead of JSON.
//!
//! Every step that has a JSON equivalent compiles to exactly that stage (`filter` is
//! `$match`, `KeyedStream::aggregate` is `$group`, a window is `$tumblingWindow` /
//! `$hoppingWindow` / `$sessionWindow` with a `$group` inside), so a fluent pipeline and
//! its JSON twin run the same operators; [`DataStream::to_json`] shows the JSON while no
//! Rust closure is involved. Closures (`map`, `flat_map`, `filter_fn`, `reduce`,
//! `process`) become custom operators; keyed ones hold [`KeyedState`] (with optional
//! TTL), which is checkpointed like any stage state.
//!
//! ```
//! use std::time::Duration;
//! use stream_core::fluent::{Agg, DataStream, Window};
//! use stream_core::value::parse_document;
//! use serde_json::json;
//!
//! let pipeline = DataStream::new()
//!     .filter(json!({"status": "PAID"})).unwrap()
//!     .key_by("$region")
//!     .window(Window::tumbling(Duration::from_secs(60)).time_field("$ts"))
//!     .aggregate(&[Agg::count("orders"), Agg::sum("revenue", "$amount")]).unwrap()
//!     .build();
//! let docs = [
//!     r#"{"status": "PAID", "region": "EU", "amount": 5, "ts": {"$date": "2024-03-01T00:00:10Z"}}"#,
//!     r#"{"status": "PAID", "region": "EU", "amount": 7, "ts": {"$date": "2024-03-01T00:00:50Z"}}"#,
//!     r#"{"status": "NEW",  "region": "EU", "amount": 9, "ts": {"$date": "2024-03-01T00:00:20Z"}}"#,
//! ].map(|s| parse_document(s).unwrap());
//! let out = pipeline.run(docs).documents;
//! assert_eq!(out[0].get("revenue").unwrap().to_json(), "12");
//! ```

use crate::error::{CompileError, EvalError};
use crate::expr::{compile_expr, CompileCtx, Ctx, Env, Expr};
use crate::keyed_state::KeyedState;
use crate::pipeline::Pipeline;
use crate::stages::{compile_stage, Stage, StageState};
use crate::value::{Document, Value};
use std::sync::Arc;
use std::time::Duration;

/// A stream of documents being described; [`DataStream::build`] compiles it.
#[derive(Debug, Default)]
pub struct DataStream {
    stages: Vec<Box<dyn Stage>>,
    /// The JSON stages, while every step has one.
    json: Option<Vec<Value>>,
}

/// A stream partitioned by a key expression (`key_by`).
#[derive(Debug)]
pub struct KeyedStream {
    stream: DataStream,
    key: Value,
    ttl: Option<Duration>,
}

/// A stream cut into windows (`window`), optionally keyed.
#[derive(Debug)]
pub struct WindowedStream {
    stream: DataStream,
    key: Option<Value>,
    window: Window,
}

/// A window definition: tumbling, sliding (hopping) or session.
#[derive(Debug, Clone)]
pub struct Window {
    spec: Document,
    name: &'static str,
}

/// An aggregation of a keyed or windowed stream: the output field and its accumulator.
#[derive(Debug, Clone)]
pub struct Agg {
    field: String,
    accumulator: Value,
}

fn millis(d: Duration) -> Value {
    let mut v = Document::with_capacity(2);
    v.push_unchecked("size", Value::Int64(d.as_millis() as i64));
    v.push_unchecked("unit", Value::string("ms"));
    Value::Document(v)
}

impl Window {
    fn new(name: &'static str, fields: &[(&str, Value)]) -> Window {
        let mut spec = Document::new();
        for (k, v) in fields {
            spec.insert(*k, v.clone());
        }
        Window { spec, name }
    }

    /// Fixed, non-overlapping windows of `size` (`$tumblingWindow`).
    pub fn tumbling(size: Duration) -> Window {
        Self::new("$tumblingWindow", &[("interval", millis(size))])
    }

    /// Windows of `size` starting every `slide` (`$hoppingWindow`).
    pub fn sliding(size: Duration, slide: Duration) -> Window {
        Self::new(
            "$hoppingWindow",
            &[("interval", millis(size)), ("hopSize", millis(slide))],
        )
    }

    /// Sessions closed by `gap` of inactivity per key (`$sessionWindow`).
    pub fn session(gap: Duration) -> Window {
        Self::new("$sessionWindow", &[("gap", millis(gap))])
    }

    /// Keeps windows open for late events this long after their end, re-emitting.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Window {
        self.spec.insert("allowedLateness", millis(lateness));
        self
    }

    /// Sends events too late for their windows to the dead-letter sink.
    pub fn late_to_side_output(mut self) -> Window {
        self.spec.insert("lateData", Value::string("sideOutput"));
        self
    }

    /// Reads event time from this expression (for batch runs; streaming runs take it
    /// from the source's `timeField`).
    pub fn time_field(mut self, expr: &str) -> Window {
        self.spec.insert("timeField", Value::string(expr));
        self
    }
}

impl Agg {
    fn new(field: &str, op: &str, arg: Value) -> Agg {
        let mut acc = Document::with_capacity(1);
        acc.push_unchecked(op, arg);
        Agg {
            field: field.to_string(),
            accumulator: Value::Document(acc),
        }
    }
    /// Number of documents.
    pub fn count(field: &str) -> Agg {
        Self::new(field, "$count", Value::Document(Document::new()))
    }
    /// Sum of an expression.
    pub fn sum(field: &str, expr: &str) -> Agg {
        Self::new(field, "$sum", Value::string(expr))
    }
    /// Average of an expression.
    pub fn average(field: &str, expr: &str) -> Agg {
        Self::new(field, "$avg", Value::string(expr))
    }
    /// Minimum of an expression.
    pub fn min(field: &str, expr: &str) -> Agg {
        Self::new(field, "$min", Value::string(expr))
    }
    /// Maximum of an expression.
    pub fn max(field: &str, expr: &str) -> Agg {
        Self::new(field, "$max", Value::string(expr))
    }
}

fn group_stage(key: Option<&Value>, aggs: &[Agg]) -> Value {
    let mut group = Document::with_capacity(aggs.len() + 1);
    group.push_unchecked("_id", key.cloned().unwrap_or(Value::Null));
    for a in aggs {
        group.insert(a.field.as_str(), a.accumulator.clone());
    }
    let mut stage = Document::with_capacity(1);
    stage.push_unchecked("$group", Value::Document(group));
    Value::Document(stage)
}

impl DataStream {
    /// An empty stream description (the identity pipeline).
    pub fn new() -> DataStream {
        DataStream {
            stages: Vec::new(),
            json: Some(Vec::new()),
        }
    }

    /// Appends any JSON stage, e.g. `json!({"$project": {"_id": 0}})`.
    pub fn stage(self, stage: serde_json::Value) -> Result<DataStream, CompileError> {
        // serde_json's text is valid Extended JSON.
        let stage = crate::value::parse_value(&stage.to_string())
            .map_err(|e| CompileError::new("pipeline", e.to_string()))?;
        self.push_stage(stage)
    }

    fn push_stage(mut self, stage: Value) -> Result<DataStream, CompileError> {
        let path = format!("pipeline[{}]", self.stages.len());
        self.stages
            .push(compile_stage(&stage, &path, &mut CompileCtx::default())?);
        if let Some(json) = self.json.as_mut() {
            json.push(stage);
        }
        Ok(self)
    }

    /// Appends a custom operator.
    pub fn process(mut self, operator: impl Stage + 'static) -> DataStream {
        self.stages.push(Box::new(operator));
        self.json = None;
        self
    }

    /// Keeps the documents matching a query filter (`$match`).
    pub fn filter(self, query: serde_json::Value) -> Result<DataStream, CompileError> {
        self.stage(serde_json::json!({ "$match": query }))
    }

    /// Keeps the documents for which `f` returns true.
    pub fn filter_fn(self, f: impl Fn(&Document) -> bool + Send + Sync + 'static) -> DataStream {
        self.flat_map(move |d| if f(&d) { vec![d] } else { Vec::new() })
    }

    /// Transforms each document.
    pub fn map(self, f: impl Fn(Document) -> Document + Send + Sync + 'static) -> DataStream {
        self.flat_map(move |d| vec![f(d)])
    }

    /// Transforms each document into any number of documents.
    pub fn flat_map(
        self,
        f: impl Fn(Document) -> Vec<Document> + Send + Sync + 'static,
    ) -> DataStream {
        self.process(FnStage { f: Arc::new(f) })
    }

    /// Partitions the stream by a key expression, e.g. `"$customerId"`.
    pub fn key_by(self, key: &str) -> KeyedStream {
        KeyedStream {
            stream: self,
            key: Value::string(key),
            ttl: None,
        }
    }

    /// Groups by a key expression with aggregations (`$group`; update mode when
    /// streaming).
    pub fn group_by(self, key: &str, aggs: &[Agg]) -> Result<DataStream, CompileError> {
        self.key_by(key).aggregate(aggs)
    }

    /// Cuts the whole (unkeyed) stream into windows.
    pub fn window(self, window: Window) -> WindowedStream {
        WindowedStream {
            stream: self,
            key: None,
            window,
        }
    }

    /// The JSON pipeline, when every step has a JSON equivalent.
    pub fn to_json(&self) -> Option<Value> {
        self.json.clone().map(Value::Array)
    }

    /// Compiles the stream into a [`Pipeline`].
    pub fn build(self) -> Pipeline {
        match &self.json {
            // Through the JSON compiler, which also works out the fields read.
            Some(json) => Pipeline::compile(&Value::Array(json.clone()))
                .unwrap_or_else(|_| Pipeline::from_stages(self.stages)),
            None => Pipeline::from_stages(self.stages),
        }
    }
}

impl KeyedStream {
    /// Expires each key's state this long after its last update (for `reduce` and
    /// `process`), removing it even if the key never comes back.
    pub fn ttl(mut self, ttl: Duration) -> KeyedStream {
        self.ttl = Some(ttl);
        self
    }

    /// Aggregates per key (`$group` with `_id` the key).
    pub fn aggregate(self, aggs: &[Agg]) -> Result<DataStream, CompileError> {
        let stage = group_stage(Some(&self.key), aggs);
        self.stream.push_stage(stage)
    }

    /// Folds each key's documents with `f(previous result, document)` and emits the
    /// new result for every input (a running reduce).
    pub fn reduce(
        self,
        f: impl Fn(&Document, Document) -> Document + Send + Sync + 'static,
    ) -> Result<DataStream, CompileError> {
        self.process(move |state, doc, out| {
            let next = match state.get() {
                Some(Value::Document(prev)) => f(prev, doc),
                _ => doc,
            };
            state.put(Value::Document(next.clone()));
            out.push(next);
            Ok(())
        })
    }

    /// A custom keyed operator: `f` gets the current key's state, the document and
    /// the output.
    pub fn process(
        self,
        f: impl Fn(&mut KeyScope<'_>, Document, &mut Vec<Document>) -> Result<(), EvalError>
            + Send
            + Sync
            + 'static,
    ) -> Result<DataStream, CompileError> {
        let key = compile_expr(&self.key, "key_by", &mut CompileCtx::default())?;
        let ttl = self.ttl.map(|t| t.as_millis() as i64);
        Ok(self.stream.process(KeyedProcess {
            key: Arc::new(key),
            f: Arc::new(f),
            ttl,
            state: ttl.map_or_else(KeyedState::new, KeyedState::with_ttl),
        }))
    }

    /// Cuts each key's documents into windows.
    pub fn window(self, window: Window) -> WindowedStream {
        WindowedStream {
            stream: self.stream,
            key: Some(self.key),
            window,
        }
    }
}

impl WindowedStream {
    /// Aggregates each window (per key when keyed): the window stage with a `$group`
    /// inside. Session windows are per key (`partitionBy`).
    pub fn aggregate(self, aggs: &[Agg]) -> Result<DataStream, CompileError> {
        let group = group_stage(self.key.as_ref(), aggs);
        self.pipeline(vec![group])
    }

    /// Runs any inner pipeline per window.
    pub fn pipeline(self, inner: Vec<Value>) -> Result<DataStream, CompileError> {
        let mut spec = self.window.spec;
        if self.window.name == "$sessionWindow" {
            if let Some(key) = &self.key {
                spec.insert("partitionBy", key.clone());
            }
        }
        spec.insert("pipeline", Value::Array(inner));
        let mut stage = Document::with_capacity(1);
        stage.push_unchecked(self.window.name, Value::Document(spec));
        self.stream.push_stage(Value::Document(stage))
    }
}

/// A stateless closure operator (`map`, `flat_map`, `filter_fn`).
#[derive(Clone)]
struct FnStage {
    f: Arc<dyn Fn(Document) -> Vec<Document> + Send + Sync>,
}

impl std::fmt::Debug for FnStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnStage")
    }
}

impl Stage for FnStage {
    fn name(&self) -> &'static str {
        "$map"
    }
    fn process(
        &mut self,
        doc: Document,
        _env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        out.extend((self.f)(doc));
        Ok(())
    }
    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(self.clone())
    }
}

type KeyedFn =
    dyn Fn(&mut KeyScope<'_>, Document, &mut Vec<Document>) -> Result<(), EvalError> + Send + Sync;

/// The state of the current key, as a keyed operator sees it.
pub struct KeyScope<'a> {
    state: &'a mut KeyedState,
    key: &'a Value,
    now: i64,
}

impl KeyScope<'_> {
    /// The current key.
    pub fn key(&self) -> &Value {
        self.key
    }
    /// The key's value, unless absent or expired.
    pub fn get(&self) -> Option<&Value> {
        self.state.get(self.key, self.now)
    }
    /// Sets the key's value (restarting its TTL).
    pub fn put(&mut self, value: Value) {
        self.state.put(self.key.clone(), value, self.now);
    }
    /// Replaces the key's value by `f(current)`; `None` deletes it.
    pub fn update(&mut self, f: impl FnOnce(Option<&Value>) -> Option<Value>) {
        self.state.update(self.key.clone(), self.now, f);
    }
    /// Deletes the key's value.
    pub fn delete(&mut self) -> Option<Value> {
        self.state.delete(self.key)
    }
}

/// A keyed closure operator with [`KeyedState`].
struct KeyedProcess {
    key: Arc<Expr>,
    f: Arc<KeyedFn>,
    ttl: Option<i64>,
    state: KeyedState,
}

impl std::fmt::Debug for KeyedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedProcess")
            .field("keys", &self.state.len())
            .finish()
    }
}

impl Stage for KeyedProcess {
    fn name(&self) -> &'static str {
        "$keyedProcess"
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let key = self.key.eval(&Ctx::new(&doc, env))?.into_owned();
        let now = chrono::Utc::now().timestamp_millis();
        self.state.expire(now);
        let mut scope = KeyScope {
            state: &mut self.state,
            key: &key,
            now,
        };
        (self.f)(&mut scope, doc, out)
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(KeyedProcess {
            key: Arc::clone(&self.key),
            f: Arc::clone(&self.f),
            ttl: self.ttl,
            state: self.ttl.map_or_else(KeyedState::new, KeyedState::with_ttl),
        })
    }

    fn on_processing_time(
        &mut self,
        now: i64,
        _env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        self.state.expire(now);
        Ok(())
    }

    fn state_entries(&self) -> u64 {
        self.state.len() as u64
    }

    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        Ok(StageState::State(self.state.checkpoint_state()))
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        self.state.restore_state(state)
    }
}
