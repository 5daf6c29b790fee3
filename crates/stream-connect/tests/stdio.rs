//! The `stdio` source and sink in a real child process: this test binary runs itself
//! with its stdin and stdout piped, and the child runs a stdin → $match → stdout pipeline.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stream_connect::builtin_registry;
use stream_core::streaming::*;

const CHILD: &str = "STREAM_CONNECT_STDIO_CHILD";

/// The child's side; does nothing unless started by the test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_entry_point() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let def = StreamingPipelineDefinition::builder("stdio")
        .source(ConnectorConfig::new("stdio"))
        .pipeline_json(r#"[{"$match": {"keep": true}}, {"$project": {"_id": 0, "n": 1}}]"#)
        .unwrap()
        .sink(ConnectorConfig::new("stdio"))
        .runtime(RuntimeConfig {
            micro_batch_size: 2,
            ..RuntimeConfig::default()
        })
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let summary = common::finish(&orchestrator.run(def).unwrap())
        .await
        .unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    eprintln!("records_in={}", summary.metrics.records_in);
}

#[test]
fn stdin_to_stdout_in_a_real_process() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_process_entry_point",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut input = String::new();
    for n in 1..=7 {
        input.push_str(&format!("{{\"n\": {n}, \"keep\": {}}}\n", n % 2 == 1));
        if n == 3 {
            input.push_str("\n\r\n"); // blank lines are skipped
        }
    }
    input.push_str("{\"n\": 9, \"keep\": true}"); // no newline before EOF
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin); // EOF ends the bounded source

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "child failed: {stdout}\n{stderr}");
    assert!(
        stderr.contains("records_in=8"),
        "the child did not run the pipeline: {stderr}"
    );
    // libtest's own lines ("running 1 test", ".") surround the pipeline's output.
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(
        lines,
        vec![
            r#"{"n":1}"#,
            r#"{"n":3}"#,
            r#"{"n":5}"#,
            r#"{"n":7}"#,
            r#"{"n":9}"#
        ]
    );
}
