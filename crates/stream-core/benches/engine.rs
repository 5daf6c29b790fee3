//! Engine benchmarks for `cargo xtask bench`.
//!
//! - `match_project/srotax`: `$match` + `$project` of three fields over 1M documents that
//!   are already parsed (the engine alone, one core), evaluated by reference
//!   (`Pipeline::run_ref`: the caller keeps its documents). Goal: ≥ 5M documents/s.
//!   `match_project/srotax_owned` is the same on owned documents (`Pipeline::run`, which
//!   also pays for dropping the consumed inputs), reported for transparency.
//! - `jsonl_group/*`: JSON Lines text → parse → `$match` / `$group` → JSON text, SrotaX
//!   against a hand-written serde_json typed-struct program doing the same work, measured
//!   in the same run. Goal: SrotaX ≥ 0.7x the baseline on one core. SrotaX parses only
//!   the fields the pipeline reads (`Pipeline::input_fields`) into one reused document,
//!   which the pipeline reads by reference (`PipelineRun::push_ref`).

// Both SrotaX and the serde_json baseline run in this process, so both get the same
// allocator: mimalloc, configured as the `srotax` binary configures it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_t`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// As in `srotax`'s `main`: freed pages return to the OS after a second unused, not
/// after mimalloc v2's default 10 ms.
fn configure_allocator() {
    // SAFETY: sets a documented mimalloc option before the measurements.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
}

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write;
use stream_core::value::{parse_document, parse_document_fields_into, Document, ExtJsonMode};
use stream_core::Pipeline;

const STATUSES: [&str; 4] = ["PAID", "NEW", "CANCELLED", "PAID"];
const REGIONS: [&str; 5] = ["eu-west", "us-east", "us-west", "ap-south", "sa-east"];

/// Deterministic order events as JSON Lines.
fn orders_jsonl(n: usize) -> String {
    let mut s = String::with_capacity(n * 200);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let customer = x % 50_000;
        let status = STATUSES[(x >> 20) as usize % STATUSES.len()];
        let region = REGIONS[(x >> 30) as usize % REGIONS.len()];
        let value = (x >> 40) % 100_000;
        let _ = writeln!(
            s,
            r#"{{"orderId":"o-{i}","customerId":"c-{customer}","status":"{status}","orderValue":{}.{:02},"currency":"EUR","region":"{region}","items":{},"ts":{{"$date":"2026-11-01T10:{:02}:{:02}Z"}}}}"#,
            value / 100,
            value % 100,
            1 + (x >> 50) % 5,
            (i / 60) % 60,
            i % 60
        );
    }
    s
}

fn parse_all(text: &str) -> Vec<Document> {
    text.lines()
        .map(|l| parse_document(l).expect("valid generated JSON"))
        .collect()
}

fn bench_match_project(c: &mut Criterion) {
    configure_allocator();
    const N: usize = 1_000_000;
    let docs = parse_all(&orders_jsonl(N));
    let pipeline = Pipeline::compile_json(
        r#"[{"$match": {"status": "PAID"}}, {"$project": {"customerId": 1, "orderValue": 1, "region": 1}}]"#,
    )
    .expect("valid pipeline");
    let mut g = c.benchmark_group("match_project");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("srotax", |b| {
        b.iter(|| {
            let out = pipeline.run_ref(&docs);
            assert!(out.errors.is_empty());
            out.documents.len()
        })
    });
    g.bench_function("srotax_owned", |b| {
        b.iter_batched(
            || docs.clone(),
            |input| {
                let out = pipeline.run(input);
                assert!(out.errors.is_empty());
                out.documents.len()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

const GROUP_PIPELINE: &str = r#"[
    {"$match": {"status": "PAID"}},
    {"$group": {"_id": "$customerId", "orderCount": {"$count": {}}, "lifetimeValue": {"$sum": "$orderValue"}}}
]"#;

fn srotax_jsonl_group(pipeline: &Pipeline, text: &str) -> String {
    let mut run = pipeline.start();
    let mut out_docs = Vec::new();
    let mut errors = Vec::new();
    // Parse only the fields the pipeline reads, into one reused document that the
    // pipeline reads by reference (no allocation per line for the document itself).
    let fields = pipeline.input_fields();
    let mut doc = Document::new();
    for line in text.lines() {
        match fields {
            Some(f) => parse_document_fields_into(line, f, &mut doc),
            None => parse_document(line).map(|d| doc = d),
        }
        .expect("valid generated JSON");
        run.push_ref(&doc, &mut out_docs, &mut errors);
    }
    run.finish(&mut out_docs, &mut errors);
    assert!(errors.is_empty());
    let mut out = String::with_capacity(out_docs.len() * 64);
    for d in &out_docs {
        d.write_json(&mut out, ExtJsonMode::Relaxed);
        out.push('\n');
    }
    out
}

#[derive(Deserialize)]
struct Order<'a> {
    #[serde(rename = "customerId", borrow)]
    customer_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(rename = "orderValue")]
    order_value: f64,
}

#[derive(Serialize)]
struct Ltv<'a> {
    _id: &'a str,
    #[serde(rename = "orderCount")]
    order_count: i64,
    #[serde(rename = "lifetimeValue")]
    lifetime_value: f64,
}

/// The hand-written baseline: typed structs, a HashMap, serde_json out.
fn baseline_jsonl_group(text: &str) -> String {
    let mut groups: HashMap<String, (i64, f64)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for line in text.lines() {
        let o: Order = serde_json::from_str(line).expect("valid generated JSON");
        if o.status != "PAID" {
            continue;
        }
        match groups.get_mut(o.customer_id.as_ref()) {
            Some(g) => {
                g.0 += 1;
                g.1 += o.order_value;
            }
            None => {
                groups.insert(o.customer_id.to_string(), (1, o.order_value));
                order.push(o.customer_id.to_string());
            }
        }
    }
    let mut out = String::with_capacity(order.len() * 64);
    for id in &order {
        let (count, total) = groups[id];
        let row = Ltv {
            _id: id,
            order_count: count,
            lifetime_value: total,
        };
        out.push_str(&serde_json::to_string(&row).expect("serializable"));
        out.push('\n');
    }
    out
}

fn bench_jsonl_group(c: &mut Criterion) {
    configure_allocator();
    const N: usize = 200_000;
    let text = orders_jsonl(N);
    let pipeline = Pipeline::compile_json(GROUP_PIPELINE).expect("valid pipeline");
    // Both programs must agree on the number of groups before we compare their speed.
    let ours = srotax_jsonl_group(&pipeline, &text);
    let theirs = baseline_jsonl_group(&text);
    assert_eq!(ours.lines().count(), theirs.lines().count());

    let mut g = c.benchmark_group("jsonl_group");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("srotax", |b| {
        b.iter(|| srotax_jsonl_group(&pipeline, &text).len())
    });
    g.bench_function("serde_baseline", |b| {
        b.iter(|| baseline_jsonl_group(&text).len())
    });
    g.finish();
}

criterion_group!(benches, bench_match_project, bench_jsonl_group);
criterion_main!(benches);
