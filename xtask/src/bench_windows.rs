//! `cargo xtask bench windows`: event-time windows through `srotax run`.
//!
//! 1. **orders-windows**: the 2,000,000-order JSON Lines file of the streaming benchmark
//!    → PAID orders into 60-second tumbling event-time windows (`timeField` `ts`, 5 s
//!    bounded out-of-orderness) keyed by region (`$group` inside the window: count and
//!    sum of `orderValue`) → file sink, file state store. Baseline: `ltv-baseline
//!    --windows`, the same windows hand-written (serde_json, one thread), in the same run
//!    (each side twice, alternately, best of each); both results are compared window by
//!    window before any figure is printed.
//! 2. **Nexmark q5** (hot items): Nexmark events from the generator connector → bids
//!    into 10-second hopping windows every 2 seconds → per window the auction with the
//!    most bids. Reference: the same source and `$match` without the window, in the same
//!    run, so the ratio is the window's cost.

use crate::bench_streaming::{compare, orders_file, timed_child, write_definition, EVENTS};
use crate::{cargo, repo_root, run_cmd};
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

/// Nexmark events for q5.
const NEXMARK_EVENTS: u64 = 2_000_000;

/// Runs both window benchmarks and prints the figures.
pub fn run() -> Result<()> {
    let dir = repo_root().join("target/bench/windows");
    std::fs::create_dir_all(&dir)?;
    run_cmd(
        cargo().args(["build", "--release", "-p", "srotax", "-p", "ltv-baseline"]),
        "cargo build --release -p srotax -p ltv-baseline",
    )?;
    let srotax = repo_root().join("target/release/srotax");
    let baseline = repo_root().join("target/release/ltv-baseline");
    let input = orders_file(&srotax)?;

    let baseline_out = dir.join("baseline.jsonl");
    let baseline_args = [
        "--windows",
        input.to_str().unwrap_or_default(),
        baseline_out.to_str().unwrap_or_default(),
    ];
    let out = dir.join("srotax.jsonl");
    let state = dir.join("state");
    let def = write_definition(
        &dir,
        "orders-windows",
        &format!(
            r#"{{"pipelineId": "orders-windows",
            "source": {{"type": "file", "options": {{"path": "{input}"}}, "timeField": "$ts",
                        "watermark": {{"boundedOutOfOrderness": "5 seconds"}}}},
            "pipeline": [
                {{"$match": {{"status": "PAID"}}}},
                {{"$tumblingWindow": {{"interval": {{"size": 60, "unit": "second"}},
                    "pipeline": [{{"$group": {{"_id": "$region", "orders": {{"$count": {{}}}}, "revenue": {{"$sum": "$orderValue"}}}}}}]}}}}
            ],
            "sink": {{"type": "file", "options": {{"path": "{out}"}}}},
            "runtime": {{"microBatchSize": 4096, "sourceQueueCapacity": 4, "queueCapacity": 4, "workerThreadPoolSize": 2, "checkpointInterval": "10 seconds"}},
            "state": {{"type": "file", "options": {{"path": "{state}"}}}}}}"#,
            input = input.display(),
            out = out.display(),
            state = state.display(),
        ),
    )?;
    let runs = compare(&baseline, &baseline_args, &srotax, &def, &[&out, &state])?;
    let (base, elapsed) = (runs.best_baseline(), runs.best_srotax());
    let windows = check_same_windows(&baseline_out, &out)?;
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!();
    println!("orders-windows, {EVENTS} events (file → $match PAID → 60 s $tumblingWindow by region → file):");
    println!(
        "  baseline (serde_json, 1 thread, in-order input): {:>7.3} s  {:>10.0} events/s  (runs: {})",
        base.as_secs_f64(),
        rate(EVENTS, base),
        runs.baseline_runs()
    );
    println!(
        "  srotax run (watermarks, checkpointed):          {:>7.3} s  {:>10.0} events/s  (runs: {})",
        elapsed.as_secs_f64(),
        rate(EVENTS, elapsed),
        runs.srotax_runs()
    );
    println!(
        "  ratio srotax / baseline: {:.2}x   peak RSS: {:.0} MB   windows × regions: {windows}",
        base.as_secs_f64() / elapsed.as_secs_f64(),
        runs.max_rss_kb as f64 / 1024.0
    );

    // Nexmark q5, and the same source without the window as the reference.
    let q5 = |name: &str, pipeline: &str| -> Result<Duration> {
        let out = dir.join(format!("{name}.jsonl"));
        let _ = std::fs::remove_file(&out);
        let def = write_definition(
            &dir,
            name,
            &format!(
                r#"{{"pipelineId": "{name}",
                "source": {{"type": "generator", "options": {{"kind": "nexmark", "count": {NEXMARK_EVENTS}}},
                            "timeField": "$dateTime", "watermark": {{"boundedOutOfOrderness": "1 second"}}}},
                "pipeline": {pipeline},
                "sink": {{"type": "file", "options": {{"path": "{out}", "fsync": false}}}},
                "runtime": {{"microBatchSize": 4096, "workerThreadPoolSize": 2}},
                "state": {{"type": "memory"}}}}"#,
                out = out.display(),
            ),
        )?;
        let (elapsed, ok, _) = timed_child(&srotax, &["run", def.to_str().unwrap_or_default()])?;
        if !ok {
            bail!("srotax run {name} failed");
        }
        Ok(elapsed)
    };
    let reference = q5(
        "nexmark-bids",
        r#"[{"$match": {"type": "bid"}}, {"$project": {"_id": 0, "auction": 1}}]"#,
    )?;
    let hot = q5(
        "nexmark-q5",
        r#"[{"$match": {"type": "bid"}},
            {"$hoppingWindow": {"interval": {"size": 10, "unit": "second"}, "hopSize": {"size": 2, "unit": "second"},
              "pipeline": [{"$group": {"_id": "$auction", "bids": {"$count": {}}}}, {"$sort": {"bids": -1, "_id": 1}}, {"$limit": 1}]}}]"#,
    )?;
    println!();
    println!("Nexmark q5 (hot items), {NEXMARK_EVENTS} generator events (bids → 10 s windows every 2 s → top auction):");
    println!(
        "  reference ($match bids → file, no window): {:>7.3} s  {:>10.0} events/s",
        reference.as_secs_f64(),
        rate(NEXMARK_EVENTS, reference)
    );
    println!(
        "  q5 with $hoppingWindow:                    {:>7.3} s  {:>10.0} events/s   ratio {:.2}x",
        hot.as_secs_f64(),
        rate(NEXMARK_EVENTS, hot),
        reference.as_secs_f64() / hot.as_secs_f64()
    );
    Ok(())
}

