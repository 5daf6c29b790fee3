//! Data-driven conformance corpus: every `*.json` file under `tests/conformance/` at the
//! workspace root holds cases of `input` documents, a `pipeline` and the `expected`
//! output (type-exact comparison), or an expected `compileError` / `runtimeError`.
//!
//! Case fields:
//! - `name`: unique within the file.
//! - `input`: array of documents (Extended JSON accepted).
//! - `pipeline`: array of stages.
//! - `expected`: array of output documents, compared type-exactly and in order unless
//!   `"unordered": true`.
//! - `compileError`: substring expected in the compile error (path and message).
//! - `runtimeError`: substring expected in some per-document error; `expected` then
//!   lists the outputs of the documents that did not fail.
//!
//! `CONFORMANCE_FILTER=substring` runs only the cases whose `file::name` contains it.

use std::path::{Path, PathBuf};
use stream_core::value::{parse_document_fields, parse_value, Document, ExtJsonMode, Value};
use stream_core::Pipeline;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
}

fn docs_of(v: Option<&Value>, what: &str) -> Result<Vec<Document>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|d| match d {
                Value::Document(d) => Ok(d.clone()),
                other => Err(format!(
                    "{what}: expected documents, found {}",
                    other.type_name()
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "{what}: expected an array, found {}",
            other.type_name()
        )),
    }
}

fn same_docs(actual: &[Document], expected: &[Document], unordered: bool) -> bool {
    if actual.len() != expected.len() {
        return false;
    }
    if !unordered {
        return actual.iter().zip(expected).all(|(a, e)| a.identical(e));
    }
    let mut used = vec![false; actual.len()];
    expected.iter().all(|e| {
        match actual
            .iter()
            .enumerate()
            .find(|(i, a)| !used[*i] && a.identical(e))
        {
            Some((i, _)) => {
                used[i] = true;
                true
            }
            None => false,
        }
    })
}

fn show(docs: &[Document]) -> String {
    let parts: Vec<String> = docs.iter().map(|d| d.to_json()).collect();
    format!("[{}]", parts.join(", "))
}

/// Runs one case; `Err` describes the mismatch.
fn run_case(case: &Document) -> Result<(), String> {
    let pipeline_spec = case.get("pipeline").ok_or("case has no 'pipeline'")?;
    let input = docs_of(case.get("input"), "input")?;
    let expected = docs_of(case.get("expected"), "expected")?;
    let unordered = case
        .get("unordered")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let pipeline = match Pipeline::compile(pipeline_spec) {
        Ok(p) => p,
        Err(e) => {
            return match case.get("compileError").and_then(Value::as_str) {
                Some(want) if e.to_string().contains(want) => Ok(()),
                Some(want) => Err(format!(
                    "compile error {:?} does not contain {want:?}",
                    e.to_string()
                )),
                None => Err(format!("unexpected compile error: {e}")),
            }
        }
    };
    if let Some(want) = case.get("compileError") {
        return Err(format!(
            "expected compile error {want}, but the pipeline compiled"
        ));
    }
    let result = pipeline.run(input);
    let errors: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
    match case.get("runtimeError").and_then(Value::as_str) {
        Some(want) if !errors.iter().any(|e| e.contains(want)) => {
            return Err(format!(
                "expected a runtime error containing {want:?}, got {errors:?}"
            ));
        }
        None if !errors.is_empty() => return Err(format!("unexpected runtime errors: {errors:?}")),
        _ => {}
    }
    if !same_docs(&result.documents, &expected, unordered) {
        return Err(format!(
            "output mismatch\n      expected: {}\n      actual:   {}",
            show(&expected),
            show(&result.documents)
        ));
    }
    check_projection_pushdown(&pipeline, case, &result)?;
    check_borrowed_run(&pipeline, case, &result)
}

/// Evaluating borrowed documents (`Pipeline::run_ref`) must give the same result as the
/// owned path.
fn check_borrowed_run(
    pipeline: &Pipeline,
    case: &Document,
    owned: &stream_core::BatchResult,
) -> Result<(), String> {
    let input = docs_of(case.get("input"), "input")?;
    let result = pipeline.run_ref(&input);
    let same_errors = result.errors.len() == owned.errors.len()
        && result
            .errors
            .iter()
            .zip(&owned.errors)
            .all(|(a, b)| a.to_string() == b.to_string());
    if !same_errors || !same_docs(&result.documents, &owned.documents, false) {
        return Err(format!(
            "run_ref changed the result\n      owned:    {} {:?}\n      borrowed: {} {:?}",
            show(&owned.documents),
            owned.errors,
            show(&result.documents),
            result.errors
        ));
    }
    Ok(())
}

/// Parsing only `Pipeline::input_fields` must not change any result.
fn check_projection_pushdown(
    pipeline: &Pipeline,
    case: &Document,
    full: &stream_core::BatchResult,
) -> Result<(), String> {
    let Some(fields) = pipeline.input_fields() else {
        return Ok(());
    };
    let input = docs_of(case.get("input"), "input")?;
    let projected = input
        .iter()
        .map(|d| parse_document_fields(&d.to_json_mode(ExtJsonMode::Canonical), fields))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("projected parse failed: {e}"))?;
    let result = pipeline.run(projected);
    if result.errors.len() != full.errors.len()
        || !same_docs(&result.documents, &full.documents, false)
    {
        return Err(format!(
            "projection pushdown to {fields:?} changed the result\n      full:      {} {:?}\n      projected: {} {:?}",
            show(&full.documents),
            full.errors,
            show(&result.documents),
            result.errors
        ));
    }
    Ok(())
}

struct Outcome {
    total: usize,
    failures: Vec<String>,
}

fn run_corpus() -> Outcome {
    let mut files = Vec::new();
    collect_files(&corpus_dir(), &mut files);
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let mut outcome = Outcome {
        total: 0,
        failures: Vec::new(),
    };
    for file in files {
        let rel = file
            .strip_prefix(corpus_dir())
            .unwrap_or(&file)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&file).expect("read corpus file");
        let parsed = match parse_value(&text) {
            Ok(v) => v,
            Err(e) => {
                outcome.failures.push(format!("{rel}: not valid JSON: {e}"));
                continue;
            }
        };
        let cases = match parsed
            .as_document()
            .and_then(|d| d.get("cases"))
            .and_then(Value::as_array)
        {
            Some(c) => c.to_vec(),
            None => {
                outcome
                    .failures
                    .push(format!("{rel}: expected {{\"cases\": [...]}}"));
                continue;
            }
        };
        for (i, case) in cases.iter().enumerate() {
            let Some(case) = case.as_document() else {
                outcome
                    .failures
                    .push(format!("{rel}[{i}]: a case must be an object"));
                continue;
            };
            let name = case
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("<unnamed>");
            let id = format!("{rel}::{name}");
            if filter.as_deref().is_some_and(|f| !id.contains(f)) {
                continue;
            }
            outcome.total += 1;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case)));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => outcome.failures.push(format!("{id}: {msg}")),
                Err(_) => outcome.failures.push(format!("{id}: panicked")),
            }
        }
    }
    outcome
}

#[test]
fn conformance_corpus() {
    let outcome = run_corpus();
    for f in &outcome.failures {
        eprintln!("FAIL {f}");
    }
    eprintln!(
        "conformance: {} cases, {} failed",
        outcome.total,
        outcome.failures.len()
    );
    assert!(outcome.total > 0, "no conformance cases ran");
    assert!(
        outcome.failures.is_empty(),
        "{} conformance case(s) failed",
        outcome.failures.len()
    );
}
