//! The `memory` connector: named in-process channels, for tests and for embedding
//! SrotaX in an application.
//!
//! A channel is an append-only log of documents in a [`MemoryHub`]. Application code
//! [`MemoryHub::push`]es documents into it; a `memory` sink appends what it receives
//! to the channel named by its `name` option; [`MemoryHub::documents`] reads a
//! channel. A `memory` source with the same `name` reads the log from the start (or
//! from its checkpoint), so one pipeline's memory sink can feed another's source.
//!
//! Positions are sequence numbers: a record's position is the count of documents up to
//! and including it, and `seek` skips that many. The log keeps every document until
//! [`MemoryHub::remove`], so a pipeline restarted in the same process replays exactly
//! what followed its checkpoint.
//!
//! A source is unbounded unless `bounded: true`; a bounded source ends once it has
//! read everything **and** the channel was [closed](MemoryHub::close). Closing first
//! and pushing later is an error, so a bounded run never misses documents.

use crate::options::check_known;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;
use stream_core::streaming::{
    ConnectorConfig, ConnectorContext, ConnectorError, ConnectorProvider, DefinitionError, Payload,
    Record, Sink, Source, SourceBatch, SourcePositions,
};
use stream_core::value::{parse_document, Document, Value};
use tokio::sync::watch;

const NAME: &str = "memory";

/// A failure of a [`MemoryHub`] operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The channel was closed with [`MemoryHub::close`]; nothing more can be added.
    #[error("memory channel '{0}' is closed: nothing can be added after close() (use another name or remove() it first)")]
    Closed(String),
    /// The text given to [`MemoryHub::push_json`] is not a JSON object.
    #[error("memory channel '{channel}': not a JSON object: {message}")]
    InvalidJson {
        /// The channel.
        channel: String,
        /// The parser's message.
        message: String,
    },
    /// [`MemoryHub::wait_for`] timed out.
    #[error("memory channel '{channel}' holds {found} documents after {waited:?}; expected at least {expected}")]
    Timeout {
        /// The channel.
        channel: String,
        /// Documents expected.
        expected: usize,
        /// Documents present.
        found: usize,
        /// How long it waited.
        waited: Duration,
    },
}

#[derive(Debug, Default)]
struct Log {
    documents: Vec<Document>,
    closed: bool,
}

#[derive(Debug)]
struct Channel {
    log: Mutex<Log>,
    /// Bumped on every change, to wake waiting readers.
    version: watch::Sender<u64>,
}

impl Channel {
    fn new() -> Self {
        Channel {
            log: Mutex::new(Log::default()),
            version: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // Every update is a single push or flag change: a poisoned lock is still consistent.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn append(
        &self,
        name: &str,
        docs: impl IntoIterator<Item = Document>,
    ) -> Result<u64, MemoryError> {
        let mut log = self.lock();
        if log.closed {
            return Err(MemoryError::Closed(name.to_string()));
        }
        log.documents.extend(docs);
        let len = log.documents.len() as u64;
        drop(log);
        self.changed();
        Ok(len)
    }
}

/// A set of named channels. [`MemoryHub::global`] is the process-wide hub the
/// built-in `memory` provider uses; [`MemoryHub::new`] makes a private one for a
/// [`MemoryConnectorProvider::new`]. Clones share the same channels.
#[derive(Debug, Clone, Default)]
pub struct MemoryHub {
    channels: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
}

static GLOBAL: LazyLock<MemoryHub> = LazyLock::new(MemoryHub::new);

impl MemoryHub {
    /// A hub with no channels.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide hub (used by [`crate::register_builtin`]).
    pub fn global() -> MemoryHub {
        GLOBAL.clone()
    }

    fn channel(&self, name: &str) -> Arc<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Channel::new()))
            .clone()
    }

    /// Appends a document; returns its sequence number (the channel's new length).
    pub fn push(&self, name: &str, document: Document) -> Result<u64, MemoryError> {
        self.channel(name).append(name, [document])
    }

    /// Appends documents in order; returns the channel's new length.
    pub fn push_all(
        &self,
        name: &str,
        documents: impl IntoIterator<Item = Document>,
    ) -> Result<u64, MemoryError> {
        self.channel(name).append(name, documents)
    }

    /// Parses a JSON (Extended JSON) object and appends it.
    pub fn push_json(&self, name: &str, json: &str) -> Result<u64, MemoryError> {
        let doc = parse_document(json).map_err(|e| MemoryError::InvalidJson {
            channel: name.to_string(),
            message: e.to_string(),
        })?;
        self.push(name, doc)
    }

    /// Marks the channel complete: bounded sources end after its last document.
    pub fn close(&self, name: &str) {
        let channel = self.channel(name);
        channel.lock().closed = true;
        channel.changed();
    }

    /// Every document in the channel, in order (pushed or written by a sink).
    pub fn documents(&self, name: &str) -> Vec<Document> {
        self.channel(name).lock().documents.clone()
    }

    /// Number of documents in the channel.
    pub fn len(&self, name: &str) -> usize {
        self.channel(name).lock().documents.len()
    }

    /// True when the channel holds no document.
    pub fn is_empty(&self, name: &str) -> bool {
        self.len(name) == 0
    }

    /// Deletes the channel (its documents and closed flag). Sources and sinks already
    /// built keep the old channel.
    pub fn remove(&self, name: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Waits until the channel holds at least `count` documents and returns them all.
    pub async fn wait_for(
        &self,
        name: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Document>, MemoryError> {
        let channel = self.channel(name);
        let mut rx = channel.version.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                {
                    let log = channel.lock();
                    if log.documents.len() >= count {
                        return log.documents.clone();
                    }
                }
                // The sender lives in `channel`, which outlives this loop.
                let _ = rx.changed().await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| MemoryError::Timeout {
                channel: name.to_string(),
                expected: count,
                found: channel.lock().documents.len(),
                waited: timeout,
            })
    }
}

