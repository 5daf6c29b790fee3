//! The streaming runtime: pipeline definitions, the connector and state-store
//! contracts, error policies, metrics and the orchestrator that runs a pipeline
//! continuously with checkpoints.
//!
//! A definition names a source, the aggregation stages, a sink, runtime settings, an
//! error policy and a state store. [`StreamingPipelineOrchestrator::run`] resolves the
//! connectors through a [`ConnectorRegistry`] and returns a
//! [`StreamingPipelineHandle`] to stop it, wait for it, and read its status and metrics.

pub mod connector;
pub mod context;
pub mod definition;
pub mod error_policy;
pub mod metrics;
pub mod orchestrator;
pub mod partition_state;
pub mod state;
pub mod watermark;

pub use connector::{
    ConnectorContext, ConnectorError, ConnectorProvider, ConnectorRegistry, ErrorKind, Payload,
    Progress, Rebalance, Record, Sink, Source, SourceBatch, SourcePositions,
};
pub use context::{MetricsListener, StreamingContext};
pub use definition::{
    parse_duration, CircuitBreakerConfig, ConnectorConfig, DefinitionError, ErrorPolicyConfig,
    OutputMode, ProcessingGuarantee, RetryConfig, RuntimeConfig, StreamingPipelineDefinition,
    StreamingPipelineDefinitionBuilder, Trigger,
};
pub use error_policy::{BreakerState, Decision, ErrorPolicy};
pub use metrics::{MetricsRegistry, MetricsSnapshot, PipelineMetrics, StageMetrics};
pub use orchestrator::{
    PipelineStatus, RunError, RunOptions, RunSummary, StreamingPipelineHandle,
    StreamingPipelineOrchestrator,
};
pub use state::{
    checkpoints_to_prune, Checkpoint, MemoryStateStore, MemoryStateStoreProvider, StateError,
    StateStore, StateStoreProvider,
};
pub use watermark::{EventTimeConfig, WatermarkConfig, WatermarkTracker};
