//! Backpressure: a fast unbounded generator feeding a deliberately slow sink keeps only
//! a bounded number of records in flight.

mod common;

use async_trait::async_trait;
use common::finish;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream_connect::register_builtin;
use stream_core::streaming::*;
use stream_core::value::Document;

/// A sink that takes `delay` per write: the test-only `slow` connector.
struct SlowProvider {
    delay: Duration,
    written: Arc<AtomicU64>,
}

struct SlowSink {
    delay: Duration,
    written: Arc<AtomicU64>,
}

#[async_trait]
impl Sink for SlowSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        tokio::time::sleep(self.delay).await;
        self.written.fetch_add(batch.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

impl ConnectorProvider for SlowProvider {
    fn connector_type(&self) -> &str {
        "slow"
    }
    fn create_source(
        &self,
        _c: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError> {
        Ok(None)
    }
    fn create_sink(
        &self,
        _c: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        Ok(Some(Box::new(SlowSink {
            delay: self.delay,
            written: self.written.clone(),
        })))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_bounds_the_records_in_flight() {
    let written = Arc::new(AtomicU64::new(0));
    let mut registry = ConnectorRegistry::new();
    register_builtin(&mut registry);
    registry.register(Arc::new(SlowProvider {
        delay: Duration::from_millis(15),
        written: written.clone(),
    }));
    let runtime = RuntimeConfig {
        micro_batch_size: 20,
        max_batch_delay: Duration::from_millis(10),
        queue_capacity: 2,
        source_queue_capacity: 2,
        ..RuntimeConfig::default()
    };
    let bound = (runtime.source_queue_capacity + runtime.queue_capacity + 2) as u64
        * runtime.micro_batch_size as u64;
    let def = StreamingPipelineDefinition::builder("backpressure")
        .source(ConnectorConfig::new("generator"))
        .pipeline_json(r#"[{"$match": {"status": {"$ne": "NOPE"}}}]"#)
        .unwrap()
        .sink(ConnectorConfig::new("slow"))
        .runtime(runtime)
        .build()
        .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(registry);
    let handle = orchestrator.run(def).unwrap();
    let started = Instant::now();
    let mut max_in_flight = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let m = handle.metrics();
        let in_flight = m.records_in.saturating_sub(m.documents_out);
        max_in_flight = max_in_flight.max(in_flight);
        assert!(
            in_flight <= bound,
            "{in_flight} records in flight, more than {bound} (records_in {}, documents_out {})",
            m.records_in,
            m.documents_out
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = handle.metrics();
    // The sink is the bottleneck: ~20 documents per 15 ms write, far below what the
    // generator could produce in 1.5 s.
    assert!(m.documents_out > 100, "the pipeline made progress: {m:?}");
    assert!(m.documents_out < 20 * 200, "the sink was slow: {m:?}");
    assert!(max_in_flight > 0);
    handle.stop();
    let summary = finish(&handle).await.unwrap();
    assert_eq!(summary.status, PipelineStatus::Stopped);
    assert_eq!(
        summary.metrics.documents_out,
        written.load(Ordering::SeqCst)
    );
}
