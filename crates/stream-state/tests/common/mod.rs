//! Shared helpers of the state-store tests: opening every backend the way a definition
//! does, child processes. Service addresses and private servers are `test_support`'s.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use stream_core::streaming::{
    Checkpoint, ConnectorConfig, SourcePositions, StateStore, StateStoreProvider,
};
use stream_core::value::Value;
use test_support::{postgres_url, redis_url, unique};

/// The state backends under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    File,
    Redis,
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::File => "file",
            Backend::Redis => "redis",
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    pub fn parse(name: &str) -> Backend {
        match name {
            "memory" => Backend::Memory,
            "file" => Backend::File,
            "redis" => Backend::Redis,
            "postgres" => Backend::Postgres,
            "sqlite" => Backend::Sqlite,
            other => panic!("unknown backend {other}"),
        }
    }
}

/// The definition's `"state"` block for `backend`; `location` is the directory (file)
/// or database file (sqlite), unused by the others.
pub fn state_config(backend: Backend, location: &Path) -> ConnectorConfig {
    let c = ConnectorConfig::new(backend.name());
    match backend {
        Backend::Memory => c,
        Backend::File => c.option("path", location.display().to_string()),
        Backend::Redis => c.option("url", redis_url()).option("retryFor", "5s"),
        Backend::Postgres => c.option("url", postgres_url()).option("retryFor", "5s"),
        Backend::Sqlite => c
            .option("path", location.display().to_string())
            .option("retryFor", "20s"),
    }
}

/// Opens `backend` through its provider, as `srotax run` does.
pub fn open(backend: Backend, pipeline: &str, location: &Path) -> Arc<dyn StateStore> {
    let provider: Arc<dyn StateStoreProvider> = match backend {
        Backend::Memory => Arc::new(stream_state::memory::MemoryStateStoreProvider::default()),
        Backend::File => Arc::new(stream_state::FileStateStoreProvider::new()),
        Backend::Redis => Arc::new(stream_state::RedisStateStoreProvider),
        Backend::Postgres => Arc::new(stream_state::SqlStateStoreProvider::postgres()),
        Backend::Sqlite => Arc::new(stream_state::SqlStateStoreProvider::sqlite()),
    };
    provider
        .create(&state_config(backend, location), pipeline)
        .unwrap_or_else(|e| panic!("opening the {} store: {e}", backend.name()))
}

/// One test's store: a fresh pipeline id and location.
pub struct Fixture {
    pub backend: Backend,
    pub pipeline: String,
    pub location: PathBuf,
    pub store: Arc<dyn StateStore>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(backend: Backend) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let location = match backend {
            Backend::Sqlite => dir.path().join("state.db"),
            _ => dir.path().join("state"),
        };
        let pipeline = unique(backend.name());
        let store = open(backend, &pipeline, &location);
        Fixture {
            backend,
            pipeline,
            location,
            store,
            _dir: dir,
        }
    }

    /// Closes the store and opens it again (as after a restart).
    pub fn reopen(&mut self) {
        // Drop the old store first: the file store's directory lock admits one owner.
        self.store = Arc::new(stream_state::memory::MemoryStateStore::new());
        self.store = open(self.backend, &self.pipeline, &self.location);
    }
}

/// A checkpoint of `pipeline` whose contents depend on `sequence` (and `padding`
/// bytes of operator state, to make writes take time).
pub fn checkpoint(pipeline: &str, sequence: u64, padding: usize) -> Checkpoint {
    let mut positions = SourcePositions::new();
    positions.insert("orders.jsonl".into(), Value::Int64(sequence as i64 * 100));
    Checkpoint {
        pipeline_id: pipeline.to_string(),
        sequence,
        positions,
        operator_state: vec![Value::Null, Value::string("x".repeat(padding))].into(),
        sink_position: Value::Int64(sequence as i64),
        created_at: 1_700_000_000_000 + sequence as i64,
    }
}

/// Runs test `test_name` of this test binary in a child process with `args` in
/// `SROTAX_STATE_CHILD` (the child test does nothing without it).
pub fn spawn_child(test_name: &str, args: &[&str]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env("SROTAX_STATE_CHILD", args.join("\u{1f}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The arguments given to [`spawn_child`], when this process is such a child.
pub fn child_args() -> Option<Vec<String>> {
    let v = std::env::var("SROTAX_STATE_CHILD").ok()?;
    Some(v.split('\u{1f}').map(str::to_string).collect())
}

/// Waits for a child and fails with its output when it failed.
pub fn wait_ok(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
