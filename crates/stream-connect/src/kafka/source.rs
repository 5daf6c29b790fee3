//! The Kafka source: one consumer in a consumer group, polled on tokio's blocking pool.

use super::{
    client_config, kafka_error, parse_partition_name, partition_name, register_group,
    GroupMetadataSource, NAME,
};
use async_trait::async_trait;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use stream_core::streaming::{
    ConnectorConfig, ConnectorError, DefinitionError, Payload, Rebalance, Record, Source,
    SourceBatch, SourcePositions,
};
use stream_core::value::{Document, Value};
use tracing::{info, warn};

/// Timeout of the blocking metadata, offset and commit requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a fetch waits for the group's first assignment before returning empty.
const FIRST_ASSIGNMENT_WAIT: Duration = Duration::from_secs(10);

/// How long a fetch keeps waiting past `max_wait` while an assigned partition is known
/// to hold records not read yet.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// Where a partition without a checkpoint position or committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartingOffsets {
    Earliest,
    Latest,
    /// The first record at or after this time (epoch millis).
    Timestamp(i64),
}

/// What to subscribe to.
#[derive(Debug, Clone)]
enum Subscription {
    Topics(Vec<String>),
    /// A regular expression over topic names (librdkafka syntax, without the leading `^`).
    Pattern(String),
}

/// Parsed source options.
pub(super) struct SourceOptions {
    client: rdkafka::ClientConfig,
    subscription: Subscription,
    starting: StartingOffsets,
    max_per_trigger: Option<usize>,
    metadata: bool,
}

impl SourceOptions {
    pub(super) fn parse(
        config: &ConnectorConfig,
        pipeline_id: &str,
    ) -> Result<SourceOptions, DefinitionError> {
        let mut client = client_config(config)?;
        let subscription = match (
            config.options.get("topics"),
            config.str_option("topicPattern")?,
        ) {
            (Some(_), Some(_)) => {
                return Err(config.option_error(
                    "topicPattern",
                    "give either 'topics' or 'topicPattern', not both",
                ))
            }
            (None, None) => {
                return Err(config.option_error(
                    "topics",
                    "the kafka source needs 'topics' (a name or a list of names) or 'topicPattern'",
                ))
            }
            (None, Some(pattern)) => {
                let pattern = pattern.trim_start_matches('^');
                regex::Regex::new(pattern).map_err(|e| {
                    config.option_error("topicPattern", format!("invalid regular expression: {e}"))
                })?;
                Subscription::Pattern(pattern.to_string())
            }
            (Some(v), None) => {
                let names: Option<Vec<String>> = match v {
                    Value::String(s) => Some(vec![s.to_string()]),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_string))
                        .collect(),
                    _ => None,
                };
                match names {
                    Some(n) if !n.is_empty() && n.iter().all(|t| !t.is_empty()) => {
                        Subscription::Topics(n)
                    }
                    _ => {
                        return Err(config.option_error(
                            "topics",
                            format!(
                                "expected a topic name or a non-empty list of names, found {}",
                                v.to_json()
                            ),
                        ))
                    }
                }
            }
        };
        let starting = match config.options.get("startingOffsets") {
            None | Some(Value::Null) => StartingOffsets::Earliest,
            Some(Value::String(s)) if s == "earliest" => StartingOffsets::Earliest,
            Some(Value::String(s)) if s == "latest" => StartingOffsets::Latest,
            Some(Value::Date(ms)) => StartingOffsets::Timestamp(*ms),
            Some(Value::Document(d)) => match d.get("timestamp") {
                Some(Value::Date(ms)) => StartingOffsets::Timestamp(*ms),
                Some(v) => match v.as_i64_exact() {
                    Some(ms) => StartingOffsets::Timestamp(ms),
                    None => {
                        return Err(config.option_error(
                            "startingOffsets.timestamp",
                            format!("expected epoch milliseconds or a date, found {}", v.to_json()),
                        ))
                    }
                },
                None => {
                    return Err(config.option_error(
                        "startingOffsets",
                        "expected \"earliest\", \"latest\" or {\"timestamp\": <epoch millis>}",
                    ))
                }
            },
            Some(other) => {
                return Err(config.option_error(
                    "startingOffsets",
                    format!(
                        "expected \"earliest\", \"latest\" or {{\"timestamp\": <epoch millis>}}, found {}",
                        other.to_json()
                    ),
                ))
            }
        };
        let max_per_trigger = match config.u64_option("maxOffsetsPerTrigger")? {
            Some(0) => {
                return Err(config.option_error(
                    "maxOffsetsPerTrigger",
                    "expected a positive integer, found 0",
                ))
            }
            other => other.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let metadata = config.bool_option("metadata")?.unwrap_or(true);
        let group_id = config
            .str_option("groupId")?
            .map(str::to_string)
            .unwrap_or_else(|| format!("srotax-{pipeline_id}"));
        // librdkafka's default, 1 s, stops fetching a partition for a second whenever
        // its prefetch queue was full once, though the pipeline drains it in
        // milliseconds (seen as one-second gaps in the input).
        if client.get("fetch.queue.backoff.ms").is_none() {
            client.set("fetch.queue.backoff.ms", "10");
        }
        client
            .set("group.id", group_id)
            // Offsets are committed by SrotaX after the covering checkpoint only.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Never read output of aborted (or still open) transactions.
            .set("isolation.level", "read_committed")
            // Per-partition high watermarks for the lag metric.
            .set("statistics.interval.ms", "1000")
            .set(
                "auto.offset.reset",
                if starting == StartingOffsets::Latest {
                    "latest"
                } else {
                    "earliest"
                },
            );
        Ok(SourceOptions {
            client,
            subscription,
            starting,
            max_per_trigger,
            metadata,
        })
    }
}

