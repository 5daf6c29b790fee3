//! The `file` state store: a local directory that survives `kill -9` and power loss.
//!
//! See the [crate documentation](crate) for the layout and the guarantees. Open a store
//! with [`FileStateStore::open`], or let a pipeline definition do it through
//! [`FileStateStoreProvider`] (`"state": {"type": "file", "options": {"path": "./state"}}`).
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use stream_core::streaming::StateStore;
//! use stream_state::file::FileStateStore;
//!
//! let dir = std::env::temp_dir().join(format!("srotax-doc-{}", std::process::id()));
//! let store = FileStateStore::open(&dir)?;
//! store.put("customer:42", b"{\"total\": 10}".to_vec(), None).await?;
//! assert_eq!(store.get("customer:42").await?, Some(b"{\"total\": 10}".to_vec()));
//! drop(store); // flushes buffered writes and releases the directory
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new()?.block_on(demo()).map_err(|e| e.to_string())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod checkpoint;
mod error;
mod fsutil;
mod log;

pub use error::FileStoreError;
pub use log::LogStats;

use crate::now_ms;
use checkpoint::CheckpointFiles;
use fsutil::DirLock;
use log::KeyedLog;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use stream_core::streaming::{
    Checkpoint, ConnectorConfig, DefinitionError, StateError, StateStore, StateStoreProvider,
};
use tracing::{debug, warn};

/// Tuning of a [`FileStateStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FileStateStoreOptions {
    /// The keyed log is compacted once it is larger than twice its live entries and at
    /// least this many bytes (default 8 MiB). Option `compactionMinBytes`.
    pub compaction_min_bytes: u64,
}

impl Default for FileStateStoreOptions {
    fn default() -> Self {
        FileStateStoreOptions {
            compaction_min_bytes: 8 << 20,
        }
    }
}

/// A durable state store in a local directory. Cheap to clone (clones share the open
/// store); `Send + Sync`. The directory is locked while the store is open: a second
/// process (or a second [`FileStateStore::open`] of the same directory in this process)
/// gets [`FileStoreError::Locked`].
#[derive(Clone)]
pub struct FileStateStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    log: Mutex<KeyedLog>,
    /// Serialises checkpoint-file writes (renames of `.checkpoint` / `.prev`).
    checkpoints: Mutex<()>,
    /// Declared last: released after `Drop` flushed the log.
    _lock: DirLock,
}

impl fmt::Debug for FileStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStateStore")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

fn expiry(ttl: Option<Duration>, now: i64) -> Option<i64> {
    ttl.map(|t| now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)))
}

