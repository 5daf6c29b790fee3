//! `cargo xtask bench [ARGS...]`: runs stream-core's benchmarks.

use crate::{cargo, run_cmd};
use anyhow::Result;

/// Runs `cargo bench -p stream-core`, passing `args` through (e.g. a filter, or
/// `-- --save-baseline main`).
pub fn run(args: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "stream-core"]).args(args);
    let what = format!("cargo bench -p stream-core {}", args.join(" "));
    run_cmd(&mut cmd, what.trim_end())
}
