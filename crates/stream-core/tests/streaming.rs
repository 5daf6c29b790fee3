//! The orchestrator end to end with in-test connectors: bounded runs, error policies
//! (poison documents, transient stage and sink failures), checkpoints and resume.

use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stream_core::functions::{FunctionError, FunctionRegistry};
use stream_core::streaming::*;
use stream_core::value::{Document, Value};

/// Lines served in order; positions are line numbers. Unbounded sources wait for more
/// lines to be appended.
#[derive(Clone, Default)]
struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn new<S: AsRef<str>>(lines: &[S]) -> Self {
        let l = Lines::default();
        l.append(lines);
        l
    }
    fn append<S: AsRef<str>>(&self, lines: &[S]) {
        self.lines
            .lock()
            .unwrap()
            .extend(lines.iter().map(|s| s.as_ref().to_string()));
    }
}

struct LinesSource {
    lines: Lines,
    next: usize,
    bounded: bool,
    /// Like a consumer group's first assignment: the first fetch is cut short, empty,
    /// by a rebalance that assigns the partition.
    assignment_pending: bool,
}

#[async_trait]
impl Source for LinesSource {
    async fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, ConnectorError> {
        if self.assignment_pending {
            return Ok(SourceBatch {
                records: Vec::new(),
                end_of_input: false,
            });
        }
        let available: Vec<String> = {
            let l = self.lines.lines.lock().unwrap();
            l[self.next.min(l.len())..]
                .iter()
                .take(max)
                .cloned()
                .collect()
        };
        if available.is_empty() && !self.bounded {
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
        let end = self.bounded && self.next >= self.lines.lines.lock().unwrap().len();
        Ok(SourceBatch {
            records,
            end_of_input: end,
        })
    }
    async fn seek(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        if let Some(p) = positions.get("lines").and_then(Value::as_i64_exact) {
            self.next = p as usize;
        }
        Ok(())
    }
    fn is_bounded(&self) -> bool {
        self.bounded
    }
    fn take_rebalance(&mut self) -> Option<Rebalance> {
        std::mem::take(&mut self.assignment_pending).then(|| Rebalance {
            revoked: Vec::new(),
            assigned: vec!["lines".to_string()],
        })
    }
}

/// Collects written documents (kept once flushed); fails the first `fail_first` writes
/// transiently.
#[derive(Clone, Default)]
struct Collected {
    docs: Arc<Mutex<Vec<Document>>>,
    fail_first: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
    delay: Duration,
    /// The sink's `max_unflushed_batches` (0: the default).
    max_unflushed: usize,
    /// `w` per write, `f` per flush, in order.
    calls: Arc<Mutex<String>>,
}

impl Collected {
    fn json(&self) -> Vec<String> {
        self.docs
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.to_json())
            .collect()
    }
}

struct CollectSink(Collected, Vec<Document>);

#[async_trait]
impl Sink for CollectSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        self.0.writes.fetch_add(1, Ordering::SeqCst);
        self.0.calls.lock().unwrap().push('w');
        if !self.0.delay.is_zero() {
            tokio::time::sleep(self.0.delay).await;
        }
        if self.0.fail_first.load(Ordering::SeqCst) > 0 {
            self.0.fail_first.fetch_sub(1, Ordering::SeqCst);
            return Err(ConnectorError::transient("collect", "simulated outage"));
        }
        self.1.extend(batch.iter().cloned());
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        self.0.calls.lock().unwrap().push('f');
        self.0.docs.lock().unwrap().append(&mut self.1);
        Ok(())
    }
    fn max_unflushed_batches(&self) -> usize {
        match self.0.max_unflushed {
            0 => 1,
            n => n,
        }
    }
}

/// `lines` source and `collect` / `dlq` sinks backed by shared test objects.
struct TestProvider {
    lines: Lines,
    bounded: bool,
    assignment_pending: bool,
    out: Collected,
    dlq: Collected,
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
            bounded: self.bounded,
            assignment_pending: self.assignment_pending,
        })))
    }
    fn create_sink(
        &self,
        c: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        let target = if c.str_option("name")? == Some("dlq") {
            &self.dlq
        } else {
            &self.out
        };
        Ok(Some(Box::new(CollectSink(target.clone(), Vec::new()))))
    }
}

