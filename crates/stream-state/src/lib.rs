//! State stores for SrotaX streaming pipelines.
//!
//! A pipeline stores two things in its state store (the
//! [`StateStore`](stream_core::streaming::StateStore) contract of `stream-core`):
//! **checkpoints** — source positions plus operator state, saved together after the sink
//! acknowledged a batch — and **keyed entries** (`get`/`put`/`delete`/`scan`, with
//! optional TTL). This crate holds the backends; a definition picks one with
//! `"state": {"type": ..., "options": {...}}` and [`register_builtin`] makes them known to
//! an orchestrator.
//!
//! | `type`     | module       | cargo feature      | survives / shared                      |
//! | ---------- | ------------ | ------------------ | -------------------------------------- |
//! | `memory`   | [`memory`]   | always             | nothing (process lifetime)             |
//! | `file`     | `file`       | `file` (default)   | `kill -9`, power loss; one process     |
//! | `redis`    | `redis`      | `redis`            | server restarts (with AOF); processes  |
//! | `postgres` | `sql`        | `postgres`         | server crashes; processes and machines |
//! | `sqlite`   | `sql`        | `sqlite`           | `kill -9`; processes of one machine    |
//!
//! Each backend is one module with a store implementing `StateStore` and a
//! `StateStoreProvider` for its `type`; [`register_builtin`] registers the provider of
//! every enabled feature. The network backends retry every operation with backoff while
//! their server is unreachable (`retryFor`, 30 s by default). `docs/state.md` says which
//! backend suits which deployment and documents each one's options and layout.
//!
//! # The file backend
//!
//! One directory per store (`"options": {"path": "./state"}`):
//!
//! ```text
//! state/
//!   LOCK                          OS lock held by the owning process (records its PID)
//!   keyed.log                     keyed entries: append-only log of put/delete records
//!   <pipeline>.checkpoint         latest checkpoint of a pipeline
//!   <pipeline>.checkpoint.prev    the checkpoint before it
//!   *.tmp                         writes in progress (removed at open)
//! ```
//!
//! **Checkpoints** are written as a temp file, fsynced, then renamed into place
//! (`.checkpoint` → `.checkpoint.prev`, temp → `.checkpoint`) and the directory is
//! fsynced. Whenever a crash happens, a complete checkpoint is on disk: the new one, or
//! the previous one. Each file carries a length and a CRC-32 of its contents; a damaged or
//! truncated file makes `load_checkpoint` fail with
//! [`StateError::Corrupt`](stream_core::streaming::StateError::Corrupt) naming the file
//! (never an empty or silently older state), and the message says whether `.prev` is
//! intact.
//!
//! **Keyed entries** are kept in memory (a sorted map, so `scan` by prefix is a range
//! read) and appended to `keyed.log` as records with a length, a CRC-32, the key, the value
//! and the expiry time. Opening the store replays the log. A record cut short by a crash
//! at the end of the log is cut off (the expected crash case); damage followed by valid
//! records is an error naming the file and byte offset. When the log is larger than twice
//! its live entries and at least `compactionMinBytes` (8 MiB by default), it is rewritten
//! with only the live entries (temp + fsync + rename + fsync of the directory), at open and
//! after checkpoints.
//!
//! **TTL**: expiry times are wall-clock (epoch milliseconds), so they hold across
//! restarts. Expired keys are never returned, are dropped from memory at the next write,
//! and from disk at the next compaction.
//!
//! **Durability timing**: puts and deletes are buffered and become durable when a
//! checkpoint is saved (the log is fsynced before the checkpoint file is written), when
//! [`FileStateStore::sync`](file::FileStateStore::sync) is called, and on a clean close. A
//! checkpoint on disk therefore always finds every keyed write made before it; writes made
//! after the last checkpoint may be lost by a crash (the pipeline replays their input).
//!
//! **Concurrency**: a store is `Send + Sync` (a mutex inside). Checkpoint writes and log
//! fsyncs run on tokio's blocking pool (when called inside a tokio runtime) and outside the
//! mutex that reads take; compaction holds it. One process owns a directory at a time: a
//! second one fails with an error naming the directory. The lock is an OS file lock, so it
//! is released when the owner exits, however it exits.
//!
//! See `docs/state.md` for the user-facing description (options, guarantees, what to do
//! with a damaged file).

#![warn(missing_docs)]

#[cfg(feature = "file")]
pub mod file;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "redis", feature = "sql"))]
mod remote;
#[cfg(feature = "sql")]
pub mod sql;

#[cfg(feature = "file")]
pub use file::{FileStateStore, FileStateStoreOptions, FileStateStoreProvider, FileStoreError};
#[cfg(feature = "redis")]
pub use redis::{RedisStateStore, RedisStateStoreOptions, RedisStateStoreProvider};
#[cfg(feature = "sql")]
pub use sql::{SqlStateStore, SqlStateStoreOptions, SqlStateStoreProvider};

use stream_core::streaming::{ConnectorConfig, DefinitionError, StreamingPipelineOrchestrator};

/// Registers every backend compiled into this crate with `orchestrator` (the `memory`
/// store is registered by the orchestrator itself). Call it once per orchestrator: the
/// `file` provider shares an open directory between that orchestrator's pipelines.
pub fn register_builtin(orchestrator: &mut StreamingPipelineOrchestrator) {
    #[cfg(feature = "file")]
    orchestrator.register_state_store(std::sync::Arc::new(file::FileStateStoreProvider::new()));
    #[cfg(feature = "redis")]
    orchestrator.register_state_store(std::sync::Arc::new(redis::RedisStateStoreProvider));
    #[cfg(feature = "postgres")]
    orchestrator.register_state_store(std::sync::Arc::new(SqlStateStoreProvider::postgres()));
    #[cfg(feature = "sqlite")]
    orchestrator.register_state_store(std::sync::Arc::new(SqlStateStoreProvider::sqlite()));
    let _ = orchestrator;
}

/// Wall-clock time in epoch milliseconds: expiry times, which must hold across restarts
/// and between processes, use it.
#[allow(dead_code)] // unused when only `memory` is compiled
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Rejects options a backend does not know (a typo must not silently fall back to a
/// default), naming the option and the known ones.
#[allow(dead_code)] // unused when no backend with options is enabled
fn check_options(
    config: &ConnectorConfig,
    store_type: &str,
    known: &[&str],
) -> Result<(), DefinitionError> {
    for (key, _) in config.options.iter() {
        if !known.contains(&&**key) {
            return Err(config.option_error(
                key,
                format!(
                    "unknown option of the {store_type} state store (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}
