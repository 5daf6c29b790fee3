//! Streaming pipeline definitions: the JSON file format and its builder.
//!
//! ```json
//! {
//!   "pipelineId": "orders-ltv",
//!   "source":  {"type": "file", "options": {"path": "orders.jsonl"}},
//!   "pipeline": [{"$match": {"status": "PAID"}}],
//!   "sink":    {"type": "file", "options": {"path": "out.jsonl"}},
//!   "runtime": {"microBatchSize": 500, "maxBatchDelay": "200 ms", "trigger": "continuous"},
//!   "errorPolicy": {"retry": {"maxAttempts": 5}, "then": {"deadLetter": {"type": "file", "options": {"path": "dlq.jsonl"}}}},
//!   "state":   {"type": "file", "options": {"path": "./state"}},
//!   "metrics": {"tags": {"environment": "prod"}}
//! }
//! ```
//!
//! String values may reference the environment: `${VAR}` or `${VAR:-default}`, so
//! secrets never need to sit in the file. Numeric settings accept numeric strings for
//! the same reason (`"microBatchSize": "${BATCH:-500}"`).

use crate::error::{path_key, CompileError};
use crate::functions::FunctionRegistry;
use crate::pipeline::Pipeline;
use crate::value::{parse_value, Document, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// An invalid definition: `path` is the JSON path of the problem (`runtime.trigger`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DefinitionError {
    /// JSON path of the problem.
    pub path: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl DefinitionError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        DefinitionError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<CompileError> for DefinitionError {
    fn from(e: CompileError) -> Self {
        DefinitionError::new(e.path, e.message)
    }
}

/// A connector, state store or dead-letter target: `{"type": ..., "options": {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorConfig {
    /// Provider name, e.g. `file`, `kafka`, `memory`.
    pub connector_type: String,
    /// Provider-specific options.
    pub options: Document,
    /// Event-time expression (`timeField`), kept for window support.
    pub time_field: Option<Value>,
    /// Watermark settings (`watermark`), kept for window support.
    pub watermark: Option<Value>,
    /// JSON path of this config in the definition, for error messages.
    pub path: String,
}

impl ConnectorConfig {
    /// A config of the given type with no options.
    pub fn new(connector_type: impl Into<String>) -> Self {
        ConnectorConfig {
            connector_type: connector_type.into(),
            options: Document::new(),
            time_field: None,
            watermark: None,
            path: String::new(),
        }
    }

    /// Sets an option (builder style).
    pub fn option(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.options.insert(key, value.into());
        self
    }

    /// A string option.
    pub fn str_option(&self, key: &str) -> Result<Option<&str>, DefinitionError> {
        match self.options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(self.option_error(
                key,
                format!("expected a string, found {}", other.type_name()),
            )),
        }
    }

    /// A required string option.
    pub fn required_str(&self, key: &str) -> Result<&str, DefinitionError> {
        self.str_option(key)?.ok_or_else(|| {
            self.option_error(
                key,
                format!("the {} connector needs option '{key}'", self.connector_type),
            )
        })
    }

    /// A non-negative integer option (numeric strings accepted).
    pub fn u64_option(&self, key: &str) -> Result<Option<u64>, DefinitionError> {
        match self.options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => number_setting(v)
                .and_then(|n| u64::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.option_error(
                        key,
                        format!("expected a non-negative integer, found {}", v.to_json()),
                    )
                }),
        }
    }

    /// A boolean option (`"true"`/`"false"` strings accepted).
    pub fn bool_option(&self, key: &str) -> Result<Option<bool>, DefinitionError> {
        match self.options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(other) => Err(self.option_error(
                key,
                format!("expected true or false, found {}", other.to_json()),
            )),
        }
    }

    /// A duration option (`"5 seconds"`, `"200 ms"`, or a number of milliseconds).
    pub fn duration_option(&self, key: &str) -> Result<Option<Duration>, DefinitionError> {
        match self.options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => duration_setting(v)
                .map(Some)
                .map_err(|m| self.option_error(key, m)),
        }
    }

    /// An error about option `key`, with its JSON path.
    pub fn option_error(&self, key: &str, message: impl Into<String>) -> DefinitionError {
        DefinitionError::new(path_key(&path_key(&self.path, "options"), key), message)
    }

    fn parse(v: &Value, path: &str) -> Result<ConnectorConfig, DefinitionError> {
        let d = expect_object(v, path)?;
        check_keys(d, path, &["type", "options", "timeField", "watermark"])?;
        let connector_type = match d.get("type") {
            Some(Value::String(s)) if !s.is_empty() => s.to_string(),
            Some(other) => {
                return Err(DefinitionError::new(
                    path_key(path, "type"),
                    format!("expected a connector type name, found {}", other.to_json()),
                ))
            }
            None => {
                return Err(DefinitionError::new(
                    path,
                    "missing 'type' (e.g. \"file\", \"kafka\", \"memory\")",
                ))
            }
        };
        let options = match d.get("options") {
            None => Document::new(),
            Some(v) => expect_object(v, &path_key(path, "options"))?.clone(),
        };
        Ok(ConnectorConfig {
            connector_type,
            options,
            time_field: d.get("timeField").cloned(),
            watermark: d.get("watermark").cloned(),
            path: path.to_string(),
        })
    }
}

