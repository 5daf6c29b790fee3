//! State-store benchmarks for `cargo xtask bench state`: every backend, written and read
//! the way the checkpoint path uses them.
//!
//! - `state_write/hashmap_baseline`: the same batch into a std `HashMap`, the
//!   in-process baseline for `memory`.
//! - `state_write/<backend>`: one `put_batch` of 10,000 entries (16-byte keys, 100-byte
//!   values) followed by `save_checkpoint`, which makes them durable (file: log fsync and
//!   checkpoint file; Redis: one MULTI/EXEC pipeline; SQL: one transaction). Throughput
//!   counts entries. Goals: memory ≥ 10M/s, file ≥ 200k/s, Redis ≥ 200k/s, PostgreSQL
//!   ≥ 20k/s.
//! - `state_scan/<backend>`: `scan` of a 10,000-entry prefix (how keyed state is loaded
//!   back, e.g. on partition assignment).
//! - `state_get/<backend>`: 1,000 sequential point `get`s (one round trip each on the
//!   network backends: a latency figure, not a batch one).
//!
//! Redis and PostgreSQL are the `cargo xtask services up` servers (or
//! `SROTAX_TEST_REDIS_URL` / `SROTAX_TEST_POSTGRES_URL`); SQLite and file use a temp dir.
//! `cargo xtask bench state` also runs `redis-benchmark -P 16` against the same Redis as
//! the baseline.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;
use stream_core::streaming::{
    Checkpoint, ConnectorConfig, SourcePositions, StateStore, StateStoreProvider,
};
use stream_core::value::Value;

const BATCH: usize = 10_000;
const GETS: usize = 1_000;

/// Every backend, opened through its provider as a definition would.
fn stores(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn StateStore>)> {
    let pipeline = format!("bench-{}", std::process::id());
    let open = |provider: &dyn StateStoreProvider, config: ConnectorConfig| {
        provider
            .create(&config, &pipeline)
            .unwrap_or_else(|e| panic!("{e} (run `cargo xtask services up`)"))
    };
    vec![
        (
            "memory",
            open(
                &stream_state::memory::MemoryStateStoreProvider::default(),
                ConnectorConfig::new("memory"),
            ),
        ),
        (
            "file",
            open(
                &stream_state::FileStateStoreProvider::new(),
                ConnectorConfig::new("file").option("path", dir.join("file").display().to_string()),
            ),
        ),
        (
            "redis",
            open(
                &stream_state::RedisStateStoreProvider,
                ConnectorConfig::new("redis")
                    .option("url", test_support::redis_url())
                    .option("keyPrefix", "srotax-bench")
                    .option("retryFor", "2s"),
            ),
        ),
        (
            "postgres",
            open(
                &stream_state::SqlStateStoreProvider::postgres(),
                ConnectorConfig::new("postgres")
                    .option("url", test_support::postgres_url())
                    .option("tablePrefix", "srotax_bench_")
                    .option("retryFor", "2s"),
            ),
        ),
        (
            "sqlite",
            open(
                &stream_state::SqlStateStoreProvider::sqlite(),
                ConnectorConfig::new("sqlite")
                    .option("path", dir.join("state.db").display().to_string()),
            ),
        ),
    ]
}

fn batch() -> Vec<(String, Vec<u8>)> {
    (0..BATCH)
        .map(|i| (format!("k:{i:014}"), vec![b'v'; 100]))
        .collect()
}

fn checkpoint(pipeline: &str, sequence: u64) -> Checkpoint {
    let mut positions = SourcePositions::new();
    positions.insert("orders".into(), Value::Int64(sequence as i64));
    Checkpoint {
        pipeline_id: pipeline.into(),
        sequence,
        positions,
        operator_state: vec![Value::Null].into(),
        sink_position: Value::Null,
        created_at: 0,
    }
}

fn bench_state(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let entries = batch();
    // The baseline for `memory`: the same owned batch into a plain std HashMap (no lock,
    // no async, SipHash), in the same run.
    let mut baseline = c.benchmark_group("state_write");
    baseline
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(BATCH as u64));
    let mut map: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
    baseline.bench_function("hashmap_baseline", |b| {
        b.iter_batched(
            || entries.clone(),
            |batch| {
                for (k, v) in batch {
                    map.insert(k, v);
                }
            },
            BatchSize::LargeInput,
        )
    });
    baseline.finish();
    for (name, store) in stores(dir.path()) {
        let pipeline = format!("bench-{name}");
        rt.block_on(store.clear_checkpoint(&pipeline)).unwrap();
        let mut sequence = 0;
        let mut write = c.benchmark_group("state_write");
        write
            .sample_size(10)
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements(BATCH as u64));
        write.bench_function(name, |b| {
            // The batch is built outside the timing: a pipeline hands over entries it
            // already owns.
            b.iter_batched(
                || entries.clone(),
                |batch| {
                    rt.block_on(async {
                        sequence += 1;
                        store.put_batch(batch, None).await.unwrap();
                        store
                            .save_checkpoint(&checkpoint(&pipeline, sequence))
                            .await
                            .unwrap();
                        if sequence.is_multiple_of(10) {
                            store.prune_checkpoints(&pipeline, 10).await.unwrap();
                        }
                    })
                },
                BatchSize::LargeInput,
            )
        });
        write.finish();

        let mut scan = c.benchmark_group("state_scan");
        scan.sample_size(10)
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements(BATCH as u64));
        scan.bench_function(name, |b| {
            b.iter(|| {
                let got = rt.block_on(store.scan("k:")).unwrap();
                assert_eq!(got.len(), BATCH);
            })
        });
        scan.finish();

        let mut get = c.benchmark_group("state_get");
        get.sample_size(10)
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements(GETS as u64));
        get.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    for (key, _) in entries.iter().take(GETS) {
                        assert!(store.get(key).await.unwrap().is_some());
                    }
                })
            })
        });
        get.finish();
        rt.block_on(store.clear_checkpoint(&pipeline)).unwrap();
    }
}

criterion_group!(benches, bench_state);
criterion_main!(benches);
