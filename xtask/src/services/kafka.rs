//! A Kafka-protocol broker on 127.0.0.1:19092: noida-db 0.2.3 from PyPI, installed in a
//! virtualenv under `target/services/kafka/venv`, data under `target/services/kafka/data`.
//! Topics are created by the tests and samples that use them (the broker creates a
//! topic on first use; tests needing several partitions create them through the admin
//! API).

use super::{running_pid, spawn_daemon, stop_daemon, tree_cpu_ticks, Service};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The port the tests expect (`SROTAX_TEST_KAFKA_BOOTSTRAP` overrides it in tests).
pub const PORT: u16 = 19092;

/// The pinned broker version.
const NOIDA_DB: &str = "noida-db==0.2.3";

/// The Kafka-protocol broker service.
pub struct Kafka;

/// Installs noida-db into `dir/venv` (once) and returns the path of its broker binary.
/// The binary is run directly, not through the `venv/bin/noida-db` Python launcher,
/// which would start it as a child: the recorded PID must be the broker's own.
fn install(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    if let Some(bin) = broker_binary(&venv) {
        return Ok(bin);
    }
    crate::run_cmd(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )
    .context("creating the noida-db virtualenv (needs Debian python3-venv)")?;
    crate::run_cmd(
        Command::new(venv.join("bin").join("pip")).args(["install", "-q", NOIDA_DB]),
        "pip install noida-db",
    )?;
    broker_binary(&venv).with_context(|| {
        format!(
            "{NOIDA_DB} installed, but no noida_db/noida-db binary under {}",
            venv.display()
        )
    })
}

/// `venv/lib/python3.X/site-packages/noida_db/noida-db`, if installed.
fn broker_binary(venv: &Path) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/noida_db/noida-db"))
        .find(|p| p.is_file())
}

/// Starts a private broker on `port` with fresh, empty data in `dir/data` (PID in
/// `dir`; stop it with [`stop_private`]). noida-db rewrites all its data as one JSON
/// file from time to time, which takes seconds once other runs' topics pile up: a
/// benchmark on the shared broker measures that too.
pub fn start_private(services_dir: &Path, dir: &Path, port: u16) -> Result<()> {
    stop_private(dir)?;
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    spawn_broker(services_dir, dir, port)
}

/// Installs noida-db under `services_dir` (once) and starts it in the background on
/// 127.0.0.1:`port`, with its data in `dir/data` and its PID in `dir`.
fn spawn_broker(services_dir: &Path, dir: &Path, port: u16) -> Result<()> {
    let bin = install(services_dir)?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let mut cmd = Command::new(bin);
    cmd.args(["start", "--host", "127.0.0.1", "--only", "kafka"])
        .args(["--kafka-port", &port.to_string()])
        .arg("--data-dir")
        .arg(&data);
    spawn_daemon(dir, cmd, port, Duration::from_secs(20))?;
    Ok(())
}

/// Waits until the broker started by [`start_private`] in `dir` has used no CPU for
/// two seconds (at most `limit`; false if it never settled). After writes, and after
/// topics are created or deleted, noida-db rewrites all its data as one JSON file,
/// which keeps a core busy for seconds (with a pause of about a second between two
/// rewrites): a measurement started meanwhile would share the machine with it.
pub fn wait_until_private_idle(dir: &Path, limit: Duration) -> bool {
    const QUIET: Duration = Duration::from_secs(2);
    let Some(pid) = running_pid(dir) else {
        return true;
    };
    let started = Instant::now();
    let mut ticks = tree_cpu_ticks(pid);
    let mut quiet_since = Instant::now();
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let now = tree_cpu_ticks(pid);
        // One tick (10 ms) per 100 ms is background noise, more is work.
        if now > ticks + 1 {
            quiet_since = Instant::now();
        }
        ticks = now;
        if quiet_since.elapsed() >= QUIET {
            return true;
        }
    }
    false
}

/// Stops a broker started by [`start_private`] (by its recorded PID).
pub fn stop_private(dir: &Path) -> Result<()> {
    stop_daemon(dir, Duration::from_secs(30))
}

impl Service for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn debian_packages(&self) -> &'static [&'static str] {
        &["python3-venv"]
    }

    fn up(&self, dir: &Path) -> Result<()> {
        if running_pid(dir).is_some() {
            return Ok(());
        }
        spawn_broker(dir, dir, PORT)
    }

    fn down(&self, dir: &Path) -> Result<()> {
        stop_daemon(dir, Duration::from_secs(5))
    }

    fn status(&self, dir: &Path) -> Result<String> {
        Ok(match running_pid(dir) {
            Some(pid) => format!("running on 127.0.0.1:{PORT} (pid {pid})"),
            None => "stopped".into(),
        })
    }
}
