//! `cargo xtask bench kafka`: the orders-ltv pipeline from a Kafka topic to a Kafka
//! topic through `srotax run` (kafka source → `$match` PAID → `$group` by customer →
//! kafka sink, trigger `availableNow`), against the broker alone: `kafka-baseline`, a
//! plain rdkafka program that consumes the same messages and produces each one
//! unchanged to another topic. Both run on loopback against a private noida-db the
//! benchmark starts with empty data, in rounds (each with its own baseline). Every step
//! writes to a topic of its own, deleted after the step, and starts only once the
//! broker is idle (noida-db rewrites all its data after writes, a core busy for
//! seconds). Reports events/s and the ratio to the broker-only figure, for
//! at-least-once and exactly-once.

use crate::bench_streaming::timed_child;
use crate::{cargo, repo_root, run_cmd};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const EVENTS: u64 = 500_000;
const PARTITIONS: u32 = 3;
/// Rounds of (broker alone, at-least-once, exactly-once) unless given.
const DEFAULT_ROUNDS: usize = 3;

/// Port of the private broker the benchmark starts.
const PRIVATE_PORT: u16 = 29192;

/// Stops the private broker when the benchmark ends, failed or not.
struct PrivateBroker(std::path::PathBuf);

impl PrivateBroker {
    /// Waits until the broker is idle (see [`crate::services::kafka::wait_until_private_idle`]).
    fn settle(&self) {
        if !crate::services::kafka::wait_until_private_idle(&self.0, Duration::from_secs(120)) {
            eprintln!("warning: the benchmark's broker stayed busy for 120 s; measuring anyway");
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Err(e) = crate::services::kafka::stop_private(&self.0) {
            eprintln!("stopping the benchmark's broker: {e:#}");
        }
    }
}

/// Runs the benchmark and prints the figures. `SROTAX_TEST_KAFKA_BOOTSTRAP` selects a
/// broker already running; otherwise the benchmark starts its own noida-db on
/// 127.0.0.1:29192 with empty data (installed like `cargo xtask services up`'s) and
/// stops it at the end: the shared broker holds every test's topics, and rewriting
/// them to disk stalls it for seconds at unpredictable times.
pub fn run(args: &[String]) -> Result<()> {
    let rounds = match args.first() {
        None => DEFAULT_ROUNDS,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => bail!(
                "cargo xtask bench kafka [ROUNDS]: ROUNDS must be a positive number, found '{n}'"
            ),
        },
    };
    let dir = repo_root().join("target/bench/kafka");
    std::fs::create_dir_all(&dir)?;
    let (bootstrap, broker) = match std::env::var("SROTAX_TEST_KAFKA_BOOTSTRAP") {
        Ok(b) => (b, None),
        Err(_) => {
            let broker = dir.join("broker");
            std::fs::create_dir_all(&broker)?;
            crate::services::kafka::start_private(
                &repo_root().join("target/services/kafka"),
                &broker,
                PRIVATE_PORT,
            )?;
            (
                format!("127.0.0.1:{PRIVATE_PORT}"),
                Some(PrivateBroker(broker)),
            )
        }
    };
    let bootstrap = bootstrap.as_str();
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
    let admin = |action: &str, name: &str| -> Result<()> {
        let mut cmd = Command::new(&baseline);
        cmd.args([action, bootstrap, &topic(name)]);
        if action == "--create" {
            cmd.arg(PARTITIONS.to_string());
        }
        if !cmd.status()?.success() {
            bail!("kafka-baseline {action} {}", topic(name));
        }
        Ok(())
    };
    // A step's output topic exists only during the step, so the broker's data (and
    // the time it takes to rewrite it) stays the input topic's.
    let step = |name: &str, measure: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        admin("--create", name)?;
        if let Some(b) = &broker {
            b.settle();
        }
        measure()?;
        admin("--delete", name)
    };
    admin("--create", "orders")?;

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

    let copy = |round: usize| -> Result<(Duration, Duration)> {
        let started = Instant::now();
        let out = Command::new(&baseline)
            .args([
                bootstrap,
                &topic("orders"),
                &topic(&format!("copy-{round}")),
                &EVENTS.to_string(),
            ])
            .output()
            .context("running kafka-baseline")?;
        // Process wall time, like `srotax run`'s: start-up and closing the consumer
        // (leaving the group) included. The program's own figure excludes both.
        let wall = started.elapsed();
        if !out.status.success() {
            bail!(
                "kafka-baseline failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        Ok((wall, Duration::from_secs_f64(secs)))
    };
    let pipeline = |guarantee: &str, round: usize| -> Result<Duration> {
        let id = format!("bench-ltv-{guarantee}-{run_id}-{round}");
        let def = definition(
            &dir,
            guarantee,
            &format!(
                r#"{{"pipelineId": "{id}",
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
                out = topic(&format!("ltv-{guarantee}-{round}")),
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
                &format!("srotax-{id}"),
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

    let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    let secs = |d: Duration| d.as_secs_f64();
    println!();
    println!("orders-ltv from Kafka, {EVENTS} events, {PARTITIONS} partitions, loopback broker (noida-db):");
    println!(
        "  input produced by srotax (generator → kafka): {:.3} s, {:.0} events/s",
        secs(produced),
        rate(produced)
    );
    println!(
        "  per round: broker alone (rdkafka consume + produce, no processing), then srotax run"
    );
    println!(
        "  kafka → $match → $group → kafka; ratio = broker-alone time / srotax time, same round"
    );
    // Each round measures its own baseline next to the pipelines: the machine is
    // shared, and a ratio is only fair between runs taken close together. The order
    // rotates, so no program always follows another's heavy writes.
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        let (mut base, mut own, mut alo, mut eo) = Default::default();
        for i in 0..3 {
            match (i + round - 1) % 3 {
                0 => step(&format!("copy-{round}"), &mut || {
                    (base, own) = copy(round)?;
                    Ok(())
                })?,
                1 => step(&format!("ltv-at_least_once-{round}"), &mut || {
                    alo = pipeline("at_least_once", round)?;
                    Ok(())
                })?,
                _ => step(&format!("ltv-exactly_once-{round}"), &mut || {
                    eo = pipeline("exactly_once", round)?;
                    Ok(())
                })?,
            }
        }
        let (ra, re) = (secs(base) / secs(alo), secs(base) / secs(eo));
        ratios[0].push(ra);
        ratios[1].push(re);
        println!(
            "  round {round}: broker alone {:.3} s ({:.0}/s; {:.3} s by its own clock) | at_least_once {:.3} s ({:.0}/s) {ra:.2}x | exactly_once {:.3} s ({:.0}/s) {re:.2}x",
            secs(base), rate(base), secs(own), secs(alo), rate(alo), secs(eo), rate(eo),
        );
    }
    for (name, mut r) in ["at_least_once", "exactly_once"].into_iter().zip(ratios) {
        r.sort_by(f64::total_cmp);
        println!(
            "  {name}: ratio {:.2}x–{:.2}x over {rounds} rounds, median {:.2}x",
            r[0],
            r[r.len() - 1],
            r[r.len() / 2]
        );
    }
    println!("  (process wall times, start-up, consumer-group join and close included)");
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
