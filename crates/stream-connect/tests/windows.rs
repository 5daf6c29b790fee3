//! Event-time windows through the orchestrator: watermarks from the source's
//! `timeField`, late events to the dead-letter sink, and a checkpoint taken mid-window
//! (stop, restart) giving exactly the output of an uninterrupted run.

mod common;

use common::{finish, read_lines};
use std::time::Duration;
use stream_connect::{builtin_registry, MemoryHub};
use stream_core::streaming::*;
use stream_core::value::{Document, Value};
use test_support::TempDir;

fn memory(name: &str) -> ConnectorConfig {
    ConnectorConfig::new("memory").option("name", name)
}

fn json(docs: &[Document]) -> Vec<String> {
    docs.iter().map(Document::to_json).collect()
}

const WINDOWED: &str = r#"[
    {"$match": {"status": "PAID"}},
    {"$tumblingWindow": {"interval": {"size": 10, "unit": "second"},
        "pipeline": [{"$group": {"_id": "$region", "n": {"$count": {}}, "total": {"$sum": "$v"}}}, {"$sort": {"_id": 1}}]}}
]"#;

fn event_time_source(name: &str) -> ConnectorConfig {
    let mut source = memory(name);
    source.time_field = Some(Value::string("$t"));
    source.watermark =
        Some(stream_core::value::parse_value(r#"{"boundedOutOfOrderness": "2 seconds"}"#).unwrap());
    source
}

fn definition(
    id: &str,
    input: &str,
    output: &str,
    state: ConnectorConfig,
) -> StreamingPipelineDefinition {
    StreamingPipelineDefinition::builder(id)
        .source(event_time_source(input))
        .sink(memory(output))
        .pipeline_json(WINDOWED)
        .unwrap()
        .state(state)
        .runtime(RuntimeConfig {
            micro_batch_size: 2,
            max_batch_delay: Duration::from_millis(10),
            checkpoint_interval: Duration::ZERO,
            ..RuntimeConfig::default()
        })
        .build()
        .unwrap()
}

/// Events in two halves: the stop falls inside window [10 s, 20 s).
fn events() -> (Vec<String>, Vec<String>) {
    let e = |t: i64, region: &str, v: i64, status: &str| {
        format!(r#"{{"t": {t}, "region": "{region}", "v": {v}, "status": "{status}"}}"#)
    };
    let first = vec![
        e(1_000, "EU", 1, "PAID"),
        e(4_000, "US", 2, "PAID"),
        e(3_000, "EU", 4, "PAID"), // out of order, on time
        e(9_000, "EU", 8, "NEW"),
        e(12_500, "US", 16, "PAID"), // watermark 10.5 s: [0, 10) closes
        e(14_000, "EU", 32, "PAID"),
    ];
    let second = vec![
        e(2_000, "EU", 64, "PAID"), // late: dropped
        e(11_000, "US", 128, "PAID"),
        e(25_000, "EU", 256, "PAID"), // watermark 23 s: [10, 20) closes
        e(26_000, "EU", 512, "PAID"),
    ];
    (first, second)
}

fn expected() -> Vec<String> {
    let w = |s: &str, e: &str| {
        format!(
            r#""_stream_meta":{{"window":{{"start":{{"$date":"1970-01-01T00:00:{s}Z"}},"end":{{"$date":"1970-01-01T00:00:{e}Z"}}}}}}"#
        )
    };
    vec![
        format!(r#"{{"_id":"EU","n":2,"total":5,{}}}"#, w("00", "10")),
        format!(r#"{{"_id":"US","n":1,"total":2,{}}}"#, w("00", "10")),
        format!(r#"{{"_id":"EU","n":1,"total":32,{}}}"#, w("10", "20")),
        format!(r#"{{"_id":"US","n":2,"total":144,{}}}"#, w("10", "20")),
    ]
}

async fn run_until(
    orchestrator: &StreamingPipelineOrchestrator,
    def: &StreamingPipelineDefinition,
    hub: &MemoryHub,
    input: &str,
    lines: &[String],
) -> RunSummary {
    // Pushed before the start, so micro-batches are full (2 records) and watermarks
    // advance at the same records in every run.
    for l in lines {
        hub.push_json(input, l).unwrap();
    }
    let handle = orchestrator.run(def.clone()).unwrap();
    let want = lines.len() as u64;
    common::eventually("every event read", Duration::from_secs(10), || {
        handle.metrics().records_in >= want
    })
    .await;
    // Let the last batch reach the sink before stopping.
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.stop();
    let summary = finish(&handle).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Stopped);
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_mid_window_restores_to_the_uninterrupted_output() {
    let hub = MemoryHub::global();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let (first, second) = events();
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();

    // Uninterrupted, with the in-memory state store.
    let (input, output) = ("win-whole-in", "win-whole-out");
    hub.remove(input);
    hub.remove(output);
    let def = definition("win-whole", input, output, ConnectorConfig::new("memory"));
    let summary = run_until(&orchestrator, &def, &hub, input, &all).await;
    assert_eq!(json(&hub.documents(output)), expected());
    assert_eq!(summary.metrics.late_events, 1);
    assert!(summary.metrics.watermark.is_some_and(|w| w >= 24_000));

    // Stopped mid-window and restarted, with the file state store.
    let dir = TempDir::new("win-restore");
    let mut registry_orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    stream_state::register_builtin(&mut registry_orchestrator);
    let (input, output) = ("win-restore-in", "win-restore-out");
    hub.remove(input);
    hub.remove(output);
    let state = ConnectorConfig::new("file").option("path", dir.file("state").as_str());
    let def = definition("win-restore", input, output, state);
    run_until(&registry_orchestrator, &def, &hub, input, &first).await;
    assert_eq!(json(&hub.documents(output)), expected()[..2].to_vec());
    let summary = run_until(&registry_orchestrator, &def, &hub, input, &second).await;
    assert_eq!(
        summary.metrics.records_in, 4,
        "only the second half is read"
    );
    assert_eq!(json(&hub.documents(output)), expected());
    assert_eq!(summary.metrics.late_events, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_go_to_the_dead_letter_sink_with_reason_late() {
    let dir = TempDir::new("win-late");
    let input = dir.file("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"ts\": {\"$date\": \"2024-03-01T00:00:01Z\"}, \"v\": 1}\n",
            "{\"ts\": {\"$date\": \"2024-03-01T00:00:15Z\"}, \"v\": 2}\n",
            "{\"ts\": {\"$date\": \"2024-03-01T00:00:02Z\"}, \"v\": 4}\n",
        ),
    )
    .unwrap();
    let (output, dlq) = (dir.file("out.jsonl"), dir.file("dlq.jsonl"));
    let text = format!(
        r#"{{"pipelineId": "win-late",
            "source": {{"type": "file", "options": {{"path": "{input}"}}, "timeField": "$ts",
                        "watermark": {{"monotonicAscending": true}}}},
            "pipeline": [{{"$tumblingWindow": {{"interval": {{"size": 10, "unit": "second"}}, "lateData": "sideOutput",
                "pipeline": [{{"$group": {{"_id": null, "total": {{"$sum": "$v"}}}}}}]}}}}],
            "sink": {{"type": "file", "options": {{"path": "{output}"}}}},
            "errorPolicy": {{"deadLetter": {{"type": "file", "options": {{"path": "{dlq}"}}}}}},
            "runtime": {{"microBatchSize": 1}}}}"#
    );
    let def = StreamingPipelineDefinition::from_json_str(&text).unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let summary = finish(&orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    assert_eq!(
        read_lines(&output),
        vec![
            r#"{"_id":null,"total":1,"_stream_meta":{"window":{"start":{"$date":"2024-03-01T00:00:00Z"},"end":{"$date":"2024-03-01T00:00:10Z"}}}}"#,
            r#"{"_id":null,"total":2,"_stream_meta":{"window":{"start":{"$date":"2024-03-01T00:00:10Z"},"end":{"$date":"2024-03-01T00:00:20Z"}}}}"#,
        ]
    );
    let dead = read_lines(&dlq);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains(r#""reason":"late""#), "{}", dead[0]);
    assert!(
        dead[0].contains(r#""document":{"ts":{"$date":"2024-03-01T00:00:02Z"},"v":4}"#),
        "{}",
        dead[0]
    );
    assert_eq!(summary.metrics.dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_output_without_a_dead_letter_sink_is_refused() {
    let text = r#"{"pipelineId": "win-no-dlq",
        "source": {"type": "memory", "options": {"name": "x"}, "timeField": "$t"},
        "pipeline": [{"$tumblingWindow": {"interval": {"size": 1, "unit": "second"}, "lateData": "sideOutput", "pipeline": []}}],
        "sink": {"type": "memory", "options": {"name": "y"}}}"#;
    let def = StreamingPipelineDefinition::from_json_str(text).unwrap();
    let err = StreamingPipelineOrchestrator::new(builtin_registry())
        .run(def)
        .unwrap_err();
    assert_eq!(err.path, "errorPolicy");
}
