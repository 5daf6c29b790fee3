//! The `memory` source and sink end to end: bounded and unbounded round trips, resume
//! after a restart, hub errors, option errors.

mod common;

use common::finish;
use std::sync::Arc;
use std::time::Duration;
use stream_connect::{builtin_registry, MemoryConnectorProvider, MemoryError, MemoryHub};
use stream_core::streaming::*;
use stream_core::value::Document;

fn memory(name: &str) -> ConnectorConfig {
    ConnectorConfig::new("memory").option("name", name)
}

fn json(docs: &[Document]) -> Vec<String> {
    docs.iter().map(Document::to_json).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_memory_source_ends_when_drained_and_closed() {
    // A private hub, through a provider registered in place of the global one.
    let hub = MemoryHub::new();
    let mut registry = builtin_registry();
    registry.register(Arc::new(MemoryConnectorProvider::new(hub.clone())));
    for n in 1..=5 {
        hub.push_json("in", &format!(r#"{{"n": {n}, "odd": {}}}"#, n % 2 == 1))
            .unwrap();
    }
    hub.close("in");
    assert_eq!(
        hub.push_json("in", "{}"),
        Err(MemoryError::Closed("in".into()))
    );
    let def = StreamingPipelineDefinition::builder("memory-bounded")
        .source(memory("in").option("bounded", true))
        .pipeline_json(r#"[{"$match": {"odd": true}}, {"$project": {"_id": 0, "n": 1}}]"#)
        .unwrap()
        .sink(memory("out"))
        .runtime(RuntimeConfig {
            micro_batch_size: 2,
            ..RuntimeConfig::default()
        })
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(registry);
    let summary = finish(&orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    assert_eq!(
        json(&hub.documents("out")),
        vec![r#"{"n":1}"#, r#"{"n":3}"#, r#"{"n":5}"#]
    );
    assert!(
        MemoryHub::global().is_empty("out"),
        "a private hub does not leak into the global one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_memory_source_resumes_after_a_restart() {
    let hub = MemoryHub::global();
    let (input, output) = ("memory-resume-in", "memory-resume-out");
    hub.remove(input);
    hub.remove(output);
    let def = StreamingPipelineDefinition::builder("memory-resume")
        .source(memory(input))
        .sink(memory(output))
        .runtime(RuntimeConfig {
            micro_batch_size: 3,
            max_batch_delay: Duration::from_millis(10),
            ..RuntimeConfig::default()
        })
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let wait = Duration::from_secs(10);

    let handle = orchestrator.run(def.clone()).unwrap();
    for n in 1..=4 {
        hub.push_json(input, &format!(r#"{{"n": {n}}}"#)).unwrap();
    }
    hub.wait_for(output, 4, wait).await.unwrap();
    handle.stop();
    assert_eq!(
        finish(&handle).await.unwrap().status,
        PipelineStatus::Stopped
    );

    hub.push_json(input, r#"{"n": 5}"#).unwrap();
    let handle = orchestrator.run(def).unwrap();
    hub.push_json(input, r#"{"n": 6}"#).unwrap();
    hub.wait_for(output, 6, wait).await.unwrap();
    handle.stop();
    let summary = finish(&handle).await.unwrap();
    assert_eq!(
        summary.metrics.records_in, 2,
        "only the new documents are read again"
    );
    let expected: Vec<String> = (1..=6).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    assert_eq!(json(&hub.documents(output)), expected);
}

#[tokio::test]
async fn wait_for_reports_a_timeout() {
    let hub = MemoryHub::new();
    hub.push_json("c", "{}").unwrap();
    let e = hub
        .wait_for("c", 2, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            MemoryError::Timeout {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        hub.push_json("c", "[1]"),
        Err(MemoryError::InvalidJson { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_name_their_path() {
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let cases = [
        (
            ConnectorConfig::new("memory"),
            memory("x"),
            "source.options.name",
            "needs option 'name'",
        ),
        (
            memory("x").option("bounded", 2),
            memory("x"),
            "source.options.bounded",
            "expected true or false",
        ),
        (memory("x"), memory(""), "sink.options.name", "empty string"),
        (
            memory("x"),
            memory("y").option("bounded", true),
            "sink.options.bounded",
            "unknown option 'bounded'",
        ),
    ];
    for (source, sink, path, message) in cases {
        let def = StreamingPipelineDefinition::builder("memory-options")
            .source(source)
            .sink(sink)
            .build()
            .unwrap();
        let e = orchestrator.run(def).map(|_| ()).unwrap_err();
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(message), "{e}");
    }
}