impl FileStateStore {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStateStore, FileStoreError> {
        Self::open_with(dir, FileStateStoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`: takes the directory lock, removes
    /// temp files of interrupted writes, replays the keyed log (cutting off a torn tail).
    pub fn open_with(
        dir: impl AsRef<Path>,
        options: FileStateStoreOptions,
    ) -> Result<FileStateStore, FileStoreError> {
        let dir = dir.as_ref().to_path_buf();
        fsutil::ensure_dir(&dir)?;
        let lock = DirLock::acquire(&dir)?;
        remove_checkpoint_temps(&dir)?;
        let log = KeyedLog::open(&dir, options.compaction_min_bytes, now_ms())?;
        Ok(FileStateStore {
            shared: Arc::new(Shared {
                dir,
                log: Mutex::new(log),
                checkpoints: Mutex::new(()),
                _lock: lock,
            }),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Sizes of the keyed log.
    pub fn stats(&self) -> Result<LogStats, FileStoreError> {
        Ok(self.shared.log()?.stats())
    }

    /// Makes every put and delete so far durable (write + fsync of the log). Blocks.
    pub fn sync(&self) -> Result<(), FileStoreError> {
        self.shared.sync_log()
    }

    /// Rewrites the keyed log with only the live entries, now. Blocks.
    pub fn compact(&self) -> Result<(), FileStoreError> {
        self.shared.log()?.compact(now_ms())
    }
}

impl Shared {
    fn log(&self) -> Result<MutexGuard<'_, KeyedLog>, FileStoreError> {
        self.log.lock().map_err(|_| FileStoreError::Failed {
            dir: self.dir.clone(),
            reason: "a thread panicked while updating it".into(),
        })
    }

    /// Writes buffered records and fsyncs the log. The fsync runs outside the lock so
    /// readers are not held up by the disk.
    fn sync_log(&self) -> Result<(), FileStoreError> {
        let file = {
            let mut log = self.log()?;
            log.write_pending()?;
            log.file()
        };
        if let Err(e) = file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages: what is on
            // disk is unknown, so stop writing (a restart replays what really is there).
            let reason = format!("fsync of the state log failed: {e}");
            self.log()?.mark_failed(reason);
            return Err(FileStoreError::io("fsync", self.dir.join(log::LOG_FILE), e));
        }
        Ok(())
    }

    fn save_checkpoint(
        &self,
        pipeline_id: &str,
        sequence: u64,
        payload: &[u8],
    ) -> Result<(), FileStoreError> {
        let files = CheckpointFiles::new(&self.dir, pipeline_id)?;
        // Keyed entries written before the checkpoint must be on disk before it is.
        self.sync_log()?;
        {
            let _guard = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            checkpoint::save(&self.dir, &files, sequence, payload)?;
        }
        debug!(pipeline = pipeline_id, dir = %self.dir.display(), "checkpoint saved");
        self.log()?.maybe_compact(now_ms());
        Ok(())
    }

    /// Runs `f` on a pipeline's checkpoint files, serialised with saves.
    fn with_checkpoints<T>(
        &self,
        pipeline_id: &str,
        f: impl FnOnce(&CheckpointFiles) -> Result<T, FileStoreError>,
    ) -> Result<T, FileStoreError> {
        let files = CheckpointFiles::new(&self.dir, pipeline_id)?;
        let _guard = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        f(&files)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Best effort: make buffered puts durable on a clean shutdown.
        if let Err(e) = self.sync_log() {
            warn!(dir = %self.dir.display(), error = %e, "could not flush the state log on close");
        }
    }
}

/// Removes `*.checkpoint.tmp` files left by saves interrupted by a crash.
fn remove_checkpoint_temps(dir: &Path) -> Result<(), FileStoreError> {
    let entries = fs::read_dir(dir).map_err(|e| FileStoreError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| FileStoreError::io("list", dir, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(checkpoint::TEMP_SUFFIX)
        {
            debug!(file = %entry.path().display(), "removing an unfinished checkpoint");
            fsutil::remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// Runs blocking file work on tokio's blocking pool when inside a runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileStoreError> + Send + 'static,
) -> Result<T, StateError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| StateError::Unavailable(format!("file state store task failed: {e}")))?
            .map_err(StateError::from),
        Err(_) => f().map_err(StateError::from),
    }
}

#[async_trait::async_trait]
impl StateStore for FileStateStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.shared.log()?.get(key, now_ms()))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let now = now_ms();
        Ok(self.shared.log()?.put(key, value, expiry(ttl, now), now)?)
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        Ok(self.shared.log()?.delete(key, now_ms())?)
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        Ok(self.shared.log()?.scan(prefix, now_ms()))
    }

    async fn put_batch(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let now = now_ms();
        let mut log = self.shared.log()?;
        for (key, value) in entries {
            log.put(&key, value, expiry(ttl, now), now)?;
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), StateError> {
        let shared = self.shared.clone();
        blocking(move || shared.sync_log()).await
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let shared = self.shared.clone();
        let id = checkpoint.pipeline_id.clone();
        let sequence = checkpoint.sequence;
        let payload = checkpoint.encode();
        blocking(move || shared.save_checkpoint(&id, sequence, &payload)).await
    }

    async fn load_checkpoint(&self, pipeline_id: &str) -> Result<Option<Checkpoint>, StateError> {
        let shared = self.shared.clone();
        let id = pipeline_id.to_string();
        blocking(move || shared.with_checkpoints(&id, |f| checkpoint::load(f, &id))).await
    }

    async fn load_checkpoint_at(
        &self,
        pipeline_id: &str,
        sequence: u64,
    ) -> Result<Option<Checkpoint>, StateError> {
        let shared = self.shared.clone();
        let id = pipeline_id.to_string();
        blocking(move || shared.with_checkpoints(&id, |f| checkpoint::load_at(f, &id, sequence)))
            .await
    }

    async fn list_checkpoints(&self, pipeline_id: &str) -> Result<Vec<u64>, StateError> {
        let shared = self.shared.clone();
        let id = pipeline_id.to_string();
        blocking(move || shared.with_checkpoints(&id, |f| checkpoint::list(f, &id))).await
    }

    async fn prune_checkpoints(&self, pipeline_id: &str, keep: usize) -> Result<usize, StateError> {
        let shared = self.shared.clone();
        let id = pipeline_id.to_string();
        blocking(move || shared.with_checkpoints(&id, |f| checkpoint::prune(f, keep))).await
    }

    async fn clear_checkpoint(&self, pipeline_id: &str) -> Result<(), StateError> {
        let shared = self.shared.clone();
        let id = pipeline_id.to_string();
        let dir = self.shared.dir.clone();
        blocking(move || shared.with_checkpoints(&id, |f| checkpoint::clear(&dir, f))).await
    }
}

/// The `file` state-store provider.
///
/// Options: `path` (required; the state directory, created if missing, relative paths are
/// relative to the working directory) and `compactionMinBytes` (optional). Pipelines of
/// one process that name the same directory share one open store (the directory lock
/// admits one owner); it is closed when the last of them ends.
#[derive(Debug, Default)]
pub struct FileStateStoreProvider {
    open: Mutex<HashMap<PathBuf, Weak<Shared>>>,
}

const OPTIONS: [&str; 2] = ["path", "compactionMinBytes"];

impl FileStateStoreProvider {
    /// A provider with no open stores.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("dir", &self.dir).finish()
    }
}

impl StateStoreProvider for FileStateStoreProvider {
    fn store_type(&self) -> &str {
        "file"
    }

    fn create(
        &self,
        config: &ConnectorConfig,
        _pipeline_id: &str,
    ) -> Result<Arc<dyn StateStore>, DefinitionError> {
        crate::check_options(config, "file", &OPTIONS)?;
        let path = config.required_str("path")?;
        if path.is_empty() {
            return Err(config.option_error("path", "the state directory must not be empty"));
        }
        let mut options = FileStateStoreOptions::default();
        if let Some(n) = config.u64_option("compactionMinBytes")? {
            options.compaction_min_bytes = n;
        }
        let path_error = |e: FileStoreError| config.option_error("path", e.to_string());
        fsutil::ensure_dir(Path::new(path)).map_err(path_error)?;
        let canonical = fs::canonicalize(path)
            .map_err(|e| path_error(FileStoreError::io("resolve", path, e)))?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, weak| weak.strong_count() > 0);
        if let Some(shared) = open.get(&canonical).and_then(Weak::upgrade) {
            return Ok(Arc::new(FileStateStore { shared }));
        }
        let store = FileStateStore::open_with(&canonical, options).map_err(path_error)?;
        open.insert(canonical, Arc::downgrade(&store.shared));
        Ok(Arc::new(store))
    }
}
