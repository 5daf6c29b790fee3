//! [`StreamingContext`]: what a running pipeline shares with its handle, its connectors
//! and the application — the source positions of the last checkpoint, the counters
//! (retries, failures, ...) and free-form attributes.

use super::connector::SourcePositions;
use super::metrics::{MetricsSnapshot, PipelineMetrics};
use crate::value::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared, observable state of one running pipeline.
#[derive(Debug)]
pub struct StreamingContext {
    pipeline_id: String,
    metrics: Arc<PipelineMetrics>,
    checkpoint: Mutex<(u64, SourcePositions)>,
    attributes: Mutex<BTreeMap<String, Value>>,
}

impl StreamingContext {
    /// A context for `pipeline_id` reporting through `metrics`.
    pub fn new(pipeline_id: impl Into<String>, metrics: Arc<PipelineMetrics>) -> Self {
        StreamingContext {
            pipeline_id: pipeline_id.into(),
            metrics,
            checkpoint: Mutex::new((0, SourcePositions::new())),
            attributes: Mutex::new(BTreeMap::new()),
        }
    }

    /// The pipeline's id.
    pub fn pipeline_id(&self) -> &str {
        &self.pipeline_id
    }

    /// Sequence number and source positions of the last checkpoint (0 and empty before
    /// the first).
    pub fn checkpointed_positions(&self) -> (u64, SourcePositions) {
        self.checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a written checkpoint.
    pub fn set_checkpoint(&self, sequence: u64, positions: &SourcePositions) {
        *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = (sequence, positions.clone());
    }

    /// Counters, including retries and failures.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Sets a shared attribute.
    pub fn set_attribute(&self, key: impl Into<String>, value: Value) {
        self.attributes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.into(), value);
    }

    /// A shared attribute.
    pub fn attribute(&self, key: &str) -> Option<Value> {
        self.attributes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}

/// Receives a pipeline's counters after every delivered micro-batch (for applications
/// that embed SrotaX and want metrics without an exporter).
pub trait MetricsListener: Send + Sync {
    /// Called after a batch was delivered (and checkpointed, when one was due).
    fn on_batch(&self, pipeline_id: &str, metrics: &MetricsSnapshot);
}
