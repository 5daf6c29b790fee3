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

fn group_by_k() -> &'static str {
    r#"[{"$group": {"_id": "$k", "n": {"$count": {}}, "sum": {"$sum": "$v"}}}]"#
}

fn tumbling(extra: &str) -> Pipeline {
    Pipeline::compile_json(&format!(
        r#"[{{"$tumblingWindow": {{"interval": {{"size": 10, "unit": "second"}}, {extra} "pipeline": {}}}}}]"#,
        group_by_k()
    ))
    .unwrap()
}

#[test]
fn windows_emit_when_the_watermark_passes_their_end_and_late_events_are_dropped() {
    let p = tumbling("");
    let mut run = p.start();
    let out = drive(
        &mut run,
        &[
            Ok((1_000, r#"{"k": "a", "v": 1}"#)),
            Ok((5_000, r#"{"k": "a", "v": 2}"#)),
            Ok((12_000, r#"{"k": "a", "v": 3}"#)),
            Err(9_999),
        ],
    );
    assert!(out.is_empty(), "the first window ends at 10 s: {out:?}");
    let out = drive(
        &mut run,
        &[
            Err(10_000),
            // Late: its window [0 s, 10 s) closed at watermark 10 s.
            Ok((8_000, r#"{"k": "a", "v": 4}"#)),
            Ok((15_000, r#"{"k": "a", "v": 5}"#)),
            // Out of order but on time: [10 s, 20 s) is still open.
            Ok((11_000, r#"{"k": "a", "v": 6}"#)),
            Err(20_000),
        ],
    );
    assert_eq!(
        out,
        vec![
            format!(r#"{{"_id":"a","n":2,"sum":3,{}}}"#, meta(0, 10_000)),
            format!(r#"{{"_id":"a","n":3,"sum":14,{}}}"#, meta(10_000, 20_000)),
        ]
    );
    let stats = run.stage_stats();
    assert_eq!(stats[0].1.late_events, 1);
    assert_eq!(stats[0].1.state_entries, 0, "emitted windows are dropped");
}

#[test]
fn allowed_lateness_re_emits_the_updated_window_then_drops() {
    let p = tumbling(r#""allowedLateness": {"size": 5, "unit": "second"},"#);
    let mut run = p.start();
    let out = drive(
        &mut run,
        &[
            Ok((1_000, r#"{"k": "a", "v": 1}"#)),
            Err(10_000),
            Ok((8_000, r#"{"k": "a", "v": 2}"#)),
            Err(15_000),
            Ok((9_000, r#"{"k": "a", "v": 4}"#)),
        ],
    );
    assert_eq!(
        out,
        vec![
            format!(r#"{{"_id":"a","n":1,"sum":1,{}}}"#, meta(0, 10_000)),
            format!(r#"{{"_id":"a","n":2,"sum":3,{}}}"#, meta(0, 10_000)),
        ]
    );
    assert_eq!(run.stage_stats()[0].1.late_events, 1);
}

#[test]
fn late_events_go_to_the_side_output_when_asked() {
    let p = tumbling(r#""lateData": "sideOutput","#);
    let mut run = p.start();
    drive(
        &mut run,
        &[
            Ok((12_000, r#"{"k": "a", "v": 1}"#)),
            Err(10_000),
            Ok((3_000, r#"{"k": "late", "v": 9}"#)),
        ],
    );
    let mut late = Vec::new();
    run.take_late(&mut late);
    assert_eq!(json(&late), vec![r#"{"k":"late","v":9}"#.to_string()]);
}

#[test]
fn partition_by_keeps_one_window_per_key_and_offset_shifts_boundaries() {
    let p = Pipeline::compile_json(
        r#"[{"$tumblingWindow": {"interval": {"size": 10, "unit": "second"}, "offset": {"size": 2, "unit": "second"},
            "partitionBy": "$k", "timeField": "$t",
            "pipeline": [{"$group": {"_id": null, "n": {"$count": {}}}}, {"$project": {"_id": 0, "n": 1}}]}}]"#,
    )
    .unwrap();
    let r = p.run(docs(&[
        r#"{"t": 1999, "k": "a"}"#,
        r#"{"t": 2000, "k": "a"}"#,
        r#"{"t": 2500, "k": "b"}"#,
        r#"{"t": 11999, "k": "a"}"#,
    ]));
    assert_eq!(
        json(&r.documents),
        vec![
            format!(r#"{{"n":1,{}}}"#, meta(-8_000, 2_000)),
            format!(r#"{{"n":2,{}}}"#, meta(2_000, 12_000)),
            format!(r#"{{"n":1,{}}}"#, meta(2_000, 12_000)),
        ]
    );
}

#[test]
fn hopping_windows_overlap() {
    let p = Pipeline::compile_json(
        r#"[{"$hoppingWindow": {"interval": {"size": 10, "unit": "second"}, "hopSize": {"size": 5, "unit": "second"},
            "timeField": "$t", "pipeline": [{"$group": {"_id": null, "ts": {"$push": "$t"}}}]}}]"#,
    )
    .unwrap();
    let r = p.run(docs(&[r#"{"t": 7000}"#, r#"{"t": 12000}"#]));
    assert_eq!(
        json(&r.documents),
        vec![
            format!(r#"{{"_id":null,"ts":[7000],{}}}"#, meta(0, 10_000)),
            format!(
                r#"{{"_id":null,"ts":[7000,12000],{}}}"#,
                meta(5_000, 15_000)
            ),
            format!(r#"{{"_id":null,"ts":[12000],{}}}"#, meta(10_000, 20_000)),
        ]
    );
}

#[test]
fn sessions_merge_when_an_event_bridges_them() {
    let p = Pipeline::compile_json(
        r#"[{"$sessionWindow": {"gap": {"size": 5, "unit": "second"}, "partitionBy": "$k", "timeField": "$t",
            "pipeline": [{"$group": {"_id": "$k", "ts": {"$push": "$t"}}}]}}]"#,
    )
    .unwrap();
    let r = p.run(docs(&[
        r#"{"t": 0, "k": "a"}"#,
        r#"{"t": 3000, "k": "a"}"#,
        r#"{"t": 1000, "k": "b"}"#,
        r#"{"t": 20000, "k": "a"}"#,
        r#"{"t": 9000, "k": "a"}"#,
        // Bridges [0 s, 8 s) and [9 s, 14 s).
        r#"{"t": 6000, "k": "a"}"#,
    ]));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        json(&r.documents),
        vec![
            format!(r#"{{"_id":"b","ts":[1000],{}}}"#, meta(1_000, 6_000)),
            format!(
                r#"{{"_id":"a","ts":[0,3000,6000,9000],{}}}"#,
                meta(0, 14_000)
            ),
            format!(r#"{{"_id":"a","ts":[20000],{}}}"#, meta(20_000, 25_000)),
        ]
    );
}

#[test]
fn window_state_survives_a_checkpoint_mid_window() {
    let p = tumbling(r#""allowedLateness": {"size": 5, "unit": "second"},"#);
    let steps_a: &[Result<(i64, &str), i64>] = &[
        Ok((1_000, r#"{"k": "a", "v": 1}"#)),
        Ok((2_000, r#"{"k": "b", "v": 2}"#)),
        Ok((11_000, r#"{"k": "a", "v": 3}"#)),
        Err(10_000),
    ];
    let steps_b: &[Result<(i64, &str), i64>] = &[
        Ok((9_000, r#"{"k": "b", "v": 4}"#)),
        Ok((13_000, r#"{"k": "a", "v": 5}"#)),
        Err(30_000),
    ];
    let mut whole = p.start();
    let mut expected = drive(&mut whole, steps_a);
    expected.extend(drive(&mut whole, steps_b));

    let mut first = p.start();
    let mut got = drive(&mut first, steps_a);
    let state = first
        .checkpoint_state()
        .unwrap()
        .expect("windows checkpoint");
    let mut second = p.start();
    second.restore_state(&state).unwrap();
    got.extend(drive(&mut second, steps_b));
    assert_eq!(got, expected);
    // [0 s, 10 s) on time (a, b), again after b's late update (a, b), then [10 s, 20 s).
    assert_eq!(expected.len(), 5, "{expected:?}");
}

#[test]
fn invalid_window_specs_name_their_path() {
    let err = |spec: &str| Pipeline::compile_json(spec).unwrap_err().to_string();
    let e = err(
        r#"[{"$tumblingWindow": {"interval": {"size": 0, "unit": "second"}, "pipeline": []}}]"#,
    );
    assert!(
        e.contains("pipeline[0].$tumblingWindow.interval.size"),
        "{e}"
    );
    let e = err(
        r#"[{"$hoppingWindow": {"interval": {"size": 1, "unit": "second"}, "hopSize": {"size": 2, "unit": "second"}, "pipeline": []}}]"#,
    );
    assert!(e.contains("hopSize must not exceed"), "{e}");
    let e =
        err(r#"[{"$sessionWindow": {"gap": {"size": 1, "unit": "fortnight"}, "pipeline": []}}]"#);
    assert!(e.contains("gap.unit"), "{e}");
    let e = err(
        r#"[{"$tumblingWindow": {"interval": {"size": 1, "unit": "second"}, "pipeline": [{"$sessionWindow": {}}]}}]"#,
    );
    assert!(e.contains("cannot be nested"), "{e}");
}

#[test]
fn batch_mode_without_a_time_field_reports_each_document() {
    let p = tumbling("");
    let r = p.run(docs(&[r#"{"k": "a"}"#]));
    assert_eq!(r.errors.len(), 1);
    assert!(
        r.errors[0].to_string().contains("no event time"),
        "{}",
        r.errors[0]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn windows_of(out: &[Document]) -> Vec<(i64, i64, Vec<i64>)> {
        out.iter()
            .map(|d| {
                let w = d
                    .get_path("_stream_meta.window")
                    .unwrap()
                    .as_document()
                    .unwrap();
                let ms = |k: &str| match w.get(k) {
                    Some(Value::Date(ms)) => *ms,
                    other => panic!("{other:?}"),
                };
                let ids = d.get("ids").unwrap().as_array().unwrap();
                let ids = ids.iter().map(|v| v.as_i64_exact().unwrap()).collect();
                (ms("start"), ms("end"), ids)
            })
            .collect()
    }

    fn events(times: &[i64]) -> Vec<Document> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                parse_document(&format!(r#"{{"id": {i}, "t": {t}, "k": {}}}"#, i % 3)).unwrap()
            })
            .collect()
    }

    proptest! {
        #[test]
        fn each_event_lands_in_exactly_one_tumbling_window(
            times in prop::collection::vec(-50_000i64..50_000, 1..60),
            size in 1i64..20,
        ) {
            let p = Pipeline::compile_json(&format!(
                r#"[{{"$tumblingWindow": {{"interval": {{"size": {size}, "unit": "second"}}, "timeField": "$t",
                    "pipeline": [{{"$group": {{"_id": null, "ids": {{"$push": "$id"}}}}}}]}}}}]"#
            )).unwrap();
            let r = p.run(events(&times));
            prop_assert!(r.errors.is_empty());
            let mut seen = vec![0; times.len()];
            for (start, end, ids) in windows_of(&r.documents) {
                prop_assert_eq!(end - start, size * 1000);
                prop_assert_eq!(start.rem_euclid(size * 1000), 0);
                for id in ids {
                    let t = times[id as usize];
                    prop_assert!(start <= t && t < end);
                    seen[id as usize] += 1;
                }
            }
            prop_assert!(seen.iter().all(|n| *n == 1), "{:?}", seen);
        }

        #[test]
        fn each_event_lands_in_size_over_hop_hopping_windows(
            times in prop::collection::vec(-50_000i64..50_000, 1..40),
            hop in 1i64..5,
            factor in 1i64..4,
        ) {
            let size = hop * factor;
            let p = Pipeline::compile_json(&format!(
                r#"[{{"$hoppingWindow": {{"interval": {{"size": {size}, "unit": "second"}}, "hopSize": {{"size": {hop}, "unit": "second"}},
                    "timeField": "$t", "pipeline": [{{"$group": {{"_id": null, "ids": {{"$push": "$id"}}}}}}]}}}}]"#
            )).unwrap();
            let r = p.run(events(&times));
            prop_assert!(r.errors.is_empty());
            let mut seen = vec![0; times.len()];
            for (start, end, ids) in windows_of(&r.documents) {
                prop_assert_eq!(end - start, size * 1000);
                prop_assert_eq!(start.rem_euclid(hop * 1000), 0);
                for id in ids {
                    let t = times[id as usize];
                    prop_assert!(start <= t && t < end);
                    seen[id as usize] += 1;
                }
            }
            prop_assert!(seen.iter().all(|n| *n == factor), "{:?}", seen);
        }

        #[test]
        fn sessions_are_the_gap_separated_runs_of_each_key(
            times in prop::collection::vec(0i64..100_000, 1..50),
            gap in 1i64..10,
        ) {
            let p = Pipeline::compile_json(&format!(
                r#"[{{"$sessionWindow": {{"gap": {{"size": {gap}, "unit": "second"}}, "partitionBy": "$k", "timeField": "$t",
                    "pipeline": [{{"$group": {{"_id": "$k", "ids": {{"$push": "$id"}}}}}}]}}}}]"#
            )).unwrap();
            let r = p.run(events(&times));
            prop_assert!(r.errors.is_empty());
            // Expected: per key, sort the times and cut where the next is more than a gap away.
            let gap = gap * 1000;
            let mut by_key: BTreeMap<usize, Vec<(i64, i64)>> = BTreeMap::new();
            for (i, t) in times.iter().enumerate() {
                by_key.entry(i % 3).or_default().push((*t, i as i64));
            }
            let mut expected = Vec::new();
            for (_, mut evs) in by_key {
                evs.sort();
                let mut current: Vec<(i64, i64)> = Vec::new();
                for e in evs {
                    if current.last().is_some_and(|(t, _)| e.0 > t + gap) {
                        expected.push(std::mem::take(&mut current));
                    }
                    current.push(e);
                }
                expected.push(current);
            }
            let mut expected: Vec<(i64, i64, Vec<i64>)> = expected
                .into_iter()
                .map(|s| {
                    let start = s[0].0;
                    let end = s[s.len() - 1].0 + gap;
                    let mut ids: Vec<i64> = s.iter().map(|e| e.1).collect();
                    ids.sort();
                    (start, end, ids)
                })
                .collect();
            expected.sort();
            let mut got: Vec<(i64, i64, Vec<i64>)> = windows_of(&r.documents)
                .into_iter()
                .map(|(s, e, mut ids)| { ids.sort(); (s, e, ids) })
                .collect();
            got.sort();
            prop_assert_eq!(got, expected);
        }
    }
}
