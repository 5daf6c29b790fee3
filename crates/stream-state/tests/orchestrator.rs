//! State stores behind a real orchestrator: `register_builtin` makes the backends
//! available; a pipeline restarted by a new orchestrator (standing for a new process)
//! resumes from the positions and operator state stored on disk; and the orders pipeline
//! keeps running, with exact totals, while its private Redis or PostgreSQL server is
//! killed and restarted under it.

mod common;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream_core::streaming::*;
use stream_core::value::{Document, Value};
use stream_state::file::FileStateStore;
use stream_state::sql::SqlFlavor;
use stream_state::{RedisStateStore, RedisStateStoreOptions, SqlStateStore, SqlStateStoreOptions};
use test_support::{free_port, init_postgres, start_postgres, start_redis, Server};

/// Lines served in order from a shared list; positions are line numbers. Never ends.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

struct LinesSource {
    lines: Lines,
    next: usize,
}

#[async_trait]
impl Source for LinesSource {
    async fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, ConnectorError> {
        let available: Vec<String> = {
            let l = self.lines.0.lock().unwrap();
            l[self.next.min(l.len())..]
                .iter()
                .take(max)
                .cloned()
                .collect()
        };
        if available.is_empty() {
            tokio::time::sleep(max_wait.min(Duration::from_millis(20))).await;
        }
        let mut records = Vec::new();
        for line in available {
            self.next += 1;
            records.push(Record {
                payload: Payload::Json(line),
                partition: "lines".into(),
                position: Value::Int64(self.next as i64),
                event_time: None,
            });
        }
        Ok(SourceBatch {
            records,
            end_of_input: false,
        })
    }
    async fn seek(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        if let Some(p) = positions.get("lines").and_then(Value::as_i64_exact) {
            self.next = p as usize;
        }
        Ok(())
    }
    fn is_bounded(&self) -> bool {
        false
    }
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<Document>>>);

impl Collected {
    fn json(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|d| d.to_json()).collect()
    }
}

struct CollectSink(Collected);

#[async_trait]
impl Sink for CollectSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        self.0 .0.lock().unwrap().extend(batch.iter().cloned());
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

struct TestProvider {
    lines: Lines,
    out: Collected,
}

impl ConnectorProvider for TestProvider {
    fn connector_type(&self) -> &str {
        "test"
    }
    fn create_source(
        &self,
        _c: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError> {
        Ok(Some(Box::new(LinesSource {
            lines: self.lines.clone(),
            next: 0,
        })))
    }
    fn create_sink(
        &self,
        _c: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        Ok(Some(Box::new(CollectSink(self.out.clone()))))
    }
}

fn orchestrator(lines: &Lines, out: &Collected) -> StreamingPipelineOrchestrator {
    let mut registry = ConnectorRegistry::new();
    registry.register(Arc::new(TestProvider {
        lines: lines.clone(),
        out: out.clone(),
    }));
    let mut o = StreamingPipelineOrchestrator::new(registry);
    stream_state::register_builtin(&mut o);
    o
}

fn definition(state_dir: &std::path::Path) -> StreamingPipelineDefinition {
    let json = format!(
        r#"{{
            "pipelineId": "counts",
            "source": {{"type": "test"}},
            "pipeline": [{{"$group": {{"_id": "$c", "n": {{"$count": {{}}}}}}}}],
            "sink": {{"type": "test"}},
            "runtime": {{"microBatchSize": 2, "maxBatchDelay": "10 ms"}},
            "state": {{"type": "file", "options": {{"path": {}}}}}
        }}"#,
        Value::string(state_dir.to_str().unwrap()).to_json()
    );
    StreamingPipelineDefinition::from_json_str(&json).unwrap()
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    wait_up_to(Duration::from_secs(10), what, cond).await
}

