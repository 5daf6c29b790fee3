//! Error types: compile-time errors carry the JSON path of the problem, runtime errors
//! carry the stage that raised them.

use std::fmt;

/// A pipeline, query or expression that cannot be compiled. `path` is the JSON path
/// of the offending part, e.g. `pipeline[1].$group.total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    /// JSON path of the problem (`pipeline[1].$group.total`).
    pub path: String,
    /// What is wrong and, where possible, what to write instead.
    pub message: String,
}

impl CompileError {
    /// A compile error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        CompileError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// An error while evaluating an expression or stage against one document. It affects
/// only that document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    /// What went wrong, starting with the operator: `$divide: cannot divide by zero`.
    pub message: String,
    /// True when retrying the same document may succeed (an unavailable service called
    /// by a stage); false for bad data, which fails the same way every time.
    pub transient: bool,
}

impl EvalError {
    /// A permanent evaluation error (bad data) with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        EvalError {
            message: message.into(),
            transient: false,
        }
    }

    /// A transient evaluation error: retrying the document may succeed.
    pub fn transient(message: impl Into<String>) -> Self {
        EvalError {
            message: message.into(),
            transient: true,
        }
    }
}

/// An evaluation error attributed to a stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StageError {
    /// Zero-based index of the stage in the pipeline.
    pub stage_index: usize,
    /// The stage's name, e.g. `$group`.
    pub stage: String,
    /// The underlying error.
    pub error: EvalError,
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stage {} ({}) at pipeline[{}]: {}",
            self.stage_index + 1,
            self.stage,
            self.stage_index,
            self.error
        )
    }
}

/// Joins a JSON path and a key: `path_key("pipeline[1].$group", "total")`.
pub fn path_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a JSON path and an array index: `path_index("pipeline", 1)` → `pipeline[1]`.
pub fn path_index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}
