//! Private server processes for tests that must kill or restart a server: each runs on a
//! free port from the installed binary and is stopped by its PID.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until 127.0.0.1:`port` accepts connections; panics after `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private server process, killed (by its PID) on drop.
pub struct Server {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// The process; `None` once stopped.
    pub child: Option<Child>,
}

impl Server {
    /// Spawns `command` (output discarded) and waits up to `startup` for it to listen
    /// on `port`; `what` names the server when it cannot start.
    pub fn spawn(mut command: Command, port: u16, startup: Duration, what: &str) -> Server {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{what} cannot start ({e}): run `cargo xtask services up` (it installs it)")
            });
        // Owned before waiting, so that a server that never listens is killed too.
        let server = Server {
            port,
            child: Some(child),
        };
        wait_for_port(port, startup);
        server
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (a `libc::SIG*` number) and waits for the server to exit.
    pub fn stop_with(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain signal delivery to our own child.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a private `redis-server` on `port` keeping an append-only file (fsync on
/// every write) in `dir`, so data survives a restart.
pub fn start_redis(dir: &Path, port: u16) -> Server {
    let mut c = Command::new("redis-server");
    c.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .args(["--daemonize", "no", "--dir"])
        .arg(dir);
    Server::spawn(c, port, Duration::from_secs(10), "redis-server")
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` of PostgreSQL 15, as the `postgres` user when root (it refuses root).
fn pg_command(program: &str) -> Command {
    let path = Path::new(PG_BIN).join(program);
    assert!(
        path.exists(),
        "{} is missing: PostgreSQL 15 must be installed (`cargo xtask services up`)",
        path.display()
    );
    if is_root() {
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

/// Creates a private PostgreSQL cluster in `data` (superuser `srotax`, trust auth).
pub fn init_postgres(data: &Path) {
    std::fs::create_dir_all(data).unwrap();
    if is_root() {
        // The temp directory and the data directory must be reachable by `postgres`.
        let mut p = data.to_path_buf();
        loop {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
            if !p.pop() || p == std::env::temp_dir() {
                break;
            }
        }
        let st = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(data)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let out = pg_command("initdb")
        .arg("-D")
        .arg(data)
        .args(["-U", "srotax", "--auth=trust", "--no-sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the postmaster of the cluster in `data` (see [`init_postgres`]) on `port`;
/// its database `postgres` is open to user `srotax`.
pub fn start_postgres(data: &Path, port: u16) -> Server {
    let mut c = pg_command("postgres");
    c.arg("-D").arg(data).arg("-k").arg(data).args([
        "-p",
        &port.to_string(),
        "-c",
        "listen_addresses=127.0.0.1",
    ]);
    Server::spawn(c, port, Duration::from_secs(30), "postgres")
}
