//! The connector contract: [`Source`], [`Sink`], [`ConnectorProvider`] and the
//! [`ConnectorRegistry`] that turns a `{"type": ..., "options": ...}` config into a
//! running source or sink. Core knows no concrete connector; `stream-connect` and
//! applications register providers.

use super::context::StreamingContext;
use super::definition::{ConnectorConfig, DefinitionError};
use crate::value::{Document, Value};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// I/O, timeouts, unavailable services: worth retrying.
    Transient,
    /// Bad data or configuration: retrying gives the same result.
    Permanent,
}

/// A connector failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{connector}: {message}")]
pub struct ConnectorError {
    /// Connector type or name, e.g. `file`.
    pub connector: String,
    /// Whether retrying can help.
    pub kind: ErrorKind,
    /// What failed and how to fix it.
    pub message: String,
}

impl ConnectorError {
    /// A transient (retryable) failure.
    pub fn transient(connector: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError {
            connector: connector.into(),
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
    /// A permanent failure.
    pub fn permanent(connector: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError {
            connector: connector.into(),
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
    /// An I/O error: transient.
    pub fn io(connector: impl Into<String>, what: impl fmt::Display, e: &std::io::Error) -> Self {
        Self::transient(connector, format!("{what}: {e}"))
    }
}

/// The payload of a record: already a document, or JSON text still to parse (parsed by
/// the orchestrator's workers, in parallel, keeping only the fields the pipeline reads).
#[derive(Debug, Clone)]
pub enum Payload {
    /// A parsed document.
    Document(Document),
    /// One JSON (Extended JSON) object as text.
    Json(String),
}

/// One input record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The content.
    pub payload: Payload,
    /// Source partition (file path, Kafka topic-partition, ...). Order is kept per partition.
    /// Shared (`Arc`): every record of a partition points at the same name.
    pub partition: Arc<str>,
    /// Position to resume *after* this record (offset + 1, byte offset after the line, resume token).
    pub position: Value,
    /// Event time in epoch millis, when the source knows it.
    pub event_time: Option<i64>,
}

/// How far a bounded source has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Units read so far.
    pub done: u64,
    /// Units in the whole input.
    pub total: u64,
    /// What is counted, e.g. `bytes` or `records`.
    pub unit: &'static str,
}

/// Positions per partition: what a checkpoint stores and a source resumes from.
pub type SourcePositions = BTreeMap<String, Value>;

/// A batch fetched from a source.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// Records in order per partition.
    pub records: Vec<Record>,
    /// True when a bounded source has nothing more to give.
    pub end_of_input: bool,
}

/// A change of the partitions a source reads, when partitions move between processes
/// running the same pipeline (a Kafka consumer-group rebalance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebalance {
    /// Partitions taken away. The orchestrator processes the records already read from
    /// them, checkpoints and commits, then calls [`Source::finish_rebalance`]; only then
    /// may the source release them to another process.
    pub revoked: Vec<String>,
    /// Partitions given. The orchestrator loads their saved state and calls
    /// [`Source::seek`] with their positions, then [`Source::finish_rebalance`]; only
    /// then may the source read them.
    pub assigned: Vec<String>,
}

/// A source of records.
#[async_trait]
pub trait Source: Send {
    /// Fetches up to `max_records`, waiting at most `max_wait` for the first one. An
    /// empty batch without `end_of_input` means nothing is available yet.
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, ConnectorError>;

