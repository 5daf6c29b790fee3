//! The streaming docs follow the code: every setting key the definition parser accepts
//! (the `check_keys` lists of `stream-core/src/streaming/definition.rs`) is named in
//! `docs/streaming.md`, every metric emitted by `stream-core/src/streaming/metrics.rs` has
//! a row in `docs/metrics.md` whose second column is its type (with every `MetricsSnapshot` field), and
//! the Rust example of `docs/streaming.md` is exactly the code below, which this test
//! compiles and runs on real files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The string literals of `text` (no escapes are needed for the names we look for).
fn literals(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The literals of every `check_keys(d, path, &[...])` call (not the function itself).
fn check_keys_lists(source: &str) -> Vec<Vec<String>> {
    let mut lists = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("check_keys(") {
        let is_definition = rest[..at].ends_with("fn ");
        rest = &rest[at + "check_keys(".len()..];
        if is_definition {
            continue;
        }
        let start = rest
            .find("&[")
            .expect("check_keys is called with a slice literal");
        let end = start + rest[start..].find(']').expect("the slice literal ends");
        lists.push(literals(&rest[start..end]));
    }
    lists
}

#[test]
fn every_definition_key_is_documented() {
    let source = repo_file("crates/stream-core/src/streaming/definition.rs");
    let lists = check_keys_lists(&source);
    let keys: BTreeSet<String> = lists.into_iter().flatten().collect();
    for expected in [
        "pipelineId",
        "microBatchSize",
        "sourceQueueCapacity",
        "processingGuarantee",
        "maxAttempts",
        "coolDown",
        "tags",
    ] {
        assert!(
            keys.contains(expected),
            "check_keys lists not read correctly: {keys:?}"
        );
    }
    let doc = repo_file("docs/streaming.md");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/streaming.md does not name these definition keys: {missing:?}"
    );
}

/// `(name, type)` of every metric emitted in metrics.rs: literals `"stream...."` on a line
/// with `counter!`, `gauge!`, `histogram!` or `self.add(` (which increments a counter).
fn emitted_metrics(source: &str) -> Vec<(String, &'static str)> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut found = Vec::new();
    for line in code.lines() {
        let kind = if line.contains("counter!(") || line.contains("self.add(") {
            "counter"
        } else if line.contains("gauge!(") {
            "gauge"
        } else if line.contains("histogram!(") {
            "histogram"
        } else {
            continue;
        };
        for name in literals(line)
            .into_iter()
            .filter(|l| l.starts_with("stream."))
        {
            found.push((name, kind));
        }
    }
    found
}

#[test]
fn every_metric_is_documented_with_its_type() {
    let source = repo_file("crates/stream-core/src/streaming/metrics.rs");
    let emitted = emitted_metrics(&source);
    let names: BTreeSet<&str> = emitted.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "stream.records.in",
        "stream.lag",
        "stream.batch.duration",
        "stream.stage.nanos",
    ] {
        assert!(
            names.contains(expected),
            "metric names not read correctly: {names:?}"
        );
    }
    let doc = repo_file("docs/metrics.md");
    let mut problems = Vec::new();
    for (name, kind) in &emitted {
        let row = doc
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("| `{name}`")));
        match row {
            None => problems.push(format!("{name}: no table row")),
            Some(row) if row.split('|').nth(2).map(str::trim) != Some(*kind) => {
                problems.push(format!("{name}: row does not say {kind}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "docs/metrics.md is out of date: {problems:?}"
    );
}

#[test]
fn every_snapshot_field_is_documented() {
    let source = repo_file("crates/stream-core/src/streaming/metrics.rs");
    let start = source
        .find("pub struct MetricsSnapshot {")
        .expect("MetricsSnapshot exists");
    let body = &source[start..start + source[start..].find("\n}").expect("struct ends")];
    let fields: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|name| !name.starts_with("struct"))
        .collect();
    assert!(
        fields.contains(&"records_in") && fields.contains(&"stages"),
        "{fields:?}"
    );
    let doc = repo_file("docs/metrics.md");
    let missing: Vec<&&str> = fields
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md does not describe MetricsSnapshot fields {missing:?}"
    );
}

// DOC-EXAMPLE-START
use std::sync::Arc;
use stream_core::streaming::{
    ConnectorConfig, MetricsListener, MetricsSnapshot, PipelineStatus, StreamingPipelineDefinition,
    StreamingPipelineOrchestrator,
};

/// Prints the counters after every delivered micro-batch.
struct PrintProgress;

impl MetricsListener for PrintProgress {
    fn on_batch(&self, pipeline_id: &str, m: &MetricsSnapshot) {
        eprintln!(
            "{pipeline_id}: {} in, {} out",
            m.records_in, m.documents_out
        );
    }
}

