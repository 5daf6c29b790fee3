//! The `file` connector: JSON Lines files.
//!
//! **Source** (`path`, `follow`, `pollInterval`): reads one file or every file matching a
//! glob, in sorted path order. Each file is a partition named by its path; a record's
//! position is the byte offset just after its line, so a restart opens the file and
//! seeks there. Lines are handed over as raw JSON text for the orchestrator's parser
//! workers; blank lines are skipped. Without `follow` the source is bounded: it ends
//! after the last file, and a last line without a newline is emitted too. With
//! `follow: true` it tails the files (and, for a glob, picks up new matching files)
//! every `pollInterval`, and a line is only emitted once its newline has been written.
//!
//! **Sink** (`path`, `fsync`): appends each document as one line of relaxed Extended
//! JSON, creating parent directories. `flush` writes the buffered lines and, unless
//! `fsync: false`, calls `fsync` (`sync_data`), so an acknowledged batch survives a crash.
//! Its committed position is the file's length: on restart from a checkpoint the file is
//! cut back to it, so lines written after the checkpoint are not duplicated by the replay.
//!
//! File I/O runs on tokio's blocking pool, one task per batch, through a 1 MiB buffered
//! reader: the async runtime is never blocked by disk reads or writes.

use crate::lines::{line_text, read_line, write_lines, READ_BUFFER};
use crate::options::check_known;
use async_trait::async_trait;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stream_core::streaming::{
    ConnectorConfig, ConnectorContext, ConnectorError, ConnectorProvider, DefinitionError, Payload,
    Progress, Record, Sink, Source, SourceBatch, SourcePositions,
};
use stream_core::value::{Document, Value};
use tokio::time::Instant;
use tracing::{debug, info, warn};

const NAME: &str = "file";
const SOURCE_OPTIONS: &[&str] = &["path", "follow", "pollInterval"];
const SINK_OPTIONS: &[&str] = &["path", "fsync"];
/// Default time between two looks at followed files.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Provider of the `file` source and sink.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileConnectorProvider;

impl ConnectorProvider for FileConnectorProvider {
    fn connector_type(&self) -> &str {
        NAME
    }

    fn create_source(
        &self,
        config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError> {
        check_known(config, SOURCE_OPTIONS)?;
        let path = config.required_str("path")?;
        if path.trim().is_empty() {
            return Err(config.option_error(
                "path",
                "expected a file path or a glob pattern, found an empty string",
            ));
        }
        let follow = config.bool_option("follow")?.unwrap_or(false);
        let poll_interval = config
            .duration_option("pollInterval")?
            .unwrap_or(DEFAULT_POLL_INTERVAL);
        if poll_interval.is_zero() {
            return Err(config.option_error(
                "pollInterval",
                "expected a duration greater than 0, e.g. \"200 ms\"",
            ));
        }
        let pattern = FilePattern::new(path).map_err(|m| config.option_error("path", m))?;
        let paths = pattern.resolve();
        if paths.is_empty() && !follow {
            return Err(config.option_error(
                "path",
                format!("no file matches '{path}' (a bounded file source needs at least one file; set \"follow\": true to wait for files)"),
            ));
        }
        let size_hint = if follow {
            None
        } else {
            Some(
                paths
                    .iter()
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum(),
            )
        };
        let files = paths.into_iter().map(TailedFile::new).collect();
        Ok(Some(Box::new(FileSource {
            pattern,
            follow,
            poll_interval,
            files,
            cursor: 0,
            resume: SourcePositions::new(),
            idle_since: None,
            last_scan: Instant::now(),
            size_hint,
        })))
    }

    fn create_sink(
        &self,
        config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        check_known(config, SINK_OPTIONS)?;
        let path = config.required_str("path")?;
        if path.trim().is_empty() {
            return Err(config.option_error("path", "expected a file path, found an empty string"));
        }
        let fsync = config.bool_option("fsync")?.unwrap_or(true);
        Ok(Some(Box::new(FileSink {
            path: PathBuf::from(path),
            fsync,
            file: None,
            size: 0,
            buffer: String::new(),
        })))
    }
}

/// A plain path or a glob pattern.
#[derive(Debug, Clone)]
struct FilePattern {
    text: String,
    glob: Option<glob::Pattern>,
}

impl FilePattern {
    fn new(text: &str) -> Result<Self, String> {
        let glob = if text.contains(['*', '?', '[']) {
            Some(
                glob::Pattern::new(text)
                    .map_err(|e| format!("invalid glob pattern '{text}': {e}"))?,
            )
        } else {
            None
        };
        Ok(FilePattern {
            text: text.to_string(),
            glob,
        })
    }

