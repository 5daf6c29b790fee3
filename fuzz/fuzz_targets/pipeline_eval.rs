//! Compiles arbitrary bytes as a pipeline (first line) and runs it over a fixed set of
//! documents with awkward values plus any documents given on the following lines.
//! Evaluation may fail per document, but must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stream_core::expr::Env;
use stream_core::value::{parse_document, parse_value};
use stream_core::Pipeline;

const DOCS: &[&str] = &[
    r#"{"_id": 1, "a": 1, "b": 2.5, "s": "héllo wörld", "d": {"$date": "2024-02-29T23:59:59.999Z"}, "arr": [1, "x", null, [2, 3], {"k": 1}], "o": {"x": {"y": [1, 2]}}}"#,
    r#"{"_id": 2, "a": 2147483647, "b": {"$numberLong": "9223372036854775807"}, "s": "", "d": {"$date": {"$numberLong": "-62135596800000"}}, "arr": [], "o": null}"#,
    r#"{"_id": 3, "a": -2147483648, "b": {"$numberLong": "-9223372036854775808"}, "s": "𝄞a\u0000", "n": {"$numberDouble": "NaN"}, "i": {"$numberDouble": "-Infinity"}}"#,
    r#"{"_id": 4, "a": {"$numberDecimal": "9.999999999999999999999999999999999E+6144"}, "b": {"$numberDecimal": "-0"}, "s": "ABC", "oid": {"$oid": "65f1c2d3e4a5b6c7d8e9f001"}, "t": {"$timestamp": {"t": 1, "i": 2}}}"#,
    r#"{"_id": 5, "a": null, "arr": [{"a": 1}, {"a": [2, 3]}, {"b": null}], "r": {"$regularExpression": {"pattern": "^a", "options": "i"}}, "bin": {"$binary": {"base64": "AAEC", "subType": "00"}}}"#,
    r#"{"_id": 6, "a": 0, "b": -0.0, "s": "2024-01-01T00:00:00Z", "d": {"$date": "9999-12-31T23:59:59.999Z"}}"#,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let Some(Ok(spec)) = lines.next().map(parse_value) else {
        return;
    };
    let Ok(pipeline) = Pipeline::compile(&spec) else {
        return;
    };
    let env = Env {
        now: 1_709_251_200_000,
        ..Env::default()
    };
    let mut run = pipeline.start_with_env(env);
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let extra = lines.filter_map(|l| parse_document(l).ok());
    for doc in DOCS
        .iter()
        .filter_map(|d| parse_document(d).ok())
        .chain(extra)
    {
        run.push(doc, &mut out, &mut errors);
        out.clear();
    }
    run.finish(&mut out, &mut errors);
    // Writing the results must not panic either.
    for d in &out {
        let _ = d.to_json();
    }
});
