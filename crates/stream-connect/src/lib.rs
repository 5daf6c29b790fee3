//! # stream-connect
//!
//! The built-in connectors of SrotaX: providers of [`Source`]s and [`Sink`]s that the
//! streaming orchestrator finds by the `type` of a definition's `source` / `sink`.
//!
//! | type | source | sink | cargo feature |
//! | --- | --- | --- | --- |
//! | `file` | JSON Lines files (one path or a glob), bounded or `follow` | JSON Lines, appended, fsync on flush | `file` |
//! | `stdio` | stdin, JSON Lines, ends at EOF | stdout, JSON Lines | `stdio` |
//! | `memory` | a named in-process channel ([`MemoryHub`]) | the same channels | `memory` |
//! | `generator` | deterministic synthetic orders or Nexmark events | — | `generator` |
//! | `kafka` | topics or a pattern, in a consumer group | a topic or a topic per document; idempotent, transactional under exactly-once | `kafka` (not default: builds librdkafka) |
//! | `http` | — | POSTs each batch to a URL as a JSON array or JSON Lines | `http` (not default) |
//!
//! Every connector sits behind its cargo feature (all but `kafka` and `http` on by default): a build without a
//! feature does not compile that connector, and a definition naming it fails with
//! `unknown connector type`. [`register_builtin`] adds every enabled provider to a
//! [`ConnectorRegistry`]; [`builtin_registry`] returns a registry holding just them.
//!
//! ```
//! use stream_connect::builtin_registry;
//!
//! let registry = builtin_registry();
//! assert!(registry.types().contains(&"file"));
//! ```
//!
//! Options are camelCase JSON under `options`; an invalid or unknown option fails the
//! definition with a [`stream_core::streaming::DefinitionError`] naming its JSON path,
//! e.g. `source.options.pollInterval`. The user guide of each connector is in
//! `docs/connectors/`.
//!
//! [`Source`]: stream_core::streaming::Source
//! [`Sink`]: stream_core::streaming::Sink

#![warn(missing_docs)]

use stream_core::streaming::ConnectorRegistry;

#[cfg(any(feature = "file", feature = "stdio"))]
mod lines;
#[cfg(any(
    feature = "file",
    feature = "stdio",
    feature = "memory",
    feature = "generator",
    feature = "kafka",
    feature = "http"
))]
mod options;

#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "generator")]
pub mod generator;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "stdio")]
pub mod stdio;

#[cfg(feature = "file")]
pub use file::FileConnectorProvider;
#[cfg(feature = "generator")]
pub use generator::{order, write_orders_jsonl, GeneratorConnectorProvider};
#[cfg(feature = "http")]
pub use http::{HttpConnectorProvider, HttpSink};
#[cfg(feature = "kafka")]
pub use kafka::KafkaConnectorProvider;
#[cfg(feature = "memory")]
pub use memory::{MemoryConnectorProvider, MemoryError, MemoryHub};
#[cfg(feature = "stdio")]
pub use stdio::StdioConnectorProvider;

/// Registers every connector provider whose cargo feature is enabled (`file`,
/// `stdio`, `memory` with [`MemoryHub::global`], `generator`, `kafka`, `http`).
#[allow(unused_variables)] // with every feature off there is nothing to register
pub fn register_builtin(registry: &mut ConnectorRegistry) {
    #[cfg(feature = "file")]
    registry.register(std::sync::Arc::new(FileConnectorProvider));
    #[cfg(feature = "stdio")]
    registry.register(std::sync::Arc::new(StdioConnectorProvider));
    #[cfg(feature = "memory")]
    registry.register(std::sync::Arc::new(MemoryConnectorProvider::default()));
    #[cfg(feature = "generator")]
    registry.register(std::sync::Arc::new(GeneratorConnectorProvider));
    #[cfg(feature = "kafka")]
    registry.register(std::sync::Arc::new(KafkaConnectorProvider));
    #[cfg(feature = "http")]
    registry.register(std::sync::Arc::new(HttpConnectorProvider));
}

/// A registry holding the enabled built-in connectors.
pub fn builtin_registry() -> ConnectorRegistry {
    let mut registry = ConnectorRegistry::new();
    register_builtin(&mut registry);
    registry
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_registry_holds_exactly_the_enabled_connectors() {
        let mut expected = Vec::new();
        if cfg!(feature = "file") {
            expected.push("file");
        }
        if cfg!(feature = "generator") {
            expected.push("generator");
        }
        if cfg!(feature = "http") {
            expected.push("http");
        }
        if cfg!(feature = "kafka") {
            expected.push("kafka");
        }
        if cfg!(feature = "memory") {
            expected.push("memory");
        }
        if cfg!(feature = "stdio") {
            expected.push("stdio");
        }
        assert_eq!(super::builtin_registry().types(), expected);
    }
}
