//! The `generator` source: determinism, exact resume, Nexmark events, throttling,
//! `write_orders_jsonl`, option errors.

mod common;

use common::finish;
use std::time::{Duration, Instant};
use stream_connect::generator::{DEFAULT_CUSTOMERS, DEFAULT_SEED};
use stream_connect::{
    builtin_registry, order, write_orders_jsonl, GeneratorConnectorProvider, MemoryHub,
};
use stream_core::streaming::*;
use stream_core::value::{parse_document, Document, Value};
use test_support::TempDir;

fn generator() -> ConnectorConfig {
    ConnectorConfig::new("generator")
}

/// Runs `source` through `pipeline` into a fresh memory channel; returns what arrived.
async fn collect(id: &str, source: ConnectorConfig, pipeline: &str) -> Vec<Document> {
    let hub = MemoryHub::global();
    let channel = format!("{id}-out");
    hub.remove(&channel);
    let def = StreamingPipelineDefinition::builder(id)
        .source(source)
        .pipeline_json(pipeline)
        .unwrap()
        .sink(ConnectorConfig::new("memory").option("name", channel.as_str()))
        .runtime(RuntimeConfig {
            micro_batch_size: 16,
            ..RuntimeConfig::default()
        })
        // Stateful stages emit only the final result of these bounded runs.
        .trigger(Trigger::AvailableNow)
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let summary = finish(&orchestrator.run(def).unwrap()).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Completed);
    hub.documents(&channel)
}

