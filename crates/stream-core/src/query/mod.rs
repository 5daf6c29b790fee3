//! The `$match` query language, compiled once into a predicate tree.
//!
//! Semantics follow MongoDB's find filters: a condition on a path matches when any
//! value reached through arrays matches (`{"tags": "a"}` matches `{"tags": ["a", "b"]}`),
//! dotted paths descend through arrays of subdocuments, and `{"f": null}` matches a
//! missing field.

use crate::error::{CompileError, EvalError};
use crate::expr::{CompileCtx, Env};
use crate::value::{Document, Value};

/// A compiled query filter.
#[derive(Debug, Clone)]
pub struct Query {
    _filter: Value,
}

impl Query {
    /// Compiles a filter document found at JSON path `path`.
    pub fn compile(filter: &Value, path: &str, _cx: &mut CompileCtx) -> Result<Query, CompileError> {
        match filter {
            Value::Document(_) => Ok(Query { _filter: filter.clone() }),
            other => Err(CompileError::new(
                path,
                format!("a query filter must be an object, found {}", other.type_name()),
            )),
        }
    }

    /// True when `doc` matches. Fails only when a `$expr` inside fails.
    pub fn matches(&self, _doc: &Document, _env: &Env) -> Result<bool, EvalError> {
        Err(EvalError::new("query language not implemented yet"))
    }
}
