//! The baseline of `cargo xtask bench kafka`: what the broker and rdkafka alone cost.
//! `kafka-baseline BOOTSTRAP IN OUT COUNT` joins a fresh consumer group on topic `IN`,
//! reads `COUNT` messages from the start and produces each one unchanged to topic `OUT`
//! (idempotent, `acks=all`, like the SrotaX sink), then waits for every delivery report.
//! No parsing, no processing: the same messages in and out. Prints the elapsed seconds.
//! `kafka-baseline --create BOOTSTRAP TOPIC PARTITIONS` creates a topic;
//! `kafka-baseline --committed BOOTSTRAP GROUP TOPIC` prints the sum of the offsets
//! `GROUP` committed on `TOPIC`'s partitions (how many messages a run consumed).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, bootstrap, a, b] = args.as_slice() {
        let result = match flag.as_str() {
            "--create" => Some(create(bootstrap, a, b.parse().unwrap_or(1))),
            "--committed" => Some(committed(bootstrap, a, b).map(|sum| println!("{sum}"))),
            _ => None, // BOOTSTRAP IN_TOPIC OUT_TOPIC COUNT, below
        };
        match result {
            Some(Ok(())) => return ExitCode::SUCCESS,
            Some(Err(e)) => {
                eprintln!("kafka-baseline: {e}");
                return ExitCode::FAILURE;
            }
            None => {}
        }
    }
    let [bootstrap, input, output, count] = args.as_slice() else {
        eprintln!("usage: kafka-baseline BOOTSTRAP IN_TOPIC OUT_TOPIC COUNT");
        return ExitCode::FAILURE;
    };
    let Ok(count) = count.parse::<u64>() else {
        eprintln!("COUNT must be a number, found {count}");
        return ExitCode::FAILURE;
    };
    match run(bootstrap, input, output, count) {
        Ok(elapsed) => {
            println!("{:.3}", elapsed.as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kafka-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

fn create(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .map_err(|e| format!("creating {topic}: {e}"))?;
    for r in results {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    Ok(())
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> Result<i64, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let mut partitions = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            partitions.add_partition(topic, p.id());
        }
    }
    let offsets = consumer
        .committed_offsets(partitions, timeout)
        .map_err(|e| format!("committed offsets of {group}: {e}"))?;
    let sum = offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    // Dropped before the consumer (librdkafka hangs otherwise).
    drop(offsets);
    Ok(sum)
}

fn run(bootstrap: &str, input: &str, output: &str, count: u64) -> Result<Duration, String> {
    let started = Instant::now();
    let group = format!("kafka-baseline-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    consumer
        .subscribe(&[input])
        .map_err(|e| format!("subscribe: {e}"))?;
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while read < count {
        if Instant::now() > deadline {
            return Err(format!("only {read} of {count} messages after 600 s"));
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.map_err(|e| format!("consume: {e}"))?;
        let payload = m.payload().unwrap_or_default();
        let mut record = BaseRecord::<[u8], [u8]>::to(output).payload(payload);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Let deliveries drain.
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(format!("produce: {e}")),
            }
        }
        read += 1;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(60)))
        .map_err(|e| format!("flush: {e}"))?;
    Ok(started.elapsed())
}