/// When stateful stages emit results on an unbounded input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// After every micro-batch.
    #[default]
    Continuous,
    /// Every interval of processing time.
    ProcessingTime(Duration),
    /// Process what is available now, then stop (the input is treated as bounded).
    AvailableNow,
}

/// What an unwindowed `$group` emits at a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// Only the groups that changed since the last trigger.
    #[default]
    Update,
    /// The whole result table.
    Complete,
}

/// Delivery guarantee requested from the source/sink pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessingGuarantee {
    /// Replays after a failure may repeat outputs (default).
    #[default]
    AtLeastOnce,
    /// Transactional sinks commit outputs and source positions together.
    ExactlyOnce,
}

/// The `runtime` section.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Maximum records per micro-batch (`microBatchSize`, default 500).
    pub micro_batch_size: usize,
    /// Longest wait to fill a micro-batch (`maxBatchDelay`, default 200 ms).
    pub max_batch_delay: Duration,
    /// Batches buffered between processing and the sink (`queueCapacity`, default 16).
    pub queue_capacity: usize,
    /// Batches buffered between the source and processing (`sourceQueueCapacity`, default 32).
    pub source_queue_capacity: usize,
    /// Workers for parsing and stateless stages (`workerThreadPoolSize`, default: cores).
    pub worker_thread_pool_size: usize,
    /// When stateful stages emit (`trigger`).
    pub trigger: Trigger,
    /// What `$group` emits at a trigger (`outputMode`).
    pub output_mode: OutputMode,
    /// Minimum time between checkpoints (`checkpointInterval`, default 1 s). Operator state
    /// is snapshotted at each checkpoint, so every micro-batch would be too often for a
    /// large `$group`; a stop or the end of input always checkpoints.
    pub checkpoint_interval: Duration,
    /// `processingGuarantee`: `at_least_once` (default) or `exactly_once`.
    pub processing_guarantee: ProcessingGuarantee,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            micro_batch_size: 500,
            max_batch_delay: Duration::from_millis(200),
            queue_capacity: 16,
            source_queue_capacity: 32,
            worker_thread_pool_size: std::thread::available_parallelism().map_or(2, |n| n.get()),
            trigger: Trigger::Continuous,
            output_mode: OutputMode::Update,
            checkpoint_interval: Duration::from_secs(1),
            processing_guarantee: ProcessingGuarantee::AtLeastOnce,
        }
    }
}

