//! End-to-end tests of the `srotax` binary: `eval` and `validate`, exit codes, stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "srotax-cli-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p
}

/// Runs `srotax` with `args`, feeding `stdin`.
fn srotax(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_srotax"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn srotax");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    // Write from a thread so a large output cannot deadlock against our write.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for srotax");
    writer.join().expect("stdin writer");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn lines(o: &Output) -> Vec<String> {
    stdout(o).lines().map(str::to_string).collect()
}

#[track_caller]
fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status; stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

const PAID_PIPELINE: &str =
    r#"[{"$match": {"status": "PAID"}}, {"$set": {"net": {"$multiply": ["$amount", 2]}}}]"#;
const ORDERS: &str = r#"{"id": 1, "status": "PAID", "amount": 10}
{"id": 2, "status": "NEW", "amount": 5}
{"id": 3, "status": "PAID", "amount": 2.5}
"#;

#[test]
fn eval_reads_a_file_and_writes_json_lines() {
    let dir = scratch("file");
    let p = write(&dir, "p.json", PAID_PIPELINE);
    let input = write(&dir, "orders.jsonl", ORDERS);
    let o = srotax(
        &[
            "eval",
            "--pipeline",
            p.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        "",
    );
    assert_code(&o, 0);
    assert_eq!(
        lines(&o),
        [
            r#"{"id":1,"status":"PAID","amount":10,"net":20}"#,
            r#"{"id":3,"status":"PAID","amount":2.5,"net":5.0}"#,
        ]
    );
    assert_eq!(stderr(&o), "");
}

#[test]
fn eval_reads_stdin_by_default_and_accepts_a_pipeline_object() {
    let dir = scratch("stdin");
    let p = write(
        &dir,
        "p.json",
        &format!(r#"{{"pipeline": {PAID_PIPELINE}}}"#),
    );
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], ORDERS);
    assert_code(&o, 0);
    assert_eq!(lines(&o).len(), 2);
    // `-` also means stdin.
    let o = srotax(&["eval", "-p", p.to_str().unwrap(), "-i", "-"], ORDERS);
    assert_code(&o, 0);
    assert_eq!(lines(&o).len(), 2);
}

#[test]
fn eval_writes_an_output_file() {
    let dir = scratch("output");
    let p = write(&dir, "p.json", PAID_PIPELINE);
    let out = dir.join("out.jsonl");
    let o = srotax(
        &[
            "eval",
            "-p",
            p.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        ORDERS,
    );
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "");
    let written = std::fs::read_to_string(&out).expect("output file");
    assert_eq!(written.lines().count(), 2);
    assert!(written.ends_with('\n'));
}

#[test]
fn eval_accepts_a_json_array_input() {
    let dir = scratch("array");
    let p = write(&dir, "p.json", PAID_PIPELINE);
    let input = "\n  [\n {\"id\": 1, \"status\": \"PAID\", \"amount\": 1},\n {\"id\": 2, \"status\": \"PAID\", \"amount\": 2}\n]\n";
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], input);
    assert_code(&o, 0);
    assert_eq!(
        lines(&o),
        [
            r#"{"id":1,"status":"PAID","amount":1,"net":2}"#,
            r#"{"id":2,"status":"PAID","amount":2,"net":4}"#,
        ]
    );
}

