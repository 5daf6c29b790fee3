//! `cargo xtask bench streaming`: the orders-ltv pipeline end to end through
//! `srotax run` (file source → `$match` PAID → `$group` by customer → file sink, with the
//! file state store), against a hand-written single-threaded serde_json + HashMap
//! program doing the same work, measured in the same run on the same 2,000,000-line
//! input, each run twice, alternately; the best run of each side is compared. Reports
//! events/s, the ratio to the baseline and srotax's peak RSS.

use crate::{cargo, repo_root, run_cmd};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) const EVENTS: u64 = 2_000_000;

/// Runs the benchmark and prints the figures.
pub fn run() -> Result<()> {
    let dir = repo_root().join("target/bench/streaming");
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
        input.to_str().unwrap_or_default(),
        baseline_out.to_str().unwrap_or_default(),
    ];
    let out = dir.join("srotax.jsonl");
    let state = dir.join("state");
    let def = write_definition(
        &dir,
        "orders-ltv",
        &format!(
            r#"{{"pipelineId": "orders-ltv",
            "source": {{"type": "file", "options": {{"path": "{input}"}}}},
            "pipeline": [
                {{"$match": {{"status": "PAID"}}}},
                {{"$group": {{"_id": "$customerId", "orderCount": {{"$count": {{}}}}, "lifetimeValue": {{"$sum": "$orderValue"}}}}}}
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

    check_same_result(&baseline_out, &out)?;
    let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    println!();
    println!("orders-ltv, {EVENTS} events (file → $match → $group → file):");
    println!(
        "  baseline (serde_json + HashMap, 1 thread): {:>7.3} s  {:>10.0} events/s  (runs: {})",
        base.as_secs_f64(),
        rate(base),
        runs.baseline_runs()
    );
    println!(
        "  srotax run (checkpointed, file state):     {:>7.3} s  {:>10.0} events/s  (runs: {})",
        elapsed.as_secs_f64(),
        rate(elapsed),
        runs.srotax_runs()
    );
    println!(
        "  ratio srotax / baseline: {:.2}x   peak RSS: {:.0} MB",
        base.as_secs_f64() / elapsed.as_secs_f64(),
        runs.max_rss_kb as f64 / 1024.0
    );
    Ok(())
}

/// Timings of a baseline program and of `srotax run`, interleaved.
pub(crate) struct Comparison {
    baseline: Vec<Duration>,
    srotax: Vec<Duration>,
    /// The highest peak RSS of the srotax runs, in KiB.
    pub max_rss_kb: i64,
}

/// How many times each side runs; the best run of each is compared. The machine is
/// shared, so a single run can catch a burst of other work or a cold page cache.
const ROUNDS: usize = 3;

impl Comparison {
    pub(crate) fn best_baseline(&self) -> Duration {
        self.baseline.iter().copied().min().unwrap_or_default()
    }

    pub(crate) fn best_srotax(&self) -> Duration {
        self.srotax.iter().copied().min().unwrap_or_default()
    }

    pub(crate) fn baseline_runs(&self) -> String {
        seconds(&self.baseline)
    }

    pub(crate) fn srotax_runs(&self) -> String {
        seconds(&self.srotax)
    }
}

fn seconds(runs: &[Duration]) -> String {
    let runs: Vec<String> = runs
        .iter()
        .map(|d| format!("{:.3} s", d.as_secs_f64()))
        .collect();
    runs.join(", ")
}

/// Runs the baseline and `srotax run DEF` alternately, [`ROUNDS`] times each, removing
/// `fresh` (srotax's output and state) before every srotax run so each starts from
/// nothing.
pub(crate) fn compare(
    baseline: &Path,
    baseline_args: &[&str],
    srotax: &Path,
    def: &Path,
    fresh: &[&Path],
) -> Result<Comparison> {
    let mut runs = Comparison {
        baseline: Vec::new(),
        srotax: Vec::new(),
        max_rss_kb: 0,
    };
    for _ in 0..ROUNDS {
        runs.baseline.push(run_baseline(baseline, baseline_args)?);
        for path in fresh {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_dir_all(path);
        }
        let (elapsed, ok, rss) = timed_child(srotax, &["run", def.to_str().unwrap_or_default()])?;
        if !ok {
            bail!("srotax run {} failed", def.display());
        }
        runs.srotax.push(elapsed);
        runs.max_rss_kb = runs.max_rss_kb.max(rss);
    }
    Ok(runs)
}

/// The 2,000,000-order JSON Lines file (`target/bench/streaming/orders-2m.jsonl`),
/// written by the generator connector through `srotax` unless already there.
pub(crate) fn orders_file(srotax: &Path) -> Result<PathBuf> {
    let dir = repo_root().join("target/bench/streaming");
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("orders-2m.jsonl");
    if line_count(&input).unwrap_or(0) != EVENTS {
        println!("generating {EVENTS} orders with the generator connector ...");
        let _ = std::fs::remove_file(&input);
        let def = write_definition(
            &dir,
            "generate",
            &format!(
                r#"{{"pipelineId": "generate",
                "source": {{"type": "generator", "options": {{"count": {EVENTS}, "seed": 42, "customers": 100000}}}},
                "sink": {{"type": "file", "options": {{"path": "{}", "fsync": false}}}},
                "runtime": {{"microBatchSize": 8192}},
                "state": {{"type": "memory"}}}}"#,
                input.display()
            ),
        )?;
        let (_, status, _) = timed_child(srotax, &["run", def.to_str().unwrap_or_default()])?;
        if !status {
            bail!("generating the input failed");
        }
    }
    Ok(input)
}