impl RuntimeConfig {
    fn parse(v: &Value, path: &str) -> Result<RuntimeConfig, DefinitionError> {
        let d = expect_object(v, path)?;
        check_keys(
            d,
            path,
            &[
                "microBatchSize",
                "maxBatchDelay",
                "queueCapacity",
                "sourceQueueCapacity",
                "workerThreadPoolSize",
                "trigger",
                "outputMode",
                "checkpointInterval",
                "processingGuarantee",
            ],
        )?;
        let mut r = RuntimeConfig::default();
        let count = |key: &str, default: usize| -> Result<usize, DefinitionError> {
            match d.get(key) {
                None => Ok(default),
                Some(v) => number_setting(v)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        DefinitionError::new(
                            path_key(path, key),
                            format!("expected a positive integer, found {}", v.to_json()),
                        )
                    }),
            }
        };
        r.micro_batch_size = count("microBatchSize", r.micro_batch_size)?;
        r.queue_capacity = count("queueCapacity", r.queue_capacity)?;
        r.source_queue_capacity = count("sourceQueueCapacity", r.source_queue_capacity)?;
        r.worker_thread_pool_size = count("workerThreadPoolSize", r.worker_thread_pool_size)?;
        if let Some(v) = d.get("maxBatchDelay") {
            r.max_batch_delay = duration_setting(v)
                .map_err(|m| DefinitionError::new(path_key(path, "maxBatchDelay"), m))?;
        }
        if let Some(v) = d.get("checkpointInterval") {
            r.checkpoint_interval = duration_setting(v)
                .map_err(|m| DefinitionError::new(path_key(path, "checkpointInterval"), m))?;
        }
        if let Some(v) = d.get("trigger") {
            r.trigger = parse_trigger(v, &path_key(path, "trigger"))?;
        }
        if let Some(v) = d.get("outputMode") {
            r.output_mode = match v.as_str() {
                Some("update") => OutputMode::Update,
                Some("complete") => OutputMode::Complete,
                _ => {
                    return Err(DefinitionError::new(
                        path_key(path, "outputMode"),
                        format!("expected \"update\" or \"complete\", found {}", v.to_json()),
                    ))
                }
            };
        }
        if let Some(v) = d.get("processingGuarantee") {
            r.processing_guarantee = match v.as_str() {
                Some("at_least_once") => ProcessingGuarantee::AtLeastOnce,
                Some("exactly_once") => ProcessingGuarantee::ExactlyOnce,
                _ => {
                    return Err(DefinitionError::new(
                        path_key(path, "processingGuarantee"),
                        format!(
                            "expected \"at_least_once\" or \"exactly_once\", found {}",
                            v.to_json()
                        ),
                    ))
                }
            };
        }
        Ok(r)
    }
}

