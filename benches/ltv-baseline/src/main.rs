//! The benchmark baseline for `cargo xtask bench streaming`: the orders-ltv aggregation
//! (`status == "PAID"`, then per `customerId` a count and a sum of `orderValue`) written
//! by hand — one thread, typed serde structs, a HashMap — reading JSON Lines from the
//! first argument and writing JSON Lines to the second.
//!
//! With `--windows` first, the baseline of `cargo xtask bench windows` instead: PAID
//! orders into 60-second tumbling windows of `ts` per `region` (count and sum of
//! `orderValue`), one output line per window and region:
//! `{"start": <epoch ms>, "_id": region, "orders": n, "revenue": sum}`. The input's `ts`
//! never decreases, so the baseline needs no watermark or lateness handling.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

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

type Outcome = Result<(), Box<dyn std::error::Error>>;
type Program = fn(&Path, &Path) -> Outcome;

fn baseline(input: &Path, output: &Path) -> Outcome {
    let reader = BufReader::with_capacity(1 << 20, std::fs::File::open(input)?);
    let mut groups: HashMap<String, (i64, f64)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for line in reader.lines() {
        let line = line?;
        let o: Order = serde_json::from_str(&line)?;
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
                order.push(o.customer_id.into_owned());
            }
        }
    }
    let mut out = BufWriter::new(std::fs::File::create(output)?);
    for id in &order {
        let (count, total) = groups[id];
        serde_json::to_writer(
            &mut out,
            &Ltv {
                _id: id,
                order_count: count,
                lifetime_value: total,
            },
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Deserialize)]
struct Date<'a> {
    #[serde(rename = "$date", borrow)]
    date: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct TimedOrder<'a> {
    #[serde(borrow)]
    region: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(rename = "orderValue")]
    order_value: f64,
    #[serde(borrow)]
    ts: Date<'a>,
}

#[derive(Serialize)]
struct WindowRow<'a> {
    start: i64,
    _id: &'a str,
    orders: i64,
    revenue: f64,
}

const WINDOW_MS: i64 = 60_000;

fn windows(input: &Path, output: &Path) -> Outcome {
    let reader = BufReader::with_capacity(1 << 20, std::fs::File::open(input)?);
    let mut out = BufWriter::new(std::fs::File::create(output)?);
    // The open window: its start and (region → count, sum) in first-seen order.
    let mut current: Option<i64> = None;
    let mut groups: Vec<(String, i64, f64)> = Vec::new();
    let mut flush = |start: i64, groups: &mut Vec<(String, i64, f64)>| -> std::io::Result<()> {
        for (region, orders, revenue) in groups.drain(..) {
            serde_json::to_writer(
                &mut out,
                &WindowRow {
                    start,
                    _id: &region,
                    orders,
                    revenue,
                },
            )?;
            out.write_all(b"\n")?;
        }
        Ok(())
    };
    for line in reader.lines() {
        let line = line?;
        let o: TimedOrder = serde_json::from_str(&line)?;
        if o.status != "PAID" {
            continue;
        }
        let ms = chrono::DateTime::parse_from_rfc3339(&o.ts.date)?.timestamp_millis();
        let start = ms.div_euclid(WINDOW_MS) * WINDOW_MS;
        if current != Some(start) {
            if let Some(s) = current {
                flush(s, &mut groups)?;
            }
            current = Some(start);
        }
        match groups.iter_mut().find(|g| g.0 == o.region) {
            Some(g) => {
                g.1 += 1;
                g.2 += o.order_value;
            }
            None => groups.push((o.region.into_owned(), 1, o.order_value)),
        }
    }
    if let Some(s) = current {
        flush(s, &mut groups)?;
    }
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (run, rest): (Program, &[String]) = match args.split_first() {
        Some((flag, rest)) if flag == "--windows" => (windows, rest),
        _ => (baseline, &args),
    };
    let [input, output] = rest else {
        eprintln!("usage: ltv-baseline [--windows] INPUT.jsonl OUTPUT.jsonl");
        return ExitCode::from(2);
    };
    match run(Path::new(input), Path::new(output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ltv-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}
