//! # stream-core
//!
//! The engine of SrotaX: a document model with MongoDB's types and comparison rules,
//! the query and aggregation-expression languages, and the aggregation stages, all
//! compiled once and evaluated per document.
//!
//! A pipeline is a JSON array of MongoDB aggregation stages. [`Pipeline::compile`]
//! turns it into a chain of [`stages::Stage`]s; the same compiled pipeline evaluates one
//! document ([`Pipeline::eval`]), a finite batch ([`Pipeline::run`]) or, through
//! [`PipelineRun`], an unbounded stream fed document by document.
//!
//! ```
//! use stream_core::Pipeline;
//!
//! let p = Pipeline::compile_json(r#"[{"$project": {"_id": 0, "total": {"$add": ["$a", "$b"]}}}]"#).unwrap();
//! let out = p.eval_json(r#"{"a": 1, "b": 2}"#).unwrap();
//! assert_eq!(out[0].to_json(), r#"{"total":3}"#);
//! ```
//!
//! Errors: an invalid pipeline fails to compile with a [`CompileError`] naming the JSON
//! path of the problem; a runtime error in one document ([`StageError`]) names the stage
//! and affects only that document.

#![warn(missing_docs)]

pub mod deps;
pub mod error;
pub mod expr;
pub mod fluent;
pub mod functions;
pub mod keyed_state;
pub mod pipeline;
mod prefetch;
pub mod query;
pub mod stages;
pub mod streaming;
pub mod value;

pub use error::{CompileError, EvalError, StageError};
pub use pipeline::{BatchResult, Pipeline, PipelineError, PipelineRun, StageStats};
pub use value::{Document, Value};
