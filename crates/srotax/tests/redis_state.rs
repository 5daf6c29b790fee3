//! `srotax run` with the Redis state store (`cargo xtask services up`), killed with
//! `kill -9` in the middle of runs and restarted: the final output is exactly that of an
//! uninterrupted run.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use test_support::{redis_url, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_srotax");

fn redis_connection() -> TcpStream {
    let url = redis_url();
    TcpStream::connect(url.trim_start_matches("redis://").trim_end_matches('/')).unwrap()
}

/// How many checkpoints Redis holds for `pipeline` (ZCARD of its index).
fn stored_checkpoints(pipeline: &str) -> i64 {
    let key = format!("srotax-e2e-{}:{{{pipeline}}}:cps", std::process::id());
    let mut con = redis_connection();
    write!(con, "*2\r\n$5\r\nZCARD\r\n${}\r\n{key}\r\n", key.len()).unwrap();
    let mut line = String::new();
    BufReader::new(con).read_line(&mut line).unwrap();
    line.trim().trim_start_matches(':').parse().unwrap()
}

/// The orders pipeline of `samples/orders-ltv/streaming.json` with Redis state; the URL
/// comes from the environment through `${VAR}` substitution, as a deployment would do.
fn definition(dir: &TempDir, id: &str, pipeline: &str) -> String {
    let def = format!(
        r#"{{"pipelineId": "{id}",
            "source": {{"type": "file", "options": {{"path": "{input}"}}}},
            "pipeline": {pipeline},
            "sink": {{"type": "file", "options": {{"path": "{output}"}}}},
            "runtime": {{"microBatchSize": 500, "checkpointInterval": "50 ms"}},
            "state": {{"type": "redis", "options": {{
                "url": "${{SROTAX_TEST_REDIS_URL:-redis://127.0.0.1:16379}}",
                "keyPrefix": "srotax-e2e-{pid}"}}}}}}"#,
        input = dir.file("orders.jsonl"),
        output = dir.file(&format!("{id}.out.jsonl")),
        pid = std::process::id(),
    );
    let path = dir.file(&format!("{id}.json"));
    std::fs::write(&path, def).unwrap();
    path
}

fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn run_to_end(def: &str) {
    let out = Command::new(BIN).args(["run", def]).output().unwrap();
    assert!(
        out.status.success(),
        "srotax run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `def` and SIGKILLs it after each delay (if it is still running).
fn kill_after(def: &str, delays_ms: &[u64]) -> usize {
    let mut killed = 0;
    for &delay in delays_ms {
        let mut child = Command::new(BIN)
            .args(["run", def])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(delay) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
    }
    killed
}

fn same_output_after_kills(name: &str, pipeline: &str) {
    drop(redis_connection());
    let dir = TempDir::new(&format!("redis-{name}"));
    stream_connect::write_orders_jsonl(dir.file("orders.jsonl"), 60_000, 7).unwrap();
    let reference_def = definition(&dir, &format!("{name}-reference"), pipeline);
    run_to_end(&reference_def);
    let reference = lines(&dir.file(&format!("{name}-reference.out.jsonl")));
    assert!(reference.len() > 100, "{} lines", reference.len());
    // The orchestrator prunes old checkpoints: 10 kept, pruned every 10th.
    let kept = stored_checkpoints(&format!("{name}-reference"));
    assert!((1..20).contains(&kept), "{kept} checkpoints stored");

    let def = definition(&dir, name, pipeline);
    let killed = kill_after(&def, &[200, 350, 500]);
    assert!(
        killed >= 1,
        "the run finished before it could be killed; use more input"
    );
    run_to_end(&def);
    assert_eq!(
        lines(&dir.file(&format!("{name}.out.jsonl"))),
        reference,
        "after {killed} kill -9 the output must equal the uninterrupted run's"
    );
}

#[test]
fn orders_ltv_with_redis_state_survives_kill_9() {
    same_output_after_kills(
        "ltv",
        r#"[{"$match": {"status": "PAID"}},
            {"$group": {"_id": "$customerId", "orderCount": {"$count": {}}, "lifetimeValue": {"$sum": "$orderValue"}}},
            {"$sort": {"lifetimeValue": -1, "_id": 1}}]"#,
    );
}

#[test]
fn paid_orders_with_redis_state_survive_kill_9_without_duplicates() {
    same_output_after_kills(
        "paid",
        r#"[{"$match": {"status": "PAID"}}, {"$project": {"_id": "$orderId", "v": "$orderValue"}}]"#,
    );
}