type TopicPartition = (String, i32);

/// State shared by the source and the consumer's callbacks (rebalances, statistics),
/// which librdkafka runs inside `poll`.
#[derive(Default)]
struct Shared {
    /// Next offset to read per partition: from the checkpoint, then from what was read.
    /// An assigned partition starts here, so the operator state restored from the
    /// checkpoint and the records read next always fit together.
    positions: Mutex<HashMap<TopicPartition, i64>>,
    /// High watermark per partition, from librdkafka's statistics.
    high_watermarks: Mutex<HashMap<TopicPartition, i64>>,
    /// Partitions currently assigned to this consumer.
    assigned: Mutex<BTreeSet<TopicPartition>>,
    /// When the group first assigned partitions to this consumer.
    assigned_at: Mutex<Option<Instant>>,
    /// A rebalance received in `poll` and held until the orchestrator has handled it
    /// (checkpointed the revoked partitions, loaded the assigned ones' state):
    /// librdkafka waits for our (un)assign call before the group moves on.
    pending: Mutex<Pending>,
    /// `pending` is not empty (checked per message, so not behind the lock).
    rebalancing: AtomicBool,
    /// The source is being dropped: the consumer's close revokes everything at once.
    closing: AtomicBool,
}

#[derive(Default)]
struct Pending {
    revoked: Vec<TopicPartition>,
    assigned: Vec<TopicPartition>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The consumer's callbacks.
struct SourceContext {
    shared: Arc<Shared>,
    starting: StartingOffsets,
    pipeline_id: String,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let mut high = lock(&self.shared.high_watermarks);
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" partition.
                if partition >= 0 && p.hi_offset >= 0 {
                    high.insert((topic.clone(), partition), p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions = || -> Vec<TopicPartition> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        };
        let closing = self.shared.closing.load(Ordering::Acquire);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if !closing => {
                lock(&self.shared.pending).assigned.extend(partitions());
                self.shared.rebalancing.store(true, Ordering::Release);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if !closing => {
                // Released only after the orchestrator checkpointed them and committed
                // their offsets (`finish_rebalance`): the next owner starts there.
                lock(&self.shared.pending).revoked.extend(partitions());
                self.shared.rebalancing.store(true, Ordering::Release);
            }
            // Closing: the final checkpoint is saved and committed already.
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let _ = apply_rebalance(
                    consumer,
                    &self.shared,
                    &self.pipeline_id,
                    Vec::new(),
                    partitions(),
                );
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let _ = apply_rebalance(
                    consumer,
                    &self.shared,
                    &self.pipeline_id,
                    partitions(),
                    Vec::new(),
                );
            }
            other => {
                warn!(pipeline = %self.pipeline_id, error = ?other, "kafka rebalance error");
                let _ = consumer.unassign();
                lock(&self.shared.assigned).clear();
            }
        }
    }
}

