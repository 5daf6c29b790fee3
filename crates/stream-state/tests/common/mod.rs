//! Shared helpers of the state-store tests: opening every backend the way a definition
//! does, addresses of the test services, child processes, private servers.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream_core::streaming::{
    Checkpoint, ConnectorConfig, SourcePositions, StateStore, StateStoreProvider,
};
use stream_core::value::Value;

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

/// `SROTAX_TEST_REDIS_URL`, else the `cargo xtask services up` Redis.
pub fn redis_url() -> String {
    std::env::var("SROTAX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".into())
}

/// `SROTAX_TEST_POSTGRES_URL`, else the `cargo xtask services up` PostgreSQL.
pub fn postgres_url() -> String {
    std::env::var("SROTAX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://srotax@127.0.0.1:15432/srotax".into())
}

/// Fails loudly (never skips) when the server behind `url` does not answer.
pub fn require_server(url: &str) {
    let host_port = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit('@').next())
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let reachable = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no server answers at {url}: run `cargo xtask services up` (or set the SROTAX_TEST_*_URL variable)"
    );
}

/// A pipeline id no other test (or earlier run) uses.
pub fn unique_id(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{what}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
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
        Backend::Redis => {
            require_server(&redis_url());
            Arc::new(stream_state::RedisStateStoreProvider)
        }
        Backend::Postgres => {
            require_server(&postgres_url());
            Arc::new(stream_state::SqlStateStoreProvider::postgres())
        }
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
        let pipeline = unique_id(backend.name());
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
        operator_state: vec![Value::Null, Value::string("x".repeat(padding))],
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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until 127.0.0.1:`port` accepts connections.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private server process for fault tests, killed (by its PID) on drop.
pub struct Server {
    pub port: u16,
    pub child: Option<Child>,
}

impl Server {
    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` and waits for the server to exit.
    pub fn stop_with(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain signal delivery to our own child.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a private `redis-server` on `port` keeping an append-only file (fsync on
/// every write) in `dir`, so data survives a restart.
pub fn start_redis(dir: &Path, port: u16) -> Server {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .args(["--daemonize", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is not installed: run `cargo xtask services up`");
    wait_for_port(port, Duration::from_secs(10));
    Server {
        port,
        child: Some(child),
    }
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` of PostgreSQL 15, as the `postgres` user when root (it refuses root).
fn pg_command(program: &str) -> Command {
    let path = Path::new(PG_BIN).join(program);
    assert!(
        path.exists(),
        "{} is missing: PostgreSQL 15 must be installed",
        path.display()
    );
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--reset-env",
        ])
        .arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// Creates a private PostgreSQL cluster in `data` (superuser `srotax`, trust auth).
pub fn init_postgres(data: &Path) {
    std::fs::create_dir_all(data).unwrap();
    if is_root() {
        // The temp directory and the data directory must be reachable by `postgres`.
        let mut p = data.to_path_buf();
        loop {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
            if !p.pop() || p == std::env::temp_dir() {
                break;
            }
        }
        let st = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(data)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let out = pg_command("initdb")
        .arg("-D")
        .arg(data)
        .args(["-U", "srotax", "--auth=trust", "--no-sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the postmaster of the cluster in `data` on `port`.
pub fn start_postgres(data: &Path, port: u16) -> Server {
    let child = pg_command("postgres")
        .arg("-D")
        .arg(data)
        .arg("-k")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(30));
    Server {
        port,
        child: Some(child),
    }
}
