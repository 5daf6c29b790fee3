//! The benchmark baseline for `cargo xtask bench streaming`: the orders-ltv aggregation
//! (`status == "PAID"`, then per `customerId` a count and a sum of `orderValue`) written
//! by hand — one thread, typed serde structs, a HashMap — reading JSON Lines from the
//! first argument and writing JSON Lines to the second.

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

fn baseline(input: &Path, output: &Path) -> Result<(), Box<dyn std::error::Error>> {
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: ltv-baseline INPUT.jsonl OUTPUT.jsonl");
        return ExitCode::from(2);
    };
    match baseline(Path::new(input), Path::new(output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ltv-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}