async fn wait_up_to(timeout: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stop(handle: StreamingPipelineHandle) {
    handle.stop();
    let summary = handle
        .await_termination(Some(Duration::from_secs(10)))
        .await
        .expect("stopped in time")
        .unwrap();
    assert_eq!(summary.status, PipelineStatus::Stopped);
}

fn add(lines: &Lines, keys: &[&str]) {
    lines
        .0
        .lock()
        .unwrap()
        .extend(keys.iter().map(|c| format!(r#"{{"c": "{c}"}}"#)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pipeline_resumes_from_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let lines = Lines::default();
    let out = Collected::default();
    add(&lines, &["a", "b", "a"]);
    {
        let first = orchestrator(&lines, &out);
        let handle = first.run(definition(&state)).unwrap();
        wait_for("the first three updates", || {
            out.json().contains(&r#"{"_id":"a","n":2}"#.to_string())
        })
        .await;
        stop(handle).await;
    }
    let cp = {
        // The pipeline closed the store when it stopped: the directory is free again.
        let store =
            FileStateStore::open(&state).expect("the stopped pipeline released the directory");
        store
            .load_checkpoint("counts")
            .await
            .unwrap()
            .expect("a checkpoint on disk")
    };
    assert_eq!(
        cp.positions.get("lines").and_then(Value::as_i64_exact),
        Some(3)
    );

    // "A new process": a new orchestrator, the same directory.
    add(&lines, &["a", "c"]);
    out.0.lock().unwrap().clear();
    let second = orchestrator(&lines, &out);
    let handle = second.run(definition(&state)).unwrap();
    wait_for("updates after the restart", || {
        out.json().iter().any(|d| d.contains(r#""c""#))
    })
    .await;
    stop(handle).await;
    let got = out.json();
    assert!(
        got.contains(&r#"{"_id":"a","n":3}"#.to_string()),
        "the count continued from the checkpoint: {got:?}"
    );
    assert!(
        !got.iter().any(|d| d.contains(r#""b""#)),
        "nothing before the checkpoint was replayed: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_in_use_is_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let _owner = FileStateStore::open(dir.path()).unwrap();
    let o = orchestrator(&Lines::default(), &Collected::default());
    let err = o.run(definition(dir.path())).unwrap_err();
    assert_eq!(err.path, "state.options.path");
    assert!(
        err.message.contains("is in use by process"),
        "{}",
        err.message
    );
}

// The orders pipeline while its state server is killed and restarted under it.

/// `samples/orders-ltv`: lifetime value of every customer over the paid orders.
const ORDERS_LTV: &str = r#"[{"$match": {"status": "PAID"}},
    {"$group": {"_id": "$customerId", "orderCount": {"$count": {}}, "lifetimeValue": {"$sum": "$orderValue"}}}]"#;

/// Orders fed to a run, in three equal parts.
const ORDERS: usize = 3_000;

/// Order `i` of a deterministic stream: 23 customers, one order in three unpaid.
fn customer(i: usize) -> String {
    format!("c-{:02}", i * 7 % 23)
}
fn paid(i: usize) -> bool {
    !i.is_multiple_of(3)
}
fn order_value(i: usize) -> usize {
    i * 37 % 1000 + 1
}

fn add_orders(lines: &Lines, orders: std::ops::Range<usize>) {
    lines.0.lock().unwrap().extend(orders.map(|i| {
        let status = if paid(i) { "PAID" } else { "PENDING" };
        format!(
            r#"{{"orderId": {i}, "customerId": "{}", "status": "{status}", "orderValue": {}}}"#,
            customer(i),
            order_value(i)
        )
    }));
}

/// The exact result over orders `0..n`: one row per customer, by `_id`.
fn expected_totals(n: usize) -> BTreeMap<String, String> {
    let mut totals: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for i in (0..n).filter(|&i| paid(i)) {
        let t = totals.entry(customer(i)).or_default();
        t.0 += 1;
        t.1 += order_value(i);
    }
    totals
        .into_iter()
        .map(|(c, (n, v))| {
            let row = format!(r#"{{"_id":"{c}","orderCount":{n},"lifetimeValue":{v}}}"#);
            (c, row)
        })
        .collect()
}

impl Collected {
    /// The last row emitted per `_id` (`$group` emits the groups a batch changed): the
    /// pipeline's current result.
    fn table(&self) -> BTreeMap<String, String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|d| {
                let id = d.get("_id").and_then(Value::as_str).unwrap_or_default();
                (id.to_string(), d.to_json())
            })
            .collect()
    }
}

fn ltv_definition(pipeline_id: &str, state: &str) -> StreamingPipelineDefinition {
    let json = format!(
        r#"{{
            "pipelineId": "{pipeline_id}",
            "source": {{"type": "test"}},
            "pipeline": {ORDERS_LTV},
            "sink": {{"type": "test"}},
            "runtime": {{"microBatchSize": 50, "maxBatchDelay": "10 ms", "checkpointInterval": "100 ms"}},
            "state": {state}
        }}"#
    );
    StreamingPipelineDefinition::from_json_str(&json).unwrap()
}

/// The (sequence, source line) of the pipeline's last saved checkpoint.
fn checkpointed(handle: &StreamingPipelineHandle) -> (u64, usize) {
    let (sequence, positions) = handle.context().checkpointed_positions();
    let line = positions.get("lines").and_then(Value::as_i64_exact);
    (sequence, line.unwrap_or(0) as usize)
}

/// Runs the orders pipeline until it has checkpointed `through` lines, then stops it.
async fn run_until(
    lines: &Lines,
    state: &str,
    pipeline_id: &str,
    through: usize,
) -> BTreeMap<String, String> {
    let out = Collected::default();
    let handle = orchestrator(lines, &out)
        .run(ltv_definition(pipeline_id, state))
        .unwrap();
    wait_up_to(Duration::from_secs(60), "the orders checkpointed", || {
        checkpointed(&handle).1 == through
    })
    .await;
    stop(handle).await;
    out.table()
}

/// Runs the orders pipeline with `state` (a private server's store; `store` reads the
/// same server) while the server is crashed by `crash` and started again by `start`,
/// and checks the pipeline never failed, waited, went on, checkpointed after the restart
/// and produced exactly the totals of an uninterrupted run; a new run then resumes from
/// the checkpoints saved after the restart.
async fn orders_survive_a_server_restart(
    state: &str,
    store: Arc<dyn StateStore>,
    server: &mut Server,
    crash: fn(&mut Server),
    start: impl Fn() -> Server,
) {
    let reference_lines = Lines::default();
    add_orders(&reference_lines, 0..ORDERS);
    let reference = run_until(&reference_lines, state, "ltv-reference", ORDERS).await;
    assert_eq!(reference, expected_totals(ORDERS), "the uninterrupted run");

    let (lines, out) = (Lines::default(), Collected::default());
    let handle = orchestrator(&lines, &out)
        .run(ltv_definition("ltv", state))
        .unwrap();
    let third = ORDERS / 3;
    add_orders(&lines, 0..third);
    wait_for("the first third checkpointed", || {
        checkpointed(&handle).1 == third
    })
    .await;

    // Crash the server while the second third is being processed and checkpointed.
    let before_crash = store.load_checkpoint("ltv").await.unwrap().unwrap();
    add_orders(&lines, third..2 * third);
    tokio::task::block_in_place(|| crash(server));
    tokio::time::sleep(Duration::from_millis(100)).await; // a save acknowledged just before
    let checkpoints_at_crash = handle.metrics().checkpoints;
    let (sequence_at_crash, _) = checkpointed(&handle);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        handle.status(),
        PipelineStatus::Running,
        "the pipeline waits for its state store instead of failing"
    );
    // Even an idle pipeline checkpoints every interval: these saves wait (and the
    // pipeline applies backpressure behind them).
    assert_eq!(
        handle.metrics().checkpoints,
        checkpoints_at_crash,
        "no checkpoint can be saved while the server is down"
    );

    *server = tokio::task::block_in_place(start);
    // Read at once, before ten more checkpoints could have pruned it.
    let survived = store
        .load_checkpoint_at("ltv", before_crash.sequence)
        .await
        .unwrap();
    assert_eq!(
        survived.map(|c| c.encode()),
        Some(before_crash.encode()),
        "the checkpoint saved before the crash survived it"
    );
    add_orders(&lines, 2 * third..ORDERS);
    wait_up_to(Duration::from_secs(60), "the orders checkpointed", || {
        checkpointed(&handle).1 == ORDERS
    })
    .await;
    assert_eq!(handle.status(), PipelineStatus::Running);
    assert!(handle.metrics().checkpoints > checkpoints_at_crash);
    stop(handle).await;
    assert_eq!(
        out.table(),
        reference,
        "the output equals the uninterrupted run's"
    );

    // Checkpoints saved after the restart are in the server, none missing in between.
    let sequences = store.list_checkpoints("ltv").await.unwrap();
    let (first, last) = (sequences[0], *sequences.last().unwrap());
    assert!(
        last > sequence_at_crash + 1,
        "checkpoints after the restart: {sequences:?} (crash after {sequence_at_crash})"
    );
    assert_eq!(sequences, (first..=last).collect::<Vec<_>>());
    let latest = store.load_checkpoint("ltv").await.unwrap().unwrap();
    assert_eq!(latest.sequence, last);
    assert_eq!(
        latest.positions.get("lines").and_then(Value::as_i64_exact),
        Some(ORDERS as i64)
    );

    // A new run resumes from them: the totals go on from the checkpointed state.
    add_orders(&lines, ORDERS..ORDERS + 300);
    let resumed = run_until(&lines, state, "ltv", ORDERS + 300).await;
    assert_eq!(resumed, expected_totals(ORDERS + 300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_pipeline_survives_redis_killed_and_restarted_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // AOF with `appendfsync always`: every write Redis acknowledged survives kill -9.
    let mut server = start_redis(dir.path(), port);
    let url = format!("redis://127.0.0.1:{port}");
    let state = format!(r#"{{"type": "redis", "options": {{"url": "{url}", "retryFor": "60s"}}}}"#);
    let store = Arc::new(RedisStateStore::new(RedisStateStoreOptions::new(url), "ltv").unwrap());
    orders_survive_a_server_restart(
        &state,
        store,
        &mut server,
        Server::kill, // SIGKILL
        || start_redis(dir.path(), port),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_pipeline_survives_postgres_crashed_and_restarted_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pg");
    init_postgres(&data);
    let port = free_port();
    let mut server = start_postgres(&data, port);
    let url = format!("postgres://srotax@127.0.0.1:{port}/postgres");
    let state =
        format!(r#"{{"type": "postgres", "options": {{"url": "{url}", "retryFor": "60s"}}}}"#);
    let store = Arc::new(SqlStateStore::new(
        SqlStateStoreOptions::new(SqlFlavor::Postgres, url),
        "ltv",
    ));
    orders_survive_a_server_restart(
        &state,
        store,
        &mut server,
        // SIGQUIT is PostgreSQL's immediate shutdown: a crash (WAL replay at start).
        |s| s.stop_with(libc::SIGQUIT),
        || start_postgres(&data, port),
    )
    .await;
}
