//! `cargo xtask bench kafka`: the orders-ltv pipeline from a Kafka topic to a Kafka
//! topic through `srotax run` (kafka source → `$match` PAID → `$group` by customer →
//! kafka sink, trigger `availableNow`), against the broker alone: `kafka-baseline`, a
//! plain rdkafka program that consumes the same messages and produces each one
//! unchanged to another topic. Both run on loopback against the broker of
//! `cargo xtask services up`, in the same run. Reports events/s and the ratio to the
//! broker-only figure, for at-least-once and exactly-once.

use crate::bench_streaming::timed_child;
use crate::{cargo, repo_root, run_cmd};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const EVENTS: u64 = 500_000;
const PARTITIONS: u32 = 3;

/// Runs the benchmark and prints the figures. `SROTAX_TEST_KAFKA_BOOTSTRAP` selects a
/// broker already running (e.g. a private one, away from other users' topics);
/// otherwise `cargo xtask services up` starts the local one on 127.0.0.1:19092.
pub fn run() -> Result<()> {
    let bootstrap = match std::env::var("SROTAX_TEST_KAFKA_BOOTSTRAP") {
        Ok(b) => b,
        Err(_) => {
            crate::services::up()?;
            "127.0.0.1:19092".to_string()
        }
    };
    let bootstrap = bootstrap.as_str();
    let dir = repo_root().join("target/bench/kafka");
    std::fs::create_dir_all(&dir)?;
    run_cmd(
        cargo().args(["build", "--release", "-p", "srotax", "-p", "kafka-baseline"]),
        "cargo build --release -p srotax -p kafka-baseline",
    )?;
    let srotax = repo_root().join("target/release/srotax");
    let baseline = repo_root().join("target/release/kafka-baseline");
    // Fresh topics and groups per run: the broker keeps what earlier runs wrote.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let topic = |name: &str| format!("bench-{name}-{run_id}");
    for name in ["orders", "copy-1", "copy-2", "ltv-alo", "ltv-eo"] {
        let ok = Command::new(&baseline)
            .args(["--create", bootstrap, &topic(name), &PARTITIONS.to_string()])
            .status()?
            .success();
        if !ok {
            bail!("creating topic {}", topic(name));
        }
    }

    println!("producing {EVENTS} orders with srotax (generator → kafka) ...");
    let produce = definition(
        &dir,
        "produce",
        &format!(
            r#"{{"pipelineId": "bench-produce-{run_id}",
            "source": {{"type": "generator", "options": {{"count": {EVENTS}, "seed": 42, "customers": 100000}}}},
            "sink": {{"type": "kafka", "options": {{"bootstrapServers": "{bootstrap}", "topic": "{orders}", "key": "$customerId"}}}},
            "runtime": {{"microBatchSize": 8192}}}}"#,
            orders = topic("orders")
        ),
    )?;
    let (produced, ok, _) = timed_child(&srotax, &["run", path_str(&produce)])?;
    if !ok {
        bail!("producing the input failed");
    }

    let copy = |n: u32| -> Result<Duration> {
        let out = Command::new(&baseline)
            .args([
                bootstrap,
                &topic("orders"),
                &topic(&format!("copy-{n}")),
                &EVENTS.to_string(),
            ])
            .output()
            .context("running kafka-baseline")?;
        if !out.status.success() {
            bail!(
                "kafka-baseline failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        Ok(Duration::from_secs_f64(secs))
    };
    let pipeline = |guarantee: &str, out: &str| -> Result<Duration> {
        let def = definition(
            &dir,
            guarantee,
            &format!(
                r#"{{"pipelineId": "bench-ltv-{guarantee}-{run_id}",
                "source": {{"type": "kafka", "options": {{"bootstrapServers": "{bootstrap}", "topics": "{orders}", "metadata": false}}}},
                "pipeline": [
                    {{"$match": {{"status": "PAID"}}}},
                    {{"$group": {{"_id": "$customerId", "orderCount": {{"$count": {{}}}}, "lifetimeValue": {{"$sum": "$orderValue"}}}}}}
                ],
                "sink": {{"type": "kafka", "options": {{"bootstrapServers": "{bootstrap}", "topic": "{out}", "key": "$_id"}}}},
                "runtime": {{"microBatchSize": 4096, "maxBatchDelay": "50 ms", "workerThreadPoolSize": 2,
                             "trigger": "availableNow", "processingGuarantee": "{guarantee}"}},
                "state": {{"type": "memory"}}}}"#,
                orders = topic("orders"),
            ),
        )?;
        let (elapsed, ok, _) = timed_child(&srotax, &["run", path_str(&def)])?;
        if !ok {
            bail!("srotax run ({guarantee}) failed");
        }
        // A run that stopped early would look fast: it must have consumed everything.
        let out = Command::new(&baseline)
            .args([
                "--committed",
                bootstrap,
                &format!("srotax-bench-ltv-{guarantee}-{run_id}"),
                &topic("orders"),
            ])
            .output()
            .context("running kafka-baseline --committed")?;
        let consumed: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        if consumed != EVENTS {
            bail!("srotax run ({guarantee}) consumed {consumed} of {EVENTS} messages");
        }
        Ok(elapsed)
    };

    // Baseline, srotax (both guarantees), baseline again: the machine is shared, and
    // the better of two baseline runs is the fairer reference.
    let b1 = copy(1)?;
    let alo = pipeline("at_least_once", &topic("ltv-alo"))?;
    let eo = pipeline("exactly_once", &topic("ltv-eo"))?;
    let b2 = copy(2)?;
    let base = b1.min(b2);
    let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    println!();
    println!("orders-ltv from Kafka, {EVENTS} events, {PARTITIONS} partitions, loopback broker (noida-db):");
    println!(
        "  input produced by srotax (generator → kafka):          {:>7.3} s  {:>9.0} events/s",
        produced.as_secs_f64(),
        rate(produced)
    );
    println!("  broker alone (rdkafka consume + produce, no processing): {:>7.3} s  {:>9.0} events/s  (runs: {:.3} s, {:.3} s)", base.as_secs_f64(), rate(base), b1.as_secs_f64(), b2.as_secs_f64());
    for (name, d) in [("at_least_once", alo), ("exactly_once", eo)] {
        println!(
            "  srotax run, {name:<14} kafka → $match → $group → kafka: {:>7.3} s  {:>9.0} events/s  ratio {:.2}x",
            d.as_secs_f64(),
            rate(d),
            base.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!("  (process wall times, including start-up and the consumer-group join)");
    Ok(())
}

fn definition(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, text)?;
    Ok(path)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
