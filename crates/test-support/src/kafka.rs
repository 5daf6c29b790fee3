//! Kafka helpers (feature `kafka`): the broker of `cargo xtask services up` or a private
//! one, topics, a producer that checks every delivery, committed offsets of a group, and
//! reading a topic back. Each panics with what failed: these are for tests and the
//! benchmark baseline, where a failure must be loud.

use crate::Server;
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, ToBytes};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a metadata or committed-offsets request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker of `cargo xtask services up` (`SROTAX_TEST_KAFKA_BOOTSTRAP`, else
/// `127.0.0.1:19092`); panics (never skips) when nothing answers there.
pub fn bootstrap() -> String {
    crate::service_address(
        "SROTAX_TEST_KAFKA_BOOTSTRAP",
        "127.0.0.1:19092",
        "Kafka broker",
    )
}

/// A client configuration with `bootstrap.servers` set; add properties and `create()`.
pub fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Creates `topics`, each with `partitions` partitions (replication 1).
pub fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("Kafka admin client: {e}"));
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap_or_else(|e| panic!("creating topics {topics:?}: {e}"));
    for r in results {
        if let Err((topic, e)) = r {
            panic!("creating topic {topic}: {e}");
        }
    }
}

/// Deletes `topics` (and their messages); panics saying what failed.
pub fn delete_topics(bootstrap: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("Kafka admin client: {e}"));
    let results = block_on(admin.delete_topics(topics, &AdminOptions::new()))
        .unwrap_or_else(|e| panic!("deleting topics {topics:?}: {e}"));
    for r in results {
        if let Err((topic, e)) = r {
            panic!("deleting topic {topic}: {e}");
        }
    }
}

/// A producer that remembers what it sent so that [`Producer::flush`] can check every
/// delivery report. Records not flushed may be lost: flush before relying on them.
pub struct Producer {
    producer: FutureProducer,
    pending: Vec<DeliveryFuture>,
}

impl Producer {
    /// A producer with the default librdkafka settings.
    pub fn new(bootstrap: &str) -> Producer {
        Producer {
            producer: client(bootstrap)
                .create()
                .unwrap_or_else(|e| panic!("Kafka producer: {e}")),
            pending: Vec::new(),
        }
    }

    /// Enqueues `record` without waiting for its delivery.
    pub fn send<K, P>(&mut self, record: FutureRecord<'_, K, P>)
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let topic = record.topic.to_string();
        match self.producer.send_result(record) {
            Ok(delivery) => self.pending.push(delivery),
            Err((e, _)) => panic!("enqueueing a record for {topic}: {e}"),
        }
    }

    /// Waits for the delivery report of every record sent so far; panics on a failed one.
    pub fn flush(&mut self) {
        for delivery in self.pending.drain(..) {
            match block_on(delivery) {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => panic!("a record was not delivered: {e}"),
                Err(_) => panic!("the producer was closed before a delivery report"),
            }
        }
    }
}

/// The offsets a consumer group committed on a topic, read without joining the group.
/// Keeps one connection, so that polling them is quick.
pub struct Committed {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
}

impl Committed {
    /// For `group` on `topic`, whose partitions are looked up once.
    pub fn new(bootstrap: &str, group: &str, topic: &str) -> Committed {
        let consumer: BaseConsumer = client(bootstrap)
            .set("group.id", group)
            .create()
            .unwrap_or_else(|e| panic!("Kafka consumer: {e}"));
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
        let mut partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        partitions.sort_unstable();
        assert!(!partitions.is_empty(), "topic {topic} has no partitions");
        Committed {
            consumer,
            topic: topic.to_string(),
            partitions,
        }
    }

    /// The committed offset of each partition in partition order, `None` where the
    /// group committed none.
    pub fn offsets(&self) -> Vec<Option<i64>> {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("committed offsets on {}: {e}", self.topic));
        // Collected (and the list dropped) here, never after the consumer: librdkafka
        // hangs otherwise.
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// The sum of the committed offsets: how many messages the group consumed.
    pub fn sum(&self) -> i64 {
        self.offsets().into_iter().flatten().sum()
    }
}

/// A message read back by [`read_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key, if any (UTF-8, lossy).
    pub key: Option<String>,
    /// The payload (UTF-8, lossy; empty when there is none).
    pub payload: String,
    /// The headers in order (values UTF-8, lossy).
    pub headers: Vec<(String, String)>,
}

/// How long [`read_topic`] waits for its `at_least` messages.
const READ_AT_LEAST_WITHIN: Duration = Duration::from_secs(20);

/// Every committed message of `topic` (all partitions, from the start, in order per
/// partition), read with a fresh consumer group and `isolation.level=read_committed`.
/// Reads until at least `at_least` messages came (or 20 s passed, leaving the shortfall
/// to the caller's assertion) and then none for `quiet`. A topic that does not exist yet
/// reads as empty: nothing was published to it.
pub fn read_topic(bootstrap: &str, topic: &str, at_least: usize, quiet: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", crate::unique("reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("Kafka consumer: {e}"));
    consumer
        .subscribe(&[topic])
        .unwrap_or_else(|e| panic!("subscribing to {topic}: {e}"));
    let give_up = Instant::now() + READ_AT_LEAST_WITHIN;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet || (out.len() < at_least && Instant::now() < give_up) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), text(x.value.unwrap_or_default())))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    key: m.key().map(text),
                    payload: text(m.payload().unwrap_or_default()),
                    headers,
                });
                last = Instant::now();
            }
            Some(Err(e)) if e.to_string().contains("UnknownTopicOrPartition") => break,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Starts a private noida-db Kafka broker (the binary `cargo xtask services up`
/// installs) on a free port with its data in `data_dir`, for tests that must not share
/// the broker; [`Server::address`] is its bootstrap address.
pub fn start_broker(data_dir: &Path) -> Server {
    // The broker binary itself: killing the venv's Python launcher would leave it running.
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/services/kafka/venv/lib");
    let bin = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/noida_db/noida-db"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no noida-db broker under {}: run `cargo xtask services up` (it installs it)",
                lib.display()
            )
        });
    let port = crate::free_port();
    let mut c = Command::new(bin);
    c.args([
        "start",
        "--host",
        "127.0.0.1",
        "--only",
        "kafka",
        "--kafka-port",
    ])
    .arg(port.to_string())
    .arg("--data-dir")
    .arg(data_dir);
    Server::spawn(
        c,
        port,
        Duration::from_secs(20),
        "the private noida-db broker",
    )
}
