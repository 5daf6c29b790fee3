//! A throwaway PostgreSQL 15 cluster on 127.0.0.1:15432 with user and database
//! `srotax` (trust authentication, loopback only).
//!
//! PostgreSQL refuses to run as root, so when this tool runs as root the cluster belongs
//! to the `postgres` user: its data directory is chowned to it and `initdb`/`postgres`
//! run through `setpriv`, which *execs* (no extra process), so the recorded PID is the
//! postmaster's own and stopping it (SIGTERM: smart shutdown) stops the cluster.

use super::{running_pid, spawn_daemon, stop_daemon, Service};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The port the tests expect (`SROTAX_TEST_POSTGRES_URL` overrides it in tests).
pub const PORT: u16 = 15432;

/// Where Debian's PostgreSQL 15 binaries live.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The PostgreSQL service.
pub struct Postgres;

/// `program` from [`BIN_DIR`], run as the `postgres` user when this process is root.
pub fn pg_command(program: &str) -> Command {
    let path = Path::new(BIN_DIR).join(program);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--reset-env",
        ])
        .arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// Creates a cluster in `data` (owned by `postgres` when root) whose superuser is
/// `srotax`, with trust authentication.
pub fn init_cluster(data: &Path) -> Result<()> {
    std::fs::create_dir_all(data)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        crate::run_cmd(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(data),
            "chown of the PostgreSQL data directory",
        )?;
    }
    let mut initdb = pg_command("initdb");
    initdb
        .arg("-D")
        .arg(data)
        .args(["-U", "srotax", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    let out = initdb.output().context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The postmaster command for the cluster in `data` on 127.0.0.1:`port` (foreground).
pub fn postmaster(data: &Path, port: u16) -> Command {
    let mut c = pg_command("postgres");
    c.arg("-D").arg(data).arg("-k").arg(data).args([
        "-p",
        &port.to_string(),
        "-c",
        "listen_addresses=127.0.0.1",
    ]);
    c
}

impl Service for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn debian_packages(&self) -> &'static [&'static str] {
        &["postgresql-15"]
    }

    fn up(&self, dir: &Path) -> Result<()> {
        if running_pid(dir).is_some() {
            return Ok(());
        }
        if !Path::new(BIN_DIR).join("postgres").exists() {
            bail!("PostgreSQL 15 is not installed in {BIN_DIR} (Debian package postgresql-15)");
        }
        let data = dir.join("data");
        let marker = dir.join("database-created");
        if !data.join("PG_VERSION").exists() {
            let _ = std::fs::remove_file(&marker);
            init_cluster(&data)?;
        }
        spawn_daemon(dir, postmaster(&data, PORT), PORT, Duration::from_secs(30))?;
        if !marker.exists() {
            // The port opens before the cluster accepts logins: wait for it.
            let mut ready = pg_command("pg_isready");
            ready.args(["-h", "127.0.0.1", "-p", &PORT.to_string(), "-t", "30"]);
            crate::run_cmd(&mut ready, "pg_isready")?;
            let mut createdb = pg_command("createdb");
            createdb.args([
                "-h",
                "127.0.0.1",
                "-p",
                &PORT.to_string(),
                "-U",
                "srotax",
                "srotax",
            ]);
            crate::run_cmd(&mut createdb, "createdb srotax")?;
            std::fs::write(&marker, "")?;
        }
        Ok(())
    }

    fn down(&self, dir: &Path) -> Result<()> {
        // SIGINT is PostgreSQL's fast shutdown (disconnects sessions, then stops the
        // backends); SIGTERM, sent next by `stop_daemon`, would wait for sessions to end.
        if let Some(pid) = running_pid(dir) {
            // SAFETY: plain signal delivery to the PID this tool recorded.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        stop_daemon(dir, Duration::from_secs(20))
    }

    fn status(&self, dir: &Path) -> Result<String> {
        Ok(match running_pid(dir) {
            Some(pid) => {
                format!("running on postgres://srotax@127.0.0.1:{PORT}/srotax (pid {pid})")
            }
            None => "stopped".into(),
        })
    }
}
