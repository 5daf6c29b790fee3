//! Starting and stopping one background server by PID file.

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PID_FILE: &str = "pid";

/// The PID recorded in `dir`, if that process is still alive.
pub fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// CPU time (clock ticks) used so far by `pid` and every process below it; 0 once
/// it is gone.
pub fn tree_cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the ")" closing the command name come the fields from the 3rd on; utime
    // and stime are the 14th and 15th.
    let own: u64 = stat.rsplit_once(')').map_or(0, |(_, rest)| {
        rest.split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum()
    });
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return own;
    };
    let children: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .map(tree_cpu_ticks)
        .sum();
    own + children
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits until 127.0.0.1:`port` accepts connections; `log` is shown on failure.
fn wait_for_port(port: u16, timeout: Duration, log: &Path) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if port_open(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!(
        "nothing listens on 127.0.0.1:{port} after {timeout:?}; last lines of {}:\n{}",
        log.display(),
        tail.join("\n")
    )
}

/// Starts `cmd` in the background with its output in `dir/log`, records its PID in
/// `dir/pid`, and waits until it listens on `port`.
pub fn spawn_daemon(dir: &Path, mut cmd: Command, port: u16, timeout: Duration) -> Result<i32> {
    if port_open(port) {
        bail!("port 127.0.0.1:{port} is already taken by a process this tool did not start");
    }
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as i32;
    std::fs::write(dir.join(PID_FILE), pid.to_string())?;
    // The child outlives this process on purpose; it is stopped by PID later.
    std::mem::forget(child);
    wait_for_port(port, timeout, &log_path)?;
    Ok(pid)
}

/// Stops the process recorded in `dir` (SIGTERM, then SIGKILL after `grace`).
pub fn stop_daemon(dir: &Path, grace: Duration) -> Result<()> {
    let Some(pid) = running_pid(dir) else {
        let _ = std::fs::remove_file(dir.join(PID_FILE));
        return Ok(());
    };
    // SAFETY: plain signal delivery to a PID this tool recorded.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        // SAFETY: reaps the process when this tool started it in the same run (else
        // it would linger as a zombie); fails harmlessly with ECHILD otherwise.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        // SAFETY: as above; only probes.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_file(dir.join(PID_FILE));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    Ok(())
}
