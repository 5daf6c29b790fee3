//! The `kafka` source and sink against the real broker of `cargo xtask services up`
//! (127.0.0.1:19092, or `SROTAX_TEST_KAFKA_BOOTSTRAP`): metadata, order per partition,
//! offsets committed after checkpoints, resume, routing, keys, headers, option errors.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use stream_connect::builtin_registry;
use stream_connect::MemoryHub;
use stream_core::streaming::*;
use stream_core::value::{Document, Value};
use test_support::kafka::{bootstrap, create_topics, read_topic, Committed, Producer};
use test_support::unique;

/// Sends one record with an `origin: test` header and waits for its delivery, so that
/// the records of a partition get consecutive offsets in order.
fn produce(p: &mut Producer, topic: &str, partition: i32, key: &str, value: &str) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "origin",
        value: Some("test"),
    });
    p.send(
        FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(value)
            .headers(headers),
    );
    p.flush();
}

fn kafka_source(bootstrap: &str, topic: &str, group: &str) -> ConnectorConfig {
    ConnectorConfig::new("kafka")
        .option("bootstrapServers", bootstrap)
        .option("topics", topic)
        .option("groupId", group)
}

fn runtime() -> RuntimeConfig {
    RuntimeConfig {
        micro_batch_size: 50,
        max_batch_delay: Duration::from_millis(50),
        checkpoint_interval: Duration::from_millis(100),
        ..RuntimeConfig::default()
    }
}

