//! Registry of Rust functions callable from pipelines through `$function`.
//!
//! MongoDB's `$function` runs JavaScript; SrotaX calls a Rust function registered by
//! name instead: `{"$function": {"name": "score", "args": ["$a", 2]}}`.
//!
//! ```
//! use std::sync::Arc;
//! use stream_core::functions::FunctionRegistry;
//! use stream_core::value::Value;
//! use stream_core::Pipeline;
//!
//! let mut registry = FunctionRegistry::new();
//! registry.register("double", |args: &[Value]| -> Result<Value, String> {
//!     let n = args.first().and_then(Value::as_f64).ok_or("expected a number")?;
//!     Ok(Value::Double(n * 2.0))
//! });
//! let pipeline = Pipeline::compile_json_with(
//!     r#"[{"$set": {"y": {"$function": {"name": "double", "args": ["$x"]}}}}]"#,
//!     Arc::new(registry),
//! ).unwrap();
//! let out = pipeline.eval_json(r#"{"x": 21}"#).unwrap();
//! assert_eq!(out[0].to_json(), r#"{"x":21,"y":42.0}"#);
//! ```

use crate::value::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A user function: takes the evaluated arguments, returns a value or an error.
pub type UserFunction = Arc<dyn Fn(&[Value]) -> Result<Value, FunctionError> + Send + Sync>;

/// A failure of a user function. Plain strings convert into permanent errors (bad
/// input); use [`FunctionError::transient`] when a retry may succeed (a service call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionError {
    /// What went wrong.
    pub message: String,
    /// True when retrying the document may succeed.
    pub transient: bool,
}

impl FunctionError {
    /// A failure that a retry may fix.
    pub fn transient(message: impl Into<String>) -> Self {
        FunctionError {
            message: message.into(),
            transient: true,
        }
    }
}

impl From<String> for FunctionError {
    fn from(message: String) -> Self {
        FunctionError {
            message,
            transient: false,
        }
    }
}

impl From<&str> for FunctionError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

/// Functions available to `$function`, by name.
#[derive(Clone, Default)]
pub struct FunctionRegistry {
    functions: HashMap<String, UserFunction>,
}

impl fmt::Debug for FunctionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.functions.keys().collect();
        names.sort();
        f.debug_struct("FunctionRegistry")
            .field("functions", &names)
            .finish()
    }
}

impl FunctionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) a function under `name`.
    pub fn register<F, E>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(&[Value]) -> Result<Value, E> + Send + Sync + 'static,
        E: Into<FunctionError>,
    {
        self.functions.insert(
            name.into(),
            Arc::new(move |args| f(args).map_err(Into::into)),
        );
        self
    }

    /// The function registered under `name`.
    pub fn get(&self, name: &str) -> Option<&UserFunction> {
        self.functions.get(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