    /// The matching files, sorted by path.
    fn resolve(&self) -> Vec<PathBuf> {
        if self.glob.is_none() {
            let p = PathBuf::from(&self.text);
            return if p.is_file() { vec![p] } else { Vec::new() };
        }
        let mut paths = Vec::new();
        match glob::glob(&self.text) {
            Ok(entries) => {
                for entry in entries {
                    match entry {
                        Ok(p) if p.is_file() => paths.push(p),
                        Ok(_) => {}
                        Err(e) => {
                            warn!(pattern = %self.text, error = %e, "skipping an unreadable path")
                        }
                    }
                }
            }
            Err(e) => warn!(pattern = %self.text, error = %e, "invalid glob pattern"),
        }
        paths.sort();
        paths
    }
}

/// One input file and how far it has been read.
#[derive(Debug)]
struct TailedFile {
    path: PathBuf,
    /// Partition name: the path as matched.
    name: Arc<str>,
    /// Byte offset just after the last complete line handed out (or skipped as blank).
    offset: u64,
    reader: Option<BufReader<File>>,
    /// Bytes read past `offset`: an incomplete line (or, between calls, nothing).
    pending: Vec<u8>,
    /// Bounded mode: read to the end.
    finished: bool,
}

impl TailedFile {
    fn new(path: PathBuf) -> Self {
        let name = Arc::from(path.to_string_lossy().as_ref());
        TailedFile {
            path,
            name,
            offset: 0,
            reader: None,
            pending: Vec::new(),
            finished: false,
        }
    }

    fn io_error(&self, what: &str, e: &std::io::Error) -> ConnectorError {
        ConnectorError::io(NAME, format!("{what} {}", self.path.display()), e)
    }

    /// Opens the file at `offset`; `Ok(false)` when a followed file does not exist yet.
    fn open(&mut self, follow: bool) -> Result<bool, ConnectorError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if follow && e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.io_error("cannot open", &e)),
        };
        let len = file
            .metadata()
            .map_err(|e| self.io_error("cannot read the size of", &e))?
            .len();
        if len < self.offset {
            warn!(file = %self.path.display(), offset = self.offset, len, "file is shorter than the resume position (truncated or replaced); reading it from the start");
            self.offset = 0;
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| self.io_error("cannot seek in", &e))?;
        self.pending.clear();
        self.reader = Some(BufReader::with_capacity(READ_BUFFER, file));
        Ok(true)
    }

    /// Reads complete lines into `out` until it holds `max` records (`Ok(false)`) or the
    /// end of the file is reached (`Ok(true)`).
    fn read_into(
        &mut self,
        out: &mut Vec<Record>,
        max: usize,
        follow: bool,
    ) -> Result<bool, ConnectorError> {
        if self.reader.is_none() && !self.open(follow)? {
            return Ok(true);
        }
        while out.len() < max {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(true);
            };
            let n = match read_line(reader, &mut self.pending) {
                Ok(n) => n,
                Err(e) => {
                    // Reopen at the last complete line next time: nothing is lost or repeated.
                    let err = self.io_error("cannot read", &e);
                    self.reader = None;
                    self.pending.clear();
                    return Err(err);
                }
            };
            if n == 0 {
                return self.at_end(out, follow);
            }
            if self.pending.last() != Some(&b'\n') {
                continue; // an incomplete last line: the next read reports the end
            }
            self.take_line(out);
        }
        Ok(false)
    }

    /// Hands out the line in `pending` (unless blank) and moves `offset` past it.
    fn take_line(&mut self, out: &mut Vec<Record>) {
        let end = self.offset + self.pending.len() as u64;
        let line = std::mem::take(&mut self.pending);
        if let Some(text) = line_text(line, &self.name, self.offset) {
            out.push(Record {
                payload: Payload::Json(text),
                partition: self.name.clone(),
                position: Value::Int64(end as i64),
                event_time: None,
            });
        }
        self.offset = end;
        self.pending.clear();
    }

    fn at_end(&mut self, out: &mut Vec<Record>, follow: bool) -> Result<bool, ConnectorError> {
        if !follow {
            // End of input: a last line without its newline is complete.
            if !self.pending.is_empty() {
                self.take_line(out);
            }
            self.finished = true;
            self.reader = None;
            return Ok(true);
        }
        // Following: an incomplete line waits for its newline. A file that shrank was
        // truncated (log rotation by copy-truncate): start it over.
        if let Ok(meta) = std::fs::metadata(&self.path) {
            if meta.len() < self.offset + self.pending.len() as u64 {
                warn!(file = %self.path.display(), "file was truncated; reading it from the start");
                self.offset = 0;
                self.reader = None;
                self.pending.clear();
            }
        }
        Ok(true)
    }
}