struct Harness {
    orchestrator: StreamingPipelineOrchestrator,
    lines: Lines,
    out: Collected,
    dlq: Collected,
}

fn harness(lines: &[&str], bounded: bool, out: Collected) -> Harness {
    harness_with(lines, bounded, false, out)
}

fn harness_with(
    lines: &[&str],
    bounded: bool,
    assignment_pending: bool,
    out: Collected,
) -> Harness {
    let lines = Lines::new(lines);
    let dlq = Collected::default();
    let mut registry = ConnectorRegistry::new();
    registry.register(Arc::new(TestProvider {
        lines: lines.clone(),
        bounded,
        assignment_pending,
        out: out.clone(),
        dlq: dlq.clone(),
    }));
    Harness {
        orchestrator: StreamingPipelineOrchestrator::new(registry),
        lines,
        out,
        dlq,
    }
}

fn definition(pipeline: &str, policy: ErrorPolicyConfig) -> StreamingPipelineDefinitionBuilder {
    StreamingPipelineDefinition::builder("test-pipeline")
        .source(ConnectorConfig::new("test"))
        .sink(ConnectorConfig::new("test"))
        .pipeline_json(pipeline)
        .unwrap()
        .runtime(RuntimeConfig {
            micro_batch_size: 2,
            max_batch_delay: Duration::from_millis(10),
            ..RuntimeConfig::default()
        })
        .error_policy(policy)
}

fn dead_letter() -> ErrorPolicyConfig {
    ErrorPolicyConfig::DeadLetter(ConnectorConfig::new("test").option("name", "dlq"))
}

