//! The `kafka` connector: a consumer-group source and an idempotent (optionally
//! transactional) producer sink, on `rdkafka` (bundled librdkafka). User guide:
//! `docs/connectors/kafka.md`.
//!
//! Positions are named `topic:partition` and hold the *next* offset to read, which is
//! also the offset Kafka commits for a consumer group. The source never lets librdkafka
//! commit by itself: offsets are committed after the checkpoint covering them
//! (at-least-once), or inside the sink's transaction (exactly-once, see [`sink`]).

mod sink;
mod source;

pub use sink::KafkaSink;
pub use source::KafkaSource;

use crate::options::check_known;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use stream_core::streaming::{
    ConnectorConfig, ConnectorContext, ConnectorError, ConnectorProvider, DefinitionError, Sink,
    Source,
};
use stream_core::value::Value;

const NAME: &str = "kafka";

const SOURCE_OPTIONS: &[&str] = &[
    "bootstrapServers",
    "topics",
    "topicPattern",
    "groupId",
    "startingOffsets",
    "maxOffsetsPerTrigger",
    "metadata",
    "properties",
];

const SINK_OPTIONS: &[&str] = &[
    "bootstrapServers",
    "topic",
    "key",
    "headers",
    "compression",
    "transactionalId",
    "properties",
];

/// Provides the `kafka` source and sink.
#[derive(Debug, Default, Clone, Copy)]
pub struct KafkaConnectorProvider;

impl ConnectorProvider for KafkaConnectorProvider {
    fn connector_type(&self) -> &str {
        NAME
    }

    fn create_source(
        &self,
        config: &ConnectorConfig,
        ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError> {
        check_known(config, SOURCE_OPTIONS)?;
        let options = source::SourceOptions::parse(config, &ctx.pipeline_id)?;
        let source = KafkaSource::new(options, &ctx.pipeline_id)
            .map_err(|e| DefinitionError::new(config.path.clone(), e.to_string()))?;
        Ok(Some(Box::new(source)))
    }

    fn create_sink(
        &self,
        config: &ConnectorConfig,
        ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        check_known(config, SINK_OPTIONS)?;
        let options = sink::SinkOptions::parse(config, &ctx.pipeline_id)?;
        let sink = KafkaSink::new(options, &ctx.pipeline_id)
            .map_err(|e| DefinitionError::new(config.path.clone(), e.to_string()))?;
        Ok(Some(Box::new(sink)))
    }
}

/// `bootstrapServers` plus the free-form `properties` (librdkafka settings, e.g.
/// `security.protocol`), in a fresh client config.
fn client_config(config: &ConnectorConfig) -> Result<ClientConfig, DefinitionError> {
    let servers = config.required_str("bootstrapServers")?;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", servers);
    match config.options.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Document(props)) => {
            for (k, v) in props.iter() {
                let text = match v {
                    Value::String(s) => s.to_string(),
                    Value::Bool(_) | Value::Int32(_) | Value::Int64(_) | Value::Double(_) => {
                        v.to_json()
                    }
                    other => {
                        return Err(config.option_error(
                            &format!("properties.{k}"),
                            format!(
                                "expected a string, number or boolean, found {}",
                                other.type_name()
                            ),
                        ))
                    }
                };
                client.set(k.as_str(), text);
            }
        }
        Some(other) => {
            return Err(config.option_error(
                "properties",
                format!(
                    "expected an object of librdkafka settings, found {}",
                    other.type_name()
                ),
            ))
        }
    }
    Ok(client)
}

/// The name of a partition in positions: `topic:partition`.
fn partition_name(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// Splits [`partition_name`]'s output (`None` when `name` is not one).
fn parse_partition_name(name: &str) -> Option<(&str, i32)> {
    let (topic, partition) = name.rsplit_once(':')?;
    Some((topic, partition.parse().ok()?))
}

fn kafka_error(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::transient(NAME, format!("{what}: {e}"))
}

/// The consumer-group identity of each pipeline's source, so that its transactional
/// sink can send the consumed offsets in its transaction (`send_offsets_to_transaction`
/// needs the consumer's group metadata).
fn group_registry() -> &'static Mutex<HashMap<String, Arc<dyn GroupMetadataSource>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<dyn GroupMetadataSource>>>> =
        OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// What a source shares with a transactional sink of the same pipeline.
trait GroupMetadataSource: Send + Sync {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata>;
}

fn register_group(pipeline_id: &str, source: Arc<dyn GroupMetadataSource>) {
    group_registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(pipeline_id.to_string(), source);
}

fn group_metadata(pipeline_id: &str) -> Option<ConsumerGroupMetadata> {
    let source = group_registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(pipeline_id)
        .cloned()?;
    source.group_metadata()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        let name = partition_name("orders.v1", 3);
        assert_eq!(name, "orders.v1:3");
        assert_eq!(parse_partition_name(&name), Some(("orders.v1", 3)));
        assert_eq!(parse_partition_name("orders.v1"), None);
    }
}
