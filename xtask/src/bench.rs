//! `cargo xtask bench [engine|streaming] [ARGS...]`: the benchmarks.
//!
//! - `engine`: stream-core's criterion benchmarks (`cargo bench -p stream-core`), extra
//!   arguments passed through (e.g. a filter, or `-- --save-baseline main`).
//! - `streaming`: `srotax run` end to end against a hand-written baseline
//!   (see `bench_streaming.rs`).
//!
//! Without a name, both run.

use crate::{bench_streaming, cargo, run_cmd};
use anyhow::Result;

/// Runs the selected benchmarks.
pub fn run(args: &[String]) -> Result<()> {
    match args.split_first() {
        Some((first, rest)) if first == "engine" => engine(rest),
        Some((first, _)) if first == "streaming" => bench_streaming::run(),
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