#[test]
fn eval_reports_a_non_document_array_element_and_continues() {
    let dir = scratch("array-bad");
    let p = write(&dir, "p.json", PAID_PIPELINE);
    let input = r#"[{"id": 1, "status": "PAID", "amount": 1}, 42, {"id": 3, "status": "PAID", "amount": 3}]"#;
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], input);
    assert_code(&o, 3);
    assert_eq!(lines(&o).len(), 2);
    assert!(
        stderr(&o).contains("input document 2: expected a JSON object"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn eval_reads_and_writes_extended_json_dates() {
    let dir = scratch("dates");
    let p = write(
        &dir,
        "p.json",
        r#"[
            {"$match": {"ts": {"$gte": {"$date": "2024-03-01T00:00:00Z"}}}},
            {"$set": {"next": {"$add": ["$ts", 86400000]}}}
        ]"#,
    );
    let input = r#"{"id": 1, "ts": {"$date": "2024-03-01T08:28:19.015Z"}}
{"id": 2, "ts": {"$date": "2024-02-01T00:00:00Z"}}
{"id": 3, "ts": {"$date": {"$numberLong": "1709251200000"}}}
"#;
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], input);
    assert_code(&o, 0);
    assert_eq!(
        lines(&o),
        [
            r#"{"id":1,"ts":{"$date":"2024-03-01T08:28:19.015Z"},"next":{"$date":"2024-03-02T08:28:19.015Z"}}"#,
            r#"{"id":3,"ts":{"$date":"2024-03-01T00:00:00Z"},"next":{"$date":"2024-03-02T00:00:00Z"}}"#,
        ]
    );
}

#[test]
fn eval_canonical_output() {
    let dir = scratch("canonical");
    let p = write(&dir, "p.json", "[]");
    let o = srotax(
        &["eval", "-p", p.to_str().unwrap(), "--ext-json", "canonical"],
        r#"{"a": 1, "b": 2.5}"#,
    );
    assert_code(&o, 0);
    assert_eq!(
        lines(&o),
        [r#"{"a":{"$numberInt":"1"},"b":{"$numberDouble":"2.5"}}"#]
    );
}

#[test]
fn invalid_pipeline_exits_2_and_names_the_path() {
    let dir = scratch("invalid");
    let p = write(
        &dir,
        "p.json",
        r#"[{"$match": {}}, {"$group": {"_id": "$c", "total": {"$summ": "$x"}}}]"#,
    );
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], ORDERS);
    assert_code(&o, 2);
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert!(
        err.starts_with("error: invalid pipeline: pipeline[1].$group.total: "),
        "{err}"
    );
    assert!(err.contains("$summ"), "{err}");

    let p = write(&dir, "unknown.json", r#"[{"$mtch": {}}]"#);
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], "");
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("pipeline[0].$mtch: unknown stage '$mtch'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn pipeline_that_is_not_json_exits_2() {
    let dir = scratch("notjson");
    let p = write(&dir, "p.json", r#"[{"$match": "#);
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], "");
    assert_code(&o, 2);
    assert!(
        stderr(&o).starts_with("error: invalid pipeline: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn runtime_error_affects_only_that_document() {
    let dir = scratch("runtime");
    let p = write(
        &dir,
        "p.json",
        r#"[{"$match": {}}, {"$set": {"ratio": {"$divide": [10, "$d"]}, "n": {"$toInt": "$s"}}}]"#,
    );
    let input = r#"{"id": 1, "d": 4, "s": "7"}
{"id": 2, "d": 0, "s": "7"}
{"id": 3, "d": 5, "s": "abc"}
{"id": 4, "d": 2, "s": "1"}
"#;
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], input);
    assert_code(&o, 3);
    assert_eq!(
        lines(&o),
        [
            r#"{"id":1,"d":4,"s":"7","ratio":2.5,"n":7}"#,
            r#"{"id":4,"d":2,"s":"1","ratio":5.0,"n":1}"#,
        ]
    );
    let err = stderr(&o);
    assert!(
        err.contains("error: input document 2 (line 2): stage 2 ($set) at pipeline[1]: $divide"),
        "{err}"
    );
    assert!(
        err.contains("error: input document 3 (line 3): stage 2 ($set) at pipeline[1]: $toInt"),
        "{err}"
    );
    assert!(!err.contains("input document 1 "), "{err}");
    assert!(!err.contains("input document 4 "), "{err}");
}

