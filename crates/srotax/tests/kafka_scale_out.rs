//! Scale-out by consumer group: three `srotax run` processes with the same `groupId`
//! share a 6-partition topic while orders keep arriving; one is stopped mid-stream and
//! its partitions move to the other two; every input reaches the output (at-least-once:
//! nothing lost). Uses the broker of `cargo xtask services up` (127.0.0.1:19092, or
//! `SROTAX_TEST_KAFKA_BOOTSTRAP`).
//!
//! The pipeline is stateless: keyed state does not move with partitions yet (see
//! docs/connectors/kafka.md, "Scaling and rebalances").

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use std::collections::{BTreeSet, HashMap};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stream_core::value::{parse_document, Value};

const BIN: &str = env!("CARGO_BIN_EXE_srotax");
const PARTITIONS: i32 = 6;
const ROUNDS: i64 = 60;
const PER_ROUND: i64 = 200;

fn bootstrap() -> String {
    let addr =
        std::env::var("SROTAX_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no Kafka broker on {addr}: run `cargo xtask services up` (or set SROTAX_TEST_KAFKA_BOOTSTRAP)"
    );
    addr
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

fn committed_total(bootstrap: &str, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = client(bootstrap).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let sum = c
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    drop(c); // before the consumer (librdkafka hangs otherwise)
    sum
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

fn stop(child: &mut Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(child.wait().unwrap().success(), "graceful stop");
}

#[test]
fn three_processes_share_a_topic_and_take_over_a_stopped_ones_partitions() {
    let bootstrap = bootstrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let run_id = format!("{}-{nanos}", std::process::id());
    let (input, output, group) = (
        format!("scale-in-{run_id}"),
        format!("scale-out-{run_id}"),
        format!("scale-group-{run_id}"),
    );
    let dir = std::env::temp_dir().join(format!("srotax-scale-out-{run_id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = client(&bootstrap).create().unwrap();
        for r in admin
            .create_topics(
                &[NewTopic::new(
                    &input,
                    PARTITIONS,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new(),
            )
            .await
            .unwrap()
        {
            r.unwrap();
        }
    });

    // One definition, one state directory per process (`${STATE_DIR}`).
    let def = dir.join("scale.json");
    std::fs::write(
        &def,
        format!(
            r#"{{"pipelineId": "scale-out",
                "source": {{"type": "kafka", "options": {{"bootstrapServers": "{bootstrap}", "topics": "{input}", "groupId": "{group}",
                    "maxOffsetsPerTrigger": 50}}}},
                "pipeline": [{{"$project": {{"_id": "$id", "by": "$_stream_meta.source.partition"}}}}],
                "sink": {{"type": "kafka", "options": {{"bootstrapServers": "{bootstrap}", "topic": "{output}"}}}},
                "runtime": {{"microBatchSize": 50, "maxBatchDelay": "20 ms", "checkpointInterval": "100 ms"}},
                "state": {{"type": "file", "options": {{"path": "${{STATE_DIR}}"}}}}}}"#
        ),
    )
    .unwrap();
    let logs: Vec<String> = (0..3)
        .map(|i| dir.join(format!("p{i}.log")).display().to_string())
        .collect();
    let spawn = |i: usize| {
        Command::new(BIN)
            .arg("run")
            .arg(&def)
            .env("STATE_DIR", dir.join(format!("state-{i}")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&logs[i]).unwrap())
            .spawn()
            .unwrap()
    };

    // Orders keep arriving while the processes join, share and hand over.
    let producer_bootstrap = bootstrap.clone();
    let producer_topic = input.clone();
    let producing = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let p: FutureProducer = client(&producer_bootstrap).create().unwrap();
            for round in 0..ROUNDS {
                for j in 0..PER_ROUND {
                    let id = round * PER_ROUND + j;
                    let value = format!(r#"{{"id": {id}}}"#);
                    let key = format!("k{}", id % 97);
                    p.send_result(FutureRecord::to(&producer_topic).key(&key).payload(&value))
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
        });
    });

    let mut children: Vec<Child> = (0..3).map(spawn).collect();
    // Wait until the three share the six partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sizes: Vec<usize> = logs.iter().map(|l| last_assignment(l).len()).collect();
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_total(&bootstrap, &group, &input) < 3000 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = committed_total(&bootstrap, &group, &input);
    assert!(before < ROUNDS * PER_ROUND, "stopped mid-stream");
    let stopped = last_assignment(&logs[1]);
    stop(&mut children[1]);

    producing.join().unwrap();
    let total = ROUNDS * PER_ROUND;
    let deadline = Instant::now() + Duration::from_secs(90);
    while committed_total(&bootstrap, &group, &input) < total {
        assert!(
            Instant::now() < deadline,
            "after 90 s only {} of {total} consumed",
            committed_total(&bootstrap, &group, &input)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let survivors: BTreeSet<String> = last_assignment(&logs[0])
        .union(&last_assignment(&logs[2]))
        .cloned()
        .collect();
    assert!(
        stopped.is_subset(&survivors),
        "the stopped process's partitions {stopped:?} moved to the others ({survivors:?})"
    );
    stop(&mut children[0]);
    stop(&mut children[2]);

    // Every order reached the output, from all six partitions.
    let consumer: BaseConsumer = client(&bootstrap)
        .set("group.id", format!("reader-{run_id}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&output]).unwrap();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut partitions = BTreeSet::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let d = parse_document(std::str::from_utf8(m.payload().unwrap()).unwrap()).unwrap();
            *seen
                .entry(d.get("_id").and_then(Value::as_i64_exact).unwrap())
                .or_default() += 1;
            partitions.insert(d.get("by").and_then(Value::as_i64_exact).unwrap());
            last = Instant::now();
        }
    }
    let missing: Vec<i64> = (0..total).filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "lost {} orders: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(partitions.len(), PARTITIONS as usize);
    let replayed: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "scale-out: 3 processes, one stopped mid-stream at {before}/{total}; its partitions {stopped:?} moved; all {total} orders delivered ({replayed} replayed at-least-once)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
