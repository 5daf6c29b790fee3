//! Pipeline metrics: counters every handle can read ([`PipelineMetrics::snapshot`]),
//! per-stage [`StageMetrics`] in a [`MetricsRegistry`], and the same figures through the
//! `metrics` crate facade so any exporter (Prometheus in `srotax run --metrics-addr`)
//! can publish them, tagged with the pipeline id and the definition's `metrics.tags`.

use super::connector::Progress;
use crate::pipeline::StageStats;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters of one pipeline, shared between its tasks and its handle.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    records_in: AtomicU64,
    documents_out: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
    checkpoints: AtomicU64,
    lag: AtomicU64,
    watermark: Mutex<Option<i64>>,
    progress: Mutex<Option<Progress>>,
    stages: Mutex<Vec<StageMetrics>>,
    labels: Vec<(String, String)>,
}

/// Per-stage figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMetrics {
    /// Position in the pipeline.
    pub index: usize,
    /// Stage name, e.g. `$group`.
    pub stage: String,
    /// Counters.
    pub stats: StageStats,
}

/// A point-in-time copy of a pipeline's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Records read from the source.
    pub records_in: u64,
    /// Documents acknowledged by the sink.
    pub documents_out: u64,
    /// Documents that failed (skipped, dead-lettered or fatal).
    pub failed: u64,
    /// Failed documents dropped by `skipAndContinue`.
    pub skipped: u64,
    /// Failed documents written to the dead-letter sink.
    pub dead_lettered: u64,
    /// Retry attempts (documents and sink writes).
    pub retries: u64,
    /// Micro-batches processed.
    pub batches: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Records available in the source but not yet read, when the source can tell.
    pub lag: u64,
    /// How far a bounded source has read, when it can tell.
    pub progress: Option<Progress>,
    /// The event-time watermark (epoch milliseconds), when a window uses event time.
    pub watermark: Option<i64>,
    /// Input documents dropped or side-output as late, over all window stages.
    pub late_events: u64,
    /// Entries of operator state held now (open windows, keyed-state keys).
    pub state_entries: u64,
    /// Per-stage figures.
    pub stages: Vec<StageMetrics>,
}

impl PipelineMetrics {
    /// Metrics labelled with the pipeline id, its source and sink connector types
    /// (`source_connector`, `sink_connector`) and the definition's tags (e.g.
    /// `environment`, `tenant`).
    pub fn new(
        pipeline_id: &str,
        source_connector: &str,
        sink_connector: &str,
        tags: &BTreeMap<String, String>,
    ) -> Self {
        let mut labels = vec![
            ("pipeline".to_string(), pipeline_id.to_string()),
            ("source_connector".to_string(), source_connector.to_string()),
            ("sink_connector".to_string(), sink_connector.to_string()),
        ];
        labels.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        PipelineMetrics {
            labels,
            ..Default::default()
        }
    }

    fn labels(&self) -> Vec<metrics::Label> {
        self.labels
            .iter()
            .map(|(k, v)| metrics::Label::new(k.clone(), v.clone()))
            .collect()
    }