/// Reads up to `max` records from the files, starting at `cursor`. Returns the records
/// and whether a bounded input is exhausted.
fn read_available(
    files: &mut [TailedFile],
    cursor: &mut usize,
    max: usize,
    follow: bool,
) -> Result<(Vec<Record>, bool), ConnectorError> {
    let mut out = Vec::with_capacity(max.min(4096));
    let n = files.len();
    for _ in 0..n {
        let file = &mut files[*cursor % n];
        if !file.finished {
            match file.read_into(&mut out, max, follow) {
                Ok(false) => return Ok((out, false)), // batch full; continue here next time
                Ok(true) => {}
                // Records already read are delivered; the error comes back on the next call.
                Err(_) if !out.is_empty() => return Ok((out, false)),
                Err(e) => return Err(e),
            }
        }
        *cursor = (*cursor + 1) % n;
    }
    let done = !follow && files.iter().all(|f| f.finished);
    Ok((out, done))
}

struct FileSource {
    pattern: FilePattern,
    follow: bool,
    poll_interval: Duration,
    /// Sorted by path (files found later while following are appended).
    files: Vec<TailedFile>,
    /// The file to read next.
    cursor: usize,
    /// Positions restored by `seek`, applied to files found later.
    resume: SourcePositions,
    /// When the last read found nothing new (follow mode).
    idle_since: Option<Instant>,
    last_scan: Instant,
    size_hint: Option<u64>,
}

impl FileSource {
    /// Adds newly matching files (follow mode).
    fn add_new_files(&mut self, paths: Vec<PathBuf>) {
        for path in paths {
            if self.files.iter().any(|f| f.path == path) {
                continue;
            }
            let mut file = TailedFile::new(path);
            if let Some(offset) = resume_offset(&self.resume, &file.name) {
                file.offset = offset;
            }
            debug!(file = %file.path.display(), "following a new file");
            self.files.push(file);
        }
    }

    async fn read(
        &mut self,
        max: usize,
        rescan: bool,
    ) -> Result<(Vec<Record>, bool), ConnectorError> {
        let mut files = std::mem::take(&mut self.files);
        let mut cursor = self.cursor;
        let follow = self.follow;
        let pattern = rescan.then(|| self.pattern.clone());
        let task = tokio::task::spawn_blocking(move || {
            let found = pattern.map(|p| p.resolve());
            let result = if files.is_empty() {
                Ok((Vec::new(), !follow))
            } else {
                read_available(&mut files, &mut cursor, max, follow)
            };
            (files, cursor, found, result)
        });
        let (files, cursor, found, result) = task.await.map_err(|e| {
            ConnectorError::permanent(NAME, format!("the file reader task failed: {e}"))
        })?;
        self.files = files;
        self.cursor = cursor;
        if let Some(paths) = found {
            self.add_new_files(paths);
        }
        result
    }
}

fn resume_offset(positions: &SourcePositions, name: &str) -> Option<u64> {
    positions
        .get(name)
        .and_then(Value::as_i64_exact)
        .and_then(|n| u64::try_from(n).ok())
}

#[async_trait]
impl Source for FileSource {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, ConnectorError> {
        let deadline = Instant::now() + max_wait;
        loop {
            if let Some(idle) = self.idle_since {
                let next_poll = idle + self.poll_interval;
                if next_poll > deadline {
                    tokio::time::sleep_until(deadline).await;
                    return Ok(SourceBatch::default());
                }
                tokio::time::sleep_until(next_poll).await;
            }
            let rescan = self.follow && self.last_scan.elapsed() >= self.poll_interval;
            if rescan {
                self.last_scan = Instant::now();
            }
            let (records, end_of_input) = self.read(max_records.max(1), rescan).await?;
            if !records.is_empty() || end_of_input {
                self.idle_since = None;
                return Ok(SourceBatch {
                    records,
                    end_of_input,
                });
            }
            if self.follow {
                self.idle_since = Some(Instant::now());
            }
        }
    }

