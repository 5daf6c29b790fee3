//! A real crash test: a child process saves checkpoints (with a large operator state) and
//! keyed entries in a tight loop and is killed with SIGKILL at random moments. After every
//! kill the store must open and hold a complete checkpoint at least as new as the last one
//! the child reported saved, plus every keyed write made before it.
//!
//! The child is this test binary itself, started with `CHILD_ENV` set so that the
//! `crash_child` test runs the writer loop instead of returning at once.

#![cfg(feature = "file")]

use rand::Rng;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use stream_core::streaming::{Checkpoint, SourcePositions, StateStore};
use stream_core::value::{Document, Value};
use stream_state::file::{FileStateStore, FileStateStoreOptions};

const CHILD_ENV: &str = "STREAM_STATE_CRASH_CHILD_DIR";
const SAVED: &str = "STREAM-STATE-SAVED ";
const PIPELINE: &str = "crash-test";
const STATE_ROWS: i64 = 2_000;

/// Operator state of checkpoint `seq`: ~100 KB, with `seq` woven through it so a
/// checkpoint mixing two saves would be noticed.
fn operator_state(seq: u64) -> Vec<Value> {
    let rows = (0..STATE_ROWS)
        .map(|i| {
            let mut d = Document::new();
            d.insert("_id", Value::Int64(i));
            d.insert("seq", Value::Int64(seq as i64));
            d.insert("total", Value::Double(seq as f64 * 0.5 + i as f64));
            d.insert("label", Value::string(format!("customer-{i}-at-{seq}")));
            Value::Document(d)
        })
        .collect();
    vec![Value::Null, Value::Array(rows), Value::Int64(seq as i64)]
}

fn verify(cp: &Checkpoint) {
    let seq = cp.sequence;
    assert_eq!(cp.pipeline_id, PIPELINE);
    assert_eq!(
        cp.positions.get("p0").and_then(Value::as_i64_exact),
        Some(seq as i64 * 7)
    );
    let expected = operator_state(seq);
    assert_eq!(cp.operator_state.len(), expected.len());
    for (got, want) in cp.operator_state.iter().zip(&expected) {
        assert!(
            got.identical(want),
            "operator state of checkpoint {seq} does not match what was saved"
        );
    }
}

/// Child mode: write until killed (or for at most 60 s, so a lost child ends by itself).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // a normal test run: nothing to do
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut options = FileStateStoreOptions::default();
        options.compaction_min_bytes = 256 * 1024; // compactions happen during the test too
        let store = FileStateStore::open_with(&dir, options).unwrap();
        let mut seq = store
            .load_checkpoint(PIPELINE)
            .await
            .unwrap()
            .map_or(0, |cp| cp.sequence);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut stdout = std::io::stdout();
        while Instant::now() < deadline {
            seq += 1;
            for i in 0..20 {
                store
                    .put(&format!("row:{i}"), seq.to_le_bytes().to_vec(), None)
                    .await
                    .unwrap();
            }
            store
                .put("latest", seq.to_le_bytes().to_vec(), None)
                .await
                .unwrap();
            let mut positions = SourcePositions::new();
            positions.insert("p0".into(), Value::Int64(seq as i64 * 7));
            let cp = Checkpoint {
                pipeline_id: PIPELINE.into(),
                sequence: seq,
                positions,
                operator_state: operator_state(seq).into(),
                sink_position: Value::Null,
                created_at: 0,
            };
            store.save_checkpoint(&cp).await.unwrap();
            writeln!(stdout, "{SAVED}{seq}").unwrap();
            stdout.flush().unwrap();
        }
    });
}

/// Kills the child if the test fails while it runs.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(dir: &std::path::Path) -> (KillOnDrop, mpsc::Receiver<u64>) {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find(SAVED) {
                if let Ok(seq) = line[at + SAVED.len()..].trim().parse::<u64>() {
                    if tx.send(seq).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (child, rx)
}

fn u64_value(bytes: Option<Vec<u8>>) -> u64 {
    let bytes = bytes.expect("key present");
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_never_loses_a_saved_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut reported = 0u64;
    let mut recovered = 0u64;
    const ROUNDS: usize = 25;
    for round in 0..ROUNDS {
        let (mut child, saved) = spawn_child(dir.path());
        let mut last_saved = reported;
        if round % 5 == 4 {
            // Now and then, kill it early: while it opens, replays or writes its first save.
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..30)));
        } else {
            // Otherwise let it save at least once, then kill it somewhere in the loop.
            let first = saved
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("round {round}: the child saved nothing within 60 s"));
            last_saved = last_saved.max(first);
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..150_000)));
        }
        child.0.kill().unwrap(); // SIGKILL on Unix
        child.0.wait().unwrap();
        // Everything the child printed before it died is in the pipe.
        while let Ok(seq) = saved.recv_timeout(Duration::from_secs(10)) {
            last_saved = last_saved.max(seq);
        }
        assert!(last_saved >= reported, "sequences only grow");
        reported = last_saved;

        let store = FileStateStore::open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let cp = store
            .load_checkpoint(PIPELINE)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        match cp {
            Some(cp) => {
                assert!(
                    cp.sequence >= reported,
                    "round {round}: loaded checkpoint {} but the child reported {reported} saved",
                    cp.sequence
                );
                verify(&cp);
                // Keyed writes made before a checkpoint are durable with it.
                let latest = u64_value(store.get("latest").await.unwrap());
                assert!(
                    latest >= cp.sequence,
                    "round {round}: latest={latest} < checkpoint {}",
                    cp.sequence
                );
                for i in 0..20 {
                    assert!(
                        u64_value(store.get(&format!("row:{i}")).await.unwrap()) >= cp.sequence
                    );
                }
                recovered = cp.sequence;
            }
            None => assert_eq!(
                reported, 0,
                "round {round}: no checkpoint although {reported} was reported saved"
            ),
        }
        drop(store);
    }
    // Every round but the early kills saved at least once.
    let full_rounds = (ROUNDS - ROUNDS / 5) as u64;
    assert!(
        recovered >= full_rounds,
        "the child made progress across rounds (reached {recovered})"
    );
}
