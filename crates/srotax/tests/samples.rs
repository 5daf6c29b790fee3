//! Runs the sample command shown in the README's Quick start and compares its output
//! with `samples/orders-ltv/expected.jsonl`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The arguments after `--` of the README's `cargo run --release -p srotax -- ...` line.
fn readme_sample_args() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let prefix = "cargo run --release -p srotax -- ";
    let line = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("README.md has no line starting with `{prefix}`"));
    line[prefix.len()..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_sample_command_gives_the_expected_output() {
    let args = readme_sample_args();
    assert_eq!(
        args.first().map(String::as_str),
        Some("eval"),
        "sample command: {args:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_srotax"))
        .args(&args)
        .current_dir(repo_root())
        .env_remove("RUST_LOG")
        .output()
        .expect("run srotax");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "srotax {args:?} failed: {stderr}");
    assert_eq!(stderr, "");
    let expected = std::fs::read_to_string(repo_root().join("samples/orders-ltv/expected.jsonl"))
        .expect("read expected.jsonl");
    let actual = String::from_utf8_lossy(&out.stdout);
    let expected: Vec<&str> = expected.lines().collect();
    let actual: Vec<&str> = actual.lines().collect();
    assert_eq!(actual, expected);
}
