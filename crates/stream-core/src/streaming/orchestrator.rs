//! The streaming orchestrator: fetch → transform → deliver → checkpoint → observe.
//!
//! Each running pipeline is three concurrent parts joined by bounded queues, so a slow
//! sink slows the source down instead of growing memory:
//!
//! ```text
//! source task ──(sourceQueueCapacity batches)──► processing thread ──(queueCapacity)──► sink task
//!      ▲                                        parse in parallel,                        │ write, flush,
//!      └──────────── commit positions ◄───────── run the stages ◄─ checkpoint ◄─────────────┘ checkpoint
//! ```
//!
//! The processing thread parses record payloads on a small worker pool
//! (`workerThreadPoolSize`) keeping only the fields the pipeline reads, then pushes the
//! documents through one [`PipelineRun`] in order, so per-partition order and stateful
//! stages are preserved. After the sink acknowledges a batch (write + flush), the sink
//! task stores the batch's source positions together with the operator state it was
//! produced with, then lets the source commit those positions. A sink may leave a few
//! batches unflushed (`Sink::max_unflushed_batches`), delivering them while it takes the
//! next ones; the sink task still flushes before every checkpoint. A restart restores both
//! and replays what followed: at-least-once delivery.

use super::connector::{
    ConnectorContext, ConnectorError, ConnectorRegistry, ErrorKind, Payload, Rebalance, Record,
    Sink, Source, SourcePositions,
};
use super::context::{MetricsListener, StreamingContext};
use super::definition::{
    DefinitionError, OutputMode, ProcessingGuarantee, StreamingPipelineDefinition, Trigger,
};
use super::error_policy::{Decision, ErrorPolicy};
use super::metrics::{MetricsRegistry, MetricsSnapshot, PipelineMetrics};
use super::partition_state::{
    clear_slices, encode_slices, encoded, is_stateful, load_slices, EncodingSlices, PartitionSlice,
    Runs,
};
use super::state::{
    Checkpoint, MemoryStateStoreProvider, StateError, StateStore, StateStoreProvider,
};
use super::watermark::{EventTimeConfig, WatermarkTracker};
use crate::error::StageError;
use crate::expr::{Ctx, Env, Expr};
use crate::pipeline::{Pipeline, PipelineRun, StageStats};
use crate::stages::time_millis;
use crate::value::{parse_document, parse_document_fields, Document, Str, Value};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// Checkpoints a pipeline keeps in its state store (older ones are pruned), so that an
/// operator can go back a few with `StateStore::restore_checkpoint`.
pub const CHECKPOINTS_KEPT: usize = 10;
/// Pruning runs after every this many checkpoints (listing costs a round trip).
const PRUNE_EVERY: u64 = 10;

/// Why a pipeline stopped with an error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    /// The definition cannot run (bad connector options, unsupported stage placement).
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// The source failed permanently or kept failing.
    #[error("source failed: {0}")]
    Source(ConnectorError),
    /// The sink failed and the error policy gave up.
    #[error("sink failed: {0}")]
    Sink(ConnectorError),
    /// The dead-letter sink failed: the failed documents could not be kept.
    #[error("dead-letter sink failed: {0}")]
    DeadLetter(ConnectorError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A document failed and the error policy is `failFast`.
    #[error("document failed (error policy failFast): {0}")]
    Document(String),
    /// The stored checkpoint does not fit the pipeline.
    #[error("cannot restore the checkpoint: {0}")]
    Restore(StageError),
    /// Exactly-once: no stored checkpoint fits what the sink's transactions committed.
    #[error("cannot resume exactly-once: {0}")]
    CheckpointMismatch(String),
    /// A task of the pipeline ended abnormally.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Lifecycle of a running pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineStatus {
    /// Restoring the checkpoint and connecting.
    Starting,
    /// Processing.
    Running,
    /// `stop()` was called: draining in-flight batches.
    Stopping,
    /// A bounded input was fully processed.
    Completed,
    /// Stopped on request after a final checkpoint.
    Stopped,
    /// Stopped by an error.
    Failed(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The pipeline.
    pub pipeline_id: String,
    /// `Completed` or `Stopped`.
    pub status: PipelineStatus,
    /// Final counters.
    pub metrics: MetricsSnapshot,
    /// Wall-clock duration of the run.
    pub duration: Duration,
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Ignore (and delete) a stored checkpoint: start from the beginning.
    pub reset: bool,
}

/// Runs streaming pipelines. Register connector and state-store providers, then
/// [`StreamingPipelineOrchestrator::run`] each definition; several pipelines run side by
/// side, each with its own handle.
pub struct StreamingPipelineOrchestrator {
    connectors: ConnectorRegistry,
    state_stores: HashMap<String, Arc<dyn StateStoreProvider>>,
    metrics: MetricsRegistry,
    listeners: Vec<Arc<dyn MetricsListener>>,
}

impl std::fmt::Debug for StreamingPipelineOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut stores: Vec<&String> = self.state_stores.keys().collect();
        stores.sort();
        f.debug_struct("StreamingPipelineOrchestrator")
            .field("connectors", &self.connectors)
            .field("state_stores", &stores)
            .finish()
    }
}

impl StreamingPipelineOrchestrator {
    /// An orchestrator using these connectors and the in-memory state store.
    pub fn new(connectors: ConnectorRegistry) -> Self {
        let mut o = StreamingPipelineOrchestrator {
            connectors,
            state_stores: HashMap::new(),
            metrics: MetricsRegistry::new(),
            listeners: Vec::new(),
        };
        o.register_state_store(Arc::new(MemoryStateStoreProvider::default()));
        o
    }

    /// Adds a state-store provider (file, Redis, SQL, ...).
    pub fn register_state_store(&mut self, provider: Arc<dyn StateStoreProvider>) -> &mut Self {
        self.state_stores
            .insert(provider.store_type().to_string(), provider);
        self
    }

    /// Adds a listener called with a pipeline's counters after every delivered batch of
    /// every pipeline started afterwards.
    pub fn add_metrics_listener(&mut self, listener: Arc<dyn MetricsListener>) -> &mut Self {
        self.listeners.push(listener);
        self
    }

    /// Metrics of every pipeline started by this orchestrator.
    pub fn metrics_registry(&self) -> &MetricsRegistry {
        &self.metrics
    }

    /// Starts a pipeline on the current tokio runtime.
    pub fn run(
        &self,
        def: StreamingPipelineDefinition,
    ) -> Result<StreamingPipelineHandle, DefinitionError> {
        self.run_with(def, RunOptions::default())
    }

