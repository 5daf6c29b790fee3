//! The fluent API compiles to the same operators as the JSON stages and gives the same
//! results; closure operators and keyed state with TTL.

use serde_json::json;
use std::time::Duration;
use stream_core::fluent::{Agg, DataStream, Window};
use stream_core::value::{parse_document, parse_value, Document, Value};
use stream_core::Pipeline;

fn orders() -> Vec<Document> {
    [
        r#"{"status": "PAID", "region": "EU", "amount": 5, "t": 1000}"#,
        r#"{"status": "PAID", "region": "US", "amount": 7, "t": 2000}"#,
        r#"{"status": "NEW", "region": "EU", "amount": 9, "t": 3000}"#,
        r#"{"status": "PAID", "region": "EU", "amount": 11, "t": 61000}"#,
        r#"{"status": "PAID", "region": "EU", "amount": 2, "t": 59000}"#,
    ]
    .iter()
    .map(|s| parse_document(s).unwrap())
    .collect()
}

fn json(docs: &[Document]) -> Vec<String> {
    docs.iter().map(Document::to_json).collect()
}

#[test]
fn a_windowed_keyed_aggregate_is_the_json_window_stage() {
    let fluent = DataStream::new()
        .filter(json!({"status": "PAID"}))
        .unwrap()
        .key_by("$region")
        .window(Window::tumbling(Duration::from_secs(60)).time_field("$t"))
        .aggregate(&[
            Agg::count("n"),
            Agg::sum("total", "$amount"),
            Agg::average("avg", "$amount"),
            Agg::min("min", "$amount"),
            Agg::max("max", "$amount"),
        ])
        .unwrap();
    let expected_json = parse_value(
        r#"[{"$match": {"status": "PAID"}},
            {"$tumblingWindow": {"interval": {"size": 60000, "unit": "ms"}, "timeField": "$t",
              "pipeline": [{"$group": {"_id": "$region", "n": {"$count": {}}, "total": {"$sum": "$amount"},
                 "avg": {"$avg": "$amount"}, "min": {"$min": "$amount"}, "max": {"$max": "$amount"}}}]}}]"#,
    )
    .unwrap();
    assert_eq!(fluent.to_json().unwrap().to_json(), expected_json.to_json());
    let from_json = Pipeline::compile(&expected_json).unwrap();
    let built = fluent.build();
    assert_eq!(built.stage_names(), from_json.stage_names());
    assert_eq!(built.input_fields(), from_json.input_fields());
    let (a, b) = (built.run(orders()), from_json.run(orders()));
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    assert_eq!(json(&a.documents), json(&b.documents));
    assert_eq!(
        a.documents.len(),
        3,
        "EU and US in [0, 60 s), EU in [60 s, 120 s)"
    );
}

#[test]
fn group_by_and_sliding_and_session_windows_compile_to_their_stages() {
    let s = DataStream::new()
        .group_by("$region", &[Agg::sum("total", "$amount")])
        .unwrap();
    assert_eq!(s.build().stage_names(), vec!["$group"]);
    let s = DataStream::new()
        .window(
            Window::sliding(Duration::from_secs(10), Duration::from_secs(5))
                .allowed_lateness(Duration::from_secs(1)),
        )
        .aggregate(&[Agg::count("n")])
        .unwrap();
    assert_eq!(s.build().stage_names(), vec!["$hoppingWindow"]);
    let s = DataStream::new()
        .key_by("$region")
        .window(Window::session(Duration::from_secs(30)).late_to_side_output())
        .aggregate(&[Agg::count("n")])
        .unwrap();
    let text = s.to_json().unwrap().to_json();
    assert!(text.contains(r#""partitionBy":"$region""#), "{text}");
    assert!(text.contains(r#""lateData":"sideOutput""#), "{text}");
}

#[test]
fn closures_map_filter_and_flat_map() {
    let p = DataStream::new()
        .filter_fn(|d| d.get("status").and_then(Value::as_str) == Some("PAID"))
        .map(|mut d| {
            d.remove("t");
            d
        })
        .flat_map(|d| vec![d.clone(), d])
        .build();
    let out = p.run(orders()).documents;
    assert_eq!(out.len(), 8);
    assert!(out.iter().all(|d| d.get("t").is_none()));
}

#[test]
fn keyed_reduce_keeps_state_per_key_and_checkpoints_it() {
    let p = DataStream::new()
        .key_by("$region")
        .reduce(|acc, d| {
            let sum = acc.get("amount").and_then(Value::as_f64).unwrap_or(0.0)
                + d.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
            let mut next = d;
            next.insert("amount", Value::Double(sum));
            next
        })
        .unwrap()
        .build();
    let mut run = p.start();
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let input = orders();
    for d in input[..3].iter().cloned() {
        run.push(d, &mut out, &mut errors);
    }
    assert_eq!(run.stage_stats()[0].1.state_entries, 2);
    let state = run.checkpoint_state().unwrap().unwrap();
    let mut resumed = p.start();
    resumed.restore_state(&state).unwrap();
    resumed.push(input[3].clone(), &mut out, &mut errors);
    assert!(errors.is_empty());
    let amounts: Vec<String> = out
        .iter()
        .map(|d| d.get("amount").unwrap().to_json())
        .collect();
    assert_eq!(amounts, vec!["5", "7", "14.0", "25.0"]);
}

#[test]
fn keyed_state_with_ttl_expires_keys_that_never_come_back() {
    let p = DataStream::new()
        .key_by("$region")
        .ttl(Duration::from_millis(50))
        .process(|state, doc, out| {
            state.update(|v| {
                Some(Value::Int64(
                    v.and_then(Value::as_i64_exact).unwrap_or(0) + 1,
                ))
            });
            out.push(doc);
            Ok(())
        })
        .unwrap()
        .build();
    let mut run = p.start();
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for d in orders() {
        run.push(d, &mut out, &mut errors);
    }
    assert_eq!(run.stage_stats()[0].1.state_entries, 2);
    std::thread::sleep(Duration::from_millis(60));
    // Processing time advancing (the runtime does it every micro-batch) removes them.
    let now = chrono_now();
    run.advance_processing_time(now, &mut out, &mut errors);
    assert_eq!(run.stage_stats()[0].1.state_entries, 0);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