/// Both programs must have computed the same windows; returns how many rows.
fn check_same_windows(baseline: &Path, srotax: &Path) -> Result<usize> {
    type Rows = HashMap<(i64, String), (i64, f64)>;
    let read = |p: &Path, start: &dyn Fn(&serde_json::Value) -> Option<i64>| -> Result<Rows> {
        let mut m = HashMap::new();
        for line in BufReader::new(std::fs::File::open(p)?).lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            let Some(s) = start(&v) else {
                bail!("{}: a row without a window start: {v}", p.display());
            };
            let region = v["_id"].as_str().unwrap_or_default().to_string();
            m.insert(
                (s, region),
                (
                    v["orders"].as_i64().unwrap_or(-1),
                    v["revenue"].as_f64().unwrap_or(f64::NAN),
                ),
            );
        }
        Ok(m)
    };
    let a = read(baseline, &|v| v["start"].as_i64())?;
    let b = read(srotax, &|v| {
        let text = v["_stream_meta"]["window"]["start"]["$date"].as_str()?;
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|d| d.timestamp_millis())
    })?;
    if a.len() != b.len() {
        bail!(
            "result mismatch: baseline has {} window rows, srotax {}",
            a.len(),
            b.len()
        );
    }
    for (k, (n, t)) in &a {
        match b.get(k) {
            Some((n2, t2)) if n == n2 && (t - t2).abs() <= 1e-6 * t.abs().max(1.0) => {}
            other => bail!("result mismatch for {k:?}: baseline ({n}, {t}), srotax {other:?}"),
        }
    }
    println!("results agree: {} window rows", a.len());
    Ok(a.len())
}