#[test]
fn malformed_line_is_reported_with_its_line_number_and_skipped() {
    let dir = scratch("malformed");
    let p = write(&dir, "p.json", "[]");
    let input = "{\"a\": 1}\n\n{\"a\": \n[1, 2]\n{\"a\": 4}\r\n";
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], input);
    assert_code(&o, 3);
    assert_eq!(lines(&o), [r#"{"a":1}"#, r#"{"a":4}"#]);
    let err = stderr(&o);
    assert!(err.contains("error: input line 3: invalid JSON"), "{err}");
    assert!(err.contains("error: input line 4: "), "{err}");
    assert!(err.contains("2 of 4 input document(s) failed"), "{err}");
}

#[test]
fn missing_input_file_is_an_io_error() {
    let dir = scratch("io");
    let p = write(&dir, "p.json", "[]");
    let missing = dir.join("missing.jsonl");
    let o = srotax(
        &[
            "eval",
            "-p",
            p.to_str().unwrap(),
            "-i",
            missing.to_str().unwrap(),
        ],
        "",
    );
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("cannot open input file"),
        "{}",
        stderr(&o)
    );

    let o = srotax(&["validate", missing.to_str().unwrap()], "");
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("cannot read pipeline file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn empty_input_gives_empty_output() {
    let dir = scratch("empty");
    let p = write(&dir, "p.json", PAID_PIPELINE);
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], "\n  \n");
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "");
}

#[test]
fn validate_ok_lists_the_stages() {
    let dir = scratch("validate");
    let p = write(
        &dir,
        "p.json",
        r#"[{"$match": {"status": "PAID"}}, {"$group": {"_id": "$c", "n": {"$count": {}}}}, {"$sort": {"n": -1}}]"#,
    );
    let o = srotax(&["validate", p.to_str().unwrap()], "");
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "ok: 3 stages ($match, $group, $sort)\n");

    let p = write(&dir, "one.json", r#"[{"$limit": 5}]"#);
    let o = srotax(&["validate", p.to_str().unwrap()], "");
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "ok: 1 stage ($limit)\n");
}

#[test]
fn validate_failure_exits_2() {
    let dir = scratch("validate-bad");
    let p = write(&dir, "p.json", r#"[{"$limit": 5}, {"$skip": -1}]"#);
    let o = srotax(&["validate", p.to_str().unwrap()], "");
    assert_code(&o, 2);
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).starts_with("error: invalid pipeline: pipeline[1].$skip"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn failure_after_a_blocking_stage_is_reported_at_end_of_input() {
    let dir = scratch("at-end");
    let p = write(
        &dir,
        "p.json",
        r#"[{"$group": {"_id": "$k", "total": {"$sum": "$v"}}},
            {"$sort": {"_id": 1}},
            {"$set": {"inverse": {"$divide": [1, "$total"]}}}]"#,
    );
    let input = "{\"k\": \"a\", \"v\": 2}\n{\"k\": \"b\", \"v\": 0}\n{\"k\": \"a\", \"v\": 2}\n";
    let o = srotax(&["eval", "-p", p.to_str().unwrap()], input);
    assert_code(&o, 3);
    assert_eq!(lines(&o), [r#"{"_id":"a","total":4,"inverse":0.25}"#]);
    let err = stderr(&o);
    assert!(
        err.contains("error: at end of input: stage 3 ($set) at pipeline[2]: $divide"),
        "{err}"
    );
    assert!(
        err.contains(
            "0 of 3 input document(s) failed, 1 document(s) failed at the end of the input"
        ),
        "{err}"
    );
}

#[test]
fn truncated_json_array_keeps_the_documents_before_the_error() {
    let dir = scratch("array-truncated");
    let p = write(&dir, "p.json", "[]");
    let o = srotax(
        &["eval", "-p", p.to_str().unwrap()],
        r#"[{"a": 1}, {"a": 2}, {"a": "#,
    );
    assert_code(&o, 3);
    assert_eq!(lines(&o), [r#"{"a":1}"#, r#"{"a":2}"#]);
    assert!(
        stderr(&o).contains("error: input is not a valid JSON array (after document 2)"),
        "{}",
        stderr(&o)
    );
}