/// The names of partitions, as in positions.
fn names(parts: &[TopicPartition]) -> Vec<String> {
    parts.iter().map(|(t, p)| partition_name(t, *p)).collect()
}

/// Carries out a rebalance: releases `revoked` and starts reading `assigned` (see
/// [`SourceContext::start_positions`]), incrementally under the cooperative protocol.
fn apply_rebalance(
    consumer: &SourceConsumer,
    shared: &Shared,
    pipeline_id: &str,
    revoked: Vec<TopicPartition>,
    assigned: Vec<TopicPartition>,
) -> Result<(), KafkaError> {
    let cooperative = matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    );
    let list = |parts: &[TopicPartition]| {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in parts {
            tpl.add_partition(topic, *partition);
        }
        tpl
    };
    if !revoked.is_empty() {
        info!(pipeline = %pipeline_id, partitions = ?names(&revoked), "kafka partitions revoked");
        if cooperative {
            consumer.incremental_unassign(&list(&revoked))?;
        } else {
            consumer.unassign()?;
        }
        let mut held = lock(&shared.assigned);
        for tp in &revoked {
            held.remove(tp);
        }
    }
    if !assigned.is_empty() {
        let mut tpl = list(&assigned);
        consumer.context().start_positions(consumer, &mut tpl);
        info!(pipeline = %pipeline_id, partitions = ?names(&assigned), "kafka partitions assigned");
        if cooperative {
            consumer.incremental_assign(&tpl)?;
        } else {
            consumer.assign(&tpl)?;
        }
        lock(&shared.assigned_at).get_or_insert_with(Instant::now);
        lock(&shared.assigned).extend(assigned);
    }
    Ok(())
}

impl SourceContext {
    /// Sets where each newly assigned partition starts: the position this source holds
    /// (checkpoint or already read), else the group's committed offset, else
    /// `startingOffsets`.
    fn start_positions(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let mut unknown = TopicPartitionList::new();
        {
            let positions = lock(&self.shared.positions);
            for e in tpl.elements() {
                let key = (e.topic().to_string(), e.partition());
                if !positions.contains_key(&key) {
                    unknown.add_partition(e.topic(), e.partition());
                }
            }
            for ((topic, partition), offset) in positions.iter() {
                if tpl.find_partition(topic, *partition).is_some() {
                    let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(*offset));
                }
            }
        }
        let StartingOffsets::Timestamp(ts) = self.starting else {
            return; // committed offset, else auto.offset.reset
        };
        if unknown.count() == 0 {
            return;
        }
        let committed = match consumer.committed_offsets(unknown, REQUEST_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "reading committed offsets failed; startingOffsets.timestamp not applied");
                return;
            }
        };
        let mut by_time = TopicPartitionList::new();
        for e in committed.elements() {
            if !matches!(e.offset(), Offset::Offset(_)) {
                let _ = by_time.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ts));
            }
        }
        drop(committed);
        if by_time.count() == 0 {
            return;
        }
        match consumer.offsets_for_times(by_time, REQUEST_TIMEOUT) {
            Ok(found) => {
                for e in found.elements() {
                    // No record at or after the time: start at the end.
                    let offset = match e.offset() {
                        Offset::Offset(o) => Offset::Offset(o),
                        _ => Offset::End,
                    };
                    let _ = tpl.set_partition_offset(e.topic(), e.partition(), offset);
                }
            }
            Err(e) => {
                warn!(error = %e, "looking up offsets by timestamp failed; starting from the earliest offset")
            }
        }
    }
}

type SourceConsumer = BaseConsumer<SourceContext>;

/// Gives the transactional sink this consumer's group metadata, without keeping the
/// consumer alive.
struct GroupOf(Weak<SourceConsumer>);

