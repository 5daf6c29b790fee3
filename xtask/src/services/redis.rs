//! Redis (Debian `redis-server`) on 127.0.0.1:16379, in-memory only.

use super::{running_pid, spawn_daemon, stop_daemon, Service};
use anyhow::Result;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The port the tests expect (`SROTAX_TEST_REDIS_URL` overrides it in tests).
pub const PORT: u16 = 16379;

/// The Redis service.
pub struct Redis;

impl Service for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn debian_packages(&self) -> &'static [&'static str] {
        &["redis-server"]
    }

    fn up(&self, dir: &Path) -> Result<()> {
        if running_pid(dir).is_some() {
            return Ok(());
        }
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir);
        spawn_daemon(dir, cmd, PORT, Duration::from_secs(10))?;
        Ok(())
    }

    fn down(&self, dir: &Path) -> Result<()> {
        stop_daemon(dir, Duration::from_secs(5))
    }

    fn status(&self, dir: &Path) -> Result<String> {
        Ok(match running_pid(dir) {
            Some(pid) => format!("running on redis://127.0.0.1:{PORT} (pid {pid})"),
            None => "stopped".into(),
        })
    }
}
