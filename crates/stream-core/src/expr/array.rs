//! Expression operators: array family. See `expr/mod.rs` for the compile/eval contract.

use super::CompileFn;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[];