pub(crate) fn write_definition(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, text)?;
    Ok(path)
}

fn line_count(path: &Path) -> Result<u64> {
    let f = BufReader::new(std::fs::File::open(path)?);
    Ok(f.split(b'\n').count() as u64)
}

fn run_baseline(program: &Path, args: &[&str]) -> Result<Duration> {
    let (elapsed, ok, _) = timed_child(program, args)?;
    if !ok {
        bail!("the baseline program failed");
    }
    Ok(elapsed)
}

/// Runs a child to completion; returns its wall time, success, and peak RSS in KiB
/// (from `wait4`, so it is this child's own figure).
pub(crate) fn timed_child(program: &Path, args: &[&str]) -> Result<(Duration, bool, i64)> {
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is plain data that wait4 fills in; `pid` is our own child, reaped
    // here exactly once (the `Child` handle is not waited on again).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    if r != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    std::mem::forget(child);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((elapsed, ok, usage.ru_maxrss))
}

/// Both programs must have computed the same table before their speed is compared.
fn check_same_result(baseline: &Path, srotax: &Path) -> Result<()> {
    let read = |p: &Path| -> Result<HashMap<String, (i64, f64)>> {
        let mut m = HashMap::new();
        for line in BufReader::new(std::fs::File::open(p)?).lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            let id = v["_id"].as_str().unwrap_or_default().to_string();
            m.insert(
                id,
                (
                    v["orderCount"].as_i64().unwrap_or(-1),
                    v["lifetimeValue"].as_f64().unwrap_or(f64::NAN),
                ),
            );
        }
        Ok(m)
    };
    let (a, b) = (read(baseline)?, read(srotax)?);
    if a.len() != b.len() {
        bail!(
            "result mismatch: baseline has {} groups, srotax {}",
            a.len(),
            b.len()
        );
    }
    for (k, (n, t)) in &a {
        match b.get(k) {
            Some((n2, t2)) if n == n2 && (t - t2).abs() <= 1e-6 * t.abs().max(1.0) => {}
            other => bail!("result mismatch for {k}: baseline ({n}, {t}), srotax {other:?}"),
        }
    }
    println!("results agree: {} groups", a.len());
    Ok(())
}
