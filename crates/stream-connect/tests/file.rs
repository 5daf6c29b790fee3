//! The `file` source and sink end to end through the orchestrator: bounded runs with
//! exact output, globs, follow mode with stop and resume, option errors.

mod common;

use common::{eventually, finish, read_lines};
use std::time::Duration;
use stream_connect::{builtin_registry, MemoryHub};
use stream_core::streaming::*;
use test_support::TempDir;

fn file_source(path: &str) -> ConnectorConfig {
    ConnectorConfig::new("file").option("path", path)
}

fn runtime(batch: usize) -> RuntimeConfig {
    RuntimeConfig {
        micro_batch_size: batch,
        max_batch_delay: Duration::from_millis(20),
        ..RuntimeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_file_through_match_to_file_gives_exact_output() {
    let dir = TempDir::new("bounded");
    let input = dir.file("orders.jsonl");
    // A blank line, a CRLF line and a last line without newline.
    std::fs::write(
        &input,
        concat!(
            "{\"id\": 1, \"status\": \"PAID\", \"v\": 10.5}\n",
            "{\"id\": 2, \"status\": \"NEW\", \"v\": 3}\n",
            "\n",
            "{\"id\": 3, \"status\": \"PAID\", \"v\": 7, \"ts\": {\"$date\": \"2024-03-01T00:00:00Z\"}}\r\n",
            "{\"id\": 4, \"status\": \"PAID\", \"v\": 1}"
        ),
    )
    .unwrap();
    let output = dir.file("out/nested/paid.jsonl");
    let def = StreamingPipelineDefinition::builder("file-bounded")
        .source(file_source(&input))
        .pipeline_json(r#"[{"$match": {"status": "PAID"}}, {"$project": {"_id": 0, "id": 1, "v": 1, "ts": 1}}]"#)
        .unwrap()
        .sink(ConnectorConfig::new("file").option("path", output.as_str()))
        .runtime(runtime(2))
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let summary = finish(&orchestrator.run(def.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    assert_eq!(summary.metrics.records_in, 4, "the blank line is skipped");
    assert_eq!(summary.metrics.documents_out, 3);
    let expected = concat!(
        "{\"id\":1,\"v\":10.5}\n",
        "{\"id\":3,\"v\":7,\"ts\":{\"$date\":\"2024-03-01T00:00:00Z\"}}\n",
        "{\"id\":4,\"v\":1}\n"
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), expected);

    // Running again resumes at the end of the file: nothing is read or appended twice.
    let summary = finish(&orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    assert_eq!(summary.metrics.records_in, 0);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_reads_every_matching_file_in_sorted_order() {
    let dir = TempDir::new("glob");
    std::fs::write(dir.file("b.jsonl"), "{\"n\": 3}\n{\"n\": 4}\n").unwrap();
    std::fs::write(dir.file("a.jsonl"), "{\"n\": 1}\n{\"n\": 2}\n").unwrap();
    std::fs::write(dir.file("ignored.txt"), "{\"n\": 99}\n").unwrap();
    let channel = "file-glob-out";
    let hub = MemoryHub::global();
    hub.remove(channel);
    let def = StreamingPipelineDefinition::builder("file-glob")
        .source(file_source(&dir.file("*.jsonl")))
        .sink(ConnectorConfig::new("memory").option("name", channel))
        .runtime(runtime(3))
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let summary = finish(&orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    let got: Vec<String> = hub.documents(channel).iter().map(|d| d.to_json()).collect();
    assert_eq!(
        got,
        vec![r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_tails_appends_and_resumes_after_a_restart_without_loss_or_duplicates() {
    use std::io::Write;
    let dir = TempDir::new("follow");
    let input = dir.file("events.jsonl");
    let output = dir.file("out.jsonl");
    std::fs::write(&input, "{\"n\": 1}\n{\"n\": 2}\n{\"n\": 3}\n").unwrap();
    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    let def = StreamingPipelineDefinition::builder("file-follow")
        .source(
            file_source(&input)
                .option("follow", true)
                .option("pollInterval", "20 ms"),
        )
        .pipeline_json(r#"[{"$project": {"_id": 0, "n": 1}}]"#)
        .unwrap()
        .sink(
            ConnectorConfig::new("file")
                .option("path", output.as_str())
                .option("fsync", false),
        )
        .runtime(runtime(2))
        .build()
        .unwrap();
    // One orchestrator: its memory state store keeps the checkpoint between the runs.
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let wait = Duration::from_secs(10);

    let handle = orchestrator.run(def.clone()).unwrap();
    eventually("the first 3 lines", wait, || read_lines(&output).len() == 3).await;
    // Half a line is not emitted until its newline arrives.
    append("{\"n\": 4}\n{\"n\":");
    eventually("line 4", wait, || read_lines(&output).len() == 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        read_lines(&output).len(),
        4,
        "an incomplete line was emitted"
    );
    append(" 5}\n");
    eventually("line 5", wait, || read_lines(&output).len() == 5).await;
    handle.stop();
    let summary = finish(&handle).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Stopped);

    // Lines written while the pipeline is down are picked up by the next run.
    append("{\"n\": 6}\n{\"n\": 7}\n");
    let handle = orchestrator.run(def).unwrap();
    eventually("lines 6 and 7", wait, || read_lines(&output).len() >= 7).await;
    append("{\"n\": 8}\n");
    eventually("line 8", wait, || read_lines(&output).len() >= 8).await;
    handle.stop();
    finish(&handle).await.unwrap();
    let expected: Vec<String> = (1..=8).map(|n| format!("{{\"n\":{n}}}")).collect();
    assert_eq!(read_lines(&output), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_picks_up_new_files_matching_the_glob() {
    let dir = TempDir::new("follow-glob");
    std::fs::write(dir.file("1.jsonl"), "{\"n\": 1}\n").unwrap();
    let channel = "file-follow-glob-out";
    let hub = MemoryHub::global();
    hub.remove(channel);
    let def = StreamingPipelineDefinition::builder("file-follow-glob")
        .source(
            file_source(&dir.file("*.jsonl"))
                .option("follow", true)
                .option("pollInterval", 20),
        )
        .sink(ConnectorConfig::new("memory").option("name", channel))
        .runtime(runtime(10))
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let handle = orchestrator.run(def).unwrap();
    hub.wait_for(channel, 1, Duration::from_secs(10))
        .await
        .unwrap();
    std::fs::write(dir.file("2.jsonl"), "{\"n\": 2}\n").unwrap();
    let docs = hub
        .wait_for(channel, 2, Duration::from_secs(10))
        .await
        .unwrap();
    handle.stop();
    finish(&handle).await.unwrap();
    assert_eq!(
        docs.iter().map(|d| d.to_json()).collect::<Vec<_>>(),
        vec![r#"{"n":1}"#, r#"{"n":2}"#]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_name_their_path() {
    let dir = TempDir::new("options");
    let existing = dir.file("in.jsonl");
    std::fs::write(&existing, "{}\n").unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let run = |source: ConnectorConfig, sink: ConnectorConfig| {
        let def = StreamingPipelineDefinition::builder("file-options")
            .source(source)
            .sink(sink)
            .build()
            .unwrap();
        orchestrator.run(def).map(|_| ()).unwrap_err()
    };
    let sink = || ConnectorConfig::new("file").option("path", dir.file("out.jsonl").as_str());
    let cases = [
        (
            ConnectorConfig::new("file"),
            sink(),
            "source.options.path",
            "needs option 'path'",
        ),
        (
            ConnectorConfig::new("file").option("path", 5),
            sink(),
            "source.options.path",
            "expected a string",
        ),
        (
            file_source(&dir.file("missing.jsonl")),
            sink(),
            "source.options.path",
            "no file matches",
        ),
        (
            file_source(&dir.file("[.jsonl")),
            sink(),
            "source.options.path",
            "invalid glob pattern",
        ),
        (
            file_source(&existing).option("follow", "yes"),
            sink(),
            "source.options.follow",
            "expected true or false",
        ),
        (
            file_source(&existing).option("pollInterval", "soon"),
            sink(),
            "source.options.pollInterval",
            "invalid duration",
        ),
        (
            file_source(&existing).option("pollInterval", 0),
            sink(),
            "source.options.pollInterval",
            "greater than 0",
        ),
        (
            file_source(&existing).option("pathh", "x"),
            sink(),
            "source.options.pathh",
            "unknown option 'pathh'",
        ),
        (
            file_source(&existing),
            ConnectorConfig::new("file"),
            "sink.options.path",
            "needs option 'path'",
        ),
        (
            file_source(&existing),
            sink().option("fsync", 1),
            "sink.options.fsync",
            "expected true or false",
        ),
    ];
    for (source, sink, path, message) in cases {
        let e = run(source, sink);
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(message), "{e}");
    }
}

fn texts(batch: &SourceBatch) -> Vec<String> {
    batch
        .records
        .iter()
        .map(|r| match &r.payload {
            Payload::Json(s) => s.clone(),
            Payload::Document(d) => d.to_json(),
        })
        .collect()
}

#[tokio::test]
async fn the_source_reports_byte_positions_and_handles_truncation_and_bad_utf8() {
    use stream_connect::FileConnectorProvider;
    let dir = TempDir::new("source-api");
    let path = dir.file("in.jsonl");
    std::fs::write(&path, b"{\"a\": 1}\n{\"b\": \"\xff\"}\n").unwrap();
    let ctx = ConnectorContext::new("p");
    let config = file_source(&path)
        .option("follow", true)
        .option("pollInterval", 10);
    let mut source = FileConnectorProvider
        .create_source(&config, &ctx)
        .unwrap()
        .unwrap();
    assert!(!source.is_bounded());
    assert_eq!(source.progress(), None);
    let batch = source
        .next_batch(10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        texts(&batch),
        vec![
            "{\"a\": 1}".to_string(),
            "{\"b\": \"\u{fffd}\"}".to_string()
        ]
    );
    assert_eq!(batch.records[0].position.as_i64_exact(), Some(9));
    assert_eq!(batch.records[1].position.as_i64_exact(), Some(20));
    assert_eq!(batch.records[0].partition.as_ref(), path);
    // Nothing new: an empty batch after about max_wait.
    let batch = source
        .next_batch(10, Duration::from_millis(30))
        .await
        .unwrap();
    assert!(batch.records.is_empty() && !batch.end_of_input);
    // Truncated in place and rewritten: read again from the start.
    std::fs::write(&path, "{\"c\": 3}\n").unwrap();
    let batch = source.next_batch(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(texts(&batch), vec!["{\"c\": 3}".to_string()]);

    // A bounded source resumed past the end of a shorter file reads it from the start.
    let bounded = file_source(&path);
    let mut source = FileConnectorProvider
        .create_source(&bounded, &ctx)
        .unwrap()
        .unwrap();
    let total = |s: &dyn Source| s.progress().map(|p| (p.total, p.unit));
    assert_eq!(total(&*source), Some((9, "bytes")));
    let mut positions = SourcePositions::new();
    positions.insert(path.clone(), stream_core::value::Value::Int64(1000));
    source.seek(&positions).await.unwrap();
    let batch = source
        .next_batch(10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(texts(&batch), vec!["{\"c\": 3}".to_string()]);
    assert!(batch.end_of_input);
    assert_eq!(source.progress().map(|p| p.done), Some(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_removes_output_written_after_the_checkpoint() {
    let dir = TempDir::new("sink-restore");
    let input = dir.file("in.jsonl");
    let output = dir.file("out.jsonl");
    std::fs::write(&input, "{\"n\": 1}\n{\"n\": 2}\n").unwrap();
    let def = StreamingPipelineDefinition::builder("file-sink-restore")
        .source(
            file_source(&input)
                .option("follow", true)
                .option("pollInterval", 10),
        )
        .sink(ConnectorConfig::new("file").option("path", output.as_str()))
        .runtime(runtime(10))
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let handle = orchestrator.run(def.clone()).unwrap();
    eventually("2 lines", Duration::from_secs(10), || {
        read_lines(&output).len() == 2
    })
    .await;
    handle.stop();
    finish(&handle).await.unwrap();
    // Output the checkpoint does not cover, as a crash after a write would leave it.
    std::fs::write(&output, "{\"n\":1}\n{\"n\":2}\n{\"uncovered\":true}\n").unwrap();
    let handle = orchestrator.run(def).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"n\": 3}\n"))
        .unwrap();
    let expected = vec![r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#];
    eventually(
        "line 3 in place of the uncovered line",
        Duration::from_secs(10),
        || read_lines(&output) == expected,
    )
    .await;
    handle.stop();
    finish(&handle).await.unwrap();
    assert_eq!(read_lines(&output), expected);
}
