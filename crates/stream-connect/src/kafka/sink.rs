//! The Kafka sink: an idempotent producer (`acks=all`), transactional under
//! exactly-once.
//!
//! [`Sink::write`] queues a batch's messages and returns; the producer keeps sending
//! while the orchestrator hands over the next batch. [`Sink::flush`] waits for every
//! outstanding delivery report, and only then does the output count as delivered (the
//! orchestrator flushes before every checkpoint, so offsets are never committed ahead
//! of the output). The messages written since the last successful flush are kept, and
//! after a failed delivery a flush sends all of them again in order (at-least-once: a
//! later update of a key is never overtaken by an earlier one). Under `"processingGuarantee": "exactly_once"` the orchestrator
//! calls [`Sink::begin`] first, which switches to a transactional producer; each
//! checkpoint's [`Sink::commit`] sends the consumed source offsets to the transaction
//! (`send_offsets_to_transaction`, with the pipeline's Kafka source's consumer group)
//! and commits it, so output and consumed offsets become visible together.

use super::{client_config, group_metadata, kafka_error, parse_partition_name, NAME};
use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use stream_core::expr::Expression;
use stream_core::streaming::{
    ConnectorConfig, ConnectorError, DefinitionError, Sink, SourcePositions,
};
use stream_core::value::{Document, ExtJsonMode, Value};
use tokio::sync::Notify;
use tracing::info;

/// Batches written before their delivery reports are awaited (see
/// [`Sink::max_unflushed_batches`]): enough to keep the producer busy while the next
/// batches come; their messages are kept until then, so not many more.
const UNFLUSHED_BATCHES: usize = 8;

/// Timeout of transaction calls (init, offsets, commit, abort).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a document goes.
enum Topic {
    Fixed(String),
    /// Evaluated per document (routing); must give a non-empty string.
    Expr(Expression),
}

/// Parsed sink options.
pub(super) struct SinkOptions {
    client: ClientConfig,
    topic: Topic,
    key: Option<Expression>,
    headers: Vec<(String, Expression)>,
    transactional_id: String,
}

fn expression(
    config: &ConnectorConfig,
    key: &str,
    v: &Value,
) -> Result<Expression, DefinitionError> {
    Expression::compile(v).map_err(|e| config.option_error(key, format!("invalid expression: {e}")))
}

impl SinkOptions {
    pub(super) fn parse(
        config: &ConnectorConfig,
        pipeline_id: &str,
    ) -> Result<SinkOptions, DefinitionError> {
        let mut client = client_config(config)?;
        let topic = match config.options.get("topic") {
            Some(Value::String(s)) if !s.is_empty() && !s.starts_with('$') => {
                Topic::Fixed(s.to_string())
            }
            Some(v @ (Value::String(_) | Value::Document(_))) => {
                Topic::Expr(expression(config, "topic", v)?)
            }
            _ => {
                return Err(config.option_error(
                    "topic",
                    "the kafka sink needs 'topic': a topic name, or an expression giving one per document (e.g. \"$region\" or {\"$concat\": [\"orders.\", \"$region\"]})",
                ))
            }
        };
        let key = match config.options.get("key") {
            None | Some(Value::Null) => None,
            Some(v) => Some(expression(config, "key", v)?),
        };
        let headers = match config.options.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Document(d)) => d
                .iter()
                .map(|(name, v)| {
                    Ok((
                        name.to_string(),
                        expression(config, &format!("headers.{name}"), v)?,
                    ))
                })
                .collect::<Result<_, DefinitionError>>()?,
            Some(other) => {
                return Err(config.option_error(
                    "headers",
                    format!(
                        "expected an object of header name to expression, found {}",
                        other.type_name()
                    ),
                ))
            }
        };
        let compression = config.str_option("compression")?.unwrap_or("none");
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression) {
            return Err(config.option_error(
                "compression",
                format!("expected none, gzip, snappy, lz4 or zstd, found '{compression}'"),
            ));
        }
        let transactional_id = config
            .str_option("transactionalId")?
            .map(str::to_string)
            .unwrap_or_else(|| format!("srotax-{pipeline_id}"));
        client
            .set("compression.type", compression)
            .set("acks", "all")
            .set("enable.idempotence", "true");
        Ok(SinkOptions {
            client,
            topic,
            key,
            headers,
            transactional_id,
        })
    }
}

/// Counts the delivery reports of the messages sent and keeps the first failure.
/// librdkafka calls it on the producer's polling thread.
#[derive(Default)]
struct Deliveries {
    settled: AtomicU64,
    failure: Mutex<Option<KafkaError>>,
    /// Woken at every report.
    reported: Notify,
}

