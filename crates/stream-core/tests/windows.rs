//! Window stages against hand-computed results: batch mode (`Pipeline::run`), and a
//! run driven by explicit event times and watermarks (out-of-order and late events).

use stream_core::value::{parse_document, Document, Value};
use stream_core::{Pipeline, PipelineRun};

fn docs(lines: &[&str]) -> Vec<Document> {
    lines.iter().map(|l| parse_document(l).unwrap()).collect()
}

fn json(out: &[Document]) -> Vec<String> {
    out.iter().map(Document::to_json).collect()
}

/// `{"$date": ms}` as the relaxed JSON the outputs use.
fn date(ms: i64) -> String {
    Value::Date(ms).to_json()
}

fn meta(start: i64, end: i64) -> String {
    format!(
        r#""_stream_meta":{{"window":{{"start":{},"end":{}}}}}"#,
        date(start),
        date(end)
    )
}

/// Pushes `(event time, document)` pairs and watermarks (`Err(wm)`) into a run.
fn drive(run: &mut PipelineRun, steps: &[Result<(i64, &str), i64>]) -> Vec<String> {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for step in steps {
        match step {
            Ok((t, doc)) => {
                run.set_event_time(Some(*t));
                run.push(parse_document(doc).unwrap(), &mut out, &mut errors);
            }
            Err(wm) => run.advance_watermark(*wm, &mut out, &mut errors),
        }
    }
    assert!(errors.is_empty(), "{errors:?}");
    json(&out)
}

#[test]
fn tumbling_window_in_batch_mode_uses_the_window_time_field() {
    let p = Pipeline::compile_json(
        r#"[{"$tumblingWindow": {"interval": {"size": 10, "unit": "second"}, "timeField": "$t",
            "pipeline": [{"$group": {"_id": "$k", "n": {"$count": {}}, "sum": {"$sum": "$v"}}}, {"$sort": {"_id": 1}}]}}]"#,
    )
    .unwrap();
    // Out of order on purpose: batch mode takes every event.
    let input = docs(&[
        r#"{"t": 12000, "k": "a", "v": 1}"#,
        r#"{"t": 1000, "k": "b", "v": 2}"#,
        r#"{"t": 9999, "k": "a", "v": 3}"#,
        r#"{"t": 10000, "k": "a", "v": 4}"#,
        r#"{"t": 0, "k": "a", "v": 5}"#,
    ]);
    let r = p.run(input);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        json(&r.documents),
        vec![
            format!(r#"{{"_id":"a","n":2,"sum":8,{}}}"#, meta(0, 10000)),
            format!(r#"{{"_id":"b","n":1,"sum":2,{}}}"#, meta(0, 10000)),
            format!(r#"{{"_id":"a","n":2,"sum":5,{}}}"#, meta(10000, 20000)),
        ]
    );
}
