//! The reference docs cover exactly what the engine registers: every stage of
//! `stream_core::stages::stage_names()` has a row in `docs/stages.md`, every operator of
//! `stream_core::expr::operator_names()` a row in `docs/expressions.md`, and no row names
//! something that does not exist.

use std::collections::BTreeSet;
use std::path::Path;
use stream_core::expr::{is_operator, operator_names};
use stream_core::stages::accumulators::is_accumulator;
use stream_core::stages::{is_stage, stage_names};

fn read_doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The `$names` in backticks in the first cell of every table row (`` | `$match` | ... ``).
fn table_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix('|') else {
            continue;
        };
        let first_cell = rest.split('|').next().unwrap_or("");
        for (i, part) in first_cell.split('`').enumerate() {
            // Odd parts are inside backticks.
            if i % 2 == 1 && part.starts_with('$') && part.len() > 1 {
                names.insert(part.to_string());
            }
        }
    }
    names
}

#[test]
fn every_stage_is_documented() {
    let documented = table_names(&read_doc("stages.md"));
    let missing: Vec<&str> = stage_names()
        .into_iter()
        .filter(|s| !documented.contains(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/stages.md has no table row for these stages: {missing:?}"
    );
    let unknown: Vec<&String> = documented.iter().filter(|s| !is_stage(s)).collect();
    assert!(
        unknown.is_empty(),
        "docs/stages.md has rows for stages that do not exist: {unknown:?}"
    );
}

#[test]
fn every_operator_is_documented() {
    let documented = table_names(&read_doc("expressions.md"));
    let missing: Vec<&str> = operator_names()
        .into_iter()
        .filter(|s| !documented.contains(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/expressions.md has no table row for these operators: {missing:?}"
    );
    // Accumulators have their own table in the same file.
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|s| !is_operator(s) && !is_accumulator(s))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/expressions.md has rows for operators that do not exist: {unknown:?}"
    );
}