fn parse_trigger(v: &Value, path: &str) -> Result<Trigger, DefinitionError> {
    let bad = || {
        DefinitionError::new(
            path,
            format!("expected \"continuous\", \"availableNow\" or {{\"processingTime\": \"5 seconds\"}}, found {}", v.to_json()),
        )
    };
    match v {
        Value::String(s) if s == "continuous" => Ok(Trigger::Continuous),
        Value::String(s) if s == "availableNow" => Ok(Trigger::AvailableNow),
        Value::Document(d) if d.len() == 1 => match d.get("processingTime") {
            Some(interval) => duration_setting(interval)
                .map(Trigger::ProcessingTime)
                .map_err(|m| DefinitionError::new(path_key(path, "processingTime"), m)),
            None => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Retry settings of an error policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total attempts including the first (`maxAttempts`, default 3).
    pub max_attempts: u32,
    /// Delay before the first retry (`initialDelay`, default 100 ms).
    pub initial_delay: Duration,
    /// Upper bound of the delay (`maxDelay`, default 10 s).
    pub max_delay: Duration,
    /// Growth factor per attempt (`multiplier`, default 2).
    pub multiplier: f64,
    /// Random spread as a fraction of the delay (`jitter`, default 0.2).
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// Circuit-breaker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the circuit (`failureThreshold`).
    pub failure_threshold: u32,
    /// Time open before a trial (half-open) attempt (`coolDown`).
    pub cool_down: Duration,
}

/// What happens to a document (or a batch write) that fails.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ErrorPolicyConfig {
    /// Stop the pipeline on the first failure (default).
    #[default]
    FailFast,
    /// Drop the failing document, count it, continue.
    SkipAndContinue,
    /// Send the failing document to a dead-letter sink, continue.
    DeadLetter(ConnectorConfig),
    /// Retry transient failures, then apply `then` (default fail fast).
    Retry {
        /// Retry settings.
        retry: RetryConfig,
        /// The policy once retries are exhausted or the failure is permanent.
        then: Box<ErrorPolicyConfig>,
    },
    /// Sink writes pause after `failureThreshold` consecutive failures; after the
    /// cool-down one trial write goes through (half-open) and a success closes it.
    CircuitBreaker {
        /// Breaker settings.
        breaker: CircuitBreakerConfig,
        /// The wrapped policy.
        inner: Box<ErrorPolicyConfig>,
    },
}

impl ErrorPolicyConfig {
    fn parse(v: &Value, path: &str) -> Result<ErrorPolicyConfig, DefinitionError> {
        match v {
            Value::String(s) => match s.as_str() {
                "failFast" => Ok(ErrorPolicyConfig::FailFast),
                "skipAndContinue" => Ok(ErrorPolicyConfig::SkipAndContinue),
                other => Err(DefinitionError::new(
                    path,
                    format!("unknown error policy '{other}': use \"failFast\", \"skipAndContinue\", {{\"retry\": {{...}}}}, {{\"deadLetter\": {{...}}}}"),
                )),
            },
            Value::Document(d) => {
                check_keys(d, path, &["failFast", "skipAndContinue", "retry", "then", "deadLetter", "circuitBreaker"])?;
                let primary: Vec<&str> = ["failFast", "skipAndContinue", "retry", "deadLetter"]
                    .into_iter()
                    .filter(|k| d.contains_key(k))
                    .collect();
                if primary.len() > 1 {
                    return Err(DefinitionError::new(
                        path,
                        format!(
                            "choose one of {} (to dead-letter after retries, write {{\"retry\": {{...}}, \"then\": {{\"deadLetter\": {{...}}}}}})",
                            primary.join(", ")
                        ),
                    ));
                }
                let mut policy = if let Some(retry) = d.get("retry") {
                    let then = match d.get("then") {
                        Some(t) => ErrorPolicyConfig::parse(t, &path_key(path, "then"))?,
                        None => ErrorPolicyConfig::FailFast,
                    };
                    ErrorPolicyConfig::Retry {
                        retry: parse_retry(retry, &path_key(path, "retry"))?,
                        then: Box::new(then),
                    }
                } else if let Some(dl) = d.get("deadLetter") {
                    ErrorPolicyConfig::DeadLetter(ConnectorConfig::parse(dl, &path_key(path, "deadLetter"))?)
                } else if d.contains_key("skipAndContinue") {
                    ErrorPolicyConfig::SkipAndContinue
                } else if d.contains_key("failFast") || d.contains_key("circuitBreaker") {
                    ErrorPolicyConfig::FailFast
                } else {
                    return Err(DefinitionError::new(path, "expected one of 'failFast', 'skipAndContinue', 'retry', 'deadLetter'"));
                };
                if d.contains_key("then") && !d.contains_key("retry") {
                    return Err(DefinitionError::new(path_key(path, "then"), "'then' applies after 'retry'; add a 'retry' section"));
                }
                if let Some(cb) = d.get("circuitBreaker") {
                    policy = ErrorPolicyConfig::CircuitBreaker {
                        breaker: parse_breaker(cb, &path_key(path, "circuitBreaker"))?,
                        inner: Box::new(policy),
                    };
                }
                Ok(policy)
            }
            other => Err(DefinitionError::new(path, format!("expected an error policy, found {}", other.type_name()))),
        }
    }

    /// The dead-letter sink this policy may write to, if any.
    pub fn dead_letter(&self) -> Option<&ConnectorConfig> {
        match self {
            ErrorPolicyConfig::DeadLetter(c) => Some(c),
            ErrorPolicyConfig::Retry { then, .. } => then.dead_letter(),
            ErrorPolicyConfig::CircuitBreaker { inner, .. } => inner.dead_letter(),
            _ => None,
        }
    }
}

fn parse_retry(v: &Value, path: &str) -> Result<RetryConfig, DefinitionError> {
    let d = expect_object(v, path)?;
    check_keys(
        d,
        path,
        &[
            "maxAttempts",
            "initialDelay",
            "maxDelay",
            "multiplier",
            "jitter",
        ],
    )?;
    let mut r = RetryConfig::default();
    if let Some(v) = d.get("maxAttempts") {
        r.max_attempts = number_setting(v)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                DefinitionError::new(
                    path_key(path, "maxAttempts"),
                    format!("expected an integer >= 1, found {}", v.to_json()),
                )
            })?;
    }
    for (key, slot) in [
        ("initialDelay", &mut r.initial_delay),
        ("maxDelay", &mut r.max_delay),
    ] {
        if let Some(v) = d.get(key) {
            *slot =
                duration_setting(v).map_err(|m| DefinitionError::new(path_key(path, key), m))?;
        }
    }
    for (key, slot, min) in [
        ("multiplier", &mut r.multiplier, 1.0),
        ("jitter", &mut r.jitter, 0.0),
    ] {
        if let Some(v) = d.get(key) {
            *slot = v
                .as_f64()
                .filter(|x| *x >= min && x.is_finite())
                .ok_or_else(|| {
                    DefinitionError::new(
                        path_key(path, key),
                        format!("expected a number >= {min}, found {}", v.to_json()),
                    )
                })?;
        }
    }
    Ok(r)
}

