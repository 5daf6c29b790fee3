//! `cargo xtask ci`: every check a change must pass, in order, stopping at the first
//! failure. Installs the Debian packages the build needs, starts the local services
//! the tests use (`cargo xtask services up`) and stops them at the end, passing or
//! failing.

use crate::{cargo, fuzz, run_cmd, services};
use anyhow::{Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

struct Step {
    name: &'static str,
    command: fn() -> Result<Command>,
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            name: "cargo fmt --all -- --check",
            command: || {
                let mut c = cargo();
                c.args(["fmt", "--all", "--", "--check"]);
                Ok(c)
            },
        },
        Step {
            name: "cargo clippy --workspace --all-targets -- -D warnings",
            command: || {
                let mut c = cargo();
                c.args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]);
                Ok(c)
            },
        },
        Step {
            name: "cargo test --workspace (unit, integration and doc tests)",
            command: || {
                let mut c = cargo();
                c.args(["test", "--workspace"]);
                Ok(c)
            },
        },
        Step {
            name: "build the fuzz targets (fuzz/)",
            command: || fuzz::build_command(false),
        },
    ]
}

/// Runs every step; prints each step and its duration.
pub fn run() -> Result<()> {
    services::ensure_debian_packages(services::BUILD_PACKAGES)?;
    let _services = RunningServices::start()?;
    let steps = steps();
    let total = steps.len();
    let started = Instant::now();
    let mut done: Vec<(&str, Duration)> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        eprintln!("\n==> [{}/{total}] {}", i + 1, step.name);
        let t = Instant::now();
        let result = (step.command)().and_then(|mut cmd| run_cmd(&mut cmd, step.name));
        let elapsed = t.elapsed();
        if let Err(e) = result {
            eprintln!(
                "\n==> FAILED at step {}/{total} ({}) after {}",
                i + 1,
                step.name,
                secs(elapsed)
            );
            return Err(e).context(format!("ci failed at step {}/{total}", i + 1));
        }
        eprintln!("==> ok: {} ({})", step.name, secs(elapsed));
        done.push((step.name, elapsed));
    }
    eprintln!("\n==> ci passed in {}", secs(started.elapsed()));
    for (name, elapsed) in done {
        eprintln!("    {:>8}  {name}", secs(elapsed));
    }
    Ok(())
}

/// The services for the tests, stopped when dropped (so also when a step fails).
struct RunningServices;

impl RunningServices {
    fn start() -> Result<Self> {
        let guard = RunningServices;
        services::up()?;
        Ok(guard)
    }
}

impl Drop for RunningServices {
    fn drop(&mut self) {
        if let Err(e) = services::down() {
            eprintln!("xtask: warning: {e:#}");
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
