//! Exactly-once from Kafka to Kafka with `srotax run`: the process is killed with
//! `kill -9` several times mid-stream; the `read_committed` output must equal that of
//! an uninterrupted run — no loss, no duplicates, `$group` state neither behind nor
//! ahead of the output. Runs a private noida-db broker (installed by
//! `cargo xtask services up`) on a free port.

use rdkafka::producer::FutureRecord;
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stream_core::value::{parse_document, Value};
use test_support::kafka::{create_topics, read_topic, start_broker, Committed, Producer};
use test_support::{KillOnDrop, Server, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_srotax");
const ORDERS: i64 = 20_000;
const PARTITIONS: i32 = 3;

/// A private broker (killed on drop, before its directory is removed) and the files of
/// the test.
struct Broker {
    _broker: Server,
    bootstrap: String,
    dir: TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = TempDir::new("kafka-eo");
        let broker = start_broker(&dir.path().join("data"));
        Broker {
            bootstrap: broker.address(),
            _broker: broker,
            dir,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.file(name)
    }
}

fn setup(bootstrap: &str) {
    create_topics(
        bootstrap,
        &["orders", "ltv-a", "paid-a", "ltv-b", "paid-b"],
        PARTITIONS,
    );
    // Enqueue everything, then wait for the delivery reports.
    let mut producer = Producer::new(bootstrap);
    for i in 0..ORDERS {
        let status = if i % 3 == 0 { "PENDING" } else { "PAID" };
        let value = format!(
            r#"{{"orderId": {i}, "customerId": "c{}", "status": "{status}", "amount": {}}}"#,
            i % 40,
            i % 7 + 1
        );
        let key = format!("c{}", i % 40);
        producer.send(FutureRecord::to("orders").key(&key).payload(&value));
    }
    producer.flush();
}

/// Two pipelines: per-customer totals (`$group`, keyed by customer so each customer's
/// updates stay in order) and the paid order ids. Static group membership
/// (`group.instance.id`) lets a restarted process take over its killed predecessor's
/// membership at once.
fn definitions(broker: &Broker, suffix: &str) -> Vec<String> {
    let common = |id: &str, pipeline: &str, out: &str, key: &str| {
        format!(
            r#"{{"pipelineId": "{id}-{suffix}",
                "source": {{"type": "kafka", "options": {{"bootstrapServers": "{b}", "topics": "orders",
                    "maxOffsetsPerTrigger": 60,
                    "properties": {{"group.instance.id": "{id}-{suffix}"}}}}}},
                "pipeline": {pipeline},
                "sink": {{"type": "kafka", "options": {{"bootstrapServers": "{b}", "topic": "{out}-{suffix}", "key": "{key}"}}}},
                "runtime": {{"microBatchSize": 60, "maxBatchDelay": "20 ms", "checkpointInterval": "150 ms",
                             "processingGuarantee": "exactly_once"}},
                "state": {{"type": "file", "options": {{"path": "{state}"}}}}}}"#,
            b = broker.bootstrap,
            state = broker.file(&format!("state-{suffix}")),
        )
    };
    let ltv = common(
        "ltv",
        r#"[{"$match": {"status": "PAID"}}, {"$group": {"_id": "$customerId", "count": {"$count": {}}, "total": {"$sum": "$amount"}}}]"#,
        "ltv",
        "$_id",
    );
    let paid = common(
        "paid",
        r#"[{"$match": {"status": "PAID"}}, {"$project": {"_id": "$orderId"}}]"#,
        "paid",
        "$_id",
    );
    [("ltv", ltv), ("paid", paid)]
        .into_iter()
        .map(|(name, text)| {
            let path = broker.file(&format!("{name}-{suffix}.json"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// Starts `srotax run`, its log appended to `log`.
fn spawn(defs: &[String], log: &str) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(BIN)
        .arg("run")
        .args(defs)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(KillOnDrop)
        .unwrap()
}

fn tail(log: &str) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until both pipelines consumed all orders, then stops the process gracefully.
fn finish(bootstrap: &str, mut child: KillOnDrop, suffix: &str, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let ltv = Committed::new(bootstrap, &format!("srotax-ltv-{suffix}"), "orders");
    let paid = Committed::new(bootstrap, &format!("srotax-paid-{suffix}"), "orders");
    while ltv.sum() < ORDERS || paid.sum() < ORDERS {
        assert!(
            child.try_wait().unwrap().is_none(),
            "srotax run ({suffix}) exited early:\n{}",
            tail(log)
        );
        assert!(
            Instant::now() < deadline,
            "{suffix}: not done after 120 s:\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "graceful stop ({suffix})");
}

/// Every committed message of `topic`, in order per partition, as documents.
fn read_committed(bootstrap: &str, topic: &str) -> Vec<stream_core::Document> {
    read_topic(bootstrap, topic, 0, Duration::from_secs(3))
        .iter()
        .map(|r| parse_document(&r.payload).unwrap())
        .collect()
}

/// Final (count, total) per customer; asserts that each customer's successive updates
/// strictly grow, i.e. no update was emitted twice from replayed state.
fn final_totals(updates: &[stream_core::Document]) -> BTreeMap<String, (i64, i64)> {
    let mut last: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for d in updates {
        let id = d.get("_id").and_then(Value::as_str).unwrap().to_string();
        let count = d.get("count").and_then(Value::as_i64_exact).unwrap();
        let total = d.get("total").and_then(Value::as_i64_exact).unwrap();
        if let Some(&(c, _)) = last.get(&id) {
            assert!(
                count > c,
                "{id}: count {count} after {c}: an update was repeated"
            );
        }
        last.insert(id, (count, total));
    }
    last
}

fn paid_ids(docs: &[stream_core::Document]) -> HashMap<i64, usize> {
    let mut seen = HashMap::new();
    for d in docs {
        *seen
            .entry(d.get("_id").and_then(Value::as_i64_exact).unwrap())
            .or_default() += 1;
    }
    seen
}

#[test]
fn kill_9_several_times_gives_the_output_of_an_uninterrupted_run() {
    let broker = Broker::start();
    setup(&broker.bootstrap);

    // The reference: an uninterrupted run.
    let reference = definitions(&broker, "a");
    let log = broker.file("a.log");
    finish(&broker.bootstrap, spawn(&reference, &log), "a", &log);

    // The same pipelines, killed with SIGKILL mid-stream several times.
    let defs = definitions(&broker, "b");
    let log = broker.file("b.log");
    // Each round kills the process as soon as a checkpoint committed some progress, so
    // that a fast machine cannot finish the input in one round; rounds continue until
    // three kills landed mid-stream.
    let committed = Committed::new(&broker.bootstrap, "srotax-ltv-b", "orders");
    let mut kills_mid_stream = 0;
    let mut progress = Vec::new();
    while kills_mid_stream < 3 {
        assert!(
            progress.len() < 10,
            "only {kills_mid_stream} of {} kills happened mid-stream (committed offsets after each: {progress:?})",
            progress.len()
        );
        let mut child = spawn(&defs, &log);
        let before = committed.sum();
        let started = Instant::now();
        // Kill once it made some progress (or after a while: the group may still be
        // waiting for the killed member's session to time out).
        while committed.sum() <= before && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let now = committed.sum();
        progress.push(now);
        if now > 0 && now < ORDERS {
            kills_mid_stream += 1;
        }
    }
    finish(&broker.bootstrap, spawn(&defs, &log), "b", &log);

    let expected_paid = (0..ORDERS).filter(|i| i % 3 != 0).count();
    let reference_paid = paid_ids(&read_committed(&broker.bootstrap, "paid-a"));
    let paid = paid_ids(&read_committed(&broker.bootstrap, "paid-b"));
    assert_eq!(reference_paid.len(), expected_paid);
    assert_eq!(paid.len(), expected_paid, "no paid order lost");
    let duplicated: Vec<_> = paid.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated outputs: {duplicated:?}");

    let reference_ltv = final_totals(&read_committed(&broker.bootstrap, "ltv-a"));
    let ltv = final_totals(&read_committed(&broker.bootstrap, "ltv-b"));
    assert_eq!(
        ltv, reference_ltv,
        "$group totals equal the uninterrupted run's"
    );
    let orders: i64 = ltv.values().map(|(c, _)| c).sum();
    assert_eq!(orders as usize, expected_paid);
    let fallbacks = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("resuming from the one before")
        .count();
    eprintln!(
        "exactly-once: {kills_mid_stream} kill -9 mid-stream (committed offsets after each kill: {progress:?}) ({fallbacks} restarts found the latest checkpoint's transaction uncommitted); {} paid orders once each; {} customers' totals equal the uninterrupted run",
        paid.len(),
        ltv.len()
    );
}