    /// Starts a pipeline with options.
    pub fn run_with(
        &self,
        def: StreamingPipelineDefinition,
        options: RunOptions,
    ) -> Result<StreamingPipelineHandle, DefinitionError> {
        let pipeline = def.compile_pipeline()?;
        let metrics = Arc::new(PipelineMetrics::new(
            &def.pipeline_id,
            &def.source.connector_type,
            &def.sink.connector_type,
            &def.metric_tags,
        ));
        let context = Arc::new(StreamingContext::new(&def.pipeline_id, metrics.clone()));
        let ctx = ConnectorContext {
            pipeline_id: def.pipeline_id.clone(),
            context: context.clone(),
        };
        let source = self.connectors.create_source(&def.source, &ctx)?;
        let sink = self.connectors.create_sink(&def.sink, &ctx)?;
        let dead_letter = def
            .error_policy
            .dead_letter()
            .map(|c| self.connectors.create_sink(c, &ctx))
            .transpose()?;
        let store = self
            .state_stores
            .get(&def.state.connector_type)
            .ok_or_else(|| {
                let mut known: Vec<&str> = self.state_stores.keys().map(String::as_str).collect();
                known.sort_unstable();
                DefinitionError::new(
                    "state.type",
                    format!(
                        "unknown state store '{}' (available: {})",
                        def.state.connector_type,
                        known.join(", ")
                    ),
                )
            })?
            .create(&def.state, &def.pipeline_id)?;
        let event_time = EventTimeConfig::parse(&def.source)?;
        if dead_letter.is_none() && uses_late_side_output(&def.pipeline) {
            return Err(DefinitionError::new(
                "errorPolicy",
                "a window with lateData \"sideOutput\" sends late events to the dead-letter sink; configure one: \"errorPolicy\": {\"deadLetter\": {...}}",
            ));
        }
        if def.runtime.processing_guarantee == ProcessingGuarantee::ExactlyOnce
            && !sink.is_transactional()
            && sink.committed_position().is_none()
        {
            return Err(DefinitionError::new(
                "runtime.processingGuarantee",
                format!(
                    "the {} sink can neither commit transactions nor roll back to a checkpoint, so it cannot give exactly-once output; use \"at_least_once\"",
                    def.sink.connector_type
                ),
            ));
        }
        let unbounded = !source.is_bounded() && def.runtime.trigger != Trigger::AvailableNow;
        if unbounded {
            if let Some(problem) = pipeline.start().unbounded_input_problem() {
                return Err(DefinitionError::new("pipeline", problem));
            }
        }
        self.metrics.register(&def.pipeline_id, metrics.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(None);
        let status = Arc::new(Mutex::new(PipelineStatus::Starting));
        let parts = Parts {
            def,
            event_time,
            pipeline,
            source,
            sink,
            dead_letter,
            store,
            reset: options.reset,
            metrics: metrics.clone(),
            context: context.clone(),
            listeners: self.listeners.clone(),
            status: status.clone(),
            stop: stop_rx,
        };
        let pipeline_id = parts.def.pipeline_id.clone();
        let task_status = status.clone();
        tokio::spawn(async move {
            let id = parts.def.pipeline_id.clone();
            let result = drive(parts).await;
            let final_status = match &result {
                Ok(summary) => summary.status.clone(),
                Err(e) => {
                    warn!(pipeline = %id, error = %e, "pipeline failed");
                    PipelineStatus::Failed(e.to_string())
                }
            };
            *task_status.lock().unwrap_or_else(|p| p.into_inner()) = final_status;
            let _ = done_tx.send(Some(result));
        });
        Ok(StreamingPipelineHandle {
            pipeline_id,
            stop: stop_tx,
            status,
            metrics,
            context,
            done: done_rx,
        })
    }
}

/// Controls one running pipeline.
#[derive(Debug)]
pub struct StreamingPipelineHandle {
    pipeline_id: String,
    stop: watch::Sender<bool>,
    status: Arc<Mutex<PipelineStatus>>,
    metrics: Arc<PipelineMetrics>,
    context: Arc<StreamingContext>,
    done: watch::Receiver<Option<Result<RunSummary, RunError>>>,
}

impl StreamingPipelineHandle {
    /// The pipeline's id.
    pub fn pipeline_id(&self) -> &str {
        &self.pipeline_id
    }

    /// Graceful stop: stop fetching, drain in-flight batches, write a final checkpoint.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*status, PipelineStatus::Starting | PipelineStatus::Running) {
            *status = PipelineStatus::Stopping;
        }
    }

    /// Waits until the pipeline ends (or `timeout` passes: `None`).
    pub async fn await_termination(
        &self,
        timeout: Option<Duration>,
    ) -> Option<Result<RunSummary, RunError>> {
        let mut rx = self.done.clone();
        let wait = async {
            loop {
                if let Some(r) = rx.borrow_and_update().clone() {
                    return Some(r);
                }
                if rx.changed().await.is_err() {
                    return Some(Err(RunError::Internal(
                        "the pipeline task ended without a result".into(),
                    )));
                }
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, wait).await.ok().flatten(),
            None => wait.await,
        }
    }

    /// Current status.
    pub fn status(&self) -> PipelineStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Current counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The pipeline's shared context (checkpointed positions, attributes).
    pub fn context(&self) -> &Arc<StreamingContext> {
        &self.context
    }
}

struct Parts {
    def: StreamingPipelineDefinition,
    event_time: EventTimeConfig,
    pipeline: Pipeline,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    dead_letter: Option<Box<dyn Sink>>,
    store: Arc<dyn StateStore>,
    reset: bool,
    metrics: Arc<PipelineMetrics>,
    context: Arc<StreamingContext>,
    listeners: Vec<Arc<dyn MetricsListener>>,
    status: Arc<Mutex<PipelineStatus>>,
    stop: watch::Receiver<bool>,
}

enum SourceMsg {
    /// Records (possibly none: a heartbeat that lets processing-time triggers fire).
    Batch(Vec<Record>),
    /// A bounded input ended (or `availableNow` drained what was available).
    End,
    /// `stop()` was called.
    Stop,
    /// Partitions are revoked: checkpoint everything read so far, then answer.
    Revoke(Vec<String>, oneshot::Sender<()>),
    /// Partitions are assigned, with their saved state (per-partition state only).
    Assign(Vec<(String, Option<PartitionSlice>)>),
}

/// What the processing thread hands to the sink task.
struct SinkMsg {
    documents: Vec<Document>,
    dead_letters: Vec<Document>,
    /// The checkpoint to save once this message is delivered.
    checkpoint: Option<PendingCheckpoint>,
    /// Answered once the checkpoint is saved and its positions sent to be committed
    /// (a rebalance waits for it before releasing partitions).
    handoff: Option<oneshot::Sender<()>>,
}

/// What the processing thread checkpoints.
struct PendingCheckpoint {
    positions: SourcePositions,
    /// Operator state (empty with per-partition state).
    state: Vec<Value>,
    /// With per-partition state, the checkpoint is these slices (being encoded).
    slices: Option<EncodingSlices>,
}

