//! Project automation: `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! - `ci`: the full check a change must pass — format, clippy, tests (incl. doctests),
//!   and a build of the fuzz target. `.ci/run` runs exactly this.
//! - `bench [engine|streaming|state|windows|kafka] [ARGS...]`: the criterion engine
//!   benchmarks and/or the `srotax run` streaming and window benchmarks against
//!   hand-written baselines; `kafka`: Kafka to Kafka against the broker alone.
//! - `fuzz build|run [TARGET] [--seconds N]`: build or run a fuzz target on a
//!   stable toolchain (see `fuzz.rs`).
//! - `services up|down|status`: local services (brokers, databases) the tests need.

mod bench;
mod bench_kafka;
mod bench_streaming;
mod bench_windows;
mod ci;
mod fuzz;
mod services;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                       fmt check, clippy -D warnings, tests (incl. doctests), fuzz build
  bench [engine|streaming|state|windows|kafka] [ARGS...]
                           criterion engine benchmarks and/or srotax run vs a baseline
                           (kafka: Kafka to Kafka vs the broker alone)
  fuzz build [--release]   build the fuzz targets (stable toolchain)
  fuzz run [TARGET] [--seconds N]
                           run a fuzz target (default pipeline_parser) for N s (default 30)
  services up|down|status  start, stop or show the local services tests need
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let (cmd, rest) = match args.split_first() {
        Some((cmd, rest)) => (cmd.as_str(), rest),
        None => {
            eprint!("{USAGE}");
            bail!("no command given");
        }
    };
    match cmd {
        "ci" => {
            if !rest.is_empty() {
                bail!("`ci` takes no arguments");
            }
            ci::run()
        }
        "bench" => bench::run(rest),
        "fuzz" => fuzz::command(rest),
        "services" => services::command(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command '{other}'")
        }
    }
}

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `cargo` as invoked by the user (`$CARGO`), falling back to the one on `PATH`.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

/// Runs `cmd`, failing with `what` in the message when it cannot start or exits non-zero.
pub fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !status.success() {
        match status.code() {
            Some(code) => bail!("`{what}` failed with exit code {code}"),
            None => bail!("`{what}` was terminated by a signal"),
        }
    }
    Ok(())
}