fn parse_breaker(v: &Value, path: &str) -> Result<CircuitBreakerConfig, DefinitionError> {
    let d = expect_object(v, path)?;
    check_keys(d, path, &["failureThreshold", "coolDown"])?;
    let failure_threshold = match d.get("failureThreshold") {
        None => 5,
        Some(v) => number_setting(v)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                DefinitionError::new(
                    path_key(path, "failureThreshold"),
                    format!("expected an integer >= 1, found {}", v.to_json()),
                )
            })?,
    };
    let cool_down = match d.get("coolDown") {
        None => Duration::from_secs(30),
        Some(v) => {
            duration_setting(v).map_err(|m| DefinitionError::new(path_key(path, "coolDown"), m))?
        }
    };
    Ok(CircuitBreakerConfig {
        failure_threshold,
        cool_down,
    })
}

/// A complete streaming pipeline definition.
#[derive(Debug, Clone)]
pub struct StreamingPipelineDefinition {
    /// Unique id; names checkpoints, metrics and dead-letter records.
    pub pipeline_id: String,
    /// Where records come from.
    pub source: ConnectorConfig,
    /// The aggregation stages (a JSON array).
    pub pipeline: Value,
    /// Where results go.
    pub sink: ConnectorConfig,
    /// Batching, queues, triggers.
    pub runtime: RuntimeConfig,
    /// What happens on failures.
    pub error_policy: ErrorPolicyConfig,
    /// Where checkpoints and operator state are kept (default: memory).
    pub state: ConnectorConfig,
    /// Tags added to every metric (`metrics.tags`), e.g. environment and tenant.
    pub metric_tags: BTreeMap<String, String>,
    /// Functions available to `$function`.
    pub functions: Arc<FunctionRegistry>,
}

impl StreamingPipelineDefinition {
    /// Starts a builder.
    pub fn builder(pipeline_id: impl Into<String>) -> StreamingPipelineDefinitionBuilder {
        StreamingPipelineDefinitionBuilder {
            def: StreamingPipelineDefinition {
                pipeline_id: pipeline_id.into(),
                source: ConnectorConfig::new("memory"),
                pipeline: Value::Array(Vec::new()),
                sink: ConnectorConfig::new("memory"),
                runtime: RuntimeConfig::default(),
                error_policy: ErrorPolicyConfig::FailFast,
                state: ConnectorConfig::new("memory"),
                metric_tags: BTreeMap::new(),
                functions: Arc::new(FunctionRegistry::new()),
            },
        }
    }

    /// Parses a definition file's text, substituting `${VAR}` from the process environment.
    pub fn from_json_str(text: &str) -> Result<Self, DefinitionError> {
        Self::from_json_str_with_env(text, &|name| std::env::var(name).ok())
    }

    /// Parses a definition, resolving `${VAR}` through `env`.
    pub fn from_json_str_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, DefinitionError> {
        let mut v = parse_value(text).map_err(|e| DefinitionError::new("$", e.to_string()))?;
        substitute_env(&mut v, "", env)?;
        Self::from_value(&v)
    }