/// Copies the paid orders of `input` (JSON Lines) to `output`, with checkpoints in
/// `state_dir`, and returns how many documents were written.
async fn paid_orders(
    input: &str,
    output: &str,
    state_dir: &str,
) -> Result<u64, Box<dyn std::error::Error>> {
    let def = StreamingPipelineDefinition::builder("paid-orders")
        .source(ConnectorConfig::new("file").option("path", input))
        .pipeline_json(
            r#"[{"$match": {"status": "PAID"}}, {"$project": {"_id": 0, "orderId": 1}}]"#,
        )?
        .sink(ConnectorConfig::new("file").option("path", output))
        .state(ConnectorConfig::new("file").option("path", state_dir))
        .metric_tag("environment", "dev")
        .build()?;

    let mut orchestrator = StreamingPipelineOrchestrator::new(stream_connect::builtin_registry());
    stream_state::register_builtin(&mut orchestrator); // the `file` state store
    orchestrator.add_metrics_listener(Arc::new(PrintProgress));

    // Starts the pipeline on the current tokio runtime; `handle.stop()` (from another
    // task) would stop it gracefully: drain, write a final checkpoint, end.
    let handle = orchestrator.run(def)?;
    let summary = handle
        .await_termination(None)
        .await
        .ok_or("the pipeline is still running")??;
    assert_eq!(summary.status, PipelineStatus::Completed); // the file was read to its end
    Ok(summary.metrics.documents_out)
}
// DOC-EXAMPLE-END

/// The lines between the markers of this file.
fn example_in_test() -> String {
    let me = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docs_streaming.rs"),
    )
    .expect("this test's source is readable");
    let start =
        me.find("// DOC-EXAMPLE-START\n").expect("start marker") + "// DOC-EXAMPLE-START\n".len();
    let end = me.find("// DOC-EXAMPLE-END").expect("end marker");
    me[start..end].trim().to_string()
}

/// The first ```rust block of docs/streaming.md.
fn example_in_doc() -> String {
    let doc = repo_file("docs/streaming.md");
    let start = doc
        .find("```rust\n")
        .expect("docs/streaming.md has a rust example")
        + "```rust\n".len();
    let end = start + doc[start..].find("```").expect("the example ends");
    doc[start..end].trim().to_string()
}

#[test]
fn the_documented_example_is_this_tested_code() {
    assert_eq!(
        example_in_doc(),
        example_in_test(),
        "copy the code between the DOC-EXAMPLE markers of crates/srotax/tests/docs_streaming.rs into the first ```rust block of docs/streaming.md"
    );
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_runs() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("srotax-docs-streaming-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = |name: &str| dir.0.join(name).display().to_string();
    stream_connect::write_orders_jsonl(path("orders.jsonl"), 1_000, 7).unwrap();
    let paid = std::fs::read_to_string(path("orders.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""status":"PAID""#) || l.contains(r#""status": "PAID""#))
        .count() as u64;
    assert!(paid > 0);

    let written = paid_orders(&path("orders.jsonl"), &path("paid.jsonl"), &path("state"))
        .await
        .unwrap();
    assert_eq!(written, paid);
    let lines = std::fs::read_to_string(path("paid.jsonl")).unwrap();
    assert_eq!(lines.lines().count() as u64, paid);
    assert!(
        lines.lines().all(|l| l.starts_with(r#"{"orderId":"#)),
        "{lines}"
    );
    // Run again: the checkpoint says the input was read, so nothing is written twice.
    assert_eq!(
        paid_orders(&path("orders.jsonl"), &path("paid.jsonl"), &path("state"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        std::fs::read_to_string(path("paid.jsonl"))
            .unwrap()
            .lines()
            .count() as u64,
        paid
    );
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn links_between_the_streaming_docs_resolve() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut broken = Vec::new();
    for name in [
        "streaming.md",
        "error-policies.md",
        "metrics.md",
        "operations.md",
    ] {
        let text = repo_file(&format!("docs/{name}"));
        for link in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
            if link.starts_with("http") {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() {
                docs.join(name)
            } else {
                docs.join(file)
            };
            let Ok(target_text) = std::fs::read_to_string(&target) else {
                broken.push(format!("{name}: {link} (no such file)"));
                continue;
            };
            let headings: Vec<String> = target_text
                .lines()
                .filter_map(|l| l.strip_prefix('#'))
                .map(|l| slug(l.trim_start_matches('#')))
                .collect();
            if !anchor.is_empty() && !headings.iter().any(|h| h == anchor) {
                broken.push(format!("{name}: {link} (no such heading)"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:?}");
}
