//! The Kafka sink: an idempotent producer (`acks=all`), transactional under
//! exactly-once.
//!
//! A batch counts as written only when the delivery report of every one of its
//! messages has arrived. Under `"processingGuarantee": "exactly_once"` the orchestrator
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
use std::time::Duration;
use stream_core::expr::Expression;
use stream_core::streaming::{
    ConnectorConfig, ConnectorError, DefinitionError, Sink, SourcePositions,
};
use stream_core::value::{Document, ExtJsonMode, Value};
use tracing::info;

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

async fn await_all(pending: &mut Vec<DeliveryFuture>) -> Result<(), ConnectorError> {
    let mut first_error = None;
    for f in pending.drain(..) {
        let result = match f.await {
            Ok(Ok(_)) => continue,
            Ok(Err((e, _))) => delivery_error(e),
            Err(_) => kafka_error("delivering a message", "the producer was dropped"),
        };
        first_error.get_or_insert(result);
    }
    first_error.map_or(Ok(()), Err)
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        let outgoing: Vec<Outgoing> = batch
            .iter()
            .map(|d| self.render(d))
            .collect::<Result<_, _>>()?;
        let producer = self.producer()?.clone();
        let mut pending = Vec::with_capacity(outgoing.len());
        for o in &outgoing {
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
                    Ok(f) => {
                        pending.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // The local queue is full: wait for what is in flight first.
                        record = r;
                        await_all(&mut pending).await?;
                        if pending.is_empty() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Err((e, _)) => {
                        await_all(&mut pending).await?;
                        return Err(delivery_error(e));
                    }
                }
            }
        }
        await_all(&mut pending).await
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        // `write` returns only after every delivery report of its batch arrived.
        Ok(())
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
        if !self.in_transaction {
            return self.flush().await;
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
        .await
    }
}