    /// Builds a definition from parsed JSON (no environment substitution).
    pub fn from_value(v: &Value) -> Result<Self, DefinitionError> {
        let d = expect_object(v, "$")?;
        check_keys(
            d,
            "",
            &[
                "pipelineId",
                "source",
                "pipeline",
                "sink",
                "runtime",
                "errorPolicy",
                "state",
                "metrics",
            ],
        )?;
        let pipeline_id = match d.get("pipelineId") {
            Some(Value::String(s)) if valid_id(s) => s.to_string(),
            Some(other) => {
                return Err(DefinitionError::new(
                    "pipelineId",
                    format!(
                        "expected a non-empty name of letters, digits, '-', '_' or '.', found {}",
                        other.to_json()
                    ),
                ))
            }
            None => {
                return Err(DefinitionError::new(
                    "pipelineId",
                    "missing: every pipeline needs a unique 'pipelineId'",
                ))
            }
        };
        let required = |key: &str| {
            d.get(key)
                .ok_or_else(|| DefinitionError::new(key, format!("missing '{key}'")))
        };
        let mut builder = Self::builder(pipeline_id);
        builder.def.source = ConnectorConfig::parse(required("source")?, "source")?;
        builder.def.sink = ConnectorConfig::parse(required("sink")?, "sink")?;
        builder.def.pipeline = match d.get("pipeline") {
            None => Value::Array(Vec::new()),
            Some(p @ Value::Array(_)) => p.clone(),
            Some(other) => {
                return Err(DefinitionError::new(
                    "pipeline",
                    format!("expected an array of stages, found {}", other.type_name()),
                ))
            }
        };
        if let Some(r) = d.get("runtime") {
            builder.def.runtime = RuntimeConfig::parse(r, "runtime")?;
        }
        if let Some(p) = d.get("errorPolicy") {
            builder.def.error_policy = ErrorPolicyConfig::parse(p, "errorPolicy")?;
        }
        if let Some(s) = d.get("state") {
            builder.def.state = ConnectorConfig::parse(s, "state")?;
        }
        if let Some(m) = d.get("metrics") {
            let md = expect_object(m, "metrics")?;
            check_keys(md, "metrics", &["tags"])?;
            if let Some(tags) = md.get("tags") {
                for (k, v) in expect_object(tags, "metrics.tags")?.iter() {
                    let Some(s) = v.as_str() else {
                        return Err(DefinitionError::new(
                            format!("metrics.tags.{k}"),
                            "tag values must be strings",
                        ));
                    };
                    builder.def.metric_tags.insert(k.to_string(), s.to_string());
                }
            }
        }
        let def = builder.def;
        def.compile_pipeline()?;
        Ok(def)
    }

    /// Compiles the stages (errors name `pipeline[i]...`).
    pub fn compile_pipeline(&self) -> Result<Pipeline, DefinitionError> {
        Ok(Pipeline::compile_with(
            &self.pipeline,
            self.functions.clone(),
        )?)
    }
}

/// Builds a [`StreamingPipelineDefinition`] in code.
///
/// ```
/// use stream_core::streaming::{ConnectorConfig, StreamingPipelineDefinition, Trigger};
///
/// let def = StreamingPipelineDefinition::builder("orders-ltv")
///     .source(ConnectorConfig::new("file").option("path", "orders.jsonl"))
///     .pipeline_json(r#"[{"$match": {"status": "PAID"}}]"#).unwrap()
///     .sink(ConnectorConfig::new("file").option("path", "out.jsonl"))
///     .trigger(Trigger::AvailableNow)
///     .build()
///     .unwrap();
/// assert_eq!(def.pipeline_id, "orders-ltv");
/// ```
#[derive(Debug, Clone)]
pub struct StreamingPipelineDefinitionBuilder {
    def: StreamingPipelineDefinition,
}

