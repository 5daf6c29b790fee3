//! Scale-out by consumer group: three `srotax run` processes with the same `groupId`
//! run the orders-ltv pipeline (`$match` PAID → `$group` per customer) on a 6-partition
//! topic while orders keep arriving, with their state in a shared Redis. One is stopped
//! mid-stream; its partitions move to the other two *with their `$group` state*; the
//! last value of every customer in the output equals the exact totals of the input
//! (nothing lost, nothing counted twice). Uses the broker and Redis of
//! `cargo xtask services up` (127.0.0.1:19092 and redis://127.0.0.1:16379, or
//! `SROTAX_TEST_KAFKA_BOOTSTRAP` / `SROTAX_TEST_REDIS_URL`).
//!
//! A second test kills a process with `kill -9` and restarts it: the records after its
//! partitions' last saved state are read again and applied on top of exactly that
//! state, so the totals stay exact. (The noida-db broker never expires a dead member,
//! so the restarted process takes its place through static membership,
//! `group.instance.id`, instead of the others taking its partitions.)

use rdkafka::producer::FutureRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use stream_core::value::{parse_document, Value};
use test_support::kafka::{bootstrap, create_topics, read_topic, Committed, Producer};
use test_support::{redis_url, unique, KillOnDrop, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_srotax");
const PARTITIONS: i32 = 6;
const ROUNDS: i64 = 90;
const PER_ROUND: i64 = 200;
const CUSTOMERS: i64 = 97;

/// Order `id`: customer, paid or not, value (integers, so sums are exact).
fn order(id: i64) -> (String, bool, i64) {
    (format!("c{}", id % CUSTOMERS), id % 5 != 0, id % 50 + 1)
}

/// The partitions named in the last "kafka partitions assigned" line of a log.
fn last_assignment(log: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(line) = text
        .lines()
        .rev()
        .find(|l| l.contains("kafka partitions assigned"))
    else {
        return BTreeSet::new();
    };
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn signal(child: &mut Child, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn stop(child: &mut Child) {
    signal(child, "-TERM");
    assert!(child.wait().unwrap().success(), "graceful stop");
}

/// A topic, an output topic, a group and a definition shared by `srotax run`
/// processes; a producer of orders into the topic.
struct Scenario {
    bootstrap: String,
    input: String,
    output: String,
    group: String,
    dir: TempDir,
    def: String,
    /// Opened at the first look, not with the scenario: no other client of the group
    /// exists before the test looks.
    committed: OnceLock<Committed>,
}

impl Scenario {
    /// `static_members`: each process gets `group.instance.id` `${INSTANCE}`.
    fn new(name: &str, static_members: bool) -> Scenario {
        let bootstrap = bootstrap();
        let redis = redis_url();
        let run_id = unique(name);
        let (input, output, group) = (
            format!("scale-in-{run_id}"),
            format!("scale-out-{run_id}"),
            format!("scale-group-{run_id}"),
        );
        let dir = TempDir::new("scale-out");
        create_topics(&bootstrap, &[&input], PARTITIONS);
        let properties = if static_members {
            r#", "properties": {"group.instance.id": "${INSTANCE}"}"#
        } else {
            ""
        };
        // One definition for every process, one shared state store.
        let def = dir.file("scale.json");
        std::fs::write(
            &def,
            format!(
                r#"{{"pipelineId": "scale-out-{run_id}",
                    "source": {{"type": "kafka", "options": {{"bootstrapServers": "{bootstrap}", "topics": "{input}", "groupId": "{group}",
                        "maxOffsetsPerTrigger": 50{properties}}}}},
                    "pipeline": [
                        {{"$match": {{"status": "PAID"}}}},
                        {{"$group": {{"_id": "$customerId", "orderCount": {{"$count": {{}}}}, "lifetimeValue": {{"$sum": "$orderValue"}}}}}}
                    ],
                    "sink": {{"type": "kafka", "options": {{"bootstrapServers": "{bootstrap}", "topic": "{output}", "key": "$_id"}}}},
                    "runtime": {{"microBatchSize": 50, "maxBatchDelay": "20 ms", "checkpointInterval": "100 ms"}},
                    "state": {{"type": "redis", "options": {{"url": "{redis}", "keyPrefix": "srotax-scale-out"}}}}}}"#
            ),
        )
        .unwrap();
        Scenario {
            bootstrap,
            input,
            output,
            group,
            dir,
            def,
            committed: OnceLock::new(),
        }
    }

    fn log(&self, i: usize) -> String {
        self.dir.file(&format!("p{i}.log"))
    }

    /// Starts process `i` (appending to its log).
    fn spawn(&self, i: usize) -> KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        Command::new(BIN)
            .arg("run")
            .arg(&self.def)
            .env("INSTANCE", format!("p{i}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    }

    /// Orders keep arriving while the processes join, share and hand over.
    fn produce(&self) -> std::thread::JoinHandle<()> {
        let bootstrap = self.bootstrap.clone();
        let topic = self.input.clone();
        std::thread::spawn(move || {
            let mut p = Producer::new(&bootstrap);
            for round in 0..ROUNDS {
                for j in 0..PER_ROUND {
                    let id = round * PER_ROUND + j;
                    let (customer, paid, value) = order(id);
                    let status = if paid { "PAID" } else { "NEW" };
                    let doc = format!(
                        r#"{{"id": {id}, "customerId": "{customer}", "status": "{status}", "orderValue": {value}}}"#
                    );
                    // Keyed by customer: a customer's orders are all in one partition.
                    p.send(FutureRecord::to(&topic).key(&customer).payload(&doc));
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            p.flush();
        })
    }

    /// How many messages the group consumed (committed).
    fn committed(&self) -> i64 {
        self.committed
            .get_or_init(|| Committed::new(&self.bootstrap, &self.group, &self.input))
            .sum()
    }

    /// Waits until the group committed at least `n` offsets.
    fn wait_committed(&self, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.committed() < n {
            assert!(
                Instant::now() < deadline,
                "after {within:?} only {} of {n} consumed",
                self.committed()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Checks that the last value of each customer in the output is its exact total
    /// over the whole input; returns how many updates were read.
    fn assert_exact_totals(&self) -> (usize, usize) {
        let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for id in 0..ROUNDS * PER_ROUND {
            let (customer, paid, value) = order(id);
            if paid {
                let e = expected.entry(customer).or_default();
                e.0 += 1;
                e.1 += value;
            }
        }
        // Upserts keyed by customer: one output partition per key keeps them in order.
        let mut last_value: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let records = read_topic(&self.bootstrap, &self.output, 0, Duration::from_secs(3));
        for r in &records {
            let d = parse_document(&r.payload).unwrap();
            let field = |f: &str| d.get(f).and_then(Value::as_i64_exact).unwrap();
            let id = d.get("_id").and_then(Value::as_str).unwrap().to_string();
            last_value.insert(id, (field("orderCount"), field("lifetimeValue")));
        }
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(c, e)| last_value.get(*c) != Some(e))
            .map(|(c, e)| format!("{c}: expected {e:?}, got {:?}", last_value.get(c)))
            .collect();
        assert!(
            wrong.is_empty() && last_value.len() == expected.len(),
            "{} of {} customers wrong (count, sum): {:?}",
            wrong.len(),
            expected.len(),
            &wrong[..wrong.len().min(10)]
        );
        (expected.len(), records.len())
    }
}

#[test]
fn three_processes_share_a_topic_and_take_over_a_stopped_ones_partitions_and_state() {
    let s = Scenario::new("stop", false);
    let producing = s.produce();
    let mut children: Vec<KillOnDrop> = (0..3).map(|i| s.spawn(i)).collect();
    // Wait until the three share the six partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sizes: Vec<usize> = (0..3).map(|i| last_assignment(&s.log(i)).len()).collect();
        if sizes.iter().all(|&n| n > 0) && sizes.iter().sum::<usize>() == PARTITIONS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the three processes did not share the partitions: {sizes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the three work together for a while, then stop one mid-stream.
    s.wait_committed(3000, Duration::from_secs(60));
    let before = s.committed();
    let total = ROUNDS * PER_ROUND;
    assert!(before < total, "stopped mid-stream");
    let stopped = last_assignment(&s.log(1));
    stop(&mut children[1]);

    producing.join().unwrap();
    s.wait_committed(total, Duration::from_secs(90));
    let survivors: BTreeSet<String> = last_assignment(&s.log(0))
        .union(&last_assignment(&s.log(2)))
        .cloned()
        .collect();
    assert!(
        stopped.is_subset(&survivors),
        "the stopped process's partitions {stopped:?} moved to the others ({survivors:?})"
    );
    stop(&mut children[0]);
    stop(&mut children[2]);
    let (customers, updates) = s.assert_exact_totals();
    eprintln!(
        "scale-out: 3 processes, one stopped mid-stream at {before}/{total}; its partitions {stopped:?} moved with their state; all {customers} customers exact ({updates} updates read)"
    );
}

#[test]
fn a_process_killed_and_restarted_resumes_its_partitions_state_exactly() {
    let s = Scenario::new("kill", true);
    let producing = s.produce();
    let mut children: Vec<KillOnDrop> = (0..2).map(|i| s.spawn(i)).collect();
    let total = ROUNDS * PER_ROUND;
    s.wait_committed(3000, Duration::from_secs(60));
    // Killed twice mid-stream: output and state after its last checkpoint are lost.
    let mut kills = Vec::new();
    for _ in 0..2 {
        let at = s.committed();
        assert!(at < total, "killed mid-stream");
        signal(&mut children[0], "-KILL");
        children[0].wait().unwrap();
        kills.push(at);
        children[0] = s.spawn(0);
        s.wait_committed(at + 2000, Duration::from_secs(60));
    }
    producing.join().unwrap();
    s.wait_committed(total, Duration::from_secs(90));
    stop(&mut children[0]);
    stop(&mut children[1]);
    let (customers, updates) = s.assert_exact_totals();
    eprintln!(
        "scale-out: 2 processes, one killed with kill -9 at {kills:?}/{total} and restarted; all {customers} customers exact ({updates} updates read)"
    );
}