async fn drive(mut p: Parts) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let id = p.def.pipeline_id.clone();
    if p.reset {
        info!(pipeline = %id, "ignoring the stored checkpoint (--reset)");
        p.store.clear_checkpoint(&id).await?;
        clear_slices(&*p.store, &id).await?;
    }
    let mut run = p.pipeline.start();
    // State moves with partitions between processes (see `partition_state`). Not with
    // event time (the watermark is per process) nor exactly-once (whose checkpoints
    // are matched against the sink's committed transaction as a whole).
    let per_partition = p.source.partitions_move()
        && is_stateful(&run)
        && !run.uses_event_time()
        && p.def.runtime.processing_guarantee == ProcessingGuarantee::AtLeastOnce;
    let mut tracker = run
        .uses_event_time()
        .then(|| WatermarkTracker::new(p.event_time.watermark.clone()));
    let mut positions = SourcePositions::new();
    let mut sequence = 0;
    // Under exactly-once with a transactional sink, the sink's transaction commits the
    // source positions (a Kafka consumer group's offsets) with the output.
    let transactional = p.def.runtime.processing_guarantee == ProcessingGuarantee::ExactlyOnce
        && p.sink.is_transactional();
    let restored = if per_partition {
        None // each partition's state is loaded when the partition is assigned
    } else if transactional {
        transactional_checkpoint(&mut p).await?
    } else {
        p.store.load_checkpoint(&id).await?
    };
    if let Some(cp) = restored {
        info!(pipeline = %id, sequence = cp.sequence, "resuming from checkpoint");
        p.source
            .seek(&cp.positions)
            .await
            .map_err(RunError::Source)?;
        let mut states = cp.operator_state.to_vec();
        if tracker.is_some() && !states.is_empty() {
            // The watermark tracker's state follows the stages' states.
            let state = states.pop().unwrap_or(Value::Null);
            if let Some(t) = tracker.as_mut() {
                t.restore_state(&state, Instant::now())
                    .map_err(RunError::Internal)?;
            }
        }
        if !states.is_empty() {
            run.restore_state(&states).map_err(RunError::Restore)?;
        }
        if !matches!(cp.sink_position, Value::Null) {
            p.sink
                .restore_position(&cp.sink_position)
                .await
                .map_err(RunError::Sink)?;
        }
        positions = cp.positions;
        sequence = cp.sequence;
    } else if let Some(sink_position) = p.sink.committed_position().filter(|_| !per_partition) {
        // A first checkpoint before anything is read records where the sink's output
        // starts, so a crash before the first regular checkpoint rolls it back too.
        let initial = Checkpoint {
            pipeline_id: id.clone(),
            sequence: 0,
            positions: SourcePositions::new(),
            operator_state: Arc::from([]),
            sink_position,
            created_at: chrono::Utc::now().timestamp_millis(),
        };
        p.store.save_checkpoint(&initial).await?;
    }
    set_status(&p.status, PipelineStatus::Running);

    let rt = &p.def.runtime;
    let (src_tx, src_rx) = mpsc::channel(rt.source_queue_capacity);
    let (sink_tx, sink_rx) = mpsc::channel(rt.queue_capacity);
    let (commit_tx, commit_rx) = mpsc::unbounded_channel();
    let bounded = p.source.is_bounded();
    let fetch = FetchSettings {
        batch_size: rt.micro_batch_size,
        max_wait: rt.max_batch_delay,
        available_now: rt.trigger == Trigger::AvailableNow,
    };
    let source_task = tokio::spawn(source_loop(
        p.source,
        src_tx,
        commit_rx,
        p.stop.clone(),
        fetch,
        p.metrics.clone(),
        ErrorPolicy::new(&p.def.error_policy),
        per_partition.then(|| (p.store.clone(), id.clone())),
    ));

    let prefix_len = p.pipeline.stateless_prefix_len();
    let input_fields = match (p.pipeline.input_fields(), &p.event_time.time_fields) {
        (Some(f), Some(t)) => {
            let mut all = f.to_vec();
            all.extend(t.iter().filter(|t| !f.contains(t)).cloned());
            Some(all)
        }
        _ => None,
    };
    let parser = Parser {
        input_fields,
        time_field: p.event_time.time_field.clone(),
        env: run.env().clone(),
        keep_original: ErrorPolicy::new(&p.def.error_policy).needs_original(),
        workers: rayon::ThreadPoolBuilder::new()
            .num_threads(rt.worker_thread_pool_size.max(1))
            .thread_name(|i| format!("srotax-worker-{i}"))
            .build()
            .map_err(|e| RunError::Internal(format!("cannot start worker threads: {e}")))?,
        prefix_len,
        prefix_runs: (0..rt.worker_thread_pool_size.max(1) * CHUNKS_PER_WORKER)
            .map(|_| p.pipeline.start_prefix(prefix_len, run.env().clone()))
            .collect(),
    };
    // Two parsed batches in flight: enough to overlap parsing with processing.
    let (work_tx, work_rx) = mpsc::channel(2);
    let parse_task = tokio::task::spawn_blocking(move || parser.run(src_rx, work_tx));
    let processing = Processing {
        pipeline_id: id.clone(),
        policy: ErrorPolicy::new(&p.def.error_policy),
        trigger: rt.trigger,
        complete: rt.output_mode == OutputMode::Complete,
        bounded,
        checkpoint_interval: rt.checkpoint_interval,
        metrics: p.metrics.clone(),
        prefix_len,
        prefix_stats: Vec::new(),
        tracker,
        last_watermark: Instant::now(),
        batch_started: Instant::now(),
    };
    let runs = Runs::new(&p.pipeline, run, per_partition);
    let process_task =
        tokio::task::spawn_blocking(move || processing.run(runs, positions, work_rx, sink_tx));

    let delivery = Delivery {
        pipeline_id: id.clone(),
        sink: p.sink,
        dead_letter: p.dead_letter,
        store: p.store,
        policy: ErrorPolicy::new(&p.def.error_policy),
        metrics: p.metrics.clone(),
        context: p.context.clone(),
        listeners: p.listeners.clone(),
        sequence,
        transactional,
    };
    let sink_result = delivery.run(sink_rx, commit_tx).await;
    parse_task
        .await
        .map_err(|e| RunError::Internal(format!("parser thread: {e}")))?;
    let process_result = process_task
        .await
        .map_err(|e| RunError::Internal(format!("processing thread: {e}")))?;
    let source_result = source_task
        .await
        .map_err(|e| RunError::Internal(format!("source task: {e}")))?;
    // The first failure in data-flow order is the cause; later ones are consequences.
    source_result?;
    let ended = process_result?;
    sink_result?;
    let status = match ended {
        Ending::EndOfInput => PipelineStatus::Completed,
        Ending::Stopped => PipelineStatus::Stopped,
    };
    Ok(RunSummary {
        pipeline_id: id,
        status,
        metrics: p.metrics.snapshot(),
        duration: started.elapsed(),
    })
}

/// Exactly-once restart: the checkpoint to resume from is the one whose positions equal
/// what the sink's last committed transaction committed upstream (the source's
/// committed positions): the latest checkpoint, or the one before it when the process
/// died between saving the latest and committing its transaction.
async fn transactional_checkpoint(p: &mut Parts) -> Result<Option<Checkpoint>, RunError> {
    let id = &p.def.pipeline_id;
    let Some(committed) = p
        .source
        .committed_positions()
        .await
        .map_err(RunError::Source)?
    else {
        return Err(RunError::Definition(DefinitionError::new(
            "runtime.processingGuarantee",
            format!(
                "exactly_once with the transactional {} sink needs a source whose positions the transaction commits (kafka); the {} source has none",
                p.def.sink.connector_type, p.def.source.connector_type
            ),
        )));
    };
    let Some(latest) = p.store.load_checkpoint(id).await? else {
        if !committed.is_empty() {
            info!(pipeline = %id, "no checkpoint: resuming from the source's committed positions with empty state");
        }
        return Ok(None);
    };
    let matches = |positions: &SourcePositions| {
        positions.len() == committed.len()
            && positions
                .iter()
                .all(|(k, v)| committed.get(k).is_some_and(|c| c.identical(v)))
    };
    if matches(&latest.positions) {
        return Ok(Some(latest));
    }
    // The checkpoint before the latest, from the store's history.
    let previous = match p
        .store
        .list_checkpoints(id)
        .await?
        .into_iter()
        .rfind(|s| *s < latest.sequence)
    {
        Some(sequence) => p.store.load_checkpoint_at(id, sequence).await?,
        None => None,
    };
    let empty = SourcePositions::new();
    if matches(previous.as_ref().map_or(&empty, |c| &c.positions)) {
        info!(pipeline = %id, sequence = latest.sequence, "the latest checkpoint's transaction was not committed: resuming from the one before");
        return Ok(match previous {
            // Saved again as the latest, so the next run does not pick the bad one.
            Some(cp) => Some(p.store.restore_checkpoint(id, cp.sequence).await?),
            None => {
                p.store.clear_checkpoint(id).await?;
                None
            }
        });
    }
    Err(RunError::CheckpointMismatch(format!(
        "neither the latest checkpoint (sequence {}) nor the one before it has the positions the sink's last transaction committed upstream; the state store and the source disagree (run with --reset to start over)",
        latest.sequence
    )))
}