impl Deliveries {
    fn take_failure(&self) -> Option<KafkaError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| e.clone());
        }
        self.settled.fetch_add(1, Ordering::Release);
        self.reported.notify_one();
    }
}

type KafkaProducer = ThreadedProducer<Deliveries>;

/// One message written since the last successful flush; its key and payload are
/// ranges of [`Unacked::text`].
struct Outgoing {
    /// `None`: the sink's fixed topic.
    topic: Option<String>,
    key: Option<Range<usize>>,
    headers: Vec<(String, String)>,
    payload: Range<usize>,
}

/// The messages written since the last successful flush, in order. Keys and payloads
/// share one text, kept (with its capacity) from flush to flush, so writing a batch
/// allocates nothing per message.
#[derive(Default)]
struct Unacked {
    text: String,
    messages: Vec<Outgoing>,
}

impl Unacked {
    fn truncate(&mut self, len: usize) {
        if let Some(first) = self.messages.get(len) {
            let start = first.key.as_ref().map_or(first.payload.start, |k| k.start);
            self.text.truncate(start);
        }
        self.messages.truncate(len);
    }

    fn clear(&mut self) {
        self.text.clear();
        self.messages.clear();
    }
}

/// Writes documents as JSON messages to Kafka.
pub struct KafkaSink {
    options: SinkOptions,
    pipeline_id: String,
    producer: Option<KafkaProducer>,
    /// Messages handed to `producer`; flushed once its context counted as many reports.
    sent: u64,
    /// True once [`Sink::begin`] switched to a transactional producer.
    transactional: bool,
    in_transaction: bool,
    unacked: Unacked,
    /// A flush failed: `unacked` must be sent again.
    resend: bool,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("transactional", &self.transactional)
            .finish_non_exhaustive()
    }
}

/// Whether resending cannot help.
fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidMessage
        )
    )
}

fn delivery_error(e: KafkaError) -> ConnectorError {
    if is_permanent(&e) {
        ConnectorError::permanent(NAME, format!("delivering a message: {e}"))
    } else {
        kafka_error("delivering a message", e)
    }
}

/// Appends a value as message bytes: strings as they are, anything else as JSON.
/// `None` for null and missing.
fn write_text(out: &mut String, v: &Value) -> Option<Range<usize>> {
    let start = out.len();
    match v {
        Value::Null | Value::Missing => return None,
        Value::String(s) => out.push_str(s),
        other => other.write_json(out, ExtJsonMode::Relaxed),
    }
    Some(start..out.len())
}

impl KafkaSink {
    pub(super) fn new(options: SinkOptions, pipeline_id: &str) -> Result<Self, ConnectorError> {
        Ok(KafkaSink {
            options,
            pipeline_id: pipeline_id.to_string(),
            producer: None,
            sent: 0,
            transactional: false,
            in_transaction: false,
            unacked: Unacked::default(),
            resend: false,
        })
    }

    /// The producer, created on first use (transactional once [`Sink::begin`] ran).
    fn producer(&mut self) -> Result<&KafkaProducer, ConnectorError> {
        let producer = match self.producer.take() {
            Some(p) => p,
            None => {
                self.sent = 0;
                self.options
                    .client
                    .create_with_context(Deliveries::default())
                    .map_err(|e| {
                        ConnectorError::permanent(NAME, format!("creating the producer: {e}"))
                    })?
            }
        };
        Ok(self.producer.insert(producer))
    }

    /// Appends `doc`'s message to `unacked`; on an error, `unacked` is unchanged.
    fn render(&mut self, doc: &Document) -> Result<(), ConnectorError> {
        let eval = |what: &str, e: &Expression| {
            e.evaluate(doc).map_err(|err| {
                ConnectorError::permanent(NAME, format!("evaluating sink option '{what}': {err}"))
            })
        };
        let topic = match &self.options.topic {
            Topic::Fixed(_) => None,
            Topic::Expr(e) => match eval("topic", e)? {
                Value::String(s) if !s.is_empty() => Some(s.to_string()),
                other => {
                    return Err(ConnectorError::permanent(
                        NAME,
                        format!(
                        "sink option 'topic' must give a non-empty string, gave {} for document {}",
                        other.to_json(),
                        doc.to_json_mode(ExtJsonMode::Relaxed)
                    ),
                    ))
                }
            },
        };
        let key = match &self.options.key {
            Some(e) => Some(eval("key", e)?),
            None => None,
        };
        let mut headers = Vec::with_capacity(self.options.headers.len());
        for (name, e) in &self.options.headers {
            let mut text = String::new();
            if write_text(&mut text, &eval(&format!("headers.{name}"), e)?).is_some() {
                headers.push((name.clone(), text));
            }
        }
        let text = &mut self.unacked.text;
        let key = key.and_then(|k| write_text(text, &k));
        let start = text.len();
        doc.write_json(text, ExtJsonMode::Relaxed);
        self.unacked.messages.push(Outgoing {
            topic,
            key,
            headers,
            payload: start..text.len(),
        });
        Ok(())
    }