impl GroupMetadataSource for GroupOf {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.0.upgrade()?.group_metadata()
    }
}

/// Reads records from Kafka topics as a member of a consumer group.
pub struct KafkaSource {
    consumer: Arc<SourceConsumer>,
    shared: Arc<Shared>,
    subscription: Subscription,
    subscribed: bool,
    max_per_trigger: Option<usize>,
    metadata: bool,
    pipeline_id: String,
    last_lag: Option<Instant>,
    lag: Option<u64>,
    names: PartitionNames,
    /// The pending rebalance was reported by `take_rebalance`.
    rebalance_reported: bool,
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Dropping the consumer closes it, which revokes its partitions: that must not
        // wait for an orchestrator that is gone, nor for a rebalance held here.
        self.shared.closing.store(true, Ordering::Release);
        let Pending { revoked, assigned } = std::mem::take(&mut *lock(&self.shared.pending));
        if let Err(e) = apply_rebalance(
            &self.consumer,
            &self.shared,
            &self.pipeline_id,
            revoked,
            assigned,
        ) {
            warn!(pipeline = %self.pipeline_id, error = %e, "releasing kafka partitions failed");
        }
    }
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    pub(super) fn new(options: SourceOptions, pipeline_id: &str) -> Result<Self, ConnectorError> {
        let shared = Arc::new(Shared::default());
        let context = SourceContext {
            shared: shared.clone(),
            starting: options.starting,
            pipeline_id: pipeline_id.to_string(),
        };
        let consumer: SourceConsumer = options
            .client
            .create_with_context(context)
            .map_err(|e| ConnectorError::permanent(NAME, format!("creating the consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        register_group(pipeline_id, Arc::new(GroupOf(Arc::downgrade(&consumer))));
        Ok(KafkaSource {
            consumer,
            shared,
            subscription: options.subscription,
            subscribed: false,
            max_per_trigger: options.max_per_trigger,
            metadata: options.metadata,
            pipeline_id: pipeline_id.to_string(),
            last_lag: None,
            lag: None,
            names: PartitionNames::default(),
            rebalance_reported: false,
        })
    }

    fn subscribe(&mut self) -> Result<(), ConnectorError> {
        if self.subscribed {
            return Ok(());
        }
        let topics: Vec<String> = match &self.subscription {
            Subscription::Topics(t) => t.clone(),
            // librdkafka treats a subscription starting with `^` as a regex.
            Subscription::Pattern(p) => vec![format!("^{p}")],
        };
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&refs)
            .map_err(|e| kafka_error("subscribing", e))?;
        self.subscribed = true;
        Ok(())
    }

    /// Lag per assigned partition (high watermark minus next offset to read), published
    /// as the `stream.source.partition_lag` gauge, at most once a second.
    fn update_lag(&mut self) {
        if self
            .last_lag
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_lag = Some(Instant::now());
        let assigned = lock(&self.shared.assigned).clone();
        let high = lock(&self.shared.high_watermarks).clone();
        let positions = lock(&self.shared.positions).clone();
        let mut total = 0;
        for tp in &assigned {
            let Some(&hi) = high.get(tp) else { continue };
            let lag = (hi - positions.get(tp).copied().unwrap_or(0)).max(0) as u64;
            total += lag;
            metrics::gauge!(
                "stream.source.partition_lag",
                "pipeline" => self.pipeline_id.clone(),
                "topic" => tp.0.clone(),
                "partition" => tp.1.to_string()
            )
            .set(lag as f64);
        }
        self.lag = Some(total);
    }

    /// Every partition of the subscribed topics, from the cluster's metadata.
    fn all_partitions(
        consumer: &SourceConsumer,
        subscription: &Subscription,
    ) -> Result<TopicPartitionList, KafkaError> {
        let metadata = consumer.fetch_metadata(None, REQUEST_TIMEOUT)?;
        let pattern = match subscription {
            Subscription::Pattern(p) => regex::Regex::new(&format!("^(?:{p})")).ok(),
            Subscription::Topics(_) => None,
        };
        let mut tpl = TopicPartitionList::new();
        for topic in metadata.topics() {
            let wanted = match subscription {
                Subscription::Topics(t) => t.iter().any(|n| n == topic.name()),
                Subscription::Pattern(_) => {
                    pattern.as_ref().is_some_and(|r| r.is_match(topic.name()))
                }
            };
            if wanted {
                for p in topic.partitions() {
                    tpl.add_partition(topic.name(), p.id());
                }
            }
        }
        Ok(tpl)
    }
}

/// The high watermark librdkafka kept from its last fetch response for a partition
/// (no request); `None` before the first.
fn fetched_high_watermark(consumer: &SourceConsumer, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client handle lives as long as `consumer`; `topic` is NUL-terminated
    // and outlives the call; librdkafka only writes the two offsets.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// Whether an assigned partition holds records this consumer has not read yet, by the
/// high watermark of librdkafka's last fetch response (or, before one, its statistics;
/// no request either way). In the first [`CATCH_UP_WAIT`] after the assignment, a
/// partition whose position or high watermark is not known yet counts as behind too:
/// librdkafka may still be looking up where it starts.
fn behind(consumer: &SourceConsumer, shared: &Shared) -> bool {
    let starting = lock(&shared.assigned_at).is_none_or(|at| at.elapsed() < CATCH_UP_WAIT);
    let assigned = lock(&shared.assigned).clone();
    let high = lock(&shared.high_watermarks).clone();
    let read = lock(&shared.positions).clone();
    // librdkafka's own position also moves past transaction markers.
    let fetched = consumer.position().ok();
    assigned.iter().any(|tp| {
        let at = fetched
            .as_ref()
            .and_then(|f| f.find_partition(&tp.0, tp.1))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let high = fetched_high_watermark(consumer, &tp.0, tp.1).or(high.get(tp).copied());
        match (read.get(tp).copied().max(at), high) {
            (Some(position), Some(high)) => high > position,
            // An empty partition: nothing to wait for.
            (None, Some(0)) => false,
            _ => starting,
        }
    })
}

/// The shared name of each partition (`topic:partition`), made once.
#[derive(Default)]
struct PartitionNames(HashMap<TopicPartition, Arc<str>>);

impl PartitionNames {
    fn get(&self, (topic, partition): &(&str, i32)) -> Option<&Arc<str>> {
        // Few partitions: a scan avoids allocating a key per lookup.
        self.0
            .iter()
            .find(|((t, p), _)| p == partition && t == topic)
            .map(|(_, name)| name)
    }

    fn insert(&mut self, key: TopicPartition, name: Arc<str>) {
        self.0.insert(key, name);
    }
}

/// Turns a message into a record: the value's JSON text, with `_stream_meta.source`
/// spliced in front of its first field when `metadata` is on.
fn to_record(m: &BorrowedMessage<'_>, metadata: bool, names: &mut PartitionNames) -> Record {
    let offset = m.offset();
    let partition = match names.get(&(m.topic(), m.partition())) {
        Some(name) => name.clone(),
        None => {
            let name: Arc<str> = partition_name(m.topic(), m.partition()).into();
            names.insert((m.topic().to_string(), m.partition()), name.clone());
            name
        }
    };
    let event_time = m.timestamp().to_millis();
    let bytes = m.payload().unwrap_or_default();
    // The common case, valid UTF-8, is checked with the fast validator.
    let value = match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    let text = if metadata {
        with_metadata(&value, m, event_time)
    } else {
        value.into_owned()
    };
    Record {
        payload: Payload::Json(text),
        partition,
        position: Value::Int64(offset + 1),
        event_time,
    }
}

fn with_metadata(value: &str, m: &BorrowedMessage<'_>, event_time: Option<i64>) -> String {
    let trimmed = value.trim_start();
    let Some(rest) = trimmed.strip_prefix('{') else {
        return value.to_string(); // not an object: fails parsing, through the error policy
    };
    let mut source = Document::new();
    source.insert("type", Value::string(NAME));
    source.insert("topic", Value::string(m.topic()));
    source.insert("partition", Value::Int32(m.partition()));
    source.insert("offset", Value::Int64(m.offset()));
    source.insert(
        "key",
        m.key()
            .map(|k| Value::string(String::from_utf8_lossy(k).as_ref()))
            .unwrap_or(Value::Null),
    );
    source.insert(
        "timestamp",
        event_time.map(Value::Date).unwrap_or(Value::Null),
    );
    let mut headers = Document::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let v = header
                .value
                .map(|v| Value::string(String::from_utf8_lossy(v).as_ref()))
                .unwrap_or(Value::Null);
            headers.insert(header.key, v);
        }
    }
    source.insert("headers", Value::Document(headers));
    let mut meta = Document::new();
    meta.insert("source", Value::Document(source));
    splice_meta(rest, &Value::Document(meta).to_json())
}

