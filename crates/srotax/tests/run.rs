//! `srotax run` end to end: the real binary, real files, the file state store, and
//! `kill -9` in the middle of runs.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stream_core::value::{parse_document, Value};
use test_support::{free_port, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_srotax");

fn definition(dir: &TempDir, id: &str, pipeline: &str) -> String {
    let def = format!(
        r#"{{"pipelineId": "{id}",
            "source": {{"type": "file", "options": {{"path": "{input}"}}}},
            "pipeline": {pipeline},
            "sink": {{"type": "file", "options": {{"path": "{output}"}}}},
            "runtime": {{"microBatchSize": 500, "checkpointInterval": "50 ms"}},
            "state": {{"type": "file", "options": {{"path": "{state}"}}}}}}"#,
        input = dir.file("orders.jsonl"),
        output = dir.file(&format!("{id}.out.jsonl")),
        state = dir.file("state"),
    );
    let path = dir.file(&format!("{id}.json"));
    std::fs::write(&path, def).unwrap();
    path
}

fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn run_to_end(def: &str) -> std::process::Output {
    let out = Command::new(BIN).args(["run", def]).output().unwrap();
    assert!(
        out.status.success(),
        "srotax run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `srotax run` and kills it with SIGKILL once `output` has grown past
/// `min_lines` (or after a timeout), `rounds` times in a row.
fn kill_mid_run(def: &str, output: &str, rounds: usize) -> usize {
    let mut killed = 0;
    for round in 0..rounds {
        let mut child = Command::new(BIN)
            .args(["run", def])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let before = lines(output).len();
        let started = Instant::now();
        // Let it make some progress (a little more each round), then kill it.
        while lines(output).len() < before + 200 * (round + 1)
            && started.elapsed() < Duration::from_secs(20)
        {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on Unix
            killed += 1;
        }
        child.wait().unwrap();
    }
    killed
}

fn generate_input(dir: &TempDir, count: u64) {
    stream_connect::write_orders_jsonl(dir.file("orders.jsonl"), count, 7).unwrap();
}

#[test]
fn kill_9_mid_run_loses_nothing_and_duplicates_nothing() {
    let dir = TempDir::new("stateless");
    generate_input(&dir, 60_000);
    let def = definition(
        &dir,
        "paid",
        r#"[{"$match": {"status": "PAID"}}, {"$project": {"_id": "$orderId", "v": "$orderValue"}}]"#,
    );
    let output = dir.file("paid.out.jsonl");
    let killed = kill_mid_run(&def, &output, 3);
    assert!(
        killed >= 1,
        "the run finished before it could be killed; use more input"
    );
    run_to_end(&def);

    let expected: HashSet<String> = lines(&dir.file("orders.jsonl"))
        .iter()
        .map(|l| parse_document(l).unwrap())
        .filter(|d| d.get("status").and_then(Value::as_str) == Some("PAID"))
        .map(|d| {
            d.get("orderId")
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        })
        .collect();
    let got: Vec<String> = lines(&output)
        .iter()
        .map(|l| {
            parse_document(l)
                .unwrap()
                .get("_id")
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        })
        .collect();
    let unique: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, expected, "every PAID order must be in the output");
    assert_eq!(
        got.len(),
        unique.len(),
        "the file sink rolls back to the checkpoint: no duplicates"
    );
}

#[test]
fn kill_9_during_a_group_gives_the_same_final_table_as_an_uninterrupted_run() {
    let dir = TempDir::new("group");
    generate_input(&dir, 60_000);
    let pipeline = r#"[{"$match": {"status": "PAID"}}, {"$group": {"_id": "$customerId", "n": {"$count": {}}, "total": {"$sum": "$orderValue"}}}, {"$sort": {"_id": 1}}]"#;
    let reference_def = definition(&dir, "ltv-reference", pipeline);
    run_to_end(&reference_def);
    let reference = lines(&dir.file("ltv-reference.out.jsonl"));
    assert!(reference.len() > 100);

    let def = definition(&dir, "ltv", pipeline);
    let output = dir.file("ltv.out.jsonl");
    // The table is written only at the end of the input, so kill on elapsed time.
    let mut killed = 0;
    for delay_ms in [150u64, 300, 450] {
        let mut child = Command::new(BIN)
            .args(["run", &def])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        killed >= 1,
        "the run finished before it could be killed; use more input"
    );
    run_to_end(&def);
    assert_eq!(
        lines(&output),
        reference,
        "restored group state must give the uninterrupted result"
    );
    // The same pipeline through `srotax eval` (rule-engine mode) agrees too.
    let pipeline_file = dir.file("pipeline.json");
    std::fs::write(&pipeline_file, pipeline).unwrap();
    let eval = Command::new(BIN)
        .args([
            "eval",
            "--pipeline",
            &pipeline_file,
            "--input",
            &dir.file("orders.jsonl"),
        ])
        .output()
        .unwrap();
    assert!(eval.status.success());
    let eval_lines: Vec<String> = String::from_utf8(eval.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(eval_lines, reference);
}

#[test]
fn invalid_definitions_exit_2_naming_file_and_path() {
    let dir = TempDir::new("invalid");
    let def = dir.file("bad.json");
    std::fs::write(
        &def,
        r#"{"pipelineId": "bad", "source": {"type": "file", "options": {"path": "x.jsonl"}}, "pipeline": [{"$group": {"_id": 1, "t": {"$summ": 1}}}], "sink": {"type": "stdio"}}"#,
    )
    .unwrap();
    let out = Command::new(BIN).args(["run", &def]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json")
            && err.contains("pipeline[0].$group.t: unknown accumulator '$summ'"),
        "{err}"
    );

    std::fs::write(
        &def,
        r#"{"pipelineId": "bad", "source": {"type": "file", "options": {"path": "/nonexistent/x.jsonl"}}, "sink": {"type": "stdio"}}"#,
    )
    .unwrap();
    let out = Command::new(BIN).args(["run", &def]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("source.options.path"));
}

#[test]
fn two_pipelines_run_side_by_side_and_report_summaries() {
    let dir = TempDir::new("two");
    generate_input(&dir, 2_000);
    let a = definition(&dir, "a", r#"[{"$match": {"status": "PAID"}}]"#);
    let b = definition(&dir, "b", r#"[{"$count": "n"}]"#);
    let out = run_to_end_many(&[&a, &b]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a: completed: in 2000") && err.contains("b: completed: in 2000, out 1"),
        "{err}"
    );
    assert_eq!(
        lines(&dir.file("b.out.jsonl")),
        vec![r#"{"n":2000}"#.to_string()]
    );
}

fn run_to_end_many(defs: &[&str]) -> std::process::Output {
    let out = Command::new(BIN).arg("run").args(defs).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[cfg(unix)]
#[test]
fn sigterm_stops_gracefully_and_metrics_are_served() {
    let dir = TempDir::new("sigterm");
    let output = dir.file("gen.out.jsonl");
    let def = dir.file("gen.json");
    std::fs::write(
        &def,
        format!(
            r#"{{"pipelineId": "gen", "source": {{"type": "generator", "options": {{"ratePerSecond": 5000}}}},
                "pipeline": [{{"$match": {{"status": "PAID"}}}}],
                "sink": {{"type": "file", "options": {{"path": "{output}"}}}},
                "state": {{"type": "file", "options": {{"path": "{state}"}}}},
                "metrics": {{"tags": {{"tenant": "acme"}}}}}}"#,
            state = dir.file("state")
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .args(["run", &def, "--metrics-addr", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some(body) = http_get(port, "/metrics").filter(|b| b.contains("stream_records_in")) {
            break body;
        }
        assert!(Instant::now() < deadline, "metrics never appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    let labels =
        r#"pipeline="gen",source_connector="generator",sink_connector="file",tenant="acme""#;
    assert!(
        metrics.contains(&format!("stream_records_in{{{labels}}}")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"stream_stage_documents_in{{{labels},stage="0:$match"}}"#
        )),
        "{metrics}"
    );
    assert!(metrics.contains("stream_batch_duration"), "{metrics}");
    assert_eq!(http_get(port, "/health").as_deref(), Some("ok\n"));
    assert_eq!(http_get(port, "/ready").as_deref(), Some("ready\n"));

    // SIGTERM: graceful stop with a summary and exit code 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gen: stopped: in "), "{err}");
    assert!(!lines(&output).is_empty());
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[test]
fn the_streaming_sample_gives_the_expected_table_and_resumes() {
    let dir = TempDir::new("sample");
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples");
    let run = || {
        let out = Command::new(BIN)
            .args(["run", &format!("{samples}/orders-ltv/streaming.json")])
            .env("SAMPLES", samples)
            .env("OUT_DIR", dir.path().display().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let first = run();
    assert!(
        first.contains("orders-ltv: completed: in 200, out 36"),
        "{first}"
    );
    let expected = lines(&format!("{samples}/orders-ltv/expected.jsonl"));
    assert_eq!(lines(&dir.file("orders-ltv.jsonl")), expected);
    // Everything was checkpointed: a second run reads nothing and adds nothing.
    let second = run();
    assert!(
        second.contains("orders-ltv: completed: in 0, out 0"),
        "{second}"
    );
    assert_eq!(lines(&dir.file("orders-ltv.jsonl")), expected);
}