impl StreamingPipelineDefinitionBuilder {
    /// Sets the source.
    pub fn source(mut self, mut c: ConnectorConfig) -> Self {
        if c.path.is_empty() {
            c.path = "source".into(); // so option errors read `source.options.<key>`
        }
        self.def.source = c;
        self
    }
    /// Sets the sink.
    pub fn sink(mut self, mut c: ConnectorConfig) -> Self {
        if c.path.is_empty() {
            c.path = "sink".into(); // so option errors read `sink.options.<key>`
        }
        self.def.sink = c;
        self
    }
    /// Sets the stages from a parsed JSON array.
    pub fn pipeline(mut self, stages: Value) -> Self {
        self.def.pipeline = stages;
        self
    }
    /// Sets the stages from JSON text.
    pub fn pipeline_json(self, text: &str) -> Result<Self, DefinitionError> {
        let v = parse_value(text).map_err(|e| DefinitionError::new("pipeline", e.to_string()))?;
        Ok(self.pipeline(v))
    }
    /// Sets the runtime settings.
    pub fn runtime(mut self, r: RuntimeConfig) -> Self {
        self.def.runtime = r;
        self
    }
    /// Sets the trigger.
    pub fn trigger(mut self, t: Trigger) -> Self {
        self.def.runtime.trigger = t;
        self
    }
    /// Sets the error policy.
    pub fn error_policy(mut self, p: ErrorPolicyConfig) -> Self {
        self.def.error_policy = p;
        self
    }
    /// Sets the state store.
    pub fn state(mut self, mut c: ConnectorConfig) -> Self {
        if c.path.is_empty() {
            c.path = "state".into(); // so option errors read `state.options.<key>`
        }
        self.def.state = c;
        self
    }
    /// Adds a metric tag.
    pub fn metric_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.def.metric_tags.insert(key.into(), value.into());
        self
    }
    /// Sets the `$function` registry.
    pub fn functions(mut self, f: Arc<FunctionRegistry>) -> Self {
        self.def.functions = f;
        self
    }
    /// Validates (compiles the stages) and returns the definition.
    pub fn build(self) -> Result<StreamingPipelineDefinition, DefinitionError> {
        if !valid_id(&self.def.pipeline_id) {
            return Err(DefinitionError::new(
                "pipelineId",
                "expected a non-empty name of letters, digits, '-', '_' or '.'",
            ));
        }
        self.def.compile_pipeline()?;
        Ok(self.def)
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(super) fn expect_object<'v>(v: &'v Value, path: &str) -> Result<&'v Document, DefinitionError> {
    v.as_document().ok_or_else(|| {
        DefinitionError::new(path, format!("expected an object, found {}", v.type_name()))
    })
}

pub(super) fn check_keys(
    d: &Document,
    path: &str,
    allowed: &[&str],
) -> Result<(), DefinitionError> {
    for k in d.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(DefinitionError::new(
                path_key(path, k),
                format!(
                    "unknown setting '{k}' (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// An integer setting given as a number or a numeric string.
fn number_setting(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        other => other.as_i64_exact(),
    }
}

pub(super) fn duration_setting(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        other => match other.as_i64_exact() {
            Some(ms) if ms >= 0 => Ok(Duration::from_millis(ms as u64)),
            _ => Err(format!(
                "expected a duration like \"5 seconds\" or milliseconds, found {}",
                other.to_json()
            )),
        },
    }
}

/// Parses `"5 seconds"`, `"200 ms"`, `"1.5s"`, `"2 minutes"`, `"7d"`, `"1 hour"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid duration '{s}': expected a number followed by a unit, e.g. \"5 seconds\"")
    })?;
    let unit_ms = match unit.trim() {
        "" | "ms" | "millis" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e3,
        "h" | "hour" | "hours" => 3600e3,
        "d" | "day" | "days" => 86_400e3,
        other => return Err(format!("invalid duration '{s}': unknown unit '{other}' (use ms, seconds, minutes, hours or days)")),
    };
    Ok(Duration::from_micros((n * unit_ms * 1000.0).round() as u64))
}

