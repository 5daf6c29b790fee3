//! `cargo xtask bench [engine|streaming|state|windows|kafka] [ARGS...]`: the benchmarks.
//!
//! - `engine`: stream-core's criterion benchmarks (`cargo bench -p stream-core`), extra
//!   arguments passed through (e.g. a filter, or `-- --save-baseline main`).
//! - `streaming`: `srotax run` end to end against a hand-written baseline
//!   (see `bench_streaming.rs`).
//! - `state`: stream-state's criterion benchmarks (`cargo bench -p stream-state`: every
//!   state backend), after `redis-benchmark -P 16` against the same Redis as the
//!   baseline. Starts the local services unless `SROTAX_TEST_REDIS_URL` is set.
//! - `windows`: event-time windows through `srotax run` against a hand-written baseline,
//!   and Nexmark q5 (see `bench_windows.rs`).
//! - `kafka`: `srotax run` from a Kafka topic to a Kafka topic against the broker alone
//!   (see `bench_kafka.rs`; starts its own broker). `kafka ROUNDS` sets the number of
//!   rounds (default 3).
//!
//! Without a name, all but `kafka` run.

use crate::{bench_kafka, bench_streaming, bench_windows, cargo, run_cmd};
use anyhow::Result;

/// Runs the selected benchmarks.
pub fn run(args: &[String]) -> Result<()> {
    match args.split_first() {
        Some((first, rest)) if first == "engine" => engine(rest),
        Some((first, _)) if first == "streaming" => bench_streaming::run(),
        Some((first, rest)) if first == "kafka" => bench_kafka::run(rest),
        Some((first, rest)) if first == "state" => state(rest),
        Some((first, _)) if first == "windows" => bench_windows::run(),
        _ => {
            engine(args)?;
            bench_streaming::run()?;
            state(&[])?;
            bench_windows::run()
        }
    }
}

fn engine(args: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "stream-core"]).args(args);
    let what = format!("cargo bench -p stream-core {}", args.join(" "));
    run_cmd(&mut cmd, what.trim_end())
}

fn state(args: &[String]) -> Result<()> {
    // Build first, so the baseline does not compete with the compiler for the cores.
    let mut build = cargo();
    build.args(["bench", "-p", "stream-state", "--no-run"]);
    run_cmd(&mut build, "cargo bench -p stream-state --no-run")?;
    // The Redis and PostgreSQL the benchmarks use: the local services unless given
    // (redis-benchmark would otherwise retry a closed port forever).
    let url = match std::env::var("SROTAX_TEST_REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            crate::services::up()?;
            "redis://127.0.0.1:16379".into()
        }
    };
    // The baseline: Redis's own client, pipelined 16 deep, 100-byte values.
    let host_port = url.trim_start_matches("redis://").trim_end_matches('/');
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "6379"));
    let mut baseline = std::process::Command::new("redis-benchmark");
    baseline.args(["-h", host, "-p", port, "-P", "16", "-t", "set,get"]);
    // Its keys go to database 15, away from the state keys in database 0.
    baseline.args([
        "-n", "500000", "-d", "100", "-r", "100000", "--dbnum", "15", "-q",
    ]);
    run_cmd(
        &mut baseline,
        "redis-benchmark -P 16 (baseline for state_write/redis)",
    )?;
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "stream-state"]).args(args);
    let what = format!("cargo bench -p stream-state {}", args.join(" "));
    run_cmd(&mut cmd, what.trim_end())
}