fn json(docs: &[Document]) -> Vec<String> {
    docs.iter().map(Document::to_json).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_orders() {
    let a = collect(
        "gen-a",
        generator().option("seed", 7).option("count", 200),
        "[]",
    )
    .await;
    let b = collect(
        "gen-b",
        generator().option("seed", 7).option("count", 200),
        "[]",
    )
    .await;
    let c = collect(
        "gen-c",
        generator().option("seed", 8).option("count", 200),
        "[]",
    )
    .await;
    assert_eq!(a.len(), 200);
    assert_eq!(json(&a), json(&b));
    assert_ne!(json(&a), json(&c));
    let expected: Vec<Document> = (0..200).map(|i| order(i, 7, DEFAULT_CUSTOMERS)).collect();
    assert_eq!(json(&a), json(&expected));
    // Typed fields.
    let first = &a[0];
    assert!(matches!(first.get("orderValue"), Some(Value::Double(_))));
    assert!(matches!(first.get("ts"), Some(Value::Date(_))));
    assert!(matches!(first.get("items"), Some(Value::Int32(1..=5))));
    let keys: Vec<&str> = first.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "orderId",
            "customerId",
            "status",
            "orderValue",
            "currency",
            "region",
            "items",
            "ts"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_follow_their_weights_and_customers_are_bounded() {
    let docs = collect(
        "gen-weights",
        generator().option("count", 4000).option("customers", 50),
        r#"[{"$group": {"_id": "$status", "n": {"$count": {}}, "customers": {"$addToSet": "$customerId"}}}]"#,
    )
    .await;
    for d in &docs {
        let status = d.get("_id").and_then(Value::as_str).unwrap();
        let n = d.get("n").and_then(Value::as_i64_exact).unwrap() as f64 / 4000.0;
        let expected = match status {
            "PAID" => 0.60,
            "NEW" => 0.25,
            "CANCELLED" => 0.10,
            "REFUNDED" => 0.05,
            other => panic!("unexpected status {other}"),
        };
        assert!((n - expected).abs() < 0.03, "{status}: {n}");
        assert!(d.get("customers").and_then(Value::as_array).unwrap().len() <= 50);
    }
    assert_eq!(docs.len(), 4);
}

/// Reads `n` records straight from a source.
async fn read(source: &mut Box<dyn Source>, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = source
            .next_batch(n - out.len(), Duration::from_millis(100))
            .await
            .unwrap();
        out.extend(batch.records);
    }
    out
}

fn payload_json(r: &Record) -> String {
    match &r.payload {
        Payload::Document(d) => d.to_json(),
        Payload::Json(s) => s.clone(),
    }
}

#[tokio::test]
async fn seek_resumes_exactly_after_the_checkpointed_event() {
    let ctx = ConnectorContext::new("seek");
    for config in [
        generator().option("seed", 3),
        generator().option("kind", "nexmark"),
    ] {
        let mut first = GeneratorConnectorProvider
            .create_source(&config, &ctx)
            .unwrap()
            .unwrap();
        assert!(!first.is_bounded());
        let all = read(&mut first, 10).await;
        // Resume after the 4th record, as a checkpoint holding its position would.
        let mut positions = SourcePositions::new();
        positions.insert(all[3].partition.to_string(), all[3].position.clone());
        let mut resumed = GeneratorConnectorProvider
            .create_source(&config, &ctx)
            .unwrap()
            .unwrap();
        resumed.seek(&positions).await.unwrap();
        let rest = read(&mut resumed, 6).await;
        assert_eq!(
            rest.iter().map(payload_json).collect::<Vec<_>>(),
            all[4..].iter().map(payload_json).collect::<Vec<_>>()
        );
        assert_eq!(rest[0].position.as_i64_exact(), Some(5));
        assert!(rest[0].event_time.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_unbounded_generator_continues_without_gaps_or_duplicates() {
    let hub = MemoryHub::global();
    let channel = "gen-restart-out";
    hub.remove(channel);
    let def = StreamingPipelineDefinition::builder("gen-restart")
        .source(generator().option("seed", 11).option("ratePerSecond", 2000))
        .sink(ConnectorConfig::new("memory").option("name", channel))
        .runtime(RuntimeConfig {
            micro_batch_size: 16,
            max_batch_delay: Duration::from_millis(10),
            ..RuntimeConfig::default()
        })
        .build()
        .unwrap();
    // One orchestrator, so both runs share its memory state store.
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    for run in 1..=2 {
        let handle = orchestrator.run(def.clone()).unwrap();
        let before = hub.len(channel);
        hub.wait_for(channel, before + 50, Duration::from_secs(10))
            .await
            .unwrap();
        handle.stop();
        let summary = finish(&handle).await.unwrap();
        assert_eq!(summary.status, PipelineStatus::Stopped, "run {run}");
    }
    let got = hub.documents(channel);
    assert!(got.len() >= 100);
    let expected: Vec<Document> = (0..got.len() as u64)
        .map(|i| order(i, 11, DEFAULT_CUSTOMERS))
        .collect();
    assert_eq!(json(&got), json(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_produces_persons_auctions_and_bids() {
    let docs = collect(
        "gen-nexmark",
        generator().option("kind", "nexmark").option("count", 100),
        r#"[{"$group": {"_id": "$type", "n": {"$count": {}}, "dated": {"$sum": {"$cond": [{"$eq": [{"$type": "$dateTime"}, "date"]}, 1, 0]}}}}, {"$sort": {"_id": 1}}]"#,
    )
    .await;
    // Nexmark's default proportions: 1 person, 3 auctions, 46 bids per 50 events.
    assert_eq!(
        json(&docs),
        vec![
            r#"{"_id":"auction","n":6,"dated":6}"#,
            r#"{"_id":"bid","n":92,"dated":92}"#,
            r#"{"_id":"person","n":2,"dated":2}"#
        ]
    );
    let raw = collect(
        "gen-nexmark-raw",
        generator().option("kind", "nexmark").option("count", 5),
        "[]",
    )
    .await;
    let person = &raw[0];
    assert_eq!(person.get("type").and_then(Value::as_str), Some("person"));
    for key in [
        "id",
        "name",
        "emailAddress",
        "creditCard",
        "city",
        "state",
        "dateTime",
        "extra",
    ] {
        assert!(
            person.get(key).is_some(),
            "person lacks {key}: {}",
            person.to_json()
        );
    }
    let auction = raw
        .iter()
        .find(|d| d.get("type").and_then(Value::as_str) == Some("auction"))
        .unwrap();
    assert!(matches!(auction.get("expires"), Some(Value::Date(_))));
    assert!(matches!(auction.get("seller"), Some(Value::Int64(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_per_second_throttles() {
    let started = Instant::now();
    let docs = collect(
        "gen-rate",
        generator().option("count", 30).option("ratePerSecond", 100),
        "[]",
    )
    .await;
    assert_eq!(docs.len(), 30);
    // 30 events at 100/s: the last one is due 290 ms after the first.
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "took only {:?}",
        started.elapsed()
    );
}

#[test]
fn write_orders_jsonl_writes_the_generator_orders() {
    let dir = TempDir::new("write-orders");
    let path = dir.file("data/orders.jsonl");
    // More than two 32k-line chunks, rendered in parallel: the order must hold.
    let count = 70_000;
    let bytes = write_orders_jsonl(&path, count, DEFAULT_SEED).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(bytes, text.len() as u64);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, count);
    for (i, line) in lines.iter().enumerate() {
        let parsed = parse_document(line).unwrap();
        let expected = order(i as u64, DEFAULT_SEED, DEFAULT_CUSTOMERS);
        assert!(
            parsed.identical(&expected),
            "line {i}: {line} != {}",
            expected.to_json()
        );
    }
    assert_eq!(write_orders_jsonl(&path, 0, DEFAULT_SEED).unwrap(), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_name_their_path() {
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    let cases = [
        (
            generator().option("kind", "trades"),
            "source.options.kind",
            "unknown generator kind 'trades'",
        ),
        (
            generator().option("seed", -1),
            "source.options.seed",
            "non-negative integer",
        ),
        (
            generator().option("count", "many"),
            "source.options.count",
            "non-negative integer",
        ),
        (
            generator().option("customers", 0),
            "source.options.customers",
            "positive integer",
        ),
        (
            generator().option("ratePerSecond", 0),
            "source.options.ratePerSecond",
            "positive number",
        ),
        (
            generator().option("kind", "nexmark").option("customers", 5),
            "source.options.customers",
            "kind \"orders\" only",
        ),
        (
            generator().option("rate", 5),
            "source.options.rate",
            "unknown option 'rate'",
        ),
    ];
    for (source, path, message) in cases {
        let def = StreamingPipelineDefinition::builder("gen-options")
            .source(source)
            .sink(ConnectorConfig::new("memory").option("name", "gen-options"))
            .build()
            .unwrap();
        let e = orchestrator.run(def).map(|_| ()).unwrap_err();
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(message), "{e}");
    }
    // The generator has no sink.
    let def = StreamingPipelineDefinition::builder("gen-sink")
        .source(generator())
        .sink(generator())
        .build()
        .unwrap();
    let e = orchestrator.run(def).map(|_| ()).unwrap_err();
    assert_eq!(e.path, "sink.type");
}
