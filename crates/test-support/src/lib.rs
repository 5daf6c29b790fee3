//! Helpers shared by the SrotaX tests, so that each exists once: the addresses of the
//! services of `cargo xtask services up` (checked, failing loudly when nothing answers),
//! names no other run uses, temporary directories, private server processes for fault
//! tests ([`Server`], [`start_redis`], [`start_postgres`]), and with the `kafka` feature
//! Kafka clients and a private broker ([`kafka`]).
//!
//! A dev-only crate (`publish = false`): crates use it as a dev-dependency, the Kafka
//! benchmark baseline as a dependency.
#![warn(missing_docs)]

#[cfg(feature = "kafka")]
pub mod kafka;
mod servers;

pub use servers::{free_port, init_postgres, start_postgres, start_redis, wait_for_port, Server};

use std::net::{TcpStream, ToSocketAddrs};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The Redis of `cargo xtask services up` (`SROTAX_TEST_REDIS_URL`, else
/// `redis://127.0.0.1:16379`); panics (never skips) when nothing answers there.
pub fn redis_url() -> String {
    service_address("SROTAX_TEST_REDIS_URL", "redis://127.0.0.1:16379", "Redis")
}

/// The PostgreSQL of `cargo xtask services up` (`SROTAX_TEST_POSTGRES_URL`, else
/// `postgres://srotax@127.0.0.1:15432/srotax`); panics (never skips) when nothing
/// answers there.
pub fn postgres_url() -> String {
    service_address(
        "SROTAX_TEST_POSTGRES_URL",
        "postgres://srotax@127.0.0.1:15432/srotax",
        "PostgreSQL",
    )
}

/// The address in `variable`, else `default`, after checking that a server accepts TCP
/// connections there: a test must fail, saying what to do, rather than skip.
fn service_address(variable: &str, default: &str, what: &str) -> String {
    let address = std::env::var(variable).unwrap_or_else(|_| default.into());
    let reachable = host_port(&address)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no {what} answers at {address}: run `cargo xtask services up` (or set {variable})"
    );
    address
}

/// The (first) `host:port` of `scheme://user@host:port/path` or of a Kafka list
/// `host:port,host:port`.
fn host_port(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let rest = rest.rsplit('@').next().unwrap_or_default();
    rest.split(['/', ',']).next().unwrap_or_default()
}

/// `name` made unique to this call (process id, time, counter), for topics, groups and
/// pipeline ids that no other test or earlier run uses on the shared services.
pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `srotax-NAME-…` (a [`unique`] name).
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(&format!("srotax-{name}")));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` in the directory, as a string (for definitions and commands).
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process (a `srotax run` under test) killed and reaped when dropped, so that
/// a failing test leaves no process behind. Dereferences to the [`Child`].
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Both fail harmlessly when the test already waited for the process.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_each_kind_of_address() {
        assert_eq!(host_port("redis://127.0.0.1:16379"), "127.0.0.1:16379");
        assert_eq!(host_port("redis://127.0.0.1:16379/"), "127.0.0.1:16379");
        assert_eq!(
            host_port("postgres://srotax@127.0.0.1:15432/srotax"),
            "127.0.0.1:15432"
        );
        assert_eq!(host_port("127.0.0.1:19092"), "127.0.0.1:19092");
        assert_eq!(
            host_port("127.0.0.1:19092,127.0.0.1:19093"),
            "127.0.0.1:19092"
        );
    }

    #[test]
    fn nothing_answering_fails_loudly_naming_the_fix() {
        let port = free_port(); // nothing listens there any more
        let variable = "SROTAX_TEST_SUPPORT_UNREACHABLE";
        std::env::set_var(variable, format!("redis://127.0.0.1:{port}"));
        let panic = std::panic::catch_unwind(|| service_address(variable, "", "Redis"))
            .expect_err("an unreachable service panics");
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("cargo xtask services up") && message.contains(variable),
            "{message}"
        );
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("t"), unique("t"));
    }
}