/// Provider of the `memory` source and sink (options `name`, and `bounded` for sources).
#[derive(Debug, Clone)]
pub struct MemoryConnectorProvider {
    hub: MemoryHub,
}

impl Default for MemoryConnectorProvider {
    /// A provider over [`MemoryHub::global`].
    fn default() -> Self {
        MemoryConnectorProvider {
            hub: MemoryHub::global(),
        }
    }
}

impl MemoryConnectorProvider {
    /// A provider over the given hub.
    pub fn new(hub: MemoryHub) -> Self {
        MemoryConnectorProvider { hub }
    }

    fn name(config: &ConnectorConfig) -> Result<String, DefinitionError> {
        let name = config.required_str("name")?;
        if name.is_empty() {
            return Err(
                config.option_error("name", "expected a channel name, found an empty string")
            );
        }
        Ok(name.to_string())
    }
}

impl ConnectorProvider for MemoryConnectorProvider {
    fn connector_type(&self) -> &str {
        NAME
    }

    fn create_source(
        &self,
        config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError> {
        check_known(config, &["name", "bounded"])?;
        let name = Self::name(config)?;
        let bounded = config.bool_option("bounded")?.unwrap_or(false);
        let channel = self.hub.channel(&name);
        let version = channel.version.subscribe();
        Ok(Some(Box::new(MemorySource {
            partition: Arc::from(name.as_str()),
            channel,
            version,
            next: 0,
            bounded,
        })))
    }

    fn create_sink(
        &self,
        config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        check_known(config, &["name"])?;
        let name = Self::name(config)?;
        Ok(Some(Box::new(MemorySink {
            channel: self.hub.channel(&name),
            name,
        })))
    }
}

struct MemorySource {
    /// The channel name, also the partition name.
    partition: Arc<str>,
    channel: Arc<Channel>,
    version: watch::Receiver<u64>,
    /// Index of the next document to read.
    next: usize,
    bounded: bool,
}

impl MemorySource {
    /// Up to `max` unread documents, and whether a bounded read is complete.
    fn take(&mut self, max: usize) -> (Vec<Record>, bool) {
        let log = self.channel.lock();
        let start = self.next.min(log.documents.len());
        let end = (start + max).min(log.documents.len());
        let records = log.documents[start..end]
            .iter()
            .enumerate()
            .map(|(i, d)| Record {
                payload: Payload::Document(d.clone()),
                partition: self.partition.clone(),
                position: Value::Int64((start + i + 1) as i64),
                event_time: None,
            })
            .collect();
        self.next = end;
        let done = self.bounded && log.closed && end == log.documents.len();
        (records, done)
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, ConnectorError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Mark the current version seen before looking, so a push in between wakes us.
            self.version.borrow_and_update();
            let (records, end_of_input) = self.take(max_records.max(1));
            if !records.is_empty() || end_of_input {
                return Ok(SourceBatch {
                    records,
                    end_of_input,
                });
            }
            match tokio::time::timeout_at(deadline, self.version.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the channel is gone (cannot happen while we hold it).
                _ => return Ok(SourceBatch::default()),
            }
        }
    }

    async fn seek(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        if let Some(p) = positions.get(&*self.partition) {
            let next = p
                .as_i64_exact()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    ConnectorError::permanent(
                        NAME,
                        format!(
                            "invalid checkpoint position {} for channel '{}'",
                            p.to_json(),
                            self.partition
                        ),
                    )
                })?;
            self.next = next;
        }
        Ok(())
    }

    fn is_bounded(&self) -> bool {
        self.bounded
    }
}

struct MemorySink {
    name: String,
    channel: Arc<Channel>,
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        self.channel
            .append(&self.name, batch.iter().cloned())
            .map(|_| ())
            .map_err(|e| ConnectorError::permanent(NAME, e.to_string()))
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
