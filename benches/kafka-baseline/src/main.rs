//! The baseline of `cargo xtask bench kafka`: what the broker and rdkafka alone cost.
//! `kafka-baseline BOOTSTRAP IN OUT COUNT` joins a fresh consumer group on topic `IN`,
//! reads `COUNT` messages from the start and produces each one unchanged to topic `OUT`
//! (idempotent, `acks=all`, like the SrotaX sink), then waits for every delivery report.
//! No parsing, no processing: the same messages in and out. Prints the elapsed seconds.
//! `kafka-baseline --create BOOTSTRAP TOPIC PARTITIONS` creates a topic;
//! `kafka-baseline --delete BOOTSTRAP TOPIC` deletes one;
//! `kafka-baseline --committed BOOTSTRAP GROUP TOPIC` prints the sum of the offsets
//! `GROUP` committed on `TOPIC`'s partitions (how many messages a run consumed). All three
//! are the test helpers of `test-support`, which panic saying what failed.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use test_support::kafka::{create_topics, delete_topics, Committed};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, bootstrap, topic] = args.as_slice() {
        if flag == "--delete" {
            delete_topics(bootstrap, &[topic]);
            return ExitCode::SUCCESS;
        }
    }
    if let [flag, bootstrap, a, b] = args.as_slice() {
        match flag.as_str() {
            "--create" => {
                create_topics(bootstrap, &[a], b.parse().unwrap_or(1));
                return ExitCode::SUCCESS;
            }
            "--committed" => {
                println!("{}", Committed::new(bootstrap, a, b).sum());
                return ExitCode::SUCCESS;
            }
            _ => {} // BOOTSTRAP IN_TOPIC OUT_TOPIC COUNT, below
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

fn run(bootstrap: &str, input: &str, output: &str, count: u64) -> Result<Duration, String> {
    let started = Instant::now();
    let group = format!("kafka-baseline-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // As SrotaX's source sets it: librdkafka's default (1 s) pauses a partition for
        // a second whenever its prefetch queue was full once.
        .set("fetch.queue.backoff.ms", "10")
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