/// `{"_stream_meta": META, ...rest}` from the text after an object's opening brace.
fn splice_meta(rest: &str, meta: &str) -> String {
    let separator = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!("{{\"_stream_meta\":{meta}{separator}{rest}")
}

#[async_trait]
impl Source for KafkaSource {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, ConnectorError> {
        self.subscribe()?;
        let limit = self
            .max_per_trigger
            .map_or(max_records, |m| m.min(max_records))
            .max(1);
        let consumer = self.consumer.clone();
        let metadata = self.metadata;
        let shared = self.shared.clone();
        let mut names = std::mem::take(&mut self.names);
        let polled = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut records = Vec::with_capacity(limit.min(1 << 16));
            // A rebalance (received inside `poll`) is handed to the orchestrator at once.
            let rebalancing = || shared.rebalancing.load(Ordering::Acquire);
            // Wait for the first record only.
            while records.is_empty() && !rebalancing() {
                // Before the group's first assignment, "nothing to read" would be wrong
                // (an `availableNow` run would end at once); after it, `behind` below
                // keeps waiting until the first fetch tells where each partition is.
                let deadline = match *lock(&shared.assigned_at) {
                    Some(_) => started + max_wait,
                    None => started + max_wait.max(FIRST_ASSIGNMENT_WAIT),
                };
                // Past the deadline only while catching up (below): poll, do not spin.
                let wait = match deadline.saturating_duration_since(Instant::now()) {
                    Duration::ZERO => Duration::from_millis(10),
                    left => left.min(Duration::from_millis(100).max(max_wait)),
                };
                match consumer.poll(wait) {
                    Some(Ok(m)) => records.push(to_record(&m, metadata, &mut names)),
                    Some(Err(e)) => return (Err(e), names),
                    None if Instant::now() < deadline => {}
                    // Records known to exist are only slow to arrive (a fetch under load):
                    // an empty batch now would end an `availableNow` run early.
                    None if Instant::now() < started + max_wait + CATCH_UP_WAIT
                        && behind(&consumer, &shared) => {}
                    None => return (Ok(records), names),
                }
            }
            // Then take what is already fetched.
            while records.len() < limit && !rebalancing() {
                match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => records.push(to_record(&m, metadata, &mut names)),
                    Some(Err(e)) => {
                        warn!(error = %e, "kafka consumer error");
                        break;
                    }
                    None => break,
                }
            }
            (Ok(records), names)
        })
        .await
        .map_err(|e| kafka_error("polling task", e))?;
        let (polled, names) = polled;
        self.names = names;
        let polled = match polled {
            Ok(records) => records,
            // A topic that does not exist yet: wait for it (it may be created later).
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                warn!(pipeline = %self.pipeline_id, subscription = ?self.subscription, "subscribed topic does not exist (yet); waiting");
                tokio::time::sleep(max_wait.max(Duration::from_millis(500))).await;
                Vec::new()
            }
            Err(e) => return Err(kafka_error("polling", e)),
        };
        {
            // The last record of each partition holds its next offset; records of a
            // partition share one name, so a pointer comparison finds it.
            let mut last: Vec<(&Arc<str>, i64)> = Vec::new();
            for r in &polled {
                if let Value::Int64(next) = r.position {
                    match last.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &r.partition)) {
                        Some(entry) => entry.1 = next,
                        None => last.push((&r.partition, next)),
                    }
                }
            }
            let mut positions = lock(&self.shared.positions);
            for (name, next) in last {
                if let Some((topic, partition)) = parse_partition_name(name) {
                    positions.insert((topic.to_string(), partition), next);
                }
            }
        }
        self.update_lag();
        Ok(SourceBatch {
            records: polled,
            end_of_input: false,
        })
    }

    async fn seek(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        let mut held = lock(&self.shared.positions);
        for (name, position) in positions {
            match (parse_partition_name(name), position.as_i64_exact()) {
                (Some((topic, partition)), Some(offset)) => {
                    held.insert((topic.to_string(), partition), offset);
                }
                _ => {
                    return Err(ConnectorError::permanent(
                        NAME,
                        format!("checkpoint position '{name}' = {} is not a Kafka topic:partition offset (was the checkpoint written by another source? run with --reset)", position.to_json()),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn commit(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        let assigned = lock(&self.shared.assigned).clone();
        let mut tpl = TopicPartitionList::new();
        for (name, position) in positions {
            if let (Some((topic, partition)), Some(offset)) =
                (parse_partition_name(name), position.as_i64_exact())
            {
                // Only the partitions this member owns: another member may be ahead.
                if assigned.contains(&(topic.to_string(), partition)) {
                    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
                        .map_err(|e| kafka_error("building the commit", e))?;
                }
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| kafka_error("commit task", e))?
            .map_err(|e| kafka_error("committing offsets", e))
    }

    async fn committed_positions(&mut self) -> Result<Option<SourcePositions>, ConnectorError> {
        let consumer = self.consumer.clone();
        let subscription = self.subscription.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let all = Self::all_partitions(&consumer, &subscription)?;
            let committed = consumer.committed_offsets(all, REQUEST_TIMEOUT)?;
            let mut out = SourcePositions::new();
            for e in committed.elements() {
                if let Offset::Offset(o) = e.offset() {
                    out.insert(partition_name(e.topic(), e.partition()), Value::Int64(o));
                }
            }
            // Dropped here, before the consumer can be (librdkafka hangs otherwise).
            drop(committed);
            Ok::<_, KafkaError>(out)
        })
        .await
        .map_err(|e| kafka_error("offset task", e))?
        .map_err(|e| kafka_error("reading the group's committed offsets", e))?;
        Ok(Some(committed))
    }

    fn is_bounded(&self) -> bool {
        false
    }

    fn partitions_move(&self) -> bool {
        true
    }

    fn take_rebalance(&mut self) -> Option<Rebalance> {
        if self.rebalance_reported || !self.shared.rebalancing.load(Ordering::Acquire) {
            return None;
        }
        self.rebalance_reported = true;
        let pending = lock(&self.shared.pending);
        Some(Rebalance {
            revoked: names(&pending.revoked),
            assigned: names(&pending.assigned),
        })
    }

    async fn finish_rebalance(&mut self) -> Result<(), ConnectorError> {
        let Pending { revoked, assigned } = std::mem::take(&mut *lock(&self.shared.pending));
        self.rebalance_reported = false;
        let (consumer, shared, id) = (
            self.consumer.clone(),
            self.shared.clone(),
            self.pipeline_id.clone(),
        );
        let result = tokio::task::spawn_blocking(move || {
            let result = apply_rebalance(&consumer, &shared, &id, revoked, assigned);
            shared.rebalancing.store(false, Ordering::Release);
            result
        })
        .await
        .map_err(|e| kafka_error("rebalance task", e))?;
        result.map_err(|e| kafka_error("applying the rebalance", e))
    }

    fn lag(&self) -> Option<u64> {
        self.lag
    }
}

#[cfg(test)]
mod tests {
    use super::splice_meta;
    use stream_core::value::parse_document;

    #[test]
    fn metadata_is_spliced_into_any_object() {
        for (rest, expected) in [
            (r#""a": 1}"#, r#"{"_stream_meta":{"x":1},"a":1}"#),
            ("}", r#"{"_stream_meta":{"x":1}}"#),
            (" \n }", r#"{"_stream_meta":{"x":1}}"#),
        ] {
            let text = splice_meta(rest, r#"{"x":1}"#);
            assert_eq!(parse_document(&text).unwrap().to_json(), expected, "{text}");
        }
    }
}