    /// Runs a blocking transaction call of the producer on the blocking pool.
    async fn transaction_call(
        &mut self,
        what: &'static str,
        call: impl FnOnce(&KafkaProducer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), ConnectorError> {
        let producer = self.producer()?.clone();
        tokio::task::spawn_blocking(move || call(&producer))
            .await
            .map_err(|e| kafka_error(what, e))?
            .map_err(|e| kafka_error(what, e))
    }

    /// Queues `unacked.messages[from..]` in the producer. When its local queue is
    /// full, waits for delivery reports first. An error queueing a message (too large,
    /// bad topic) is returned at once with the message's index: the messages from it
    /// on were not queued.
    async fn send_from(&mut self, from: usize) -> Result<(), (usize, ConnectorError)> {
        let producer = match self.producer() {
            Ok(p) => p.clone(),
            Err(e) => return Err((from, e)),
        };
        let fixed = match &self.options.topic {
            Topic::Fixed(t) => t.as_str(),
            Topic::Expr(_) => "",
        };
        let Unacked { text, messages } = &self.unacked;
        for (i, o) in messages.iter().enumerate().skip(from) {
            let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
            for (k, v) in &o.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record: BaseRecord<'_, str, str> =
                BaseRecord::to(o.topic.as_deref().unwrap_or(fixed))
                    .payload(&text[o.payload.clone()])
                    .headers(headers);
            if let Some(k) = &o.key {
                record = record.key(&text[k.clone()]);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        self.sent += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        // Reports free the queue; the timeout is only a safety net.
                        let reported = producer.context().reported.notified();
                        let _ = tokio::time::timeout(Duration::from_millis(10), reported).await;
                    }
                    Err((e, _)) => return Err((i, delivery_error(e))),
                }
            }
        }
        Ok(())
    }

    /// Waits until every message sent has its delivery report.
    async fn settle(&self) {
        let Some(producer) = &self.producer else {
            return;
        };
        let deliveries = producer.context();
        loop {
            // Registered before the check, so a report in between still wakes us.
            let reported = deliveries.reported.notified();
            if deliveries.settled.load(Ordering::Acquire) >= self.sent {
                return;
            }
            reported.await;
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        let from = self.unacked.messages.len();
        for doc in batch {
            if let Err(e) = self.render(doc) {
                self.unacked.truncate(from);
                return Err(e);
            }
        }
        // What was not queued is not kept: the error policy decides about it.
        self.send_from(from).await.map_err(|(i, e)| {
            self.unacked.truncate(i);
            e
        })
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.resend {
            self.send_from(0).await.map_err(|(_, e)| e)?;
            self.resend = false;
        }
        self.settle().await;
        let failure = self
            .producer
            .as_ref()
            .and_then(|p| p.context().take_failure());
        match failure.map(delivery_error) {
            None => {
                self.unacked.clear();
                Ok(())
            }
            // A transaction with a failed message cannot commit: it must be aborted
            // (the process stops; a restart resumes from the last checkpoint).
            Some(e) if self.in_transaction => Err(ConnectorError::permanent(NAME, e.message)),
            Some(e) => {
                self.resend = true;
                Err(e)
            }
        }
    }

    async fn open(&mut self) -> Result<(), ConnectorError> {
        // The producer connects and gets its idempotent producer id in the background
        // while the pipeline reads its first batches.
        self.producer().map(|_| ())
    }

    fn max_unflushed_batches(&self) -> usize {
        UNFLUSHED_BATCHES
    }

    fn is_transactional(&self) -> bool {
        true
    }

    async fn begin(&mut self) -> Result<(), ConnectorError> {
        if !self.transactional {
            info!(pipeline = %self.pipeline_id, transactional_id = %self.options.transactional_id, "kafka sink: exactly-once, transactional producer");
            self.options
                .client
                .set("transactional.id", self.options.transactional_id.clone());
            self.producer = None;
            self.transactional = true;
            // Fences an older instance with the same id and aborts its open transaction.
            self.transaction_call("initialising transactions", |p| {
                p.init_transactions(TRANSACTION_TIMEOUT)
            })
            .await?;
        }
        self.transaction_call("beginning a transaction", |p| p.begin_transaction())
            .await?;
        self.in_transaction = true;
        Ok(())
    }

    async fn commit(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        self.flush().await?;
        if !self.in_transaction {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for (name, position) in positions {
            if let (Some((topic, partition)), Some(offset)) =
                (parse_partition_name(name), position.as_i64_exact())
            {
                offsets
                    .add_partition_offset(topic, partition, Offset::Offset(offset))
                    .map_err(|e| kafka_error("building the offsets", e))?;
            }
        }
        if offsets.count() > 0 {
            let group = group_metadata(&self.pipeline_id).ok_or_else(|| {
                ConnectorError::permanent(
                    NAME,
                    "exactly-once needs the pipeline's source to be a kafka source (its consumer group commits with the transaction)",
                )
            })?;
            self.transaction_call("sending offsets to the transaction", move |p| {
                p.send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT)
            })
            .await?;
        }
        self.transaction_call("committing the transaction", |p| {
            p.commit_transaction(TRANSACTION_TIMEOUT)
        })
        .await?;
        self.in_transaction = false;
        Ok(())
    }

    async fn abort(&mut self) -> Result<(), ConnectorError> {
        if !self.in_transaction {
            return Ok(());
        }
        self.in_transaction = false;
        self.transaction_call("aborting the transaction", |p| {
            p.abort_transaction(TRANSACTION_TIMEOUT)
        })
        .await?;
        // The aborted output is dropped, not sent again; the reports of its purged
        // messages come in as failures, which are not this sink's any more.
        self.settle().await;
        if let Some(p) = &self.producer {
            p.context().take_failure();
        }
        self.unacked.clear();
        self.resend = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use stream_core::streaming::ErrorKind;

    fn sink(bootstrap: &str, topic: &str) -> KafkaSink {
        let mut properties = Document::new();
        // Messages the broker does not take in time fail their delivery quickly, and
        // a broker back up is reconnected to at once.
        properties.insert("message.timeout.ms", Value::string("2000"));
        properties.insert("reconnect.backoff.ms", Value::string("10"));
        properties.insert("reconnect.backoff.max.ms", Value::string("100"));
        let config = ConnectorConfig::new("kafka")
            .option("bootstrapServers", bootstrap)
            .option("topic", topic)
            .option("key", "$k")
            .option("properties", Value::Document(properties));
        let options = SinkOptions::parse(&config, "sink-test").expect("valid options");
        KafkaSink::new(options, "sink-test").expect("sink")
    }

    fn docs(from: i32, to: i32) -> Vec<Document> {
        (from..to)
            .map(|i| {
                let mut d = Document::new();
                d.insert("k", Value::string(format!("key-{i}")));
                d.insert("n", Value::Int32(i));
                d
            })
            .collect()
    }

    /// The distinct (key, payload) pairs of partition 0 of `topic`, in the order of
    /// their first copies (at-least-once: a resent message may arrive twice).
    fn read(bootstrap: &str, topic: &str, count: usize) -> Vec<(String, String)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sink-test-reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while out.len() < count && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let text =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
                let message = (text(m.key()), text(m.payload()));
                if !out.contains(&message) {
                    out.push(message);
                }
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_delivery_fails_the_flush_and_the_next_flush_sends_everything_again() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("out", 1, 1).expect("topic");
        let bootstrap = cluster.bootstrap_servers();
        let mut sink = sink(&bootstrap, "out");
        sink.write(&docs(0, 3)).await.expect("write");
        sink.flush().await.expect("flush with the broker up");

        cluster.broker_down(1).expect("broker down");
        sink.write(&docs(3, 6)).await.expect("write");
        sink.write(&docs(6, 8)).await.expect("write");
        let e = sink
            .flush()
            .await
            .expect_err("no broker: the deliveries time out");
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");

        cluster.broker_up(1).expect("broker up");
        // As the orchestrator does: flush again until it succeeds.
        let mut attempts = 1;
        while let Err(e) = sink.flush().await {
            assert!(attempts < 5, "still failing after {attempts} flushes: {e}");
            attempts += 1;
        }
        // Nothing lost, and no message overtakes an earlier one.
        let got = read(&bootstrap, "out", 8);
        let expected: Vec<(String, String)> = (0..8)
            .map(|i| (format!("key-{i}"), format!(r#"{{"k":"key-{i}","n":{i}}}"#)))
            .collect();
        assert_eq!(got, expected);
    }
}
