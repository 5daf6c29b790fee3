//! `cargo xtask services up|down|status`: local services for tests that need them.
//!
//! Each service is a module implementing [`Service`] and listed in [`all`]. A service
//! binds to 127.0.0.1 only, records the PID of what it starts under
//! `target/services/<name>/` and stops exactly that PID (never by process name).
//! The current test suite needs none; later connectors (Redis, Kafka, ...) add theirs here.

use crate::repo_root;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A local service the tests can use.
pub trait Service {
    /// Short name, also the name of its state directory.
    fn name(&self) -> &'static str;
    /// Starts the service (a no-op when it already runs), keeping its files in `dir`.
    fn up(&self, dir: &Path) -> Result<()>;
    /// Stops the service started by [`Service::up`].
    fn down(&self, dir: &Path) -> Result<()>;
    /// One line: running (with address and PID) or stopped.
    fn status(&self, dir: &Path) -> Result<String>;
}

/// Every service, in start order.
fn all() -> Vec<Box<dyn Service>> {
    Vec::new()
}

fn state_dir(service: &dyn Service) -> PathBuf {
    repo_root()
        .join("target")
        .join("services")
        .join(service.name())
}

/// `cargo xtask services ...`
pub fn command(args: &[String]) -> Result<()> {
    let action = match args {
        [a] if matches!(a.as_str(), "up" | "down" | "status") => a.as_str(),
        _ => bail!("usage: cargo xtask services up|down|status"),
    };
    let services = all();
    if services.is_empty() {
        let what = match action {
            "up" => "nothing to start",
            "down" => "nothing to stop",
            _ => "nothing running",
        };
        println!("no services are needed by the current test suite; {what}");
        return Ok(());
    }
    match action {
        "up" => {
            for s in &services {
                let dir = state_dir(s.as_ref());
                std::fs::create_dir_all(&dir)?;
                s.up(&dir)?;
                println!("{}: {}", s.name(), s.status(&dir)?);
            }
        }
        "down" => {
            for s in services.iter().rev() {
                s.down(&state_dir(s.as_ref()))?;
                println!("{}: stopped", s.name());
            }
        }
        _ => {
            for s in &services {
                println!("{}: {}", s.name(), s.status(&state_dir(s.as_ref()))?);
            }
        }
    }
    Ok(())
}
