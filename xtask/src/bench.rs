//! `cargo xtask bench [engine|streaming] [ARGS...]`: the benchmarks.
//!
//! - `engine`: stream-core's criterion benchmarks (`cargo bench -p stream-core`), extra
//!   arguments passed through (e.g. a filter, or `-- --save-baseline main`).
//! - `streaming`: `srotax run` end to end against a hand-written baseline
//!   (see `bench_streaming.rs`).
//! - `kafka`: `srotax run` from a Kafka topic to a Kafka topic against the broker alone
//!   (see `bench_kafka.rs`; starts the local services).
//!
//! Without a name, `engine` and `streaming` run.

use crate::{bench_kafka, bench_streaming, cargo, run_cmd};
use anyhow::Result;

/// Runs the selected benchmarks.
pub fn run(args: &[String]) -> Result<()> {
    match args.split_first() {
        Some((first, rest)) if first == "engine" => engine(rest),
        Some((first, _)) if first == "streaming" => bench_streaming::run(),
        Some((first, _)) if first == "kafka" => bench_kafka::run(),
        _ => {
            engine(args)?;
            bench_streaming::run()
        }
    }
}

fn engine(args: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "stream-core"]).args(args);
    let what = format!("cargo bench -p stream-core {}", args.join(" "));
    run_cmd(&mut cmd, what.trim_end())
}