fn set_status(status: &Mutex<PipelineStatus>, s: PipelineStatus) {
    let mut guard = status.lock().unwrap_or_else(|p| p.into_inner());
    if *guard != PipelineStatus::Stopping {
        *guard = s;
    }
}

struct FetchSettings {
    batch_size: usize,
    max_wait: Duration,
    available_now: bool,
}

#[allow(clippy::too_many_arguments)]
async fn source_loop(
    mut source: Box<dyn Source>,
    tx: mpsc::Sender<SourceMsg>,
    mut commits: mpsc::UnboundedReceiver<SourcePositions>,
    stop: watch::Receiver<bool>,
    fetch: FetchSettings,
    metrics: Arc<PipelineMetrics>,
    mut policy: ErrorPolicy,
    partition_store: Option<(Arc<dyn StateStore>, String)>,
) -> Result<(), RunError> {
    let mut attempt = 1;
    loop {
        while let Ok(p) = commits.try_recv() {
            commit(&mut *source, &p).await;
        }
        if *stop.borrow() {
            let _ = tx.send(SourceMsg::Stop).await;
            break;
        }
        match source.next_batch(fetch.batch_size, fetch.max_wait).await {
            Ok(batch) => {
                attempt = 1;
                let progress = source.progress();
                if let Some(lag) = source
                    .lag()
                    .or(progress.map(|p| p.total.saturating_sub(p.done)))
                {
                    metrics.set_lag(lag);
                }
                metrics.set_progress(progress);
                // A fetch cut short by a rebalance (the group's first assignment among
                // them) is empty without the input being drained.
                let rebalancing = source.take_rebalance();
                let end = batch.end_of_input
                    || (fetch.available_now && batch.records.is_empty() && rebalancing.is_none());
                if !batch.records.is_empty() || !end {
                    let depth = tx.max_capacity() - tx.capacity();
                    let waited = Instant::now();
                    if tx.send(SourceMsg::Batch(batch.records)).await.is_err() {
                        break; // processing stopped; its error explains why
                    }
                    metrics.record_backpressure("source", depth, waited.elapsed());
                }
                if end {
                    debug!("source: end of input");
                    let _ = tx.send(SourceMsg::End).await;
                    break;
                }
                if let Some(r) = rebalancing {
                    let handled =
                        rebalance(&mut *source, r, &tx, &mut commits, partition_store.as_ref())
                            .await?;
                    if !handled {
                        break; // processing stopped; its error explains why
                    }
                }
            }
            Err(e) => match policy.decide(e.kind, attempt) {
                Decision::Retry(delay) => {
                    warn!(error = %e, attempt, "source fetch failed; retrying");
                    metrics.add_retries(1);
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(RunError::Source(e)),
            },
        }
    }
    drop(tx);
    // Keep committing until the sink task is done with its final checkpoint.
    while let Some(p) = commits.recv().await {
        commit(&mut *source, &p).await;
    }
    Ok(())
}

/// Hands partitions over: revoked ones are checkpointed and their positions committed
/// before the source releases them; assigned ones get their saved state (and are read
/// from its position) before any of their records. False when processing stopped.
async fn rebalance(
    source: &mut dyn Source,
    r: Rebalance,
    tx: &mpsc::Sender<SourceMsg>,
    commits: &mut mpsc::UnboundedReceiver<SourcePositions>,
    partition_store: Option<&(Arc<dyn StateStore>, String)>,
) -> Result<bool, RunError> {
    if !r.revoked.is_empty() {
        let (done_tx, done_rx) = oneshot::channel();
        if tx
            .send(SourceMsg::Revoke(r.revoked, done_tx))
            .await
            .is_err()
            || done_rx.await.is_err()
        {
            return Ok(false);
        }
        // The sink task sent the checkpoint's positions before answering.
        while let Ok(p) = commits.try_recv() {
            commit(source, &p).await;
        }
    }
    if let (false, Some((store, pipeline_id))) = (r.assigned.is_empty(), partition_store) {
        let mut slices = load_slices(&**store, pipeline_id, &r.assigned).await?;
        let start: SourcePositions = slices
            .iter()
            .map(|(name, slice)| (name.clone(), slice.position.clone()))
            .collect();
        source.seek(&start).await.map_err(RunError::Source)?;
        let assigned = r
            .assigned
            .into_iter()
            .map(|name| {
                let slice = slices.remove(&name);
                (name, slice)
            })
            .collect();
        if tx.send(SourceMsg::Assign(assigned)).await.is_err() {
            return Ok(false);
        }
    }
    source.finish_rebalance().await.map_err(RunError::Source)?;
    Ok(true)
}

async fn commit(source: &mut dyn Source, positions: &SourcePositions) {
    // The checkpoint already holds these positions; a failed commit only means the
    // upstream system (e.g. a Kafka consumer group) sees progress later.
    if let Err(e) = source.commit(positions).await {
        warn!(error = %e, "committing source positions failed; they are safe in the checkpoint");
    }
}

enum Ending {
    EndOfInput,
    Stopped,
}

struct Processing {
    pipeline_id: String,
    policy: ErrorPolicy,
    trigger: Trigger,
    complete: bool,
    bounded: bool,
    checkpoint_interval: Duration,
    metrics: Arc<PipelineMetrics>,
    /// Leading stateless stages, already run by the [`Parser`]'s workers.
    prefix_len: usize,
    /// Their counters, as last reported by the parser.
    prefix_stats: Vec<StageStats>,
    /// Event-time progress, when a stage uses event time.
    tracker: Option<WatermarkTracker>,
    /// When the watermark was last advanced (for `emitInterval`).
    last_watermark: Instant,
    /// When the current micro-batch started processing (the arrival time the watermark
    /// tracker records: reading the clock per record would cost more than it tells).
    batch_started: Instant,
}

/// Parses record payloads and runs the pipeline's stateless prefix on a worker pool,
/// on its own thread, so parsing batch N+1 overlaps with processing batch N.
struct Parser {
    input_fields: Option<Vec<Str>>,
    /// The source's `timeField`, evaluated on each parsed document.
    time_field: Option<Expr>,
    env: Env,
    keep_original: bool,
    workers: rayon::ThreadPool,
    prefix_len: usize,
    /// One run of the prefix stages per chunk of a batch.
    prefix_runs: Vec<PipelineRun>,
}

/// A batch is cut into this many chunks per worker: the workers share the cores with the
/// source, processing and sink threads, and small chunks let an idle worker steal work
/// from one that was descheduled instead of waiting for it.
const CHUNKS_PER_WORKER: usize = 4;

/// What the parser hands to the processing thread.
enum WorkMsg {
    /// Parsed records in input order (in chunks), and the prefix stages' counters so far.
    Batch(Vec<Vec<Parsed>>, Vec<StageStats>),
    /// The input ended.
    End,
    /// `stop()` was called.
    Stop,
    /// See [`SourceMsg::Revoke`].
    Revoke(Vec<String>, oneshot::Sender<()>),
    /// See [`SourceMsg::Assign`].
    Assign(Vec<(String, Option<PartitionSlice>)>),
}

impl Parser {
    fn run(mut self, mut rx: mpsc::Receiver<SourceMsg>, tx: mpsc::Sender<WorkMsg>) {
        while let Some(msg) = rx.blocking_recv() {
            let work = match msg {
                SourceMsg::Batch(records) => {
                    let parsed = self.parse(records);
                    WorkMsg::Batch(parsed, self.prefix_stats())
                }
                SourceMsg::End => WorkMsg::End,
                SourceMsg::Stop => WorkMsg::Stop,
                SourceMsg::Revoke(partitions, done) => WorkMsg::Revoke(partitions, done),
                SourceMsg::Assign(slices) => WorkMsg::Assign(slices),
            };
            if tx.blocking_send(work).is_err() {
                return; // processing stopped; its error explains why
            }
        }
    }

    /// Counters of the prefix stages summed over the workers.
    fn prefix_stats(&self) -> Vec<StageStats> {
        let mut total = vec![StageStats::default(); self.prefix_len];
        for run in &self.prefix_runs {
            for (t, (_, s)) in total.iter_mut().zip(run.stage_stats()) {
                t.documents_in += s.documents_in;
                t.documents_out += s.documents_out;
                t.errors += s.errors;
                t.nanos += s.nanos;
            }
        }
        total
    }

    /// Parses JSON payloads on the worker pool, keeping only the fields the pipeline
    /// reads, and runs the pipeline's stateless prefix (`$match`, `$project`, ...) there
    /// too, so the one thread that must see documents in order gets less to do.
    /// Returns the parsed records in input order, in chunks (flattening them would move
    /// every record once more).
    fn parse(&mut self, records: Vec<Record>) -> Vec<Vec<Parsed>> {
        let keep_original = self.keep_original;
        let fields = self.input_fields.as_deref();
        let prefix_len = self.prefix_len;
        let (time_field, env) = (self.time_field.as_ref(), &self.env);
        // `buf` receives the prefix's outputs; reused, so a kept document costs no vector.
        let parse_one = |r: Record, prefix: Option<&mut PipelineRun>, buf: &mut Vec<_>| {
            let (document, raw) = match r.payload {
                // A document source (generator, memory) gives whole documents: drop
                // the fields the pipeline never reads here, on the workers, rather than
                // carry (and, in hopping windows, copy) them through every stage. The
                // error policy's copy of the original keeps them all.
                Payload::Document(mut d) => {
                    if let (Some(f), false) = (fields, keep_original) {
                        d.retain(|k, _| f.contains(k));
                    }
                    (Ok(d), None)
                }
                Payload::Json(text) => {
                    let doc = match fields {
                        Some(f) => parse_document_fields(&text, f),
                        None => parse_document(&text),
                    };
                    // The text is kept when the record may be dead-lettered: the parsed
                    // document holds only the fields the pipeline reads, a dead letter
                    // must carry the whole input.
                    let keep_text = doc.is_err() || keep_original;
                    (doc.map_err(|e| e.to_string()), keep_text.then_some(text))
                }
            };
            let mut event_time = r.event_time;
            let document = match (document, time_field) {
                (Ok(d), Some(expr)) => match event_time_of(expr, &d, env) {
                    Ok(t) => {
                        event_time = Some(t);
                        Ok(d)
                    }
                    Err(m) => Err(m),
                },
                (document, _) => document,
            };
            let original = match &document {
                Ok(d) if keep_original => Some(d.clone()),
                _ => None,
            };
            let document = document.map(|d| match prefix {
                Some(run) if prefix_len > 0 => {
                    let mut errors = Vec::new();
                    run.push(d, buf, &mut errors);
                    match (buf.len(), errors.is_empty()) {
                        (1, true) => Ready::PrefixedOne(buf.remove(0)),
                        // Filtered out: `buf` keeps its memory for the next document.
                        (0, _) => Ready::Prefixed {
                            outputs: Vec::new(),
                            errors,
                        },
                        _ => Ready::Prefixed {
                            outputs: std::mem::take(buf),
                            errors,
                        },
                    }
                }
                _ => Ready::Document(d),
            });
            Parsed {
                document,
                raw,
                original,
                partition: r.partition,
                position: r.position,
                event_time,
            }
        };
        if records.len() < 64 {
            let mut prefix = self.prefix_runs.first_mut();
            let mut buf = Vec::new();
            return vec![records
                .into_iter()
                .map(|r| parse_one(r, prefix.as_deref_mut(), &mut buf))
                .collect()];
        }
        // Contiguous chunks, each with its own prefix run; results keep the input order.
        let chunk = records.len().div_ceil(self.prefix_runs.len().max(1));
        // Cut from the end, so each record is moved once.
        let mut chunks: Vec<Vec<Record>> = Vec::new();
        let mut rest = records;
        while rest.len() > chunk {
            let at = (rest.len() - 1) / chunk * chunk;
            chunks.push(rest.split_off(at));
        }
        chunks.push(rest);
        chunks.reverse();
        let runs = &mut self.prefix_runs;
        self.workers.install(|| {
            chunks
                .into_par_iter()
                .zip(runs.par_iter_mut())
                .map(|(chunk, run)| {
                    let mut buf = Vec::new();
                    chunk
                        .into_iter()
                        .map(|r| parse_one(r, Some(&mut *run), &mut buf))
                        .collect()
                })
                .collect()
        })
    }
}

/// A record after parsing, with what is needed to report it if it fails.
struct Parsed {
    document: Result<Ready, String>,
    /// The record's JSON text, kept when it failed to parse or may be dead-lettered.
    raw: Option<String>,
    /// A copy of the parsed document, kept when the error policy may need it.
    original: Option<Document>,
    partition: Arc<str>,
    position: Value,
    /// Event time from `timeField` or the record.
    event_time: Option<i64>,
}

/// Evaluates the source's `timeField` on a document.
fn event_time_of(expr: &Expr, doc: &Document, env: &Env) -> Result<i64, String> {
    let v = expr
        .eval(&Ctx::new(doc, env))
        .map_err(|e| format!("source.timeField: {e}"))?;
    time_millis(&v).ok_or_else(|| {
        format!(
            "source.timeField: expected a date or epoch milliseconds, found {}",
            v.to_json()
        )
    })
}

/// True when some window stage of the pipeline sends late events to the side output.
fn uses_late_side_output(v: &Value) -> bool {
    match v {
        Value::Document(d) => d.iter().any(|(k, v)| {
            (k == "lateData" && v.as_str() == Some("sideOutput")) || uses_late_side_output(v)
        }),
        Value::Array(items) => items.iter().any(uses_late_side_output),
        _ => false,
    }
}

/// A parsed document, possibly already through the pipeline's stateless prefix.
enum Ready {
    /// Not yet processed by any stage.
    Document(Document),
    /// The only output of the first `prefix_len` stages, which had no error: the common
    /// case (a `$match` keeping the document), carried without a vector to allocate.
    PrefixedOne(Document),
    /// The outputs (and errors) of the first `prefix_len` stages.
    Prefixed {
        outputs: Vec<Document>,
        errors: Vec<StageError>,
    },
}

impl Processing {
    fn run(
        mut self,
        mut runs: Runs,
        mut positions: SourcePositions,
        mut rx: mpsc::Receiver<WorkMsg>,
        tx: mpsc::Sender<SinkMsg>,
    ) -> Result<Ending, RunError> {
        let mut last_trigger = Instant::now();
        let mut last_checkpoint = Instant::now();
        loop {
            let Some(msg) = rx.blocking_recv() else {
                // The source failed; its error is reported by the source task.
                return Ok(Ending::Stopped);
            };
            let started = Instant::now();
            self.batch_started = started;
            let mut out = Vec::new();
            let mut dead_letters = Vec::new();
            let mut handoff = None;
            let ending = match msg {
                WorkMsg::Batch(items, prefix_stats) => {
                    let n: usize = items.iter().map(Vec::len).sum();
                    self.metrics.add_records_in(n as u64);
                    self.prefix_stats = prefix_stats;
                    for item in items.into_iter().flatten() {
                        let run = runs.get(&item.partition);
                        self.process(run, item, &mut positions, &mut out, &mut dead_letters)?;
                    }
                    // A bounded input behaves as a batch: its results come once, at the
                    // end, exactly as `srotax eval` would give them.
                    let fire = !self.bounded
                        && match self.trigger {
                            Trigger::Continuous => true,
                            Trigger::ProcessingTime(interval) => last_trigger.elapsed() >= interval,
                            Trigger::AvailableNow => false,
                        };
                    for run in runs.all() {
                        self.advance_time(run, &mut out, &mut dead_letters)?;
                        if fire {
                            self.trigger(run, &mut out, &mut dead_letters)?;
                        }
                    }
                    if fire {
                        last_trigger = Instant::now();
                    }
                    self.metrics.record_batch(n, started.elapsed());
                    None
                }
                WorkMsg::End => {
                    let finish = self.bounded || runs.any().unbounded_input_problem().is_some();
                    for run in runs.all() {
                        if finish {
                            let mut errors = Vec::new();
                            run.finish(&mut out, &mut errors);
                            self.handle_stage_errors(errors, &mut dead_letters)?;
                        } else {
                            self.trigger(run, &mut out, &mut dead_letters)?;
                        }
                    }
                    Some(Ending::EndOfInput)
                }
                WorkMsg::Stop => Some(Ending::Stopped),
                WorkMsg::Revoke(partitions, done) => {
                    // Checkpointed now, with everything read from them; then released.
                    handoff = Some((partitions, done));
                    None
                }
                WorkMsg::Assign(slices) => {
                    for (partition, slice) in &slices {
                        runs.assign(partition, slice.as_ref(), &mut positions)
                            .map_err(RunError::Restore)?;
                    }
                    continue;
                }
            };
            self.metrics.set_stages(&self.stage_stats(&runs));
            if ending.is_some() {
                debug!(pipeline = %self.pipeline_id, documents = out.len(), elapsed_ms = started.elapsed().as_millis() as u64, "end of input: results emitted");
            }
            let checkpoint_due = ending.is_some()
                || handoff.is_some()
                || last_checkpoint.elapsed() >= self.checkpoint_interval;
            if checkpoint_due && !out.is_empty() {
                // The output goes first, so the sink delivers it while the state is
                // snapshotted (at the end of an `availableNow` run, the whole `$group`
                // table); the checkpoint follows in its own message, and the sink
                // flushes before saving it, so it still covers only delivered output.
                let msg = SinkMsg {
                    documents: std::mem::take(&mut out),
                    dead_letters: std::mem::take(&mut dead_letters),
                    checkpoint: None,
                    handoff: None,
                };
                if !self.send(&tx, msg) {
                    return Ok(Ending::Stopped);
                }
            }
            let checkpoint = match ending {
                // A finished bounded run has no state left to resume with.
                Some(Ending::EndOfInput) if self.bounded => Some(PendingCheckpoint {
                    positions: positions.clone(),
                    state: Vec::new(),
                    slices: None,
                }),
                Some(_) => self.snapshot(&mut runs, &positions, true)?,
                None if checkpoint_due => self.snapshot(&mut runs, &positions, false)?,
                None => None,
            };
            if checkpoint.is_some() {
                last_checkpoint = Instant::now();
            }
            let handoff = handoff.map(|(partitions, done)| {
                runs.revoke(&partitions, &mut positions);
                done
            });
            let msg = SinkMsg {
                documents: out,
                dead_letters,
                checkpoint,
                handoff,
            };
            if !self.send(&tx, msg) {
                return Ok(Ending::Stopped);
            }
            if let Some(e) = ending {
                return Ok(e);
            }
        }
    }

    /// Hands a message to the sink task; false when the sink failed (its error is
    /// reported by the sink task).
    fn send(&self, tx: &mpsc::Sender<SinkMsg>, msg: SinkMsg) -> bool {
        let depth = tx.max_capacity() - tx.capacity();
        let waited = Instant::now();
        if tx.blocking_send(msg).is_err() {
            return false;
        }
        self.metrics
            .record_backpressure("sink", depth, waited.elapsed());
        true
    }

    /// Per-stage counters: the prefix stages ran on the parser's workers, the rest here.
    fn stage_stats(&self, runs: &Runs) -> Vec<(&'static str, StageStats)> {
        let mut stats = runs.stage_stats();
        for (total, s) in stats.iter_mut().zip(&self.prefix_stats) {
            total.1.documents_in += s.documents_in;
            total.1.documents_out += s.documents_out;
            total.1.errors += s.errors;
            total.1.nanos += s.nanos;
        }
        stats
    }

    /// The checkpoint to take now: positions with the operator state, or with
    /// per-partition state, with the slices of the partitions that processed records
    /// since their last save (all of them when `all`). `None` when a stage cannot
    /// export its state.
    fn snapshot(
        &self,
        runs: &mut Runs,
        positions: &SourcePositions,
        all: bool,
    ) -> Result<Option<PendingCheckpoint>, RunError> {
        let failed =
            |e: StageError| RunError::Internal(format!("cannot snapshot operator state: {e}"));
        let checkpoint = |state, slices| PendingCheckpoint {
            positions: positions.clone(),
            state,
            slices,
        };
        if let Runs::PerPartition(_) = runs {
            let slices = runs
                .slices(&self.pipeline_id, positions, all)
                .map_err(failed)?;
            return Ok(slices.map(|s| checkpoint(Vec::new(), Some(encode_slices(s)))));
        }
        let mut states = runs.any().checkpoint_state().map_err(failed)?;
        if let (Some(states), Some(tracker)) = (states.as_mut(), &self.tracker) {
            states.push(tracker.checkpoint_state());
        }
        Ok(states.map(|s| checkpoint(s, None)))
    }

    fn process(
        &mut self,
        run: &mut PipelineRun,
        item: Parsed,
        positions: &mut SourcePositions,
        out: &mut Vec<Document>,
        dead_letters: &mut Vec<Document>,
    ) -> Result<(), RunError> {
        match positions.get_mut(&*item.partition) {
            Some(p) => *p = item.position.clone(),
            None => {
                positions.insert(item.partition.to_string(), item.position.clone());
            }
        }
        let ready = match item.document {
            Ok(ready) => ready,
            Err(message) => {
                let original = Value::string(item.raw.unwrap_or_default());
                let failure = Failure {
                    stage: "parse".into(),
                    message,
                    attempts: 1,
                    original,
                    partition: &item.partition,
                    position: &item.position,
                };
                return self.apply_policy(&failure, ErrorKind::Permanent, dead_letters);
            }
        };
        let emitted = out.len();
        let mut errors = Vec::new();
        if let Some(tracker) = self.tracker.as_mut() {
            // Records without an event time get their arrival time.
            let t = item
                .event_time
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            tracker.observe(&item.partition, t, self.batch_started);
            run.set_event_time(Some(t));
        }
        match ready {
            Ready::Document(doc) => run.push(doc, out, &mut errors),
            Ready::PrefixedOne(doc) => run.push_at(self.prefix_len, doc, out, &mut errors),
            Ready::Prefixed {
                outputs,
                errors: prefix_errors,
            } => {
                errors = prefix_errors;
                for doc in outputs {
                    run.push_at(self.prefix_len, doc, out, &mut errors);
                }
            }
        }
        if self.tracker.is_some() {
            self.side_output_late(run, &item.partition, &item.position, dead_letters);
        }
        let mut attempt = 1;
        loop {
            let Some(error) = errors.first() else {
                self.policy.record_success();
                return Ok(());
            };
            let kind = if error.error.transient {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            };
            match (self.policy.decide(kind, attempt), &item.original) {
                (Decision::Retry(delay), Some(original)) => {
                    // The whole document runs again: drop what it emitted this time.
                    out.truncate(emitted);
                    self.metrics.add_retries(1);
                    attempt += 1;
                    std::thread::sleep(delay);
                    errors.clear();
                    run.push(original.clone(), out, &mut errors);
                }
                (decision, original) => {
                    let original = match &item.raw {
                        Some(text) => parse_document(text)
                            .map(Value::Document)
                            .unwrap_or_else(|_| Value::string(text.as_str())),
                        None => original.clone().map(Value::Document).unwrap_or(Value::Null),
                    };
                    let failure = Failure {
                        stage: format!("pipeline[{}] {}", error.stage_index, error.stage),
                        message: error.error.message.clone(),
                        attempts: attempt,
                        original,
                        partition: &item.partition,
                        position: &item.position,
                    };
                    return self.record_failure(decision, &failure, dead_letters);
                }
            }
        }
    }

    /// Late events set aside by windows go to the dead-letter sink with reason `late`.
    fn side_output_late(
        &mut self,
        run: &mut PipelineRun,
        partition: &str,
        position: &Value,
        dead_letters: &mut Vec<Document>,
    ) {
        let mut late = Vec::new();
        run.take_late(&mut late);
        for doc in late {
            let failure = Failure {
                stage: "window".into(),
                message: "late event: its windows closed (the watermark passed their end plus allowedLateness)".into(),
                attempts: 1,
                original: Value::Document(doc),
                partition,
                position,
            };
            let mut record = failure.dead_letter_record(&self.pipeline_id);
            record.insert("reason", Value::string("late"));
            dead_letters.push(record);
        }
    }

    /// Advances the watermark (at most once per `emitInterval`) and processing time:
    /// windows that ended emit.
    fn advance_time(
        &mut self,
        run: &mut PipelineRun,
        out: &mut Vec<Document>,
        dead_letters: &mut Vec<Document>,
    ) -> Result<(), RunError> {
        let mut errors = Vec::new();
        if let Some(tracker) = self.tracker.as_mut() {
            if self.last_watermark.elapsed() >= tracker.config().emit_interval {
                self.last_watermark = Instant::now();
                if let Some(wm) = tracker.watermark(Instant::now()) {
                    self.metrics.set_watermark(wm);
                    run.advance_watermark(wm, out, &mut errors);
                }
            }
        }
        run.advance_processing_time(chrono::Utc::now().timestamp_millis(), out, &mut errors);
        self.handle_stage_errors(errors, dead_letters)
    }

    fn trigger(
        &mut self,
        run: &mut PipelineRun,
        out: &mut Vec<Document>,
        dead_letters: &mut Vec<Document>,
    ) -> Result<(), RunError> {
        let mut errors = Vec::new();
        run.trigger(self.complete, out, &mut errors);
        self.handle_stage_errors(errors, dead_letters)
    }

    /// Errors from rows emitted at a trigger or at the end of input: no single input
    /// document is to blame (the dead letter's `document` is null), so they are not
    /// retried.
    fn handle_stage_errors(
        &mut self,
        errors: Vec<StageError>,
        dead_letters: &mut Vec<Document>,
    ) -> Result<(), RunError> {
        for e in errors {
            let failure = Failure {
                stage: format!("pipeline[{}] {}", e.stage_index, e.stage),
                message: e.error.message,
                attempts: 1,
                original: Value::Null,
                partition: "",
                position: &Value::Null,
            };
            self.apply_policy(&failure, ErrorKind::Permanent, dead_letters)?;
        }
        Ok(())
    }

    fn apply_policy(
        &mut self,
        failure: &Failure<'_>,
        kind: ErrorKind,
        dead_letters: &mut Vec<Document>,
    ) -> Result<(), RunError> {
        // Retrying cannot help an error that does not depend on time.
        let decision = match self.policy.decide(kind, failure.attempts) {
            Decision::Retry(_) => self.policy.decide(ErrorKind::Permanent, failure.attempts),
            d => d,
        };
        self.record_failure(decision, failure, dead_letters)
    }

    fn record_failure(
        &mut self,
        decision: Decision,
        failure: &Failure<'_>,
        dead_letters: &mut Vec<Document>,
    ) -> Result<(), RunError> {
        self.metrics.add_failed(1);
        match decision {
            Decision::Skip | Decision::Retry(_) => {
                debug!(pipeline = %self.pipeline_id, stage = %failure.stage, error = %failure.message, "document skipped");
                self.metrics.add_skipped(1);
                Ok(())
            }
            Decision::DeadLetter => {
                dead_letters.push(failure.dead_letter_record(&self.pipeline_id));
                Ok(())
            }
            Decision::Fail => Err(RunError::Document(format!(
                "{}: {} (source partition '{}', position {})",
                failure.stage,
                failure.message,
                failure.partition,
                failure.position.to_json()
            ))),
        }
    }
}

/// A document that failed, as the dead-letter record describes it.
struct Failure<'a> {
    stage: String,
    message: String,
    attempts: u32,
    original: Value,
    partition: &'a str,
    position: &'a Value,
}

