//! The file store behind a real orchestrator: `register_builtin` makes `"type": "file"`
//! available, and a pipeline restarted by a new orchestrator (standing for a new process)
//! resumes from the positions and operator state stored on disk.

#![cfg(feature = "file")]

use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream_core::streaming::*;
use stream_core::value::{Document, Value};
use stream_state::file::FileStateStore;

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
    let deadline = Instant::now() + Duration::from_secs(10);
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
