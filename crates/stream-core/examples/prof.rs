//! Scratch profiling harness (to be deleted).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::fmt::Write;
use stream_core::value::{parse_document, parse_document_fields, Document, ExtJsonMode};
use stream_core::Pipeline;

const STATUSES: [&str; 4] = ["PAID", "NEW", "CANCELLED", "PAID"];
const REGIONS: [&str; 5] = ["eu-west", "us-east", "us-west", "ap-south", "sa-east"];
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
            value / 100, value % 100, 1 + (x >> 50) % 5, (i / 60) % 60, i % 60
        );
    }
    s
}
const GROUP_PIPELINE: &str = r#"[{"$match": {"status": "PAID"}},{"$group": {"_id": "$customerId", "orderCount": {"$count": {}}, "lifetimeValue": {"$sum": "$orderValue"}}}]"#;
const MP: &str = r#"[{"$match": {"status": "PAID"}}, {"$project": {"customerId": 1, "orderValue": 1, "region": 1}}]"#;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let text = orders_jsonl(n);
    let r = match mode.as_str() {
        "jsonl" => jsonl(&Pipeline::compile_json(GROUP_PIPELINE).unwrap(), &text),
        "base" => base(&text),
        _ => {
            let docs: Vec<Document> = text.lines().map(|l| parse_document(l).unwrap()).collect();
            let p = Pipeline::compile_json(MP).unwrap();
            if mode == "ref" { run_ref(&p, &docs) } else { run_owned(&p, docs) }
        }
    };
    println!("{r}");
}
#[inline(never)]
fn run_owned(p: &Pipeline, docs: Vec<Document>) -> usize {
    p.run(docs).documents.len()
}
#[inline(never)]
fn run_ref(p: &Pipeline, docs: &[Document]) -> usize {
    p.run_ref(docs).documents.len()
}
#[inline(never)]
fn jsonl(p: &Pipeline, text: &str) -> usize {
    let mut run = p.start();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let fields = p.input_fields().unwrap();
    let mut doc = Document::new();
    let owned = std::env::var_os("OWNED").is_some();
    for line in text.lines() {
        if owned {
            run.push(parse_document_fields(line, fields).unwrap(), &mut out, &mut errors);
        } else {
            stream_core::value::parse_document_fields_into(line, fields, &mut doc).unwrap();
            run.push_ref(&doc, &mut out, &mut errors);
        }
    }
    run.finish(&mut out, &mut errors);
    let mut s = String::with_capacity(out.len() * 64);
    for d in &out {
        d.write_json(&mut s, ExtJsonMode::Relaxed);
        s.push('\n');
    }
    s.len()
}
#[derive(serde::Deserialize)]
struct Order<'a> {
    #[serde(rename = "customerId", borrow)]
    customer_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(rename = "orderValue")]
    order_value: f64,
}
#[derive(serde::Serialize)]
struct Ltv<'a> {
    _id: &'a str,
    #[serde(rename = "orderCount")]
    order_count: i64,
    #[serde(rename = "lifetimeValue")]
    lifetime_value: f64,
}
#[inline(never)]
fn base(text: &str) -> usize {
    let mut groups: std::collections::HashMap<String, (i64, f64)> = std::collections::HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for line in text.lines() {
        let o: Order = serde_json::from_str(line).unwrap();
        if o.status != "PAID" { continue; }
        match groups.get_mut(o.customer_id.as_ref()) {
            Some(g) => { g.0 += 1; g.1 += o.order_value; }
            None => {
                groups.insert(o.customer_id.to_string(), (1, o.order_value));
                order.push(o.customer_id.to_string());
            }
        }
    }
    let mut out = String::with_capacity(order.len() * 64);
    for id in &order {
        let (count, total) = groups[id];
        out.push_str(&serde_json::to_string(&Ltv { _id: id, order_count: count, lifetime_value: total }).unwrap());
        out.push('\n');
    }
    out.len()
}