async fn finish(handle: &StreamingPipelineHandle) -> Result<RunSummary, RunError> {
    handle
        .await_termination(Some(Duration::from_secs(20)))
        .await
        .expect("pipeline ended in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_run_emits_the_final_group_table() {
    let h = harness(
        &[
            r#"{"c": "a", "status": "PAID", "v": 10}"#,
            r#"{"c": "b", "status": "NEW", "v": 99}"#,
            r#"{"c": "a", "status": "PAID", "v": 5}"#,
            r#"{"c": "b", "status": "PAID", "v": 1}"#,
        ],
        true,
        Collected::default(),
    );
    let def = definition(
        r#"[{"$match": {"status": "PAID"}}, {"$group": {"_id": "$c", "n": {"$count": {}}, "total": {"$sum": "$v"}}}, {"$sort": {"_id": 1}}]"#,
        ErrorPolicyConfig::FailFast,
    )
    .build()
    .unwrap();
    let handle = h.orchestrator.run(def).unwrap();
    let summary = finish(&handle).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    assert_eq!(
        h.out.json(),
        vec![
            r#"{"_id":"a","n":2,"total":15}"#,
            r#"{"_id":"b","n":1,"total":1}"#
        ]
    );
    assert_eq!(summary.metrics.records_in, 4);
    assert_eq!(summary.metrics.documents_out, 2);
    assert_eq!(summary.metrics.stages[0].stats.documents_in, 4);
    assert_eq!(summary.metrics.stages[0].stats.documents_out, 3);
    assert_eq!(handle.status(), PipelineStatus::Completed);
}

/// Regression: an `availableNow` run on a consumer group ended at once, reading
/// nothing, because the fetch cut short by the first assignment came back empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_now_does_not_end_on_a_fetch_cut_short_by_a_rebalance() {
    let h = harness_with(
        &[r#"{"v": 1}"#, r#"{"v": 2}"#, r#"{"v": 3}"#],
        false,
        true,
        Collected::default(),
    );
    let mut def = definition(
        r#"[{"$match": {"v": {"$gte": 2}}}]"#,
        ErrorPolicyConfig::FailFast,
    )
    .build()
    .unwrap();
    def.runtime.trigger = Trigger::AvailableNow;
    let handle = h.orchestrator.run(def).unwrap();
    let summary = finish(&handle).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    assert_eq!(h.out.json(), vec![r#"{"v":2}"#, r#"{"v":3}"#]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_documents_go_alone_to_the_dead_letter_sink() {
    let h = harness(
        &[
            r#"{"n": "1"}"#,
            r#"{"n": "abc", "other": [1]}"#,
            "{not json",
            r#"{"n": "3"}"#,
        ],
        true,
        Collected::default(),
    );
    let def = definition(
        r#"[{"$project": {"_id": 0, "n": {"$toInt": "$n"}}}]"#,
        dead_letter(),
    )
    .build()
    .unwrap();
    let summary = finish(&h.orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(h.out.json(), vec![r#"{"n":1}"#, r#"{"n":3}"#]);
    let dlq = h.dlq.docs.lock().unwrap().clone();
    assert_eq!(dlq.len(), 2);
    assert_eq!(
        dlq[0].get("pipelineId").and_then(Value::as_str),
        Some("test-pipeline")
    );
    assert_eq!(
        dlq[0].get("stage").and_then(Value::as_str),
        Some("pipeline[0] $project")
    );
    assert!(dlq[0]
        .get("error")
        .and_then(Value::as_str)
        .unwrap()
        .contains("$toInt"));
    // The whole input, not only the fields the pipeline reads.
    assert_eq!(
        dlq[0].get("document").unwrap().to_json(),
        r#"{"n":"abc","other":[1]}"#
    );
    assert_eq!(
        dlq[0].get("attempts").and_then(Value::as_i64_exact),
        Some(1)
    );
    assert_eq!(
        dlq[0].get("source").unwrap().to_json(),
        r#"{"partition":"lines","position":2}"#
    );
    assert!(matches!(dlq[0].get("failedAt"), Some(Value::Date(_))));
    assert_eq!(dlq[1].get("stage").and_then(Value::as_str), Some("parse"));
    assert_eq!(
        dlq[1].get("document").and_then(Value::as_str),
        Some("{not json")
    );
    assert_eq!(
        (summary.metrics.failed, summary.metrics.dead_lettered),
        (2, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_stops_at_the_first_bad_document() {
    let h = harness(
        &[r#"{"n": "1"}"#, r#"{"n": "abc"}"#, r#"{"n": "3"}"#],
        true,
        Collected::default(),
    );
    let def = definition(
        r#"[{"$project": {"_id": 0, "n": {"$toInt": "$n"}}}]"#,
        ErrorPolicyConfig::FailFast,
    )
    .build()
    .unwrap();
    let handle = h.orchestrator.run(def).unwrap();
    let err = finish(&handle).await.unwrap_err();
    assert!(
        matches!(err, RunError::Document(ref m) if m.contains("pipeline[0] $project") && m.contains("position 2")),
        "{err}"
    );
    assert!(matches!(handle.status(), PipelineStatus::Failed(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_stage_failures_are_retried_then_succeed() {
    let h = harness(&[r#"{"x": 1}"#, r#"{"x": 2}"#], true, Collected::default());
    let failures_left = Arc::new(AtomicUsize::new(2));
    let mut functions = FunctionRegistry::new();
    let left = failures_left.clone();
    functions.register("flaky", move |args: &[Value]| {
        if left.load(Ordering::SeqCst) > 0 {
            left.fetch_sub(1, Ordering::SeqCst);
            return Err(FunctionError::transient("service unavailable"));
        }
        Ok(args[0].clone())
    });
    let retry = ErrorPolicyConfig::Retry {
        retry: RetryConfig {
            max_attempts: 3,
            initial_delay: Duration::from_millis(1),
            jitter: 0.0,
            ..RetryConfig::default()
        },
        then: Box::new(dead_letter()),
    };
    let def = definition(
        r#"[{"$set": {"y": {"$function": {"name": "flaky", "args": ["$x"]}}}}]"#,
        retry,
    )
    .functions(Arc::new(functions))
    .build()
    .unwrap();
    let summary = finish(&h.orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(h.out.json(), vec![r#"{"x":1,"y":1}"#, r#"{"x":2,"y":2}"#]);
    assert_eq!(summary.metrics.retries, 2);
    assert!(h.dlq.docs.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_sink_failures_are_retried_without_loss() {
    let out = Collected {
        fail_first: Arc::new(AtomicUsize::new(3)),
        ..Collected::default()
    };
    let h = harness(&[r#"{"a": 1}"#, r#"{"a": 2}"#, r#"{"a": 3}"#], true, out);
    let retry = ErrorPolicyConfig::Retry {
        retry: RetryConfig {
            max_attempts: 5,
            initial_delay: Duration::from_millis(1),
            jitter: 0.0,
            ..RetryConfig::default()
        },
        then: Box::new(ErrorPolicyConfig::FailFast),
    };
    let def = definition("[]", retry).build().unwrap();
    let summary = finish(&h.orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(h.out.json(), vec![r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":3}"#]);
    assert_eq!(summary.metrics.retries, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_outage_beyond_retries_fails_the_pipeline() {
    let out = Collected {
        fail_first: Arc::new(AtomicUsize::new(100)),
        ..Collected::default()
    };
    let h = harness(&[r#"{"a": 1}"#], true, out);
    let retry = ErrorPolicyConfig::Retry {
        retry: RetryConfig {
            max_attempts: 2,
            initial_delay: Duration::from_millis(1),
            jitter: 0.0,
            ..RetryConfig::default()
        },
        then: Box::new(ErrorPolicyConfig::FailFast),
    };
    let def = definition("[]", retry).build().unwrap();
    let err = finish(&h.orchestrator.run(def).unwrap()).await.unwrap_err();
    assert!(matches!(err, RunError::Sink(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_checkpoints_and_a_restart_resumes_without_loss_or_duplicates() {
    let h = harness(
        &[r#"{"i": 1}"#, r#"{"i": 2}"#, r#"{"i": 3}"#],
        false,
        Collected::default(),
    );
    let def = definition(
        r#"[{"$project": {"_id": 0, "i": 1}}]"#,
        ErrorPolicyConfig::FailFast,
    )
    .build()
    .unwrap();
    let handle = h.orchestrator.run(def.clone()).unwrap();
    wait_for(|| h.out.json().len() == 3).await;
    handle.stop();
    assert_eq!(
        finish(&handle).await.unwrap().status,
        PipelineStatus::Stopped
    );

    h.lines.append(&[r#"{"i": 4}"#, r#"{"i": 5}"#]);
    let handle = h.orchestrator.run(def.clone()).unwrap();
    wait_for(|| h.out.json().len() == 5).await;
    handle.stop();
    finish(&handle).await.unwrap();
    let got: Vec<String> = h.out.json();
    assert_eq!(
        got,
        (1..=5)
            .map(|i| format!(r#"{{"i":{i}}}"#))
            .collect::<Vec<_>>()
    );

    let context = handle.context();
    let (sequence, positions) = context.checkpointed_positions();
    assert!(sequence > 0);
    assert_eq!(positions.get("lines"), Some(&Value::Int64(5)));

    // --reset ignores the checkpoint: everything is read again.
    let handle = h
        .orchestrator
        .run_with(def, RunOptions { reset: true })
        .unwrap();
    wait_for(|| h.out.json().len() == 10).await;
    handle.stop();
    finish(&handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_stages_are_rejected_on_unbounded_input() {
    let h = harness(&[], false, Collected::default());
    let def = definition(r#"[{"$sort": {"a": 1}}]"#, ErrorPolicyConfig::FailFast)
        .build()
        .unwrap();
    let err = h.orchestrator.run(def).unwrap_err();
    assert_eq!(err.path, "pipeline");
    assert!(
        err.message
            .contains("pipeline[0]: $sort needs the whole input"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_connector_types_are_named() {
    let h = harness(&[], true, Collected::default());
    let def = StreamingPipelineDefinition::from_json_str(
        r#"{"pipelineId": "p", "source": {"type": "kafkaa"}, "sink": {"type": "test"}}"#,
    )
    .unwrap();
    let err = h.orchestrator.run(def).unwrap_err();
    assert_eq!(err.path, "source.type");
    assert!(
        err.message
            .contains("unknown connector type 'kafkaa' (available: test"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_bounds_what_is_in_flight() {
    let out = Collected {
        delay: Duration::from_millis(20),
        ..Collected::default()
    };
    let lines: Vec<String> = (0..2000).map(|i| format!(r#"{{"i": {i}}}"#)).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let h = harness(&lines, false, out);
    let def = definition("[]", ErrorPolicyConfig::FailFast)
        .runtime(RuntimeConfig {
            micro_batch_size: 10,
            max_batch_delay: Duration::from_millis(5),
            source_queue_capacity: 2,
            queue_capacity: 2,
            ..RuntimeConfig::default()
        })
        .build()
        .unwrap();
    let handle = h.orchestrator.run(def).unwrap();
    let mut max_in_flight = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let m = handle.metrics();
        max_in_flight = max_in_flight.max(m.records_in - m.documents_out);
    }
    handle.stop();
    finish(&handle).await.unwrap();
    // Two queues of two batches, plus one batch in each of the three tasks.
    assert!(
        max_in_flight <= (2 + 2 + 3) * 10,
        "in flight: {max_in_flight}"
    );
    assert!(
        h.out.json().len() < 2000,
        "the slow sink should not have kept up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_may_take_several_batches_before_a_flush() {
    let out = Collected {
        delay: Duration::from_millis(5),
        max_unflushed: 4,
        ..Collected::default()
    };
    let lines: Vec<String> = (0..200).map(|i| format!(r#"{{"i": {i}}}"#)).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let h = harness(&lines, true, out);
    let def = definition("[]", ErrorPolicyConfig::FailFast)
        .build()
        .unwrap();
    let summary = finish(&h.orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(summary.metrics.documents_out, 200);
    let expected: Vec<String> = (0..200).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
    assert_eq!(h.out.json(), expected, "everything, in order, once flushed");
    let calls = h.out.calls.lock().unwrap().clone();
    assert!(calls.ends_with('f'), "the last write is flushed: {calls}");
    let runs: Vec<usize> = calls.split('f').map(str::len).collect();
    assert!(
        runs.iter().all(|&n| n <= 4),
        "at most 4 writes between flushes: {calls}"
    );
    assert!(
        runs.iter().any(|&n| n > 1),
        "the slow sink got batches while earlier ones were unflushed: {calls}"
    );
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listeners_see_every_batch_and_attributes_are_shared() {
    struct Counting(AtomicUsize, Mutex<u64>);
    impl MetricsListener for Counting {
        fn on_batch(&self, pipeline_id: &str, m: &MetricsSnapshot) {
            assert_eq!(pipeline_id, "test-pipeline");
            self.0.fetch_add(1, Ordering::SeqCst);
            *self.1.lock().unwrap() = m.documents_out;
        }
    }
    let mut h = harness(
        &[r#"{"a": 1}"#, r#"{"a": 2}"#, r#"{"a": 3}"#],
        true,
        Collected::default(),
    );
    let listener = Arc::new(Counting(AtomicUsize::new(0), Mutex::new(0)));
    h.orchestrator.add_metrics_listener(listener.clone());
    let handle = h
        .orchestrator
        .run(
            definition("[]", ErrorPolicyConfig::FailFast)
                .build()
                .unwrap(),
        )
        .unwrap();
    handle
        .context()
        .set_attribute("owner", Value::string("team-a"));
    finish(&handle).await.unwrap();
    // Batches of two records: [1, 2], [3], then the end-of-input flush.
    assert!(listener.0.load(Ordering::SeqCst) >= 2);
    assert_eq!(*listener.1.lock().unwrap(), 3);
    assert_eq!(
        handle.context().attribute("owner"),
        Some(Value::string("team-a"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_guarantees_and_bad_event_time_settings_are_refused() {
    let h = harness(&[], true, Collected::default());
    let def = definition("[]", ErrorPolicyConfig::FailFast)
        .runtime(RuntimeConfig {
            processing_guarantee: ProcessingGuarantee::ExactlyOnce,
            ..RuntimeConfig::default()
        })
        .build()
        .unwrap();
    let err = h.orchestrator.run(def).unwrap_err();
    assert_eq!(err.path, "runtime.processingGuarantee");
    assert!(err.message.contains("cannot give exactly-once"), "{err}");

    let mut source = ConnectorConfig::new("test");
    source.path = "source".into();
    source.time_field = Some(Value::string("$ts"));
    source.watermark = Some(Value::string("5 seconds"));
    let def = definition("[]", ErrorPolicyConfig::FailFast)
        .source(source)
        .build()
        .unwrap();
    let err = h.orchestrator.run(def).unwrap_err();
    assert_eq!(err.path, "source.watermark");
    assert!(err.message.contains("boundedOutOfOrderness"), "{err}");
}
