//! `cargo xtask services up|down|status`: local services for tests that need them.
//!
//! Each service is a module implementing [`Service`] and listed in [`all`]. A service
//! binds to 127.0.0.1 only, on the fixed port below, records the PID of what it
//! starts under `target/services/<name>/` and stops exactly that PID (never by
//! process name). `cargo xtask ci` runs `up` before the tests and `down` after them,
//! passing or failing.
//!
//! Tests find a service through an environment variable, falling back to the fixed
//! address, and fail loudly (never skip) when it does not answer:
//!
//! | service | address | variable |
//! |---|---|---|
//! | Redis | `redis://127.0.0.1:16379` | `SROTAX_TEST_REDIS_URL` |
//! | PostgreSQL | `postgres://srotax@127.0.0.1:15432/srotax` | `SROTAX_TEST_POSTGRES_URL` |
//! | Kafka-protocol broker | `127.0.0.1:19092` | `SROTAX_TEST_KAFKA_BOOTSTRAP` |

pub mod kafka;
mod postgres;
mod process;
mod redis;

pub use process::{running_pid, spawn_daemon, stop_daemon, tree_cpu_ticks};

use crate::repo_root;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A local service the tests can use.
pub trait Service {
    /// Short name, also the name of its state directory.
    fn name(&self) -> &'static str;
    /// Debian packages it needs installed before `up`.
    fn debian_packages(&self) -> &'static [&'static str] {
        &[]
    }
    /// Starts the service (a no-op when it already runs), keeping its files in `dir`.
    fn up(&self, dir: &Path) -> Result<()>;
    /// Stops the service started by [`Service::up`].
    fn down(&self, dir: &Path) -> Result<()>;
    /// One line: running (with address and PID) or stopped.
    fn status(&self, dir: &Path) -> Result<String>;
}

/// Debian packages the workspace needs to *build* (C dependencies of -sys crates).
/// `cmake` builds the bundled librdkafka (feature `kafka` of `stream-connect`); librdkafka
/// 2.12 includes `curl/curl.h` even with curl off, hence `libcurl4-openssl-dev`.
pub const BUILD_PACKAGES: &[&str] = &["cmake", "libcurl4-openssl-dev", "pkg-config", "zlib1g-dev"];

/// Every service, in start order.
fn all() -> Vec<Box<dyn Service>> {
    vec![
        Box::new(redis::Redis),
        Box::new(postgres::Postgres),
        Box::new(kafka::Kafka),
    ]
}

fn state_dir(service: &dyn Service) -> PathBuf {
    repo_root()
        .join("target")
        .join("services")
        .join(service.name())
}

/// Installs the Debian packages that are not installed yet (`apt-get update` first).
pub fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !debian_package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let as_root = |args: &[&str]| -> Command {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut c = Command::new(if root { "apt-get" } else { "sudo" });
        if !root {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    crate::run_cmd(&mut as_root(&["update", "-qq"]), "apt-get update")?;
    let mut install = as_root(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    crate::run_cmd(&mut install, "apt-get install")
        .with_context(|| format!("installing {}", missing.join(" ")))
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Starts every service (installing what it needs first).
pub fn up() -> Result<()> {
    up_only(&[])
}

/// Starts the named services (all when `names` is empty).
fn up_only(names: &[String]) -> Result<()> {
    for s in selected(names)? {
        ensure_debian_packages(s.debian_packages())?;
        let dir = state_dir(s.as_ref());
        std::fs::create_dir_all(&dir)?;
        s.up(&dir)
            .with_context(|| format!("starting service {}", s.name()))?;
        println!("{}: {}", s.name(), s.status(&dir)?);
    }
    Ok(())
}

/// Stops every service, trying all of them even when one fails.
pub fn down() -> Result<()> {
    let mut failed = Vec::new();
    for s in all().iter().rev() {
        match s.down(&state_dir(s.as_ref())) {
            Ok(()) => println!("{}: stopped", s.name()),
            Err(e) => failed.push(format!("{}: {e:#}", s.name())),
        }
    }
    if !failed.is_empty() {
        bail!("could not stop: {}", failed.join("; "));
    }
    Ok(())
}

/// The services called `names` (every service when empty).
fn selected(names: &[String]) -> Result<Vec<Box<dyn Service>>> {
    let all = all();
    for n in names {
        if !all.iter().any(|s| s.name() == n) {
            let known: Vec<&str> = all.iter().map(|s| s.name()).collect();
            bail!("unknown service {n} (known: {})", known.join(", "));
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name()))
        .collect())
}

/// `cargo xtask services up|down|status [SERVICE...]`
pub fn command(args: &[String]) -> Result<()> {
    let (action, names) = match args {
        [a, names @ ..] if matches!(a.as_str(), "up" | "down" | "status") => (a.as_str(), names),
        _ => bail!("usage: cargo xtask services up|down|status [SERVICE...]"),
    };
    match action {
        "up" => up_only(names),
        "down" if names.is_empty() => down(),
        "down" => {
            for s in selected(names)? {
                s.down(&state_dir(s.as_ref()))?;
                println!("{}: stopped", s.name());
            }
            Ok(())
        }
        _ => {
            for s in selected(names)? {
                println!("{}: {}", s.name(), s.status(&state_dir(s.as_ref()))?);
            }
            Ok(())
        }
    }
}