    /// Resumes after the given positions (restored from a checkpoint). Called before the
    /// first `next_batch`.
    async fn seek(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError>;

    /// The positions are covered by a durable checkpoint: the source may acknowledge them
    /// upstream (commit Kafka offsets, ...).
    async fn commit(&mut self, _positions: &SourcePositions) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// The positions acknowledged upstream (a Kafka consumer group's committed
    /// offsets), for sources that have them. Under exactly-once a transactional sink
    /// commits these together with its output, so on restart the orchestrator resumes
    /// from the checkpoint whose positions equal them.
    async fn committed_positions(&mut self) -> Result<Option<SourcePositions>, ConnectorError> {
        Ok(None)
    }

    /// True when the input is finite (a file without `follow`).
    fn is_bounded(&self) -> bool;

    /// True when partitions can move between processes running the same pipeline (a
    /// Kafka consumer group). A stateful pipeline then keeps its operator state per
    /// partition, saved in the state store, so the state moves with the partition.
    fn partitions_move(&self) -> bool {
        false
    }

    /// A rebalance that happened during the last [`Source::next_batch`]; the source
    /// holds it (reading and releasing nothing of it) until
    /// [`Source::finish_rebalance`].
    fn take_rebalance(&mut self) -> Option<Rebalance> {
        None
    }

    /// The rebalance from [`Source::take_rebalance`] is handled: release the revoked
    /// partitions and start reading the assigned ones (at the positions given to
    /// [`Source::seek`], else where the source would start them by itself).
    async fn finish_rebalance(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Records available upstream but not read yet (Kafka: high watermarks minus the
    /// positions), when the source can tell; published as the `stream.lag` gauge.
    fn lag(&self) -> Option<u64> {
        None
    }

    /// How far a bounded source has read, in its own unit (bytes of a file, records of
    /// a generator), for progress display.
    fn progress(&self) -> Option<Progress> {
        None
    }
}

/// A destination for result documents.
#[async_trait]
pub trait Sink: Send {
    /// Writes a batch. Returning `Ok` means the sink accepted it; it is acknowledged
    /// (durable) after [`Sink::flush`].
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError>;

    /// Called once when the pipeline starts, before the first write, unless the
    /// pipeline is transactional ([`Sink::begin`] prepares the sink then). A sink that
    /// connects lazily connects here, so the first batch does not wait for the set-up
    /// (Kafka: a producer's connection and idempotent producer id). The default does
    /// nothing.
    async fn open(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// How many written batches the orchestrator may leave unflushed, so that the sink
    /// keeps earlier batches in flight while it takes the next ones (Kafka: delivery
    /// reports still to come). Whatever this says, the orchestrator flushes before every
    /// checkpoint and whenever no further batch is waiting. The default, 1, flushes
    /// after every write.
    fn max_unflushed_batches(&self) -> usize {
        1
    }

    /// Makes everything written so far durable. An error means some of it may not be:
    /// a transient one is retried by calling `flush` again, which must then deliver
    /// everything written since the last successful flush.
    async fn flush(&mut self) -> Result<(), ConnectorError>;

    /// Where the sink's acknowledged output ends, for sinks that can roll back to it
    /// (a file's length). Stored in every checkpoint; after a crash,
    /// [`Sink::restore_position`] drops output written after the checkpoint, so replayed
    /// records do not appear twice (exactly-once output).
    fn committed_position(&self) -> Option<Value> {
        None
    }

    /// Rolls the sink back to a position from [`Sink::committed_position`].
    async fn restore_position(&mut self, _position: &Value) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// True when the sink supports [`Sink::begin`] / [`Sink::commit`] / [`Sink::abort`].
    fn is_transactional(&self) -> bool {
        false
    }

    /// Starts a transaction.
    async fn begin(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Commits the current transaction together with the source positions it covers.
    async fn commit(&mut self, _positions: &SourcePositions) -> Result<(), ConnectorError> {
        self.flush().await
    }

    /// Aborts the current transaction.
    async fn abort(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// What a provider may use while building a connector.
#[derive(Debug, Clone)]
pub struct ConnectorContext {
    /// The pipeline the connector serves.
    pub pipeline_id: String,
    /// The pipeline's shared context (positions, counters, attributes).
    pub context: Arc<StreamingContext>,
}

impl ConnectorContext {
    /// A context for building connectors outside a running pipeline (tests, tools).
    pub fn new(pipeline_id: impl Into<String>) -> Self {
        let pipeline_id = pipeline_id.into();
        let metrics = Arc::new(super::metrics::PipelineMetrics::default());
        ConnectorContext {
            context: Arc::new(StreamingContext::new(pipeline_id.clone(), metrics)),
            pipeline_id,
        }
    }
}

/// Builds sources and sinks of one connector type.
pub trait ConnectorProvider: Send + Sync {
    /// The `type` this provider answers to, e.g. `file`.
    fn connector_type(&self) -> &str;

    /// Builds a source; `Ok(None)` when this type cannot be a source.
    fn create_source(
        &self,
        config: &ConnectorConfig,
        ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError>;

    /// Builds a sink; `Ok(None)` when this type cannot be a sink.
    fn create_sink(
        &self,
        config: &ConnectorConfig,
        ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError>;
}

/// Connector providers by type name.
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    providers: HashMap<String, Arc<dyn ConnectorProvider>>,
}

impl fmt::Debug for ConnectorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorRegistry")
            .field("types", &self.types())
            .finish()
    }
}

impl ConnectorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a provider under its type (replacing one of the same type).
    pub fn register(&mut self, provider: Arc<dyn ConnectorProvider>) -> &mut Self {
        self.providers
            .insert(provider.connector_type().to_string(), provider);
        self
    }

    /// Registered types, sorted.
    pub fn types(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.providers.keys().map(String::as_str).collect();
        t.sort_unstable();
        t
    }

    fn provider(
        &self,
        config: &ConnectorConfig,
    ) -> Result<&Arc<dyn ConnectorProvider>, DefinitionError> {
        self.providers.get(&config.connector_type).ok_or_else(|| {
            DefinitionError::new(
                format!("{}.type", config.path),
                format!(
                    "unknown connector type '{}' (available: {}; others need their cargo feature)",
                    config.connector_type,
                    self.types().join(", ")
                ),
            )
        })
    }

    /// Builds the source described by `config`.
    pub fn create_source(
        &self,
        config: &ConnectorConfig,
        ctx: &ConnectorContext,
    ) -> Result<Box<dyn Source>, DefinitionError> {
        self.provider(config)?
            .create_source(config, ctx)?
            .ok_or_else(|| {
                DefinitionError::new(
                    format!("{}.type", config.path),
                    format!(
                        "connector '{}' cannot be used as a source",
                        config.connector_type
                    ),
                )
            })
    }

    /// Builds the sink described by `config`.
    pub fn create_sink(
        &self,
        config: &ConnectorConfig,
        ctx: &ConnectorContext,
    ) -> Result<Box<dyn Sink>, DefinitionError> {
        self.provider(config)?
            .create_sink(config, ctx)?
            .ok_or_else(|| {
                DefinitionError::new(
                    format!("{}.type", config.path),
                    format!(
                        "connector '{}' cannot be used as a sink",
                        config.connector_type
                    ),
                )
            })
    }
}
