//! Stages: group family. See `stages/mod.rs` for the compile/run contract.

use super::StageCompileFn;

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] = &[];
