//! Helpers shared by the connector tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};
use stream_core::streaming::{RunError, RunSummary, StreamingPipelineHandle};

/// Waits for the pipeline to end (20 s at most).
pub async fn finish(handle: &StreamingPipelineHandle) -> Result<RunSummary, RunError> {
    handle
        .await_termination(Some(Duration::from_secs(20)))
        .await
        .expect("the pipeline ended within 20 s")
}

/// Polls `check` every 10 ms until it returns true, failing after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Lines of a text file (empty when it does not exist).
pub fn read_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}
