//! `cargo xtask fuzz build|run`: the fuzz targets in `fuzz/` on a stable toolchain.
//!
//! - `pipeline_parser`: arbitrary bytes parsed as JSON and compiled as a pipeline.
//! - `pipeline_eval`: a pipeline (first line) compiled and run over awkward documents.
//!
//! `fuzz/` has the cargo-fuzz layout, so with cargo-fuzz and a nightly toolchain
//! `cargo +nightly fuzz run pipeline_parser` works as usual. This task does not need
//! cargo-fuzz or nightly: it passes the same coverage-instrumentation flags cargo-fuzz
//! uses (`-Cpasses=sancov-module` and the `-sanitizer-coverage-*` LLVM options, all
//! accepted by stable rustc) and builds with plain cargo; libfuzzer-sys compiles libFuzzer
//! itself (needs a C++ compiler). No AddressSanitizer: a Rust panic is the crash we hunt.
//! `--target <host>` keeps the flags away from build scripts and proc-macros.

use crate::{cargo, repo_root, run_cmd};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`); the first is the default.
const TARGETS: &[&str] = &["pipeline_parser", "pipeline_eval"];

const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// `cargo xtask fuzz ...`
pub fn command(args: &[String]) -> Result<()> {
    const USAGE: &str = "usage: cargo xtask fuzz build [--release] | run [TARGET] [--seconds N]";
    match args.first().map(String::as_str) {
        Some("build") => {
            let release = match &args[1..] {
                [] => false,
                [flag] if flag == "--release" => true,
                other => bail!("`fuzz build` takes only --release, got {other:?}"),
            };
            run_cmd(&mut build_command(release)?, "cargo build (fuzz targets)")
        }
        Some("run") => {
            let mut target = TARGETS[0];
            let mut seconds = 30;
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--seconds" => {
                        let n = rest.next().context("--seconds needs a number")?;
                        seconds = n
                            .parse()
                            .with_context(|| format!("--seconds: '{n}' is not a number"))?;
                    }
                    other => match TARGETS.iter().find(|t| **t == other) {
                        Some(t) => target = t,
                        None => bail!(
                            "unknown fuzz target or option '{other}' (targets: {TARGETS:?}); {USAGE}"
                        ),
                    },
                }
            }
            run(target, seconds)
        }
        _ => bail!(USAGE),
    }
}

fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("cannot run `rustc -vV`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|s| s.trim().to_string())
        .context("`rustc -vV` printed no host triple")
}

fn fuzz_dir() -> PathBuf {
    repo_root().join("fuzz")
}

/// The cargo command that builds every fuzz target with coverage instrumentation.
pub fn build_command(release: bool) -> Result<Command> {
    let triple = host_triple()?;
    let mut cmd = cargo();
    cmd.current_dir(fuzz_dir())
        .args(["build", "--bins", "--target", &triple])
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", RUSTFLAGS.join(" "));
    if release {
        cmd.arg("--release");
    }
    Ok(cmd)
}

/// Builds (release) and runs `target` for `seconds`, with the committed seeds in
/// `fuzz/seeds/<target>/` and the growing corpus in `fuzz/corpus/<target>/` (not
/// committed). A crash leaves its input in `fuzz/artifacts/<target>/`.
fn run(target: &str, seconds: u64) -> Result<()> {
    run_cmd(
        &mut build_command(true)?,
        "cargo build --release (fuzz targets)",
    )?;
    let dir = fuzz_dir();
    let triple = host_triple()?;
    let binary = dir
        .join("target")
        .join(&triple)
        .join("release")
        .join(target);
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut cmd = Command::new(&binary);
    cmd.current_dir(&dir)
        .arg(&corpus)
        .arg(dir.join("seeds").join(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg(format!("-dict={}", dir.join("pipeline.dict").display()))
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    run_cmd(
        &mut cmd,
        &format!("{} (fuzzing for {seconds} s)", binary.display()),
    )
    .with_context(|| {
        format!("the fuzz target found a crash; its input is in fuzz/artifacts/{target}/")
    })
}
