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
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use std::collections::VecDeque;
use std::time::Duration;
use stream_core::expr::Expression;
use stream_core::streaming::{
    ConnectorConfig, ConnectorError, DefinitionError, Sink, SourcePositions,
};
use stream_core::value::{Document, ExtJsonMode, Value};
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

/// Writes documents as JSON messages to Kafka.
pub struct KafkaSink {
    options: SinkOptions,
    pipeline_id: String,
    producer: Option<FutureProducer>,
    /// True once [`Sink::begin`] switched to a transactional producer.
    transactional: bool,
    in_transaction: bool,
    /// Messages written since the last successful flush, in order.
    unacked: Vec<Outgoing>,
    /// The delivery reports still to come, oldest first: of the last messages of `unacked`.
    pending: VecDeque<DeliveryFuture>,
    /// The first delivery failure since the last flush.
    failure: Option<ConnectorError>,
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

/// A value as message bytes: strings as they are, anything else as JSON.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null | Value::Missing => None,
        Value::String(s) => Some(s.to_string()),
        other => Some(other.to_json()),
    }
}

/// One document, ready to send.
struct Outgoing {
    topic: String,
    key: Option<String>,
    headers: Vec<(String, String)>,
    payload: String,
}

impl KafkaSink {
    pub(super) fn new(options: SinkOptions, pipeline_id: &str) -> Result<Self, ConnectorError> {
        Ok(KafkaSink {
            options,
            pipeline_id: pipeline_id.to_string(),
            producer: None,
            transactional: false,
            in_transaction: false,
            unacked: Vec::new(),
            pending: VecDeque::new(),
            failure: None,
            resend: false,
        })
    }

    /// The producer, created on first use (transactional once [`Sink::begin`] ran).
    fn producer(&mut self) -> Result<&FutureProducer, ConnectorError> {
        let producer = match self.producer.take() {
            Some(p) => p,
            None => self.options.client.create().map_err(|e| {
                ConnectorError::permanent(NAME, format!("creating the producer: {e}"))
            })?,
        };
        Ok(self.producer.insert(producer))
    }

    fn render(&self, doc: &Document) -> Result<Outgoing, ConnectorError> {
        let eval = |what: &str, e: &Expression| {
            e.evaluate(doc).map_err(|err| {
                ConnectorError::permanent(NAME, format!("evaluating sink option '{what}': {err}"))
            })
        };
        let topic = match &self.options.topic {
            Topic::Fixed(t) => t.clone(),
            Topic::Expr(e) => match eval("topic", e)? {
                Value::String(s) if !s.is_empty() => s.to_string(),
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
            Some(e) => text(&eval("key", e)?),
            None => None,
        };
        let mut headers = Vec::with_capacity(self.options.headers.len());
        for (name, e) in &self.options.headers {
            if let Some(v) = text(&eval(&format!("headers.{name}"), e)?) {
                headers.push((name.clone(), v));
            }
        }
        Ok(Outgoing {
            topic,
            key,
            headers,
            payload: doc.to_json_mode(ExtJsonMode::Relaxed),
        })
    }

    /// Runs a blocking transaction call of the producer on the blocking pool.
    async fn transaction_call(
        &mut self,
        what: &'static str,
        call: impl FnOnce(&FutureProducer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), ConnectorError> {
        let producer = self.producer()?.clone();
        tokio::task::spawn_blocking(move || call(&producer))
            .await
            .map_err(|e| kafka_error(what, e))?
            .map_err(|e| kafka_error(what, e))
    }
}

/// Waits for the oldest outstanding delivery report; a failure is kept in `failure`
/// (the first one wins) and reported by the next flush.
async fn settle_oldest(
    pending: &mut VecDeque<DeliveryFuture>,
    failure: &mut Option<ConnectorError>,
) {
    let Some(report) = pending.pop_front() else {
        return;
    };
    let error = match report.await {
        Ok(Ok(_)) => return,
        Ok(Err((e, _))) => delivery_error(e),
        Err(_) => kafka_error("delivering a message", "the producer was dropped"),
    };
    failure.get_or_insert(error);
}

impl KafkaSink {
    /// Queues `unacked[from..]` in the producer. When its local queue is full, waits for
    /// the oldest delivery reports first. An error queueing a message (too large, bad
    /// topic) is returned at once with the message's index: the messages from it on
    /// were not queued.
    async fn send_from(&mut self, from: usize) -> Result<(), (usize, ConnectorError)> {
        let producer = match self.producer() {
            Ok(p) => p.clone(),
            Err(e) => return Err((from, e)),
        };
        let KafkaSink {
            unacked,
            pending,
            failure,
            ..
        } = self;
        let mut refused = None;
        'messages: for (i, o) in unacked.iter().enumerate().skip(from) {
            let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
            for (k, v) in &o.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record: FutureRecord<'_, str, str> = FutureRecord::to(&o.topic)
                .payload(o.payload.as_str())
                .headers(headers);
            if let Some(k) = &o.key {
                record = record.key(k.as_str());
            }
            loop {
                match producer.send_result(record) {
                    Ok(report) => {
                        pending.push_back(report);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        if pending.is_empty() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        } else {
                            settle_oldest(pending, failure).await;
                        }
                    }
                    Err((e, _)) => {
                        refused = Some((i, delivery_error(e)));
                        break 'messages;
                    }
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        let outgoing: Vec<Outgoing> = batch
            .iter()
            .map(|d| self.render(d))
            .collect::<Result<_, _>>()?;
        let from = self.unacked.len();
        self.unacked.extend(outgoing);
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
        while !self.pending.is_empty() {
            settle_oldest(&mut self.pending, &mut self.failure).await;
        }
        match self.failure.take() {
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
        // The aborted output is dropped, not sent again.
        self.unacked.clear();
        self.pending.clear();
        self.failure = None;
        self.resend = false;
        self.in_transaction = false;
        self.transaction_call("aborting the transaction", |p| {
            p.abort_transaction(TRANSACTION_TIMEOUT)
        })
        .await
    }
}