/// Replaces `${VAR}` / `${VAR:-default}` inside every string of `v`.
fn substitute_env(
    v: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), DefinitionError> {
    match v {
        Value::String(s) if s.contains("${") => {
            let replaced = substitute_str(s, env)
                .map_err(|m| DefinitionError::new(if path.is_empty() { "$" } else { path }, m))?;
            *v = Value::string(replaced);
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_env(item, &format!("{path}[{i}]"), env)?;
            }
        }
        Value::Document(d) => {
            for (k, item) in d.iter_mut() {
                let p = path_key(path, k);
                substitute_env(item, &p, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn substitute_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '${{' in \"{s}\""))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name '{name}' in \"{s}\""));
        }
        match (env(name), default) {
            (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set (set it, or write ${{{name}:-default}})"
            ))
            }
            (Some(v), None) => out.push_str(&v),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEF: &str = r#"{
        "pipelineId": "orders-ltv",
        "source": {"type": "file", "options": {"path": "${DATA_DIR:-/data}/orders.jsonl"}},
        "pipeline": [{"$match": {"status": "PAID"}}],
        "sink": {"type": "file", "options": {"path": "${OUT}"}},
        "runtime": {"microBatchSize": "${BATCH:-250}", "maxBatchDelay": "50 ms", "trigger": {"processingTime": "5 seconds"}},
        "errorPolicy": {"retry": {"maxAttempts": 5, "maxDelay": "2s"}, "then": {"deadLetter": {"type": "file", "options": {"path": "dlq.jsonl"}}}, "circuitBreaker": {"failureThreshold": 3}},
        "state": {"type": "file", "options": {"path": "./state"}},
        "metrics": {"tags": {"environment": "test"}}
    }"#;

    fn env(name: &str) -> Option<String> {
        (name == "OUT").then(|| "/tmp/out.jsonl".to_string())
    }

    #[test]
    fn parses_the_documented_format() {
        let def = StreamingPipelineDefinition::from_json_str_with_env(DEF, &env).unwrap();
        assert_eq!(def.pipeline_id, "orders-ltv");
        assert_eq!(
            def.source.required_str("path").unwrap(),
            "/data/orders.jsonl"
        );
        assert_eq!(def.sink.required_str("path").unwrap(), "/tmp/out.jsonl");
        assert_eq!(def.runtime.micro_batch_size, 250);
        assert_eq!(def.runtime.max_batch_delay, Duration::from_millis(50));
        assert_eq!(
            def.runtime.trigger,
            Trigger::ProcessingTime(Duration::from_secs(5))
        );
        assert_eq!(
            def.error_policy
                .dead_letter()
                .unwrap()
                .required_str("path")
                .unwrap(),
            "dlq.jsonl"
        );
        match &def.error_policy {
            ErrorPolicyConfig::CircuitBreaker { breaker, inner } => {
                assert_eq!(breaker.failure_threshold, 3);
                assert!(
                    matches!(**inner, ErrorPolicyConfig::Retry { ref retry, .. } if retry.max_attempts == 5 && retry.max_delay == Duration::from_secs(2))
                );
            }
            other => panic!("unexpected policy {other:?}"),
        }
        assert_eq!(def.metric_tags["environment"], "test");
    }

    #[test]
    fn errors_name_the_path() {
        let e = StreamingPipelineDefinition::from_json_str_with_env(DEF, &|_| None).unwrap_err();
        assert_eq!(e.path, "sink.options.path");
        assert!(e.message.contains("OUT is not set"), "{e}");
        let bad = DEF.replace(
            r#""microBatchSize": "${BATCH:-250}""#,
            r#""microBatchSize": 0"#,
        );
        let e = StreamingPipelineDefinition::from_json_str_with_env(&bad, &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "runtime.microBatchSize: expected a positive integer, found 0"
        );
        let bad = DEF.replace(
            r#"{"$match": {"status": "PAID"}}"#,
            r#"{"$match": {"status": "PAID"}}, {"$bogus": 1}"#,
        );
        let e = StreamingPipelineDefinition::from_json_str_with_env(&bad, &env).unwrap_err();
        assert_eq!(e.path, "pipeline[1].$bogus");
        let bad = DEF.replace(r#""trigger""#, r#""trigge""#);
        let e = StreamingPipelineDefinition::from_json_str_with_env(&bad, &env).unwrap_err();
        assert_eq!(e.path, "runtime.trigge");
    }

    #[test]
    fn error_policies_take_one_primary_action() {
        let bad = DEF.replace(
            r#""then": {"deadLetter""#,
            r#""deadLetter": {"type": "file"}, "then": {"deadLetter""#,
        );
        let e = StreamingPipelineDefinition::from_json_str_with_env(&bad, &env).unwrap_err();
        assert_eq!(e.path, "errorPolicy");
        assert!(e.message.contains("choose one of retry, deadLetter"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5 seconds").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(
            parse_duration("1.5 s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("five seconds").is_err());
        assert!(parse_duration("5 fortnights")
            .unwrap_err()
            .contains("unknown unit"));
    }
}