impl Failure<'_> {
    fn dead_letter_record(&self, pipeline_id: &str) -> Document {
        let mut d = Document::new();
        d.insert("pipelineId", Value::string(pipeline_id));
        d.insert("stage", Value::string(self.stage.as_str()));
        d.insert("error", Value::string(self.message.as_str()));
        d.insert("attempts", Value::Int64(i64::from(self.attempts)));
        d.insert(
            "failedAt",
            Value::Date(chrono::Utc::now().timestamp_millis()),
        );
        let mut source = Document::new();
        source.insert("partition", Value::string(self.partition));
        source.insert("position", self.position.clone());
        d.insert("source", Value::Document(source));
        d.insert("document", self.original.clone());
        d
    }
}

struct Delivery {
    pipeline_id: String,
    sink: Box<dyn Sink>,
    dead_letter: Option<Box<dyn Sink>>,
    store: Arc<dyn StateStore>,
    policy: ErrorPolicy,
    metrics: Arc<PipelineMetrics>,
    context: Arc<StreamingContext>,
    listeners: Vec<Arc<dyn MetricsListener>>,
    sequence: u64,
    /// Exactly-once through the sink's transactions (see [`transactional_checkpoint`]).
    transactional: bool,
}

impl Delivery {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<SinkMsg>,
        commits: mpsc::UnboundedSender<SourcePositions>,
    ) -> Result<(), RunError> {
        if self.transactional {
            self.sink.begin().await.map_err(RunError::Sink)?;
        } else {
            self.sink.open().await.map_err(RunError::Sink)?;
        }
        // Documents and batches written but not yet acknowledged by a flush.
        let (mut unflushed, mut unflushed_batches) = (0, 0);
        let max_unflushed = self.sink.max_unflushed_batches().max(1);
        while let Some(msg) = rx.recv().await {
            let SinkMsg {
                documents,
                mut dead_letters,
                checkpoint,
                handoff,
            } = msg;
            if !documents.is_empty() {
                unflushed += self.deliver(&documents, &mut dead_letters).await?;
                unflushed_batches += 1;
            }
            // Output counts as delivered, and a checkpoint may cover it, only once the
            // sink acknowledged it. While further batches wait, a sink that allows it
            // takes them first and keeps delivering the earlier ones meanwhile.
            if checkpoint.is_some() || rx.is_empty() || unflushed_batches >= max_unflushed {
                self.flush().await?;
                self.metrics
                    .add_documents_out(std::mem::take(&mut unflushed));
                unflushed_batches = 0;
            }
            if !dead_letters.is_empty() {
                self.write_dead_letters(&dead_letters).await?;
            }
            if let Some(PendingCheckpoint {
                positions,
                state,
                slices,
            }) = checkpoint
            {
                self.sequence += 1;
                let saving = Instant::now();
                let cp = Checkpoint {
                    pipeline_id: self.pipeline_id.clone(),
                    sequence: self.sequence,
                    positions,
                    operator_state: state.into(),
                    sink_position: self.sink.committed_position().unwrap_or(Value::Null),
                    created_at: chrono::Utc::now().timestamp_millis(),
                };
                if self.transactional {
                    self.commit_transaction(cp).await?;
                } else {
                    match slices {
                        // Per-partition state: the slices are the checkpoint.
                        Some(slices) => self.save_slices(slices).await?,
                        None => self.save_checkpoint(&cp).await?,
                    }
                    self.metrics.add_checkpoint();
                    self.context.set_checkpoint(cp.sequence, &cp.positions);
                    let _ = commits.send(cp.positions);
                }
                debug!(pipeline = %self.pipeline_id, sequence = self.sequence, elapsed_ms = saving.elapsed().as_millis() as u64, "checkpoint saved");
            }
            if let Some(done) = handoff {
                let _ = done.send(());
            }
            if !self.listeners.is_empty() {
                let snapshot = self.metrics.snapshot();
                for listener in &self.listeners {
                    listener.on_batch(&self.pipeline_id, &snapshot);
                }
            }
        }
        if self.transactional {
            // Output after the last checkpoint is not covered by one: drop it.
            self.sink.abort().await.map_err(RunError::Sink)?;
        } else if unflushed > 0 {
            self.flush().await?;
            self.metrics.add_documents_out(unflushed);
        }
        Ok(())
    }

    /// Exactly-once: saves checkpoint N (N-1 stays in the store's history), then commits
    /// the sink's transaction with N's positions, then opens the next transaction. A
    /// crash before the commit leaves N saved but the transaction aborted, and
    /// [`transactional_checkpoint`] then resumes from N-1.
    async fn commit_transaction(&mut self, cp: Checkpoint) -> Result<(), RunError> {
        self.save_checkpoint(&cp).await?;
        self.sink
            .commit(&cp.positions)
            .await
            .map_err(RunError::Sink)?;
        self.metrics.add_checkpoint();
        self.context.set_checkpoint(cp.sequence, &cp.positions);
        self.sink.begin().await.map_err(RunError::Sink)
    }

    /// Writes a batch under the error policy and returns how many documents the sink
    /// took. A batch the sink rejects permanently is split so that only the offending
    /// documents go through the policy.
    async fn deliver(
        &mut self,
        documents: &[Document],
        dead_letters: &mut Vec<Document>,
    ) -> Result<u64, RunError> {
        let mut attempt = 1;
        loop {
            let wait = self.policy.wait_before_call();
            if !wait.is_zero() {
                warn!(pipeline = %self.pipeline_id, wait_ms = wait.as_millis() as u64, "circuit breaker open; pausing sink writes");
                tokio::time::sleep(wait).await;
            }
            let error = match self.sink.write(documents).await {
                Ok(()) => {
                    self.policy.record_success();
                    return Ok(documents.len() as u64);
                }
                Err(e) => e,
            };
            match self.policy.decide(error.kind, attempt) {
                Decision::Retry(delay) => {
                    warn!(pipeline = %self.pipeline_id, error = %error, attempt, "sink write failed; retrying");
                    self.metrics.add_retries(1);
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                Decision::Fail => {
                    self.metrics.add_failed(documents.len() as u64);
                    return Err(RunError::Sink(error));
                }
                _ if documents.len() > 1 && error.kind == ErrorKind::Permanent => {
                    let mut written = 0;
                    for doc in documents {
                        written +=
                            Box::pin(self.deliver(std::slice::from_ref(doc), dead_letters)).await?;
                    }
                    return Ok(written);
                }
                decision => {
                    self.metrics.add_failed(documents.len() as u64);
                    if decision == Decision::DeadLetter {
                        for doc in documents {
                            let failure = Failure {
                                stage: "sink".into(),
                                message: error.to_string(),
                                attempts: attempt,
                                original: Value::Document(doc.clone()),
                                partition: "",
                                position: &Value::Null,
                            };
                            dead_letters.push(failure.dead_letter_record(&self.pipeline_id));
                        }
                    } else {
                        self.metrics.add_skipped(documents.len() as u64);
                    }
                    return Ok(0);
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), RunError> {
        let mut attempt = 1;
        loop {
            match self.sink.flush().await {
                Ok(()) => return Ok(()),
                Err(e) => match self.policy.decide(e.kind, attempt) {
                    Decision::Retry(delay) => {
                        self.metrics.add_retries(1);
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                    }
                    // Unflushed outputs cannot be skipped: the checkpoint would claim them.
                    _ => return Err(RunError::Sink(e)),
                },
            }
        }
    }

    /// Dead letters must not be lost: transient failures are retried with backoff until
    /// they succeed or the error turns permanent.
    async fn write_dead_letters(&mut self, records: &[Document]) -> Result<(), RunError> {
        let Some(dlq) = self.dead_letter.as_mut() else {
            return Err(RunError::Internal(
                "dead-letter records without a dead-letter sink".into(),
            ));
        };
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=10 {
            let result = match dlq.write(records).await {
                Ok(()) => dlq.flush().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.metrics.add_dead_lettered(records.len() as u64);
                    return Ok(());
                }
                Err(e) if e.kind == ErrorKind::Transient && attempt < 10 => {
                    warn!(error = %e, attempt, "dead-letter write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(RunError::DeadLetter(e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn save_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), RunError> {
        retry_store(|| self.store.save_checkpoint(cp)).await?;
        // Older checkpoints are only kept for `restore`: bound them.
        if cp.sequence.is_multiple_of(PRUNE_EVERY) {
            if let Err(e) = self
                .store
                .prune_checkpoints(&cp.pipeline_id, CHECKPOINTS_KEPT)
                .await
            {
                warn!(error = %e, "pruning old checkpoints failed; will retry later");
            }
        }
        Ok(())
    }

    /// Saves partitions' slices (one `put_batch`, once encoded) and makes them durable.
    async fn save_slices(&mut self, slices: EncodingSlices) -> Result<(), RunError> {
        if !slices.is_empty() {
            let (mut bytes, mut kept) = (Vec::new(), Vec::new());
            for (key, encoding) in slices {
                let (slice, encoding) = encoding
                    .await
                    .map_err(|e| RunError::Internal(format!("encoding the state of {key}: {e}")))?;
                bytes.push((key.clone(), encoding));
                kept.push((key, slice));
            }
            // The encoded bytes move into the store; a retry encodes again.
            let mut first = Some(bytes);
            retry_store(|| {
                let batch = first.take().unwrap_or_else(|| encoded(&kept));
                self.store.put_batch(batch, None)
            })
            .await?;
        }
        retry_store(|| self.store.sync()).await
    }
}

/// Runs a state-store operation, retrying while the store is unavailable (it retries
/// by itself for `retryFor` first).
async fn retry_store<F, Fut>(mut op: F) -> Result<(), RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StateError>>,
{
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=10 {
        match op().await {
            Ok(()) => return Ok(()),
            Err(StateError::Unavailable(m)) if attempt < 10 => {
                warn!(error = %m, attempt, "saving the checkpoint failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last attempt returns")
}