    async fn seek(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        for file in &mut self.files {
            if let Some(offset) = resume_offset(positions, &file.name) {
                debug!(file = %file.path.display(), offset, "resuming");
                file.offset = offset;
                file.reader = None;
                file.pending.clear();
            }
        }
        self.resume = positions.clone();
        Ok(())
    }

    fn is_bounded(&self) -> bool {
        !self.follow
    }

    /// Bytes read of the input files (bounded mode only): counting lines up front would
    /// mean reading every file twice.
    fn progress(&self) -> Option<Progress> {
        self.size_hint.map(|total| Progress {
            done: self.files.iter().map(|f| f.offset).sum(),
            total,
            unit: "bytes",
        })
    }
}

struct FileSink {
    path: PathBuf,
    fsync: bool,
    file: Option<Arc<File>>,
    /// Bytes in the file: where a failed write is cut back to.
    size: u64,
    /// Lines written since the last flush.
    buffer: String,
}

fn open_for_append(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

impl FileSink {
    fn io_error(&self, what: &str, e: &std::io::Error) -> ConnectorError {
        ConnectorError::io(NAME, format!("{what} {}", self.path.display()), e)
    }

    async fn file(&mut self) -> Result<Arc<File>, ConnectorError> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let path = self.path.clone();
        let (file, size) = tokio::task::spawn_blocking(move || open_for_append(&path))
            .await
            .map_err(|e| {
                ConnectorError::permanent(NAME, format!("the file writer task failed: {e}"))
            })?
            .map_err(|e| self.io_error("cannot open", &e))?;
        let file = Arc::new(file);
        self.file = Some(file.clone());
        self.size = size;
        Ok(file)
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        write_lines(&mut self.buffer, batch);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        let file = self.file().await?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        let (size, fsync) = (self.size, self.fsync);
        let (mut buffer, result) = tokio::task::spawn_blocking(move || {
            let result = (&*file).write_all(buffer.as_bytes()).and_then(|()| {
                if fsync {
                    file.sync_data()
                } else {
                    Ok(())
                }
            });
            if result.is_err() {
                // Cut a partial write back so that a retry does not leave half a line.
                let _ = file.set_len(size);
            }
            (buffer, result)
        })
        .await
        .map_err(|e| {
            ConnectorError::permanent(NAME, format!("the file writer task failed: {e}"))
        })?;
        match result {
            Ok(()) => {
                self.size += buffer.len() as u64;
                buffer.clear();
                self.buffer = buffer; // keep the allocation
                Ok(())
            }
            Err(e) => {
                self.buffer = buffer; // written again on the next flush
                Err(self.io_error("cannot write", &e))
            }
        }
    }

    /// The file's length after the last flush: everything before it is acknowledged.
    fn committed_position(&self) -> Option<Value> {
        // Before the first write the file is not open yet: its length on disk (0 when it
        // does not exist) is where this run's output will start.
        let size = match self.file {
            Some(_) => self.size,
            None => std::fs::metadata(&self.path).map_or(0, |m| m.len()),
        };
        Some(Value::Int64(size as i64))
    }

    /// Cuts off what was appended after the checkpoint (output of records the source
    /// now replays), so a crash does not leave duplicate lines.
    async fn restore_position(&mut self, position: &Value) -> Result<(), ConnectorError> {
        let Some(target) = position.as_i64_exact().and_then(|n| u64::try_from(n).ok()) else {
            return Err(ConnectorError::permanent(
                NAME,
                format!(
                    "invalid sink position {} in the checkpoint for {}",
                    position.to_json(),
                    self.path.display()
                ),
            ));
        };
        let file = self.file().await?;
        if self.size < target {
            warn!(
                file = %self.path.display(),
                len = self.size,
                checkpoint = target,
                "the output file is shorter than at the last checkpoint (truncated, replaced, or unsynced data lost); appending to it as it is"
            );
            return Ok(());
        }
        if self.size == target {
            return Ok(());
        }
        info!(file = %self.path.display(), bytes = self.size - target, "removing output written after the last checkpoint");
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || {
            file.set_len(target)?;
            if fsync {
                file.sync_data()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ConnectorError::permanent(NAME, format!("the file writer task failed: {e}")))?
        .map_err(|e: std::io::Error| self.io_error("cannot truncate", &e))?;
        self.size = target;
        Ok(())
    }
}
