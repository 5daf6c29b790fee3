#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use stream_core::value::parse_document;
use stream_core::Pipeline;
fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let statuses = ["PAID", "NEW", "CANCELLED", "PAID"];
    let mut docs = Vec::new();
    for i in 0..n {
        let x = i.wrapping_mul(0x9e3779b97f4a7c15);
        let l = format!(
            r#"{{"orderId":"o-{i}","customerId":"c-{}","status":"{}","orderValue":{}.25,"currency":"EUR","region":"eu-west","items":3,"ts":{{"$date":"2026-11-01T10:00:00Z"}}}}"#,
            x % 50000,
            statuses[(x >> 20) as usize % 4],
            x % 1000
        );
        docs.push(parse_document(&l).unwrap());
    }
    if mode == "jsonl" || mode == "base" {
        let mut text = String::new();
        for i in 0..n {
            let x = i.wrapping_mul(0x9e3779b97f4a7c15);
            text.push_str(&format!(r#"{{"orderId":"o-{i}","customerId":"c-{}","status":"{}","orderValue":{}.25,"currency":"EUR","region":"eu-west","items":3,"ts":{{"$date":"2026-11-01T10:00:00Z"}}}}"#, x % 50000, statuses[(x >> 20) as usize % 4], x % 1000));
            text.push('\n');
        }
        let p = Pipeline::compile_json(r#"[{"$match": {"status": "PAID"}}, {"$group": {"_id": "$customerId", "orderCount": {"$count": {}}, "lifetimeValue": {"$sum": "$orderValue"}}}]"#).unwrap();
        println!(
            "{}",
            if mode == "jsonl" {
                jsonl(&p, &text)
            } else {
                base(&text)
            }
        );
        return;
    }
    let spec = match mode.as_str() {
        "match" => r#"[{"$match": {"status": "PAID"}}]"#,
        "none" => r#"[]"#,
        _ => {
            r#"[{"$match": {"status": "PAID"}}, {"$project": {"customerId": 1, "orderValue": 1, "region": 1}}]"#
        }
    };
    let p = Pipeline::compile_json(spec).unwrap();
    let out = run_it(&p, docs);
    println!("{}", out);
}
#[inline(never)]
fn run_it(p: &Pipeline, docs: Vec<stream_core::Document>) -> usize {
    let out = p.run(docs);
    out.documents.len()
}

#[inline(never)]
fn jsonl(p: &Pipeline, text: &str) -> usize {
    let mut run = p.start();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let fields = p.input_fields().unwrap();
    for line in text.lines() {
        run.push(
            stream_core::value::parse_document_fields(line, fields).unwrap(),
            &mut out,
            &mut errors,
        );
    }
    run.finish(&mut out, &mut errors);
    let mut s = String::new();
    for d in &out {
        d.write_json(&mut s, stream_core::value::ExtJsonMode::Relaxed);
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
#[inline(never)]
fn base(text: &str) -> usize {
    let mut groups: std::collections::HashMap<String, (i64, f64)> =
        std::collections::HashMap::new();
    for line in text.lines() {
        let o: Order = serde_json::from_str(line).unwrap();
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
            }
        }
    }
    let mut s = String::new();
    for (k, (c, t)) in &groups {
        s.push_str(
            &serde_json::to_string(
                &serde_json::json!({"_id": k, "orderCount": c, "lifetimeValue": t}),
            )
            .unwrap(),
        );
        s.push('\n');
    }
    s.len()
}
