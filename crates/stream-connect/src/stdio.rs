//! The `stdio` connector: JSON Lines on the process's standard input and output.
//!
//! **Source**: reads stdin line by line (blank lines skipped) and ends at EOF, so it is
//! bounded. Its single partition is `stdin`; positions are line numbers, kept for
//! metrics and logs only: stdin cannot be replayed, so a restored checkpoint is ignored
//! with a warning.
//!
//! **Sink**: writes each document as one line of relaxed Extended JSON to stdout and
//! flushes stdout on `flush`.
//!
//! Neither takes options.

use crate::lines::{line_text, write_lines, READ_BUFFER};
use crate::options::check_known;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use stream_core::streaming::{
    ConnectorConfig, ConnectorContext, ConnectorError, ConnectorProvider, DefinitionError, Payload,
    Record, Sink, Source, SourceBatch, SourcePositions,
};
use stream_core::value::{Document, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Stdin};
use tokio::time::Instant;
use tracing::warn;

const NAME: &str = "stdio";
const PARTITION: &str = "stdin";

/// Provider of the `stdio` source (stdin) and sink (stdout).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioConnectorProvider;

impl ConnectorProvider for StdioConnectorProvider {
    fn connector_type(&self) -> &str {
        NAME
    }

    fn create_source(
        &self,
        config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError> {
        check_known(config, &[])?;
        Ok(Some(Box::new(StdinSource {
            reader: None,
            pending: Vec::new(),
            line: 0,
            ended: false,
        })))
    }

    fn create_sink(
        &self,
        config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        check_known(config, &[])?;
        Ok(Some(Box::new(StdoutSink {
            buffer: String::new(),
        })))
    }
}

struct StdinSource {
    /// Opened on the first fetch, so building the source does not touch stdin.
    reader: Option<BufReader<Stdin>>,
    /// A line being read (kept across fetches: reading is resumable after a timeout).
    pending: Vec<u8>,
    /// Lines read so far.
    line: u64,
    ended: bool,
}

#[async_trait]
impl Source for StdinSource {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, ConnectorError> {
        let deadline = Instant::now() + max_wait;
        let reader = self
            .reader
            .get_or_insert_with(|| BufReader::with_capacity(READ_BUFFER, tokio::io::stdin()));
        let mut records = Vec::new();
        while !self.ended && records.len() < max_records.max(1) {
            // Waits up to `max_wait` in all; once it has passed, only lines already
            // buffered are taken. Reading is resumable: bytes of a line cut short by the
            // timeout stay in `pending`.
            let Ok(read) =
                tokio::time::timeout_at(deadline, reader.read_until(b'\n', &mut self.pending))
                    .await
            else {
                break;
            };
            let n = read.map_err(|e| ConnectorError::io(NAME, "cannot read stdin", &e))?;
            if n == 0 {
                self.ended = true;
            } else if self.pending.last() != Some(&b'\n') {
                continue; // a last line without newline: the next read reports EOF
            }
            if !self.pending.is_empty() {
                self.line += 1;
                let line = std::mem::take(&mut self.pending);
                if let Some(text) = line_text(line, PARTITION, self.line) {
                    records.push(Record {
                        payload: Payload::Json(text),
                        partition: Arc::from(PARTITION),
                        position: Value::Int64(self.line as i64),
                        event_time: None,
                    });
                }
                self.pending.clear();
            }
        }
        Ok(SourceBatch {
            records,
            end_of_input: self.ended,
        })
    }

    async fn seek(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        if !positions.is_empty() {
            warn!("stdin cannot be replayed: the stored checkpoint position is ignored and reading starts with the next line");
        }
        Ok(())
    }

    fn is_bounded(&self) -> bool {
        true
    }
}

struct StdoutSink {
    buffer: String,
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        write_lines(&mut self.buffer, batch);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut out = tokio::io::stdout();
        out.write_all(self.buffer.as_bytes())
            .await
            .map_err(|e| ConnectorError::io(NAME, "cannot write to stdout", &e))?;
        out.flush()
            .await
            .map_err(|e| ConnectorError::io(NAME, "cannot flush stdout", &e))?;
        self.buffer.clear();
        Ok(())
    }
}