    fn add(&self, counter: &AtomicU64, name: &'static str, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(name, self.labels()).increment(n);
        }
    }

    /// Records read from the source.
    pub fn add_records_in(&self, n: u64) {
        self.add(&self.records_in, "stream.records.in", n);
    }
    /// Documents acknowledged by the sink.
    pub fn add_documents_out(&self, n: u64) {
        self.add(&self.documents_out, "stream.documents.out", n);
    }
    /// Failed documents.
    pub fn add_failed(&self, n: u64) {
        self.add(&self.failed, "stream.failures", n);
    }
    /// Skipped documents.
    pub fn add_skipped(&self, n: u64) {
        self.add(&self.skipped, "stream.skipped", n);
    }
    /// Dead-lettered documents.
    pub fn add_dead_lettered(&self, n: u64) {
        self.add(&self.dead_lettered, "stream.dead_lettered", n);
    }
    /// Retry attempts.
    pub fn add_retries(&self, n: u64) {
        self.add(&self.retries, "stream.retries", n);
    }
    /// A checkpoint was written.
    pub fn add_checkpoint(&self) {
        self.add(&self.checkpoints, "stream.checkpoints", 1);
    }

    /// A batch was processed.
    pub fn record_batch(&self, size: usize, duration: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("stream.batch.size", self.labels()).record(size as f64);
        metrics::histogram!("stream.batch.duration", self.labels()).record(duration.as_secs_f64());
    }

    /// The source's progress.
    pub fn set_progress(&self, progress: Option<Progress>) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = progress;
    }

    /// The event-time watermark advanced.
    pub fn set_watermark(&self, watermark: i64) {
        *self.watermark.lock().unwrap_or_else(|p| p.into_inner()) = Some(watermark);
        metrics::gauge!("stream.watermark", self.labels()).set(watermark as f64);
    }

    /// Source lag (records not yet read).
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
        metrics::gauge!("stream.lag", self.labels()).set(lag as f64);
    }

    /// Queue depth and time spent waiting for room in a full queue (`queue`: `source`
    /// or `sink`).
    pub fn record_backpressure(&self, queue: &'static str, depth: usize, wait: Duration) {
        let mut labels = self.labels();
        labels.push(metrics::Label::new("queue", queue));
        metrics::gauge!("stream.backpressure.depth", labels.clone()).set(depth as f64);
        metrics::histogram!("stream.backpressure.wait", labels).record(wait.as_secs_f64());
    }

    /// Replaces the per-stage figures with the run's current counters.
    pub fn set_stages(&self, stats: &[(&'static str, StageStats)]) {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::take(&mut *stages);
        for (i, (name, s)) in stats.iter().enumerate() {
            let before = previous.get(i).map(|m| m.stats).unwrap_or_default();
            let mut labels = self.labels();
            labels.push(metrics::Label::new("stage", format!("{i}:{name}")));
            metrics::counter!("stream.stage.documents.in", labels.clone())
                .increment(s.documents_in.saturating_sub(before.documents_in));
            metrics::counter!("stream.stage.documents.out", labels.clone())
                .increment(s.documents_out.saturating_sub(before.documents_out));
            metrics::counter!("stream.stage.errors", labels.clone())
                .increment(s.errors.saturating_sub(before.errors));
            metrics::counter!("stream.stage.late_events", labels.clone())
                .increment(s.late_events.saturating_sub(before.late_events));
            metrics::gauge!("stream.stage.state_entries", labels.clone())
                .set(s.state_entries as f64);
            metrics::counter!("stream.stage.nanos", labels)
                .increment(s.nanos.saturating_sub(before.nanos));
            stages.push(StageMetrics {
                index: i,
                stage: name.to_string(),
                stats: *s,
            });
        }
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let stages = self
            .stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        MetricsSnapshot {
            watermark: *self.watermark.lock().unwrap_or_else(|p| p.into_inner()),
            late_events: stages.iter().map(|s| s.stats.late_events).sum(),
            state_entries: stages.iter().map(|s| s.stats.state_entries).sum(),
            records_in: get(&self.records_in),
            documents_out: get(&self.documents_out),
            failed: get(&self.failed),
            skipped: get(&self.skipped),
            dead_lettered: get(&self.dead_lettered),
            retries: get(&self.retries),
            batches: get(&self.batches),
            checkpoints: get(&self.checkpoints),
            lag: get(&self.lag),
            progress: *self.progress.lock().unwrap_or_else(|p| p.into_inner()),
            stages,
        }
    }
}

/// The metrics of every pipeline in the process, by pipeline id.
#[derive(Debug, Clone, Default)]
pub struct MetricsRegistry {
    pipelines: Arc<Mutex<BTreeMap<String, Arc<PipelineMetrics>>>>,
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) a pipeline's metrics.
    pub fn register(&self, pipeline_id: &str, metrics: Arc<PipelineMetrics>) {
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pipeline_id.to_string(), metrics);
    }

    /// Snapshots of every pipeline.
    pub fn snapshot(&self) -> BTreeMap<String, MetricsSnapshot> {
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, m)| (k.clone(), m.snapshot()))
            .collect()
    }
}