async fn wait_for(hub: &MemoryHub, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.len(name) < n {
        assert!(
            Instant::now() < deadline,
            "{name}: {} of {n} documents after 30 s",
            hub.len(name)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(handle: &StreamingPipelineHandle) -> RunSummary {
    handle.stop();
    handle
        .await_termination(Some(Duration::from_secs(30)))
        .await
        .expect("the pipeline stops within 30 s")
        .expect("the pipeline stops cleanly")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_keeps_partition_order_exposes_metadata_and_commits_after_checkpoints() {
    let bootstrap = bootstrap();
    let topic = unique("src-order");
    let group = unique("src-group");
    create_topics(&bootstrap, &[&topic], 3);
    let mut p = Producer::new(&bootstrap);
    for i in 0..60 {
        let partition = i % 3;
        produce(
            &mut p,
            &topic,
            partition,
            &format!("k{i}"),
            &format!(r#"{{"i": {i}, "p": {partition}}}"#),
        );
    }
    let hub = MemoryHub::global();
    let out = unique("src-out");
    let def = StreamingPipelineDefinition::builder("kafka-source-order")
        .source(kafka_source(&bootstrap, &topic, &group))
        .sink(ConnectorConfig::new("memory").option("name", out.as_str()))
        .runtime(runtime())
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let handle = orchestrator.run(def).unwrap();
    wait_for(&hub, &out, 60).await;
    let summary = stop(&handle).await;
    assert_eq!(summary.metrics.records_in, 60);
    assert_eq!(summary.metrics.lag, 0, "everything was read");

    let docs = hub.documents(&out);
    let mut per_partition: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for d in &docs {
        let meta = d.get("_stream_meta").and_then(Value::as_document).unwrap();
        let source = meta.get("source").and_then(Value::as_document).unwrap();
        let i = d.get("i").unwrap().as_i64_exact().unwrap();
        assert_eq!(source.get("topic").unwrap().as_str(), Some(topic.as_str()));
        let partition = source.get("partition").unwrap().as_i64_exact().unwrap();
        assert_eq!(partition, d.get("p").unwrap().as_i64_exact().unwrap());
        assert_eq!(
            source.get("key").unwrap().as_str().map(str::to_string),
            Some(format!("k{i}"))
        );
        assert_eq!(
            source
                .get("headers")
                .and_then(Value::as_document)
                .and_then(|h| h.get("origin"))
                .and_then(Value::as_str),
            Some("test")
        );
        assert!(matches!(source.get("timestamp"), Some(Value::Date(_))));
        let offset = source.get("offset").unwrap().as_i64_exact().unwrap();
        assert_eq!(offset, i / 3, "offsets count per partition");
        per_partition.entry(partition).or_default().push(i);
    }
    for (partition, seen) in &per_partition {
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, &sorted, "partition {partition} kept its order");
        assert_eq!(seen.len(), 20);
    }
    // The final checkpoint covers everything; the group's offsets follow it.
    assert_eq!(
        Committed::new(&bootstrap, &group, &topic).offsets(),
        vec![Some(20), Some(20), Some(20)]
    );
    hub.remove(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_resumes_after_its_checkpoint_with_state() {
    let bootstrap = bootstrap();
    let topic = unique("src-resume");
    let group = unique("resume-group");
    create_topics(&bootstrap, &[&topic], 2);
    let mut p = Producer::new(&bootstrap);
    for i in 0..10 {
        produce(
            &mut p,
            &topic,
            i % 2,
            "k",
            &format!(r#"{{"c": "c{}", "v": 1}}"#, i % 2),
        );
    }
    let hub = MemoryHub::global();
    let out = unique("resume-out");
    let def = StreamingPipelineDefinition::builder(unique("kafka-resume"))
        .source(kafka_source(&bootstrap, &topic, &group))
        .pipeline_json(r#"[{"$group": {"_id": "$c", "total": {"$sum": "$v"}}}]"#)
        .unwrap()
        .sink(ConnectorConfig::new("memory").option("name", out.as_str()))
        .runtime(runtime())
        .build()
        .unwrap();
    // The memory state store is shared by the pipelines of one orchestrator.
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let handle = orchestrator.run(def.clone()).unwrap();
    let totals = |hub: &MemoryHub| {
        let mut t = BTreeMap::new();
        for d in hub.documents(&out) {
            t.insert(
                d.get("_id").unwrap().as_str().unwrap().to_string(),
                d.get("total").unwrap().as_i64_exact().unwrap(),
            );
        }
        t
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while totals(&hub).values().sum::<i64>() < 10 {
        assert!(Instant::now() < deadline, "totals {:?}", totals(&hub));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(&handle).await;
    for i in 0..6 {
        produce(
            &mut p,
            &topic,
            i % 2,
            "k",
            &format!(r#"{{"c": "c{}", "v": 1}}"#, i % 2),
        );
    }
    let handle = orchestrator.run(def).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while totals(&hub) != BTreeMap::from([("c0".into(), 8), ("c1".into(), 8)]) {
        assert!(Instant::now() < deadline, "totals {:?}", totals(&hub));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summary = stop(&handle).await;
    assert_eq!(
        summary.metrics.records_in, 6,
        "only the new records are read"
    );
    assert_eq!(
        Committed::new(&bootstrap, &group, &topic).offsets(),
        vec![Some(8), Some(8)]
    );
    hub.remove(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_routes_by_topic_expression_with_key_and_headers() {
    let bootstrap = bootstrap();
    let prefix = unique("sink");
    let (eu, us) = (format!("{prefix}.eu"), format!("{prefix}.us"));
    create_topics(&bootstrap, &[&eu, &us], 1);
    let hub = MemoryHub::global();
    let input = unique("sink-in");
    for i in 0..10 {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        hub.push_json(
            &input,
            &format!(r#"{{"id": {i}, "region": "{region}", "customer": "c{i}"}}"#),
        )
        .unwrap();
    }
    hub.close(&input);
    let mut headers = Document::new();
    headers.insert("region", Value::string("$region"));
    let sink = ConnectorConfig::new("kafka")
        .option("bootstrapServers", bootstrap.as_str())
        .option(
            "topic",
            stream_core::value::parse_value(&format!(r#"{{"$concat": ["{prefix}.", "$region"]}}"#))
                .unwrap(),
        )
        .option("key", "$customer")
        .option("headers", Value::Document(headers))
        .option("compression", "zstd");
    let def = StreamingPipelineDefinition::builder(unique("kafka-sink"))
        .source(
            ConnectorConfig::new("memory")
                .option("name", input.as_str())
                .option("bounded", true),
        )
        .sink(sink)
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let handle = orchestrator.run(def).unwrap();
    let summary = handle
        .await_termination(Some(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        summary.metrics.documents_out, 10,
        "acknowledged by delivery reports"
    );
    for (topic, parity) in [(&eu, 0), (&us, 1)] {
        let got = read_topic(&bootstrap, topic, 5, Duration::from_secs(1));
        assert_eq!(got.len(), 5, "{topic}: {got:?}");
        for record in got {
            let d = stream_core::value::parse_document(&record.payload).unwrap();
            let id = d.get("id").unwrap().as_i64_exact().unwrap();
            assert_eq!(id % 2, parity);
            assert_eq!(record.key, Some(format!("c{id}")));
            let region = if parity == 0 { "eu" } else { "us" };
            assert_eq!(
                record.headers,
                vec![("region".to_string(), region.to_string())]
            );
        }
    }
    hub.remove(&input);
}

#[test]
fn invalid_options_name_their_path() {
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let run = |source: ConnectorConfig, sink: ConnectorConfig| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _guard = rt.enter();
        let def = StreamingPipelineDefinition::builder("kafka-options")
            .source(source)
            .sink(sink)
            .build()
            .unwrap();
        orchestrator.run(def).unwrap_err().to_string()
    };
    let memory = ConnectorConfig::new("memory").option("name", "kafka-options");
    let base = ConnectorConfig::new("kafka").option("bootstrapServers", "127.0.0.1:1");
    let e = run(base.clone(), memory.clone());
    assert!(
        e.contains("source.options.topics") && e.contains("topicPattern"),
        "{e}"
    );
    let e = run(
        base.clone()
            .option("topics", "t")
            .option("startingOffsets", "soon"),
        memory.clone(),
    );
    assert!(e.contains("source.options.startingOffsets"), "{e}");
    let e = run(
        base.clone().option("topics", "t").option("groupid", "g"),
        memory.clone(),
    );
    assert!(e.contains("unknown option 'groupid'"), "{e}");
    let e = run(memory.clone(), base.clone());
    assert!(e.contains("sink.options.topic"), "{e}");
    let e = run(
        memory.clone(),
        base.clone()
            .option("topic", "t")
            .option("compression", "brotli"),
    );
    assert!(e.contains("sink.options.compression"), "{e}");
}
