//! Loading and compiling a pipeline file.

use crate::error::CliError;
use std::path::Path;
use stream_core::value::{parse_value, Value};
use stream_core::Pipeline;

/// Reads, parses and compiles the pipeline in `path`.
///
/// The file holds a JSON array of stages, or an object with a `pipeline` field holding
/// that array (a pipeline definition; its other fields, such as `source` or `sink`, are
/// not used by `eval`/`validate`). Extended JSON is accepted, so a stage may compare with
/// `{"$date": "2024-01-01T00:00:00Z"}`.
pub fn load(path: &Path) -> Result<Pipeline, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadPipeline {
        path: path.to_path_buf(),
        source,
    })?;
    let value = parse_value(&text).map_err(|source| CliError::PipelineJson {
        path: path.to_path_buf(),
        source,
    })?;
    let stages = match &value {
        Value::Document(d) => d.get("pipeline").unwrap_or(&value),
        other => other,
    };
    let pipeline = Pipeline::compile(stages)?;
    tracing::debug!(path = %path.display(), stages = ?pipeline.stage_names(), "pipeline compiled");
    Ok(pipeline)
}

/// The `validate` summary line: `ok: 3 stages ($match, $group, $sort)`.
pub fn summary(pipeline: &Pipeline) -> String {
    let names = pipeline.stage_names();
    match names.len() {
        0 => "ok: 0 stages".to_string(),
        1 => format!("ok: 1 stage ({})", names[0]),
        n => format!("ok: {n} stages ({})", names.join(", ")),
    }
}
